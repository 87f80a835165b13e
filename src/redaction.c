/*-------------------------------------------------------------------------
 *
 * redaction.c
 *	  Rewriting a data subject's personal data in audit.audit_log
 *	  (pseudonymization, erasure) without breaking the hash chain, and the
 *	  checks audit.verify() makes of rows rewritten that way.
 *
 * Finding the subject: a row is about or by the subject when one of its
 * four personal fields (principal_id, target_resource_id,
 * outcome_description, and the keys and string values of details)
 * contains one of the subject's identifiers (the original id, its
 * pseudonyms) as a whole token: the bytes before and after the match are
 * not letters, digits, '_' or non-ASCII, unless the identifier itself
 * begins or ends with such a character.  So 'u-1' matches "u-1" and
 * "seen by u-1," but not "u-12".  Matching is exact (case-sensitive).
 *
 * Rewriting one row, under the privileged-change permission of
 * immutability.h:
 *	1. the row's stored hash must still be its leaf (a row changed behind
 *	   audit_db's back is never laundered by a redaction); a row redacted
 *	   before must still hold the fields its latest attestation names;
 *	2. every occurrence of an identifier is replaced by the replacement
 *	   (a pseudonym, or an erasure token); an erased row that no exemption
 *	   keeps loses its outcome_description and details altogether;
 *	3. the commitment is stored and the salt destroyed, so the leaf stays
 *	   what it was and nothing left confirms a guess of the old values;
 *	4. the new fields' digest goes to audit.redacted_row under the request
 *	   id; the caller seals the Merkle root of the request's digests into
 *	   the request's event.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/hsearch.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"

#include "audit_db.h"
#include "hashing.h"
#include "immutability.h"
#include "redaction.h"
#include "tenancy.h"

/* Events of audit_db's own GDPR requests: kept (only their identifiers replaced). */
#define GDPR_ACTION_PREFIX		"gdpr."

/* The identifiers of one subject and what replaces them. */
typedef struct TermSet
{
	int			n;
	const char **term;			/* longest first */
	int		   *len;
	const char *replacement;
	int			replacement_len;
} TermSet;

/* ---------------------------------------------------------------------
 * Matching and replacing identifiers
 * ---------------------------------------------------------------------
 */

