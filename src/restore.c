/*-------------------------------------------------------------------------
 *
 * restore.c
 *	  Dump and restore of a database that uses audit_db.
 *
 * pg_dump writes the audit rows, the chain's blocks and state and the
 * extension's configuration (tables registered with
 * pg_extension_config_dump); a restore must load them as they are, and
 * nothing may seal, maintain or stamp in between.  The protocol
 * (docs/operations.md, "Backup and restore"):
 *
 *	1. pg_restore runs with session_replication_role = replica.  CREATE
 *	   EXTENSION then creates only the structure (no monthly partitions, no
 *	   chain state, no keys: the dump brings them) and a row in
 *	   audit.restore_pending; the stamping trigger keeps rows that arrive
 *	   stamped as they are (audit_loading_verbatim).
 *	2. While audit.restore_pending has its row, nothing seals, maintains or
 *	   stamps: the worker waits, audit.seal() and maintenance refuse, and
 *	   new events are refused (55000) rather than stamped into the wrong
 *	   place of the chain.
 *	3. audit.finish_restore() ends the restore: the 64-bit transaction ids
 *	   of the new cluster may lie behind those of the dumped one (a new
 *	   cluster starts again near 0), so it sets the chain's xid_offset such
 *	   that every later transaction id, plus the offset, lies above every id
 *	   in the log and above the sealed horizon; then the rows unsealed at
 *	   dump time are sealed by the next run and new rows follow them.
 *
 * The offset and the pending flag are read once per backend and cached;
 * finish_restore() sends a relcache invalidation of the two tables, so
 * every backend reads them again.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/index.h"
#include "catalog/namespace.h"
#include "catalog/partition.h"
#include "commands/dbcommands.h"
#include "commands/trigger.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "nodes/parsenodes.h"
#include "utils/builtins.h"
#include "utils/inval.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"

#include "audit_db.h"
#include "restore.h"
#include "sealing.h"
#include "tenancy.h"

/* The per-backend copy of what the two tables say. */
static bool state_valid = false;
static Oid	state_relid = InvalidOid;	/* audit.audit_chain_state */
static Oid	pending_relid = InvalidOid; /* audit.restore_pending */
static int64 cached_offset = 0;
static bool cached_pending = false;

/*
 * invalidate_state
 *		Relcache callback: forget the cached state when either table (or
 *		everything) is invalidated.
 */
static void
invalidate_state(Datum arg, Oid relid)
{
	if (relid == InvalidOid || relid == state_relid || relid == pending_relid)
		state_valid = false;
}

void
audit_restore_init(void)
{
	CacheRegisterRelcacheCallback(invalidate_state, (Datum) 0);
}

bool
audit_loading_verbatim(void)
{
	return SessionReplicationRole == SESSION_REPLICATION_ROLE_REPLICA;
}

/*
 * table_has_rows / read_offset
 *		Direct reads of the two small tables (no SPI, no privilege check: the
 *		stamping trigger runs as any writer).
 */
static bool
table_has_rows(Oid relid)
{
	Relation	rel = table_open(relid, AccessShareLock);
	TableScanDesc scan = table_beginscan(rel, GetLatestSnapshot(), 0, NULL);
	bool		found = heap_getnext(scan, ForwardScanDirection) != NULL;

	table_endscan(scan);
	table_close(rel, AccessShareLock);
	return found;
}

static int64
read_offset(Oid relid)
{
	Relation	rel = table_open(relid, AccessShareLock);
	AttrNumber	attno = get_attnum(relid, "xid_offset");
	TableScanDesc scan;
	HeapTuple	tuple;
	int64		offset = 0;

	/* A database not yet updated to 0.2 has no offset column: 0. */
	if (attno != InvalidAttrNumber)
	{
		scan = table_beginscan(rel, GetLatestSnapshot(), 0, NULL);
		tuple = heap_getnext(scan, ForwardScanDirection);
		if (tuple != NULL)
		{
			bool		isnull;
			Datum		d = heap_getattr(tuple, attno, RelationGetDescr(rel), &isnull);

			if (!isnull)
				offset = DatumGetInt64(d);
		}
		table_endscan(scan);
	}
	table_close(rel, AccessShareLock);
	return offset;
}

/*
 * load_state
 *		Fill the cache from the tables (both may be missing: the extension
 *		is being created, or predates restore support).
 */
