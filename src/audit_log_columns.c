/*-------------------------------------------------------------------------
 *
 * audit_log_columns.c
 *	  Maps the columns of audit.audit_log to attribute numbers of a given
 *	  relation, with a per-backend cache invalidated through the relcache.
 *
 * The insert trigger runs once per audit row, so looking columns up by name
 * on every call would cost more than the hash itself.  The cache is keyed
 * by relation OID; an invalidation of that relation (ALTER TABLE, DROP,
 * DROP EXTENSION) or of the numbering sequence removes the entry, and a
 * full relcache reset empties the cache.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/namespace.h"
#include "utils/builtins.h"
#include "utils/hsearch.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"

#include "audit_db.h"
#include "audit_log_columns.h"

const char *const audit_column_names[AC_NUM_COLUMNS] = {
	[AC_ID] = "id",
	[AC_TIMESTAMP] = "timestamp",
	[AC_PRINCIPAL_ID] = "principal_id",
	[AC_ORGANIZATION_ID] = "organization_id",
	[AC_ACTION] = "action",
	[AC_TARGET_RESOURCE_TYPE] = "target_resource_type",
	[AC_TARGET_RESOURCE_ID] = "target_resource_id",
	[AC_STATUS] = "status",
	[AC_OUTCOME_DESCRIPTION] = "outcome_description",
	[AC_HASH] = "hash",
	[AC_HASH_ALGORITHM] = "hash_algorithm",
	[AC_EVENT_VERSION] = "event_version",
	[AC_CORRELATION_ID] = "correlation_id",
	[AC_DATA_CLASSIFICATION] = "data_classification",
	[AC_RETENTION_POLICY] = "retention_policy",
	[AC_PROCESSING_LATENCY] = "processing_latency",
	[AC_ARCHIVED_AT] = "archived_at",
	[AC_DETAILS] = "details",
	[AC_TRANSACTION_ID] = "transaction_id",
	[AC_PERSONAL_DATA_SALT] = "personal_data_salt",
	[AC_PERSONAL_DATA_COMMITMENT] = "personal_data_commitment",
};

static HTAB *column_map_cache = NULL;

/*
 * invalidate_column_maps
 *		Relcache callback: forget the entry of relid, any entry whose
 *		sequence is relid, or everything when relid is InvalidOid.
 */
static void
invalidate_column_maps(Datum arg, Oid relid)
{
	HASH_SEQ_STATUS status;
	AuditColumnMap *entry;

	if (column_map_cache == NULL)
		return;

	hash_seq_init(&status, column_map_cache);
	while ((entry = hash_seq_search(&status)) != NULL)
	{
		if (relid == InvalidOid || entry->relid == relid || entry->seq_relid == relid)
			hash_search(column_map_cache, &entry->relid, HASH_REMOVE, NULL);
	}
}

void
audit_log_columns_init(void)
{
	CacheRegisterRelcacheCallback(invalidate_column_maps, (Datum) 0);
}

void
audit_columns_build_map(TupleDesc tupdesc, const char *what, AuditColumnMap *map)
{
	for (int c = 0; c < AC_NUM_COLUMNS; c++)
		map->attno[c] = -1;

	for (int i = 0; i < tupdesc->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(tupdesc, i);

		if (att->attisdropped)
			continue;
		for (int c = 0; c < AC_NUM_COLUMNS; c++)
		{
			if (strcmp(NameStr(att->attname), audit_column_names[c]) == 0)
			{
				map->attno[c] = i;
				break;
			}
		}
	}

	for (int c = 0; c < AC_NUM_COLUMNS; c++)
	{
		if (map->attno[c] < 0)
			ereport(ERROR,
					(errcode(ERRCODE_UNDEFINED_COLUMN),
					 errmsg("%s has no column \"%s\" of audit.audit_log",
							what, audit_column_names[c]),
					 errhint("The audit_db row functions and triggers only apply to audit.audit_log and its partitions.")));
	}
}

const AuditColumnMap *
audit_columns_for_relation(Relation rel)
{
	Oid			relid = RelationGetRelid(rel);
	AuditColumnMap *entry;
	AuditColumnMap built;
	bool		found;
	Oid			nsp;

	if (column_map_cache == NULL)
	{
		HASHCTL		ctl;

		ctl.keysize = sizeof(Oid);
		ctl.entrysize = sizeof(AuditColumnMap);
		ctl.hcxt = TopMemoryContext;
		column_map_cache = hash_create("audit_db column maps", 16, &ctl,
									   HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	}

	entry = hash_search(column_map_cache, &relid, HASH_FIND, NULL);
	if (entry != NULL)
		return entry;

	/* Build outside the table, so an error leaves no half-made entry. */
	audit_columns_build_map(RelationGetDescr(rel),
							quote_identifier(RelationGetRelationName(rel)),
							&built);
	nsp = get_namespace_oid(AUDIT_SCHEMA_NAME, false);
	built.seq_relid = get_relname_relid(AUDIT_LOG_ID_SEQUENCE, nsp);
	if (!OidIsValid(built.seq_relid))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("sequence %s.%s does not exist",
						AUDIT_SCHEMA_NAME, AUDIT_LOG_ID_SEQUENCE),
				 errhint("Reinstall the extension: DROP EXTENSION audit_db; CREATE EXTENSION audit_db.")));
	built.relid = relid;

	entry = hash_search(column_map_cache, &relid, HASH_ENTER, &found);
	*entry = built;
	return entry;
}
