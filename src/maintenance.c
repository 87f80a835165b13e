/*-------------------------------------------------------------------------
 *
 * maintenance.c
 *	  audit.run_maintenance(): the periodic upkeep of an audit_db database,
 *	  run by the database worker every audit_db.maintenance_interval, or by
 *	  hand / pg_cron with CALL.
 *
 * Steps, in order:
 *	premake      the partitions of the current month and the next
 *	             audit_db.premake_months months exist;
 *	default      rows that landed in the default partition raise a WARNING
 *	             and move into their month's partition, created for them;
 *	seal         a seal run catches up whatever the sealer has not sealed;
 *	retention    partitions that may hold expired rows get their summary
 *	             counted (once, and again when stale), then partitions whose
 *	             every row expired are dropped and expired rows of the others
 *	             deleted, each removal sealed into the chain (retention.c),
 *	             one partition per step; rows a policy archives move into
 *	             audit.archive_storage (a failed archive job is recorded in
 *	             audit.archive_dlq_event); archive entries whose policy
 *	             expired them are removed, one per step;
 *	history      records of runs older than audit_db.maintenance_history_days
 *	             are removed, and runs left 'running' by a crash (no run can
 *	             be running while this one holds the lock) become 'interrupted';
 *	             errors older than audit_db.error_log_days leave
 *	             audit.error_log.
 *
 * Only one run at a time per database: a run holds a session advisory lock
 * (key AUDIT_MAINTENANCE_LOCK_KEY) and a second caller returns at once.
 * Each step runs in a subtransaction, so a failing step is rolled back,
 * recorded and followed by the next one; when the caller allows it (CALL
 * outside a transaction block, and the worker) each step also commits, so
 * no lock outlives its step.  DDL waits for locks at most
 * audit_db.maintenance_lock_timeout, so maintenance never queues for long
 * behind, or in front of, the application's writes.  On a hot standby it
 * does nothing.  Every run is recorded in audit.maintenance_run.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "commands/trigger.h"
#include "executor/spi.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "nodes/parsenodes.h"
#include "utils/acl.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/fmgrprotos.h"
#include "utils/guc.h"
#include "utils/json.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/resowner.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "audit_db.h"
#include "maintenance.h"
#include "partition_manager.h"
#include "archive.h"
#include "partitions.h"
#include "restore.h"
#include "retention.h"
#include "sealing.h"

int			audit_maintenance_interval_s = 3600;
int			audit_maintenance_history_days = 90;
int			audit_error_log_days = 90;

/* Most months drained from the default partition in one run. */
#define DEFAULT_MONTHS_PER_RUN		120

typedef struct MaintenanceRun
{
	MemoryContext cxt;			/* outlives the steps' transactions */
	bool		can_commit;
	TimestampTz as_of;
	List	   *created;		/* names of partitions created */
	int64		rows_moved;
	int64		rows_relocated;
	int64		default_rows;
	int			blocks_sealed;
	int64		rows_sealed;
	int			partitions_summarized;
	int64		rows_removed;
	int64		rows_archived;
	int			archives_expired;
	int64		archived_rows_expired;
	List	   *retention;		/* JSON objects (text): what retention removed */
	List	   *errors;			/* "step: message" */
	int			last_sqlstate;	/* of the last failed step */
	char	   *last_message;
	int64		run_id;
} MaintenanceRun;

typedef void (*StepFunction) (MaintenanceRun *run, void *arg);

/*
 * end_step
 *		Commit what a step did, when the caller allows it.
 */
static void
end_step(MaintenanceRun *run)
{
	if (run->can_commit)
	{
		SPI_commit();
		SPI_start_transaction();
	}
}

/*
 * run_step
 *		Run fn in a subtransaction with an active snapshot; on error roll it
 *		back, remember the error and warn.  Returns whether it succeeded.
 */
