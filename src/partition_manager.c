/*-------------------------------------------------------------------------
 *
 * partition_manager.c
 *	  Monthly partitions of audit.audit_log: created ahead of time, and the
 *	  default partition drained into them.
 *
 * A month's partition is never created with CREATE TABLE ... PARTITION OF,
 * which takes ACCESS EXCLUSIVE on audit.audit_log and so stops every writer
 * (and queues behind any of them).  It is created as a plain table, filled
 * with the month's rows moved out of the default partition, and attached:
 * ATTACH PARTITION takes SHARE UPDATE EXCLUSIVE on the parent, which
 * writers do not conflict with, and ACCESS EXCLUSIVE only on the default
 * partition, which it must scan.  Every lock is awaited at most
 * audit_db.maintenance_lock_timeout; a busy table makes the call fail
 * (SQLSTATE 55P03) and the next maintenance run try again.
 *
 * Rows moved out of the default partition keep every field, so their leaf
 * hashes do not change.  The ones already sealed stay in the blocks of the
 * default partition; audit.audit_log_relocation lists them so that
 * audit.verify() finds them in their new partition.  The move serialises
 * with the sealer on the chain state row, so "already sealed" is exact.
 *
 * Decisions are taken from the partitions' real bounds (relpartbound, see
 * partitions.c), never from their names.
 *
 * A new partition's BRIN index (transaction_id, id) is left without a summary
 * of the range its inserts go to (leave_tail_unsummarized): CREATE INDEX and
 * ATTACH summarise the last range even when it is empty, and every insert
 * into a summarised range whose transaction_id exceeds the summary rewrites
 * it (a WAL record under an exclusive lock on the index page), which would
 * be every insert into the first 32 pages of each month.  The sealer
 * summarises ranges once they are full (sealing.c).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/brin.h"
#include "access/relation.h"
#include "access/table.h"
#include "catalog/namespace.h"
#include "catalog/pg_am.h"
#include "catalog/pg_type.h"
#include "commands/extension.h"
#include "executor/spi.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "storage/bufmgr.h"
#include "utils/builtins.h"
#include "utils/datetime.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/timestamp.h"

#include "audit_db.h"
#include "immutability.h"
#include "partition_manager.h"
#include "partitions.h"

static void leave_tail_unsummarized(Oid relid);

int			audit_premake_months = 6;
int			audit_maintenance_lock_timeout_ms = 100;

void
audit_month_bounds(TimestampTz at, TimestampTz *from, TimestampTz *to)
{
	struct pg_tm tm;
	fsec_t		fsec;

	if (TIMESTAMP_NOT_FINITE(at))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("cannot create an audit_log partition for %s",
						DatumGetCString(DirectFunctionCall1(timestamptz_out, TimestampTzGetDatum(at)))),
				 errhint("Pass a finite timestamp inside the month to create.")));
	if (timestamp2tm(at, NULL, &tm, &fsec, NULL, NULL) != 0)
		ereport(ERROR,
				(errcode(ERRCODE_DATETIME_VALUE_OUT_OF_RANGE),
				 errmsg("no audit_log partition can hold the time %s",
						DatumGetCString(DirectFunctionCall1(timestamptz_out, TimestampTzGetDatum(at)))),
				 errhint("Pass a finite timestamp inside the month to create.")));
	tm.tm_mday = 1;
	tm.tm_hour = tm.tm_min = tm.tm_sec = 0;
	if (tm2timestamp(&tm, 0, NULL, from) != 0)
		goto out_of_range;
	if (++tm.tm_mon > MONTHS_PER_YEAR)
	{
		tm.tm_mon = 1;
		tm.tm_year++;
	}
	if (tm2timestamp(&tm, 0, NULL, to) != 0 || !IS_VALID_TIMESTAMP(*to))
		goto out_of_range;
	return;

out_of_range:
	ereport(ERROR,
			(errcode(ERRCODE_DATETIME_VALUE_OUT_OF_RANGE),
			 errmsg("the month of %s is out of range for an audit_log partition",
					DatumGetCString(DirectFunctionCall1(timestamptz_out, TimestampTzGetDatum(at)))),
			 errhint("Pass a timestamp between 4713 BC and 294276 AD.")));
}

/* A bound as an unambiguous literal: ISO date and time in UTC. */
static char *
bound_literal(TimestampTz t)
{
	struct pg_tm tm;
	fsec_t		fsec;

	if (timestamp2tm(t, NULL, &tm, &fsec, NULL, NULL) != 0)
		elog(ERROR, "timestamp out of range");
	return quote_literal_cstr(psprintf("%04d-%02d-%02d %02d:%02d:%02d+00%s",
									   tm.tm_year > 0 ? tm.tm_year : -(tm.tm_year - 1),
									   tm.tm_mon, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
									   tm.tm_year > 0 ? "" : " BC"));
}

