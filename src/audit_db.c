/*-------------------------------------------------------------------------
 *
 * audit_db.c
 *	  Module entry point of the audit_db extension: the PG_MODULE_MAGIC
 *	  block, _PG_init (settings and callbacks), the utility hook that keeps
 *	  the background worker out of the way of DROP DATABASE and DROP
 *	  EXTENSION, and the small helpers shared by the other files.
 *
 * The library works both when loaded on first use (CREATE EXTENSION, the
 * first call of one of its functions) and when listed in
 * shared_preload_libraries; the sealing background worker and the progress
 * of running verifications need the latter.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_extension.h"
#include "commands/dbcommands.h"
#include "commands/extension.h"
#include "commands/defrem.h"
#include "fmgr.h"
#include "nodes/parsenodes.h"
#include "tcop/utility.h"
#include "miscadmin.h"
#include "storage/lmgr.h"
#include "utils/acl.h"
#include "utils/fmgrprotos.h"
#include "utils/lsyscache.h"
#include "utils/guc.h"

#include "audit_db.h"
#include "audit_log_columns.h"
#include "change_tracking.h"
#include "config_changes.h"
#include "event_writer.h"
#include "immutability.h"
#include "maintenance.h"
#include "partition_manager.h"
#include "restore.h"
#include "sealing.h"
#include "verification.h"
#include "organization_roles.h"
#include "pseudonyms.h"
#include "tenancy.h"
#include "worker.h"

PG_MODULE_MAGIC;

void		_PG_init(void);

static ProcessUtility_hook_type prev_process_utility = NULL;

/*
 * release_database_of
 *		The database a utility statement needs without other connections
 *		(dropped, renamed, or copied as a template), or InvalidOid.
 */
static Oid
release_database_of(Node *stmt)
{
	if (IsA(stmt, DropdbStmt))
		return get_database_oid(((DropdbStmt *) stmt)->dbname, true);
	if (IsA(stmt, RenameStmt) && ((RenameStmt *) stmt)->renameType == OBJECT_DATABASE)
		return get_database_oid(((RenameStmt *) stmt)->subname, true);
	if (IsA(stmt, CreatedbStmt))
	{
		ListCell   *lc;

		foreach(lc, ((CreatedbStmt *) stmt)->options)
		{
			DefElem    *opt = lfirst_node(DefElem, lc);

			if (strcmp(opt->defname, "template") == 0 && opt->arg != NULL)
				return get_database_oid(defGetString(opt), true);
		}
	}
	return InvalidOid;
}

/*
 * drops_audit_db
 *		Whether a utility statement is DROP EXTENSION ... audit_db ...
 */
static bool
drops_audit_db(Node *stmt)
{
	ListCell   *lc;

	if (!IsA(stmt, DropStmt) || ((DropStmt *) stmt)->removeType != OBJECT_EXTENSION)
		return false;
	foreach(lc, ((DropStmt *) stmt)->objects)
	{
		Node	   *name = lfirst(lc);

		if (IsA(name, String) && strcmp(strVal(name), "audit_db") == 0)
			return true;
	}
	return false;
}

/*
 * lock_out_workers
 *		Before DROP EXTENSION audit_db: first wait out a maintenance run (its
 *		advisory lock, taken here until the end of the transaction, so no new
 *		run starts either), then take the chain head (audit.audit_chain_state)
 *		in ACCESS EXCLUSIVE mode, the first lock a seal run takes.  A run in
 *		progress finishes first; a new one waits holding nothing else.
 *		Without this, the drop (locking the extension's objects one by one)
 *		and a seal or maintenance run (locking the log, the blocks and the
 *		partitions) could each wait for the other, and the deadlock detector
 *		might cancel the DROP.  The maintenance lock comes first because a
 *		maintenance run seals too: it may wait for the chain head, never the
 *		other way round.
 */
static void
lock_out_workers(void)
{
	Oid			extoid = get_extension_oid("audit_db", true);
	Oid			nsp;
	Oid			relid;

	/* Only for whoever may drop it: nobody else gets to queue this lock. */
	if (!OidIsValid(extoid))
		return;
#if PG_VERSION_NUM >= 160000
	if (!object_ownercheck(ExtensionRelationId, extoid, GetUserId()))
		return;
#else
	if (!pg_extension_ownercheck(extoid, GetUserId()))
		return;
#endif
	(void) DirectFunctionCall1(pg_advisory_xact_lock_int8, Int64GetDatum(AUDIT_MAINTENANCE_LOCK_KEY));
	nsp = get_namespace_oid(AUDIT_SCHEMA_NAME, true);
	relid = OidIsValid(nsp) ? get_relname_relid("audit_chain_state", nsp) : InvalidOid;
	if (OidIsValid(relid))
		LockRelationOid(relid, AccessExclusiveLock);
}

