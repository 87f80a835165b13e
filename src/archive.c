/*-------------------------------------------------------------------------
 *
 * archive.c
 *	  The archive of audit rows that retention moved out of the log.
 *
 * An entry holds the rows of one archive_rows block (at most
 * audit_db.seal_block_rows rows of one partition and one (retention_policy,
 * data_classification) group) as JSON lines in id order, one
 * audit.export_row() document per row: the chain's export format, which
 * reproduces every hashed field, so audit.verify() and the offline verifier
 * can recompute each archived row's leaf.  The text is compressed with
 * PostgreSQL's pglz (stored as it is when it does not shrink).
 *
 * Entries are append-only (the extension's guard triggers); only the
 * retrieval counters change, through the privileged-change permission, when
 * audit.archive_lines() reads an entry.  An entry whose policy expired is
 * removed by maintenance, and the removal is sealed as a retention_archive
 * block repeating the entry's ids and leaves.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "common/pg_lzcompress.h"
#include "executor/spi.h"
#include "funcapi.h"
#include "access/tupdesc.h"
#include "utils/tuplestore.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/timestamp.h"

#include "archive.h"
#include "audit_db.h"
#include "immutability.h"
#include "sealing.h"
#include "organization_roles.h"
#include "tenancy.h"

/* Run one statement through SPI, or fail saying which. */
static void
archive_sql(const char *sql, int nargs, Oid *types, Datum *values, int expected)
{
	int			rc = SPI_execute_with_args(sql, nargs, types, values, NULL, false, 0);

	if (rc != expected)
		elog(ERROR, "audit_db archive: \"%s\" failed: %s", sql, SPI_result_code_string(rc));
}

void
audit_archive_store(int64 block_height, TimestampTz from, TimestampTz to,
					const char *retention_policy, const char *data_classification,
					const AuditArchivedRow *rows, int n, const uint8 root[AUDIT_HASH_LEN])
{
	StringInfoData text;
	char	   *compressed;
	int32		clen;
	bytea	   *data;
	const char *compression = "pglz";
	TimestampTz min_ts = rows[0].ts;
	TimestampTz max_ts = rows[0].ts;

	initStringInfo(&text);
	for (int i = 0; i < n; i++)
	{
		if (i > 0)
			appendStringInfoChar(&text, '\n');
		appendStringInfoString(&text, rows[i].line);
		min_ts = Min(min_ts, rows[i].ts);
		max_ts = Max(max_ts, rows[i].ts);
	}

	compressed = palloc(PGLZ_MAX_OUTPUT(text.len));
	clen = pglz_compress(text.data, text.len, compressed, PGLZ_strategy_always);
	if (clen < 0)
	{
		clen = text.len;
		memcpy(compressed, text.data, text.len);
		compression = "none";
	}
	data = (bytea *) palloc(VARHDRSZ + clen);
	SET_VARSIZE(data, VARHDRSZ + clen);
	memcpy(VARDATA(data), compressed, clen);

	archive_sql("INSERT INTO audit.archive_storage (block_height, partition_from, partition_to, retention_policy,"
				" data_classification, row_count, first_id, last_id, min_timestamp, max_timestamp, merkle_root,"
				" compression, raw_bytes, data)"
				" VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
				14, (Oid[]) {INT8OID, TIMESTAMPTZOID, TIMESTAMPTZOID, TEXTOID, TEXTOID, INT4OID, INT8OID,
					INT8OID, TIMESTAMPTZOID, TIMESTAMPTZOID, BYTEAOID, TEXTOID, INT8OID, BYTEAOID},
				(Datum[]) {Int64GetDatum(block_height), TimestampTzGetDatum(from), TimestampTzGetDatum(to),
					CStringGetTextDatum(retention_policy), CStringGetTextDatum(data_classification),
					Int32GetDatum(n), Int64GetDatum(rows[0].id), Int64GetDatum(rows[n - 1].id),
					TimestampTzGetDatum(min_ts), TimestampTzGetDatum(max_ts),
					PointerGetDatum(audit_bytea_from_bytes(root, AUDIT_HASH_LEN)),
					CStringGetTextDatum(compression), Int64GetDatum(text.len), PointerGetDatum(data)},
				SPI_OK_INSERT);
	pfree(compressed);
	pfree(text.data);
	pfree(data);
}

