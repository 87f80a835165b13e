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
 * audit_full_xid_of
 *		The 64-bit form (epoch << 32 | xid) of a recent 32-bit xid, as
 *		stored in audit_log.transaction_id.
 */
extern int64 audit_full_xid_of(TransactionId xid);

#endif							/* AUDIT_SEALING_H */
