/*-------------------------------------------------------------------------
 *
 * audit_log_columns.h
 *	  The columns of audit.audit_log as C code sees them, and a per-backend
 *	  cache that maps them to attribute numbers of any relation with that
 *	  shape (the partitioned table, each partition, the row type).
 *
 * Partitions may have a different physical column order than their parent
 * (ATTACH PARTITION of a table created separately, dropped columns), so C
 * code never assumes attribute numbers: it asks this cache.
 *
 *-------------------------------------------------------------------------
 */
#ifndef AUDIT_LOG_COLUMNS_H
#define AUDIT_LOG_COLUMNS_H

#include "access/tupdesc.h"
#include "utils/relcache.h"

typedef enum AuditColumn
{
	AC_ID = 0,
	AC_TIMESTAMP,
	AC_PRINCIPAL_ID,
	AC_ORGANIZATION_ID,
	AC_ACTION,
	AC_TARGET_RESOURCE_TYPE,
	AC_TARGET_RESOURCE_ID,
	AC_STATUS,
	AC_OUTCOME_DESCRIPTION,
	AC_HASH,
	AC_HASH_ALGORITHM,
	AC_EVENT_VERSION,
	AC_CORRELATION_ID,
	AC_DATA_CLASSIFICATION,
	AC_RETENTION_POLICY,
	AC_PROCESSING_LATENCY,
	AC_ARCHIVED_AT,
	AC_DETAILS,
	AC_TRANSACTION_ID,
	AC_PERSONAL_DATA_SALT,
	AC_PERSONAL_DATA_COMMITMENT,
	AC_NUM_COLUMNS
} AuditColumn;

/* Column names, indexed by AuditColumn. */
extern const char *const audit_column_names[AC_NUM_COLUMNS];

/*
 * Attribute-number map of one relation: attno[c] is the 0-based index into
 * the relation's TupleDesc of column c.  seq_relid is the OID of the
 * sequence that numbers events.
 */
typedef struct AuditColumnMap
{
	Oid			relid;
	Oid			seq_relid;
	int			attno[AC_NUM_COLUMNS];
} AuditColumnMap;

/*
 * audit_log_columns_init
 *		Register the relcache invalidation callback that keeps the cache
 *		right.  Called once from _PG_init.
 */
extern void audit_log_columns_init(void);

/*
 * audit_columns_for_relation
 *		The (cached) map of rel, built on first use.  Raises an error naming
 *		the missing column when rel does not have the audit_log shape.
 */
extern const AuditColumnMap *audit_columns_for_relation(Relation rel);

/*
 * audit_columns_build_map
 *		Fill map from tupdesc (no caching); used for row types.
 */
extern void audit_columns_build_map(TupleDesc tupdesc, const char *what,
									AuditColumnMap *map);

#endif							/* AUDIT_LOG_COLUMNS_H */
