/*-------------------------------------------------------------------------
 *
 * retention.h
 *	  Retention of audit rows: what audit.retention_plan() says has expired
 *	  is removed (whole partitions dropped, or expired rows deleted), and
 *	  each removal is sealed into the chain as a retention block.  Run by
 *	  the "retention" steps of maintenance.
 *
 *-------------------------------------------------------------------------
 */
#ifndef AUDIT_RETENTION_H
#define AUDIT_RETENTION_H

#include "datatype/timestamp.h"
#include "nodes/pg_list.h"

/*
 * One (retention_policy, data_classification) group of a partition: rows
 * before cutoff expired (delete), rows from cutoff to archive_cutoff are due
 * for the archive (archive).
 */
typedef struct AuditRetentionGroup
{
	char	   *retention_policy;
	char	   *data_classification;
	TimestampTz cutoff;			/* rows before it are deleted (when delete) */
	TimestampTz archive_cutoff; /* rows from cutoff to it are archived (when archive) */
	bool		delete;
	bool		archive;
	int64		rows_removed;	/* filled in by audit_retention_enforce: deleted */
	int64		rows_archived;	/* ... and moved into the archive */
} AuditRetentionGroup;

/* What retention does to one partition. */
typedef struct AuditRetentionTarget
{
	Oid			relid;
	char	   *name;
	TimestampTz from;
	TimestampTz to;
	bool		summarize;		/* its summary is missing or stale: count its rows first */
	bool		drop;			/* every row expired: drop it */
	List	   *groups;			/* AuditRetentionGroup *: delete / archive these (when not dropping) */
	int64		rows_removed;	/* filled in by audit_retention_enforce: deleted or dropped */
	int64		rows_archived;	/* ... and archived */
	const char *skipped;		/* set when a drop was left for a later run: why */
} AuditRetentionTarget;

/*
 * audit_retention_targets
 *		The partitions retention acts on as of `as_of`, from
 *		audit.retention_plan(): to summarise, to drop, or with groups to
 *		delete.  Allocated in `cxt`.  Needs SPI and an active snapshot.
 */
extern List *audit_retention_targets(TimestampTz as_of, MemoryContext cxt);

/*
 * audit_retention_summarize
 *		Recount one partition's sealed rows per policy and classification
 *		(audit.refresh_retention_summary).  Needs SPI.
 */
extern void audit_retention_summarize(const AuditRetentionTarget *target);

/*
 * audit_retention_enforce
 *		Drop the partition or delete its expired rows, as the target says,
 *		and seal the removal into the chain.  Only sealed rows are removed;
 *		a partition with unsealed rows is not dropped (error, retried by the
 *		next run).  Locks are awaited at most audit_db.maintenance_lock_timeout.
 *		Fills in the rows removed.  Needs SPI and an active snapshot.
 */
extern void audit_retention_enforce(AuditRetentionTarget *target, TimestampTz as_of);

/*
 * audit_archive_expiries
 *		Ids of the archive entries whose policy expired them as of `as_of`
 *		(audit.archive_plan()): an array in `cxt`, its length in *n.  Needs SPI.
 */
extern int64 *audit_archive_expiries(TimestampTz as_of, MemoryContext cxt, int *n);

#endif							/* AUDIT_RETENTION_H */
