/*-------------------------------------------------------------------------
 *
 * partition_manager.h
 *	  Creating the monthly partitions of audit.audit_log ahead of time and
 *	  draining the default partition into them (audit.create_partitions(),
 *	  the premake and default-partition steps of maintenance).
 *
 *-------------------------------------------------------------------------
 */
#ifndef AUDIT_PARTITION_MANAGER_H
#define AUDIT_PARTITION_MANAGER_H

#include "datatype/timestamp.h"

/* audit_db.premake_months: months created ahead of the current one. */
extern int	audit_premake_months;

/* audit_db.maintenance_lock_timeout (ms): longest wait for a lock in DDL. */
extern int	audit_maintenance_lock_timeout_ms;

/* What creating one month's partition did. */
typedef struct AuditMonthPartition
{
	Oid			relid;
	TimestampTz from;			/* first instant of the month (UTC) */
	TimestampTz to;				/* first instant of the next month */
	bool		created;		/* false: it existed already */
	int64		rows_moved;		/* rows moved in from the default partition */
	int64		rows_relocated; /* of those, rows already sealed */
} AuditMonthPartition;

/*
 * audit_month_bounds
 *		The UTC calendar month holding `at`, as [*from, *to).  Errors out for
 *		infinite timestamps or months out of range.
 */
extern void audit_month_bounds(TimestampTz at, TimestampTz *from, TimestampTz *to);

/*
 * audit_create_month_partition
 *		Make sure the month holding `at` has its partition of
 *		audit.audit_log.  A new partition is created as a plain table, filled
 *		with the month's rows moved out of the default partition, and then
 *		attached, so inserts into other months never wait (ATTACH takes
 *		SHARE UPDATE EXCLUSIVE on the parent).  Locks are awaited at most
 *		audit_db.maintenance_lock_timeout.  Rows moved that were already
 *		sealed are recorded in audit.audit_log_relocation, where
 *		audit.verify() looks for them.  Needs SPI to be connected.
 */
extern AuditMonthPartition audit_create_month_partition(TimestampTz at);

#endif							/* AUDIT_PARTITION_MANAGER_H */