static void
load_state(void)
{
	Oid			nsp = get_namespace_oid("audit", true);

	state_relid = OidIsValid(nsp) ? get_relname_relid("audit_chain_state", nsp) : InvalidOid;
	pending_relid = OidIsValid(nsp) ? get_relname_relid("restore_pending", nsp) : InvalidOid;
	cached_offset = OidIsValid(state_relid) ? read_offset(state_relid) : 0;
	cached_pending = OidIsValid(pending_relid) && table_has_rows(pending_relid);
	/* Without the chain state there is nothing stable to cache. */
	state_valid = OidIsValid(state_relid);
}

bool
audit_restore_pending(void)
{
	if (!state_valid)
		load_state();
	return cached_pending;
}

int64
audit_chain_xid_offset(void)
{
	if (!state_valid)
		load_state();
	return cached_offset;
}

int64
audit_chain_xid(FullTransactionId fxid)
{
	return (int64) U64FromFullTransactionId(fxid) + audit_chain_xid_offset();
}

void
audit_refuse_while_restoring(const char *what)
{
	if (audit_restore_pending())
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("cannot %s: a restore of this database is not finished", what),
				 errhint("When pg_restore is done, a superuser runs SELECT audit.finish_restore(); "
						 "see docs/operations.md, \"Backup and restore\".")));
}

bool
audit_restore_skips_statement(Node *stmt)
{
	IndexStmt  *index = (IndexStmt *) stmt;
	Oid			nsp;
	Oid			relid;
	Oid			existing;

	if (!IsA(stmt, IndexStmt) || !audit_loading_verbatim() ||
		index->idxname == NULL || index->relation == NULL)
		return false;
	nsp = get_namespace_oid(AUDIT_SCHEMA_NAME, true);
	if (!OidIsValid(nsp))
		return false;
	relid = RangeVarGetRelid(index->relation, NoLock, true);
	if (!OidIsValid(relid) || get_rel_namespace(relid) != nsp || !get_rel_relispartition(relid) ||
		get_partition_parent(relid, true) != get_relname_relid(AUDIT_LOG_TABLE_NAME, nsp))
		return false;
	existing = get_relname_relid(index->idxname, nsp);
	if (!OidIsValid(existing) || get_rel_relkind(existing) != RELKIND_INDEX ||
		IndexGetRelation(existing, true) != relid)
		return false;
	ereport(NOTICE,
			(errmsg("index \"%s\" of audit_db partition \"%s\" exists already; not created again",
					index->idxname, get_rel_name(relid)),
			 errdetail("Attaching the partition to audit.audit_log created it.")));
	return true;
}

/*
 * run_sql
 *		One statement through SPI; returns SPI_processed.  Errors are the
 *		caller's bug, not the user's, hence elog.
 */
static uint64
run_sql(const char *sql, int expected)
{
	int			rc = SPI_execute(sql, false, 0);

	if (rc != expected)
		elog(ERROR, "audit_db restore: \"%s\" failed: %s", sql, SPI_result_code_string(rc));
	return SPI_processed;
}

static int64
int8_result(int col, bool *isnull)
{
	return DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, col, isnull));
}

PG_FUNCTION_INFO_V1(audit_finish_restore_sql);

/*
 * audit_finish_restore_sql
 *		audit.finish_restore(): end the restore begun by CREATE EXTENSION
 *		under session_replication_role = replica.  Superuser only; ERROR
 *		55000 when no restore is pending, 55006 while a pg_restore session
 *		is still connected to the database, XX001 when the dump brought
 *		audit rows but no chain state.  Sets the chain's xid_offset (see the file
 *		header), creates fresh GDPR keys when the dump had none (WARNING),
 *		records an audit_db.restore event and returns a summary (jsonb:
 *		rows, chain_height, unsealed_rows, xid_offset, previous_xid_offset).
 */
