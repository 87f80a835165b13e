/*-------------------------------------------------------------------------
 *
 * hashing.c
 *	  Hash format v1: canonical encoding of audit rows, salted commitments
 *	  to personal fields, SHA-256 leaf hashes, and the SQL functions that
 *	  expose them (audit.leaf_hash, audit.leaf_encoding,
 *	  audit.commitment_encoding).
 *
 * Encoding of one field (docs/hash-format.md has the full specification):
 *		NULL			0x00
 *		value v			0x01, uint32 big-endian byte length of v, bytes of v
 * Text is hashed as UTF-8; integers as decimal ASCII; timestamps as the
 * decimal count of microseconds since 1970-01-01 00:00:00 UTC; jsonb as the
 * text PostgreSQL's jsonb output function produces (its canonical form:
 * keys unique and ordered by length then bytes, fixed separators).
 *
 * SHA-256 comes from OpenSSL (PostgreSQL itself is built with it), through
 * one digest context per backend so that the insert path allocates nothing
 * for hashing.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <openssl/evp.h>

#include "access/htup_details.h"
#include "datatype/timestamp.h"
#include "fmgr.h"
#include "funcapi.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"
#include "utils/typcache.h"

#include "audit_db.h"
#include "hashing.h"

/* Microseconds between the Unix epoch and PostgreSQL's epoch (2000-01-01). */
#define UNIX_TO_POSTGRES_USECS \
	((int64) (POSTGRES_EPOCH_JDATE - UNIX_EPOCH_JDATE) * USECS_PER_DAY)

/* Encoding buffers are kept between rows; shrink them past this size. */
#define ENCODING_BUFFER_KEEP	(64 * 1024)

static EVP_MD_CTX *sha256_ctx = NULL;
static const EVP_MD *sha256_md = NULL;

/* Salt bytes drawn from pg_strong_random in batches. */
static uint8 salt_pool[AUDIT_SALT_LEN * 256];
static size_t salt_pool_pos = sizeof(salt_pool);
static int	salt_pool_pid = 0;

static StringInfo encoding_buffer(void);

/*
 * crypto_failure
 *		Report a failure of the crypto library.
 */
static void
crypto_failure(const char *what)
{
	ereport(ERROR,
			(errcode(ERRCODE_INTERNAL_ERROR),
			 errmsg("audit_db could not compute SHA-256: %s failed", what),
			 errhint("Check the OpenSSL installation of the server; the event was not recorded.")));
}

void
audit_sha256(const void *data, size_t len, uint8 out[AUDIT_HASH_LEN])
{
	unsigned int outlen = 0;

	if (sha256_ctx == NULL)
	{
#if OPENSSL_VERSION_NUMBER >= 0x30000000L
		sha256_md = EVP_MD_fetch(NULL, "SHA256", NULL);
#else
		sha256_md = EVP_sha256();
#endif
		if (sha256_md == NULL)
			crypto_failure("fetching SHA256");
		sha256_ctx = EVP_MD_CTX_new();
		if (sha256_ctx == NULL)
			crypto_failure("EVP_MD_CTX_new");
	}

	if (EVP_DigestInit_ex(sha256_ctx, sha256_md, NULL) != 1)
		crypto_failure("EVP_DigestInit_ex");
	if (EVP_DigestUpdate(sha256_ctx, data, len) != 1)
		crypto_failure("EVP_DigestUpdate");
	if (EVP_DigestFinal_ex(sha256_ctx, out, &outlen) != 1 || outlen != AUDIT_HASH_LEN)
		crypto_failure("EVP_DigestFinal_ex");
}

void
audit_random_salt(uint8 out[AUDIT_SALT_LEN])
{
	/* Refill when empty, and never share a pool across a fork. */
	if (salt_pool_pos + AUDIT_SALT_LEN > sizeof(salt_pool) || salt_pool_pid != MyProcPid)
	{
		if (!pg_strong_random(salt_pool, sizeof(salt_pool)))
			ereport(ERROR,
					(errcode(ERRCODE_INTERNAL_ERROR),
					 errmsg("could not generate random salt for an audit row"),
					 errhint("The server's strong random source failed; the event was not recorded.")));
		salt_pool_pos = 0;
		salt_pool_pid = MyProcPid;
	}
	memcpy(out, salt_pool + salt_pool_pos, AUDIT_SALT_LEN);
	/* Never hand out the same bytes twice. */
	memset(salt_pool + salt_pool_pos, 0, AUDIT_SALT_LEN);
	salt_pool_pos += AUDIT_SALT_LEN;
}

/*
 * encoding_buffer
 *		The backend's reusable encoding buffer, reset and ready.
 */
