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
 * ids and their leaves, recomputed from the rows as they are removed (so a
 * row altered since it was sealed leaves a leaf that verify finds wrong,
 * rather than disappearing clean).  Rows of a policy with archive_after_days that are
 * past that age (but not yet past deletion) move into audit.archive_storage
 * (archive.c), one entry per "archive_rows" block.  audit.verify() then
 * expects exactly those rows to be absent from the log, and the archived
 * ones in the archive (docs/hash-format.md, "Retention blocks").
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

#include "archive.h"
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
				  " retention_policy, data_classification, cutoff, archive_cutoff"
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
		else
		{
			AuditRetentionGroup *g = palloc0(sizeof(AuditRetentionGroup));

			g->retention_policy = SPI_getvalue(t, d, 6);
			g->data_classification = SPI_getvalue(t, d, 7);
			g->cutoff = DatumGetTimestampTz(SPI_getbinval(t, d, 8, &isnull));
			g->archive_cutoff = DatumGetTimestampTz(SPI_getbinval(t, d, 9, &isnull));
			g->delete = strcmp(action, "delete") == 0 || strcmp(action, "archive+delete") == 0;
			g->archive = !isnull && (strcmp(action, "archive") == 0 || strcmp(action, "archive+delete") == 0);
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

/* The partition's summary is stale once retention removed rows from it. */
static void
forget_summary(const AuditRetentionTarget *target)
{
	retention_sql("DELETE FROM audit.retention_summary WHERE partition_oid = $1", 1, (Oid[]) {OIDOID},
				  (Datum[]) {ObjectIdGetDatum(target->relid)}, SPI_OK_DELETE);
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
 *		the default partition, less rows retention already removed from it
 *		or moved into the archive, all since the last time a partition with
 *		these bounds was dropped.
 *		Metadata only.
 */
static int64
rows_in_partition_by_chain(TimestampTz from, TimestampTz to)
{
	bool		isnull;
	Datum		n;

	retention_sql("WITH last_drop AS ("
				  "  SELECT coalesce(max(height), 0) AS height"
				  "  FROM audit.audit_chain_block"
				  "  WHERE kind = 'retention_partition' AND partition_from = $1 AND partition_to = $2)"
				  " SELECT (coalesce((SELECT sum(b.row_count) FROM audit.audit_chain_block b, last_drop d"
				  "                  WHERE b.kind = 'rows' AND b.partition_from = $1 AND b.partition_to = $2"
				  "                    AND b.height > d.height), 0)"
				  "      + coalesce((SELECT sum(r.row_count) FROM audit.audit_log_relocation r, last_drop d"
				  "                  WHERE r.partition_from = $1 AND r.partition_to = $2"
				  "                    AND r.chain_height >= d.height), 0)"
				  "      - coalesce((SELECT sum(b.row_count) FROM audit.audit_chain_block b, last_drop d"
				  "                  WHERE b.kind IN ('retention_rows', 'archive_rows') AND b.partition_from = $1"
				  "                    AND b.partition_to = $2 AND b.height > d.height), 0))::bigint",
				  2, (Oid[]) {TIMESTAMPTZOID, TIMESTAMPTZOID},
				  (Datum[]) {TimestampTzGetDatum(from), TimestampTzGetDatum(to)}, SPI_OK_SELECT);
	n = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	return isnull ? 0 : DatumGetInt64(n);
}

/*
 * append_removal_block
 *		Append one block of a removal (retention or archival) of n rows of
 *		the target partition (ids and leaves; none for a dropped partition,
 *		whose row_count is given), advance *head, and return the block's
 *		Merkle root in root.
 */
static void
append_removal_block(AuditChainHead *head, const char *kind, const AuditRetentionTarget *target,
					 const Datum *ids, const uint8 *leaves, int n, int64 row_count, TimestampTz now,
					 uint8 root[AUDIT_HASH_LEN])
{
	AuditBlockHeader h;
	uint8		header_hash[AUDIT_HASH_LEN];

	memset(&h, 0, sizeof(h));
	h.height = head->height + 1;
	memcpy(h.prev_hash, head->head_hash, AUDIT_HASH_LEN);
	h.kind = kind;
	h.in_default_partition = false;
	h.partition_from = target->from;
	h.partition_to = target->to;
	h.xid_from = h.xid_to = head->horizon_xid;	/* seals no new transaction */
	h.row_count = row_count;
	h.rows_total = head->rows_total;	/* counts rows sealed, ever */
	h.sealed_at = now;
	audit_append_block(&h, ids, leaves, n, header_hash);
	head->height = h.height;
	memcpy(head->head_hash, header_hash, AUDIT_HASH_LEN);
	memcpy(root, h.merkle_root, AUDIT_HASH_LEN);
}

/*
 * seal_removal
 *		Append retention blocks for one removal and move the chain head.
 *		For a dropped partition (kind retention_partition): one block
 *		without ids holding `dropped_rows`.  For deleted rows: blocks of at
 *		most audit_db.seal_block_rows ids each, in id order.  The caller
 *		holds the chain head (head) and stores the new head afterwards.
 */
static void
seal_removal(AuditChainHead *head, const char *kind, const AuditRetentionTarget *target,
			 RemovedRow *rows, int64 nrows, int64 dropped_rows)
{
	TimestampTz now = GetCurrentTimestamp();
	int64		done = 0;
	uint8		root[AUDIT_HASH_LEN];
	int			chunk_max = Max(audit_seal_block_rows, 1);
	Datum	   *ids = palloc(sizeof(Datum) * Min(Max(nrows, 1), chunk_max));
	uint8	   *leaves = palloc((Size) AUDIT_HASH_LEN * Min(Max(nrows, 1), chunk_max));

	do
	{
		int			n = (int) Min(nrows - done, (int64) chunk_max);

		for (int i = 0; i < n; i++)
		{
			ids[i] = Int64GetDatum(rows[done + i].id);
			memcpy(leaves + (Size) i * AUDIT_HASH_LEN, rows[done + i].leaf, AUDIT_HASH_LEN);
		}
		append_removal_block(head, kind, target, ids, leaves, n, (rows == NULL) ? dropped_rows : n, now, root);
		done += n;
	} while (done < nrows);

	pfree(ids);
	pfree(leaves);
}

/*
 * has_unsealed_rows
 *		Does the partition hold rows at or above the sealed horizon?  (A
 *		transaction-id range probe through the BRIN index.)
 */
static bool
has_unsealed_rows(const char *qualified, int64 horizon)
{
	int			save_nestlevel = audit_plan_transaction_range_scans();
	bool		isnull;
	bool		found;

	retention_sql(psprintf("SELECT EXISTS (SELECT FROM ONLY %s WHERE transaction_id >= $1)", qualified),
				  1, (Oid[]) {INT8OID}, (Datum[]) {Int64GetDatum(horizon)}, SPI_OK_SELECT);
	found = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	AtEOXact_GUC(true, save_nestlevel);
	return found;
}

/* The sealed horizon, read without locking the chain head. */
static int64
sealed_horizon(void)
{
	bool		isnull;

	retention_sql("SELECT horizon_xid FROM audit.audit_chain_state", 0, NULL, NULL, SPI_OK_SELECT);
	if (SPI_processed != 1)
		ereport(ERROR,
				(errcode(ERRCODE_DATA_CORRUPTED),
				 errmsg("audit.audit_chain_state must hold exactly one row"),
				 errhint("Run audit.verify() and restore the extension's state from a backup.")));
	return DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
}

/*
 * drop_partition
 *		Drop a partition whose every row expired.  Under the parent's
 *		ACCESS EXCLUSIVE lock (nothing is inserted meanwhile), checks that
 *		the partition is unchanged since it was planned and that all its
 *		rows are sealed.  When it is not (rows arrived, or are not sealed
 *		yet: a normal race under load), it is left for a later run and
 *		target->skipped says why; no error.
 */
static void
drop_partition(AuditRetentionTarget *target, TimestampTz as_of)
{
	char	   *qualified = quote_qualified_identifier(get_namespace_name(get_rel_namespace(target->relid)),
													   get_rel_name(target->relid));
	AuditChainHead head;
	int64		nrows;
	bool		isnull;

	/* Cheap check first, so a partition waiting for the sealer costs no lock. */
	if (has_unsealed_rows(qualified, sealed_horizon()))
	{
		target->skipped = "rows not sealed yet";
		return;
	}

	retention_sql("LOCK TABLE ONLY audit.audit_log IN ACCESS EXCLUSIVE MODE", 0, NULL, NULL, SPI_OK_UTILITY);
	if (!partition_still_there(target))
	{
		target->skipped = "partition changed since planned";
		return;
	}

	/* Still every row expired, with an up-to-date summary? */
	retention_sql("SELECT bool_and(action = 'drop') FROM audit.retention_plan($1) WHERE partition = $2",
				  2, (Oid[]) {TIMESTAMPTZOID, OIDOID},
				  (Datum[]) {TimestampTzGetDatum(as_of), ObjectIdGetDatum(target->relid)}, SPI_OK_SELECT);
	if (SPI_processed != 1 || !DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull)) ||
		isnull)
	{
		target->skipped = "rows arrived since planned";
		return;
	}

	audit_lock_chain_head(&head);
	if (has_unsealed_rows(qualified, head.horizon_xid))
	{
		target->skipped = "rows not sealed yet";
		return;
	}

	nrows = rows_in_partition_by_chain(target->from, target->to);
	retention_sql(psprintf("DROP TABLE %s", qualified), 0, NULL, NULL, SPI_OK_UTILITY);
	seal_removal(&head, AUDIT_BLOCK_RETENTION_PARTITION, target, NULL, 0, nrows);
	audit_move_chain_head(&head);
	forget_summary(target);
	target->rows_removed = nrows;
}

