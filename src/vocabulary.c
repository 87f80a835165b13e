/*-------------------------------------------------------------------------
 *
 * vocabulary.c
 *	  The enumerated values of audit events, the immutable SQL predicates
 *	  that the CHECK constraints of the domains audit.event_status,
 *	  audit.data_classification and audit.hash_algorithm call, and the
 *	  error report for a value outside its list.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "fmgr.h"
#include "lib/stringinfo.h"
#include "utils/builtins.h"

#include "audit_db.h"
#include "vocabulary.h"

const char *const audit_status_values[] = {"attempt", "success", "failure"};
const int	audit_status_count = lengthof(audit_status_values);

const char *const audit_classification_values[] = {
	"PUBLIC", "INTERNAL", "CONFIDENTIAL", "PHI", "FINANCIAL"
};
const int	audit_classification_count = lengthof(audit_classification_values);

const char *const audit_hash_algorithm_values[] = {AUDIT_HASH_ALGORITHM};
const int	audit_hash_algorithm_count = lengthof(audit_hash_algorithm_values);

bool
audit_value_in_list(const char *value, int len, const char *const *list, int count)
{
	for (int i = 0; i < count; i++)
	{
		if ((int) strlen(list[i]) == len && memcmp(list[i], value, len) == 0)
			return true;
	}
	return false;
}

char *
audit_list_to_string(const char *const *list, int count)
{
	StringInfoData buf;

	initStringInfo(&buf);
	for (int i = 0; i < count; i++)
		appendStringInfo(&buf, "%s'%s'", i > 0 ? ", " : "", list[i]);
	return buf.data;
}

/*
 * text_in_list
 *		Body of the SQL predicates below: is the text argument in list?
 */
static Datum
text_in_list(FunctionCallInfo fcinfo, const char *const *list, int count)
{
	text	   *t = PG_GETARG_TEXT_PP(0);

	PG_RETURN_BOOL(audit_value_in_list(VARDATA_ANY(t), VARSIZE_ANY_EXHDR(t), list, count));
}

PG_FUNCTION_INFO_V1(audit_is_event_status);

/* audit.is_event_status(text): 'attempt', 'success' or 'failure'. */
Datum
audit_is_event_status(PG_FUNCTION_ARGS)
{
	return text_in_list(fcinfo, audit_status_values, audit_status_count);
}

PG_FUNCTION_INFO_V1(audit_is_data_classification);

/* audit.is_data_classification(text): one of the five classifications. */
Datum
audit_is_data_classification(PG_FUNCTION_ARGS)
{
	return text_in_list(fcinfo, audit_classification_values, audit_classification_count);
}

PG_FUNCTION_INFO_V1(audit_is_hash_algorithm);

/* audit.is_hash_algorithm(text): 'SHA-256', the algorithm of hash format v1. */
Datum
audit_is_hash_algorithm(PG_FUNCTION_ARGS)
{
	return text_in_list(fcinfo, audit_hash_algorithm_values, audit_hash_algorithm_count);
}

void
audit_check_enumerated(const char *field, Datum value, const char *const *list, int count)
{
	text	   *t = DatumGetTextPP(value);

	if (!audit_value_in_list(VARDATA_ANY(t), VARSIZE_ANY_EXHDR(t), list, count))
		ereport(ERROR,
				(errcode(ERRCODE_CHECK_VIOLATION),
				 errmsg("invalid %s \"%s\" for an audit event", field, text_to_cstring(t)),
				 errhint("%s must be one of %s.", field, audit_list_to_string(list, count))));
}