/* Bytes that continue a token: ASCII letters, digits, '_', any non-ASCII byte. */
static inline bool
is_token_byte(unsigned char c)
{
	return c >= 0x80 || c == '_' || (c >= '0' && c <= '9') ||
		(c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

/*
 * term_at
 *		Whether term (tlen bytes) occurs in s (len bytes) at i as a whole
 *		token.
 */
static inline bool
term_at(const char *s, int len, int i, const char *term, int tlen)
{
	if (i + tlen > len || memcmp(s + i, term, tlen) != 0)
		return false;
	if (is_token_byte((unsigned char) term[0]) && i > 0 &&
		is_token_byte((unsigned char) s[i - 1]))
		return false;
	if (is_token_byte((unsigned char) term[tlen - 1]) && i + tlen < len &&
		is_token_byte((unsigned char) s[i + tlen]))
		return false;
	return true;
}

/* Whether s (len bytes) contains one of the terms as a whole token. */
static bool
mentions(const char *s, int len, const TermSet *ts)
{
	for (int t = 0; t < ts->n; t++)
	{
		const char *term = ts->term[t];
		int			tlen = ts->len[t];

		for (int i = 0; i + tlen <= len; i++)
		{
			const char *hit = memchr(s + i, term[0], len - i - tlen + 1);

			if (hit == NULL)
				break;
			i = hit - s;
			if (term_at(s, len, i, term, tlen))
				return true;
		}
	}
	return false;
}

/*
 * replace_terms
 *		s (len bytes) with every whole-token occurrence of each term replaced
 *		by the replacement, longest term first; NULL when nothing matched.
 *		*outlen receives the new length.
 */
static char *
replace_terms(const char *s, int len, const TermSet *ts, int *outlen)
{
	const char *cur = s;
	int			curlen = len;
	bool		changed = false;

	for (int t = 0; t < ts->n; t++)
	{
		StringInfoData out;
		int			start = 0;
		bool		hit = false;

		for (int i = 0; i + ts->len[t] <= curlen; i++)
		{
			if (term_at(cur, curlen, i, ts->term[t], ts->len[t]))
			{
				if (!hit)
					initStringInfo(&out);
				hit = true;
				appendBinaryStringInfo(&out, cur + start, i - start);
				appendBinaryStringInfo(&out, ts->replacement, ts->replacement_len);
				i += ts->len[t] - 1;
				start = i + 1;
			}
		}
		if (hit)
		{
			appendBinaryStringInfo(&out, cur + start, curlen - start);
			cur = out.data;
			curlen = out.len;
			changed = true;
		}
	}
	*outlen = curlen;
	return changed ? (char *) cur : NULL;
}

/* A text datum with the terms replaced, or (Datum) 0 when unchanged. */
static Datum
replace_in_text(Datum value, const TermSet *ts)
{
	text	   *t = DatumGetTextPP(value);
	int			newlen;
	char	   *s = replace_terms(VARDATA_ANY(t), VARSIZE_ANY_EXHDR(t), ts, &newlen);

	return s ? PointerGetDatum(cstring_to_text_with_len(s, newlen)) : (Datum) 0;
}

static bool
text_mentions(Datum value, const TermSet *ts)
{
	text	   *t = DatumGetTextPP(value);

	return mentions(VARDATA_ANY(t), VARSIZE_ANY_EXHDR(t), ts);
}

/* Whether a key or string value of the jsonb mentions a term. */
static bool
jsonb_mentions(Jsonb *jb, const TermSet *ts)
{
	JsonbIterator *it = JsonbIteratorInit(&jb->root);
	JsonbValue	v;
	JsonbIteratorToken tok;

	while ((tok = JsonbIteratorNext(&it, &v, false)) != WJB_DONE)
	{
		if ((tok == WJB_KEY || tok == WJB_VALUE || tok == WJB_ELEM) &&
			v.type == jbvString && mentions(v.val.string.val, v.val.string.len, ts))
			return true;
	}
	return false;
}

/*
 * replace_in_jsonb
 *		The jsonb with the terms replaced in every key and string value, or
 *		NULL when nothing matched.  Keys that become equal keep the last
 *		value, as jsonb input does.
 */
static Jsonb *
replace_in_jsonb(Jsonb *jb, const TermSet *ts)
{
	JsonbIterator *it;
	JsonbParseState *state = NULL;
	JsonbValue	v;
	JsonbValue *res = NULL;
	JsonbIteratorToken tok;
	bool		changed = false;

	if (!jsonb_mentions(jb, ts))
		return NULL;
	it = JsonbIteratorInit(&jb->root);
	while ((tok = JsonbIteratorNext(&it, &v, false)) != WJB_DONE)
	{
		if (tok == WJB_KEY || tok == WJB_VALUE || tok == WJB_ELEM)
		{
			if (v.type == jbvString)
			{
				int			newlen;
				char	   *s = replace_terms(v.val.string.val, v.val.string.len, ts, &newlen);

				if (s != NULL)
				{
					v.val.string.val = s;
					v.val.string.len = newlen;
					changed = true;
				}
			}
			res = pushJsonbValue(&state, tok, &v);
		}
		else if (tok == WJB_BEGIN_ARRAY && v.val.array.rawScalar)
			res = pushJsonbValue(&state, tok, &v);
		else
			res = pushJsonbValue(&state, tok, NULL);
	}
	return changed ? JsonbValueToJsonb(res) : NULL;
}

/* Longest first, so that an identifier inside a longer one is not cut. */
static int
term_length_cmp(const void *a, const void *b)
{
	int			la = strlen(*(const char *const *) a);
	int			lb = strlen(*(const char *const *) b);

	return lb - la;
}

/*
 * build_terms
 *		The identifiers of a text[] (no NULL, no empty string, at least one),
 *		longest first, with the replacement.
 */
static TermSet *
build_terms(ArrayType *arr, const char *replacement)
{
	Datum	   *elems;
	bool	   *enulls;
	int			n;
	TermSet    *ts = palloc0(sizeof(TermSet));

	deconstruct_array(arr, TEXTOID, -1, false, TYPALIGN_INT, &elems, &enulls, &n);
	if (n == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("no identifier of the data subject given"),
				 errhint("Pass the subject's principal id.")));
	ts->term = palloc(n * sizeof(char *));
	ts->len = palloc(n * sizeof(int));
	for (int i = 0; i < n; i++)
	{
		if (enulls[i])
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("an identifier of the data subject is NULL"),
					 errhint("Pass the subject's principal id.")));
		ts->term[i] = TextDatumGetCString(elems[i]);
		if (ts->term[i][0] == '\0')
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("an identifier of the data subject is empty"),
					 errhint("Pass the subject's principal id.")));
	}
	qsort(ts->term, n, sizeof(char *), term_length_cmp);
	for (int i = 0; i < n; i++)
		ts->len[i] = strlen(ts->term[i]);
	ts->n = n;
	ts->replacement = replacement;
	ts->replacement_len = replacement ? strlen(replacement) : 0;
	return ts;
}

/*
 * row_mentions
 *		Whether one of the four personal fields of the row mentions a term.
 */
static bool
row_mentions(Datum *values, bool *nulls, const AuditColumnMap *map, const TermSet *ts)
{
	static const AuditColumn text_fields[] = {
		AC_PRINCIPAL_ID, AC_TARGET_RESOURCE_ID, AC_OUTCOME_DESCRIPTION
	};

	for (int i = 0; i < lengthof(text_fields); i++)
	{
		int			a = map->attno[text_fields[i]];

		if (!nulls[a] && text_mentions(values[a], ts))
			return true;
	}
	return !nulls[map->attno[AC_DETAILS]] &&
		jsonb_mentions(DatumGetJsonbP(values[map->attno[AC_DETAILS]]), ts);
}

