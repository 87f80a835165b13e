/*-------------------------------------------------------------------------
 *
 * verification.c
 *	  audit.verify(): recompute every leaf hash, Merkle root and header link
 *	  of the audit chain and report each problem where it is; the record of
 *	  each run in audit.audit_integrity_log; the progress of running
 *	  verifications (shared memory, with the library preloaded).
 *
 * Two passes, one snapshot:
 *	1. The header chain, in height order: each header hash is recomputed
 *	   from its fields, each prev_hash must be the previous header hash,
 *	   heights and running row totals must follow on, and the chain state
 *	   row must name the last block.  Leaves are not read here.
 *	2. The rows, partition by partition.  A partition's blocks are loaded
 *	   (their Merkle roots recomputed from their leaves) as the scan meets
 *	   rows of their transaction-id interval, and dropped once all their
 *	   rows were seen, so memory follows how far the heap's physical order
 *	   strays from transaction order, not the size of the log.  Each row's
 *	   leaf is recomputed from its fields and compared with the leaf sealed
 *	   at its position.  Sealed leaves never met are missing rows; rows
 *	   below the sealed horizon that no block holds were inserted behind
 *	   the sealer's back.
 *
 * Retention blocks (retention.c) say which sealed rows are gone on
 * purpose: the ids listed by "retention_rows" blocks of a partition, and
 * every row of the "rows" blocks (and relocations) of a partition that a
 * later "retention_partition" block dropped.  Those rows are expected to
 * be absent and are counted as retained, not reported missing; the
 * retention blocks' own Merkle roots are checked against their leaves.
 * Rows that "archive_rows" blocks moved into audit.archive_storage are
 * absent from the log too; their archive entries are decompressed and every
 * row's leaf recomputed against the block, unless a later
 * "retention_archive" block expired the entry.
 *
 * The function only reads, except for its own record in
 * audit.audit_integrity_log, which is skipped on a hot standby or in a
 * read-only transaction.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/detoast.h"
#include "access/heapam.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/toast_compression.h"
#include "access/transam.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/partition.h"
#include "catalog/pg_type.h"
#include "common/hashfn.h"
#include "executor/spi.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "storage/ipc.h"
#include "storage/lmgr.h"
#include "storage/shmem.h"
#include "storage/spin.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/inval.h"
#include "utils/json.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/resowner.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"
#include "utils/tuplestore.h"

#include "audit_db.h"
#include "audit_log_columns.h"
#include "hashing.h"
#include "partitions.h"
#include "redaction.h"
#include "restore.h"
#include "sealing.h"
#include "tenancy.h"
#include "verification.h"
#include "worker.h"

int			audit_unsealed_grace = 60;

/* Where a sealed row id sits: an open block and a position in it. */
typedef struct SealedRow
{
	int64		id;
	uint32		status;			/* simplehash */
	int32		block;			/* index into VerifyState.blocks */
	int32		pos;
} SealedRow;

#define SH_PREFIX			sealed
#define SH_ELEMENT_TYPE		SealedRow
#define SH_KEY_TYPE			int64
#define SH_KEY				id
#define SH_HASH_KEY(tb, key) murmurhash32((uint32) (key) ^ (uint32) ((uint64) (key) >> 32))
#define SH_EQUAL(tb, a, b)	((a) == (b))
#define SH_SCOPE			static inline
#define SH_DECLARE
#define SH_DEFINE
#include "lib/simplehash.h"

/* A block of the current partition whose rows are being matched. */
typedef struct OpenBlock
{
	bool		in_use;
	int64		height;
	int64		xid_from;
	int64		xid_to;
	int32		n;
	int32		seen;
	int32		capacity;		/* of seen_pos, kept for reuse */
	int64	   *ids;			/* into ids_buf */
	uint8	   *leaves;			/* into leaves_buf */
	bool	   *seen_pos;		/* row at this position met */
	struct varlena *ids_buf;	/* the row_ids value, kept for reuse */
	struct varlena *leaves_buf; /* the leaves value, kept for reuse */
	Size		ids_cap;		/* allocated bytes of ids_buf */
	Size		leaves_cap;		/* allocated bytes of leaves_buf */
	bool		hashed;			/* its ids are in VerifyState.sealed */
} OpenBlock;

/*
 * A row whose leaf is yet to be computed: its encoded hash inputs and what
 * the comparison with its sealed leaf needs (see flush_pending).
 */
typedef struct PendingRow
{
	int32		block;			/* index into VerifyState.blocks */
	int32		pos;
	int64		id;
	int64		xid;
	bool		stored_ok;		/* the row's hash column is 32 bytes: stored */
	uint8		stored[AUDIT_HASH_LEN];
	StringInfoData commit;		/* audit_row_leaf_inputs() */
	StringInfoData leaf;
} PendingRow;

typedef struct VerifyState
{
	/* Output */
	Tuplestorestate *out;
	TupleDesc	outdesc;
	int64		problems;
	int			max_problems;
	char	   *first_problem;

	/* Scope */
	bool		has_from;
	bool		has_to;
	TimestampTz from_time;
	TimestampTz to_time;
	char	   *organization;
	bool		since_last;
	int			progress_every;

	/* The chain as the snapshot sees it */
	int64		state_height;
	uint8		state_head[AUDIT_HASH_LEN];
	int64		horizon;
	TimestampTz last_sealed_at;
	bool		has_last_sealed;
	bool		sealer_stalled;	/* rows may be left unsealed (see read_state) */
	int64		next_xid;
	int64		xid_offset;		/* the chain's (restore.h) */
	bool		restoring;		/* a restore is pending: ids not comparable */
	TimestampTz now;

	/* Incremental verification */
	int64		check_from_height;	/* first header checked */
	int64		rows_from_height;	/* first block whose rows are checked */
	int64		rows_min_xid;
	int64		verified_xid_to;	/* end of the last verified run */
	bool		has_prior_head;
	uint8		prior_head[AUDIT_HASH_LEN];

	/* Progress */
	int64		blocks_checked;
	int64		blocks_total;
	int64		rows_checked;
	int64		rows_unsealed;
	int64		last_height;
	uint8		last_hash[AUDIT_HASH_LEN];

	/* Pass 2: the blocks of the partition being scanned */
	Portal		block_cursor;
	bool		block_cursor_done;
	SPITupleTable *pending_tuptable;	/* holds the pending block */
	HeapTuple	pending_block;	/* fetched, not yet loaded */
	TupleDesc	pending_desc;
	sealed_hash *sealed;
	sealed_hash *relocated;		/* sealed rows moved out of the default partition */
	sealed_hash *retained;		/* ids of the current partition's blocks removed by retention:
								 * .block indexes retained_leaves, .pos is 1 if a leaf is known */
	uint8	   *retained_leaves;	/* 32 bytes per retained id */
	int64		rows_retained;	/* sealed rows found absent because retention removed them */
	AuditRedactionCheck *redactions;	/* attestations of redacted rows (redaction.c) */
	List	   *relocated_bounds;	/* AuditPartition * of the months they moved to */
	OpenBlock  *blocks;
	int			nblocks;
	bool		any_hashed;		/* some open block's ids are in sealed */
	int			hint_block;		/* where the next row probably is */
	int			hint_pos;
	MemoryContext cxt;
	MemoryContext row_cxt;

	/* Rows whose leaves are computed two at a time (flush_pending) */
	PendingRow	pending[2];
	int			npending;
	bool		flushing;
	uint8	   *merkle_scratch;	/* audit_merkle_root_x2() */
	int			merkle_scratch_n;
} VerifyState;

/* Shared progress slots (only with the library preloaded). */
#define PROGRESS_SLOTS 32

typedef struct ProgressSlot
{
	int			pid;
	TimestampTz started_at;
	char		phase[24];
	int64		blocks_done;
	int64		blocks_total;
	int64		rows_done;
	int64		problems;
} ProgressSlot;

typedef struct ProgressShared
{
	slock_t		mutex;
	ProgressSlot slots[PROGRESS_SLOTS];
} ProgressShared;

static void flush_pending(VerifyState *vs);

static ProgressShared *progress_shared = NULL;
static ProgressSlot *my_slot = NULL;
static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

static void
progress_shmem_request(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	RequestAddinShmemSpace(sizeof(ProgressShared));
}

static void
progress_shmem_startup(void)
{
	bool		found;

	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();
	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	progress_shared = ShmemInitStruct("audit_db verification progress", sizeof(ProgressShared), &found);
	if (!found)
	{
		memset(progress_shared, 0, sizeof(ProgressShared));
		SpinLockInit(&progress_shared->mutex);
	}
	LWLockRelease(AddinShmemInitLock);
}

void
audit_verification_init(void)
{
	if (!process_shared_preload_libraries_in_progress)
		return;
	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = progress_shmem_request;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = progress_shmem_startup;
}

static void
progress_begin(void)
{
	my_slot = NULL;
	if (progress_shared == NULL)
		return;
	SpinLockAcquire(&progress_shared->mutex);
	for (int i = 0; i < PROGRESS_SLOTS; i++)
	{
		ProgressSlot *s = &progress_shared->slots[i];

		if (s->pid == 0 || s->pid == MyProcPid)
		{
			memset(s, 0, sizeof(*s));
			s->pid = MyProcPid;
			s->started_at = GetCurrentTimestamp();
			strlcpy(s->phase, "headers", sizeof(s->phase));
			my_slot = s;
			break;
		}
	}
	SpinLockRelease(&progress_shared->mutex);
}

static void
progress_update(VerifyState *vs, const char *phase)
{
	if (my_slot == NULL)
		return;
	SpinLockAcquire(&progress_shared->mutex);
	if (phase)
		strlcpy(my_slot->phase, phase, sizeof(my_slot->phase));
	my_slot->blocks_done = vs->blocks_checked;
	my_slot->blocks_total = vs->blocks_total;
	my_slot->rows_done = vs->rows_checked;
	my_slot->problems = vs->problems;
	SpinLockRelease(&progress_shared->mutex);
}

static void
progress_end(void)
{
	if (my_slot == NULL)
		return;
	SpinLockAcquire(&progress_shared->mutex);
	my_slot->pid = 0;
	SpinLockRelease(&progress_shared->mutex);
	my_slot = NULL;
}

/*
 * report
 *		One problem: a result row (up to max_problems) and the counts.
 */
static void
report(VerifyState *vs, int64 height, int64 row_id, const char *field,
	   const char *problem, const char *detail)
{
	Datum		values[5];
	bool		nulls[5] = {false, false, false, false, false};

	/* Rows met before this problem are reported before it. */
	if (vs->npending > 0 && !vs->flushing)
		flush_pending(vs);
	vs->problems++;
	if (vs->first_problem == NULL)
	{
		MemoryContext old = MemoryContextSwitchTo(vs->cxt);

		vs->first_problem = psprintf("%s at block %s row %s: %s", problem,
									 height > 0 ? psprintf("%lld", (long long) height) : "-",
									 row_id > 0 ? psprintf("%lld", (long long) row_id) : "-",
									 detail);
		MemoryContextSwitchTo(old);
	}
	if (vs->problems > vs->max_problems)
		return;

	values[0] = Int64GetDatum(height);
	nulls[0] = (height <= 0);
	values[1] = Int64GetDatum(row_id);
	nulls[1] = (row_id <= 0);
	nulls[2] = (field == NULL);
	if (field)
		values[2] = CStringGetTextDatum(field);
	values[3] = CStringGetTextDatum(problem);
	values[4] = CStringGetTextDatum(detail);
	tuplestore_putvalues(vs->out, vs->outdesc, values, nulls);
}

