/*-------------------------------------------------------------------------
 *
 * retention.c
 *	  Removing audit rows whose retention policy has expired, with a sealed
 *	  record of every removal.
 *
 * What expires is decided in SQL, by audit.retention_plan()
 * (src/sql/65_retention.sql), from a per-partition summary of its sealed
 * rows per (retention_policy, data_classification): planning reads only
 * metadata, and a partition is counted again only after the sealer added
 * rows to it or retention removed some.
 *
 * A partition whose every row has expired is dropped (DROP TABLE, under
 * audit_db.maintenance_lock_timeout, after checking under the lock that
 * all its rows are sealed); the chain gets a "retention_partition" block
 * with the partition's bounds and its row count as the chain knows it.
 * A partition that still holds younger rows, or rows of longer policies,
 * loses only its expired sealed rows (DELETE through the privileged-change
 * permission); the chain gets "retention_rows" blocks listing the removed
 * ids and their leaves.  audit.verify() then expects exactly those rows to
 * be absent (docs/hash-format.md, "Retention blocks").
 *
 * Lock order: the log's locks first, the chain head (audit_chain_state
 * row) last, as the sealer does, so the two never wait for each other in
 * a cycle.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "audit_db.h"
#include "hashing.h"
#include "immutability.h"
#include "partition_manager.h"
#include "partitions.h"
#include "retention.h"
#include "sealing.h"

/* One removed row: its id and the leaf it was sealed with. */
typedef struct RemovedRow
{
	int64		id;
	uint8		leaf[AUDIT_HASH_LEN];
} RemovedRow;

/* Run one statement through SPI, or fail saying which. */
static void
retention_sql(const char *sql, int nargs, Oid *types, Datum *values, int expected)
{
	int			rc = SPI_execute_with_args(sql, nargs, types, values, NULL, false, 0);

	if (rc != expected)
		elog(ERROR, "audit_db retention: \"%s\" failed: %s", sql, SPI_result_code_string(rc));
}

List *
audit_retention_targets(TimestampTz as_of, MemoryContext cxt)
{
	List	   *targets = NIL;
	AuditRetentionTarget *cur = NULL;
	MemoryContext old;

	retention_sql("SELECT partition::oid, partition::text, range_from, range_to, action,"
				  " retention_policy, data_classification, cutoff"
				  " FROM audit.retention_plan($1) WHERE action <> 'keep'"
				  " ORDER BY range_from, action, retention_policy, data_classification",
				  1, (Oid[]) {TIMESTAMPTZOID}, (Datum[]) {TimestampTzGetDatum(as_of)}, SPI_OK_SELECT);

	old = MemoryContextSwitchTo(cxt);
	for (uint64 r = 0; r < SPI_processed; r++)
	{
		HeapTuple	t = SPI_tuptable->vals[r];
		TupleDesc	d = SPI_tuptable->tupdesc;
		bool		isnull;
		Oid			relid = DatumGetObjectId(SPI_getbinval(t, d, 1, &isnull));
		char	   *action = SPI_getvalue(t, d, 5);

		if (cur == NULL || cur->relid != relid)
		{
			cur = palloc0(sizeof(AuditRetentionTarget));
			cur->relid = relid;
			cur->name = SPI_getvalue(t, d, 2);
			cur->from = DatumGetTimestampTz(SPI_getbinval(t, d, 3, &isnull));
			cur->to = DatumGetTimestampTz(SPI_getbinval(t, d, 4, &isnull));
			targets = lappend(targets, cur);
		}
		if (strcmp(action, "summarize") == 0)
			cur->summarize = true;
		else if (strcmp(action, "drop") == 0)
			cur->drop = true;
		else if (strcmp(action, "delete") == 0)
		{
			AuditRetentionGroup *g = palloc0(sizeof(AuditRetentionGroup));

			g->retention_policy = SPI_getvalue(t, d, 6);
			g->data_classification = SPI_getvalue(t, d, 7);
			g->cutoff = DatumGetTimestampTz(SPI_getbinval(t, d, 8, &isnull));
			cur->groups = lappend(cur->groups, g);
		}
	}
	MemoryContextSwitchTo(old);
	SPI_freetuptable(SPI_tuptable);
	return targets;
}

void
audit_retention_summarize(const AuditRetentionTarget *target)
{
	retention_sql("SELECT audit.refresh_retention_summary($1)", 1, (Oid[]) {REGCLASSOID},
				  (Datum[]) {ObjectIdGetDatum(target->relid)}, SPI_OK_SELECT);
}