/* The partition's name: audit_log_YYYY_MM, by the month's first day. */
static char *
month_partition_name(TimestampTz from)
{
	struct pg_tm tm;
	fsec_t		fsec;

	if (timestamp2tm(from, NULL, &tm, &fsec, NULL, NULL) != 0)
		elog(ERROR, "timestamp out of range");
	if (tm.tm_year > 0)
		return psprintf("%s_%04d_%02d", AUDIT_LOG_TABLE_NAME, tm.tm_year, tm.tm_mon);
	return psprintf("%s_%04d_%02d_bc", AUDIT_LOG_TABLE_NAME, -(tm.tm_year - 1), tm.tm_mon);
}

/* Run one statement through SPI, or fail with what it was for. */
static void
run_sql(const char *sql, int nargs, Oid *types, Datum *values, int expected)
{
	int			rc = SPI_execute_with_args(sql, nargs, types, values, NULL, false, 0);

	if (rc != expected)
		elog(ERROR, "audit_db partition manager: \"%s\" failed: %s", sql, SPI_result_code_string(rc));
}

/*
 * move_default_rows
 *		Move the rows of [from, to) out of the default partition into the
 *		new table, as the audit_db C code (the only way to delete audit
 *		rows).  Records the moved rows that were sealed already.  Returns
 *		how many rows moved; *relocated gets how many were sealed.
 */
static int64
move_default_rows(Oid default_relid, const char *target, TimestampTz from, TimestampTz to,
				  int64 *relocated)
{
	char	   *deflt = quote_qualified_identifier(get_namespace_name(get_rel_namespace(default_relid)),
												   get_rel_name(default_relid));
	Oid			types[4] = {TIMESTAMPTZOID, TIMESTAMPTZOID, INT8OID, INT8OID};
	Datum		values[4] = {TimestampTzGetDatum(from), TimestampTzGetDatum(to), 0, 0};
	int64		horizon;
	int64		moved;
	bool		isnull;

	*relocated = 0;
	run_sql(psprintf("SELECT 1 FROM ONLY %s WHERE \"timestamp\" >= $1 AND \"timestamp\" < $2 LIMIT 1", deflt),
			2, types, values, SPI_OK_SELECT);
	if (SPI_processed == 0)
		return 0;

	/* The sealer's horizon cannot move while the rows move (seal runs lock this row first). */
	run_sql("SELECT horizon_xid, height FROM audit.audit_chain_state FOR UPDATE", 0, NULL, NULL, SPI_OK_SELECT);
	if (SPI_processed != 1)
		ereport(ERROR,
				(errcode(ERRCODE_DATA_CORRUPTED),
				 errmsg("audit.audit_chain_state must hold exactly one row"),
				 errhint("Run audit.verify() and restore the extension's state from a backup.")));
	horizon = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	values[2] = Int64GetDatum(horizon);
	values[3] = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull);

	run_sql(psprintf("LOCK TABLE ONLY %s IN ACCESS EXCLUSIVE MODE", deflt), 0, NULL, NULL, SPI_OK_UTILITY);

	audit_begin_privileged_change("moving rows out of the default partition");
	PG_TRY();
	{
		run_sql(psprintf("WITH moved AS (DELETE FROM ONLY %s WHERE \"timestamp\" >= $1 AND \"timestamp\" < $2"
						 " RETURNING *) INSERT INTO %s SELECT * FROM moved", deflt, target),
				2, types, values, SPI_OK_INSERT);
		moved = (int64) SPI_processed;
	}
	PG_FINALLY();
	{
		audit_end_privileged_change();
	}
	PG_END_TRY();

	run_sql(psprintf("INSERT INTO audit.audit_log_relocation (partition_from, partition_to, chain_height, row_count,"
					 " row_ids, transaction_id_min, transaction_id_max)"
					 " SELECT $1, $2, $4, count(*), array_agg(id ORDER BY id), min(transaction_id), max(transaction_id)"
					 " FROM %s WHERE transaction_id < $3 HAVING count(*) > 0", target),
			4, types, values, SPI_OK_INSERT);
	if (SPI_processed > 0)
	{
		run_sql("SELECT row_count FROM audit.audit_log_relocation ORDER BY relocation_id DESC LIMIT 1",
				0, NULL, NULL, SPI_OK_SELECT);
		*relocated = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	}
	return moved;
}

