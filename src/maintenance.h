/*-------------------------------------------------------------------------
 *
 * maintenance.h
 *	  One maintenance run of an audit_db database: premake partitions,
 *	  drain the default partition, catch up sealing; recorded in
 *	  audit.maintenance_run.  Called by CALL audit.run_maintenance() and by
 *	  the database worker.
 *
 *-------------------------------------------------------------------------
 */
#ifndef AUDIT_MAINTENANCE_H
#define AUDIT_MAINTENANCE_H

#include "datatype/timestamp.h"

/*
 * Advisory lock key of a maintenance run (held at session level for the
 * whole run); DROP EXTENSION takes it at transaction level to wait a run out.
 */
#define AUDIT_MAINTENANCE_LOCK_KEY	INT64CONST(0x6175646974646244)

/* audit_db.maintenance_interval (s): worker runs maintenance this often; 0 = never. */
extern int	audit_maintenance_interval_s;

/* audit_db.maintenance_history_days: records of runs older than this are removed; 0 = never. */
extern int	audit_maintenance_history_days;

/* audit_db.error_log_days: errors older than this leave audit.error_log; 0 = never. */
extern int	audit_error_log_days;

/* How a run ended. */
typedef enum AuditMaintenanceOutcome
{
	MAINTENANCE_DONE,			/* every step succeeded */
	MAINTENANCE_ERRORS,			/* ran; some steps failed (recorded) */
	MAINTENANCE_BUSY,			/* another run holds the lock: nothing done */
	MAINTENANCE_STANDBY			/* hot standby: nothing to do */
} AuditMaintenanceOutcome;

/*
 * audit_run_maintenance
 *		Run every maintenance step as of `as_of`.  SPI must be connected; with
 *		can_commit (a non-atomic SPI connection) each step commits on its own,
 *		so no lock outlives its step.  A step that fails is rolled back,
 *		recorded with its error and a WARNING, and the next step runs.
 *		`via` says who ran it ('worker' or 'call').  Returns how it ended and
 *		the run's id in *run_id (0 when nothing was recorded).
 */
extern AuditMaintenanceOutcome audit_run_maintenance(TimestampTz as_of, bool can_commit,
													 const char *via, int64 *run_id);

#endif							/* AUDIT_MAINTENANCE_H */
