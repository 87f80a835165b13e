/*-------------------------------------------------------------------------
 *
 * event_api.c
 *	  audit.log_event(): build one audit event from named arguments, an
 *	  optional preset and the documented defaults, validate it, and insert
 *	  it into audit.audit_log (where the stamping trigger hashes it).
 *	  audit.check_audit_preset(): trigger that validates preset rows when
 *	  they are written, so a bad preset is refused at once rather than
 *	  failing every later event.
 *
 * Presets (audit.audit_preset) hold:
 *		organization_id, action, data_classification
 *			fixed values: an event logged through the preset takes them, and
 *			is refused if it passes a different one;
 *		default_values (jsonb object)
 *			field -> value used when the event leaves the field NULL;
 *			"details" is an object merged under the event's own details;
 *		required_fields (text[])
 *			fields, or "details.<key>", that must be present after defaults;
 *		validation_rules (jsonb object)
 *			field or "details.<key>" -> {"pattern", "min_length",
 *			"max_length", "enum", "min", "max"}.
 *
 * Error messages name the field and the rule but never echo the value,
 * which may be personal data and would otherwise land in the server log.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "access/xact.h"
#include "catalog/pg_collation.h"
#include "catalog/pg_type.h"
#include "commands/trigger.h"
#include "executor/spi.h"
#include "mb/pg_wchar.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/datum.h"
#include "utils/fmgrprotos.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/numeric.h"
#include "utils/rel.h"
#include "utils/timestamp.h"

#include "audit_db.h"
#include "vocabulary.h"
#include "event_api.h"
#include "tenancy.h"
#include "row_stamping.h"

/* Fields of an event, in the argument order of audit.log_event(). */
typedef enum EventField
{
	EF_ACTION = 0,
	EF_STATUS,
	EF_PRINCIPAL_ID,
	EF_ORGANIZATION_ID,
	EF_TARGET_RESOURCE_TYPE,
	EF_TARGET_RESOURCE_ID,
	EF_OUTCOME_DESCRIPTION,
	EF_CORRELATION_ID,
	EF_DATA_CLASSIFICATION,
	EF_RETENTION_POLICY,
	EF_PROCESSING_LATENCY,
	EF_DETAILS,
	EF_EVENT_VERSION,
	EF_TIMESTAMP,
	EF_NUM_FIELDS
} EventField;

/* Argument number of the preset name, after the fields. */
#define ARG_PRESET	EF_NUM_FIELDS

typedef enum FieldKind
{
	FK_TEXT,
	FK_INT4,
	FK_JSONB,
	FK_TIMESTAMPTZ
} FieldKind;

typedef struct EventFieldInfo
{
	const char *name;			/* column of audit.audit_log */
	FieldKind	kind;
	Oid			typid;			/* parameter type of the INSERT */
	bool		preset_default; /* may a preset's default_values set it? */
	const char *fallback;		/* value when still NULL, or NULL */
} EventFieldInfo;

/*
 * The fallbacks repeat the column defaults of audit.audit_log
 * (src/sql/20_audit_log.sql); the INSERT below passes every column.
 */
static const EventFieldInfo event_fields[EF_NUM_FIELDS] = {
	[EF_ACTION] = {"action", FK_TEXT, TEXTOID, false, NULL},
	[EF_STATUS] = {"status", FK_TEXT, TEXTOID, true, "success"},
	[EF_PRINCIPAL_ID] = {"principal_id", FK_TEXT, TEXTOID, true, NULL},
	[EF_ORGANIZATION_ID] = {"organization_id", FK_TEXT, TEXTOID, false, NULL},
	[EF_TARGET_RESOURCE_TYPE] = {"target_resource_type", FK_TEXT, TEXTOID, true, NULL},
	[EF_TARGET_RESOURCE_ID] = {"target_resource_id", FK_TEXT, TEXTOID, true, NULL},
	[EF_OUTCOME_DESCRIPTION] = {"outcome_description", FK_TEXT, TEXTOID, true, NULL},
	[EF_CORRELATION_ID] = {"correlation_id", FK_TEXT, TEXTOID, true, NULL},
	[EF_DATA_CLASSIFICATION] = {"data_classification", FK_TEXT, TEXTOID, false, "INTERNAL"},
	[EF_RETENTION_POLICY] = {"retention_policy", FK_TEXT, TEXTOID, true, "standard"},
	[EF_PROCESSING_LATENCY] = {"processing_latency", FK_INT4, INT4OID, true, NULL},
	[EF_DETAILS] = {"details", FK_JSONB, JSONBOID, true, NULL},
	[EF_EVENT_VERSION] = {"event_version", FK_TEXT, TEXTOID, true, "1.0"},
	[EF_TIMESTAMP] = {"timestamp", FK_TIMESTAMPTZ, TIMESTAMPTZOID, false, NULL},
};

static const char *const rule_names[] = {
	"pattern", "min_length", "max_length", "enum", "min", "max"
};

