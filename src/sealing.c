/*-------------------------------------------------------------------------
 *
 * sealing.c
 *	  The sealer: links committed audit rows into the chain of blocks.
 *
 * A seal run takes the xmin H of its snapshot: every transaction below H
 * has finished, so the committed rows among them are all visible and the
 * aborted ones never will be.  It seals every visible row whose
 * transaction id lies in [previous H, H), ordered by (partition,
 * transaction id, row id), in blocks of at most audit_db.seal_block_rows
 * rows that never span two partitions.  Each block holds the rows' ids and
 * leaf hashes (the hash the stamping trigger stored at insert), their
 * RFC 6962 Merkle root, and a header hash that covers the previous
 * block's header hash.  Runs serialise on the single row of
 * audit.audit_chain_state, so the header chain has one writer and never
 * forks; nothing on the insert path waits for the sealer.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/brin.h"
#include "access/genam.h"
#include "access/transam.h"
#include "access/xact.h"
#include "access/htup_details.h"
#include "access/relation.h"
#include "catalog/pg_am.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "storage/bufmgr.h"
#include "storage/lmgr.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/fmgrprotos.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "audit_db.h"
#include "hashing.h"
#include "partitions.h"
#include "restore.h"
#include "sealing.h"

int			audit_seal_block_rows = 10000;

/* Rows fetched from the cursor at a time. */
#define SEAL_FETCH_ROWS		10000

static SPIPlanPtr pending_plan = NULL;
static SPIPlanPtr state_plan = NULL;
static SPIPlanPtr rows_plan = NULL;
static SPIPlanPtr block_plan = NULL;
static SPIPlanPtr update_plan = NULL;

/* The block being filled, and the chain head it extends. */
typedef struct SealState
{
	int64		height;
	uint8		head_hash[AUDIT_HASH_LEN];
	int64		rows_total;
	int64		xid_from;
	int64		xid_to;
	TimestampTz sealed_at;
	AuditPartition part;		/* partition of the current block */
	int			nrows;
	Datum	   *ids;			/* audit_seal_block_rows entries */
	uint8	   *leaves;			/* audit_seal_block_rows x 32 bytes */
	List	   *touched;		/* partition OIDs sealed into */
	AuditSealResult result;
} SealState;

int64
audit_full_xid_of(TransactionId xid)
{
	FullTransactionId next = ReadNextFullTransactionId();
	uint32		epoch = EpochFromFullTransactionId(next);

	if (xid > XidFromFullTransactionId(next))
		epoch--;
	return (int64) U64FromFullTransactionId(FullTransactionIdFromEpochAndXid(epoch, xid));
}

static SPIPlanPtr
keep_plan(SPIPlanPtr *slot, const char *sql, int nargs, Oid *types)
{
	if (*slot == NULL)
	{
		SPIPlanPtr	plan = SPI_prepare(sql, nargs, types);

		if (plan == NULL)
			elog(ERROR, "SPI_prepare failed for \"%s\": %s", sql, SPI_result_code_string(SPI_result));
		SPI_keepplan(plan);
		*slot = plan;
	}
	return *slot;
}

/*
 * audit_append_block
 *		Append one block to the chain: h holds every header field but the
 *		Merkle root (computed here over the n leaves) and is completed; ids
 *		are the n row ids in block order.  The caller holds the chain head
 *		(audit_lock_chain_head) and h->prev_hash / h->height follow it.
 *		Writes the header hash to header_hash.
 */
