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
 *		a minute, or at once when CREATE EXTENSION calls
 *		audit.wake_launcher()); otherwise starts a seal run every
 *		audit_db.seal_interval (measured from the start of one run to the
 *		start of the next, so a row waits at most about one interval plus
 *		one run's duration once it is sealable; while runs find nothing the
 *		pause doubles up to one second, and the first commit that wrote
 *		audit rows cuts such an idle pause short: the next run starts one
 *		interval after it), and a maintenance run
 *		(maintenance.c) when it starts and every
 *		audit_db.maintenance_interval, and every audit_db.alert_interval
 *		the alert rules (audit.evaluate_alert_rules()) and the reports it
 *		schedules (audit.run_due_reports()).  An error is logged, recorded
 *		in audit.error_log, and retried with exponential back-off (up to
 *		one minute) instead of ending the worker.
 *
 * Database workers connect as audit_db.worker_role (resolved by the
 * launcher; empty: the bootstrap superuser).  The role needs LOGIN and must
 * own the extension's objects (create the extension as it), since
 * maintenance creates and drops partitions.
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
#include "catalog/pg_authid.h"
#include "catalog/pg_database.h"
#include "commands/extension.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "port/atomics.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
#include "storage/spin.h"
#include "storage/proc.h"
#include "tcop/tcopprot.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"
#include "utils/varlena.h"

#include "audit_db.h"
#include "maintenance.h"
#include "restore.h"
#include "row_stamping.h"
#include "sealing.h"
#include "worker.h"

int			audit_seal_interval_ms = 200;
int			audit_alert_interval_s = 60;

/* The longest pause between the probes of an idle database (see below). */
#define IDLE_INTERVAL_MS	1000
int			audit_max_database_workers = 8;
char	   *audit_skip_databases = NULL;
char	   *audit_worker_role = NULL;

/* audit_db.worker_role resolved by the launcher at its last scan (InvalidOid: the bootstrap superuser). */
static Oid	worker_role_oid = InvalidOid;

#define LAUNCHER_NAPTIME_MS		10000

/*
 * One database worker as other backends see it.  run_started: when it last
 * completed a seal run (one that found rows or found none: either way every
 * transaction finished before it started is sealed); audit.verify() reads it
 * to tell a running sealer from a stalled one.  sleeping: 1 while it pauses
 * after a run that found nothing; the first backend that commits audit rows
 * then swaps it to 0 and sets latch, so the rows are sealed one
 * audit_db.seal_interval later rather than after the idle pause, which
 * doubles up to a second (see audit_sealer_nudge).  dboid InvalidOid
 * marks a free slot.  dboid, run_started and latch change under the mutex.
 */
typedef struct SealerHeartbeat
{
	Oid			dboid;
	TimestampTz run_started;
	Latch	   *latch;
	pg_atomic_uint32 sleeping;
} SealerHeartbeat;

/*
 * Shared with every backend: the launcher's latch, so that CREATE EXTENSION
 * can wake it (audit.wake_launcher()) instead of waiting for its next scan,
 * and the database workers' heartbeats.
 */
typedef struct LauncherShared
{
	slock_t		mutex;
	Latch	   *latch;
	bool		rescan;			/* start workers now, ignoring retry delays */
	Oid			release_db;		/* stop the worker of this database (DROP DATABASE) */
	pid_t		launcher_pid;	/* the running launcher (0 before the first) */
	int			nheartbeats;	/* max_worker_processes slots */
	SealerHeartbeat heartbeats[FLEXIBLE_ARRAY_MEMBER];
} LauncherShared;

/* This worker's slot in launcher_shared->heartbeats, -1 before its first run. */
static int	my_heartbeat = -1;

/* The shared struct's size: one heartbeat per possible background worker. */
static Size
launcher_shmem_size(void)
{
	return add_size(offsetof(LauncherShared, heartbeats),
					mul_size(sizeof(SealerHeartbeat), max_worker_processes));
}

static LauncherShared *launcher_shared = NULL;
static void nudge_after_commit(XactEvent event, void *arg);
static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

static void
launcher_shmem_request(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	RequestAddinShmemSpace(launcher_shmem_size());
}