/* An event under construction. */
typedef struct EventDraft
{
	Datum		value[EF_NUM_FIELDS];
	bool		isnull[EF_NUM_FIELDS];
} EventDraft;

/* A preset row as read from audit.audit_preset. */
typedef struct Preset
{
	const char *name;
	Datum		organization_id;
	bool		organization_null;
	Datum		action;
	bool		action_null;
	Datum		classification;
	bool		classification_null;
	ArrayType  *required_fields;	/* NULL if none */
	Jsonb	   *default_values;
	Jsonb	   *validation_rules;
} Preset;

static SPIPlanPtr insert_plan = NULL;
static SPIPlanPtr preset_plan = NULL;

/* Helpers ----------------------------------------------------------------- */

/*
 * field_by_name
 *		The field named name (len bytes), or -1.
 */
static int
field_by_name(const char *name, int len)
{
	for (int f = 0; f < EF_NUM_FIELDS; f++)
	{
		if ((int) strlen(event_fields[f].name) == len &&
			memcmp(event_fields[f].name, name, len) == 0)
			return f;
	}
	return -1;
}

/*
 * is_details_path
 *		True for "details.<key>" with a non-empty key; *key gets the key.
 */
static bool
is_details_path(const char *name, int len, const char **key, int *keylen)
{
	if (len > 8 && memcmp(name, "details.", 8) == 0)
	{
		*key = name + 8;
		*keylen = len - 8;
		return true;
	}
	return false;
}

/*
 * field_list
 *		Comma-separated list of the fields for which want(field) holds, for
 *		hints.
 */
static char *
field_list(bool (*want) (int))
{
	StringInfoData buf;

	initStringInfo(&buf);
	for (int f = 0; f < EF_NUM_FIELDS; f++)
	{
		if (want(f))
			appendStringInfo(&buf, "%s%s", buf.len > 0 ? ", " : "", event_fields[f].name);
	}
	return buf.data;
}

static bool
want_defaultable(int f)
{
	return event_fields[f].preset_default;
}

static bool
want_checkable(int f)
{
	return f != EF_TIMESTAMP;
}

/*
 * jsonb_scalar_to_cstring
 *		Text of a scalar JSON value (NULL for JSON null); containers are
 *		returned in their canonical text.
 */
static char *
jsonb_scalar_to_cstring(JsonbValue *v)
{
	switch (v->type)
	{
		case jbvNull:
			return NULL;
		case jbvString:
			return pnstrdup(v->val.string.val, v->val.string.len);
		case jbvNumeric:
			return DatumGetCString(DirectFunctionCall1(numeric_out,
													   NumericGetDatum(v->val.numeric)));
		case jbvBool:
			return pstrdup(v->val.boolean ? "true" : "false");
		case jbvBinary:
			return JsonbToCString(NULL, v->val.binary.data, v->val.binary.len);
		default:
			return NULL;
	}
}

/*
 * jsonb_get_key
 *		The value of key in the object jb, or NULL when absent.
 */
static JsonbValue *
jsonb_get_key(Jsonb *jb, const char *key, int keylen)
{
	if (jb == NULL || !JB_ROOT_IS_OBJECT(jb))
		return NULL;
	return getKeyJsonValueFromContainer(&jb->root, key, keylen, NULL);
}

/*
 * JsonbPairFn / for_each_pair
 *		Call fn(key, value, arg) for each key of the JSON object container;
 *		nested containers are passed as jbvBinary values.
 */
typedef void (*JsonbPairFn) (const char *key, JsonbValue *value, void *arg);

static void
for_each_pair(JsonbContainer *object, JsonbPairFn fn, void *arg)
{
	JsonbIterator *it = JsonbIteratorInit(object);
	JsonbValue	key;
	JsonbValue	value;
	JsonbIteratorToken tok;

	while ((tok = JsonbIteratorNext(&it, &key, true)) != WJB_DONE)
	{
		char	   *name;

		if (tok != WJB_KEY)
			continue;
		name = pnstrdup(key.val.string.val, key.val.string.len);
		(void) JsonbIteratorNext(&it, &value, true);
		fn(name, &value, arg);
	}
}

/* Presets ------------------------------------------------------------------- */

/*
 * load_preset
 *		Read the preset name for the event's organization (an organization's
 *		own preset wins over a global one of the same name).  Runs inside
 *		the caller's SPI connection; the result is copied out of SPI memory.
 */
