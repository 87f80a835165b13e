/*-------------------------------------------------------------------------
 *
 * partitions.c
 *	  Reading the partitions of audit.audit_log and their bounds from the
 *	  catalog (pg_class.relpartbound through the partition descriptor).
 *
 * Blocks of the chain record the bounds of the partition their rows live
 * in, and retention decides from them; both read them here.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/table.h"
#include "catalog/namespace.h"
#include "catalog/pg_class.h"
#include "nodes/parsenodes.h"
#include "partitioning/partdesc.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/syscache.h"

#include "audit_db.h"
#include "partitions.h"

Oid
audit_log_relid(bool missing_ok)
{
	Oid			nsp = get_namespace_oid(AUDIT_SCHEMA_NAME, missing_ok);
	Oid			relid = OidIsValid(nsp) ? get_relname_relid(AUDIT_LOG_TABLE_NAME, nsp) : InvalidOid;

	if (!OidIsValid(relid) && !missing_ok)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("table %s.%s does not exist", AUDIT_SCHEMA_NAME, AUDIT_LOG_TABLE_NAME),
				 errhint("Run CREATE EXTENSION audit_db in this database.")));
	return relid;
}

/*
 * range_bound_value
 *		The timestamp of the first datum of a range bound, or false when it
 *		is MINVALUE / MAXVALUE.
 */
static bool
range_bound_value(List *datums, TimestampTz *value)
{
	PartitionRangeDatum *d;

	if (datums == NIL)
		return false;
	d = linitial_node(PartitionRangeDatum, datums);
	if (d->kind != PARTITION_RANGE_DATUM_VALUE || d->value == NULL || !IsA(d->value, Const) ||
		castNode(Const, d->value)->constisnull)
		return false;
	*value = DatumGetTimestampTz(castNode(Const, d->value)->constvalue);
	return !TIMESTAMP_NOT_FINITE(*value);
}

void
audit_partition_bounds(Oid relid, AuditPartition *part)
{
	HeapTuple	tuple;
	Datum		datum;
	bool		isnull;
	PartitionBoundSpec *spec;

	part->relid = relid;
	part->unbounded = true;
	part->is_default = false;
	part->from = part->to = 0;

	tuple = SearchSysCache1(RELOID, ObjectIdGetDatum(relid));
	if (!HeapTupleIsValid(tuple))
		elog(ERROR, "cache lookup failed for relation %u", relid);
	datum = SysCacheGetAttr(RELOID, tuple, Anum_pg_class_relpartbound, &isnull);
	if (!isnull)
	{
		spec = (PartitionBoundSpec *) stringToNode(TextDatumGetCString(datum));
		part->is_default = IsA(spec, PartitionBoundSpec) && spec->is_default;
		if (IsA(spec, PartitionBoundSpec) && !spec->is_default &&
			spec->strategy == PARTITION_STRATEGY_RANGE &&
			range_bound_value(spec->lowerdatums, &part->from) &&
			range_bound_value(spec->upperdatums, &part->to))
			part->unbounded = false;
	}
	ReleaseSysCache(tuple);
}

static int
partition_cmp(const void *a, const void *b)
{
	const AuditPartition *pa = (const AuditPartition *) a;
	const AuditPartition *pb = (const AuditPartition *) b;

	if (pa->unbounded != pb->unbounded)
		return pa->unbounded ? 1 : -1;
	if (!pa->unbounded && pa->from != pb->from)
		return pa->from < pb->from ? -1 : 1;
	return pa->relid < pb->relid ? -1 : (pa->relid > pb->relid ? 1 : 0);
}

AuditPartition *
audit_log_partitions(int *n)
{
	Relation	parent = table_open(audit_log_relid(false), AccessShareLock);
	PartitionDesc desc = RelationGetPartitionDesc(parent, true);
	AuditPartition *parts = palloc(sizeof(AuditPartition) * Max(desc->nparts, 1));
	int			count = 0;

	for (int i = 0; i < desc->nparts; i++)
	{
		if (!desc->is_leaf[i])
			continue;
		audit_partition_bounds(desc->oids[i], &parts[count++]);
	}
	table_close(parent, AccessShareLock);

	qsort(parts, count, sizeof(AuditPartition), partition_cmp);
	*n = count;
	return parts;
}

bool
audit_partition_same_bounds(const AuditPartition *a, const AuditPartition *b)
{
	if (a->unbounded || b->unbounded)
		return a->unbounded == b->unbounded;
	return a->from == b->from && a->to == b->to;
}