void
audit_append_block(AuditBlockHeader *h, const Datum *ids, const uint8 *leaves, int n,
				   uint8 header_hash[AUDIT_HASH_LEN])
{
	ArrayType  *idarray;
	Datum		values[14];
	char		nulls[14];
	static Oid	types[14] = {INT8OID, TEXTOID, TIMESTAMPTZOID, TIMESTAMPTZOID, INT8OID, INT8OID,
		INT4OID, INT8OID, INT8ARRAYOID, BYTEAOID, BYTEAOID, TIMESTAMPTZOID, BYTEAOID, BYTEAOID};
	int			rc;

	audit_merkle_root(leaves, n, h->merkle_root);
	audit_block_header_hash(h, header_hash);

	idarray = construct_array((Datum *) ids, n, INT8OID, sizeof(int64), FLOAT8PASSBYVAL, TYPALIGN_DOUBLE);

	memset(nulls, ' ', sizeof(nulls));
	values[0] = Int64GetDatum(h->height);
	values[1] = CStringGetTextDatum(h->kind);
	values[2] = TimestampTzGetDatum(h->partition_from);
	values[3] = TimestampTzGetDatum(h->partition_to);
	if (h->in_default_partition)
		nulls[2] = nulls[3] = 'n';
	values[4] = Int64GetDatum(h->xid_from);
	values[5] = Int64GetDatum(h->xid_to);
	values[6] = Int32GetDatum((int32) h->row_count);
	values[7] = Int64GetDatum(h->rows_total);
	values[8] = PointerGetDatum(idarray);
	values[9] = PointerGetDatum(audit_bytea_from_bytes(leaves, n * AUDIT_HASH_LEN));
	values[10] = PointerGetDatum(audit_bytea_from_bytes(h->merkle_root, AUDIT_HASH_LEN));
	values[11] = TimestampTzGetDatum(h->sealed_at);
	values[12] = PointerGetDatum(audit_bytea_from_bytes(header_hash, AUDIT_HASH_LEN));
	values[13] = PointerGetDatum(audit_bytea_from_bytes(h->prev_hash, AUDIT_HASH_LEN));

	rc = SPI_execute_plan(keep_plan(&block_plan,
									"INSERT INTO audit.audit_chain_block (height, kind, partition_from, partition_to,"
									" xid_from, xid_to, row_count, rows_total, row_ids, leaves, merkle_root,"
									" sealed_at, header_hash, prev_hash)"
									" VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
									14, types),
						  values, nulls, false, 0);
	if (rc != SPI_OK_INSERT)
		elog(ERROR, "inserting chain block failed: %s", SPI_result_code_string(rc));
}

/*
 * audit_lock_chain_head
 *		Lock the chain state row (FOR UPDATE: seal runs and retention
 *		serialise on it) and read the chain head into *head.
 */
void
audit_lock_chain_head(AuditChainHead *head)
{
	bool		isnull;
	bytea	   *hash;

	if (SPI_execute_plan(keep_plan(&state_plan,
								   "SELECT height, head_hash, rows_total, horizon_xid"
								   " FROM audit.audit_chain_state FOR UPDATE", 0, NULL),
						 NULL, NULL, false, 1) != SPI_OK_SELECT || SPI_processed != 1)
		ereport(ERROR,
				(errcode(ERRCODE_DATA_CORRUPTED),
				 errmsg("audit.audit_chain_state must hold exactly one row"),
				 errhint("The chain state was altered outside audit_db; reinstall the extension from a backup.")));
	head->height = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	hash = DatumGetByteaPP(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull));
	if (VARSIZE_ANY_EXHDR(hash) != AUDIT_HASH_LEN)
		ereport(ERROR,
				(errcode(ERRCODE_DATA_CORRUPTED),
				 errmsg("audit chain head hash has %d bytes, expected %d",
						(int) VARSIZE_ANY_EXHDR(hash), AUDIT_HASH_LEN),
				 errhint("The chain state was altered outside audit_db; audit.verify() tells where the chain breaks.")));
	memcpy(head->head_hash, VARDATA_ANY(hash), AUDIT_HASH_LEN);
	head->rows_total = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 3, &isnull));
	head->horizon_xid = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 4, &isnull));
}

/*
 * audit_move_chain_head
 *		Store a new head (height and header hash) in audit.audit_chain_state
 *		after appending blocks that seal no new rows (retention, archival):
 *		rows_total, the horizon and last_sealed_at stay as they are.
 */