/*
 * partition_still_there
 *		Is relid still a partition of audit.audit_log with these bounds?
 */
static bool
partition_still_there(const AuditRetentionTarget *target)
{
	int			nparts;
	AuditPartition *parts = audit_log_partitions(&nparts);

	for (int i = 0; i < nparts; i++)
		if (parts[i].relid == target->relid)
			return !parts[i].unbounded && parts[i].from == target->from && parts[i].to == target->to;
	return false;
}

/*
 * rows_in_partition_by_chain
 *		How many rows the chain says the partition with these bounds holds:
 *		rows sealed into its blocks, plus sealed rows relocated into it from
 *		the default partition, less rows retention already removed from it,
 *		all since the last time a partition with these bounds was dropped.
 *		Metadata only.
 */
static int64
rows_in_partition_by_chain(TimestampTz from, TimestampTz to)
{
	bool		isnull;
	Datum		n;

	retention_sql("WITH last_drop AS ("
				  "  SELECT coalesce(max(height), 0) AS height,"
				  "         coalesce(max(sealed_at), '-infinity') AS sealed_at"
				  "  FROM audit.audit_chain_block"
				  "  WHERE kind = 'retention_partition' AND partition_from = $1 AND partition_to = $2)"
				  " SELECT (coalesce((SELECT sum(b.row_count) FROM audit.audit_chain_block b, last_drop d"
				  "                  WHERE b.kind = 'rows' AND b.partition_from = $1 AND b.partition_to = $2"
				  "                    AND b.height > d.height), 0)"
				  "      + coalesce((SELECT sum(r.row_count) FROM audit.audit_log_relocation r, last_drop d"
				  "                  WHERE r.partition_from = $1 AND r.partition_to = $2"
				  "                    AND r.relocated_at > d.sealed_at), 0)"
				  "      - coalesce((SELECT sum(b.row_count) FROM audit.audit_chain_block b, last_drop d"
				  "                  WHERE b.kind = 'retention_rows' AND b.partition_from = $1"
				  "                    AND b.partition_to = $2 AND b.height > d.height), 0))::bigint",
				  2, (Oid[]) {TIMESTAMPTZOID, TIMESTAMPTZOID},
				  (Datum[]) {TimestampTzGetDatum(from), TimestampTzGetDatum(to)}, SPI_OK_SELECT);
	n = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	return isnull ? 0 : DatumGetInt64(n);
}

/*
 * seal_removal
 *		Append retention blocks for one removal and move the chain head.
 *		For a dropped partition (kind retention_partition): one block
 *		without ids holding `dropped_rows`.  For deleted rows: blocks of at
 *		most audit_db.seal_block_rows ids each, in id order.  The caller
 *		holds the chain head (head).
 */
static void
seal_removal(AuditChainHead *head, const char *kind, const AuditRetentionTarget *target,
			 RemovedRow *rows, int64 nrows, int64 dropped_rows)
{
	TimestampTz now = GetCurrentTimestamp();
	int64		done = 0;
	uint8		header_hash[AUDIT_HASH_LEN];
	int			chunk_max = Max(audit_seal_block_rows, 1);
	Datum	   *ids = palloc(sizeof(Datum) * Min(Max(nrows, 1), chunk_max));
	uint8	   *leaves = palloc((Size) AUDIT_HASH_LEN * Min(Max(nrows, 1), chunk_max));

	do
	{
		AuditBlockHeader h;
		int			n = (int) Min(nrows - done, (int64) chunk_max);

		for (int i = 0; i < n; i++)
		{
			ids[i] = Int64GetDatum(rows[done + i].id);
			memcpy(leaves + (Size) i * AUDIT_HASH_LEN, rows[done + i].leaf, AUDIT_HASH_LEN);
		}
		memset(&h, 0, sizeof(h));
		h.height = head->height + 1;
		memcpy(h.prev_hash, head->head_hash, AUDIT_HASH_LEN);
		h.kind = kind;
		h.in_default_partition = false;
		h.partition_from = target->from;
		h.partition_to = target->to;
		h.xid_from = h.xid_to = head->horizon_xid;
		h.row_count = (rows == NULL) ? dropped_rows : n;
		h.rows_total = head->rows_total;
		h.sealed_at = now;
		audit_append_block(&h, ids, leaves, n, header_hash);
		head->height = h.height;
		memcpy(head->head_hash, header_hash, AUDIT_HASH_LEN);
		done += n;
	} while (done < nrows);

	retention_sql("UPDATE audit.audit_chain_state SET height = $1, head_hash = $2", 2,
				  (Oid[]) {INT8OID, BYTEAOID},
				  (Datum[]) {Int64GetDatum(head->height),
				  PointerGetDatum(audit_bytea_from_bytes(head->head_hash, AUDIT_HASH_LEN))},
				  SPI_OK_UPDATE);
	retention_sql("DELETE FROM audit.retention_summary WHERE partition_oid = $1", 1, (Oid[]) {OIDOID},
				  (Datum[]) {ObjectIdGetDatum(target->relid)}, SPI_OK_DELETE);
	pfree(ids);
	pfree(leaves);
}