int64
audit_archive_expire(int64 archive_id)
{
	AuditChainHead head;
	AuditBlockHeader h;
	uint8		header_hash[AUDIT_HASH_LEN];
	HeapTuple	t;
	TupleDesc	d;
	bool		isnull;
	ArrayType  *ids;
	bytea	   *leaves;
	int			n;
	Datum	   *id_datums;

	/* The chain head first: the move of the same rows cannot be half-sealed. */
	audit_lock_chain_head(&head);
	archive_sql("SELECT b.partition_from, b.partition_to, b.row_ids, b.leaves"
				" FROM audit.archive_storage a JOIN audit.audit_chain_block b ON b.height = a.block_height"
				" WHERE a.archive_id = $1 AND b.kind = 'archive_rows'",
				1, (Oid[]) {INT8OID}, (Datum[]) {Int64GetDatum(archive_id)}, SPI_OK_SELECT);
	if (SPI_processed == 0)
		return 0;
	t = SPI_tuptable->vals[0];
	d = SPI_tuptable->tupdesc;

	memset(&h, 0, sizeof(h));
	h.partition_from = DatumGetTimestampTz(SPI_getbinval(t, d, 1, &isnull));
	h.partition_to = DatumGetTimestampTz(SPI_getbinval(t, d, 2, &isnull));
	ids = DatumGetArrayTypePCopy(SPI_getbinval(t, d, 3, &isnull));
	leaves = DatumGetByteaPCopy(SPI_getbinval(t, d, 4, &isnull));
	deconstruct_array(ids, INT8OID, sizeof(int64), FLOAT8PASSBYVAL, TYPALIGN_DOUBLE, &id_datums, NULL, &n);
	if (n == 0 || VARSIZE_ANY_EXHDR(leaves) != (Size) n * AUDIT_HASH_LEN)
		ereport(ERROR,
				(errcode(ERRCODE_DATA_CORRUPTED),
				 errmsg("the chain block of archive entry %lld does not hold its rows' ids and leaves",
						(long long) archive_id),
				 errhint("Run audit.verify(): the block was altered.")));

	audit_begin_privileged_change("archive expiry");
	PG_TRY();
	{
		archive_sql("DELETE FROM audit.archive_storage WHERE archive_id = $1", 1, (Oid[]) {INT8OID},
					(Datum[]) {Int64GetDatum(archive_id)}, SPI_OK_DELETE);
	}
	PG_FINALLY();
	{
		audit_end_privileged_change();
	}
	PG_END_TRY();

	h.height = head.height + 1;
	memcpy(h.prev_hash, head.head_hash, AUDIT_HASH_LEN);
	h.kind = AUDIT_BLOCK_RETENTION_ARCHIVE;
	h.xid_from = h.xid_to = head.horizon_xid;
	h.row_count = n;
	h.rows_total = head.rows_total;
	h.sealed_at = GetCurrentTimestamp();
	audit_append_block(&h, id_datums, (const uint8 *) VARDATA_ANY(leaves), n, header_hash);
	head.height = h.height;
	memcpy(head.head_hash, header_hash, AUDIT_HASH_LEN);
	audit_move_chain_head(&head);
	return n;
}

/* One more retrieval of an entry (its counters are the only thing that changes). */
static void
count_retrieval_of(int64 archive_id)
{
	audit_begin_privileged_change("archive retrieval count");
	PG_TRY();
	{
		archive_sql("UPDATE audit.archive_storage SET retrieval_count = retrieval_count + 1,"
					" last_retrieved_at = clock_timestamp() WHERE archive_id = $1",
					1, (Oid[]) {INT8OID}, (Datum[]) {Int64GetDatum(archive_id)}, SPI_OK_UPDATE);
	}
	PG_FINALLY();
	{
		audit_end_privileged_change();
	}
	PG_END_TRY();
}

/* Whether an archived row (export format) belongs to organization org. */
static bool
line_of_organization(Jsonb *doc, const char *org)
{
	JsonbValue *v = getKeyJsonValueFromContainer(&doc->root, "organization_id", strlen("organization_id"), NULL);

	return v != NULL && v->type == jbvString && v->val.string.len == (int) strlen(org) &&
		memcmp(v->val.string.val, org, v->val.string.len) == 0;
}

PG_FUNCTION_INFO_V1(audit_archive_lines_sql);

/*
 * audit_archive_lines_sql
 *		audit.archive_lines(archive_id, count_retrieval) -> setof jsonb: the
 *		entry's rows in id order, as stored.  Counts a retrieval when asked
 *		(and the transaction can write).  Errors with P0002 for an unknown
 *		entry and 22P02 if the stored data do not decompress.
 *
 *		The entry is read as the extension's owner (callers get no access to
 *		the stored data itself).  A caller confined to one organization
 *		(tenancy.c) gets only that organization's rows, and only with 'read'
 *		on audit.audit_log (as the log's policy asks); 42501 when it acts for
 *		none.
 */