/* report() for the redaction checks of redaction.c. */
static void
report_redaction(void *arg, int64 row_id, const char *field, const char *problem,
				 const char *detail)
{
	report((VerifyState *) arg, 0, row_id, field, problem, detail);
}

/*
 * column_is_hash
 *		Column col of an SPI result row as a 32-byte hash, if it is one.
 */
static bool
column_is_hash(HeapTuple t, TupleDesc d, int col, uint8 out[AUDIT_HASH_LEN])
{
	bool		isnull;
	Datum		value = SPI_getbinval(t, d, col, &isnull);

	return audit_bytea_is_hash(value, isnull, out);
}

/* Pass 1: the header chain ------------------------------------------------- */

static void
read_state(VerifyState *vs)
{
	bool		isnull;
	TupleDesc	d;
	HeapTuple	t;

	if (SPI_execute("SELECT height, head_hash, horizon_xid, last_sealed_at FROM audit.audit_chain_state",
					true, 0) != SPI_OK_SELECT || SPI_processed != 1)
	{
		report(vs, 0, 0, "audit_chain_state", "modified", "the chain state table must hold exactly one row");
		vs->state_height = -1;
		return;
	}
	d = SPI_tuptable->tupdesc;
	t = SPI_tuptable->vals[0];
	vs->state_height = DatumGetInt64(SPI_getbinval(t, d, 1, &isnull));
	if (!column_is_hash(t, d, 2, vs->state_head))
		report(vs, 0, 0, "audit_chain_state", "modified", "the chain head hash is not 32 bytes");
	vs->horizon = DatumGetInt64(SPI_getbinval(t, d, 3, &isnull));
	vs->last_sealed_at = DatumGetTimestampTz(SPI_getbinval(t, d, 4, &isnull));
	vs->has_last_sealed = !isnull;

	/*
	 * Is the sealer keeping up?  With the background worker's heartbeat
	 * (audit_db preloaded, on a primary): its last completed run started
	 * less than audit_db.unsealed_grace ago, so it sealed every transaction
	 * finished by then and will seal the rest.  Without one: something was
	 * sealed in that time.  A long transaction that commits many rows after
	 * a quiet spell is thus not reported while a worker seals them.
	 */
	{
		TimestampTz run_started;
		int64		grace = (int64) audit_unsealed_grace * USECS_PER_SEC;

		if (audit_sealer_last_run(MyDatabaseId, &run_started))
			vs->sealer_stalled = vs->now - run_started > grace;
		else
			vs->sealer_stalled = !vs->has_last_sealed || vs->now - vs->last_sealed_at > grace;
	}
}

/*
 * prior_verification
 *		For since_last: the head of the last clean whole-log verification.
 */
static void
prior_verification(VerifyState *vs)
{
	bool		isnull;

	vs->check_from_height = 1;
	vs->rows_from_height = 1;
	vs->rows_min_xid = 0;
	if (!vs->since_last)
		return;

	if (SPI_execute("SELECT to_height, head_hash FROM audit.audit_integrity_log"
					" WHERE status = 'clean' AND scope->>'organization_id' IS NULL"
					" AND scope->>'from_time' IS NULL AND scope->>'to_time' IS NULL"
					" ORDER BY run_id DESC LIMIT 1", true, 1) != SPI_OK_SELECT)
		elog(ERROR, "reading audit.audit_integrity_log failed");
	if (SPI_processed == 0)
		return;					/* nothing verified yet: everything is new */

	vs->check_from_height = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	vs->has_prior_head = column_is_hash(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, vs->prior_head);
	if (vs->check_from_height < 1)
	{
		/* The last clean run saw an empty chain: everything is new. */
		vs->check_from_height = 1;
		vs->has_prior_head = false;
		return;
	}

	/*
	 * Rows of blocks above that height are checked: those with a transaction
	 * id from the first such block's xid_from on (set by check_headers).
	 * Rows of that range that belong to the run the last verification ended
	 * in were checked then and are skipped.
	 */
	vs->rows_from_height = vs->check_from_height + 1;
	if (SPI_execute_with_args("SELECT xid_to FROM audit.audit_chain_block WHERE height = $1",
							  1, (Oid[]) {INT8OID}, (Datum[]) {Int64GetDatum(vs->check_from_height)},
							  NULL, true, 1) == SPI_OK_SELECT && SPI_processed == 1)
		vs->verified_xid_to = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	else
	{
		/* That block is gone: the chain was cut below what was verified. */
		report(vs, vs->check_from_height, 0, "height", "missing",
			   psprintf("block %lld, the head at the last clean verification, is gone",
						(long long) vs->check_from_height));
		vs->rows_from_height = 1;
		vs->check_from_height = 1;
		vs->has_prior_head = false;
		return;
	}
	vs->rows_min_xid = -1;		/* known after the header pass */
}

static void
check_headers(VerifyState *vs)
{
	Portal		portal;
	int64		expect = vs->check_from_height;
	int64		prev_total = -1;
	int64		prev_xid_from = 0;
	bool		have_prev = false;
	uint8		prev_hash[AUDIT_HASH_LEN];

	if (expect == 1)
	{
		memset(prev_hash, 0, AUDIT_HASH_LEN);
		prev_total = 0;
		have_prev = true;
	}

	portal = SPI_cursor_open_with_args(NULL,
									   "SELECT height, kind, partition_from, partition_to, xid_from, xid_to,"
									   " row_count, rows_total, merkle_root, sealed_at, prev_hash, header_hash"
									   " FROM audit.audit_chain_block WHERE height >= $1 ORDER BY height",
									   1, (Oid[]) {INT8OID}, (Datum[]) {Int64GetDatum(vs->check_from_height)},
									   NULL, true, 0);
	for (;;)
	{
		SPI_cursor_fetch(portal, true, 10000);
		if (SPI_processed == 0)
			break;
		for (uint64 i = 0; i < SPI_processed; i++)
		{
			HeapTuple	t = SPI_tuptable->vals[i];
			TupleDesc	d = SPI_tuptable->tupdesc;
			bool		isnull,
						null_from,
						null_to;
			AuditBlockHeader h;
			uint8		stored_prev[AUDIT_HASH_LEN];
			uint8		stored_hash[AUDIT_HASH_LEN];
			uint8		computed[AUDIT_HASH_LEN];
			char	   *kind;
			bool		hashes_ok;

			CHECK_FOR_INTERRUPTS();
			memset(&h, 0, sizeof(h));
			h.height = DatumGetInt64(SPI_getbinval(t, d, 1, &isnull));
			kind = TextDatumGetCString(SPI_getbinval(t, d, 2, &isnull));
			h.kind = kind;
			h.partition_from = DatumGetTimestampTz(SPI_getbinval(t, d, 3, &null_from));
			h.partition_to = DatumGetTimestampTz(SPI_getbinval(t, d, 4, &null_to));
			h.in_default_partition = null_from || null_to;
			h.xid_from = DatumGetInt64(SPI_getbinval(t, d, 5, &isnull));
			h.xid_to = DatumGetInt64(SPI_getbinval(t, d, 6, &isnull));
			h.row_count = DatumGetInt32(SPI_getbinval(t, d, 7, &isnull));
			h.rows_total = DatumGetInt64(SPI_getbinval(t, d, 8, &isnull));
			hashes_ok = column_is_hash(t, d, 9, h.merkle_root);
			h.sealed_at = DatumGetTimestampTz(SPI_getbinval(t, d, 10, &isnull));
			hashes_ok &= column_is_hash(t, d, 11, stored_prev);
			hashes_ok &= column_is_hash(t, d, 12, stored_hash);
			memcpy(h.prev_hash, stored_prev, AUDIT_HASH_LEN);

			if (h.height != expect)
			{
				if (h.height > expect)
					report(vs, expect, 0, "height", "missing",
						   psprintf("blocks %lld to %lld are missing from the chain",
									(long long) expect, (long long) h.height - 1));
				have_prev = false;
			}
			expect = h.height + 1;

			if (!hashes_ok)
				report(vs, h.height, 0, "header_hash", "modified",
					   "a hash of the block header is not 32 bytes");
			else
			{
				audit_block_header_hash(&h, computed);
				if (memcmp(computed, stored_hash, AUDIT_HASH_LEN) != 0)
					report(vs, h.height, 0, "header", "modified",
						   "the block header hash does not match the header's fields");
				if (h.height == vs->check_from_height && vs->has_prior_head &&
					memcmp(stored_hash, vs->prior_head, AUDIT_HASH_LEN) != 0)
					report(vs, h.height, 0, "header_hash", "modified",
						   "the block no longer has the header hash the last verification saw");
				if (have_prev && memcmp(stored_prev, prev_hash, AUDIT_HASH_LEN) != 0)
					report(vs, h.height, 0, "prev_hash", "modified",
						   "the block does not link to the header hash of the block before it");
			}
			if (strcmp(kind, AUDIT_BLOCK_ROWS) != 0 && strcmp(kind, AUDIT_BLOCK_RETENTION_ROWS) != 0 &&
				strcmp(kind, AUDIT_BLOCK_RETENTION_PARTITION) != 0 && strcmp(kind, AUDIT_BLOCK_ARCHIVE_ROWS) != 0 &&
				strcmp(kind, AUDIT_BLOCK_RETENTION_ARCHIVE) != 0)
				report(vs, h.height, 0, "kind", "modified",
					   psprintf("the block has kind \"%s\", which format v1 does not know", kind));
			/* Rows sealed, ever: retention blocks leave the count as it was. */
			if (have_prev && prev_total >= 0 &&
				h.rows_total != prev_total + (strcmp(kind, AUDIT_BLOCK_ROWS) == 0 ? h.row_count : 0))
				report(vs, h.height, 0, "rows_total", "modified",
					   "the running row count does not follow from the block before it");
			if (have_prev && h.xid_from < prev_xid_from)
				report(vs, h.height, 0, "xid_from", "reordered",
					   "the block's transaction interval starts before the previous block's");

			memcpy(prev_hash, stored_hash, AUDIT_HASH_LEN);
			prev_total = h.rows_total;
			prev_xid_from = h.xid_from;
			have_prev = true;
			vs->last_height = h.height;
			memcpy(vs->last_hash, stored_hash, AUDIT_HASH_LEN);
			if (h.height >= vs->rows_from_height)
			{
				if (vs->rows_min_xid < 0)
					vs->rows_min_xid = Max(h.xid_from, 1);
				vs->blocks_total++;
			}
			pfree(kind);
		}
		SPI_freetuptable(SPI_tuptable);
	}
	SPI_cursor_close(portal);
	if (vs->rows_min_xid < 0)
		vs->rows_min_xid = Max(vs->horizon, 1);	/* no new block: only unsealed rows */

	/* The state row must name the last block. */
	if (vs->state_height >= 0)
	{
		int64		last = vs->last_height;

		if (vs->check_from_height > 1 && last == 0)
			last = vs->check_from_height - 1;
		if (vs->state_height != last && !(last == 0 && vs->state_height == 0))
			report(vs, vs->state_height, 0, "height", "missing",
				   psprintf("the chain state names height %lld but the last block is %lld",
							(long long) vs->state_height, (long long) last));
		else if (last > 0 && memcmp(vs->state_head, vs->last_hash, AUDIT_HASH_LEN) != 0)
			report(vs, last, 0, "head_hash", "modified",
				   "the chain state's head hash is not the last block's header hash");
	}
}