void
audit_move_chain_head(const AuditChainHead *head)
{
	if (SPI_execute_with_args("UPDATE audit.audit_chain_state SET height = $1, head_hash = $2", 2,
							  (Oid[]) {INT8OID, BYTEAOID},
							  (Datum[]) {Int64GetDatum(head->height),
							  PointerGetDatum(audit_bytea_from_bytes(head->head_hash, AUDIT_HASH_LEN))},
							  NULL, false, 0) != SPI_OK_UPDATE || SPI_processed != 1)
		ereport(ERROR,
				(errcode(ERRCODE_DATA_CORRUPTED),
				 errmsg("audit.audit_chain_state must hold exactly one row"),
				 errhint("The chain state was altered outside audit_db; reinstall the extension from a backup.")));
}

/*
 * flush_block
 *		Append the block being filled (if it has rows) to the chain.
 */
static void
flush_block(SealState *st)
{
	AuditBlockHeader h;
	uint8		header_hash[AUDIT_HASH_LEN];

	if (st->nrows == 0)
		return;

	memset(&h, 0, sizeof(h));
	h.height = st->height + 1;
	memcpy(h.prev_hash, st->head_hash, AUDIT_HASH_LEN);
	h.kind = AUDIT_BLOCK_ROWS;
	h.in_default_partition = st->part.unbounded;
	h.partition_from = st->part.from;
	h.partition_to = st->part.to;
	h.xid_from = st->xid_from;
	h.xid_to = st->xid_to;
	h.row_count = st->nrows;
	h.rows_total = st->rows_total + st->nrows;
	h.sealed_at = st->sealed_at;
	audit_append_block(&h, st->ids, st->leaves, st->nrows, header_hash);

	st->height = h.height;
	memcpy(st->head_hash, header_hash, AUDIT_HASH_LEN);
	st->rows_total = h.rows_total;
	st->result.blocks++;
	st->result.rows += st->nrows;
	st->nrows = 0;
}

/*
 * A partition's BRIN ranges are summarised once no insert will land in them
 * again, so that later runs' bitmap scans skip what was sealed.  Summarising
 * too early is costly: under concurrent inserts PostgreSQL extends a table by
 * up to 512 pages at a time and hands the new pages out through the free
 * space map, so ranges near the end are still being filled, and a summarised
 * range makes every later insert into it rewrite its summary (WAL, an
 * exclusive lock on a shared BRIN page).  Left unsummarised, a range costs
 * every seal run a recheck of all its rows, which under a steady insert load
 * was most of the sealer's CPU.
 *
 * So a range is summarised when it lies more than SEAL_BRIN_TAIL_PAGES pages
 * before the end of the partition, or, nearer the end, when every one of its
 * pages is full: its free space is smaller than the average row already on
 * it.  Rows that still fit (smaller than their neighbours) cost one summary
 * update each, which is correct and rare.
 */
#define SEAL_BRIN_TAIL_PAGES	1024

/* Per BRIN index: every range below `next` was handed to brin_summarize_range(). */
typedef struct SummarizedUpTo
{
	Oid			indexoid;
	BlockNumber next;
} SummarizedUpTo;

static SummarizedUpTo *summarized = NULL;
static int	nsummarized = 0;

static SummarizedUpTo *
summarized_entry(Oid indexoid)
{
	for (int i = 0; i < nsummarized; i++)
		if (summarized[i].indexoid == indexoid)
			return &summarized[i];
	if (summarized == NULL)
		summarized = MemoryContextAlloc(TopMemoryContext, sizeof(SummarizedUpTo) * 64);
	else if (nsummarized % 64 == 0)
		summarized = repalloc(summarized, sizeof(SummarizedUpTo) * (nsummarized + 64));
	summarized[nsummarized].indexoid = indexoid;
	summarized[nsummarized].next = 0;
	return &summarized[nsummarized++];
}

/*
 * range_is_full
 *		True when no page of heap blocks [start, start + npages) has room for
 *		a row of the average size already stored on it.  Reads only page
 *		headers, under a share lock, one page at a time.
 */