static void
load_preset(const char *name, EventDraft *ev, Preset *preset,
			MemoryContext outer)
{
	Datum		args[2];
	char		argnulls[2] = {' ', ' '};
	HeapTuple	tup;
	TupleDesc	desc;
	bool		isnull;
	Datum		d;
	MemoryContext spi_cxt;

	if (preset_plan == NULL)
	{
		Oid			types[2] = {TEXTOID, TEXTOID};
		SPIPlanPtr	plan;

		plan = SPI_prepare("SELECT organization_id::pg_catalog.text, action::pg_catalog.text,"
						   " data_classification::pg_catalog.text, required_fields,"
						   " default_values, validation_rules"
						   " FROM audit.audit_preset"
						   " WHERE name OPERATOR(pg_catalog.=) $1"
						   " AND (organization_id OPERATOR(pg_catalog.=) $2 OR organization_id IS NULL)"
						   " ORDER BY organization_id IS NULL LIMIT 1",
						   2, types);
		if (plan == NULL)
			elog(ERROR, "SPI_prepare failed for preset lookup: %s",
				 SPI_result_code_string(SPI_result));
		SPI_keepplan(plan);
		preset_plan = plan;
	}

	args[0] = CStringGetTextDatum(name);
	args[1] = ev->value[EF_ORGANIZATION_ID];
	if (ev->isnull[EF_ORGANIZATION_ID])
		argnulls[1] = 'n';

	if (SPI_execute_plan(preset_plan, args, argnulls, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "preset lookup failed");

	if (SPI_processed == 0)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 ev->isnull[EF_ORGANIZATION_ID] ?
				 errmsg("audit preset \"%s\" does not exist", name) :
				 errmsg("audit preset \"%s\" does not exist for organization \"%s\"",
						name, TextDatumGetCString(ev->value[EF_ORGANIZATION_ID])),
				 errhint("A preset defined for one organization is only used when organization_id names it; list presets with SELECT name, organization_id FROM audit.audit_preset.")));

	tup = SPI_tuptable->vals[0];
	desc = SPI_tuptable->tupdesc;

	/* Copy everything into the caller's context before SPI_finish. */
	spi_cxt = MemoryContextSwitchTo(outer);
	preset->name = pstrdup(name);

	d = SPI_getbinval(tup, desc, 1, &isnull);
	preset->organization_null = isnull;
	preset->organization_id = isnull ? (Datum) 0 : datumCopy(d, false, -1);
	d = SPI_getbinval(tup, desc, 2, &isnull);
	preset->action_null = isnull;
	preset->action = isnull ? (Datum) 0 : datumCopy(d, false, -1);
	d = SPI_getbinval(tup, desc, 3, &isnull);
	preset->classification_null = isnull;
	preset->classification = isnull ? (Datum) 0 : datumCopy(d, false, -1);
	d = SPI_getbinval(tup, desc, 4, &isnull);
	preset->required_fields = isnull ? NULL : DatumGetArrayTypePCopy(d);
	d = SPI_getbinval(tup, desc, 5, &isnull);
	preset->default_values = isnull ? NULL : DatumGetJsonbPCopy(d);
	d = SPI_getbinval(tup, desc, 6, &isnull);
	preset->validation_rules = isnull ? NULL : DatumGetJsonbPCopy(d);
	MemoryContextSwitchTo(spi_cxt);
}

/*
 * apply_fixed
 *		Give the event the preset's fixed value of field, refusing an event
 *		that passes a different one.
 */
static void
apply_fixed(EventDraft *ev, const Preset *preset, int field,
			Datum fixed, bool fixed_null)
{
	if (fixed_null)
		return;
	if (ev->isnull[field])
	{
		ev->value[field] = fixed;
		ev->isnull[field] = false;
		return;
	}
	if (!DatumGetBool(DirectFunctionCall2Coll(texteq, C_COLLATION_OID,
											  ev->value[field], fixed)))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s \"%s\" does not match audit preset \"%s\"",
						event_fields[field].name,
						TextDatumGetCString(ev->value[field]), preset->name),
				 errdetail("The preset fixes %s to \"%s\".", event_fields[field].name,
						   TextDatumGetCString(fixed)),
				 errhint("Omit %s when logging through this preset, or use another preset.",
						 event_fields[field].name)));
}

/*
 * apply_defaults
 *		Fill the event's NULL fields from the preset's default_values, and
 *		merge its details object under the event's own details.
 */
static void
apply_defaults(EventDraft *ev, const Preset *preset)
{
	if (preset->default_values == NULL)
		return;

	for (int f = 0; f < EF_NUM_FIELDS; f++)
	{
		JsonbValue *v;
		char	   *s;

		if (!event_fields[f].preset_default)
			continue;
		v = jsonb_get_key(preset->default_values, event_fields[f].name,
						  strlen(event_fields[f].name));
		if (v == NULL || v->type == jbvNull)
			continue;

		if (f == EF_DETAILS)
		{
			Datum		preset_details = JsonbPGetDatum(JsonbValueToJsonb(v));

			if (ev->isnull[f])
				ev->value[f] = preset_details;
			else
				ev->value[f] = DirectFunctionCall2(jsonb_concat, preset_details,
												   ev->value[f]);
			ev->isnull[f] = false;
			continue;
		}
		if (!ev->isnull[f])
			continue;

		s = jsonb_scalar_to_cstring(v);
		if (event_fields[f].kind == FK_INT4)
			ev->value[f] = DirectFunctionCall1(int4in, CStringGetDatum(s));
		else
			ev->value[f] = CStringGetTextDatum(s);
		ev->isnull[f] = false;
	}
}