PG_FUNCTION_INFO_V1(audit_mentions_subject_sql);

/*
 * audit.mentions_subject(r audit.audit_log, terms text[]) returns boolean
 *		Whether the row is about or by the subject with these identifiers
 *		(whole-token match in principal_id, target_resource_id,
 *		outcome_description, details' keys and strings).  STRICT.
 */
Datum
audit_mentions_subject_sql(PG_FUNCTION_ARGS)
{
	Datum	   *values;
	bool	   *nulls;
	const AuditColumnMap *map;
	TermSet    *ts = build_terms(PG_GETARG_ARRAYTYPE_P(1), NULL);

	audit_deform_row_argument(fcinfo, &values, &nulls, &map);
	PG_RETURN_BOOL(row_mentions(values, nulls, map, ts));
}

/* ---------------------------------------------------------------------
 * Rewriting the subject's rows
 * ---------------------------------------------------------------------
 */

typedef struct PartitionPlan
{
	Oid			relid;
	SPIPlanPtr	plan;
} PartitionPlan;

typedef struct RedactState
{
	int64		request_id;
	TermSet    *terms;
	bool		erase;
	bool		keep_exempt;
	int			nexempt;
	char	  **exempt_classification;	/* NULL: any */
	char	  **exempt_policy;	/* NULL: any */
	AuditColumnMap map;
	bool		have_map;
	List	   *plans;			/* PartitionPlan *, by partition */
	SPIPlanPtr	attest_plan;
	SPIPlanPtr	latest_plan;
	MemoryContext cxt;			/* lives for the call */
	int64		changed;
	int64		erased;
	int64		kept;
} RedactState;

/* Run an SPI statement that must succeed with the expected code. */
static void
run_sql(const char *sql, int nargs, Oid *types, Datum *values, const char *nulls, int expected)
{
	int			rc = SPI_execute_with_args(sql, nargs, types, values, nulls, false, 0);

	if (rc != expected)
		elog(ERROR, "audit_db redaction: \"%s\" failed: %s", sql, SPI_result_code_string(rc));
}

/* The erasure exemptions: classifications / policies whose rows are kept. */
static void
load_exemptions(RedactState *st)
{
	MemoryContext old;

	run_sql("SELECT data_classification::text, retention_policy::text FROM audit.erasure_exemption",
			0, NULL, NULL, NULL, SPI_OK_SELECT);
	old = MemoryContextSwitchTo(st->cxt);
	st->nexempt = SPI_processed;
	st->exempt_classification = palloc0(sizeof(char *) * Max(1, SPI_processed));
	st->exempt_policy = palloc0(sizeof(char *) * Max(1, SPI_processed));
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		st->exempt_classification[i] = SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1);
		st->exempt_policy[i] = SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 2);
	}
	MemoryContextSwitchTo(old);
	SPI_freetuptable(SPI_tuptable);
}

/* Compare a text datum with a C string. */
static bool
text_equals(Datum value, const char *s)
{
	text	   *t = DatumGetTextPP(value);

	return VARSIZE_ANY_EXHDR(t) == strlen(s) && memcmp(VARDATA_ANY(t), s, strlen(s)) == 0;
}

/* Whether erasure must keep the row (pseudonymized) rather than erase it. */
static bool
row_is_kept(RedactState *st, Datum *values, bool *nulls)
{
	const AuditColumnMap *map = &st->map;
	text	   *action = DatumGetTextPP(values[map->attno[AC_ACTION]]);

	if (!st->erase)
		return true;
	if (VARSIZE_ANY_EXHDR(action) >= strlen(GDPR_ACTION_PREFIX) &&
		memcmp(VARDATA_ANY(action), GDPR_ACTION_PREFIX, strlen(GDPR_ACTION_PREFIX)) == 0)
		return true;			/* the record of earlier GDPR requests */
	if (!st->keep_exempt)
		return false;
	for (int i = 0; i < st->nexempt; i++)
	{
		if (st->exempt_classification[i] != NULL &&
			!text_equals(values[map->attno[AC_DATA_CLASSIFICATION]], st->exempt_classification[i]))
			continue;
		if (st->exempt_policy[i] != NULL &&
			!text_equals(values[map->attno[AC_RETENTION_POLICY]], st->exempt_policy[i]))
			continue;
		return true;
	}
	return false;
}

