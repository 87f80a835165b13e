/*-------------------------------------------------------------------------
 *
 * sealing.h
 *	  The sealer: appends blocks of committed audit rows to the chain
 *	  (audit.seal(), and the background worker's seal step).
 *
 *-------------------------------------------------------------------------
 */
#ifndef AUDIT_SEALING_H
#define AUDIT_SEALING_H

/* What one seal run added. */
typedef struct AuditSealResult
{
	int			blocks;
	int64		rows;
	int64		height;			/* chain height after the run */
} AuditSealResult;

#include "hashing.h"

/* Block kinds (audit.audit_chain_block.kind; docs/hash-format.md, "Blocks"). */
#define AUDIT_BLOCK_ROWS				"rows"	/* rows sealed */
#define AUDIT_BLOCK_RETENTION_ROWS		"retention_rows"	/* rows removed by retention */
#define AUDIT_BLOCK_RETENTION_PARTITION "retention_partition"	/* a partition dropped */
#define AUDIT_BLOCK_ARCHIVE_ROWS		"archive_rows"	/* rows moved into the archive */
#define AUDIT_BLOCK_RETENTION_ARCHIVE	"retention_archive"	/* archived rows expired */

/* The chain head, as audit.audit_chain_state holds it. */
typedef struct AuditChainHead
{
	int64		height;
	uint8		head_hash[AUDIT_HASH_LEN];
	int64		rows_total;		/* rows ever sealed */
	int64		horizon_xid;	/* every committed row below it is sealed */
} AuditChainHead;

/* audit_db.seal_block_rows: most rows in one block. */
extern int	audit_seal_block_rows;

/*
 * audit_seal_run
 *		Seal every committed row whose transaction id lies in
 *		[previous horizon, xmin of the active snapshot).  Needs a
 *		transaction with an active snapshot, on a primary; serialises with
 *		other seal runs on the chain state row.  Returns what it added.
 */
extern AuditSealResult audit_seal_run(void);

/*
 * audit_lock_chain_head
 *		Lock the chain state row for the rest of the transaction and read
 *		the head.  Needs SPI to be connected.
 */
extern void audit_lock_chain_head(AuditChainHead *head);

/*
 * audit_move_chain_head
 *		Store head's height and hash as the chain head (blocks that seal no
 *		new rows: retention, archival).  Needs SPI and the head locked.
 */
extern void audit_move_chain_head(const AuditChainHead *head);

/*
 * audit_append_block
 *		Append a block whose header fields (all but merkle_root) are in *h,
 *		holding n row ids and their leaves; computes the Merkle root and the
 *		header hash (into header_hash).  The caller holds the chain head and
 *		updates audit.audit_chain_state afterwards.  Needs SPI.
 */
extern void audit_append_block(AuditBlockHeader *h, const Datum *ids, const uint8 *leaves, int n,
							   uint8 header_hash[AUDIT_HASH_LEN]);

/*
 * audit_full_xid_of
 *		The 64-bit form (epoch << 32 | xid) of a recent 32-bit xid of this
 *		cluster; audit_log.transaction_id stores it plus the chain's
 *		xid_offset (restore.h).
 */
extern int64 audit_full_xid_of(TransactionId xid);

#endif							/* AUDIT_SEALING_H */