/* Pass 2: rows against their blocks ---------------------------------------- */

static int
open_block_slot(VerifyState *vs)
{
	for (int i = 0; i < vs->nblocks; i++)
		if (!vs->blocks[i].in_use)
			return i;		/* its arrays are reused */
	if (vs->nblocks % 64 == 0)
	{
		MemoryContext old = MemoryContextSwitchTo(vs->cxt);

		if (vs->blocks == NULL)
			vs->blocks = palloc0(sizeof(OpenBlock) * 64);
		else
			vs->blocks = repalloc(vs->blocks, sizeof(OpenBlock) * (vs->nblocks + 64));
		MemoryContextSwitchTo(old);
	}
	memset(&vs->blocks[vs->nblocks], 0, sizeof(OpenBlock));
	return vs->nblocks++;
}

/*
 * fetch_pending_block
 *		Make the next block of the partition (if any) the pending one.
 */
static bool
fetch_pending_block(VerifyState *vs)
{
	if (vs->pending_block)
		return true;
	if (vs->block_cursor_done)
		return false;
	SPI_cursor_fetch(vs->block_cursor, true, 1);
	if (SPI_processed == 0)
	{
		vs->block_cursor_done = true;
		return false;
	}
	vs->pending_tuptable = SPI_tuptable;
	vs->pending_block = SPI_tuptable->vals[0];
	vs->pending_desc = SPI_tuptable->tupdesc;
	return true;
}

/*
 * hash_block
 *		Enter the block's row ids into the id -> (block, position) table.
 */
static void
hash_block(VerifyState *vs, int slot)
{
	OpenBlock  *b = &vs->blocks[slot];

	for (int i = 0; i < b->n; i++)
	{
		bool		found;
		SealedRow  *e = sealed_insert(vs->sealed, b->ids[i], &found);

		if (found)
		{
			if (vs->blocks[e->block].ids[e->pos] == b->ids[i] && e->block != slot)
				report(vs, b->height, b->ids[i], "row_ids", "modified",
					   psprintf("row id sealed twice (also in block %lld)",
								(long long) vs->blocks[e->block].height));
			else
				report(vs, b->height, b->ids[i], "row_ids", "modified", "row id listed twice in the block");
			b->seen_pos[i] = true;	/* the duplicate can never be matched */
			b->seen++;
			continue;
		}
		e->block = slot;
		e->pos = i;
	}
	b->hashed = true;
	vs->any_hashed = true;
}

/*
 * hash_open_blocks
 *		Make sure every open block's ids are in the lookup table.
 */
static void
hash_open_blocks(VerifyState *vs)
{
	for (int i = 0; i < vs->nblocks; i++)
		if (vs->blocks[i].in_use && !vs->blocks[i].hashed)
			hash_block(vs, i);
	vs->any_hashed = true;
}

/*
 * block_buffer
 *		Make *buf (allocated in vs->cxt, *cap bytes) hold at least size
 *		bytes; its contents are not kept.
 */
static void
block_buffer(VerifyState *vs, struct varlena **buf, Size *cap, Size size)
{
	if (*buf != NULL && *cap >= size)
		return;
	if (*buf != NULL)
		pfree(*buf);
	*cap = Max(size, (Size) audit_seal_block_rows * AUDIT_HASH_LEN + VARHDRSZ + 64);
	*buf = MemoryContextAlloc(vs->cxt, *cap);
}

/*
 * read_block_array
 *		The value of a block's row_ids or leaves column, untoasted, in the
 *		open block's own buffer *buf (capacity *cap, grown as needed and
 *		kept with the block slot for the whole verification).  Those values
 *		are large (80 and 320 kB for 10,000 rows) and stored out of line
 *		uncompressed; they are read straight into the buffer, which the
 *		block then uses in place: no fresh allocation per block (which the C
 *		library maps and the kernel zeroes anew each time) and no copy.
 *		Anything else (compressed, inline, NULL) is detoasted as usual and
 *		copied into the buffer.  The result is *buf, valid until the slot's
 *		next block.
 */
static struct varlena *
read_block_array(VerifyState *vs, struct varlena **buf, Size *cap, bool is_ids,
				 Datum value, bool isnull)
{
	struct varlena *attr;
	struct varatt_external toast_pointer;
	int32		size;
	Relation	toastrel;

	attr = isnull ? NULL : (struct varlena *) DatumGetPointer(value);
	if (attr != NULL && VARATT_IS_EXTERNAL_ONDISK(attr))
		VARATT_EXTERNAL_GET_POINTER(toast_pointer, attr);
	if (attr == NULL || !VARATT_IS_EXTERNAL_ONDISK(attr) ||
		VARATT_EXTERNAL_IS_COMPRESSED(toast_pointer))
	{
		struct varlena *v;

		/* NOT NULL dropped by hand: an empty value, reported by the caller */
		if (attr == NULL)
			v = is_ids ? (struct varlena *) construct_empty_array(INT8OID)
				: (struct varlena *) audit_bytea_from_bytes("", 0);
		else
			v = pg_detoast_datum(attr);	/* always a 4-byte header */
		block_buffer(vs, buf, cap, VARSIZE(v));
		memcpy(*buf, v, VARSIZE(v));
		if (v != attr)
			pfree(v);
		return *buf;
	}

	size = VARATT_EXTERNAL_GET_EXTSIZE(toast_pointer);
	block_buffer(vs, buf, cap, (Size) size + VARHDRSZ);
	SET_VARSIZE(*buf, size + VARHDRSZ);
	toastrel = table_open(toast_pointer.va_toastrelid, AccessShareLock);
	table_relation_fetch_toast_slice(toastrel, toast_pointer.va_valueid, size, 0, size, *buf);
	table_close(toastrel, AccessShareLock);
	return *buf;
}

/*
 * load_pending_block
 *		Open the pending block in a slot, whose index is returned: check its
 *		leaves against its Merkle root and, if the lookup table is in use,
 *		enter its row ids there.
 */
static int
load_pending_block(VerifyState *vs)
{
	HeapTuple	t = vs->pending_block;
	TupleDesc	d = vs->pending_desc;
	bool		isnull;
	int64		height = DatumGetInt64(SPI_getbinval(t, d, 1, &isnull));
	int32		n = DatumGetInt32(SPI_getbinval(t, d, 2, &isnull));
	int			slot = open_block_slot(vs);
	OpenBlock  *b = &vs->blocks[slot];
	Datum		ids_value = SPI_getbinval(t, d, 3, &isnull);
	ArrayType  *ids = (ArrayType *) read_block_array(vs, &b->ids_buf, &b->ids_cap, true,
													 ids_value, isnull);
	Datum		leaves_value = SPI_getbinval(t, d, 4, &isnull);
	bytea	   *leaves = (bytea *) read_block_array(vs, &b->leaves_buf, &b->leaves_cap, false,
												   leaves_value, isnull);
	uint8		root[AUDIT_HASH_LEN];
	uint8		computed[AUDIT_HASH_LEN];
	int			nids = ArrayGetNItems(ARR_NDIM(ids), ARR_DIMS(ids));
	int			nleaves = VARSIZE_ANY_EXHDR(leaves) / AUDIT_HASH_LEN;
	MemoryContext old;

	b->in_use = true;
	b->height = height;
	b->xid_from = DatumGetInt64(SPI_getbinval(t, d, 6, &isnull));
	b->xid_to = DatumGetInt64(SPI_getbinval(t, d, 7, &isnull));
	b->seen = 0;

	if (nids != n || nleaves != n || VARSIZE_ANY_EXHDR(leaves) % AUDIT_HASH_LEN != 0 ||
		ARR_HASNULL(ids) || ARR_ELEMTYPE(ids) != INT8OID)
	{
		report(vs, height, 0, "row_ids", "modified",
			   psprintf("the block lists %d row ids and %d leaves for %d rows", nids, nleaves, n));
		n = Min(nids, nleaves);
		/* never read past the array, whatever its element type */
		n = Min(n, (int) ((VARSIZE(ids) - ARR_DATA_OFFSET(ids)) / sizeof(int64)));
		n = Max(n, 0);
	}
	b->n = n;

	/* Both arrays are used in place, in the slot's buffers. */
	b->ids = (int64 *) ARR_DATA_PTR(ids);
	b->leaves = (uint8 *) VARDATA(leaves);
	if (b->capacity < n || b->seen_pos == NULL)
	{
		int			cap = Max(n, audit_seal_block_rows);

		old = MemoryContextSwitchTo(vs->cxt);
		if (b->seen_pos)
			pfree(b->seen_pos);
		b->seen_pos = palloc(sizeof(bool) * Max(cap, 1));
		b->capacity = cap;
		MemoryContextSwitchTo(old);
	}
	memset(b->seen_pos, 0, sizeof(bool) * Max(n, 1));

	if (!column_is_hash(t, d, 5, root))
		report(vs, height, 0, "merkle_root", "modified", "the Merkle root is not 32 bytes");
	else
	{
		if (vs->merkle_scratch_n < (n + 1) / 2)
		{
			if (vs->merkle_scratch)
				pfree(vs->merkle_scratch);
			vs->merkle_scratch_n = Max((n + 1) / 2, audit_seal_block_rows);
			vs->merkle_scratch = MemoryContextAlloc(vs->cxt, (Size) vs->merkle_scratch_n * AUDIT_HASH_LEN);
		}
		audit_merkle_root_x2(b->leaves, n, vs->merkle_scratch, computed);
		if (memcmp(root, computed, AUDIT_HASH_LEN) != 0)
			report(vs, height, 0, "leaves", "modified",
				   "the block's leaves do not produce its Merkle root");
	}

	/* Ids enter the lookup table only when a row misses the sealing order. */
	b->hashed = false;
	if (vs->any_hashed)
		hash_block(vs, slot);
	if (vs->hint_block < 0)
	{
		vs->hint_block = slot;
		vs->hint_pos = 0;
	}

	vs->blocks_checked++;
	if (vs->progress_every > 0 && vs->blocks_checked % vs->progress_every == 0)
		ereport(NOTICE,
				(errmsg("audit.verify: %lld of %lld blocks, %lld rows checked, %lld problems",
						(long long) vs->blocks_checked, (long long) vs->blocks_total,
						(long long) vs->rows_checked, (long long) vs->problems)));
	if (vs->blocks_checked % 64 == 0)
		progress_update(vs, NULL);

	SPI_freetuptable(vs->pending_tuptable);
	vs->pending_tuptable = NULL;
	vs->pending_block = NULL;
	return slot;
}