/* The UPDATE of one partition, prepared once per call. */
static SPIPlanPtr
partition_plan(RedactState *st, Oid relid)
{
	ListCell   *lc;
	PartitionPlan *pp;
	char	   *sql;
	char	   *nsp;
	char	   *rel;
	MemoryContext old;

	foreach(lc, st->plans)
	{
		pp = (PartitionPlan *) lfirst(lc);
		if (pp->relid == relid)
			return pp->plan;
	}
	nsp = get_namespace_name(get_rel_namespace(relid));
	rel = get_rel_name(relid);
	if (nsp == NULL || rel == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
				 errmsg("a partition of audit.audit_log was dropped during the redaction"),
				 errhint("Retry the request; nothing was changed.")));
	sql = psprintf("UPDATE ONLY %s SET principal_id = $1, target_resource_id = $2,"
				   " outcome_description = $3, details = $4, personal_data_salt = NULL,"
				   " personal_data_commitment = $5 WHERE ctid = $6",
				   quote_qualified_identifier(nsp, rel));
	old = MemoryContextSwitchTo(st->cxt);
	pp = palloc(sizeof(PartitionPlan));
	pp->relid = relid;
	pp->plan = SPI_prepare(sql, 6, (Oid[]) {TEXTOID, TEXTOID, TEXTOID, JSONBOID, BYTEAOID, TIDOID});
	if (pp->plan == NULL)
		elog(ERROR, "audit_db redaction: preparing \"%s\" failed: %s", sql,
			 SPI_result_code_string(SPI_result));
	st->plans = lappend(st->plans, pp);
	MemoryContextSwitchTo(old);
	return pp->plan;
}

/*
 * check_integrity
 *		Refuse to rewrite a row that was changed behind audit_db's back: its
 *		stored hash must be its leaf, and a row redacted before must hold
 *		what its latest attestation says.  Returns the row's commitment.
 */
static void
check_integrity(RedactState *st, int64 id, Datum *values, bool *nulls,
				uint8 commitment[AUDIT_HASH_LEN])
{
	const AuditColumnMap *map = &st->map;
	uint8		leaf[AUDIT_HASH_LEN];
	uint8		stored[AUDIT_HASH_LEN];

	if (nulls[map->attno[AC_PERSONAL_DATA_SALT]])
	{
		uint8		digest[AUDIT_HASH_LEN];
		uint8		attested[AUDIT_HASH_LEN];
		Datum		arg = Int64GetDatum(id);
		bool		isnull = true;
		Datum		latest = (Datum) 0;

		if (SPI_execute_plan(st->latest_plan, &arg, NULL, true, 1) != SPI_OK_SELECT)
			elog(ERROR, "audit_db redaction: reading audit.redacted_row failed");
		if (SPI_processed == 1)
			latest = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
		audit_redacted_fields_digest(values, nulls, map, digest);
		if (!audit_bytea_is_hash(latest, isnull, attested) || memcmp(attested, digest, AUDIT_HASH_LEN) != 0)
			ereport(ERROR,
					(errcode(ERRCODE_DATA_CORRUPTED),
					 errmsg("audit row %lld was redacted, but its personal fields differ from its redaction record",
							(long long) id),
					 errdetail("The row was changed outside audit_db; redacting it again would hide that."),
					 errhint("Run audit.verify() and investigate; nothing was changed.")));
		SPI_freetuptable(SPI_tuptable);
	}
	audit_row_commitment(values, nulls, map, commitment, NULL);
	audit_row_leaf_hash(values, nulls, map, commitment, leaf);
	if (!audit_bytea_is_hash(values[map->attno[AC_HASH]], nulls[map->attno[AC_HASH]], stored) ||
		memcmp(stored, leaf, AUDIT_HASH_LEN) != 0)
		ereport(ERROR,
				(errcode(ERRCODE_DATA_CORRUPTED),
				 errmsg("audit row %lld does not match its hash", (long long) id),
				 errdetail("The row was changed outside audit_db; redacting it would hide that."),
				 errhint("Run audit.verify() and investigate; nothing was changed.")));
}

/*
 * redact_row
 *		Steps 1-4 of the file header for one row of the cursor (partition
 *		oid, ctid, then the audit_log columns).
 */