static StringInfo
encoding_buffer(void)
{
	static StringInfo buf = NULL;

	if (buf != NULL && buf->maxlen > ENCODING_BUFFER_KEEP)
	{
		pfree(buf->data);
		pfree(buf);
		buf = NULL;
	}
	if (buf == NULL)
	{
		MemoryContext old = MemoryContextSwitchTo(TopMemoryContext);

		buf = makeStringInfo();
		MemoryContextSwitchTo(old);
	}
	resetStringInfo(buf);
	return buf;
}

/* Field encoders --------------------------------------------------------- */

static inline void
put_null(StringInfo buf)
{
	appendStringInfoCharMacro(buf, 0x00);
}

static inline void
put_length(StringInfo buf, uint32 len)
{
	uint8		be[5];

	be[0] = 0x01;
	be[1] = (uint8) (len >> 24);
	be[2] = (uint8) (len >> 16);
	be[3] = (uint8) (len >> 8);
	be[4] = (uint8) len;
	appendBinaryStringInfo(buf, (const char *) be, sizeof(be));
}

/*
 * put_bytes
 *		A present field of len raw bytes.
 */
static inline void
put_bytes(StringInfo buf, const char *data, int len)
{
	put_length(buf, (uint32) len);
	appendBinaryStringInfo(buf, data, len);
}

/*
 * put_server_text
 *		A present field whose bytes are text in the server encoding; hashed
 *		as UTF-8.
 */
static void
put_server_text(StringInfo buf, const char *data, int len)
{
	int			enc = GetDatabaseEncoding();

	if (enc == PG_UTF8 || enc == PG_SQL_ASCII)
		put_bytes(buf, data, len);
	else
	{
		/* Returns data itself (not NUL-terminated) when nothing changes. */
		char	   *utf8 = pg_server_to_any(data, len, PG_UTF8);

		if (utf8 == data)
			put_bytes(buf, data, len);
		else
		{
			put_bytes(buf, utf8, strlen(utf8));
			pfree(utf8);
		}
	}
}

static void
put_text_datum(StringInfo buf, Datum value, bool isnull)
{
	text	   *t;

	if (isnull)
	{
		put_null(buf);
		return;
	}
	t = DatumGetTextPP(value);
	put_server_text(buf, VARDATA_ANY(t), VARSIZE_ANY_EXHDR(t));
	if ((Pointer) t != DatumGetPointer(value))
		pfree(t);
}

static void
put_int64(StringInfo buf, int64 v)
{
	char		digits[MAXINT8LEN + 1];
	int			len = pg_lltoa(v, digits);

	put_bytes(buf, digits, len);
}

static void
put_bytea_datum(StringInfo buf, Datum value, bool isnull)
{
	bytea	   *b;

	if (isnull)
	{
		put_null(buf);
		return;
	}
	b = DatumGetByteaPP(value);
	put_bytes(buf, VARDATA_ANY(b), VARSIZE_ANY_EXHDR(b));
}

/*
 * put_jsonb_datum
 *		A jsonb field in its canonical text form, written straight into the
 *		buffer after a placeholder length that is patched afterwards.
 *		Returns the text's length (0 for NULL).
 */
static int
put_jsonb_datum(StringInfo buf, Datum value, bool isnull)
{
	Jsonb	   *jb;
	int			start;
	int			len;

	if (isnull)
	{
		put_null(buf);
		return 0;
	}
	jb = DatumGetJsonbP(value);
	put_length(buf, 0);
	start = buf->len;
	JsonbToCString(buf, &jb->root, VARSIZE(jb));
	len = buf->len - start;

	if (GetDatabaseEncoding() != PG_UTF8 && GetDatabaseEncoding() != PG_SQL_ASCII)
	{
		char	   *text = pnstrdup(buf->data + start, len);
		char	   *utf8 = pg_server_to_any(text, len, PG_UTF8);

		buf->len = start;
		buf->data[start] = '\0';
		len = strlen(utf8);
		appendBinaryStringInfo(buf, utf8, len);
		if (utf8 != text)
			pfree(utf8);
		pfree(text);
	}

	buf->data[start - 4] = (char) ((uint32) len >> 24);
	buf->data[start - 3] = (char) ((uint32) len >> 16);
	buf->data[start - 2] = (char) ((uint32) len >> 8);
	buf->data[start - 1] = (char) (uint32) len;
	return len;
}

/* Row encodings ---------------------------------------------------------- */

#define VAL(c)	values[map->attno[c]]
#define NUL(c)	nulls[map->attno[c]]