static bool
range_is_full(Relation rel, BlockNumber start, BlockNumber npages)
{
	for (BlockNumber blk = start; blk < start + npages; blk++)
	{
		Buffer		buf = ReadBuffer(rel, blk);
		Page		page;
		OffsetNumber nitems;
		Size		used;
		Size		free_space;

		LockBuffer(buf, BUFFER_LOCK_SHARE);
		page = BufferGetPage(buf);
		nitems = PageIsNew(page) ? 0 : PageGetMaxOffsetNumber(page);
		used = nitems > 0 ? ((PageHeader) page)->pd_special - ((PageHeader) page)->pd_upper : 0;
		free_space = nitems > 0 ? PageGetHeapFreeSpace(page) : BLCKSZ;
		UnlockReleaseBuffer(buf);
		if (nitems == 0 || free_space >= used / nitems)
			return false;
	}
	return true;
}

/*
 * summarize_brin
 *		Summarise the BRIN ranges of each partition sealed into that will
 *		not receive rows again (see above).  Skips a partition whose lock
 *		is busy (VACUUM): a later run catches up.
 */
static void
summarize_brin(List *partitions)
{
	ListCell   *lc;

	foreach(lc, partitions)
	{
		Oid			relid = lfirst_oid(lc);
		Relation	rel;
		List	   *indexes;
		ListCell   *ic;
		BlockNumber nblocks;

		if (!ConditionalLockRelationOid(relid, ShareUpdateExclusiveLock))
			continue;
		rel = try_relation_open(relid, NoLock);
		if (rel == NULL)
			continue;
		indexes = RelationGetIndexList(rel);
		nblocks = RelationGetNumberOfBlocks(rel);
		foreach(ic, indexes)
		{
			Oid			indexoid = lfirst_oid(ic);
			Relation	index;
			BlockNumber per_range;
			BlockNumber old_end;
			BlockNumber full_end;
			SummarizedUpTo *done;
			bool		contiguous;

			index = try_relation_open(indexoid, AccessShareLock);
			if (index == NULL)
				continue;
			if (index->rd_rel->relam != BRIN_AM_OID)
			{
				relation_close(index, AccessShareLock);
				continue;
			}
			per_range = BrinGetPagesPerRange(index);
			relation_close(index, AccessShareLock);

			/* Ranges entirely below old_end are old enough; below full_end, complete. */
			old_end = nblocks > SEAL_BRIN_TAIL_PAGES ? nblocks - SEAL_BRIN_TAIL_PAGES : 0;
			old_end -= old_end % per_range;
			full_end = nblocks - nblocks % per_range;
			done = summarized_entry(indexoid);
			if (done->next > nblocks)
				done->next = 0;		/* a new relation with the same index OID */
			contiguous = true;
			for (BlockNumber blk = done->next; blk < full_end; blk += per_range)
			{
				CHECK_FOR_INTERRUPTS();
				if (blk >= old_end && !range_is_full(rel, blk, per_range))
				{
					contiguous = false;
					continue;
				}
				(void) DirectFunctionCall2(brin_summarize_range, ObjectIdGetDatum(indexoid),
										   Int64GetDatum((int64) blk));
				if (contiguous)
					done->next = blk + per_range;
			}
		}
		relation_close(rel, NoLock);
		list_free(indexes);
	}
}

