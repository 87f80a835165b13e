/*-------------------------------------------------------------------------
 *
 * partitions.h
 *	  The partitions of audit.audit_log as C code sees them: their real
 *	  bounds, read from pg_class.relpartbound (never from their names).
 *
 *-------------------------------------------------------------------------
 */
#ifndef AUDIT_PARTITIONS_H
#define AUDIT_PARTITIONS_H

#include "datatype/timestamp.h"

/*
 * One leaf partition.  unbounded is true for the default partition and for
 * a partition with a MINVALUE or MAXVALUE bound; from/to are then unset.
 */
typedef struct AuditPartition
{
	Oid			relid;
	bool		unbounded;
	bool		is_default;		/* the DEFAULT partition (then unbounded too) */
	TimestampTz from;			/* inclusive */
	TimestampTz to;				/* exclusive */
} AuditPartition;

/*
 * audit_log_relid
 *		OID of audit.audit_log; errors out (or returns InvalidOid when
 *		missing_ok) if the extension's table is not there.
 */
extern Oid	audit_log_relid(bool missing_ok);

/*
 * audit_partition_bounds
 *		Fill part with the bounds of partition relid from its relpartbound.
 */
extern void audit_partition_bounds(Oid relid, AuditPartition *part);

/*
 * audit_log_partitions
 *		Every leaf partition of audit.audit_log, bounded ones in order of
 *		their lower bound, unbounded ones last.  Returns a palloc'd array and
 *		its length in *n.
 */
extern AuditPartition *audit_log_partitions(int *n);

/*
 * audit_partition_same_bounds
 *		Do two partitions have the same bounds (both unbounded counts)?
 */
extern bool audit_partition_same_bounds(const AuditPartition *a, const AuditPartition *b);

#endif							/* AUDIT_PARTITIONS_H */