/*
 * close_block
 *		Report the block's rows never met, forget its ids, free its arrays.
 */
static void
close_block(VerifyState *vs, int slot)
{
	OpenBlock  *b = &vs->blocks[slot];
	int			missing = 0;

	for (int i = 0; i < b->n; i++)
	{
		SealedRow  *e;

		if (vs->retained != NULL && vs->retained->members > 0 &&
			(e = sealed_lookup(vs->retained, b->ids[i])) != NULL)
		{
			if (b->seen_pos[i])
				report(vs, b->height, b->ids[i], NULL, "inserted",
					   "a retention block says the row was removed, but it is still in the log");
			else if (e->pos == 1 &&
					 memcmp(vs->retained_leaves + (Size) e->block * AUDIT_HASH_LEN,
							b->leaves + (Size) i * AUDIT_HASH_LEN, AUDIT_HASH_LEN) != 0)
				report(vs, b->height, b->ids[i], NULL, "modified",
					   "retention removed the row, but as it was then it no longer had the leaf it was sealed with");
			b->seen_pos[i] = true;	/* removed by retention */
			vs->rows_retained++;
		}
		if (!b->seen_pos[i])
			missing++;
		if (!b->hashed)
			continue;
		e = sealed_lookup(vs->sealed, b->ids[i]);
		if (e != NULL && e->block == slot && e->pos == i)
			sealed_delete_item(vs->sealed, e);
	}
	if (missing > 0 && missing == b->n && b->n > 1)
		report(vs, b->height, 0, NULL, "missing",
			   psprintf("all %d rows of the block are missing", b->n));
	else if (missing > 0)
	{
		for (int i = 0; i < b->n; i++)
			if (!b->seen_pos[i])
				report(vs, b->height, b->ids[i], NULL, "missing", "a sealed row is not in the log");
	}
	b->in_use = false;
	b->hashed = false;
	vs->any_hashed = false;
	for (int i = 0; i < vs->nblocks && !vs->any_hashed; i++)
		vs->any_hashed = vs->blocks[i].in_use && vs->blocks[i].hashed;
	if (vs->hint_block == slot)
	{
		/* The next row most likely opens the lowest open block. */
		int64		lowest = PG_INT64_MAX;

		vs->hint_block = -1;
		for (int i = 0; i < vs->nblocks; i++)
			if (vs->blocks[i].in_use && vs->blocks[i].height < lowest)
			{
				lowest = vs->blocks[i].height;
				vs->hint_block = i;
				vs->hint_pos = 0;
			}
	}
}

/* The org filter: does this row belong to the organization in scope? */
static bool
row_in_organization(VerifyState *vs, Datum *values, bool *nulls, const AuditColumnMap *map)
{
	text	   *org;

	if (vs->organization == NULL)
		return true;
	if (nulls[map->attno[AC_ORGANIZATION_ID]])
		return false;
	org = DatumGetTextPP(values[map->attno[AC_ORGANIZATION_ID]]);
	return VARSIZE_ANY_EXHDR(org) == strlen(vs->organization) &&
		memcmp(VARDATA_ANY(org), vs->organization, VARSIZE_ANY_EXHDR(org)) == 0;
}

/*
 * row_leaf
 *		Recompute the row's leaf; false (with a reported problem) when the
 *		row lacks what the leaf needs.
 */
static bool
row_leaf(VerifyState *vs, int64 height, int64 id, Datum *values, bool *nulls,
		 const AuditColumnMap *map, uint8 leaf[AUDIT_HASH_LEN])
{
	int			salt = map->attno[AC_PERSONAL_DATA_SALT];
	int			com = map->attno[AC_PERSONAL_DATA_COMMITMENT];

	if (nulls[salt])
	{
		bytea	   *c = nulls[com] ? NULL : DatumGetByteaPP(values[com]);

		if (c == NULL || VARSIZE_ANY_EXHDR(c) != AUDIT_HASH_LEN)
		{
			report(vs, height, id, "personal_data_salt", "modified",
				   "the row has neither a salt nor a 32-byte commitment");
			return false;
		}
	}
	audit_row_leaf_for_verify(values, nulls, map, leaf);
	return true;
}

/*
 * compare_leaf
 *		Compare the leaf recomputed for the row at position pos of open
 *		block `block` (id, transaction id xid) with the leaf sealed there,
 *		and its stored hash (stored_ok: the hash column holds 32 bytes, in
 *		stored) with both; report what differs.  True when all agree.
 */
static bool
compare_leaf(VerifyState *vs, int block, int pos, int64 id, int64 xid,
			 const uint8 leaf[AUDIT_HASH_LEN], bool stored_ok, const uint8 stored[AUDIT_HASH_LEN])
{
	OpenBlock  *b = &vs->blocks[block];
	const uint8 *sealed_leaf = b->leaves + (size_t) pos * AUDIT_HASH_LEN;

	if (memcmp(leaf, sealed_leaf, AUDIT_HASH_LEN) != 0)
	{
		int			other = -1;

		for (int i = 0; i < b->n && other < 0; i++)
			if (i != pos && memcmp(leaf, b->leaves + (size_t) i * AUDIT_HASH_LEN, AUDIT_HASH_LEN) == 0)
				other = i;
		if (other >= 0)
			report(vs, b->height, id, NULL, "reordered",
				   psprintf("the row's leaf is sealed at position %d, the block lists the row at %d",
							other, pos));
		else if (xid < b->xid_from || xid >= b->xid_to)
			report(vs, b->height, id, "transaction_id", "modified",
				   "the row's transaction id is outside its block's interval");
		else
			report(vs, b->height, id, NULL, "modified",
				   "the row's fields do not produce the leaf hash sealed for it");
		return false;
	}
	if (!stored_ok || memcmp(stored, leaf, AUDIT_HASH_LEN) != 0)
	{
		report(vs, b->height, id, "hash", "modified",
			   "the row's stored hash differs from its sealed leaf");
		return false;
	}
	return true;
}

/*
 * flush_pending
 *		Compute the leaves of the pending rows (two at once) and compare
 *		them with their sealed leaves, in the order the rows were met.
 *		Called when a second row is pending, before any other problem is
 *		reported (report() does it, so problems come out in row order),
 *		before a block is closed and at the end of a partition.
 */
static void
flush_pending(VerifyState *vs)
{
	uint8		leaves[2][AUDIT_HASH_LEN];
	int			n = vs->npending;
	PendingRow *p = vs->pending;

	if (n == 0 || vs->flushing)
		return;
	vs->flushing = true;
	audit_row_leaves_from_inputs(&p[0].commit, &p[0].leaf, leaves[0],
								 n > 1 ? &p[1].commit : NULL, n > 1 ? &p[1].leaf : NULL, leaves[1]);
	for (int i = 0; i < n; i++)
		(void) compare_leaf(vs, p[i].block, p[i].pos, p[i].id, p[i].xid, leaves[i],
							p[i].stored_ok, p[i].stored);
	vs->npending = 0;
	vs->flushing = false;
}

/*
 * row_can_wait
 *		Whether the row's leaf may be computed later, together with the
 *		next row's (defer_row): the row has its salt, and nothing but its
 *		leaf and hash is checked, because audit_redaction_check_row()
 *		(redaction.c) has nothing to check in it.  That function looks at
 *		redacted rows (no salt) and GDPR request events (action "gdpr.*");
 *		any action starting with "gdpr" is taken synchronously.
 */
static bool
row_can_wait(Datum *values, bool *nulls, const AuditColumnMap *map)
{
	text	   *action;

	if (nulls[map->attno[AC_PERSONAL_DATA_SALT]] || nulls[map->attno[AC_ACTION]])
		return false;
	action = DatumGetTextPP(values[map->attno[AC_ACTION]]);
	return !(VARSIZE_ANY_EXHDR(action) >= 4 && memcmp(VARDATA_ANY(action), "gdpr", 4) == 0);
}

/*
 * defer_row
 *		Encode the row (at position pos of open block `block`) for
 *		flush_pending(); computes the pending leaves once two rows wait.
 */
static void
defer_row(VerifyState *vs, int block, int pos, int64 id, int64 xid,
		  Datum *values, bool *nulls, const AuditColumnMap *map)
{
	PendingRow *p = &vs->pending[vs->npending];

	if (p->commit.data == NULL)
	{
		MemoryContext old = MemoryContextSwitchTo(vs->cxt);

		initStringInfo(&p->commit);
		initStringInfo(&p->leaf);
		MemoryContextSwitchTo(old);
	}
	audit_row_leaf_inputs(&p->commit, &p->leaf, values, nulls, map);
	p->block = block;
	p->pos = pos;
	p->id = id;
	p->xid = xid;
	p->stored_ok = audit_bytea_is_hash(values[map->attno[AC_HASH]], nulls[map->attno[AC_HASH]],
									   p->stored);
	vs->npending++;
	if (vs->npending == lengthof(vs->pending))
		flush_pending(vs);
}

/*
 * verify_row
 *		Match one row of the current partition with its sealed leaf.
 */
