/*-------------------------------------------------------------------------
 *
 * row_stamping.c
 *	  BEFORE INSERT row trigger of audit.audit_log (and, by cloning, of
 *	  every partition): check the row (required fields present, enumerated
 *	  columns holding one of their values, latency not negative, event time
 *	  in range: the table has no CHECK constraints, see
 *	  src/sql/20_audit_log.sql), then overwrite the fields that only
 *	  audit_db may set:
 *
 *		id							next value of audit.audit_log_id_seq
 *		transaction_id				64-bit id of the inserting top-level
 *									transaction, plus the chain's offset
 *									after a restore (the sealer orders rows
 *									by it; restore.c)
 *		hash_algorithm				'SHA-256'
 *		personal_data_salt			16 fresh random bytes
 *		personal_data_commitment	NULL (set only by redaction)
 *		archived_at					NULL (set only by archival)
 *		hash						leaf hash of hash format v1
 *
 * Under session_replication_role = replica (pg_restore, logical replication
 * apply) a row that arrives stamped is kept as it is; while a restore is
 * pending (restore.c) other rows are refused.
 *
 * The path takes no lock and reads no other row: the cost of an audit row
 * over a plain one is this function, two SHA-256 computations over a few
 * hundred bytes and a wider tuple.  Rows are linked into the chain later,
 * by the sealer, once their transactions have finished.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "access/xact.h"
#include "commands/sequence.h"
#include "commands/trigger.h"
#include "executor/tuptable.h"
#include "utils/builtins.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/timestamp.h"

#include "audit_db.h"
#include "audit_log_columns.h"
#include "change_tracking.h"
#include "hashing.h"
#include "immutability.h"
#include "restore.h"
#include "row_stamping.h"
#include "tenancy.h"
#include "vocabulary.h"

/*
 * Accepted event times: years 1 to 9999 UTC, PostgreSQL microseconds since
 * 2000-01-01.  Keeps every timestamp representable in the hash format's
 * signed 64-bit Unix microseconds.
 */
#define AUDIT_MIN_TIMESTAMP		INT64CONST(-63082281600000000)	/* 0001-01-01 */
#define AUDIT_END_TIMESTAMP		INT64CONST(252455616000000000)	/* 10000-01-01 */

/*
 * Columns an event must have.  NOT NULL constraints back them up; checking
 * here gives a hint and keeps the row (maybe personal data) out of the
 * error's DETAIL and so out of the server log.
 */
static const AuditColumn required_columns[] = {
	AC_TIMESTAMP, AC_ACTION, AC_STATUS, AC_EVENT_VERSION,
	AC_DATA_CLASSIFICATION, AC_RETENTION_POLICY
};

/* Id of the last row this backend stamped (0: none yet). */
static int64 last_stamped_id = 0;
static uint64 rows_stamped = 0;	/* rows this backend stamped, ever */

/*
 * hash_algorithm_datum
 *		The text 'SHA-256', built once per backend.
 */
static Datum
hash_algorithm_datum(void)
{
	static Datum algorithm = (Datum) 0;

	if (algorithm == (Datum) 0)
	{
		MemoryContext old = MemoryContextSwitchTo(TopMemoryContext);

		algorithm = CStringGetTextDatum(AUDIT_HASH_ALGORITHM);
		MemoryContextSwitchTo(old);
	}
	return algorithm;
}