static bool
run_step(MaintenanceRun *run, const char *step, StepFunction fn, void *arg)
{
	MemoryContext oldcxt = CurrentMemoryContext;
	ResourceOwner oldowner = CurrentResourceOwner;
	volatile bool ok = true;

	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(oldcxt);
	PG_TRY();
	{
		/* A procedure cannot pin search_path with SET and still commit: pin it per step. */
		int			save_nestlevel = audit_pin_search_path();

		PushActiveSnapshot(GetTransactionSnapshot());
		fn(run, arg);
		PopActiveSnapshot();
		AtEOXact_GUC(true, save_nestlevel);
		ReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(oldcxt);
		CurrentResourceOwner = oldowner;
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(run->cxt);
		edata = CopyErrorData();
		FlushErrorState();
		RollbackAndReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(oldcxt);
		CurrentResourceOwner = oldowner;

		run->errors = lappend(run->errors,
							  MemoryContextStrdup(run->cxt, psprintf("%s: %s", step, edata->message)));
		run->last_sqlstate = edata->sqlerrcode;
		run->last_message = MemoryContextStrdup(run->cxt, edata->message);
		ereport(WARNING,
				(errcode(edata->sqlerrcode),
				 errmsg("audit_db maintenance step \"%s\" failed: %s", step, edata->message),
				 errhint("The step is retried by the next maintenance run; see audit.maintenance_run.")));
		FreeErrorData(edata);
		ok = false;
	}
	PG_END_TRY();
	end_step(run);
	return ok;
}

/* Create (if missing) the partition of the month holding *(TimestampTz *) arg. */
static void
step_month_partition(MaintenanceRun *run, void *arg)
{
	AuditMonthPartition p = audit_create_month_partition(*(TimestampTz *) arg);

	if (p.created)
	{
		MemoryContext old = MemoryContextSwitchTo(run->cxt);

		run->created = lappend(run->created, get_rel_name(p.relid));
		MemoryContextSwitchTo(old);
	}
	run->rows_moved += p.rows_moved;
	run->rows_relocated += p.rows_relocated;
}

/* The months of the rows in the default partition, with their row counts. */
typedef struct DefaultMonths
{
	int			n;
	TimestampTz months[DEFAULT_MONTHS_PER_RUN];
	int64		rows[DEFAULT_MONTHS_PER_RUN];
} DefaultMonths;

static void
step_scan_default(MaintenanceRun *run, void *arg)
{
	DefaultMonths *dm = (DefaultMonths *) arg;
	AuditPartition *parts;
	int			nparts;

	dm->n = 0;
	parts = audit_log_partitions(&nparts);
	for (int i = 0; i < nparts; i++)
	{
		char	   *sql;
		int			rc;

		if (!parts[i].is_default)
			continue;
		sql = psprintf("SELECT pg_catalog.date_trunc('month', \"timestamp\", 'UTC'), pg_catalog.count(*) FROM ONLY %s"
					   " GROUP BY 1 ORDER BY 1 LIMIT %d",
					   quote_qualified_identifier(get_namespace_name(get_rel_namespace(parts[i].relid)),
												  get_rel_name(parts[i].relid)),
					   DEFAULT_MONTHS_PER_RUN);
		rc = SPI_execute(sql, true, 0);
		if (rc != SPI_OK_SELECT)
			elog(ERROR, "reading the default partition failed: %s", SPI_result_code_string(rc));
		for (uint64 r = 0; r < SPI_processed && dm->n < DEFAULT_MONTHS_PER_RUN; r++)
		{
			bool		isnull;

			dm->months[dm->n] = DatumGetTimestampTz(SPI_getbinval(SPI_tuptable->vals[r],
																  SPI_tuptable->tupdesc, 1, &isnull));
			dm->rows[dm->n] = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[r],
														  SPI_tuptable->tupdesc, 2, &isnull));
			run->default_rows += dm->rows[dm->n];
			dm->n++;
		}
	}
}

static void
step_seal(MaintenanceRun *run, void *arg)
{
	AuditSealResult r = audit_seal_run();

	run->blocks_sealed += r.blocks;
	run->rows_sealed += r.rows;
}

/* Plan retention: the targets, in the run's memory. */
static void
step_retention_plan(MaintenanceRun *run, void *arg)
{
	*(List **) arg = audit_retention_targets(run->as_of, run->cxt);
}

static void
step_retention_summarize(MaintenanceRun *run, void *arg)
{
	audit_retention_summarize((AuditRetentionTarget *) arg);
	run->partitions_summarized++;
}

/* A timestamp as JSON: a quoted ISO 8601 string, whatever the DateStyle. */
static void
append_json_timestamp(StringInfo buf, TimestampTz t)
{
	escape_json(buf, JsonEncodeDateTime(NULL, TimestampTzGetDatum(t), TIMESTAMPTZOID, NULL));
}