static int
removed_row_cmp(const void *a, const void *b)
{
	int64		x = ((const RemovedRow *) a)->id;
	int64		y = ((const RemovedRow *) b)->id;

	return (x > y) - (x < y);
}

/* Grow a row array to hold `need` rows (huge allocations allowed). */
static void *
grow_rows(void *rows, int64 *cap, int64 need, Size width, MemoryContext cxt, const char *partition)
{
	if (need <= *cap)
		return rows;
	*cap = Max(*cap * 2, need);
	if ((Size) *cap * width > MaxAllocHugeSize)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("too many expired rows in partition %s for one retention run", partition),
				 errhint("Lower the backlog by running maintenance more often.")));
	return rows == NULL ? MemoryContextAllocHuge(cxt, *cap * width) : repalloc_huge(rows, *cap * width);
}

/* Copy a 32-byte leaf out of a bytea (zeros if it is not one: verify reports the row). */
static void
leaf_of(Datum value, bool isnull, uint8 leaf[AUDIT_HASH_LEN])
{
	bytea	   *hash = isnull ? NULL : DatumGetByteaPP(value);

	if (hash == NULL || VARSIZE_ANY_EXHDR(hash) != AUDIT_HASH_LEN)
		memset(leaf, 0, AUDIT_HASH_LEN);
	else
		memcpy(leaf, VARDATA_ANY(hash), AUDIT_HASH_LEN);
}