void
audit_stamp_values(const AuditColumnMap *map, Datum *values, bool *nulls)
{
	int64		id;
	uint8		salt[AUDIT_SALT_LEN];
	uint8		commitment[AUDIT_HASH_LEN];
	uint8		leaf[AUDIT_HASH_LEN];
	int			details_len = 0;

	audit_refuse_while_restoring("log an audit event");

#define SET(c, v)	(values[map->attno[c]] = (v), nulls[map->attno[c]] = false)
#define SETNULL(c)	(values[map->attno[c]] = (Datum) 0, nulls[map->attno[c]] = true)

	/* Validate what the writer chose. */
	for (int i = 0; i < (int) lengthof(required_columns); i++)
	{
		if (nulls[map->attno[required_columns[i]]])
			ereport(ERROR,
					(errcode(ERRCODE_NOT_NULL_VIOLATION),
					 errmsg("audit event has no %s", audit_column_names[required_columns[i]]),
					 errhint("Give %s a value, or leave it out of the column list to get its default.",
							 audit_column_names[required_columns[i]])));
	}
	/* audit_db's own administrative events cannot be forged (tenancy.c). */
	{
		text	   *action = DatumGetTextPP(values[map->attno[AC_ACTION]]);

		if (audit_action_is_reserved(VARDATA_ANY(action), VARSIZE_ANY_EXHDR(action)))
			ereport(ERROR,
					(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
					 errmsg("audit event action \"%s\" is reserved for audit_db's own events",
							text_to_cstring(action)),
					 errhint("Actions starting with organization_access., organization_role., organization_role_assignment., "
							 "tenant_isolation., gdpr., change_tracking. or audit_db. record what audit_db did; choose another name.")));
		/*
		 * Nor the change events of a tracked table (rows that maintenance
		 * moves out of the default partition are stamped again: let them).
		 */
		if (!audit_privileged_change_active() &&
			audit_action_is_tracked_change(VARDATA_ANY(action), VARSIZE_ANY_EXHDR(action)))
			ereport(ERROR,
					(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
					 errmsg("audit event action \"%s\" is reserved for the change tracking of its table",
							text_to_cstring(action)),
					 errhint("The changes of a tracked table are logged by its trigger (audit.track_table()); "
							 "choose another action name.")));
	}
	/*
	 * The table's checks (src/sql/20_audit_log.sql says why they live here):
	 * the enumerated columns hold one of their values, latencies are not
	 * negative.  hash_algorithm is overwritten below, but naming another
	 * algorithm is refused rather than silently replaced.
	 */
	audit_check_enumerated("status", values[map->attno[AC_STATUS]],
						   audit_status_values, audit_status_count);
	audit_check_enumerated("data_classification", values[map->attno[AC_DATA_CLASSIFICATION]],
						   audit_classification_values, audit_classification_count);
	if (!nulls[map->attno[AC_HASH_ALGORITHM]])
		audit_check_enumerated("hash_algorithm", values[map->attno[AC_HASH_ALGORITHM]],
							   audit_hash_algorithm_values, audit_hash_algorithm_count);
	if (!nulls[map->attno[AC_PROCESSING_LATENCY]] &&
		DatumGetInt32(values[map->attno[AC_PROCESSING_LATENCY]]) < 0)
		ereport(ERROR,
				(errcode(ERRCODE_CHECK_VIOLATION),
				 errmsg("audit event processing_latency is negative (%d ms)",
						DatumGetInt32(values[map->attno[AC_PROCESSING_LATENCY]])),
				 errhint("processing_latency is the duration of the audited operation in milliseconds: 0 or more, or NULL when unknown.")));
	if (!nulls[map->attno[AC_TIMESTAMP]])
	{
		TimestampTz ts = DatumGetTimestampTz(values[map->attno[AC_TIMESTAMP]]);

		if (TIMESTAMP_NOT_FINITE(ts) || ts < AUDIT_MIN_TIMESTAMP || ts >= AUDIT_END_TIMESTAMP)
			ereport(ERROR,
					(errcode(ERRCODE_DATETIME_VALUE_OUT_OF_RANGE),
					 errmsg("audit event timestamp is out of range"),
					 errhint("Events must happen between 0001-01-01 and 9999-12-31 (UTC); omit the timestamp to use now().")));
	}

	/* Overwrite what only audit_db may set. */
	id = nextval_internal(map->seq_relid, false);
	SET(AC_ID, Int64GetDatum(id));
	SET(AC_TRANSACTION_ID,
		Int64GetDatum(audit_chain_xid(GetTopFullTransactionId())));
	SET(AC_HASH_ALGORITHM, hash_algorithm_datum());
	SETNULL(AC_ARCHIVED_AT);
	SETNULL(AC_PERSONAL_DATA_COMMITMENT);
	audit_random_salt(salt);
	SET(AC_PERSONAL_DATA_SALT, PointerGetDatum(audit_bytea_from_bytes(salt, AUDIT_SALT_LEN)));

	audit_row_commitment(values, nulls, map, commitment, &details_len);
	if (details_len > audit_max_details_bytes)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("audit event details are %d bytes, more than audit_db.max_details_bytes (%d)",
						details_len, audit_max_details_bytes),
				 errhint("Keep large payloads elsewhere and reference them from details, or ask a superuser to raise audit_db.max_details_bytes.")));

	audit_row_leaf_hash(values, nulls, map, commitment, leaf);
	SET(AC_HASH, PointerGetDatum(audit_bytea_from_bytes(leaf, AUDIT_HASH_LEN)));

