/*-------------------------------------------------------------------------
 *
 * worker.c
 *	  Background workers of audit_db (with the library in
 *	  shared_preload_libraries):
 *
 *	  launcher: connected to no database; every 10 s it lists the databases
 *		that accept connections and starts a database worker for each one
 *		that has none (at most audit_db.max_database_workers at a time, so
 *		it never takes every worker slot; a database skipped in
 *		audit_db.skip_databases is left alone).
 *	  database worker: connects to its database by OID; exits at once if
 *		audit_db is not installed there (the launcher looks again after
 *		a minute); otherwise runs a seal every audit_db.seal_interval.  An
 *		error is logged and retried with exponential back-off (up to one
 *		minute) instead of ending the worker.
 *
 * Both start only once recovery has finished (nothing runs on a standby;
 * after promotion they start), reload settings on SIGHUP, and exit on
 * SIGTERM or when the postmaster dies.  Nothing is registered in binary
 * upgrade mode.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/pg_database.h"
#include "commands/extension.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/proc.h"
#include "tcop/tcopprot.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"
#include "utils/varlena.h"

#include "audit_db.h"
#include "sealing.h"
#include "worker.h"

int			audit_seal_interval_ms = 1000;
int			audit_max_database_workers = 4;
char	   *audit_skip_databases = NULL;

#define LAUNCHER_NAPTIME_MS		10000
#define RECHECK_STOPPED_MS		60000
#define MAX_BACKOFF_MS			60000

void
audit_worker_register_launcher(void)
{
	BackgroundWorker worker;

	if (IsBinaryUpgrade)
		return;

	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
	worker.bgw_restart_time = 10;
	strlcpy(worker.bgw_library_name, "audit_db", BGW_MAXLEN);
	strlcpy(worker.bgw_function_name, "audit_launcher_main", BGW_MAXLEN);
	strlcpy(worker.bgw_name, "audit_db launcher", BGW_MAXLEN);
	strlcpy(worker.bgw_type, "audit_db launcher", BGW_MAXLEN);
	RegisterBackgroundWorker(&worker);
}

/* One database as the launcher tracks it. */
typedef struct TrackedDatabase
{
	Oid			dboid;
	char		name[NAMEDATALEN];
	BackgroundWorkerHandle *handle;
	TimestampTz retry_at;		/* earliest next start after a stop */
	bool		listed;			/* still in pg_database this round */
} TrackedDatabase;

static TrackedDatabase *tracked = NULL;
static int	ntracked = 0;
static int	tracked_cap = 0;

/*
 * database_is_skipped
 *		Is name listed in audit_db.skip_databases (comma-separated)?
 */
static bool
database_is_skipped(const char *name)
{
	char	   *copy;
	List	   *names;
	ListCell   *lc;
	bool		skipped = false;

	if (audit_skip_databases == NULL || audit_skip_databases[0] == '\0')
		return false;
	copy = pstrdup(audit_skip_databases);
	if (!SplitIdentifierString(copy, ',', &names))
	{
		ereport(LOG,
				(errmsg("audit_db.skip_databases is not a valid list of database names; skipping none")));
		return false;
	}
	foreach(lc, names)
		if (strcmp((char *) lfirst(lc), name) == 0)
			skipped = true;
	list_free(names);
	pfree(copy);
	return skipped;
}

static TrackedDatabase *
track(Oid dboid, const char *name)
{
	for (int i = 0; i < ntracked; i++)
		if (tracked[i].dboid == dboid)
			return &tracked[i];
	if (ntracked == tracked_cap)
	{
		tracked_cap = Max(16, tracked_cap * 2);
		tracked = tracked ? repalloc(tracked, sizeof(TrackedDatabase) * tracked_cap)
			: MemoryContextAlloc(TopMemoryContext, sizeof(TrackedDatabase) * tracked_cap);
	}
	memset(&tracked[ntracked], 0, sizeof(TrackedDatabase));
	tracked[ntracked].dboid = dboid;
	strlcpy(tracked[ntracked].name, name, NAMEDATALEN);
	return &tracked[ntracked++];
}

/*
 * list_databases
 *		Mark every connectable, non-template database as listed.
 */