/*
 * audit_process_utility
 *		Before a statement that needs a database without other connections,
 *		have audit_db's background worker leave it; before DROP EXTENSION
 *		audit_db, keep the sealer and maintenance out of the extension's tables;
 *		on DISCARD ALL (a pooler handing the connection on), forget the
 *		session's audit.set_organization(); after a change of an audit_db.*
 *		setting, record it (config_changes.c); during a restore, skip what
 *		CREATE EXTENSION made already (restore.c); before and after any
 *		statement, close the event writer (event_writer.c).
 */
static void
audit_process_utility(PlannedStmt *pstmt, const char *queryString, bool readOnlyTree,
					  ProcessUtilityContext context, ParamListInfo params,
					  QueryEnvironment *queryEnv, DestReceiver *dest, QueryCompletion *qc)
{
	Oid			dboid = release_database_of(pstmt->utilityStmt);
	AuditSettingChange *change = audit_setting_change_begin(pstmt->utilityStmt);
	AuditStatementMark mark;

	if (OidIsValid(dboid))
		audit_worker_release_database(dboid);
	if (drops_audit_db(pstmt->utilityStmt))
		lock_out_workers();
	if (audit_restore_skips_statement(pstmt->utilityStmt))
		return;

	/* DDL refuses relations still open: the event writer's, for one. */
	audit_event_writer_close();
	/* COPY FROM and TRUNCATE fire triggers: they name the statement. */
	mark = audit_event_statement_enter(NULL, GetCurrentCommandId(false));
	PG_TRY();
	{
		if (prev_process_utility)
			prev_process_utility(pstmt, queryString, readOnlyTree, context, params, queryEnv, dest, qc);
		else
			standard_ProcessUtility(pstmt, queryString, readOnlyTree, context, params, queryEnv, dest, qc);
	}
	PG_FINALLY();
	{
		audit_event_statement_exit(mark);
	}
	PG_END_TRY();

	audit_setting_change_finish(change);
	/* COPY FROM fires row triggers without an executor: end their writer. */
	audit_event_writer_close();

	/* Only once it succeeded (DISCARD ALL is refused in a transaction block). */
	if (IsA(pstmt->utilityStmt, DiscardStmt) &&
		((DiscardStmt *) pstmt->utilityStmt)->target == DISCARD_ALL)
		audit_tenancy_discard();
}

/* audit_db.max_details_bytes: upper bound of one event's details document. */
int			audit_max_details_bytes = 1024 * 1024;

/* audit_db.change_reason: read by audit.change_reason() (SQL). */
static char *audit_change_reason = NULL;

/*
 * audit_pin_search_path
 *		Make the statements that follow resolve names only in pg_catalog
 *		and pg_temp, whatever the caller's search_path.  Returns the GUC nest
 *		level to pass to AtEOXact_GUC(true, ...) when done; an error undoes
 *		the setting with the transaction.
 */
