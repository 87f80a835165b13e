/*-------------------------------------------------------------------------
 *
 * row_stamping.h
 *	  The BEFORE INSERT trigger of audit.audit_log that stamps every new
 *	  row with what its writer must not choose (id, transaction id, salt,
 *	  hash), after validating the enumerated fields.
 *
 * The trigger function is audit.stamp_audit_row(); it has no C callers.
 *
 *-------------------------------------------------------------------------
 */
#ifndef AUDIT_ROW_STAMPING_H
#define AUDIT_ROW_STAMPING_H

#include "fmgr.h"

extern Datum audit_stamp_row(PG_FUNCTION_ARGS);

#endif							/* AUDIT_ROW_STAMPING_H */