void
audit_encode_commitment_input(StringInfo buf, Datum *values, bool *nulls,
							  const AuditColumnMap *map, int *details_len)
{
	int			dlen;

	if (NUL(AC_PERSONAL_DATA_SALT))
		ereport(ERROR,
				(errcode(ERRCODE_DATA_CORRUPTED),
				 errmsg("audit row has no personal-data salt"),
				 errhint("A redacted row keeps its commitment instead; use it.")));

	appendStringInfoCharMacro(buf, AUDIT_COMMIT_PREFIX);
	put_bytes(buf, AUDIT_COMMIT_DOMAIN, strlen(AUDIT_COMMIT_DOMAIN));
	put_bytea_datum(buf, VAL(AC_PERSONAL_DATA_SALT), false);
	put_text_datum(buf, VAL(AC_PRINCIPAL_ID), NUL(AC_PRINCIPAL_ID));
	put_text_datum(buf, VAL(AC_TARGET_RESOURCE_ID), NUL(AC_TARGET_RESOURCE_ID));
	put_text_datum(buf, VAL(AC_OUTCOME_DESCRIPTION), NUL(AC_OUTCOME_DESCRIPTION));
	dlen = put_jsonb_datum(buf, VAL(AC_DETAILS), NUL(AC_DETAILS));
	if (details_len)
		*details_len = dlen;
}

void
audit_encode_leaf_input(StringInfo buf, Datum *values, bool *nulls,
						const AuditColumnMap *map,
						const uint8 commitment[AUDIT_HASH_LEN])
{
	static const int text_fields[] = {
		AC_ORGANIZATION_ID, AC_ACTION, AC_TARGET_RESOURCE_TYPE, AC_STATUS,
		AC_EVENT_VERSION, AC_CORRELATION_ID, AC_DATA_CLASSIFICATION,
		AC_RETENTION_POLICY
	};

	appendStringInfoCharMacro(buf, AUDIT_LEAF_PREFIX);
	put_bytes(buf, AUDIT_LEAF_DOMAIN, strlen(AUDIT_LEAF_DOMAIN));

	if (NUL(AC_ID))
		put_null(buf);
	else
		put_int64(buf, DatumGetInt64(VAL(AC_ID)));

	if (NUL(AC_TRANSACTION_ID))
		put_null(buf);
	else
		put_int64(buf, DatumGetInt64(VAL(AC_TRANSACTION_ID)));

	if (NUL(AC_TIMESTAMP))
		put_null(buf);
	else
		put_int64(buf, DatumGetTimestampTz(VAL(AC_TIMESTAMP)) + UNIX_TO_POSTGRES_USECS);

	for (int i = 0; i < lengthof(text_fields); i++)
		put_text_datum(buf, VAL(text_fields[i]), NUL(text_fields[i]));

	if (NUL(AC_PROCESSING_LATENCY))
		put_null(buf);
	else
		put_int64(buf, DatumGetInt32(VAL(AC_PROCESSING_LATENCY)));

	put_bytes(buf, (const char *) commitment, AUDIT_HASH_LEN);
}

void
audit_row_commitment(Datum *values, bool *nulls, const AuditColumnMap *map,
					 uint8 out[AUDIT_HASH_LEN], int *details_len)
{
	if (NUL(AC_PERSONAL_DATA_SALT))
	{
		bytea	   *c;

		if (NUL(AC_PERSONAL_DATA_COMMITMENT))
			ereport(ERROR,
					(errcode(ERRCODE_DATA_CORRUPTED),
					 errmsg("audit row has neither a personal-data salt nor a commitment"),
					 errhint("The row was altered outside audit_db; audit.verify() reports such rows.")));
		c = DatumGetByteaPP(VAL(AC_PERSONAL_DATA_COMMITMENT));
		if (VARSIZE_ANY_EXHDR(c) != AUDIT_HASH_LEN)
			ereport(ERROR,
					(errcode(ERRCODE_DATA_CORRUPTED),
					 errmsg("audit row has a personal-data commitment of %d bytes, expected %d",
							(int) VARSIZE_ANY_EXHDR(c), AUDIT_HASH_LEN),
					 errhint("The row was altered outside audit_db; audit.verify() reports such rows.")));
		memcpy(out, VARDATA_ANY(c), AUDIT_HASH_LEN);
		if (details_len)
			*details_len = 0;
	}
	else
	{
		StringInfo	buf = encoding_buffer();

		audit_encode_commitment_input(buf, values, nulls, map, details_len);
		audit_sha256(buf->data, buf->len, out);
	}
}

void
audit_row_leaf_hash(Datum *values, bool *nulls, const AuditColumnMap *map,
					const uint8 commitment[AUDIT_HASH_LEN], uint8 out[AUDIT_HASH_LEN])
{
	StringInfo	buf = encoding_buffer();

	audit_encode_leaf_input(buf, values, nulls, map, commitment);
	audit_sha256(buf->data, buf->len, out);
}

#undef VAL
#undef NUL

/* SQL-callable functions --------------------------------------------------- */