static void
step_retention_enforce(MaintenanceRun *run, void *arg)
{
	AuditRetentionTarget *t = (AuditRetentionTarget *) arg;
	StringInfoData buf;
	MemoryContext old;
	ListCell   *lc;
	bool		first = true;

	audit_retention_enforce(t, run->as_of);
	run->rows_removed += t->rows_removed;
	run->rows_archived += t->rows_archived;

	old = MemoryContextSwitchTo(run->cxt);
	initStringInfo(&buf);
	appendStringInfoString(&buf, "{\"partition\": ");
	escape_json(&buf, t->name);
	appendStringInfoString(&buf, ", \"range_from\": ");
	append_json_timestamp(&buf, t->from);
	appendStringInfo(&buf, ", \"action\": \"%s\", \"rows\": " INT64_FORMAT ", \"archived\": " INT64_FORMAT,
					 t->skipped ? "skip" : t->drop ? "drop" : "remove", t->rows_removed, t->rows_archived);
	if (t->skipped)
	{
		appendStringInfoString(&buf, ", \"reason\": ");
		escape_json(&buf, t->skipped);
	}
	if (!t->drop)
	{
		appendStringInfoString(&buf, ", \"groups\": [");
		foreach(lc, t->groups)
		{
			AuditRetentionGroup *g = (AuditRetentionGroup *) lfirst(lc);

			appendStringInfoString(&buf, first ? "{\"retention_policy\": " : ", {\"retention_policy\": ");
			escape_json(&buf, g->retention_policy);
			appendStringInfoString(&buf, ", \"data_classification\": ");
			escape_json(&buf, g->data_classification);
			appendStringInfoString(&buf, ", \"cutoff\": ");
			append_json_timestamp(&buf, g->cutoff);
			if (g->archive)
			{
				appendStringInfoString(&buf, ", \"archive_cutoff\": ");
				append_json_timestamp(&buf, g->archive_cutoff);
			}
			appendStringInfo(&buf, ", \"rows\": " INT64_FORMAT ", \"archived\": " INT64_FORMAT "}",
							 g->rows_removed, g->rows_archived);
			first = false;
		}
		appendStringInfoChar(&buf, ']');
	}
	appendStringInfoChar(&buf, '}');
	run->retention = lappend(run->retention, buf.data);
	MemoryContextSwitchTo(old);
}

/* Record the failed archive jobs of a target in audit.archive_dlq_event. */
static void
step_archive_dead_letters(MaintenanceRun *run, void *arg)
{
	AuditRetentionTarget *t = (AuditRetentionTarget *) arg;
	ListCell   *lc;

	foreach(lc, t->groups)
	{
		AuditRetentionGroup *g = (AuditRetentionGroup *) lfirst(lc);

		if (!g->archive)
			continue;
		if (SPI_execute_with_args("INSERT INTO audit.archive_dlq_event (maintenance_run_id, partition, retention_policy,"
								  " data_classification, archive_cutoff, sqlstate, reason)"
								  " VALUES ($1, $2, $3, $4, $5, $6, $7)",
								  7, (Oid[]) {INT8OID, TEXTOID, TEXTOID, TEXTOID, TIMESTAMPTZOID, TEXTOID, TEXTOID},
								  (Datum[]) {Int64GetDatum(run->run_id), CStringGetTextDatum(t->name),
									  CStringGetTextDatum(g->retention_policy),
									  CStringGetTextDatum(g->data_classification),
									  TimestampTzGetDatum(g->archive_cutoff),
									  CStringGetTextDatum(unpack_sql_state(run->last_sqlstate)),
								  CStringGetTextDatum(run->last_message ? run->last_message : "unknown")},
								  NULL, false, 0) != SPI_OK_INSERT)
			elog(ERROR, "recording a failed archive job failed");
	}
}

/* The archive entries to expire. */
typedef struct ExpiryPlan
{
	MaintenanceRun *run;
	int64	   *ids;
	int			n;
} ExpiryPlan;

static void
step_archive_plan(MaintenanceRun *run, void *arg)
{
	ExpiryPlan *plan = (ExpiryPlan *) arg;

	plan->ids = audit_archive_expiries(run->as_of, run->cxt, &plan->n);
}