static void
redact_row(RedactState *st, HeapTuple tuple, TupleDesc desc)
{
	const AuditColumnMap *map = &st->map;
	int			natts = desc->natts;
	Datum	   *values = palloc(natts * sizeof(Datum));
	bool	   *nulls = palloc(natts * sizeof(bool));
	Datum	   *nv = palloc(natts * sizeof(Datum));
	bool	   *nn = palloc(natts * sizeof(bool));
	uint8		commitment[AUDIT_HASH_LEN];
	uint8		digest[AUDIT_HASH_LEN];
	static const AuditColumn token_fields[] = {AC_PRINCIPAL_ID, AC_TARGET_RESOURCE_ID};
	bool		kept;
	bool		changed = false;
	int64		id;
	Datum		args[6];
	char		argnulls[6];
	int			rc;

	heap_deform_tuple(tuple, desc, values, nulls);
	if (nulls[0] || nulls[1] || nulls[map->attno[AC_ID]])
		elog(ERROR, "audit_db redaction: a subject row without location or id");
	id = DatumGetInt64(values[map->attno[AC_ID]]);
	memcpy(nv, values, natts * sizeof(Datum));
	memcpy(nn, nulls, natts * sizeof(bool));

	check_integrity(st, id, values, nulls, commitment);
	kept = row_is_kept(st, values, nulls);

	for (int i = 0; i < lengthof(token_fields); i++)
	{
		int			a = map->attno[token_fields[i]];
		Datum		r;

		if (!nulls[a] && (r = replace_in_text(values[a], st->terms)) != (Datum) 0)
		{
			nv[a] = r;
			changed = true;
		}
	}
	if (!kept)
	{
		changed |= !nulls[map->attno[AC_OUTCOME_DESCRIPTION]] || !nulls[map->attno[AC_DETAILS]];
		nn[map->attno[AC_OUTCOME_DESCRIPTION]] = true;
		nn[map->attno[AC_DETAILS]] = true;
	}
	else
	{
		int			o = map->attno[AC_OUTCOME_DESCRIPTION];
		int			d = map->attno[AC_DETAILS];
		Datum		r;
		Jsonb	   *j;

		if (!nulls[o] && (r = replace_in_text(values[o], st->terms)) != (Datum) 0)
		{
			nv[o] = r;
			changed = true;
		}
		if (!nulls[d] && (j = replace_in_jsonb(DatumGetJsonbP(values[d]), st->terms)) != NULL)
		{
			nv[d] = JsonbPGetDatum(j);
			changed = true;
		}
	}
	if (!changed)
		return;

	args[0] = nv[map->attno[AC_PRINCIPAL_ID]];
	args[1] = nv[map->attno[AC_TARGET_RESOURCE_ID]];
	args[2] = nv[map->attno[AC_OUTCOME_DESCRIPTION]];
	args[3] = nv[map->attno[AC_DETAILS]];
	args[4] = PointerGetDatum(audit_bytea_from_bytes(commitment, AUDIT_HASH_LEN));
	args[5] = values[1];
	argnulls[0] = nn[map->attno[AC_PRINCIPAL_ID]] ? 'n' : ' ';
	argnulls[1] = nn[map->attno[AC_TARGET_RESOURCE_ID]] ? 'n' : ' ';
	argnulls[2] = nn[map->attno[AC_OUTCOME_DESCRIPTION]] ? 'n' : ' ';
	argnulls[3] = nn[map->attno[AC_DETAILS]] ? 'n' : ' ';
	argnulls[4] = ' ';
	argnulls[5] = ' ';
	rc = SPI_execute_plan(partition_plan(st, DatumGetObjectId(values[0])), args, argnulls, false, 0);
	if (rc != SPI_OK_UPDATE || SPI_processed != 1)
		ereport(ERROR,
				(errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
				 errmsg("audit row %lld changed while it was being redacted", (long long) id),
				 errhint("Retry the request; nothing was changed.")));

	/* The attestation of the new fields (the salt is gone: digest them as they are now). */
	nn[map->attno[AC_PERSONAL_DATA_SALT]] = true;
	audit_redacted_fields_digest(nv, nn, map, digest);
	args[0] = Int64GetDatum(id);
	args[1] = values[map->attno[AC_TIMESTAMP]];
	args[2] = Int64GetDatum(st->request_id);
	args[3] = PointerGetDatum(audit_bytea_from_bytes(digest, AUDIT_HASH_LEN));
	args[4] = values[map->attno[AC_ORGANIZATION_ID]];
	argnulls[0] = argnulls[1] = argnulls[2] = argnulls[3] = ' ';
	argnulls[4] = nulls[map->attno[AC_ORGANIZATION_ID]] ? 'n' : ' ';
	if (SPI_execute_plan(st->attest_plan, args, argnulls, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "audit_db redaction: recording the attestation of row %lld failed", (long long) id);

	st->changed++;
	if (st->erase)
	{
		if (kept)
			st->kept++;
		else
			st->erased++;
	}
}

PG_FUNCTION_INFO_V1(audit_redact_subject_rows_sql);

/*
 * audit.redact_subject_rows(request_id bigint, terms text[], replacement text,
 *		organization text, erase boolean, keep_exempt boolean)
 *		returns table (rows_changed bigint, rows_erased bigint, rows_kept bigint)
 *
 *		Rewrite every row of audit.audit_log (of organization; NULL: all)
 *		that mentions one of terms, replacing them by replacement; with
 *		erase, rows that neither audit.erasure_exemption (when keep_exempt)
 *		nor a 'gdpr.' action keeps also lose outcome_description and
 *		details.  Attestations go to audit.redacted_row under request_id.
 *		Internal to the GDPR functions of src/sql/80_gdpr.sql (only the
 *		extension's owner may call it); any error leaves everything as it
 *		was.
 */
Datum
audit_redact_subject_rows_sql(PG_FUNCTION_ARGS)
{
	RedactState st;
	TupleDesc	rdesc;
	Datum		result[3];
	bool		rnulls[3] = {false, false, false};
	Datum		cursor_args[2];
	char		cursor_nulls[2] = {' ', ' '};
	Oid			save_userid;
	int			save_sec;
	int			nestlevel;
	MemoryContext row_cxt;
	Portal		portal;

	for (int i = 0; i < 6; i++)
		if (i != 3 && PG_ARGISNULL(i))
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("argument %d of audit.redact_subject_rows() must not be NULL", i + 1),
					 errhint("Only the organization may be NULL (every organization).")));
	if (get_call_result_type(fcinfo, NULL, &rdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "audit.redact_subject_rows() must return a row");

	memset(&st, 0, sizeof(st));
	st.cxt = CurrentMemoryContext;
	st.request_id = PG_GETARG_INT64(0);
	st.terms = build_terms(PG_GETARG_ARRAYTYPE_P(1), text_to_cstring(PG_GETARG_TEXT_PP(2)));
	st.erase = PG_GETARG_BOOL(4);
	st.keep_exempt = PG_GETARG_BOOL(5);
	if (st.terms->replacement_len == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("the replacement of the subject's identifiers must not be empty"),
				 errhint("Pass a pseudonym or an erasure token.")));
	cursor_args[0] = PG_GETARG_DATUM(1);
	cursor_args[1] = PG_ARGISNULL(3) ? (Datum) 0 : PG_GETARG_DATUM(3);
	cursor_nulls[1] = PG_ARGISNULL(3) ? 'n' : ' ';

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	/* As the owner, past row-level security: the organization argument scopes. */
	nestlevel = audit_pin_search_path();
	GetUserIdAndSecContext(&save_userid, &save_sec);
	SetUserIdAndSecContext(audit_extension_owner(),
						   save_sec | SECURITY_LOCAL_USERID_CHANGE | SECURITY_NOFORCE_RLS);
	row_cxt = AllocSetContextCreate(st.cxt, "audit redaction row", ALLOCSET_DEFAULT_SIZES);

	audit_begin_privileged_change("redaction");
	PG_TRY();
	{
		MemoryContext old;

		if (st.erase && st.keep_exempt)
			load_exemptions(&st);
		old = MemoryContextSwitchTo(st.cxt);
		st.attest_plan = SPI_prepare("INSERT INTO audit.redacted_row (audit_log_id, log_timestamp, request_id,"
									 " fields_digest, organization_id) VALUES ($1, $2, $3, $4, $5)",
									 5, (Oid[]) {INT8OID, TIMESTAMPTZOID, INT8OID, BYTEAOID, TEXTOID});
		st.latest_plan = SPI_prepare("SELECT fields_digest FROM audit.redacted_row WHERE audit_log_id = $1"
									 " ORDER BY request_id DESC LIMIT 1", 1, (Oid[]) {INT8OID});
		MemoryContextSwitchTo(old);
		if (st.attest_plan == NULL || st.latest_plan == NULL)
			elog(ERROR, "audit_db redaction: preparing statements failed: %s",
				 SPI_result_code_string(SPI_result));

		portal = SPI_cursor_open_with_args(NULL,
										   "SELECT s.partition, s.row_location, (s.r).*"
										   " FROM audit.subject_rows($1, $2) s",
										   2, (Oid[]) {TEXTARRAYOID, TEXTOID},
										   cursor_args, cursor_nulls, false, 0);
		for (;;)
		{
			SPITupleTable *batch;
			uint64		nrows;

			SPI_cursor_fetch(portal, true, 256);
			if (SPI_processed == 0)
				break;
			/* redact_row's own statements overwrite SPI_tuptable and SPI_processed. */
			batch = SPI_tuptable;
			nrows = SPI_processed;
			if (!st.have_map)
			{
				audit_columns_build_map(batch->tupdesc, "audit.subject_rows()", &st.map);
				st.have_map = true;
			}
			for (uint64 i = 0; i < nrows; i++)
			{
				old = MemoryContextSwitchTo(row_cxt);
				redact_row(&st, batch->vals[i], batch->tupdesc);
				MemoryContextSwitchTo(old);
				MemoryContextReset(row_cxt);
				CHECK_FOR_INTERRUPTS();
			}
			SPI_freetuptable(batch);
		}
		SPI_cursor_close(portal);
	}
	PG_FINALLY();
	{
		audit_end_privileged_change();
		SetUserIdAndSecContext(save_userid, save_sec);
	}
	PG_END_TRY();
	AtEOXact_GUC(true, nestlevel);
	SPI_finish();

	result[0] = Int64GetDatum(st.changed);
	result[1] = Int64GetDatum(st.erased);
	result[2] = Int64GetDatum(st.kept);
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(BlessTupleDesc(rdesc), result, rnulls)));
}