static int
archived_row_cmp(const void *a, const void *b)
{
	int64		x = ((const AuditArchivedRow *) a)->id;
	int64		y = ((const AuditArchivedRow *) b)->id;

	return (x > y) - (x < y);
}

/*
 * archive_group
 *		Move the group's sealed rows from cutoff to archive_cutoff into the
 *		archive: one archive_rows block and one archive entry per at most
 *		audit_db.seal_block_rows rows, in id order.  The rows are already
 *		deleted (privileged) when this is called with them.
 */
static void
archive_group(AuditChainHead *head, const AuditRetentionTarget *target, AuditRetentionGroup *g,
			  AuditArchivedRow *rows, int64 nrows)
{
	int			chunk_max = Max(audit_seal_block_rows, 1);
	Datum	   *ids = palloc(sizeof(Datum) * Min(nrows, chunk_max));
	uint8	   *leaves = palloc((Size) AUDIT_HASH_LEN * Min(nrows, chunk_max));
	TimestampTz now = GetCurrentTimestamp();

	qsort(rows, nrows, sizeof(AuditArchivedRow), archived_row_cmp);
	for (int64 done = 0; done < nrows;)
	{
		uint8		root[AUDIT_HASH_LEN];
		int			n = (int) Min(nrows - done, (int64) chunk_max);

		for (int i = 0; i < n; i++)
		{
			ids[i] = Int64GetDatum(rows[done + i].id);
			memcpy(leaves + (Size) i * AUDIT_HASH_LEN, rows[done + i].leaf, AUDIT_HASH_LEN);
		}
		append_removal_block(head, AUDIT_BLOCK_ARCHIVE_ROWS, target, ids, leaves, n, n, now, root);
		audit_archive_store(head->height, target->from, target->to, g->retention_policy, g->data_classification,
							rows + done, n, root);
		done += n;
	}
	pfree(ids);
	pfree(leaves);
}