/* Remove one archive entry whose policy expired it. */
static void
step_archive_expire(MaintenanceRun *run, void *arg)
{
	int64		n = audit_archive_expire(*(int64 *) arg);

	if (n > 0)
	{
		run->archives_expired++;
		run->archived_rows_expired += n;
	}
}

/*
 * run_retention
 *		The retention steps: plan; count the partitions whose summary is
 *		missing or stale; plan again; drop or delete, one partition a step.
 */
static void
run_retention(MaintenanceRun *run)
{
	List	   *targets = NIL;
	ListCell   *lc;
	bool		summarized = false;

	if (!run_step(run, "retention", step_retention_plan, &targets))
		return;
	foreach(lc, targets)
	{
		AuditRetentionTarget *t = (AuditRetentionTarget *) lfirst(lc);

		if (t->summarize)
			summarized |= run_step(run, "retention summary", step_retention_summarize, t);
	}
	if (summarized && !run_step(run, "retention", step_retention_plan, &targets))
		return;
	foreach(lc, targets)
	{
		AuditRetentionTarget *t = (AuditRetentionTarget *) lfirst(lc);

		if (!t->summarize && (t->drop || t->groups != NIL) &&
			!run_step(run, "retention", step_retention_enforce, t) && !t->drop)
		{
			bool		archives = false;
			ListCell   *gc;

			foreach(gc, t->groups)
				archives |= ((AuditRetentionGroup *) lfirst(gc))->archive;
			if (archives)
				(void) run_step(run, "archive dead letters", step_archive_dead_letters, t);
		}
	}
}

/* Archive entries whose policy expired them: removed, one a step. */
static void
run_archive_expiry(MaintenanceRun *run)
{
	ExpiryPlan	plan = {run, NULL, 0};

	if (!run_step(run, "archive expiry", step_archive_plan, &plan))
		return;
	for (int i = 0; i < plan.n; i++)
		(void) run_step(run, "archive expiry", step_archive_expire, &plan.ids[i]);
}

/*
 * Forget old runs and old errors; mark the runs a crash left 'running' as
 * interrupted.
 */
static void
step_history(MaintenanceRun *run, void *arg)
{
	if (SPI_execute_with_args("UPDATE audit.maintenance_run SET status = 'interrupted'"
							  " WHERE status = 'running' AND run_id <> $1",
							  1, (Oid[]) {INT8OID}, (Datum[]) {Int64GetDatum(run->run_id)},
							  NULL, false, 0) != SPI_OK_UPDATE)
		elog(ERROR, "marking interrupted maintenance runs failed");
	if (audit_maintenance_history_days > 0 &&
		SPI_execute_with_args("DELETE FROM audit.maintenance_run"
							  " WHERE started_at < $1 - pg_catalog.make_interval(days => $2) AND run_id <> $3",
							  3, (Oid[]) {TIMESTAMPTZOID, INT4OID, INT8OID},
							  (Datum[]) {TimestampTzGetDatum(run->as_of), Int32GetDatum(audit_maintenance_history_days),
							  Int64GetDatum(run->run_id)},
							  NULL, false, 0) != SPI_OK_DELETE)
		elog(ERROR, "removing old maintenance records failed");
	if (audit_error_log_days > 0 &&
		SPI_execute_with_args("DELETE FROM audit.error_log WHERE occurred_at < $1 - pg_catalog.make_interval(days => $2)",
							  2, (Oid[]) {TIMESTAMPTZOID, INT4OID},
							  (Datum[]) {TimestampTzGetDatum(run->as_of), Int32GetDatum(audit_error_log_days)},
							  NULL, false, 0) != SPI_OK_DELETE)
		elog(ERROR, "removing old errors failed");
}