static void
launcher_shmem_startup(void)
{
	bool		found;

	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();
	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	launcher_shared = ShmemInitStruct("audit_db launcher", launcher_shmem_size(), &found);
	if (!found)
	{
		memset(launcher_shared, 0, launcher_shmem_size());
		SpinLockInit(&launcher_shared->mutex);
		launcher_shared->nheartbeats = max_worker_processes;
		for (int i = 0; i < launcher_shared->nheartbeats; i++)
			pg_atomic_init_u32(&launcher_shared->heartbeats[i].sleeping, 0);
	}
	LWLockRelease(AddinShmemInitLock);
}
#define RECHECK_STOPPED_MS		60000
#define MAX_BACKOFF_MS			60000

void
audit_worker_register_launcher(void)
{
	BackgroundWorker worker;

	if (IsBinaryUpgrade)
		return;

	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = launcher_shmem_request;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = launcher_shmem_startup;

	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
	worker.bgw_restart_time = 10;
	strlcpy(worker.bgw_library_name, "audit_db", BGW_MAXLEN);
	strlcpy(worker.bgw_function_name, "audit_launcher_main", BGW_MAXLEN);
	strlcpy(worker.bgw_name, "audit_db launcher", BGW_MAXLEN);
	strlcpy(worker.bgw_type, "audit_db launcher", BGW_MAXLEN);
	RegisterBackgroundWorker(&worker);

	/* Inherited by every backend the postmaster starts. */
	RegisterXactCallback(nudge_after_commit, NULL);
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

	/* pg_authid is shared too: the launcher resolves the workers' role. */
	worker_role_oid = InvalidOid;
	if (audit_worker_role != NULL && audit_worker_role[0] != '\0')
	{
		HeapTuple	role = SearchSysCache1(AUTHNAME, CStringGetDatum(audit_worker_role));

		if (!HeapTupleIsValid(role))
			ereport(LOG,
					(errcode(ERRCODE_UNDEFINED_OBJECT),
					 errmsg("audit_db launcher: role \"%s\" (audit_db.worker_role) does not exist; "
							"workers run as the bootstrap superuser", audit_worker_role),
					 errhint("Create the role (LOGIN, owner of the audit_db extension) or reset the setting.")));
		else
		{
			Form_pg_authid form = (Form_pg_authid) GETSTRUCT(role);

			if (form->rolcanlogin)
				worker_role_oid = form->oid;
			else
				ereport(LOG,
						(errcode(ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION),
						 errmsg("audit_db launcher: role \"%s\" (audit_db.worker_role) cannot log in; "
								"workers run as the bootstrap superuser", audit_worker_role),
						 errhint("ALTER ROLE %s LOGIN, or reset the setting.", quote_identifier(audit_worker_role))));
			ReleaseSysCache(role);
		}
	}
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
	/* Restarted after a crash or pg_terminate_backend(); not after exit(0). */
	worker.bgw_restart_time = 5;
	strlcpy(worker.bgw_library_name, "audit_db", BGW_MAXLEN);
	strlcpy(worker.bgw_function_name, "audit_database_worker_main", BGW_MAXLEN);
	snprintf(worker.bgw_name, BGW_MAXLEN, "audit_db worker for database %s", t->name);
	strlcpy(worker.bgw_type, "audit_db worker", BGW_MAXLEN);
	worker.bgw_main_arg = ObjectIdGetDatum(t->dboid);
	memcpy(worker.bgw_extra, &worker_role_oid, sizeof(Oid));
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

/*
 * release_requested_database
 *		Stop the worker of a database that a backend is about to drop,
 *		rename or copy (those need it to have no other connection), and keep
 *		it stopped for a minute.
 */
static void
release_requested_database(void)
{
	Oid			dboid;

	if (launcher_shared == NULL)
		return;
	SpinLockAcquire(&launcher_shared->mutex);
	dboid = launcher_shared->release_db;
	launcher_shared->release_db = InvalidOid;
	SpinLockRelease(&launcher_shared->mutex);
	if (!OidIsValid(dboid))
		return;
	for (int i = 0; i < ntracked; i++)
	{
		if (tracked[i].dboid != dboid)
			continue;
		if (tracked[i].handle)
			TerminateBackgroundWorker(tracked[i].handle);
		tracked[i].retry_at = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), RECHECK_STOPPED_MS);
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
	if (launcher_shared)
	{
		SpinLockAcquire(&launcher_shared->mutex);
		launcher_shared->latch = MyLatch;
		launcher_shared->launcher_pid = MyProcPid;
		SpinLockRelease(&launcher_shared->mutex);
	}

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

		release_requested_database();
		list_databases();
		now = GetCurrentTimestamp();
		if (launcher_shared)
		{
			bool		rescan;

			SpinLockAcquire(&launcher_shared->mutex);
			rescan = launcher_shared->rescan;
			launcher_shared->rescan = false;
			SpinLockRelease(&launcher_shared->mutex);
			if (rescan)
				for (int i = 0; i < ntracked; i++)
					tracked[i].retry_at = 0;
		}
		for (int i = 0; i < ntracked; i++)
		{
			/*
			 * A database now in audit_db.skip_databases (or gone): stop its
			 * worker for good; the postmaster would restart one that merely
			 * exited.
			 */
			if (!tracked[i].listed && tracked[i].handle != NULL)
				TerminateBackgroundWorker(tracked[i].handle);
			if (worker_running(&tracked[i]))
				running++;
		}
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
 * orphaned
 *		Was this database worker started by a launcher that is gone, while
 *		another one runs now?  The postmaster restarts database workers after
 *		a crash (bgw_restart_time), and a restarted launcher, which knows
 *		nothing of them, starts its own: the orphans must leave.  A worker
 *		knows its launcher by bgw_notify_pid (0 when the postmaster restarted
 *		it after its launcher had died).
 */
static bool
orphaned(void)
{
	pid_t		current;

	if (launcher_shared == NULL)
		return false;
	SpinLockAcquire(&launcher_shared->mutex);
	current = launcher_shared->launcher_pid;
	SpinLockRelease(&launcher_shared->mutex);
	return current != 0 && current != MyBgworkerEntry->bgw_notify_pid;
}

/*
 * seal_once
 *		One seal run in its own transaction: SEAL_FAILED after logging an
 *		error, SEAL_NO_EXTENSION if audit_db is not installed,
 *		SEAL_RESTORING (nothing done) while a restore is not finished.
 */
typedef enum SealOutcome
{
	SEAL_OK,					/* sealed rows */
	SEAL_IDLE,					/* nothing to seal */
	SEAL_FAILED,
	SEAL_NO_EXTENSION,
	SEAL_RESTORING				/* a restore is not finished: do nothing */
} SealOutcome;

static void job_failed(const char *source, MemoryContext cxt);

/* OID of the audit_db extension the last seal run saw (a new one: re-created). */
static Oid	seen_extension = InvalidOid;

static SealOutcome
seal_once(void)
{
	MemoryContext cxt = CurrentMemoryContext;
	volatile SealOutcome outcome = SEAL_OK;

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
	pgstat_report_activity(STATE_RUNNING, "audit_db: seal");

	seen_extension = get_extension_oid("audit_db", true);
	if (!OidIsValid(seen_extension))
	{
		PopActiveSnapshot();
		CommitTransactionCommand();
		pgstat_report_activity(STATE_IDLE, NULL);
		return SEAL_NO_EXTENSION;
	}

	PG_TRY();
	{
		if (audit_restore_pending())
			outcome = SEAL_RESTORING;
		else
		{
			AuditSealResult r = audit_seal_run();

			if (r.rows == 0)
				outcome = SEAL_IDLE;
		}
		PopActiveSnapshot();
		CommitTransactionCommand();
	}
	PG_CATCH();
	{
		job_failed("seal", cxt);
		outcome = SEAL_FAILED;
	}
	PG_END_TRY();
	pgstat_report_activity(STATE_IDLE, NULL);
	return outcome;
}

/*
 * run_statement
 *		One SQL statement through SPI, inside the current transaction, when
 *		this database still has the extension.
 */
static void
run_statement(const char *sql, int nargs, Oid *types, Datum *values, const char *nulls)
{
	if (!OidIsValid(get_extension_oid("audit_db", true)))
		return;
	PushActiveSnapshot(GetTransactionSnapshot());
	SPI_connect();
	if (SPI_execute_with_args(sql, nargs, types, values, nulls, false, 0) < 0)
		elog(ERROR, "audit_db worker: \"%s\" failed", sql);
	SPI_finish();
	PopActiveSnapshot();
}

/*
 * record_job_error
 *		After a job's transaction was aborted: record its error in
 *		audit.error_log, in a transaction of its own (an error here is only
 *		logged).
 */
static void
record_job_error(const char *source, ErrorData *edata)
{
	MemoryContext cxt = CurrentMemoryContext;
	Datum		values[4];
	char		nulls[4] = {' ', ' ', ' ', ' '};

	values[0] = CStringGetTextDatum(source);
	values[1] = CStringGetTextDatum(edata->message ? edata->message : "(no message)");
	values[2] = CStringGetTextDatum(unpack_sql_state(edata->sqlerrcode));
	values[3] = edata->detail ? CStringGetTextDatum(edata->detail) : (Datum) 0;
	nulls[3] = edata->detail ? ' ' : 'n';

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	PG_TRY();
	{
		run_statement("SELECT audit.report_error($1, $2, $3, $4)", 4,
					  (Oid[]) {TEXTOID, TEXTOID, TEXTOID, TEXTOID}, values, nulls);
		CommitTransactionCommand();
	}
	PG_CATCH();
	{
		MemoryContextSwitchTo(cxt);
		EmitErrorReport();
		FlushErrorState();
		AbortCurrentTransaction();
	}
	PG_END_TRY();
	MemoryContextSwitchTo(cxt);
}

/*
 * job_failed
 *		In a PG_CATCH of a job: log the error, abort the transaction, and
 *		record the error in audit.error_log under source.
 */
static void
job_failed(const char *source, MemoryContext cxt)
{
	ErrorData  *edata;

	MemoryContextSwitchTo(cxt);
	edata = CopyErrorData();
	EmitErrorReport();
	FlushErrorState();
	AbortCurrentTransaction();
	record_job_error(source, edata);
	FreeErrorData(edata);
}

/*
 * run_job
 *		One SQL statement of the worker's periodic jobs in a transaction of
 *		its own; an error is logged and recorded in audit.error_log.
 */
static void
run_job(const char *source, const char *sql)
{
	MemoryContext cxt = CurrentMemoryContext;

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	pgstat_report_activity(STATE_RUNNING, sql);
	PG_TRY();
	{
		run_statement(sql, 0, NULL, NULL, NULL);
		CommitTransactionCommand();
	}
	PG_CATCH();
	{
		job_failed(source, cxt);
	}
	PG_END_TRY();
	MemoryContextSwitchTo(cxt);
	pgstat_report_activity(STATE_IDLE, NULL);
}

/*
 * maintenance_once
 *		One maintenance run (maintenance.c), each step committed on its own.
 *		An error outside the steps is logged; the next interval retries.
 */
static void
maintenance_once(void)
{
	static MemoryContext maintenance_cxt = NULL;
	MemoryContext oldcxt = CurrentMemoryContext;

	if (maintenance_cxt == NULL)
		maintenance_cxt = AllocSetContextCreate(TopMemoryContext, "audit_db worker maintenance",
												ALLOCSET_DEFAULT_SIZES);
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	pgstat_report_activity(STATE_RUNNING, "audit_db: maintenance");
	if (!OidIsValid(get_extension_oid("audit_db", true)))
	{
		CommitTransactionCommand();
		pgstat_report_activity(STATE_IDLE, NULL);
		MemoryContextSwitchTo(oldcxt);
		return;
	}

	PG_TRY();
	{
		int64		run_id;

		/* SPI returns to this context after each commit: it must outlive them. */
		MemoryContextSwitchTo(maintenance_cxt);
		SPI_connect_ext(SPI_OPT_NONATOMIC);
		(void) audit_run_maintenance(GetCurrentTimestamp(), true, "worker", &run_id);
		SPI_finish();
		CommitTransactionCommand();
	}
	PG_CATCH();
	{
		MemoryContextSwitchTo(maintenance_cxt);
		EmitErrorReport();
		FlushErrorState();
		AbortCurrentTransaction();
	}
	PG_END_TRY();
	MemoryContextSwitchTo(oldcxt);
	MemoryContextReset(maintenance_cxt);
	pgstat_report_activity(STATE_IDLE, NULL);
}

/* on_shmem_exit callback: free this worker's heartbeat slot. */
static void
clear_heartbeat(int code, Datum arg)
{
	if (launcher_shared == NULL || my_heartbeat < 0)
		return;
	SpinLockAcquire(&launcher_shared->mutex);
	launcher_shared->heartbeats[my_heartbeat].dboid = InvalidOid;
	launcher_shared->heartbeats[my_heartbeat].latch = NULL;
	SpinLockRelease(&launcher_shared->mutex);
	pg_atomic_write_u32(&launcher_shared->heartbeats[my_heartbeat].sleeping, 0);
	my_heartbeat = -1;
}

/*
 * note_seal_run
 *		Publish that a seal run of this database, started at run_started,
 *		completed.  Takes a free slot on first use (none free: nothing is
 *		published, and audit.verify() falls back on the chain's last seal).
 */
static void
note_seal_run(TimestampTz run_started)
{
	if (launcher_shared == NULL)
		return;
	SpinLockAcquire(&launcher_shared->mutex);
	if (my_heartbeat < 0)
	{
		for (int i = 0; i < launcher_shared->nheartbeats; i++)
		{
			if (!OidIsValid(launcher_shared->heartbeats[i].dboid))
			{
				launcher_shared->heartbeats[i].dboid = MyDatabaseId;
				launcher_shared->heartbeats[i].latch = MyLatch;
				pg_atomic_write_u32(&launcher_shared->heartbeats[i].sleeping, 0);
				my_heartbeat = i;
				break;
			}
		}
	}
	if (my_heartbeat >= 0)
		launcher_shared->heartbeats[my_heartbeat].run_started = run_started;
	SpinLockRelease(&launcher_shared->mutex);
}

bool
audit_sealer_last_run(Oid dboid, TimestampTz *run_started)
{
	bool		found = false;

	if (launcher_shared == NULL)
		return false;
	SpinLockAcquire(&launcher_shared->mutex);
	for (int i = 0; i < launcher_shared->nheartbeats; i++)
	{
		if (launcher_shared->heartbeats[i].dboid == dboid)
		{
			*run_started = launcher_shared->heartbeats[i].run_started;
			found = true;
			break;
		}
	}
	SpinLockRelease(&launcher_shared->mutex);
	return found;
}

/* This backend's guess of its database worker's slot (-1: none yet). */
static int	nudge_slot = -1;

/* audit_rows_stamped() at this backend's last commit. */
static uint64 rows_at_last_commit = 0;

void
audit_sealer_nudge(void)
{
	SealerHeartbeat *hb;
	Latch	   *latch = NULL;

	if (launcher_shared == NULL || !OidIsValid(MyDatabaseId))
		return;

	/*
	 * Find the slot without the lock (an Oid is read whole); it is checked
	 * again under the lock before its latch is used.
	 */
	if (nudge_slot < 0 || nudge_slot >= launcher_shared->nheartbeats ||
		launcher_shared->heartbeats[nudge_slot].dboid != MyDatabaseId)
	{
		nudge_slot = -1;
		for (int i = 0; i < launcher_shared->nheartbeats; i++)
			if (launcher_shared->heartbeats[i].dboid == MyDatabaseId)
			{
				nudge_slot = i;
				break;
			}
		if (nudge_slot < 0)
			return;
	}
	hb = &launcher_shared->heartbeats[nudge_slot];

	/* A busy worker (the usual case) costs one shared read. */
	if (pg_atomic_read_u32(&hb->sleeping) == 0 ||
		pg_atomic_exchange_u32(&hb->sleeping, 0) == 0)
		return;
	SpinLockAcquire(&launcher_shared->mutex);
	if (hb->dboid == MyDatabaseId)
		latch = hb->latch;
	SpinLockRelease(&launcher_shared->mutex);
	if (latch != NULL)
		SetLatch(latch);
}

/*
 * nudge_after_commit
 *		Transaction callback of every backend (with the preload): after a
 *		commit that stamped audit rows, wake the database worker if it is
 *		in an idle pause.  Never raises.
 */
static void
nudge_after_commit(XactEvent event, void *arg)
{
	uint64		stamped;

	if (event != XACT_EVENT_COMMIT)
		return;
	stamped = audit_rows_stamped();
	if (stamped == rows_at_last_commit)
		return;
	rows_at_last_commit = stamped;
	audit_sealer_nudge();
}

void
audit_database_worker_main(Datum dboid)
{
	TimestampTz last_maintenance = 0;
	TimestampTz last_jobs = 0;
	Oid			maintained_extension = InvalidOid;
	SealOutcome outcome;

	int			backoff_ms = 0;
	int			missing_checks = 0;
	int			idle_runs = 0;
	bool		sleeping;

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();
	{
		Oid			role;

		memcpy(&role, MyBgworkerEntry->bgw_extra, sizeof(Oid));
		BackgroundWorkerInitializeConnectionByOid(DatumGetObjectId(dboid), role, 0);
	}
	pgstat_report_appname("audit_db worker");
	on_shmem_exit(clear_heartbeat, (Datum) 0);

	for (;;)
	{
		long		wait_ms;
		TimestampTz run_start;

		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}

		if (orphaned())
		{
			ereport(LOG,
					(errmsg("audit_db worker for database %u exits: the launcher that started it is gone",
							DatumGetObjectId(dboid)),
					 errdetail("The running launcher starts a worker of its own for this database.")));
			proc_exit(0);		/* 0: the postmaster does not restart it */
		}

		run_start = GetCurrentTimestamp();
		outcome = seal_once();
		if (OidIsValid(seen_extension) && seen_extension != maintained_extension)
		{
			/* First sight of this extension (or it was dropped and created again). */
			maintained_extension = seen_extension;
			last_maintenance = 0;
		}
		switch (outcome)
		{
			case SEAL_OK:
				backoff_ms = 0;
				missing_checks = 0;
				idle_runs = 0;
				note_seal_run(run_start);
				break;
			case SEAL_IDLE:
				backoff_ms = 0;
				missing_checks = 0;
				idle_runs = Min(idle_runs + 1, 10);
				note_seal_run(run_start);
				break;
			case SEAL_FAILED:
				backoff_ms = backoff_ms == 0 ? 1000 : Min(backoff_ms * 2, MAX_BACKOFF_MS);
				break;
			case SEAL_RESTORING:
				/* Wait for audit.finish_restore(); then maintenance at once. */
				backoff_ms = 0;
				missing_checks = 0;
				idle_runs = Min(idle_runs + 1, 10);
				last_maintenance = 0;
				break;
			case SEAL_NO_EXTENSION:
				/* Woken by a CREATE EXTENSION that may not have committed yet: look again a few times. */
				last_maintenance = 0;	/* a new extension gets its maintenance run at once */
				if (++missing_checks > 5)
					proc_exit(0);
				break;
		}

		/* Maintenance: due audit_db.maintenance_interval after the last one started. */
		if (missing_checks == 0 && outcome != SEAL_RESTORING && audit_maintenance_interval_s > 0 &&
			TimestampDifferenceExceeds(last_maintenance, GetCurrentTimestamp(),
									   audit_maintenance_interval_s * 1000))
		{
			last_maintenance = GetCurrentTimestamp();
			maintenance_once();
		}

		/* Alert rules and worker-scheduled reports: every audit_db.alert_interval. */
		if (missing_checks == 0 && outcome != SEAL_RESTORING && audit_alert_interval_s > 0 &&
			TimestampDifferenceExceeds(last_jobs, GetCurrentTimestamp(), audit_alert_interval_s * 1000))
		{
			last_jobs = GetCurrentTimestamp();
			run_job("alerts", "SELECT * FROM audit.evaluate_alert_rules()");
			run_job("report", "SELECT audit.run_due_reports()");
		}

		if (missing_checks > 0)
			wait_ms = 1000;
		else if (backoff_ms > 0)
			wait_ms = Max(audit_seal_interval_ms, backoff_ms);
		else
		{
			/*
			 * The interval runs from start to start: a long run eats into it.
			 * After runs that found nothing it doubles, up to IDLE_INTERVAL_MS
			 * (or the setting, if longer): an idle database is probed about
			 * once a second, a busy one every audit_db.seal_interval.
			 */
			long		elapsed_ms = (long) ((GetCurrentTimestamp() - run_start) / 1000);
			long		interval_ms = audit_seal_interval_ms;

			for (int i = 0; i < idle_runs && interval_ms < IDLE_INTERVAL_MS; i++)
				interval_ms = Min(interval_ms * 2, IDLE_INTERVAL_MS);
			interval_ms = Max(interval_ms, audit_seal_interval_ms);
			wait_ms = Max(interval_ms - elapsed_ms, 0);
		}
		/*
		 * After a run that found nothing, say so: the next commit that wrote
		 * audit rows sets the latch (audit_sealer_nudge), and the next run
		 * starts one interval after it instead of at the end of the idle
		 * pause.  Whether that is what woke us is told by who cleared the
		 * flag.
		 */
		sleeping = (outcome == SEAL_IDLE && backoff_ms == 0 && missing_checks == 0 &&
					my_heartbeat >= 0);
		if (sleeping)
			pg_atomic_write_u32(&launcher_shared->heartbeats[my_heartbeat].sleeping, 1);

		/* Even with no time left, poll: that notices postmaster death. */
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 wait_ms, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);

		/*
		 * Nudged: rows were committed.  Run one audit_db.seal_interval from
		 * now, as a busy worker would: rows committed meanwhile go into the
		 * same run, and while an open transaction holds the horizon back
		 * (every run finds nothing, every commit nudges) the worker probes
		 * once per interval, not once per commit.
		 */
		if (sleeping &&
			pg_atomic_exchange_u32(&launcher_shared->heartbeats[my_heartbeat].sleeping, 0) == 0)
		{
			idle_runs = 0;
			(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
							 audit_seal_interval_ms, PG_WAIT_EXTENSION);
			ResetLatch(MyLatch);
		}
	}
}