/*
 * event_value_text
 *		The text of a field, or of a top-level key of details, as the rules
 *		see it; NULL when absent.
 */
static char *
event_value_text(EventDraft *ev, const char *name, int len)
{
	const char *key;
	int			keylen;
	int			f;

	if (is_details_path(name, len, &key, &keylen))
	{
		JsonbValue *v;

		if (ev->isnull[EF_DETAILS])
			return NULL;
		v = jsonb_get_key(DatumGetJsonbP(ev->value[EF_DETAILS]), key, keylen);
		return v ? jsonb_scalar_to_cstring(v) : NULL;
	}

	f = field_by_name(name, len);
	if (f < 0 || ev->isnull[f])
		return NULL;
	switch (event_fields[f].kind)
	{
		case FK_TEXT:
			return TextDatumGetCString(ev->value[f]);
		case FK_INT4:
			return DatumGetCString(DirectFunctionCall1(int4out, ev->value[f]));
		case FK_JSONB:
			return JsonbToCString(NULL, &DatumGetJsonbP(ev->value[f])->root, 0);
		case FK_TIMESTAMPTZ:
			return DatumGetCString(DirectFunctionCall1(timestamptz_out, ev->value[f]));
	}
	return NULL;
}

/*
 * check_required
 *		Refuse the event if a required field is still missing.
 */
static void
check_required(EventDraft *ev, const Preset *preset)
{
	Datum	   *elems;
	bool	   *elemnulls;
	int			n;

	if (preset->required_fields == NULL)
		return;
	deconstruct_array(preset->required_fields, TEXTOID, -1, false, TYPALIGN_INT,
					  &elems, &elemnulls, &n);
	for (int i = 0; i < n; i++)
	{
		text	   *t;

		if (elemnulls[i])
			continue;
		t = DatumGetTextPP(elems[i]);
		if (event_value_text(ev, VARDATA_ANY(t), VARSIZE_ANY_EXHDR(t)) == NULL)
			ereport(ERROR,
					(errcode(ERRCODE_NOT_NULL_VIOLATION),
					 errmsg("audit event is missing required field \"%s\" of preset \"%s\"",
							text_to_cstring(t), preset->name),
					 errhint("Pass a value for %s to audit.log_event(), or give the preset a default for it.",
							 text_to_cstring(t))));
	}
}

/*
 * rule_failure
 *		Report that field breaks rule of the preset.
 */
static void
rule_failure(const Preset *preset, const char *field, const char *rule,
			 const char *expectation)
{
	ereport(ERROR,
			(errcode(ERRCODE_CHECK_VIOLATION),
			 errmsg("audit event field \"%s\" breaks rule \"%s\" of preset \"%s\"",
					field, rule, preset->name),
			 errdetail("%s", expectation),
			 errhint("Correct the value (it is not shown, as it may be personal data), or the preset's validation_rules.")));
}

/*
 * numeric_of
 *		value parsed as numeric; *ok is false (and nothing is parsed) when
 *		value is not a plain decimal number ([-+]digits[.digits][e[-+]digits]).
 */
static Datum
numeric_of(const char *value, bool *ok)
{
	const char *p = value;
	bool		digits = false;

	if (*p == '-' || *p == '+')
		p++;
	while (isdigit((unsigned char) *p))
		p++, digits = true;
	if (*p == '.')
	{
		p++;
		while (isdigit((unsigned char) *p))
			p++, digits = true;
	}
	if (digits && (*p == 'e' || *p == 'E'))
	{
		p++;
		if (*p == '-' || *p == '+')
			p++;
		if (!isdigit((unsigned char) *p))
			digits = false;
		while (isdigit((unsigned char) *p))
			p++;
	}
	*ok = digits && *p == '\0';
	if (!*ok)
		return (Datum) 0;
	return DirectFunctionCall3(numeric_in, CStringGetDatum(value),
							   ObjectIdGetDatum(InvalidOid), Int32GetDatum(-1));
}

/*
 * check_rule
 *		Apply one rule (name rule, argument arg) to value of field.
 */