Datum
audit_finish_restore_sql(PG_FUNCTION_ARGS)
{
	int			save_nestlevel;
	bool		isnull;
	int64		next_xid;
	int64		max_xid = 0;
	int64		horizon;
	int64		height;
	int64		old_offset;
	int64		new_offset;
	int64		rows;
	int64		unsealed;
	char	   *summary;
	Jsonb	   *details;

	if (!superuser())
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("only a superuser may finish a restore"),
				 errhint("The superuser who ran pg_restore calls audit.finish_restore().")));
	if (RecoveryInProgress())
		ereport(ERROR,
				(errcode(ERRCODE_READ_ONLY_SQL_TRANSACTION),
				 errmsg("audit.finish_restore() cannot run on a standby"),
				 errhint("Run it on the primary; the standby follows by replication.")));

	state_valid = false;
	if (!audit_restore_pending())
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("no restore of this database is pending"),
				 errhint("audit.finish_restore() ends a restore begun by CREATE EXTENSION under "
						 "session_replication_role = replica (pg_restore; see docs/operations.md).")));

	save_nestlevel = audit_pin_search_path();
	SPI_connect();

	/* Rows still loading would arrive behind the horizon sealing is about to move. */
	if (run_sql("SELECT FROM pg_catalog.pg_stat_activity WHERE datname = pg_catalog.current_database()"
				" AND application_name = 'pg_restore' AND pid <> pg_catalog.pg_backend_pid()",
				SPI_OK_SELECT) > 0)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_IN_USE),
				 errmsg("pg_restore is still connected to this database"),
				 errhint("Run audit.finish_restore() when pg_restore has finished.")));

	/* Rows loaded, and the highest transaction id among them. */
	run_sql("SELECT count(*), coalesce(max(transaction_id), 0) FROM audit.audit_log", SPI_OK_SELECT);
	rows = int8_result(1, &isnull);
	max_xid = int8_result(2, &isnull);

	/* The chain state: from the dump, or fresh for a log with no rows. */
	if (run_sql("SELECT height, horizon_xid, xid_offset FROM audit.audit_chain_state FOR UPDATE",
				SPI_OK_SELECT) == 0)
	{
		if (rows > 0)
			ereport(ERROR,
					(errcode(ERRCODE_DATA_CORRUPTED),
					 errmsg("the restored database has %lld audit rows but no chain state", (long long) rows),
					 errhint("Restore a dump that includes the extension's data (not --schema-only or a "
							 "--table selection), then run audit.finish_restore() again.")));
		run_sql("INSERT INTO audit.audit_chain_state DEFAULT VALUES", SPI_OK_INSERT);
		run_sql("SELECT height, horizon_xid, xid_offset FROM audit.audit_chain_state FOR UPDATE",
				SPI_OK_SELECT);
	}
	height = int8_result(1, &isnull);
	horizon = int8_result(2, &isnull);
	old_offset = int8_result(3, &isnull);

	/* Keys of the GDPR strategies: a dump without them cannot bring them back. */
	if (run_sql("SELECT FROM audit.pseudonym_secret", SPI_OK_SELECT) == 0)
	{
		run_sql("INSERT INTO audit.pseudonym_secret (hmac_key, mapping_key)"
				" VALUES (audit.gdpr_random_bytes(32), audit.gdpr_random_bytes(32))", SPI_OK_INSERT);
		ereport(WARNING,
				(errcode(ERRCODE_WARNING),
				 errmsg("the dump held no pseudonym keys; new keys were created"),
				 errdetail("Pseudonyms of the hash strategy will differ from those made before, and "
						   "stored mappings cannot be looked up."),
				 errhint("Dump with audit_db 0.2 or later, which dumps audit.pseudonym_secret.")));
	}

	/*
	 * This transaction's id (it has one: FOR UPDATE above) is the lowest any
	 * event from now on can have; with the offset it must reach past the
	 * highest id in the log and the sealed horizon.
	 */
	next_xid = (int64) U64FromFullTransactionId(GetTopFullTransactionId());
	new_offset = Max(old_offset, Max(max_xid + 1, horizon) - next_xid);
	new_offset = Max(new_offset, 0);

	{
		Datum		v[1] = {Int64GetDatum(new_offset)};

		if (SPI_execute_with_args("UPDATE audit.audit_chain_state SET xid_offset = $1",
								  1, (Oid[]) {INT8OID}, v, NULL, false, 0) != SPI_OK_UPDATE)
			elog(ERROR, "audit_db restore: could not store the transaction id offset");
	}
	run_sql("DELETE FROM audit.restore_pending", SPI_OK_DELETE);

	run_sql("SELECT count(*) FROM audit.audit_log l, audit.audit_chain_state s"
			" WHERE l.transaction_id >= s.horizon_xid", SPI_OK_SELECT);
	unsealed = int8_result(1, &isnull);

	/* Every backend reads the offset and the flag again; this one at once. */
	CacheInvalidateRelcacheByRelid(state_relid);
	CacheInvalidateRelcacheByRelid(pending_relid);
	cached_offset = new_offset;
	cached_pending = false;

	summary = psprintf("{\"rows\": " INT64_FORMAT ", \"chain_height\": " INT64_FORMAT
					   ", \"unsealed_rows\": " INT64_FORMAT ", \"xid_offset\": " INT64_FORMAT
					   ", \"previous_xid_offset\": " INT64_FORMAT "}",
					   rows, height, unsealed, new_offset, old_offset);
	details = DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(summary)));

	SPI_finish();
	AtEOXact_GUC(true, save_nestlevel);

	audit_record_administrative_event("audit_db.restore", NULL, "database",
									  get_database_name(MyDatabaseId), details);
	PG_RETURN_JSONB_P(details);
}