AuditMonthPartition
audit_create_month_partition(TimestampTz at)
{
	AuditMonthPartition result;
	AuditPartition *parts;
	int			nparts;
	volatile Oid default_relid = InvalidOid;
	Oid			nsp = get_namespace_oid(AUDIT_SCHEMA_NAME, false);
	char	   *name;
	char	   *qualified;
	int			save_nestlevel;
	bool		saved_creating_extension;
	Oid			saved_extension_object;

	memset(&result, 0, sizeof(result));
	audit_month_bounds(at, &result.from, &result.to);

	/* An existing partition with exactly these bounds is the answer. */
	parts = audit_log_partitions(&nparts);
	for (int i = 0; i < nparts; i++)
	{
		if (parts[i].unbounded)
		{
			if (parts[i].is_default)
				default_relid = parts[i].relid;
			continue;
		}
		if (parts[i].from == result.from && parts[i].to == result.to)
		{
			result.relid = parts[i].relid;
			return result;
		}
		if (parts[i].from < result.to && result.from < parts[i].to)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_OBJECT_DEFINITION),
					 errmsg("partition %s covers part of the month starting %s",
							get_rel_name(parts[i].relid), bound_literal(result.from)),
					 errhint("audit_db manages calendar months (UTC); detach or drop the overlapping partition first.")));
	}

	name = month_partition_name(result.from);
	if (OidIsValid(get_relname_relid(name, nsp)))
		ereport(ERROR,
				(errcode(ERRCODE_DUPLICATE_TABLE),
				 errmsg("relation %s.%s already exists but is not the partition for that month",
						AUDIT_SCHEMA_NAME, name),
				 errhint("Rename or drop it; audit_db creates the month's partition under that name.")));
	qualified = quote_qualified_identifier(AUDIT_SCHEMA_NAME, name);

	save_nestlevel = NewGUCNestLevel();
	(void) set_config_option("lock_timeout", psprintf("%d", audit_maintenance_lock_timeout_ms),
							 PGC_USERSET, PGC_S_SESSION, GUC_ACTION_SAVE, true, 0, false);

	/*
	 * Monthly partitions are data, not part of the extension, even when
	 * CREATE EXTENSION creates the first ones: retention drops them one by
	 * one and pg_dump dumps them with their rows.  So they are never
	 * recorded as members of the extension being created.
	 */
	saved_creating_extension = creating_extension;
	saved_extension_object = CurrentExtensionObject;
	creating_extension = false;
	CurrentExtensionObject = InvalidOid;
	PG_TRY();
	{
		run_sql(psprintf("CREATE TABLE %s (LIKE audit.audit_log INCLUDING DEFAULTS INCLUDING STORAGE"
						 " INCLUDING COMPRESSION)", qualified), 0, NULL, NULL, SPI_OK_UTILITY);
		if (OidIsValid(default_relid))
			result.rows_moved = move_default_rows(default_relid, qualified, result.from, result.to,
												  &result.rows_relocated);
		run_sql(psprintf("ALTER TABLE audit.audit_log ATTACH PARTITION %s FOR VALUES FROM (%s) TO (%s)",
						 qualified, bound_literal(result.from), bound_literal(result.to)),
				0, NULL, NULL, SPI_OK_UTILITY);
		/* Statement-level TRUNCATE triggers are not cloned to partitions. */
		run_sql(psprintf("CREATE TRIGGER audit_log_refuse_truncate BEFORE TRUNCATE ON %s"
						 " FOR EACH STATEMENT EXECUTE FUNCTION audit.refuse_audit_change()", qualified),
				0, NULL, NULL, SPI_OK_UTILITY);
		run_sql(psprintf("ALTER TABLE %s ENABLE ALWAYS TRIGGER audit_log_refuse_truncate", qualified),
				0, NULL, NULL, SPI_OK_UTILITY);
	}
	PG_FINALLY();
	{
		creating_extension = saved_creating_extension;
		CurrentExtensionObject = saved_extension_object;
	}
	PG_END_TRY();

	AtEOXact_GUC(true, save_nestlevel);

	result.relid = get_relname_relid(name, nsp);
	result.created = true;
	leave_tail_unsummarized(result.relid);
	return result;
}