static void
check_rule(const Preset *preset, const char *field, const char *rule,
		   JsonbValue *arg, const char *value)
{
	bool		well_formed;

	/*
	 * The preset validation trigger guarantees these shapes, but a row that
	 * bypassed it (replication role, restore without triggers) must not make
	 * us read a JSON value as the wrong type.
	 */
	if (strcmp(rule, "pattern") == 0)
		well_formed = arg->type == jbvString;
	else if (strcmp(rule, "enum") == 0)
		well_formed = arg->type == jbvBinary && JsonContainerIsArray(arg->val.binary.data);
	else
		well_formed = arg->type == jbvNumeric;
	if (!well_formed)
		ereport(ERROR,
				(errcode(ERRCODE_DATA_CORRUPTED),
				 errmsg("audit preset \"%s\" has a malformed rule \"%s\" for field \"%s\"",
						preset->name, rule, field),
				 errhint("Rewrite the preset's validation_rules; an UPDATE runs the preset checks again.")));

	if (strcmp(rule, "pattern") == 0)
	{
		char	   *pattern = jsonb_scalar_to_cstring(arg);

		if (!DatumGetBool(DirectFunctionCall2Coll(textregexeq, C_COLLATION_OID,
												  CStringGetTextDatum(value),
												  CStringGetTextDatum(pattern))))
			rule_failure(preset, field, rule,
						 psprintf("The value must match the regular expression %s.", pattern));
	}
	else if (strcmp(rule, "min_length") == 0 || strcmp(rule, "max_length") == 0)
	{
		int			limit = DatumGetInt32(DirectFunctionCall1(numeric_int4,
															  NumericGetDatum(arg->val.numeric)));
		int			len = pg_mbstrlen_with_len(value, strlen(value));

		if (rule[1] == 'i' ? len < limit : len > limit)
			rule_failure(preset, field, rule,
						 psprintf("The value must be at %s %d characters long.",
								  rule[1] == 'i' ? "least" : "most", limit));
	}
	else if (strcmp(rule, "enum") == 0)
	{
		JsonbIterator *it = JsonbIteratorInit(arg->val.binary.data);
		JsonbValue	elem;
		JsonbIteratorToken tok;
		bool		found = false;

		while ((tok = JsonbIteratorNext(&it, &elem, true)) != WJB_DONE)
		{
			if (tok == WJB_ELEM && elem.type == jbvString &&
				(int) strlen(value) == elem.val.string.len &&
				memcmp(value, elem.val.string.val, elem.val.string.len) == 0)
				found = true;
		}
		if (!found)
			rule_failure(preset, field, rule,
						 psprintf("The value must be one of %s.", jsonb_scalar_to_cstring(arg)));
	}
	else if (strcmp(rule, "min") == 0 || strcmp(rule, "max") == 0)
	{
		bool		ok;
		Datum		num = numeric_of(value, &ok);
		int			cmp;

		if (!ok)
			rule_failure(preset, field, rule, "The value must be a number.");
		cmp = DatumGetInt32(DirectFunctionCall2(numeric_cmp, num,
												NumericGetDatum(arg->val.numeric)));
		if (rule[1] == 'i' ? cmp < 0 : cmp > 0)
			rule_failure(preset, field, rule,
						 psprintf("The value must be at %s %s.",
								  rule[1] == 'i' ? "least" : "most",
								  jsonb_scalar_to_cstring(arg)));
	}
}

/* State of check_rules while it walks the rules of one field. */
typedef struct RuleWalk
{
	EventDraft *ev;
	const Preset *preset;
	const char *field;
	const char *value;
} RuleWalk;

static void
check_one_rule(const char *rule, JsonbValue *arg, void *walk_arg)
{
	RuleWalk   *walk = (RuleWalk *) walk_arg;

	check_rule(walk->preset, walk->field, rule, arg, walk->value);
}

static void
check_field_rules(const char *field, JsonbValue *rules, void *walk_arg)
{
	RuleWalk   *walk = (RuleWalk *) walk_arg;

	if (rules->type != jbvBinary)
		return;
	walk->field = field;
	walk->value = event_value_text(walk->ev, field, strlen(field));
	if (walk->value == NULL)
		return;
	for_each_pair(rules->val.binary.data, check_one_rule, walk);
}

/*
 * check_rules
 *		Apply the preset's validation_rules to the event.  A rule on an
 *		absent value passes: required_fields decides presence.
 */
static void
check_rules(EventDraft *ev, const Preset *preset)
{
	RuleWalk	walk = {ev, preset, NULL, NULL};

	if (preset->validation_rules == NULL || !JB_ROOT_IS_OBJECT(preset->validation_rules))
		return;
	for_each_pair(&preset->validation_rules->root, check_field_rules, &walk);
}

/* audit.log_event ------------------------------------------------------------- */

/*
 * insert_event
 *		INSERT the event into audit.audit_log and return its id, as stamped
 *		by the trigger.  Runs inside the caller's SPI connection, as the
 *		calling role, which needs INSERT on audit.audit_log but no SELECT.
 */