static void
verify_row(VerifyState *vs, Datum *values, bool *nulls, const AuditColumnMap *map)
{
	int64		id;
	int64		xid;
	SealedRow  *e;
	SealedRow	hint;
	OpenBlock  *b;
	uint8		leaf[AUDIT_HASH_LEN];
	uint8		stored[AUDIT_HASH_LEN];

	if (nulls[map->attno[AC_ID]] || nulls[map->attno[AC_TRANSACTION_ID]])
	{
		report(vs, 0, 0, nulls[map->attno[AC_ID]] ? "id" : "transaction_id", "inserted",
			   "a row without an id or transaction id");
		return;
	}
	id = DatumGetInt64(values[map->attno[AC_ID]]);
	xid = DatumGetInt64(values[map->attno[AC_TRANSACTION_ID]]);
	if (xid < vs->rows_min_xid)
		return;					/* verified before (since_last) */

	if (xid >= vs->horizon)
	{
		if (!row_in_organization(vs, values, nulls, map))
			return;
		vs->rows_unsealed++;
		/* Before audit.finish_restore(), ids may come from another cluster. */
		if (vs->restoring)
			return;
		/*
		 * A GDPR request's event is checked (and counts as its request's
		 * event) before it is sealed too: a whole-log verification right
		 * after a request must not report its event missing.
		 */
		audit_redaction_check_row(vs->redactions, values, nulls, map, report_redaction, vs);
		if (xid >= vs->next_xid)
			report(vs, 0, id, "transaction_id", "inserted",
				   "the row names a transaction id that has not been assigned yet");
		else if (!nulls[map->attno[AC_TIMESTAMP]] &&
				 vs->now - DatumGetTimestampTz(values[map->attno[AC_TIMESTAMP]]) >
				 (int64) audit_unsealed_grace * USECS_PER_SEC &&
				 vs->sealer_stalled &&
				 TransactionIdPrecedes(XidFromFullTransactionId(FullTransactionIdFromU64((uint64) (xid - vs->xid_offset))),
									   GetActiveSnapshot()->xmin))
			report(vs, 0, id, NULL, "unsealed",
				   psprintf("the row's transaction finished but it is not sealed, and nothing was sealed for over %d s",
							audit_unsealed_grace));
		return;
	}

	/* Rows mostly come in sealing order: try the position after the last match. */
	if (vs->hint_block >= 0 && vs->blocks[vs->hint_block].in_use &&
		vs->hint_pos < vs->blocks[vs->hint_block].n &&
		vs->blocks[vs->hint_block].ids[vs->hint_pos] == id)
	{
		hint.block = vs->hint_block;
		hint.pos = vs->hint_pos;
		e = &hint;
	}
	else
	{
		/*
		 * Load the blocks up to this row's transaction, in height order, and
		 * look the row up among the open blocks.  While no lookup table is
		 * in use, loading stops at a block that starts with this row: the
		 * next block in sealing order, where the row is.  Later blocks are
		 * loaded when a row needs them, so that the many blocks of one large
		 * transaction (a bulk load) are not all held, and read, at once.
		 */
		e = NULL;
		while (fetch_pending_block(vs))
		{
			bool		isnull;
			int64		xf = DatumGetInt64(SPI_getbinval(vs->pending_block, vs->pending_desc, 6, &isnull));
			int			slot;

			if (xf > xid)
				break;
			slot = load_pending_block(vs);
			if (!vs->any_hashed && vs->blocks[slot].n > 0 && vs->blocks[slot].ids[0] == id)
			{
				hint.block = slot;
				hint.pos = 0;
				e = &hint;
				break;
			}
		}
		if (e == NULL)
		{
			hash_open_blocks(vs);
			e = sealed_lookup(vs->sealed, id);
		}
	}
	if (e == NULL)
	{
		if (vs->since_last && xid < vs->verified_xid_to)
			return;				/* sealed in a block verified last time */
		if (vs->relocated != NULL && sealed_lookup(vs->relocated, id) != NULL)
			return;				/* checked with the default partition's blocks */
		if (row_in_organization(vs, values, nulls, map))
			report(vs, 0, id, "transaction_id", "inserted",
				   "the row is below the sealed horizon but no block of its partition holds it");
		return;
	}
	b = &vs->blocks[e->block];
	if (b->seen_pos[e->pos])
	{
		report(vs, b->height, id, "id", "inserted",
			   "a second row with the id of a sealed row");
		return;
	}
	b->seen_pos[e->pos] = true;
	b->seen++;
	vs->hint_block = e->block;
	vs->hint_pos = e->pos + 1;

	if (row_in_organization(vs, values, nulls, map))
	{
		vs->rows_checked++;
		if (row_can_wait(values, nulls, map))
			defer_row(vs, e->block, e->pos, id, xid, values, nulls, map);
		else
		{
			flush_pending(vs);
			if (row_leaf(vs, b->height, id, values, nulls, map, leaf) &&
				compare_leaf(vs, e->block, e->pos, id, xid, leaf,
							 audit_bytea_is_hash(values[map->attno[AC_HASH]], nulls[map->attno[AC_HASH]],
												 stored),
							 stored))
				audit_redaction_check_row(vs->redactions, values, nulls, map,
										  report_redaction, vs);
		}
	}

	if (b->seen == b->n)
	{
		flush_pending(vs);
		close_block(vs, e->block);
	}
}

/*
 * load_retained
 *		The ids that retention removed from the rows of the blocks about to
 *		be opened for `part`, with the leaf the removal listed, into
 *		vs->retained.  For a monthly partition: the ids its retention_rows
 *		and archive_rows blocks list.  For the default partition (whose
 *		blocks also seal the rows later relocated into a month): the
 *		relocated ids that retention removed from that month, row by row, or
 *		with the whole partition after the relocation (no leaf then).
 */
static void
load_retained(VerifyState *vs, const AuditPartition *part)
{
	MemoryContext old = MemoryContextSwitchTo(vs->cxt);
	int			rc;

	vs->retained = sealed_create(vs->cxt, 64, NULL);
	MemoryContextSwitchTo(old);
	if (part->unbounded)
		rc = SPI_execute("SELECT r.id, (SELECT substring(d.leaves FROM (array_position(d.row_ids, r.id) - 1) * 32 + 1 FOR 32)"
						 "   FROM audit.audit_chain_block d WHERE d.kind IN ('retention_rows', 'archive_rows')"
						 "   AND d.partition_from = r.partition_from AND d.partition_to = r.partition_to"
						 "   AND r.id = ANY (d.row_ids) ORDER BY d.height LIMIT 1)"
						 " FROM (SELECT unnest(row_ids) AS id, partition_from, partition_to, chain_height"
						 "  FROM audit.audit_log_relocation) r"
						 " WHERE EXISTS (SELECT FROM audit.audit_chain_block d WHERE d.kind = 'retention_partition'"
						 "   AND d.partition_from = r.partition_from AND d.partition_to = r.partition_to"
						 "   AND d.height > r.chain_height)"
						 "  OR EXISTS (SELECT FROM audit.audit_chain_block d"
						 "   WHERE d.kind IN ('retention_rows', 'archive_rows')"
						 "   AND d.partition_from = r.partition_from AND d.partition_to = r.partition_to"
						 "   AND r.id = ANY (d.row_ids))", true, 0);
	else
		rc = SPI_execute_with_args("SELECT u.id, substring(b.leaves FROM (u.pos::integer - 1) * 32 + 1 FOR 32)"
								   " FROM audit.audit_chain_block b,"
								   "  unnest(b.row_ids) WITH ORDINALITY AS u(id, pos)"
								   " WHERE b.kind IN ('retention_rows', 'archive_rows')"
								   " AND b.partition_from = $1 AND b.partition_to = $2",
								   2, (Oid[]) {TIMESTAMPTZOID, TIMESTAMPTZOID},
								   (Datum[]) {TimestampTzGetDatum(part->from), TimestampTzGetDatum(part->to)},
								   NULL, true, 0);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "reading retention blocks failed: %s", SPI_result_code_string(rc));
	vs->retained_leaves = MemoryContextAlloc(vs->cxt, (Size) AUDIT_HASH_LEN * Max(SPI_processed, 1));
	for (uint64 r = 0; r < SPI_processed; r++)
	{
		bool		isnull;
		bool		found;
		Datum		id = SPI_getbinval(SPI_tuptable->vals[r], SPI_tuptable->tupdesc, 1, &isnull);
		SealedRow  *e;

		if (isnull)
			continue;
		e = sealed_insert(vs->retained, DatumGetInt64(id), &found);
		e->block = (int32) r;
		e->pos = column_is_hash(SPI_tuptable->vals[r], SPI_tuptable->tupdesc, 2,
								vs->retained_leaves + (Size) r * AUDIT_HASH_LEN) ? 1 : 0;
	}
	SPI_freetuptable(SPI_tuptable);
}

/*
 * open_partition_blocks / finish_partition
 *		Start and end the blocks of one partition's bounds.
 */
static void
open_partition_blocks(VerifyState *vs, const AuditPartition *part)
{
	if (part->unbounded)
		vs->block_cursor = SPI_cursor_open_with_args(NULL,
													 "SELECT height, row_count, row_ids, leaves, merkle_root, xid_from, xid_to"
													 " FROM audit.audit_chain_block"
													 " WHERE partition_from IS NULL AND kind = 'rows' AND height >= $1"
													 " ORDER BY height",
													 1, (Oid[]) {INT8OID},
													 (Datum[]) {Int64GetDatum(vs->rows_from_height)},
													 NULL, true, 0);
	else
		vs->block_cursor = SPI_cursor_open_with_args(NULL,
													 "SELECT height, row_count, row_ids, leaves, merkle_root, xid_from, xid_to"
													 " FROM audit.audit_chain_block"
													 " WHERE partition_from = $2 AND partition_to = $3 AND kind = 'rows'"
													 " AND height >= $1 AND height > coalesce((SELECT max(d.height)"
													 " FROM audit.audit_chain_block d WHERE d.kind = 'retention_partition'"
													 " AND d.partition_from = $2 AND d.partition_to = $3), 0)"
													 " ORDER BY height",
													 3, (Oid[]) {INT8OID, TIMESTAMPTZOID, TIMESTAMPTZOID},
													 (Datum[]) {Int64GetDatum(vs->rows_from_height),
														 TimestampTzGetDatum(part->from),
													 TimestampTzGetDatum(part->to)},
													 NULL, true, 0);
	vs->block_cursor_done = false;
	vs->pending_block = NULL;
	vs->hint_block = -1;
	vs->any_hashed = false;
	vs->sealed = sealed_create(vs->cxt, 1024, NULL);
	load_retained(vs, part);
}

static void
finish_partition(VerifyState *vs)
{
	flush_pending(vs);
	while (fetch_pending_block(vs))
		(void) load_pending_block(vs);
	for (int i = 0; i < vs->nblocks; i++)
		if (vs->blocks[i].in_use)
			close_block(vs, i);
	SPI_cursor_close(vs->block_cursor);
	sealed_destroy(vs->sealed);
	vs->sealed = NULL;
	sealed_destroy(vs->retained);
	vs->retained = NULL;
}

/*
 * verify_cursor_rows
 *		Feed every row of an open SPI cursor over one partition to verify_row,
 *		then close the cursor.  values/nulls hold the partition's attributes.
 */
static void
verify_cursor_rows(VerifyState *vs, Portal portal, const AuditColumnMap *map, Datum *values, bool *nulls)
{
	for (;;)
	{
		SPITupleTable *tt;
		uint64		fetched;

		SPI_cursor_fetch(portal, true, 1000);
		if (SPI_processed == 0)
			break;
		tt = SPI_tuptable;
		fetched = SPI_processed;	/* verify_row() runs SPI too */
		for (uint64 i = 0; i < fetched; i++)
		{
			MemoryContext old;

			CHECK_FOR_INTERRUPTS();
			heap_deform_tuple(tt->vals[i], tt->tupdesc, values, nulls);
			old = MemoryContextSwitchTo(vs->row_cxt);
			verify_row(vs, values, nulls, map);
			MemoryContextSwitchTo(old);
			MemoryContextReset(vs->row_cxt);
		}
		SPI_freetuptable(tt);
	}
	SPI_cursor_close(portal);
}

/*
 * scan_partition
 *		Feed every row of one partition to verify_row: a sequential scan for
 *		a whole verification, the BRIN index for rows newer than the last.
 */