/* The run's actions as a JSON object (text). */
static char *
actions_json(MaintenanceRun *run)
{
	StringInfoData buf;
	ListCell   *lc;
	bool		first = true;

	initStringInfo(&buf);
	appendStringInfoString(&buf, "{\"partitions_created\": [");
	foreach(lc, run->created)
	{
		if (!first)
			appendStringInfoString(&buf, ", ");
		escape_json(&buf, (char *) lfirst(lc));
		first = false;
	}
	appendStringInfo(&buf, "], \"default_rows\": " INT64_FORMAT ", \"rows_moved\": " INT64_FORMAT
					 ", \"rows_relocated\": " INT64_FORMAT ", \"blocks_sealed\": %d, \"rows_sealed\": " INT64_FORMAT
					 ", \"partitions_summarized\": %d, \"rows_removed\": " INT64_FORMAT
					 ", \"rows_archived\": " INT64_FORMAT ", \"archives_expired\": %d"
					 ", \"archived_rows_expired\": " INT64_FORMAT ", \"retention\": [",
					 run->default_rows, run->rows_moved, run->rows_relocated, run->blocks_sealed,
					 run->rows_sealed, run->partitions_summarized, run->rows_removed, run->rows_archived,
					 run->archives_expired, run->archived_rows_expired);
	first = true;
	foreach(lc, run->retention)
	{
		if (!first)
			appendStringInfoString(&buf, ", ");
		appendStringInfoString(&buf, (char *) lfirst(lc));
		first = false;
	}
	appendStringInfoString(&buf, "]}");
	return buf.data;
}

/* The run's errors as a text[] datum (NULL when none). */
static Datum
errors_array(MaintenanceRun *run, bool *isnull)
{
	Datum	   *elems;
	int			n = list_length(run->errors);
	int			i = 0;
	ListCell   *lc;

	*isnull = (n == 0);
	if (n == 0)
		return (Datum) 0;
	elems = palloc(sizeof(Datum) * n);
	foreach(lc, run->errors)
		elems[i++] = CStringGetTextDatum((char *) lfirst(lc));
	return PointerGetDatum(construct_array(elems, n, TEXTOID, -1, false, TYPALIGN_INT));
}

AuditMaintenanceOutcome
audit_run_maintenance(TimestampTz as_of, bool can_commit, const char *via, int64 *run_id)
{
	MaintenanceRun run;
	volatile AuditMaintenanceOutcome outcome = MAINTENANCE_DONE;
	bool		locked;

	*run_id = 0;
	if (RecoveryInProgress())
	{
		ereport(NOTICE,
				(errmsg("audit_db maintenance does nothing on a hot standby"),
				 errhint("The primary runs it; its results reach the standby by replication.")));
		return MAINTENANCE_STANDBY;
	}
	audit_refuse_while_restoring("run audit_db maintenance");
	locked = DatumGetBool(DirectFunctionCall1(pg_try_advisory_lock_int8,
											  Int64GetDatum(AUDIT_MAINTENANCE_LOCK_KEY)));
	if (!locked)
	{
		ereport(NOTICE,
				(errmsg("another audit_db maintenance run is in progress in this database; nothing done"),
				 errhint("Runs take a session advisory lock; see pg_locks (locktype advisory).")));
		return MAINTENANCE_BUSY;
	}

	memset(&run, 0, sizeof(run));
	run.cxt = AllocSetContextCreate(TopMemoryContext, "audit_db maintenance", ALLOCSET_DEFAULT_SIZES);
	run.can_commit = can_commit;
	run.as_of = as_of;

	PG_TRY();
	{
		Oid			types[5] = {TEXTOID, TIMESTAMPTZOID, INT8OID, JSONBOID, TEXTARRAYOID};
		Datum		values[5];
		char		nulls[5] = {' ', ' ', ' ', ' ', ' '};
		bool		isnull;
		TimestampTz from;
		TimestampTz to;
		TimestampTz at;
		DefaultMonths *dm;

		values[0] = CStringGetTextDatum(via);
		values[1] = TimestampTzGetDatum(as_of);
		PushActiveSnapshot(GetTransactionSnapshot());
		if (SPI_execute_with_args("INSERT INTO audit.maintenance_run (via, as_of, status)"
								  " VALUES ($1, $2, 'running') RETURNING run_id",
								  2, types, values, NULL, false, 0) != SPI_OK_INSERT_RETURNING)
			elog(ERROR, "recording the maintenance run failed");
		*run_id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
		PopActiveSnapshot();
		end_step(&run);

		/* premake: this month and the next audit_db.premake_months. */
		audit_month_bounds(as_of, &from, &to);
		at = from;
		for (int i = 0; i <= audit_premake_months; i++)
		{
			TimestampTz next_from;

			(void) run_step(&run, "premake", step_month_partition, &at);
			audit_month_bounds(at, &next_from, &at);
		}

		/* default: move rows out of the default partition. */
		dm = MemoryContextAllocZero(run.cxt, sizeof(DefaultMonths));
		if (run_step(&run, "default partition", step_scan_default, dm))
		{
			for (int i = 0; i < dm->n; i++)
			{
				ereport(WARNING,
						(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						 errmsg("%lld audit rows of the month starting %s are in the default partition",
								(long long) dm->rows[i],
								DatumGetCString(DirectFunctionCall1(timestamptz_out,
																	TimestampTzGetDatum(dm->months[i])))),
						 errhint("Maintenance moves them into the month's partition, creating it; "
								 "check the clocks of the writers if the month is far from now.")));
				(void) run_step(&run, "default partition", step_month_partition, &dm->months[i]);
			}
		}

		/* seal: catch up. */
		(void) run_step(&run, "seal", step_seal, NULL);

		/* retention: after the seal, so that what expired is sealed. */
		run.run_id = *run_id;
		run_retention(&run);
		run_archive_expiry(&run);
		(void) run_step(&run, "history", step_history, NULL);

		values[0] = Int64GetDatum(*run_id);
		values[1] = CStringGetTextDatum(run.errors == NIL ? "done" : "errors");
		values[2] = DirectFunctionCall1(jsonb_in, CStringGetDatum(actions_json(&run)));
		values[3] = errors_array(&run, &isnull);
		nulls[3] = isnull ? 'n' : ' ';
		PushActiveSnapshot(GetTransactionSnapshot());
		if (SPI_execute_with_args("UPDATE audit.maintenance_run SET finished_at = pg_catalog.clock_timestamp(),"
								  " status = $2, actions = $3, errors = $4 WHERE run_id = $1",
								  4, (Oid[]) {INT8OID, TEXTOID, JSONBOID, TEXTARRAYOID}, values, nulls,
								  false, 0) != SPI_OK_UPDATE)
			elog(ERROR, "recording the maintenance run failed");
		PopActiveSnapshot();
		end_step(&run);
		outcome = run.errors == NIL ? MAINTENANCE_DONE : MAINTENANCE_ERRORS;
	}
	PG_FINALLY();
	{
		(void) DirectFunctionCall1(pg_advisory_unlock_int8, Int64GetDatum(AUDIT_MAINTENANCE_LOCK_KEY));
		MemoryContextDelete(run.cxt);
	}
	PG_END_TRY();
	return outcome;
}