Datum
audit_archive_lines_sql(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	int64		archive_id = PG_GETARG_INT64(0);
	bool		count_retrieval = PG_GETARG_BOOL(1);
	bool		isnull;
	char	   *compression;
	int64		raw_bytes;
	bytea	   *data;
	char	   *raw;
	char	   *line;
	char	   *end;
	MemoryContext per_query = rsinfo->econtext->ecxt_per_query_memory;
	MemoryContext old;

	TupleDesc	tupdesc;
	Tuplestorestate *store;
	char	   *volatile scope_org;
	bool		permitted;
	Oid			save_userid;
	int			save_sec;

	/* A set of one scalar column: build the descriptor by hand. */
	if (rsinfo == NULL || !IsA(rsinfo, ReturnSetInfo) || (rsinfo->allowedModes & SFRM_Materialize) == 0)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("audit.archive_lines() must be called where a set is accepted"),
				 errhint("Call it in FROM: SELECT * FROM audit.archive_lines(archive_id).")));
	old = MemoryContextSwitchTo(per_query);
	tupdesc = CreateTemplateTupleDesc(1);
	TupleDescInitEntry(tupdesc, (AttrNumber) 1, "archive_lines", JSONBOID, -1, 0);
	store = tuplestore_begin_heap(true, false, work_mem);
	rsinfo->returnMode = SFRM_Materialize;
	rsinfo->setResult = store;
	rsinfo->setDesc = tupdesc;
	MemoryContextSwitchTo(old);

	scope_org = audit_tenancy_confinement("Call audit.set_organization() first; archived rows are shown per organization.");
	/* Like the log's own policy: no rows without 'read' on audit.audit_log. */
	permitted = scope_org == NULL ||
		audit_session_has_permission(AUDIT_SCHEMA_NAME "." AUDIT_LOG_TABLE_NAME, "read");

	GetUserIdAndSecContext(&save_userid, &save_sec);
	SPI_connect();
	SetUserIdAndSecContext(audit_extension_owner(),
						   save_sec | SECURITY_LOCAL_USERID_CHANGE | SECURITY_NOFORCE_RLS);
	PG_TRY();
	{
	/*
	 * Without counting, read with the caller's snapshot (read-only SPI): an
	 * export or a verification sees the entries its own snapshot sees, even
	 * if maintenance expires one meanwhile.
	 */
	if (SPI_execute_with_args("SELECT compression, raw_bytes, data FROM audit.archive_storage WHERE archive_id = $1",
							  1, (Oid[]) {INT8OID}, (Datum[]) {Int64GetDatum(archive_id)}, NULL,
							  !count_retrieval, 0) != SPI_OK_SELECT)
		elog(ERROR, "reading archive entry %lld failed", (long long) archive_id);
	if (SPI_processed == 0)
		ereport(ERROR,
				(errcode(ERRCODE_NO_DATA_FOUND),
				 errmsg("no archive entry with id %lld", (long long) archive_id),
				 errhint("See audit.archive_storage; an entry whose policy expired is removed.")));
	old = MemoryContextSwitchTo(per_query);
	compression = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
	raw_bytes = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull));
	data = DatumGetByteaPCopy(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 3, &isnull));
	if (raw_bytes < 0 || raw_bytes > MaxAllocSize - 1)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_TEXT_REPRESENTATION),
				 errmsg("archive entry %lld claims %lld bytes of rows", (long long) archive_id, (long long) raw_bytes),
				 errhint("The entry was altered; audit.verify() reports it.")));
	raw = palloc(raw_bytes + 1);
	if (strcmp(compression, "pglz") == 0)
	{
		if (pglz_decompress(VARDATA_ANY(data), VARSIZE_ANY_EXHDR(data), raw, raw_bytes, true) != raw_bytes)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_TEXT_REPRESENTATION),
					 errmsg("archive entry %lld does not decompress", (long long) archive_id),
					 errhint("The entry was altered; audit.verify() reports it.")));
	}
	else if (VARSIZE_ANY_EXHDR(data) == raw_bytes)
		memcpy(raw, VARDATA_ANY(data), raw_bytes);
	else
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_TEXT_REPRESENTATION),
				 errmsg("archive entry %lld has %d bytes of rows, not %lld",
						(long long) archive_id, (int) VARSIZE_ANY_EXHDR(data), (long long) raw_bytes),
				 errhint("The entry was altered; audit.verify() reports it.")));
	raw[raw_bytes] = '\0';

	for (line = raw; line < raw + raw_bytes; line = end + 1)
	{
		Datum		value;
		bool		null = false;

		end = strchr(line, '\n');
		if (end == NULL)
			end = raw + raw_bytes;
		*end = '\0';
		value = DirectFunctionCall1(jsonb_in, CStringGetDatum(line));
		if (scope_org != NULL && (!permitted || !line_of_organization(DatumGetJsonbP(value), scope_org)))
			continue;
		tuplestore_putvalues(store, tupdesc, &value, &null);
	}
	MemoryContextSwitchTo(old);

	if (count_retrieval && !RecoveryInProgress() && !XactReadOnly)
		count_retrieval_of(archive_id);
	}
	PG_FINALLY();
	{
		SetUserIdAndSecContext(save_userid, save_sec);
	}
	PG_END_TRY();
	SPI_finish();
	return (Datum) 0;
}