static void
scan_partition(VerifyState *vs, Oid relid)
{
	Relation	rel = table_open(relid, AccessShareLock);
	const AuditColumnMap *map = audit_columns_for_relation(rel);
	TupleDesc	desc = RelationGetDescr(rel);

	if (vs->rows_min_xid <= 0)
	{
		/* From the first page on (no synchronized scan): see load order. */
		TableScanDesc scan = table_beginscan_strat(rel, GetActiveSnapshot(), 0, NULL, true, false);
		TupleTableSlot *slot = table_slot_create(rel, NULL);

		while (table_scan_getnextslot(scan, ForwardScanDirection, slot))
		{
			MemoryContext old;

			CHECK_FOR_INTERRUPTS();
			slot_getallattrs(slot);
			old = MemoryContextSwitchTo(vs->row_cxt);
			verify_row(vs, slot->tts_values, slot->tts_isnull, map);
			MemoryContextSwitchTo(old);
			MemoryContextReset(vs->row_cxt);
		}
		ExecDropSingleTupleTableSlot(slot);
		table_endscan(scan);
	}
	else
	{
		StringInfoData sql;
		Portal		portal;
		int			save_nestlevel = audit_plan_transaction_range_scans();
		Datum	   *values = palloc(sizeof(Datum) * desc->natts);
		bool	   *nulls = palloc(sizeof(bool) * desc->natts);

		initStringInfo(&sql);
		appendStringInfo(&sql, "SELECT * FROM ONLY %s WHERE transaction_id >= $1",
						 quote_qualified_identifier(get_namespace_name(RelationGetNamespace(rel)),
													RelationGetRelationName(rel)));
		portal = SPI_cursor_open_with_args(NULL, sql.data, 1, (Oid[]) {INT8OID},
										   (Datum[]) {Int64GetDatum(vs->rows_min_xid)}, NULL, true, 0);
		verify_cursor_rows(vs, portal, map, values, nulls);
		AtEOXact_GUC(true, save_nestlevel);
	}
	table_close(rel, AccessShareLock);
}

/*
 * load_relocations
 *		Enter the ids of the sealed rows moved out of the default partition
 *		(audit.audit_log_relocation) into vs->relocated.
 */
static void
load_relocations(VerifyState *vs)
{
	MemoryContext old;

	if (SPI_execute("SELECT row_ids, partition_from, partition_to FROM audit.audit_log_relocation",
					true, 0) != SPI_OK_SELECT)
		elog(ERROR, "reading audit.audit_log_relocation failed");
	old = MemoryContextSwitchTo(vs->cxt);
	vs->relocated = sealed_create(vs->cxt, Max(SPI_processed * 8, 16), NULL);
	MemoryContextSwitchTo(old);
	for (uint64 r = 0; r < SPI_processed; r++)
	{
		bool		isnull;
		Datum		value = SPI_getbinval(SPI_tuptable->vals[r], SPI_tuptable->tupdesc, 1, &isnull);
		ArrayType  *ids;
		int64	   *data;
		int			n;
		AuditPartition *bounds;

		if (isnull)
			continue;
		old = MemoryContextSwitchTo(vs->cxt);
		bounds = palloc0(sizeof(AuditPartition));
		bounds->from = DatumGetTimestampTz(SPI_getbinval(SPI_tuptable->vals[r], SPI_tuptable->tupdesc, 2, &isnull));
		bounds->to = DatumGetTimestampTz(SPI_getbinval(SPI_tuptable->vals[r], SPI_tuptable->tupdesc, 3, &isnull));
		vs->relocated_bounds = lappend(vs->relocated_bounds, bounds);
		MemoryContextSwitchTo(old);
		ids = DatumGetArrayTypeP(value);
		if (ARR_NDIM(ids) != 1 || ARR_HASNULL(ids) || ARR_ELEMTYPE(ids) != INT8OID)
			continue;
		n = ArrayGetNItems(ARR_NDIM(ids), ARR_DIMS(ids));
		data = (int64 *) ARR_DATA_PTR(ids);
		for (int i = 0; i < n; i++)
		{
			bool		found;

			(void) sealed_insert(vs->relocated, data[i], &found);
		}
	}
	SPI_freetuptable(SPI_tuptable);
}

/*
 * scan_relocated
 *		Feed the rows moved out of the default partition, now in their
 *		month's partition, to verify_row while the default partition's
 *		blocks are open.
 */
static void
scan_relocated(VerifyState *vs, AuditPartition *parts, int nparts)
{
	Portal		portal;
	Datum	   *values = NULL;
	bool	   *nulls = NULL;
	int			natts = 0;
	int			save_nestlevel;

	save_nestlevel = audit_plan_transaction_range_scans();
	for (int i = 0; i < nparts; i++)
	{
		Relation	rel;
		const AuditColumnMap *map;
		StringInfoData sql;
		ListCell   *lc;
		bool		has_relocated = false;

		if (parts[i].unbounded)
			continue;
		foreach(lc, vs->relocated_bounds)
			has_relocated |= audit_partition_same_bounds(&parts[i], (AuditPartition *) lfirst(lc));
		if (!has_relocated)
			continue;
		rel = table_open(parts[i].relid, AccessShareLock);
		map = audit_columns_for_relation(rel);
		if (natts < RelationGetDescr(rel)->natts)
		{
			natts = RelationGetDescr(rel)->natts;
			values = palloc(sizeof(Datum) * natts);
			nulls = palloc(sizeof(bool) * natts);
		}
		initStringInfo(&sql);
		appendStringInfo(&sql,
						 "SELECT a.* FROM ONLY %s a JOIN audit.audit_log_relocation r"
						 " ON r.partition_from = $1 AND r.partition_to = $2"
						 " AND a.id = ANY (r.row_ids) AND a.transaction_id >= r.transaction_id_min"
						 " AND a.transaction_id <= r.transaction_id_max",
						 quote_qualified_identifier(get_namespace_name(RelationGetNamespace(rel)),
													RelationGetRelationName(rel)));
		portal = SPI_cursor_open_with_args(NULL, sql.data, 2, (Oid[]) {TIMESTAMPTZOID, TIMESTAMPTZOID},
										   (Datum[]) {TimestampTzGetDatum(parts[i].from),
										   TimestampTzGetDatum(parts[i].to)}, NULL, true, 0);
		verify_cursor_rows(vs, portal, map, values, nulls);
		table_close(rel, AccessShareLock);
	}
	AtEOXact_GUC(true, save_nestlevel);
}

static void
check_rows(VerifyState *vs)
{
	int			nparts;
	AuditPartition *parts = audit_log_partitions(&nparts);

	load_relocations(vs);

	for (int i = 0; i < nparts; i++)
	{
		int			j;

		if (vs->has_from && !parts[i].unbounded && parts[i].to <= vs->from_time)
			continue;
		if (vs->has_to && !parts[i].unbounded && parts[i].from >= vs->to_time)
			continue;

		open_partition_blocks(vs, &parts[i]);
		/* Partitions with the same bounds (only unbounded ones) share blocks. */
		for (j = i; j < nparts && audit_partition_same_bounds(&parts[i], &parts[j]); j++)
			scan_partition(vs, parts[j].relid);
		if (parts[i].unbounded && vs->relocated->members > 0)
		{
			/* Rows sealed here and moved since: verified against these blocks. */
			sealed_hash *relocated = vs->relocated;

			vs->relocated = NULL;
			scan_relocated(vs, parts, nparts);
			vs->relocated = relocated;
		}
		finish_partition(vs);
		i = j - 1;
	}
	progress_update(vs, "done");
}

/*
 * check_orphan_blocks
 *		Blocks whose partition no longer exists: all their rows are missing.
 */
static void
check_orphan_blocks(VerifyState *vs)
{
	int			nparts;
	AuditPartition *parts = audit_log_partitions(&nparts);
	bool		isnull;

	if (vs->has_from || vs->has_to)
		return;
	if (SPI_execute_with_args("SELECT b.height, b.row_count, b.partition_from, b.partition_to"
							  " FROM audit.audit_chain_block b WHERE b.height >= $1 AND b.kind = 'rows'"
							  " AND NOT EXISTS (SELECT FROM audit.audit_chain_block d"
							  "  WHERE d.kind = 'retention_partition' AND d.partition_from = b.partition_from"
							  "  AND d.partition_to = b.partition_to AND d.height > b.height)"
							  " ORDER BY b.height",
							  1, (Oid[]) {INT8OID}, (Datum[]) {Int64GetDatum(vs->rows_from_height)},
							  NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "reading chain blocks failed");
	for (uint64 r = 0; r < SPI_processed; r++)
	{
		HeapTuple	t = SPI_tuptable->vals[r];
		TupleDesc	d = SPI_tuptable->tupdesc;
		AuditPartition bp;
		bool		null_from,
					null_to,
					found = false;

		bp.from = DatumGetTimestampTz(SPI_getbinval(t, d, 3, &null_from));
		bp.to = DatumGetTimestampTz(SPI_getbinval(t, d, 4, &null_to));
		bp.unbounded = null_from || null_to;
		for (int i = 0; i < nparts && !found; i++)
			found = audit_partition_same_bounds(&bp, &parts[i]);
		if (!found)
		{
			vs->blocks_checked++;
			report(vs, DatumGetInt64(SPI_getbinval(t, d, 1, &isnull)), 0, "partition", "missing",
				   psprintf("the partition of the block's %d rows no longer exists",
							DatumGetInt32(SPI_getbinval(t, d, 2, &isnull))));
		}
	}
}

/*
 * check_retention_blocks
 *		Each retention or archive block's Merkle root must be the root of
 *		its leaves, its row_count the number of its ids and leaves; a
 *		retention_partition block lists no ids.
 */
static void
check_retention_blocks(VerifyState *vs)
{
	Portal		portal;

	if (vs->has_from || vs->has_to || vs->organization)
		return;
	portal = SPI_cursor_open_with_args(NULL,
									   "SELECT height, kind, row_count, cardinality(row_ids), leaves, merkle_root"
									   " FROM audit.audit_chain_block"
									   " WHERE kind <> 'rows' AND height >= $1 ORDER BY height",
									   1, (Oid[]) {INT8OID}, (Datum[]) {Int64GetDatum(vs->rows_from_height)},
									   NULL, true, 0);
	for (;;)
	{
		SPI_cursor_fetch(portal, true, 16);
		if (SPI_processed == 0)
			break;
		for (uint64 r = 0; r < SPI_processed; r++)
		{
			HeapTuple	t = SPI_tuptable->vals[r];
			TupleDesc	d = SPI_tuptable->tupdesc;
			bool		isnull;
			int64		height = DatumGetInt64(SPI_getbinval(t, d, 1, &isnull));
			char	   *kind = TextDatumGetCString(SPI_getbinval(t, d, 2, &isnull));
			int32		row_count = DatumGetInt32(SPI_getbinval(t, d, 3, &isnull));
			int32		nids = DatumGetInt32(SPI_getbinval(t, d, 4, &isnull));
			bytea	   *leaves = DatumGetByteaPP(SPI_getbinval(t, d, 5, &isnull));
			uint8		stored_root[AUDIT_HASH_LEN];
			uint8		root[AUDIT_HASH_LEN];
			Size		len = VARSIZE_ANY_EXHDR(leaves);

			CHECK_FOR_INTERRUPTS();
			vs->blocks_checked++;
			if (len % AUDIT_HASH_LEN != 0 || (int64) (len / AUDIT_HASH_LEN) != nids ||
				(strcmp(kind, AUDIT_BLOCK_RETENTION_PARTITION) != 0 ? nids != row_count : nids != 0))
			{
				report(vs, height, 0, "row_ids", "modified",
					   "the retention block's ids, leaves and row_count do not agree");
				continue;
			}
			audit_merkle_root((const uint8 *) VARDATA_ANY(leaves), nids, root);
			if (!column_is_hash(t, d, 6, stored_root) || memcmp(root, stored_root, AUDIT_HASH_LEN) != 0)
				report(vs, height, 0, "merkle_root", "modified",
					   "the retention block's Merkle root is not the root of its leaves");
		}
		SPI_freetuptable(SPI_tuptable);
	}
	SPI_cursor_close(portal);

	/* A dropped partition held the rows the chain says it held. */
	if (SPI_execute_with_args("SELECT d.height, d.row_count,"
							  " (coalesce((SELECT sum(b.row_count) FROM audit.audit_chain_block b"
							  "    WHERE b.kind = 'rows' AND b.partition_from = d.partition_from"
							  "    AND b.partition_to = d.partition_to AND b.height < d.height AND b.height > p.prev), 0)"
							  "  + coalesce((SELECT sum(r.row_count) FROM audit.audit_log_relocation r"
							  "    WHERE r.partition_from = d.partition_from AND r.partition_to = d.partition_to"
							  "    AND r.chain_height < d.height AND r.chain_height >= p.prev), 0)"
							  "  - coalesce((SELECT sum(b.row_count) FROM audit.audit_chain_block b"
							  "    WHERE b.kind IN ('retention_rows', 'archive_rows') AND b.partition_from = d.partition_from"
							  "    AND b.partition_to = d.partition_to AND b.height < d.height AND b.height > p.prev), 0)"
							  " )::bigint"
							  " FROM audit.audit_chain_block d"
							  " CROSS JOIN LATERAL (SELECT coalesce(max(x.height), 0) AS prev FROM audit.audit_chain_block x"
							  "   WHERE x.kind = 'retention_partition' AND x.partition_from = d.partition_from"
							  "   AND x.partition_to = d.partition_to AND x.height < d.height) p"
							  " WHERE d.kind = 'retention_partition' AND d.height >= $1 ORDER BY d.height",
							  1, (Oid[]) {INT8OID}, (Datum[]) {Int64GetDatum(vs->rows_from_height)},
							  NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "reading dropped partitions failed");
	for (uint64 r = 0; r < SPI_processed; r++)
	{
		bool		isnull;
		int64		height = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[r], SPI_tuptable->tupdesc, 1, &isnull));
		int32		row_count = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[r], SPI_tuptable->tupdesc, 2, &isnull));
		int64		expected = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[r], SPI_tuptable->tupdesc, 3, &isnull));

		if (row_count != expected)
			report(vs, height, 0, "row_count", "modified",
				   psprintf("the dropped partition held %lld rows by the chain's count, the block says %d",
							(long long) expected, row_count));
	}
	SPI_freetuptable(SPI_tuptable);
}