/*
 * drop_partition
 *		Drop a partition whose every row expired.  Under the parent's
 *		ACCESS EXCLUSIVE lock (nothing is inserted meanwhile), checks that
 *		the partition is unchanged since it was planned and that all its
 *		rows are sealed.
 */
static void
drop_partition(AuditRetentionTarget *target, TimestampTz as_of)
{
	char	   *qualified = quote_qualified_identifier(get_namespace_name(get_rel_namespace(target->relid)),
													   get_rel_name(target->relid));
	AuditChainHead head;
	int64		nrows;
	bool		isnull;
	int			save_nestlevel;

	retention_sql("LOCK TABLE ONLY audit.audit_log IN ACCESS EXCLUSIVE MODE", 0, NULL, NULL, SPI_OK_UTILITY);
	if (!partition_still_there(target))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("partition %s changed while retention planned to drop it", target->name),
				 errhint("The next maintenance run plans again.")));

	/* Still every row expired, with an up-to-date summary? */
	retention_sql("SELECT bool_and(action = 'drop') FROM audit.retention_plan($1) WHERE partition = $2",
				  2, (Oid[]) {TIMESTAMPTZOID, OIDOID},
				  (Datum[]) {TimestampTzGetDatum(as_of), ObjectIdGetDatum(target->relid)}, SPI_OK_SELECT);
	if (SPI_processed != 1 || !DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull)) ||
		isnull)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("partition %s received rows since retention planned to drop it", target->name),
				 errhint("The next maintenance run counts its rows again.")));

	audit_lock_chain_head(&head);

	save_nestlevel = audit_plan_transaction_range_scans();
	retention_sql(psprintf("SELECT EXISTS (SELECT FROM ONLY %s WHERE transaction_id >= $1)", qualified),
				  1, (Oid[]) {INT8OID}, (Datum[]) {Int64GetDatum(head.horizon_xid)}, SPI_OK_SELECT);
	AtEOXact_GUC(true, save_nestlevel);
	if (DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull)))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("partition %s holds rows that are not sealed yet", target->name),
				 errhint("Retention drops it once the sealer has sealed them; see audit.chain_status.")));

	nrows = rows_in_partition_by_chain(target->from, target->to);
	retention_sql(psprintf("DROP TABLE %s", qualified), 0, NULL, NULL, SPI_OK_UTILITY);
	seal_removal(&head, AUDIT_BLOCK_RETENTION_PARTITION, target, NULL, 0, nrows);
	target->rows_removed = nrows;
}

static int
removed_row_cmp(const void *a, const void *b)
{
	int64		x = ((const RemovedRow *) a)->id;
	int64		y = ((const RemovedRow *) b)->id;

	return (x > y) - (x < y);
}

/*
 * delete_expired_rows
 *		Delete the sealed rows of each expired group of the partition
 *		(timestamp before the group's cutoff), then seal the removal.
 */