#undef SET
#undef SETNULL

	/* Only a row that passed every check here counts as the last event. */
	last_stamped_id = id;
	rows_stamped++;
}

PG_FUNCTION_INFO_V1(audit_stamp_row);

/*
 * audit_stamp_row
 *		Trigger function audit.stamp_audit_row(): BEFORE INSERT FOR EACH ROW
 *		only.  Returns the stamped row; raises on invalid input, so a bad
 *		event is refused whole and nothing is half-written.
 */
Datum
audit_stamp_row(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;
	Relation	rel;
	TupleDesc	tupdesc;
	AuditColumnMap colmap;
	const AuditColumnMap *map = &colmap;
	HeapTuple	oldtuple;
	HeapTuple	newtuple;
	Datum	   *values;
	bool	   *nulls;

	if (!CALLED_AS_TRIGGER(fcinfo) ||
		!TRIGGER_FIRED_BEFORE(trigdata->tg_event) ||
		!TRIGGER_FIRED_FOR_ROW(trigdata->tg_event) ||
		!TRIGGER_FIRED_BY_INSERT(trigdata->tg_event))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("audit.stamp_audit_row() must be fired BEFORE INSERT FOR EACH ROW"),
				 errhint("It is installed on audit.audit_log by the extension; do not attach it elsewhere.")));

	rel = trigdata->tg_relation;
	tupdesc = RelationGetDescr(rel);
	/* A copy: the cached entry may go away at any invalidation below. */
	colmap = *audit_columns_for_relation(rel);
	oldtuple = trigdata->tg_trigtuple;

	/*
	 * A row loaded verbatim (pg_restore or logical replication apply, under
	 * session_replication_role = replica, which only a superuser can set)
	 * that arrives stamped keeps its stamp: its hash is already in the chain
	 * or waits to be sealed.  A row without one is stamped as any other.
	 */
	if (audit_loading_verbatim() &&
		!heap_attisnull(oldtuple, map->attno[AC_ID] + 1, tupdesc) &&
		!heap_attisnull(oldtuple, map->attno[AC_HASH] + 1, tupdesc) &&
		!heap_attisnull(oldtuple, map->attno[AC_TRANSACTION_ID] + 1, tupdesc))
		return PointerGetDatum(oldtuple);

	/*
	 * The trigger slot already holds the row's values (the INSERT built
	 * them); copying them is cheaper than deforming tg_trigtuple again.
	 */
	values = palloc(tupdesc->natts * sizeof(Datum));
	nulls = palloc(tupdesc->natts * sizeof(bool));
	if (trigdata->tg_trigslot != NULL)
	{
		slot_getallattrs(trigdata->tg_trigslot);
		memcpy(values, trigdata->tg_trigslot->tts_values, tupdesc->natts * sizeof(Datum));
		memcpy(nulls, trigdata->tg_trigslot->tts_isnull, tupdesc->natts * sizeof(bool));
	}
	else
		heap_deform_tuple(oldtuple, tupdesc, values, nulls);

	audit_stamp_values(map, values, nulls);

	newtuple = heap_form_tuple(tupdesc, values, nulls);
	newtuple->t_self = oldtuple->t_self;
	newtuple->t_tableOid = oldtuple->t_tableOid;
	return PointerGetDatum(newtuple);
}

uint64
audit_rows_stamped(void)
{
	return rows_stamped;
}

int64
audit_last_stamped_id(void)
{
	return last_stamped_id;
}

PG_FUNCTION_INFO_V1(audit_last_event_id);

/*
 * audit_last_event_id
 *		audit.last_event_id() returns bigint: the id of the last audit event
 *		this session wrote (like lastval() for sequences), or NULL before the
 *		first.  Lets a writer without SELECT on audit.audit_log learn the id
 *		of a plain INSERT.
 */
Datum
audit_last_event_id(PG_FUNCTION_ARGS)
{
	if (last_stamped_id == 0)
		PG_RETURN_NULL();
	PG_RETURN_INT64(last_stamped_id);
}