/*
 * check_archive_entry
 *		Recompute the leaf of every row of one archive entry and compare it,
 *		position by position, with the ids and leaves of its archive_rows
 *		block.  Runs in a subtransaction: an entry that no longer decompresses
 *		or parses is reported, not fatal.
 */
static void
check_archive_entry(VerifyState *vs, int64 height, int64 archive_id, ArrayType *ids, bytea *leaves)
{
	MemoryContext oldcxt = CurrentMemoryContext;
	ResourceOwner oldowner = CurrentResourceOwner;
	int64	   *id_data = (int64 *) ARR_DATA_PTR(ids);
	int			n = ArrayGetNItems(ARR_NDIM(ids), ARR_DIMS(ids));
	const uint8 *leaf_data = (const uint8 *) VARDATA_ANY(leaves);

	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(oldcxt);
	PG_TRY();
	{
		uint64		nrows;

		if (SPI_execute_with_args("SELECT (l.j->>'id')::bigint, audit.leaf_hash(audit.row_from_export(l.j)),"
								  " decode(l.j->>'hash', 'hex'),"
								  " l.j->>'retention_policy' IS NOT DISTINCT FROM a.retention_policy"
								  " AND l.j->>'data_classification' IS NOT DISTINCT FROM a.data_classification"
								  " AND (audit.row_from_export(l.j)).\"timestamp\" BETWEEN a.min_timestamp AND a.max_timestamp"
								  " AND (l.j->>'id')::bigint BETWEEN a.first_id AND a.last_id"
								  " FROM audit.archive_storage a, audit.archive_lines($1, false) l(j)"
								  " WHERE a.archive_id = $1",
								  1, (Oid[]) {INT8OID}, (Datum[]) {Int64GetDatum(archive_id)},
								  NULL, true, 0) != SPI_OK_SELECT)
			elog(ERROR, "reading archive entry %lld failed", (long long) archive_id);
		nrows = SPI_processed;
		if ((int64) nrows != n)
			report(vs, height, 0, "archive", "modified",
				   psprintf("archive entry %lld holds %llu rows, its block %d",
							(long long) archive_id, (unsigned long long) nrows, n));
		for (uint64 r = 0; r < nrows && (int64) r < n; r++)
		{
			HeapTuple	t = SPI_tuptable->vals[r];
			bool		isnull;
			int64		id = DatumGetInt64(SPI_getbinval(t, SPI_tuptable->tupdesc, 1, &isnull));
			uint8		leaf[AUDIT_HASH_LEN];
			uint8		stored[AUDIT_HASH_LEN];

			vs->rows_checked++;
			if (id != id_data[r])
				report(vs, height, id, "id", "reordered",
					   psprintf("archive entry %lld holds row %lld where its block has row %lld",
								(long long) archive_id, (long long) id, (long long) id_data[r]));
			else if (!column_is_hash(t, SPI_tuptable->tupdesc, 2, leaf) ||
					 memcmp(leaf, leaf_data + (Size) r * AUDIT_HASH_LEN, AUDIT_HASH_LEN) != 0)
				report(vs, height, id, NULL, "modified",
					   psprintf("the archived row (entry %lld) no longer hashes to its sealed leaf",
								(long long) archive_id));
			else if (!column_is_hash(t, SPI_tuptable->tupdesc, 3, stored) ||
					 memcmp(stored, leaf, AUDIT_HASH_LEN) != 0)
				report(vs, height, id, "hash", "modified",
					   psprintf("the archived row's stored hash (entry %lld) is not its leaf",
								(long long) archive_id));
			else if (!DatumGetBool(SPI_getbinval(t, SPI_tuptable->tupdesc, 4, &isnull)) || isnull)
				report(vs, height, id, "archive", "modified",
					   psprintf("archive entry %lld describes its rows wrongly (policy, classification, "
								"time span or id range), which decides when it expires",
								(long long) archive_id));
		}
		ReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(oldcxt);
		CurrentResourceOwner = oldowner;
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(vs->cxt);
		edata = CopyErrorData();
		FlushErrorState();
		RollbackAndReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(oldcxt);
		CurrentResourceOwner = oldowner;
		report(vs, height, 0, "archive", "modified",
			   psprintf("archive entry %lld cannot be read: %s", (long long) archive_id, edata->message));
		FreeErrorData(edata);
	}
	PG_END_TRY();
}

/*
 * check_archives
 *		Every archive_rows block must have its archive entry (same root and
 *		count, rows that recompute to its leaves) unless a later
 *		retention_archive block expired it; an entry without its block was
 *		made outside audit_db.
 */
static void
check_archives(VerifyState *vs)
{
	SPITupleTable *tt;
	uint64		n;

	if (vs->has_from || vs->has_to || vs->organization)
		return;
	if (SPI_execute_with_args("SELECT b.height, a.archive_id, a.merkle_root = b.merkle_root AND a.row_count = b.row_count,"
							  " EXISTS (SELECT FROM audit.audit_chain_block x WHERE x.kind = 'retention_archive'"
							  "  AND x.height > b.height AND x.merkle_root = b.merkle_root AND x.row_count = b.row_count"
							  "  AND x.row_ids = b.row_ids AND x.partition_from = b.partition_from"
							  "  AND x.partition_to = b.partition_to),"
							  " b.row_ids, b.leaves"
							  " FROM audit.audit_chain_block b LEFT JOIN audit.archive_storage a ON a.block_height = b.height"
							  " WHERE b.kind = 'archive_rows' AND b.height >= $1"
							  " UNION ALL"
							  " SELECT a.block_height, a.archive_id, NULL, false, NULL, NULL FROM audit.archive_storage a"
							  " WHERE NOT EXISTS (SELECT FROM audit.audit_chain_block b"
							  "  WHERE b.height = a.block_height AND b.kind = 'archive_rows')"
							  " ORDER BY 1",
							  1, (Oid[]) {INT8OID}, (Datum[]) {Int64GetDatum(vs->rows_from_height)},
							  NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "reading archive blocks failed");
	tt = SPI_tuptable;
	n = SPI_processed;
	for (uint64 r = 0; r < n; r++)
	{
		HeapTuple	t = tt->vals[r];
		TupleDesc	d = tt->tupdesc;
		bool		null_id;
		bool		null_match;
		bool		null_ids;
		bool		isnull;
		int64		height = DatumGetInt64(SPI_getbinval(t, d, 1, &isnull));
		int64		archive_id = DatumGetInt64(SPI_getbinval(t, d, 2, &null_id));
		Datum		match = SPI_getbinval(t, d, 3, &null_match);
		bool		expired = DatumGetBool(SPI_getbinval(t, d, 4, &isnull));
		Datum		ids = SPI_getbinval(t, d, 5, &null_ids);

		CHECK_FOR_INTERRUPTS();
		if (null_ids)
			report(vs, height, 0, "archive", "inserted",
				   psprintf("archive entry %lld has no archive_rows block at height %lld",
							(long long) archive_id, (long long) height));
		else if (null_id)
		{
			if (!expired)
				report(vs, height, 0, "archive", "missing",
					   "the block's rows were archived, but their archive entry is gone and no later block expired it");
		}
		else if (expired)
			report(vs, height, 0, "archive", "inserted",
				   psprintf("archive entry %lld was expired by a retention_archive block but is still there",
							(long long) archive_id));
		else if (null_match || !DatumGetBool(match))
			report(vs, height, 0, "archive", "modified",
				   psprintf("archive entry %lld does not have its block's Merkle root and row count",
							(long long) archive_id));
		else
		{
			ArrayType  *idarr = DatumGetArrayTypeP(ids);
			bytea	   *leaves = DatumGetByteaPP(SPI_getbinval(t, d, 6, &isnull));

			if (ARR_NDIM(idarr) != 1 || ARR_HASNULL(idarr) ||
				VARSIZE_ANY_EXHDR(leaves) != (Size) ArrayGetNItems(1, ARR_DIMS(idarr)) * AUDIT_HASH_LEN)
				continue;		/* reported by check_retention_blocks */
			check_archive_entry(vs, height, archive_id, idarr, leaves);
		}
	}
	SPI_freetuptable(tt);
}

/*
 * record_run
 *		Insert this run's row into audit.audit_integrity_log as the table's
 *		owner (auditors may verify but not write the log themselves).
 */
static void
record_run(VerifyState *vs, TimestampTz started, Jsonb *scope)
{
	Oid			save_userid;
	int			save_sec;
	Oid			owner;
	Oid			relid;
	int			rc;

	if (RecoveryInProgress() || XactReadOnly)
	{
		ereport(NOTICE,
				(errmsg("audit.verify: read-only transaction, the run is not recorded in audit.audit_integrity_log")));
		return;
	}
	relid = get_relname_relid("audit_integrity_log", get_namespace_oid(AUDIT_SCHEMA_NAME, false));
	{
		Relation	rel = table_open(relid, AccessShareLock);

		owner = rel->rd_rel->relowner;
		table_close(rel, AccessShareLock);
	}

	GetUserIdAndSecContext(&save_userid, &save_sec);
	SetUserIdAndSecContext(owner, save_sec | SECURITY_LOCAL_USERID_CHANGE | SECURITY_NOFORCE_RLS);
	PG_TRY();
	{
		Datum		values[12];
		char		nulls[12];

		memset(nulls, ' ', sizeof(nulls));
		values[0] = TimestampTzGetDatum(started);
		values[1] = CStringGetTextDatum(GetUserNameFromId(save_userid, false));
		values[2] = JsonbPGetDatum(scope);
		values[3] = Int64GetDatum(vs->check_from_height);
		values[4] = Int64GetDatum(vs->last_height);
		values[5] = PointerGetDatum(audit_bytea_from_bytes(vs->last_hash, AUDIT_HASH_LEN));
		if (vs->last_height == 0)
			nulls[5] = 'n';
		values[6] = Int64GetDatum(vs->blocks_checked);
		values[7] = Int64GetDatum(vs->rows_checked);
		values[8] = Int64GetDatum(vs->rows_unsealed);
		values[9] = Int64GetDatum(vs->problems);
		values[10] = vs->first_problem ? CStringGetTextDatum(vs->first_problem) : (Datum) 0;
		if (vs->first_problem == NULL)
			nulls[10] = 'n';
		values[11] = CStringGetTextDatum(vs->problems == 0 ? "clean" : "problems");
		rc = SPI_execute_with_args("INSERT INTO audit.audit_integrity_log (started_at, finished_at, run_by, scope,"
								   " from_height, to_height, head_hash, blocks_checked, rows_checked, rows_unsealed,"
								   " problems, first_problem, status)"
								   " VALUES ($1, clock_timestamp(), $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
								   12, (Oid[]) {TIMESTAMPTZOID, TEXTOID, JSONBOID, INT8OID, INT8OID, BYTEAOID,
									   INT8OID, INT8OID, INT8OID, INT8OID, TEXTOID, TEXTOID},
								   values, nulls, false, 0);
		if (rc != SPI_OK_INSERT)
			elog(ERROR, "recording the verification failed: %s", SPI_result_code_string(rc));
	}
	PG_FINALLY();
	{
		SetUserIdAndSecContext(save_userid, save_sec);
	}
	PG_END_TRY();
}

static Jsonb *
scope_document(VerifyState *vs)
{
	StringInfoData s;

	initStringInfo(&s);
	appendStringInfoString(&s, "{");
	appendStringInfo(&s, "\"since_last\": %s", vs->since_last ? "true" : "false");
	if (vs->has_from)
	{
		appendStringInfoString(&s, ", \"from_time\": ");
		escape_json(&s, timestamptz_to_str(vs->from_time));
	}
	if (vs->has_to)
	{
		appendStringInfoString(&s, ", \"to_time\": ");
		escape_json(&s, timestamptz_to_str(vs->to_time));
	}
	if (vs->organization)
	{
		appendStringInfoString(&s, ", \"organization_id\": ");
		escape_json(&s, vs->organization);
	}
	appendStringInfoString(&s, "}");
	return DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(s.data)));
}