/* ---------------------------------------------------------------------
 * Verification of redacted rows (for verification.c)
 * ---------------------------------------------------------------------
 */

typedef struct LatestAttestation
{
	int64		row_id;			/* key */
	int64		request_id;
	uint8		digest[AUDIT_HASH_LEN];
} LatestAttestation;

typedef struct RequestEntry
{
	int64		request_id;		/* key */
	bool		event_seen;		/* its sealed event was met */
	bool		root_valid;		/* the event's root parsed */
	bool		needed;			/* attests a row met in the log */
	uint8		event_root[AUDIT_HASH_LEN];
} RequestEntry;

struct AuditRedactionCheck
{
	HTAB	   *latest;			/* LatestAttestation by row id */
	HTAB	   *requests;		/* RequestEntry by request id */
	MemoryContext cxt;
};

/*
 * The attestations are read as the extension's owner, past row-level
 * security: a verification confined to one organization still checks every
 * request's root, and nobody else is granted audit.redacted_row.
 */
static void
become_owner(Oid *save_userid, int *save_sec)
{
	GetUserIdAndSecContext(save_userid, save_sec);
	SetUserIdAndSecContext(audit_extension_owner(),
						   *save_sec | SECURITY_LOCAL_USERID_CHANGE | SECURITY_NOFORCE_RLS);
}