static void
list_databases(void)
{
	Relation	rel;
	TableScanDesc scan;
	HeapTuple	tup;

	for (int i = 0; i < ntracked; i++)
		tracked[i].listed = false;

	StartTransactionCommand();
	(void) GetTransactionSnapshot();
	rel = table_open(DatabaseRelationId, AccessShareLock);
	scan = table_beginscan_catalog(rel, 0, NULL);
	while ((tup = heap_getnext(scan, ForwardScanDirection)) != NULL)
	{
		Form_pg_database db = (Form_pg_database) GETSTRUCT(tup);

		if (!db->datallowconn || db->datistemplate || database_is_skipped(NameStr(db->datname)))
			continue;
		track(db->oid, NameStr(db->datname))->listed = true;
	}
	table_endscan(scan);
	table_close(rel, AccessShareLock);
	CommitTransactionCommand();
}

static bool
worker_running(TrackedDatabase *t)
{
	pid_t		pid;

	if (t->handle == NULL)
		return false;
	if (GetBackgroundWorkerPid(t->handle, &pid) == BGWH_STOPPED)
	{
		pfree(t->handle);
		t->handle = NULL;
		t->retry_at = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), RECHECK_STOPPED_MS);
		return false;
	}
	return true;
}

static void
start_database_worker(TrackedDatabase *t)
{
	BackgroundWorker worker;

	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
	worker.bgw_restart_time = BGW_NEVER_RESTART;
	strlcpy(worker.bgw_library_name, "audit_db", BGW_MAXLEN);
	strlcpy(worker.bgw_function_name, "audit_database_worker_main", BGW_MAXLEN);
	snprintf(worker.bgw_name, BGW_MAXLEN, "audit_db worker for database %s", t->name);
	strlcpy(worker.bgw_type, "audit_db worker", BGW_MAXLEN);
	worker.bgw_main_arg = ObjectIdGetDatum(t->dboid);
	worker.bgw_notify_pid = MyProcPid;

	if (!RegisterDynamicBackgroundWorker(&worker, &t->handle))
	{
		t->handle = NULL;
		t->retry_at = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), LAUNCHER_NAPTIME_MS);
		ereport(LOG,
				(errmsg("audit_db launcher: no free background worker slot for database \"%s\"", t->name),
				 errhint("Raise max_worker_processes, or lower audit_db.max_database_workers.")));
	}
}

void
audit_launcher_main(Datum arg)
{
	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();
	BackgroundWorkerInitializeConnection(NULL, NULL, 0);
	pgstat_report_appname("audit_db launcher");

	for (;;)
	{
		int			running = 0;
		TimestampTz now;

		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}

		list_databases();
		now = GetCurrentTimestamp();
		for (int i = 0; i < ntracked; i++)
			if (worker_running(&tracked[i]))
				running++;
		for (int i = 0; i < ntracked && running < audit_max_database_workers; i++)
		{
			TrackedDatabase *t = &tracked[i];

			if (!t->listed || t->handle != NULL || now < t->retry_at)
				continue;
			start_database_worker(t);
			if (t->handle != NULL)
				running++;
		}

		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 LAUNCHER_NAPTIME_MS, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
	}
}

/*
 * seal_once
 *		One seal run in its own transaction.  Returns false (after logging
 *		the error) if it failed; exits the worker if audit_db is gone.
 */
static bool
seal_once(void)
{
	MemoryContext cxt = CurrentMemoryContext;
	volatile bool ok = true;

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
	pgstat_report_activity(STATE_RUNNING, "audit_db: seal");

	if (!OidIsValid(get_extension_oid("audit_db", true)))
	{
		PopActiveSnapshot();
		CommitTransactionCommand();
		pgstat_report_activity(STATE_IDLE, NULL);
		proc_exit(0);
	}

	PG_TRY();
	{
		(void) audit_seal_run();
		PopActiveSnapshot();
		CommitTransactionCommand();
	}
	PG_CATCH();
	{
		MemoryContextSwitchTo(cxt);
		EmitErrorReport();
		FlushErrorState();
		AbortCurrentTransaction();
		ok = false;
	}
	PG_END_TRY();
	pgstat_report_activity(STATE_IDLE, NULL);
	return ok;
}

void
audit_database_worker_main(Datum dboid)
{
	int			backoff_ms = 0;

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();
	BackgroundWorkerInitializeConnectionByOid(DatumGetObjectId(dboid), InvalidOid, 0);
	pgstat_report_appname("audit_db worker");

	for (;;)
	{
		int			wait_ms;

		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}

		if (seal_once())
			backoff_ms = 0;
		else
			backoff_ms = backoff_ms == 0 ? 1000 : Min(backoff_ms * 2, MAX_BACKOFF_MS);

		wait_ms = Max(audit_seal_interval_ms, backoff_ms);
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 wait_ms, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
	}
}