PG_FUNCTION_INFO_V1(audit_wake_launcher_sql);

/*
 * audit_wake_launcher_sql
 *		audit.wake_launcher(): ask the launcher (if running) to start the
 *		workers it is missing now; the install script calls it so that a new
 *		CREATE EXTENSION is sealed from the first second.  Returns whether a
 *		launcher was there to wake.
 */
Datum
audit_wake_launcher_sql(PG_FUNCTION_ARGS)
{
	Latch	   *latch = NULL;

	if (launcher_shared == NULL)
		PG_RETURN_BOOL(false);
	SpinLockAcquire(&launcher_shared->mutex);
	launcher_shared->rescan = true;
	latch = launcher_shared->latch;
	SpinLockRelease(&launcher_shared->mutex);
	if (latch == NULL)
		PG_RETURN_BOOL(false);
	SetLatch(latch);
	PG_RETURN_BOOL(true);
}

/*
 * audit_worker_release_database
 *		Ask the launcher to stop the worker connected to dboid, because this
 *		backend is about to run a command that needs the database to itself
 *		(DROP DATABASE, ALTER DATABASE ... RENAME, CREATE DATABASE ...
 *		TEMPLATE); those commands wait a few seconds for other connections to
 *		end, which is enough.
 */
void
audit_worker_release_database(Oid dboid)
{
	Latch	   *latch;

	if (launcher_shared == NULL || !OidIsValid(dboid))
		return;
	SpinLockAcquire(&launcher_shared->mutex);
	launcher_shared->release_db = dboid;
	latch = launcher_shared->latch;
	SpinLockRelease(&launcher_shared->mutex);
	if (latch)
		SetLatch(latch);
}