static int64
insert_event(EventDraft *ev)
{
	Datum		args[EF_NUM_FIELDS];
	char		argnulls[EF_NUM_FIELDS];
	uint64		before = audit_rows_stamped();

	if (insert_plan == NULL)
	{
		Oid			types[EF_NUM_FIELDS];
		StringInfoData sql;
		SPIPlanPtr	plan;

		/* Built from the constant field table only: no user input. */
		initStringInfo(&sql);
		appendStringInfoString(&sql, "INSERT INTO audit.audit_log (");
		for (int f = 0; f < EF_NUM_FIELDS; f++)
			appendStringInfo(&sql, "%s%s", f > 0 ? ", " : "",
							 quote_identifier(event_fields[f].name));
		appendStringInfoString(&sql, ") VALUES (");
		for (int f = 0; f < EF_NUM_FIELDS; f++)
		{
			appendStringInfo(&sql, "%s$%d", f > 0 ? ", " : "", f + 1);
			types[f] = event_fields[f].typid;
		}
		appendStringInfoString(&sql, ")");

		plan = SPI_prepare(sql.data, EF_NUM_FIELDS, types);
		if (plan == NULL)
			elog(ERROR, "SPI_prepare failed for event insert: %s",
				 SPI_result_code_string(SPI_result));
		SPI_keepplan(plan);
		insert_plan = plan;
	}

	for (int f = 0; f < EF_NUM_FIELDS; f++)
	{
		args[f] = ev->value[f];
		argnulls[f] = ev->isnull[f] ? 'n' : ' ';
	}

	if (SPI_execute_plan(insert_plan, args, argnulls, false, 1) != SPI_OK_INSERT ||
		SPI_processed != 1 || audit_rows_stamped() == before)
		ereport(ERROR,
				(errcode(ERRCODE_TRIGGERED_ACTION_EXCEPTION),
				 errmsg("audit event was not stamped by audit_db"),
				 errhint("The trigger audit_log_stamp on audit.audit_log is missing or disabled; reinstall the extension.")));

	return audit_last_stamped_id();
}

PG_FUNCTION_INFO_V1(audit_log_event);

/*
 * audit_log_event
 *		audit.log_event(action, status, principal_id, organization_id,
 *		target_resource_type, target_resource_id, outcome_description,
 *		correlation_id, data_classification, retention_policy,
 *		processing_latency, details, event_version, event_time, preset)
 *		returns bigint: the new event's id.
 *
 *		Order of resolution for each field: the argument; else the preset's
 *		fixed value or default; else the documented fallback.  Then the
 *		preset's required fields and rules are checked, and the row is
 *		inserted (the stamping trigger validates enumerations and hashes).
 */
Datum
audit_log_event(PG_FUNCTION_ARGS)
{
	EventDraft	ev;
	Preset		preset;
	bool		have_preset = !PG_ARGISNULL(ARG_PRESET);
	MemoryContext caller_cxt = CurrentMemoryContext;
	int64		id;

	for (int f = 0; f < EF_NUM_FIELDS; f++)
	{
		ev.isnull[f] = PG_ARGISNULL(f);
		ev.value[f] = ev.isnull[f] ? (Datum) 0 : PG_GETARG_DATUM(f);
	}

	/* A session acting for an organization logs for it unless told otherwise. */
	if (ev.isnull[EF_ORGANIZATION_ID])
	{
		const char *org = audit_current_organization();

		if (org != NULL)
		{
			ev.value[EF_ORGANIZATION_ID] = CStringGetTextDatum(org);
			ev.isnull[EF_ORGANIZATION_ID] = false;
		}
	}

	SPI_connect();

	/*
	 * Resolution order: arguments, then the preset's fixed values and
	 * defaults, then the documented fallbacks; only the complete event is
	 * checked against the preset's required fields and rules.
	 */
	if (have_preset)
	{
		load_preset(text_to_cstring(PG_GETARG_TEXT_PP(ARG_PRESET)), &ev, &preset,
					caller_cxt);
		apply_fixed(&ev, &preset, EF_ORGANIZATION_ID,
					preset.organization_id, preset.organization_null);
		apply_fixed(&ev, &preset, EF_ACTION, preset.action, preset.action_null);
		apply_fixed(&ev, &preset, EF_DATA_CLASSIFICATION,
					preset.classification, preset.classification_null);
		apply_defaults(&ev, &preset);
	}

	for (int f = 0; f < EF_NUM_FIELDS; f++)
	{
		if (ev.isnull[f] && event_fields[f].fallback != NULL)
		{
			ev.value[f] = CStringGetTextDatum(event_fields[f].fallback);
			ev.isnull[f] = false;
		}
	}
	if (ev.isnull[EF_TIMESTAMP])
	{
		ev.value[EF_TIMESTAMP] = TimestampTzGetDatum(GetCurrentTransactionStartTimestamp());
		ev.isnull[EF_TIMESTAMP] = false;
	}

	if (have_preset)
	{
		check_required(&ev, &preset);
		check_rules(&ev, &preset);
	}

	if (ev.isnull[EF_ACTION])
		ereport(ERROR,
				(errcode(ERRCODE_NOT_NULL_VIOLATION),
				 errmsg("audit event has no action"),
				 errhint("Pass action => '...' to audit.log_event(), or log through a preset that fixes one.")));

	/* Same checks as the domains, but with a hint and without SPI context. */
	audit_check_enumerated("status", ev.value[EF_STATUS],
						   audit_status_values, audit_status_count);
	audit_check_enumerated("data_classification", ev.value[EF_DATA_CLASSIFICATION],
						   audit_classification_values, audit_classification_count);
	if (!ev.isnull[EF_PROCESSING_LATENCY] && DatumGetInt32(ev.value[EF_PROCESSING_LATENCY]) < 0)
		ereport(ERROR,
				(errcode(ERRCODE_CHECK_VIOLATION),
				 errmsg("invalid processing_latency %d for an audit event",
						DatumGetInt32(ev.value[EF_PROCESSING_LATENCY])),
				 errhint("processing_latency is a duration in milliseconds and cannot be negative.")));

	id = insert_event(&ev);
	SPI_finish();
	PG_RETURN_INT64(id);
}