static void
delete_expired_rows(AuditRetentionTarget *target)
{
	char	   *qualified = quote_qualified_identifier(get_namespace_name(get_rel_namespace(target->relid)),
													   get_rel_name(target->relid));
	char	   *sql = psprintf("DELETE FROM ONLY %s WHERE retention_policy = $1 AND data_classification::text = $2"
							   " AND \"timestamp\" < $3 AND transaction_id < $4 RETURNING id, hash", qualified);
	MemoryContext cxt = AllocSetContextCreate(CurrentMemoryContext, "audit_db retention rows",
											  ALLOCSET_DEFAULT_SIZES);
	RemovedRow *rows = NULL;
	int64		nrows = 0;
	int64		cap = 0;
	int64		horizon;
	AuditChainHead head;
	ListCell   *lc;
	bool		isnull;

	if (!partition_still_there(target))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("partition %s changed while retention planned for it", target->name),
				 errhint("The next maintenance run plans again.")));

	/* Only sealed rows go: those below the sealed horizon (it only grows). */
	retention_sql("SELECT horizon_xid FROM audit.audit_chain_state", 0, NULL, NULL, SPI_OK_SELECT);
	if (SPI_processed != 1)
		ereport(ERROR,
				(errcode(ERRCODE_DATA_CORRUPTED),
				 errmsg("audit.audit_chain_state must hold exactly one row"),
				 errhint("Run audit.verify() and restore the extension's state from a backup.")));
	horizon = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));

	audit_begin_privileged_change("retention");
	PG_TRY();
	{
		foreach(lc, target->groups)
		{
			AuditRetentionGroup *g = (AuditRetentionGroup *) lfirst(lc);
			MemoryContext old;

			retention_sql(sql, 4, (Oid[]) {TEXTOID, TEXTOID, TIMESTAMPTZOID, INT8OID},
						  (Datum[]) {CStringGetTextDatum(g->retention_policy),
							  CStringGetTextDatum(g->data_classification),
						  TimestampTzGetDatum(g->cutoff), Int64GetDatum(horizon)},
						  SPI_OK_DELETE_RETURNING);
			g->rows_removed = (int64) SPI_processed;
			old = MemoryContextSwitchTo(cxt);
			if (nrows + (int64) SPI_processed > cap)
			{
				cap = Max(cap * 2, nrows + (int64) SPI_processed);
				if ((Size) cap * sizeof(RemovedRow) > MaxAllocHugeSize)
					ereport(ERROR,
							(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
							 errmsg("too many expired rows in partition %s for one retention run", target->name),
							 errhint("Lower the backlog by running maintenance more often.")));
				rows = rows == NULL ? MemoryContextAllocHuge(cxt, cap * sizeof(RemovedRow))
					: repalloc_huge(rows, cap * sizeof(RemovedRow));
			}
			MemoryContextSwitchTo(old);
			for (uint64 r = 0; r < SPI_processed; r++)
			{
				HeapTuple	t = SPI_tuptable->vals[r];
				bytea	   *hash;

				rows[nrows].id = DatumGetInt64(SPI_getbinval(t, SPI_tuptable->tupdesc, 1, &isnull));
				hash = DatumGetByteaPP(SPI_getbinval(t, SPI_tuptable->tupdesc, 2, &isnull));
				if (isnull || VARSIZE_ANY_EXHDR(hash) != AUDIT_HASH_LEN)
					memset(rows[nrows].leaf, 0, AUDIT_HASH_LEN);	/* verify reports the row */
				else
					memcpy(rows[nrows].leaf, VARDATA_ANY(hash), AUDIT_HASH_LEN);
				nrows++;
			}
			SPI_freetuptable(SPI_tuptable);
			target->rows_removed += g->rows_removed;
		}
	}
	PG_FINALLY();
	{
		audit_end_privileged_change();
	}
	PG_END_TRY();

	if (nrows > 0)
	{
		qsort(rows, nrows, sizeof(RemovedRow), removed_row_cmp);
		audit_lock_chain_head(&head);
		seal_removal(&head, AUDIT_BLOCK_RETENTION_ROWS, target, rows, nrows, 0);
	}
	else
		retention_sql("DELETE FROM audit.retention_summary WHERE partition_oid = $1", 1, (Oid[]) {OIDOID},
					  (Datum[]) {ObjectIdGetDatum(target->relid)}, SPI_OK_DELETE);
	MemoryContextDelete(cxt);
}

void
audit_retention_enforce(AuditRetentionTarget *target, TimestampTz as_of)
{
	int			save_nestlevel = NewGUCNestLevel();

	(void) set_config_option("lock_timeout", psprintf("%d", audit_maintenance_lock_timeout_ms),
							 PGC_USERSET, PGC_S_SESSION, GUC_ACTION_SAVE, true, 0, false);
	target->rows_removed = 0;
	if (target->drop)
		drop_partition(target, as_of);
	else if (target->groups != NIL)
		delete_expired_rows(target);
	AtEOXact_GUC(true, save_nestlevel);
}