/* What remove_expired_rows collected (kept off the stack: it crosses PG_TRY). */
typedef struct Removal
{
	RemovedRow *rows;			/* deleted, for retention_rows blocks */
	int64		nrows;
	int64		cap;
	AuditArchivedRow **archived;	/* per group, for archive_rows blocks */
	int64	   *narchived;
	bool		any_archived;
} Removal;

/*
 * collect_removals
 *		Run the DELETEs of every group (the caller holds the privileged-change
 *		permission) and keep what they removed.
 */
static void
collect_removals(AuditRetentionTarget *target, Removal *rm, int64 horizon, MemoryContext cxt)
{
	char	   *qualified = quote_qualified_identifier(get_namespace_name(get_rel_namespace(target->relid)),
													   get_rel_name(target->relid));
	char	   *delete_sql = psprintf("DELETE FROM ONLY %s t WHERE retention_policy = $1"
									  " AND data_classification::text = $2 AND \"timestamp\" < $3"
									  " AND transaction_id < $4"
									  " RETURNING id, audit.leaf_hash(ROW(t.*)::audit.audit_log)", qualified);
	char	   *archive_sql = psprintf("DELETE FROM ONLY %s t WHERE retention_policy = $1"
									   " AND data_classification::text = $2 AND \"timestamp\" >= $3"
									   " AND \"timestamp\" < $4 AND transaction_id < $5"
									   " RETURNING t.id, audit.leaf_hash(ROW(t.*)::audit.audit_log), t.\"timestamp\","
									   " audit.export_row(ROW(t.*)::audit.audit_log)::text", qualified);
	ListCell   *lc;
	int			gi = 0;
	bool		isnull;

	foreach(lc, target->groups)
	{
		AuditRetentionGroup *g = (AuditRetentionGroup *) lfirst(lc);
		Datum		policy = CStringGetTextDatum(g->retention_policy);
		Datum		classification = CStringGetTextDatum(g->data_classification);

		if (g->delete)
		{
			retention_sql(delete_sql, 4, (Oid[]) {TEXTOID, TEXTOID, TIMESTAMPTZOID, INT8OID},
						  (Datum[]) {policy, classification, TimestampTzGetDatum(g->cutoff),
						  Int64GetDatum(horizon)},
						  SPI_OK_DELETE_RETURNING);
			g->rows_removed = (int64) SPI_processed;
			rm->rows = grow_rows(rm->rows, &rm->cap, rm->nrows + g->rows_removed, sizeof(RemovedRow), cxt,
								 target->name);
			for (uint64 r = 0; r < SPI_processed; r++)
			{
				HeapTuple	t = SPI_tuptable->vals[r];
				Datum		hash;

				rm->rows[rm->nrows].id = DatumGetInt64(SPI_getbinval(t, SPI_tuptable->tupdesc, 1, &isnull));
				hash = SPI_getbinval(t, SPI_tuptable->tupdesc, 2, &isnull);
				leaf_of(hash, isnull, rm->rows[rm->nrows].leaf);
				rm->nrows++;
			}
			SPI_freetuptable(SPI_tuptable);
			target->rows_removed += g->rows_removed;
		}
		if (g->archive)
		{
			int64		acap = 0;
			AuditArchivedRow *a = NULL;

			retention_sql(archive_sql, 5, (Oid[]) {TEXTOID, TEXTOID, TIMESTAMPTZOID, TIMESTAMPTZOID, INT8OID},
						  (Datum[]) {policy, classification, TimestampTzGetDatum(g->cutoff),
							  TimestampTzGetDatum(g->archive_cutoff), Int64GetDatum(horizon)},
						  SPI_OK_DELETE_RETURNING);
			g->rows_archived = (int64) SPI_processed;
			if (SPI_processed > 0)
				a = grow_rows(NULL, &acap, (int64) SPI_processed, sizeof(AuditArchivedRow), cxt, target->name);
			for (uint64 r = 0; r < SPI_processed; r++)
			{
				HeapTuple	t = SPI_tuptable->vals[r];
				TupleDesc	d = SPI_tuptable->tupdesc;
				MemoryContext old;

				a[r].id = DatumGetInt64(SPI_getbinval(t, d, 1, &isnull));
				leaf_of(SPI_getbinval(t, d, 2, &isnull), isnull, a[r].leaf);
				a[r].ts = DatumGetTimestampTz(SPI_getbinval(t, d, 3, &isnull));
				old = MemoryContextSwitchTo(cxt);
				a[r].line = SPI_getvalue(t, d, 4);
				MemoryContextSwitchTo(old);
			}
			SPI_freetuptable(SPI_tuptable);
			rm->archived[gi] = a;
			rm->narchived[gi] = g->rows_archived;
			rm->any_archived |= g->rows_archived > 0;
			target->rows_archived += g->rows_archived;
		}
		gi++;
	}
}