AuditSealResult
audit_seal_run(void)
{
	SealState	st;
	AuditChainHead head;
	Snapshot	snap = GetActiveSnapshot();
	int64		horizon;
	Portal		portal;
	int			save_nestlevel;
	bool		isnull;
	Oid			current_part = InvalidOid;
	MemoryContext batch_cxt;
	MemoryContext oldcxt;

	if (RecoveryInProgress())
		ereport(ERROR,
				(errcode(ERRCODE_READ_ONLY_SQL_TRANSACTION),
				 errmsg("cannot seal the audit chain during recovery"),
				 errhint("Sealing runs on the primary; audit.verify() works on a standby.")));
	if (snap == NULL)
		elog(ERROR, "audit_seal_run needs an active snapshot");
	audit_refuse_while_restoring("seal the audit chain");

	if (IsolationUsesXactSnapshot())
		ereport(ERROR,
				(errcode(ERRCODE_ACTIVE_SQL_TRANSACTION),
				 errmsg("audit.seal() must run in a READ COMMITTED transaction"),
				 errhint("Call it outside REPEATABLE READ and SERIALIZABLE transactions: it needs a fresh snapshot per step.")));

	memset(&st, 0, sizeof(st));

	SPI_connect();

	/*
	 * Anything to do?  Checked without a lock and without taking a
	 * transaction id, so an idle database costs one index probe per run.
	 */
	horizon = audit_full_xid_of(snap->xmin) + audit_chain_xid_offset();

	/* Rows are read through the BRIN index on transaction_id. */
	save_nestlevel = audit_plan_transaction_range_scans();

	if (SPI_execute_plan(keep_plan(&pending_plan,
								   "SELECT s.height, EXISTS (SELECT FROM audit.audit_log l"
								   " WHERE l.transaction_id >= s.horizon_xid AND l.transaction_id < $1)"
								   " FROM audit.audit_chain_state s",
								   1, (Oid[]) {INT8OID}),
						 (Datum[]) {Int64GetDatum(horizon)}, NULL, false, 1) != SPI_OK_SELECT)
		elog(ERROR, "checking for rows to seal failed");
	if (SPI_processed != 1 ||
		!DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull)))
	{
		if (SPI_processed == 1)
			st.result.height = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
		AtEOXact_GUC(true, save_nestlevel);
		SPI_finish();
		return st.result;
	}

	/* Lock the chain head; a concurrent run finishes first. */
	audit_lock_chain_head(&head);
	st.height = head.height;
	memcpy(st.head_hash, head.head_hash, AUDIT_HASH_LEN);
	st.rows_total = head.rows_total;

	/*
	 * The horizon is taken now that the head is locked, so a run that waited
	 * for another one still seals what finished meanwhile.  Every later query
	 * of this run takes a newer snapshot, which sees all rows below it.
	 */
	horizon = audit_full_xid_of(GetLatestSnapshot()->xmin) + audit_chain_xid_offset();
	st.xid_from = head.horizon_xid;
	st.xid_to = horizon;
	st.sealed_at = GetCurrentTimestamp();
	st.result.height = st.height;

	if (horizon <= st.xid_from)
	{
		AtEOXact_GUC(true, save_nestlevel);
		SPI_finish();
		return st.result;
	}

	st.ids = palloc(sizeof(Datum) * audit_seal_block_rows);
	st.leaves = palloc((Size) AUDIT_HASH_LEN * audit_seal_block_rows);

	portal = SPI_cursor_open(NULL,
							 keep_plan(&rows_plan,
									   "SELECT tableoid, id, hash FROM audit.audit_log"
									   " WHERE transaction_id >= $1 AND transaction_id < $2"
									   " ORDER BY tableoid, transaction_id, id",
									   2, (Oid[]) {INT8OID, INT8OID}),
							 (Datum[]) {Int64GetDatum(st.xid_from), Int64GetDatum(horizon)},
							 NULL, false);	/* a fresh snapshot: it sees every row below horizon */

	batch_cxt = AllocSetContextCreate(CurrentMemoryContext, "audit seal batch", ALLOCSET_DEFAULT_SIZES);
	for (;;)
	{
		/* flush_block() runs SPI too: keep this batch's table and count. */
		SPITupleTable *batch;
		uint64		nfetched;

		SPI_cursor_fetch(portal, true, SEAL_FETCH_ROWS);
		if (SPI_processed == 0)
			break;
		batch = SPI_tuptable;
		nfetched = SPI_processed;
		oldcxt = MemoryContextSwitchTo(batch_cxt);
		for (uint64 i = 0; i < nfetched; i++)
		{
			HeapTuple	tup = batch->vals[i];
			TupleDesc	desc = batch->tupdesc;
			Oid			part = DatumGetObjectId(SPI_getbinval(tup, desc, 1, &isnull));
			int64		id = DatumGetInt64(SPI_getbinval(tup, desc, 2, &isnull));
			bytea	   *hash = DatumGetByteaPP(SPI_getbinval(tup, desc, 3, &isnull));

			if (part != current_part || st.nrows == audit_seal_block_rows)
			{
				MemoryContextSwitchTo(oldcxt);
				flush_block(&st);
				if (part != current_part)
				{
					audit_partition_bounds(part, &st.part);
					st.touched = lappend_oid(st.touched, part);
					current_part = part;
				}
				MemoryContextSwitchTo(batch_cxt);
			}

			st.ids[st.nrows] = Int64GetDatum(id);
			if (VARSIZE_ANY_EXHDR(hash) == AUDIT_HASH_LEN)
				memcpy(st.leaves + (size_t) st.nrows * AUDIT_HASH_LEN, VARDATA_ANY(hash), AUDIT_HASH_LEN);
			else
			{
				/* Sealed as it is found: verification reports the row. */
				ereport(WARNING,
						(errcode(ERRCODE_DATA_CORRUPTED),
						 errmsg("audit row %lld has a hash of %d bytes; sealing it as all zeros",
								(long long) id, (int) VARSIZE_ANY_EXHDR(hash)),
						 errhint("The row was altered outside audit_db; audit.verify() reports it.")));
				memset(st.leaves + (size_t) st.nrows * AUDIT_HASH_LEN, 0, AUDIT_HASH_LEN);
			}
			st.nrows++;
		}
		MemoryContextSwitchTo(oldcxt);
		MemoryContextReset(batch_cxt);
		SPI_freetuptable(batch);
	}
	SPI_cursor_close(portal);
	AtEOXact_GUC(true, save_nestlevel);
	flush_block(&st);

	if (st.result.blocks > 0)
	{
		int			rc;

		rc = SPI_execute_plan(keep_plan(&update_plan,
										"UPDATE audit.audit_chain_state SET height = $1, head_hash = $2,"
										" rows_total = $3, horizon_xid = $4, last_sealed_at = $5",
										5, (Oid[]) {INT8OID, BYTEAOID, INT8OID, INT8OID, TIMESTAMPTZOID}),
							  (Datum[]) {Int64GetDatum(st.height),
								  PointerGetDatum(audit_bytea_from_bytes(st.head_hash, AUDIT_HASH_LEN)),
								  Int64GetDatum(st.rows_total), Int64GetDatum(horizon),
							  TimestampTzGetDatum(st.sealed_at)},
							  NULL, false, 0);
		if (rc != SPI_OK_UPDATE)
			elog(ERROR, "updating chain state failed: %s", SPI_result_code_string(rc));
		summarize_brin(st.touched);

		/*
		 * A digest may name these blocks as soon as they are visible: never
		 * let a crash take back a seal that was visible, whatever the
		 * session's synchronous_commit says (the flush also makes the
		 * sealed rows' own commits durable).
		 */
		if (synchronous_commit < SYNCHRONOUS_COMMIT_LOCAL_FLUSH)
			(void) set_config_option("synchronous_commit", "local", PGC_USERSET, PGC_S_SESSION,
									 GUC_ACTION_LOCAL, true, 0, false);
	}
	st.result.height = st.height;

	MemoryContextDelete(batch_cxt);
	SPI_finish();
	return st.result;
}

PG_FUNCTION_INFO_V1(audit_seal_sql);

/*
 * audit_seal_sql
 *		SQL function audit.seal(): one seal run; returns (blocks,
 *		rows_sealed, height).
 */
Datum
audit_seal_sql(PG_FUNCTION_ARGS)
{
	TupleDesc	tupdesc;
	AuditSealResult r;
	Datum		values[3];
	bool		nulls[3] = {false, false, false};

	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "audit.seal() must return a row");
	r = audit_seal_run();
	values[0] = Int32GetDatum(r.blocks);
	values[1] = Int64GetDatum(r.rows);
	values[2] = Int64GetDatum(r.height);
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(BlessTupleDesc(tupdesc), values, nulls)));
}