AuditRedactionCheck *
audit_redaction_check_begin(MemoryContext cxt)
{
	Oid			save_userid;
	int			save_sec;
	AuditRedactionCheck *rc = MemoryContextAllocZero(cxt, sizeof(AuditRedactionCheck));
	HASHCTL		ctl;
	Portal		portal;

	rc->cxt = cxt;
	ctl.keysize = sizeof(int64);
	ctl.entrysize = sizeof(LatestAttestation);
	ctl.hcxt = cxt;
	rc->latest = hash_create("audit_db redacted rows", 1024, &ctl, HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	ctl.entrysize = sizeof(RequestEntry);
	rc->requests = hash_create("audit_db redaction requests", 64, &ctl, HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);

	become_owner(&save_userid, &save_sec);
	portal = SPI_cursor_open_with_args(NULL,
									   "SELECT DISTINCT ON (audit_log_id) audit_log_id, request_id, fields_digest"
									   " FROM audit.redacted_row ORDER BY audit_log_id, request_id DESC",
									   0, NULL, NULL, NULL, true, 0);
	for (;;)
	{
		SPI_cursor_fetch(portal, true, 10000);
		if (SPI_processed == 0)
			break;
		for (uint64 i = 0; i < SPI_processed; i++)
		{
			HeapTuple	t = SPI_tuptable->vals[i];
			TupleDesc	d = SPI_tuptable->tupdesc;
			bool		isnull;
			int64		row_id = DatumGetInt64(SPI_getbinval(t, d, 1, &isnull));
			LatestAttestation *e = hash_search(rc->latest, &row_id, HASH_ENTER, NULL);
			Datum		digest = SPI_getbinval(t, d, 3, &isnull);

			bool		digest_null = isnull;

			e->request_id = DatumGetInt64(SPI_getbinval(t, d, 2, &isnull));
			if (!audit_bytea_is_hash(digest, digest_null, e->digest))
				memset(e->digest, 0, AUDIT_HASH_LEN);	/* never a real digest: reported as differing */
		}
		SPI_freetuptable(SPI_tuptable);
	}
	SPI_cursor_close(portal);
	SetUserIdAndSecContext(save_userid, save_sec);
	return rc;
}

/* Value of a hexadecimal digit, -1 for any other character. */
static int
hex_digit_value(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/* Parse 64 hex digits into 32 bytes. */
static bool
parse_hex_hash(const char *s, int len, uint8 out[AUDIT_HASH_LEN])
{
	if (len != 2 * AUDIT_HASH_LEN)
		return false;
	for (int i = 0; i < AUDIT_HASH_LEN; i++)
	{
		int			hi = hex_digit_value(s[2 * i]);
		int			lo = hex_digit_value(s[2 * i + 1]);

		if (hi < 0 || lo < 0)
			return false;
		out[i] = (uint8) (hi << 4 | lo);
	}
	return true;
}

/* A string member of a jsonb object, or NULL. */
static JsonbValue *
object_member(Jsonb *jb, const char *key, JsonbValue *buf)
{
	if (!JB_ROOT_IS_OBJECT(jb))
		return NULL;
	return getKeyJsonValueFromContainer(&jb->root, key, strlen(key), buf);
}

/*
 * note_request_event
 *		A 'gdpr.' event with a request_id and an attestation_root: remember
 *		the root its sealed leaf vouches for.
 */
static void
note_request_event(AuditRedactionCheck *rc, Jsonb *details, int64 row_id,
				   AuditRedactionReport report, void *arg)
{
	JsonbValue	idv;
	JsonbValue	rootv;
	int64		request_id;
	RequestEntry *e;
	bool		found;

	if (object_member(details, "request_id", &idv) == NULL ||
		object_member(details, "attestation_root", &rootv) == NULL)
		return;
	if (idv.type != jbvNumeric || rootv.type != jbvString)
	{
		report(arg, row_id, "details", "modified", "a GDPR request event with a malformed request_id or attestation_root");
		return;
	}
	request_id = DatumGetInt64(DirectFunctionCall1(numeric_int8, NumericGetDatum(idv.val.numeric)));
	e = hash_search(rc->requests, &request_id, HASH_ENTER, &found);
	if (!found)
		e->needed = false;
	if (!found || !e->event_seen)
	{
		e->event_seen = true;
		e->root_valid = parse_hex_hash(rootv.val.string.val, rootv.val.string.len, e->event_root);
	}
	else
		report(arg, row_id, "details", "inserted",
			   psprintf("a second event for GDPR request %lld", (long long) request_id));
}

void
audit_redaction_check_row(AuditRedactionCheck *rc, Datum *values, bool *nulls,
						  const AuditColumnMap *map, AuditRedactionReport report, void *arg)
{
	int64		id = DatumGetInt64(values[map->attno[AC_ID]]);
	text	   *action = DatumGetTextPP(values[map->attno[AC_ACTION]]);

	if (nulls[map->attno[AC_PERSONAL_DATA_SALT]])
	{
		LatestAttestation *a = hash_search(rc->latest, &id, HASH_FIND, NULL);
		uint8		digest[AUDIT_HASH_LEN];

		if (a == NULL)
		{
			/* A row redacted to nothing holds nothing that needs attesting. */
			if (!nulls[map->attno[AC_PRINCIPAL_ID]] || !nulls[map->attno[AC_TARGET_RESOURCE_ID]] ||
				!nulls[map->attno[AC_OUTCOME_DESCRIPTION]] || !nulls[map->attno[AC_DETAILS]])
				report(arg, id, "personal_data_salt", "modified",
					   "the row is redacted and holds personal fields, but no redaction record attests them");
		}
		else
		{
			RequestEntry *e;
			bool		found;

			audit_redacted_fields_digest(values, nulls, map, digest);
			if (memcmp(digest, a->digest, AUDIT_HASH_LEN) != 0)
				report(arg, id, "personal data", "modified",
					   psprintf("the redacted personal fields differ from what GDPR request %lld attests",
								(long long) a->request_id));
			e = hash_search(rc->requests, &a->request_id, HASH_ENTER, &found);
			if (!found)
			{
				e->event_seen = false;
				e->root_valid = false;
			}
			e->needed = true;
		}
	}

	if (VARSIZE_ANY_EXHDR(action) > strlen(GDPR_ACTION_PREFIX) &&
		memcmp(VARDATA_ANY(action), GDPR_ACTION_PREFIX, strlen(GDPR_ACTION_PREFIX)) == 0 &&
		!nulls[map->attno[AC_DETAILS]])
		note_request_event(rc, DatumGetJsonbP(values[map->attno[AC_DETAILS]]), id, report, arg);
}

void
audit_redaction_check_finish(AuditRedactionCheck *rc, bool whole_log,
							 AuditRedactionReport report, void *arg)
{
	HASH_SEQ_STATUS seq;
	RequestEntry *e;
	Oid			save_userid;
	int			save_sec;

	hash_seq_init(&seq, rc->requests);
	while ((e = hash_seq_search(&seq)) != NULL)
	{
		Datum		arg_id = Int64GetDatum(e->request_id);
		uint8		root[AUDIT_HASH_LEN];
		uint8	   *leaves;
		int			n;

		if (!e->event_seen)
		{
			if (whole_log && e->needed)
				report(arg, 0, NULL, "modified",
					   psprintf("GDPR request %lld attests redacted rows, but the log holds no sealed event for it",
								(long long) e->request_id));
			continue;
		}
		if (!e->root_valid)
		{
			report(arg, 0, "details", "modified",
				   psprintf("the event of GDPR request %lld carries no valid attestation root",
						  (long long) e->request_id));
			continue;
		}
		become_owner(&save_userid, &save_sec);
		if (SPI_execute_with_args("SELECT fields_digest FROM audit.redacted_row WHERE request_id = $1"
								  " ORDER BY audit_log_id",
								  1, (Oid[]) {INT8OID}, &arg_id, NULL, true, 0) != SPI_OK_SELECT)
			elog(ERROR, "audit_db: reading audit.redacted_row failed");
		SetUserIdAndSecContext(save_userid, save_sec);
		n = SPI_processed;
		leaves = palloc(Max(1, n) * AUDIT_HASH_LEN);
		for (int i = 0; i < n; i++)
		{
			bool		isnull;
			Datum		d = SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1, &isnull);

			if (!audit_bytea_is_hash(d, isnull, leaves + (size_t) i * AUDIT_HASH_LEN))
				memset(leaves + (size_t) i * AUDIT_HASH_LEN, 0, AUDIT_HASH_LEN);
		}
		SPI_freetuptable(SPI_tuptable);
		audit_merkle_root(leaves, n, root);
		pfree(leaves);
		if (memcmp(root, e->event_root, AUDIT_HASH_LEN) != 0)
			report(arg, 0, NULL, "modified",
				   psprintf("the redaction records of GDPR request %lld (%d rows) do not match the attestation root its sealed event carries",
							(long long) e->request_id, n));
	}
}