/*
 * remove_expired_rows
 *		For each group of the partition: delete its sealed rows before the
 *		cutoff, and move those from the cutoff to the archive cutoff into
 *		the archive; then seal both.
 */
static void
remove_expired_rows(AuditRetentionTarget *target)
{
	MemoryContext cxt = AllocSetContextCreate(CurrentMemoryContext, "audit_db retention rows",
											  ALLOCSET_DEFAULT_SIZES);
	Removal    *rm = MemoryContextAllocZero(cxt, sizeof(Removal));
	int			ngroups = list_length(target->groups);
	int64		horizon;
	AuditChainHead head;
	ListCell   *lc;

	if (!partition_still_there(target))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("partition %s changed while retention planned for it", target->name),
				 errhint("The next maintenance run plans again.")));

	/* Only sealed rows go: those below the sealed horizon (it only grows). */
	horizon = sealed_horizon();

	rm->archived = MemoryContextAllocZero(cxt, sizeof(AuditArchivedRow *) * Max(ngroups, 1));
	rm->narchived = MemoryContextAllocZero(cxt, sizeof(int64) * Max(ngroups, 1));

	audit_begin_privileged_change("retention");
	PG_TRY();
	{
		collect_removals(target, rm, horizon, cxt);
	}
	PG_FINALLY();
	{
		audit_end_privileged_change();
	}
	PG_END_TRY();

	if (rm->nrows > 0 || rm->any_archived)
	{
		int			gi = 0;

		audit_lock_chain_head(&head);
		if (rm->nrows > 0)
		{
			qsort(rm->rows, rm->nrows, sizeof(RemovedRow), removed_row_cmp);
			seal_removal(&head, AUDIT_BLOCK_RETENTION_ROWS, target, rm->rows, rm->nrows, 0);
		}
		foreach(lc, target->groups)
		{
			if (rm->narchived[gi] > 0)
				archive_group(&head, target, (AuditRetentionGroup *) lfirst(lc), rm->archived[gi],
							  rm->narchived[gi]);
			gi++;
		}
		audit_move_chain_head(&head);
	}
	foreach(lc, target->groups)
	{
		AuditRetentionGroup *g = (AuditRetentionGroup *) lfirst(lc);

		retention_sql("SELECT audit.retention_summary_removed($1, $2, $3, $4, $5)", 5,
					  (Oid[]) {OIDOID, TEXTOID, TEXTOID, INT8OID, TIMESTAMPTZOID},
					  (Datum[]) {ObjectIdGetDatum(target->relid), CStringGetTextDatum(g->retention_policy),
						  CStringGetTextDatum(g->data_classification),
						  Int64GetDatum(g->rows_removed + g->rows_archived),
					  TimestampTzGetDatum(g->archive ? g->archive_cutoff : g->cutoff)},
					  SPI_OK_SELECT);
	}
	MemoryContextDelete(cxt);
}

int64 *
audit_archive_expiries(TimestampTz as_of, MemoryContext cxt, int *n)
{
	int64	   *ids;
	bool		isnull;

	retention_sql("SELECT archive_id FROM audit.archive_plan($1) WHERE action = 'expire' ORDER BY archive_id",
				  1, (Oid[]) {TIMESTAMPTZOID}, (Datum[]) {TimestampTzGetDatum(as_of)}, SPI_OK_SELECT);
	*n = (int) SPI_processed;
	ids = MemoryContextAlloc(cxt, sizeof(int64) * Max(*n, 1));
	for (int i = 0; i < *n; i++)
		ids[i] = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1, &isnull));
	SPI_freetuptable(SPI_tuptable);
	return ids;
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
		remove_expired_rows(target);
	AtEOXact_GUC(true, save_nestlevel);
}