/* Preset validation ------------------------------------------------------------ */

/*
 * preset_error
 *		Report an invalid preset definition.
 */
static void
preset_error(const char *name, const char *msg, const char *hint)
{
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("invalid audit preset \"%s\": %s", name, msg),
			 errhint("%s", hint)));
}

/*
 * check_field_reference
 *		name must be a checkable field or "details.<key>".
 */
static void
check_field_reference(const char *preset, const char *where, const char *name)
{
	const char *key;
	int			keylen;
	int			f = field_by_name(name, strlen(name));

	if (is_details_path(name, strlen(name), &key, &keylen))
		return;
	if (f < 0 || !want_checkable(f))
		preset_error(preset, psprintf("%s names unknown field \"%s\"", where, name),
					 psprintf("Use one of %s, or details.<key>.", field_list(want_checkable)));
}

/*
 * check_rule_definition
 *		One rule of validation_rules must be known and well-typed; patterns
 *		must compile.
 */
static void
check_rule_definition(const char *preset, const char *field, const char *rule,
					  JsonbValue *arg)
{
	bool		known = false;

	for (int i = 0; i < (int) lengthof(rule_names); i++)
		known |= (strcmp(rule, rule_names[i]) == 0);
	if (!known)
		preset_error(preset, psprintf("unknown rule \"%s\" for field \"%s\"", rule, field),
					 psprintf("Rules are %s.", audit_list_to_string(rule_names, lengthof(rule_names))));

	if (strcmp(rule, "pattern") == 0)
	{
		if (arg->type != jbvString)
			preset_error(preset, psprintf("rule \"pattern\" of \"%s\" must be a string", field),
						 "Give a POSIX regular expression, for example \"^patient-[0-9]+$\".");
		/* Compiling it against the empty string raises 2201B when invalid. */
		(void) DirectFunctionCall2Coll(textregexeq, C_COLLATION_OID,
									   CStringGetTextDatum(""),
									   CStringGetTextDatum(jsonb_scalar_to_cstring(arg)));
	}
	else if (strcmp(rule, "enum") == 0)
	{
		JsonbIterator *it;
		JsonbValue	elem;
		JsonbIteratorToken tok;

		if (arg->type != jbvBinary || !JsonContainerIsArray(arg->val.binary.data))
			preset_error(preset, psprintf("rule \"enum\" of \"%s\" must be an array of strings", field),
						 "For example [\"read\", \"write\"].");
		it = JsonbIteratorInit(arg->val.binary.data);
		while ((tok = JsonbIteratorNext(&it, &elem, true)) != WJB_DONE)
		{
			if (tok == WJB_ELEM && elem.type != jbvString)
				preset_error(preset, psprintf("rule \"enum\" of \"%s\" must be an array of strings", field),
							 "For example [\"read\", \"write\"].");
		}
	}
	else
	{
		if (arg->type != jbvNumeric)
			preset_error(preset, psprintf("rule \"%s\" of \"%s\" must be a number", rule, field),
						 "For example {\"max_length\": 64} or {\"min\": 0}.");
		if (strcmp(rule, "min_length") == 0 || strcmp(rule, "max_length") == 0)
		{
			char	   *s = jsonb_scalar_to_cstring(arg);

			if (strspn(s, "0123456789") != strlen(s) || strlen(s) > 9)
				preset_error(preset, psprintf("rule \"%s\" of \"%s\" must be a non-negative integer", rule, field),
							 "Lengths count characters, for example {\"max_length\": 64}.");
		}
	}
}

/*
 * check_default_definition
 *		One entry of default_values (preset name in arg): a field a preset
 *		may default, with a value of the right shape.
 */
static void
check_default_definition(const char *field, JsonbValue *val, void *arg)
{
	const char *name = (const char *) arg;
	int			f = field_by_name(field, strlen(field));

	if (f < 0 || !event_fields[f].preset_default)
		preset_error(name, psprintf("default_values names field \"%s\", which a preset cannot default", field),
					 psprintf("Defaults may be given for %s; organization_id, action and data_classification have their own preset columns.",
							  field_list(want_defaultable)));
	if (f == EF_DETAILS)
	{
		if (val->type != jbvBinary || !JsonContainerIsObject(val->val.binary.data))
			preset_error(name, "the default of \"details\" must be a JSON object",
						 "Its keys are merged under the event's own details.");
	}
	else if (val->type == jbvBinary)
		preset_error(name, psprintf("the default of \"%s\" must be a scalar", field),
					 "Give a string or a number.");
	else if (event_fields[f].kind == FK_INT4 && val->type != jbvNumeric && val->type != jbvNull)
		preset_error(name, psprintf("the default of \"%s\" must be a number", field),
					 "For example {\"processing_latency\": 0}.");
}

