/*-------------------------------------------------------------------------
 *
 * row_stamping.h
 *	  The BEFORE INSERT trigger of audit.audit_log that stamps every new
 *	  row with what its writer must not choose (id, transaction id, salt,
 *	  hash).
 *
 * SQL entry points: the trigger function audit.stamp_audit_row() and
 * audit.last_event_id().
 *
 *-------------------------------------------------------------------------
 */
#ifndef AUDIT_ROW_STAMPING_H
#define AUDIT_ROW_STAMPING_H

#include "fmgr.h"

#include "audit_log_columns.h"

extern Datum audit_stamp_row(PG_FUNCTION_ARGS);

/*
 * audit_stamp_values
 *		What the trigger does to a new row, on its values in place: check it
 *		(raises 23502, 23514, 42501, 22008 or 54000 with a hint), then set
 *		id, transaction_id, hash_algorithm, salt, commitment, archived_at
 *		and hash.  map is the column map of the row's relation (a partition
 *		of audit.audit_log).  New values are allocated in the current memory
 *		context.  The caller decides that the row is not one loaded verbatim
 *		(audit_loading_verbatim()), which keeps its stamp.
 */
extern void audit_stamp_values(const AuditColumnMap *map, Datum *values, bool *nulls);
extern Datum audit_last_event_id(PG_FUNCTION_ARGS);

/*
 * audit_last_stamped_id
 *		Id of the last row this backend stamped, 0 if none.  The row may
 *		belong to a statement that later failed: read it right after the
 *		INSERT that produced it.
 */
extern int64 audit_last_stamped_id(void);

/*
 * audit_rows_stamped
 *		How many rows this backend has stamped so far: a counter that tells
 *		whether an INSERT went through the trigger even when ids repeat (a
 *		re-created extension starts its sequence again).
 */
extern uint64 audit_rows_stamped(void);

#endif							/* AUDIT_ROW_STAMPING_H */