PG_FUNCTION_INFO_V1(audit_verify_sql);

/*
 * audit_verify_sql
 *		audit.verify(from_time, to_time, organization_id, since_last,
 *		max_problems, progress_every): see the file header.
 */
Datum
audit_verify_sql(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	VerifyState vs;
	TimestampTz started = GetCurrentTimestamp();
	MemoryContext per_query;
	MemoryContext old;
	bool		scoped;
	char	   *org;
	Oid			save_userid;
	int			save_sec;

	memset(&vs, 0, sizeof(vs));
	vs.has_from = !PG_ARGISNULL(0);
	if (vs.has_from)
		vs.from_time = PG_GETARG_TIMESTAMPTZ(0);
	vs.has_to = !PG_ARGISNULL(1);
	if (vs.has_to)
		vs.to_time = PG_GETARG_TIMESTAMPTZ(1);
	if (!PG_ARGISNULL(2))
		vs.organization = text_to_cstring(PG_GETARG_TEXT_PP(2));
	vs.since_last = !PG_ARGISNULL(3) && PG_GETARG_BOOL(3);
	vs.max_problems = PG_ARGISNULL(4) ? 1000 : PG_GETARG_INT32(4);
	vs.progress_every = PG_ARGISNULL(5) ? 0 : PG_GETARG_INT32(5);

	if (vs.max_problems < 0 || vs.progress_every < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("max_problems and progress_every must not be negative"),
				 errhint("Pass 0 for progress_every to turn progress notices off.")));
	if (vs.has_from && vs.has_to && vs.from_time >= vs.to_time)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("from_time must be earlier than to_time"),
				 errhint("The range is [from_time, to_time); pass NULL for an open end.")));
	/*
	 * A caller confined to one organization verifies the chain for that
	 * organization: every link and block is checked, but only its own rows
	 * are compared and reported.  The rows are read as the extension's owner
	 * so that other organizations' rows, which the caller cannot see, are
	 * not taken for missing ones.
	 */
	org = audit_tenancy_confinement("Call audit.set_organization() first; a tenant verifies its own organization.");
	scoped = org != NULL;
	if (scoped)
	{
		if (vs.organization != NULL && strcmp(vs.organization, org) != 0)
			ereport(ERROR,
					(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
					 errmsg("permission denied to verify organization \"%s\"", vs.organization),
					 errhint("The session acts for organization \"%s\".", org)));
		if (vs.since_last)
			ereport(ERROR,
					(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
					 errmsg("since_last verifies every organization's rows"),
					 errhint("Verify your organization with audit.verify(organization_id => audit.current_organization()).")));
		vs.organization = org;
	}
	if (vs.since_last && (vs.has_from || vs.has_to || vs.organization))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("since_last verifies the whole log and cannot be combined with a time range or an organization"),
				 errhint("Call audit.verify(since_last => true) alone.")));

	InitMaterializedSRF(fcinfo, 0);
	vs.out = rsinfo->setResult;
	vs.outdesc = rsinfo->setDesc;
	per_query = rsinfo->econtext->ecxt_per_query_memory;

	vs.cxt = AllocSetContextCreate(CurrentMemoryContext, "audit verify", ALLOCSET_DEFAULT_SIZES);
	vs.row_cxt = AllocSetContextCreate(vs.cxt, "audit verify row", ALLOCSET_DEFAULT_SIZES);

	/*
	 * No partition may be dropped while the rows are read: a drop is not
	 * MVCC, so a snapshot taken before it would miss the partition's rows
	 * without seeing the retention block that removed them (reported
	 * 'missing'), or fail to open a partition listed before the drop.
	 * Dropping a partition locks audit.audit_log in ACCESS EXCLUSIVE mode:
	 * hold ACCESS SHARE on it, then take the snapshot (the next transaction
	 * id is read after it).  Retention's drop waits for the verification, up
	 * to audit_db.maintenance_lock_timeout, and the next run retries.
	 */
	LockRelationOid(audit_log_relid(false), AccessShareLock);
	PushActiveSnapshot(GetTransactionSnapshot());

	/*
	 * The partition list must include every partition the snapshot sees
	 * rows of.  Maintenance attaches a month's partition (its rows moved
	 * out of the default partition) under SHARE UPDATE EXCLUSIVE on the
	 * parent, which does not conflict with the lock above, and a lock
	 * already held does not read invalidation messages again: the parent's
	 * partition descriptor could predate an ATTACH the snapshot sees, and
	 * the moved rows would be reported missing.  ATTACH holds ACCESS
	 * EXCLUSIVE on the default partition until its invalidations are sent:
	 * locking the default partition now waits for one in flight and reads
	 * the invalidations of every one committed.
	 */
	{
		Oid			default_relid = get_default_partition_oid(audit_log_relid(false));

		if (OidIsValid(default_relid))
			LockRelationOid(default_relid, AccessShareLock);
		AcceptInvalidationMessages();
	}
	vs.now = GetCurrentTimestamp();
	vs.xid_offset = audit_chain_xid_offset();
	vs.next_xid = audit_chain_xid(ReadNextFullTransactionId());
	vs.restoring = audit_restore_pending();
	(void) per_query;

	progress_begin();
	PG_TRY();
	{
		SPI_connect();
		GetUserIdAndSecContext(&save_userid, &save_sec);
		if (scoped)
			SetUserIdAndSecContext(audit_extension_owner(),
								   save_sec | SECURITY_LOCAL_USERID_CHANGE | SECURITY_NOFORCE_RLS);
		read_state(&vs);
		prior_verification(&vs);
		check_headers(&vs);
		progress_update(&vs, "rows");
		old = MemoryContextSwitchTo(vs.cxt);
		vs.redactions = audit_redaction_check_begin(vs.cxt);
		check_rows(&vs);
		check_orphan_blocks(&vs);
		check_retention_blocks(&vs);
		check_archives(&vs);
		audit_redaction_check_finish(vs.redactions,
									 !vs.has_from && !vs.has_to && vs.organization == NULL && !vs.since_last,
									 report_redaction, &vs);
		MemoryContextSwitchTo(old);
		SetUserIdAndSecContext(save_userid, save_sec);
		if (vs.problems > vs.max_problems)
			ereport(NOTICE,
					(errmsg("audit.verify: %lld problems found, the first %d are listed",
							(long long) vs.problems, vs.max_problems)));
		if (vs.last_height == 0 && vs.check_from_height > 1)
		{
			vs.last_height = vs.check_from_height;
			if (vs.has_prior_head)
				memcpy(vs.last_hash, vs.prior_head, AUDIT_HASH_LEN);
		}
		record_run(&vs, started, scope_document(&vs));
		SPI_finish();
		PopActiveSnapshot();
	}
	PG_FINALLY();
	{
		progress_end();
	}
	PG_END_TRY();

	MemoryContextDelete(vs.cxt);
	return (Datum) 0;
}

PG_FUNCTION_INFO_V1(audit_verification_progress_sql);

/*
 * audit_verification_progress_sql
 *		audit.verification_progress(): one row per running audit.verify().
 */
Datum
audit_verification_progress_sql(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;

	InitMaterializedSRF(fcinfo, 0);
	if (progress_shared == NULL)
		return (Datum) 0;

	for (int i = 0; i < PROGRESS_SLOTS; i++)
	{
		ProgressSlot copy;
		Datum		values[7];
		bool		nulls[7] = {false, false, false, false, false, false, false};

		SpinLockAcquire(&progress_shared->mutex);
		copy = progress_shared->slots[i];
		SpinLockRelease(&progress_shared->mutex);
		if (copy.pid == 0)
			continue;
		values[0] = Int32GetDatum(copy.pid);
		values[1] = TimestampTzGetDatum(copy.started_at);
		values[2] = CStringGetTextDatum(copy.phase);
		values[3] = Int64GetDatum(copy.blocks_done);
		values[4] = Int64GetDatum(copy.blocks_total);
		values[5] = Int64GetDatum(copy.rows_done);
		values[6] = Int64GetDatum(copy.problems);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}