int
audit_pin_search_path(void)
{
	int			nestlevel = NewGUCNestLevel();

	(void) set_config_option("search_path", "pg_catalog, pg_temp", PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
	return nestlevel;
}

/*
 * audit_plan_transaction_range_scans
 *		Plan the queries that follow for a narrow range of transaction ids
 *		(the sealer's rows, verify's new rows): through the BRIN index on
 *		audit_log (transaction_id, id), never a sequential scan of the log,
 *		and without JIT (the sequential-scan penalty makes every such plan
 *		look expensive enough to compile, which costs far more than the
 *		query).  Returns the GUC nest level to pass to AtEOXact_GUC(true, ...)
 *		when done; an error undoes the settings with the transaction.
 */
int
audit_plan_transaction_range_scans(void)
{
	int			nestlevel = NewGUCNestLevel();

	(void) set_config_option("enable_seqscan", "off", PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
	(void) set_config_option("jit", "off", PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
	return nestlevel;
}

/*
 * _PG_init
 *		Define the extension's settings and register its backend callbacks.
 *		Runs once per backend, when the library is loaded.
 */
void
_PG_init(void)
{
	DefineCustomIntVariable("audit_db.max_details_bytes",
							"Largest accepted audit event details document, in bytes of its canonical text.",
							"Events whose details are larger are refused with SQLSTATE 54000.",
							&audit_max_details_bytes,
							1024 * 1024,
							64,
							64 * 1024 * 1024,
							PGC_SUSET,
							GUC_UNIT_BYTE,
							NULL, NULL, NULL);

	DefineCustomIntVariable("audit_db.seal_interval",
							"How often the background worker seals new audit rows into the chain.",
							"Needs audit_db in shared_preload_libraries; without it, call audit.seal().",
							&audit_seal_interval_ms,
							200,
							10,
							3600 * 1000,
							PGC_SIGHUP,
							GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("audit_db.seal_block_rows",
							"Most audit rows sealed into one chain block.",
							NULL,
							&audit_seal_block_rows,
							10000,
							1,
							1000000,
							PGC_SUSET,
							0,
							NULL, NULL, NULL);

	DefineCustomIntVariable("audit_db.unsealed_grace",
							"Age after which audit.verify() reports a finished but unsealed row.",
							"Also how long the background sealer (or, without it, any seal) must have been missing.",
							&audit_unsealed_grace,
							60,
							1,
							7 * 24 * 3600,
							PGC_SUSET,
							GUC_UNIT_S,
							NULL, NULL, NULL);

	DefineCustomIntVariable("audit_db.max_database_workers",
							"Most audit_db database workers running at once.",
							"Each needs a slot of max_worker_processes.",
							&audit_max_database_workers,
							8,
							0,
							1024,
							PGC_SIGHUP,
							0,
							NULL, NULL, NULL);

	DefineCustomStringVariable("audit_db.skip_databases",
							   "Databases (comma-separated) the audit_db launcher never starts a worker for.",
							   NULL,
							   &audit_skip_databases,
							   "",
							   PGC_SIGHUP,
							   GUC_LIST_INPUT,
							   NULL, NULL, NULL);

	DefineCustomStringVariable("audit_db.worker_role",
							   "Role the audit_db database workers connect as; empty: the bootstrap superuser.",
							   "It needs LOGIN and must own the audit_db extension in each database "
							   "(maintenance creates and drops partitions). Applies to workers started after a reload.",
							   &audit_worker_role,
							   "",
							   PGC_SIGHUP,
							   0,
							   NULL, NULL, NULL);

	DefineCustomIntVariable("audit_db.premake_months",
							"Months of audit_log partitions kept created ahead of the current month.",
							"Maintenance (the worker, or CALL audit.run_maintenance()) creates them.",
							&audit_premake_months,
							6,
							0,
							120,
							PGC_SUSET,
							0,
							NULL, NULL, NULL);

	DefineCustomIntVariable("audit_db.maintenance_interval",
							"How often the background worker runs audit_db maintenance; 0 turns it off.",
							"Needs audit_db in shared_preload_libraries; without it, CALL audit.run_maintenance() from cron.",
							&audit_maintenance_interval_s,
							3600,
							0,
							7 * 24 * 3600,
							PGC_SIGHUP,
							GUC_UNIT_S,
							NULL, NULL, NULL);

	DefineCustomIntVariable("audit_db.maintenance_history_days",
							"Days audit.maintenance_run keeps the record of a maintenance run; 0 keeps them for ever.",
							"Each maintenance run removes older records.",
							&audit_maintenance_history_days,
							90,
							0,
							36500,
							PGC_SUSET,
							0,
							NULL, NULL, NULL);

	DefineCustomIntVariable("audit_db.error_log_days",
							"Days audit.error_log keeps an error; 0 keeps them for ever.",
							"Each maintenance run removes older errors (audit.error_aggregation counts what is left).",
							&audit_error_log_days,
							90,
							0,
							36500,
							PGC_SUSET,
							0,
							NULL, NULL, NULL);

	DefineCustomIntVariable("audit_db.maintenance_lock_timeout",
							"Longest wait for a table lock in audit_db maintenance DDL; 0 waits forever.",
							"A step that times out fails (SQLSTATE 55P03) and the next run retries it.",
							&audit_maintenance_lock_timeout_ms,
							100,
							0,
							INT_MAX,
							PGC_SUSET,
							GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomStringVariable("audit_db.pseudonym_encryption_key",
							   "Passphrase of the encryption strategy of audit.pseudonymize() when none is passed in.",
							   "Superuser-only: set it in postgresql.conf (or a file it includes), never with ALTER "
							   "DATABASE or ALTER ROLE, whose settings every role can read.",
							   &audit_pseudonym_encryption_key,
							   "",
							   PGC_SUSET,
							   GUC_SUPERUSER_ONLY | GUC_NO_SHOW_ALL | GUC_NOT_IN_SAMPLE,
							   NULL, NULL, NULL);

	DefineCustomIntVariable("audit_db.alert_interval",
							"How often the background worker evaluates alert rules and runs due worker-scheduled reports; 0 turns it off.",
							"Needs audit_db in shared_preload_libraries; without it, call audit.evaluate_alert_rules() from cron.",
							&audit_alert_interval_s,
							60,
							0,
							24 * 3600,
							PGC_SIGHUP,
							GUC_UNIT_S,
							NULL, NULL, NULL);

	DefineCustomStringVariable("audit_db.change_reason",
							   "Why the configuration change in progress is made: recorded in audit.config_change_event.",
							   "SET LOCAL it before changing a policy row or an audit_db setting.",
							   &audit_change_reason,
							   "",
							   PGC_USERSET,
							   0,
							   NULL, NULL, NULL);

	MarkGUCPrefixReserved("audit_db");

	audit_log_columns_init();
	audit_immutability_init();
	audit_verification_init();
	audit_tenancy_init();
	audit_organization_roles_init();
	audit_change_tracking_init();
	audit_event_writer_init();
	audit_restore_init();
	if (process_shared_preload_libraries_in_progress)
		audit_worker_register_launcher();

	prev_process_utility = ProcessUtility_hook;
	ProcessUtility_hook = audit_process_utility;
}