/*
 * Deformed audit row passed to an SQL function as a composite value, with
 * the column map of its row type cached in fn_extra.
 */
typedef struct RowArgCache
{
	Oid			typid;
	int32		typmod;
	AuditColumnMap map;
} RowArgCache;

static void
deform_row_argument(FunctionCallInfo fcinfo, Datum **values, bool **nulls,
					const AuditColumnMap **map)
{
	HeapTupleHeader rec = PG_GETARG_HEAPTUPLEHEADER(0);
	Oid			typid = HeapTupleHeaderGetTypeId(rec);
	int32		typmod = HeapTupleHeaderGetTypMod(rec);
	TupleDesc	tupdesc = lookup_rowtype_tupdesc(typid, typmod);
	RowArgCache *cache = (RowArgCache *) fcinfo->flinfo->fn_extra;
	HeapTupleData tuple;

	if (cache == NULL || cache->typid != typid || cache->typmod != typmod)
	{
		RowArgCache built;

		audit_columns_build_map(tupdesc, format_type_be(typid), &built.map);
		built.typid = typid;
		built.typmod = typmod;
		cache = MemoryContextAlloc(fcinfo->flinfo->fn_mcxt, sizeof(RowArgCache));
		*cache = built;
		fcinfo->flinfo->fn_extra = cache;
	}

	tuple.t_len = HeapTupleHeaderGetDatumLength(rec);
	ItemPointerSetInvalid(&tuple.t_self);
	tuple.t_tableOid = InvalidOid;
	tuple.t_data = rec;

	*values = palloc(tupdesc->natts * sizeof(Datum));
	*nulls = palloc(tupdesc->natts * sizeof(bool));
	heap_deform_tuple(&tuple, tupdesc, *values, *nulls);
	ReleaseTupleDesc(tupdesc);
	*map = &cache->map;
}

static bytea *
bytes_to_bytea(const void *data, int len)
{
	bytea	   *result = palloc(VARHDRSZ + len);

	SET_VARSIZE(result, VARHDRSZ + len);
	memcpy(VARDATA(result), data, len);
	return result;
}

PG_FUNCTION_INFO_V1(audit_leaf_hash_sql);

/*
 * audit.leaf_hash(audit.audit_log) returns bytea
 *		Recompute the leaf hash of a row from its fields (never reads the
 *		stored hash).
 */
Datum
audit_leaf_hash_sql(PG_FUNCTION_ARGS)
{
	Datum	   *values;
	bool	   *nulls;
	const AuditColumnMap *map;
	uint8		commitment[AUDIT_HASH_LEN];
	uint8		leaf[AUDIT_HASH_LEN];

	deform_row_argument(fcinfo, &values, &nulls, &map);
	audit_row_commitment(values, nulls, map, commitment, NULL);
	audit_row_leaf_hash(values, nulls, map, commitment, leaf);
	PG_RETURN_BYTEA_P(bytes_to_bytea(leaf, AUDIT_HASH_LEN));
}

PG_FUNCTION_INFO_V1(audit_leaf_encoding_sql);

/*
 * audit.leaf_encoding(audit.audit_log) returns bytea
 *		The exact bytes hashed into the row's leaf (for documentation,
 *		debugging and independent implementations).
 */
Datum
audit_leaf_encoding_sql(PG_FUNCTION_ARGS)
{
	Datum	   *values;
	bool	   *nulls;
	const AuditColumnMap *map;
	uint8		commitment[AUDIT_HASH_LEN];
	StringInfo	buf;

	deform_row_argument(fcinfo, &values, &nulls, &map);
	audit_row_commitment(values, nulls, map, commitment, NULL);
	buf = encoding_buffer();
	audit_encode_leaf_input(buf, values, nulls, map, commitment);
	PG_RETURN_BYTEA_P(bytes_to_bytea(buf->data, buf->len));
}

PG_FUNCTION_INFO_V1(audit_commitment_encoding_sql);

/*
 * audit.commitment_encoding(audit.audit_log) returns bytea
 *		The exact bytes hashed into the row's personal-data commitment, or
 *		NULL for a redacted row (whose salt is gone).
 */
Datum
audit_commitment_encoding_sql(PG_FUNCTION_ARGS)
{
	Datum	   *values;
	bool	   *nulls;
	const AuditColumnMap *map;
	StringInfo	buf;

	deform_row_argument(fcinfo, &values, &nulls, &map);
	if (nulls[map->attno[AC_PERSONAL_DATA_SALT]])
		PG_RETURN_NULL();
	buf = encoding_buffer();
	audit_encode_commitment_input(buf, values, nulls, map, NULL);
	PG_RETURN_BYTEA_P(bytes_to_bytea(buf->data, buf->len));
}