/*
 * leave_tail_unsummarized
 *		Remove the summary of the last block range of every BRIN index of
 *		the partition relid (created by this transaction), so that inserts
 *		into that range do not each rewrite it.  Needs the caller to own the
 *		partition (it just created it).
 */
static void
leave_tail_unsummarized(Oid relid)
{
	Relation	rel = table_open(relid, AccessShareLock);
	BlockNumber nblocks = RelationGetNumberOfBlocks(rel);
	List	   *indexes = RelationGetIndexList(rel);
	ListCell   *lc;

	foreach(lc, indexes)
	{
		Oid			indexoid = lfirst_oid(lc);
		Relation	index = relation_open(indexoid, AccessShareLock);
		bool		is_brin = index->rd_rel->relam == BRIN_AM_OID;
		BlockNumber per_range = is_brin ? BrinGetPagesPerRange(index) : 1;
		BlockNumber tail;

		relation_close(index, AccessShareLock);
		if (!is_brin)
			continue;
		tail = nblocks == 0 ? 0 : (nblocks - 1) - (nblocks - 1) % per_range;
		(void) DirectFunctionCall2(brin_desummarize_range, ObjectIdGetDatum(indexoid),
								   Int64GetDatum((int64) tail));
	}
	list_free(indexes);
	table_close(rel, AccessShareLock);
}

PG_FUNCTION_INFO_V1(audit_create_month_partition_sql);

/*
 * audit_create_month_partition_sql
 *		audit.create_month_partition(at timestamptz) -> (partition regclass,
 *		range_from, range_to, created, rows_moved): the partition of the
 *		UTC month holding `at`, created if missing.
 */
Datum
audit_create_month_partition_sql(PG_FUNCTION_ARGS)
{
	TupleDesc	tupdesc;
	AuditMonthPartition p;
	Datum		values[5];
	bool		nulls[5] = {false, false, false, false, false};

	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("cannot create an audit_log partition for NULL"),
				 errhint("Pass a finite timestamp inside the month to create.")));
	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "audit.create_month_partition() must return a row");
	if (RecoveryInProgress())
		ereport(ERROR,
				(errcode(ERRCODE_READ_ONLY_SQL_TRANSACTION),
				 errmsg("cannot create audit_log partitions during recovery"),
				 errhint("Partitions are created on the primary.")));

	SPI_connect();
	p = audit_create_month_partition(PG_GETARG_TIMESTAMPTZ(0));
	SPI_finish();

	values[0] = ObjectIdGetDatum(p.relid);
	values[1] = TimestampTzGetDatum(p.from);
	values[2] = TimestampTzGetDatum(p.to);
	values[3] = BoolGetDatum(p.created);
	values[4] = Int64GetDatum(p.rows_moved);
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(BlessTupleDesc(tupdesc), values, nulls)));
}

PG_FUNCTION_INFO_V1(audit_partition_bounds_sql);

/*
 * audit_partition_bounds_sql
 *		audit.partition_bounds() -> setof (partition regclass, range_from,
 *		range_to, is_default): every leaf partition of audit.audit_log with
 *		the bounds of its relpartbound (NULL for the default partition or an
 *		unbounded side), in order of lower bound.
 */
Datum
audit_partition_bounds_sql(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	AuditPartition *parts;
	int			nparts;

	InitMaterializedSRF(fcinfo, 0);
	parts = audit_log_partitions(&nparts);
	for (int i = 0; i < nparts; i++)
	{
		Datum		values[4];
		bool		nulls[4] = {false, false, false, false};

		values[0] = ObjectIdGetDatum(parts[i].relid);
		values[1] = TimestampTzGetDatum(parts[i].from);
		values[2] = TimestampTzGetDatum(parts[i].to);
		nulls[1] = nulls[2] = parts[i].unbounded;
		values[3] = BoolGetDatum(parts[i].is_default);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}