PG_FUNCTION_INFO_V1(audit_run_maintenance_sql);

/*
 * audit_run_maintenance_sql
 *		PROCEDURE audit.run_maintenance(as_of timestamptz DEFAULT NULL):
 *		one maintenance run as of as_of (NULL: now).  Commits after each
 *		step when CALLed outside a transaction block.  Only the owner of
 *		audit.audit_log (or a superuser) may run it: it creates, moves and
 *		(with retention) drops partitions.
 */
Datum
audit_run_maintenance_sql(PG_FUNCTION_ARGS)
{
	bool		nonatomic = fcinfo->context != NULL && IsA(fcinfo->context, CallContext) &&
		!castNode(CallContext, fcinfo->context)->atomic;
	TimestampTz as_of = PG_ARGISNULL(0) ? GetCurrentTransactionStartTimestamp() : PG_GETARG_TIMESTAMPTZ(0);
	Oid			relid = audit_log_relid(false);
	int64		run_id;
	volatile AuditMaintenanceOutcome outcome = MAINTENANCE_DONE;

#if PG_VERSION_NUM >= 160000
	if (!object_ownercheck(RelationRelationId, relid, GetUserId()))
#else
	if (!pg_class_ownercheck(relid, GetUserId()))
#endif
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("only the owner of audit.audit_log may run audit_db maintenance"),
				 errhint("Run it as that role (or a superuser), or leave it to the background worker.")));
	if (TIMESTAMP_NOT_FINITE(as_of))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("maintenance needs a finite as_of time"),
				 errhint("Pass NULL for now.")));

	SPI_connect_ext(nonatomic ? SPI_OPT_NONATOMIC : 0);
	outcome = audit_run_maintenance(as_of, nonatomic, "call", &run_id);
	SPI_finish();

	if (outcome == MAINTENANCE_DONE || outcome == MAINTENANCE_ERRORS)
		ereport(NOTICE,
				(errmsg("audit_db maintenance run %lld %s", (long long) run_id,
						outcome == MAINTENANCE_DONE ? "done" : "done with errors"),
				 errdetail("See audit.maintenance_run.")));
	PG_RETURN_VOID();
}