/* Preset name and field while check_field_rules_definition walks rules. */
typedef struct RuleDefinitionWalk
{
	const char *preset;
	const char *field;
} RuleDefinitionWalk;

static void
check_one_rule_definition(const char *rule, JsonbValue *arg, void *walk_arg)
{
	RuleDefinitionWalk *walk = (RuleDefinitionWalk *) walk_arg;

	check_rule_definition(walk->preset, walk->field, rule, arg);
}

/*
 * check_field_rules_definition
 *		One entry of validation_rules (preset name in arg): a known field or
 *		details.<key>, mapped to an object of well-formed rules.
 */
static void
check_field_rules_definition(const char *field, JsonbValue *rules, void *arg)
{
	RuleDefinitionWalk walk = {(const char *) arg, field};

	check_field_reference(walk.preset, "validation_rules", field);
	if (rules->type != jbvBinary || !JsonContainerIsObject(rules->val.binary.data))
		preset_error(walk.preset, psprintf("the rules of \"%s\" must be a JSON object", field),
					 "For example {\"max_length\": 64}.");
	for_each_pair(rules->val.binary.data, check_one_rule_definition, &walk);
}

/*
 * preset_column
 *		Attribute number of column name of audit.audit_preset.
 */
static int
preset_column(TupleDesc desc, const char *name)
{
	int			attno = SPI_fnumber(desc, name);

	if (attno <= 0)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_COLUMN),
				 errmsg("audit.audit_preset has no column \"%s\"", name),
				 errhint("Reinstall the extension; its preset table was altered.")));
	return attno;
}

PG_FUNCTION_INFO_V1(audit_check_preset);

/*
 * audit_check_preset
 *		Trigger function audit.check_audit_preset(): BEFORE INSERT OR UPDATE
 *		FOR EACH ROW on audit.audit_preset.  Refuses presets that name
 *		unknown fields or rules, have defaults of the wrong shape or
 *		patterns that do not compile.
 */
Datum
audit_check_preset(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;
	HeapTuple	tuple;
	TupleDesc	desc;
	char	   *name;
	bool		isnull;
	Datum		d;

	if (!CALLED_AS_TRIGGER(fcinfo) || !TRIGGER_FIRED_FOR_ROW(trigdata->tg_event) ||
		TRIGGER_FIRED_BY_DELETE(trigdata->tg_event))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("audit.check_audit_preset() must be fired for INSERT or UPDATE of each row"),
				 errhint("It is installed on audit.audit_preset by the extension.")));

	tuple = TRIGGER_FIRED_BY_UPDATE(trigdata->tg_event) ?
		trigdata->tg_newtuple : trigdata->tg_trigtuple;
	desc = RelationGetDescr(trigdata->tg_relation);

	d = heap_getattr(tuple, preset_column(desc, "name"), desc, &isnull);
	name = isnull ? "(null)" : TextDatumGetCString(d);
	if (isnull || name[0] == '\0')
		preset_error(name, "a preset needs a non-empty name",
					 "Events refer to presets by name: audit.log_event(preset => 'name', ...).");

	/* data_classification is checked by its domain. */

	/* default_values: object of defaultable fields -> values of the right shape */
	d = heap_getattr(tuple, preset_column(desc, "default_values"), desc, &isnull);
	if (!isnull)
	{
		Jsonb	   *jb = DatumGetJsonbP(d);

		if (!JB_ROOT_IS_OBJECT(jb) || JB_ROOT_IS_SCALAR(jb))
			preset_error(name, "default_values must be a JSON object",
						 "For example {\"status\": \"success\", \"details\": {\"channel\": \"web\"}}.");
		for_each_pair(&jb->root, check_default_definition, name);
	}

	/* required_fields: known fields or details.<key> */
	d = heap_getattr(tuple, preset_column(desc, "required_fields"), desc, &isnull);
	if (!isnull)
	{
		Datum	   *elems;
		bool	   *elemnulls;
		int			n;

		deconstruct_array(DatumGetArrayTypeP(d), TEXTOID, -1, false, TYPALIGN_INT,
						  &elems, &elemnulls, &n);
		for (int i = 0; i < n; i++)
		{
			if (elemnulls[i])
				preset_error(name, "required_fields contains NULL",
							 "List field names, for example '{principal_id, details.ip}'.");
			check_field_reference(name, "required_fields", TextDatumGetCString(elems[i]));
		}
	}

	/* validation_rules: field -> {rule: argument} */
	d = heap_getattr(tuple, preset_column(desc, "validation_rules"), desc, &isnull);
	if (!isnull)
	{
		Jsonb	   *jb = DatumGetJsonbP(d);

		if (!JB_ROOT_IS_OBJECT(jb) || JB_ROOT_IS_SCALAR(jb))
			preset_error(name, "validation_rules must be a JSON object",
						 "For example {\"target_resource_id\": {\"pattern\": \"^patient-[0-9]+$\"}}.");
		for_each_pair(&jb->root, check_field_rules_definition, name);
	}

	return PointerGetDatum(tuple);
}
