/*-------------------------------------------------------------------------
 *
 * change_tracking.c
 *	  The trigger of tracked tables (audit.track_table()): one audit event
 *	  per inserted, updated or deleted row, and one per TRUNCATE, written
 *	  into audit.audit_log as the extension's owner by the event writer
 *	  (event_writer.c: no SQL per row).
 *
 * An event:
 *	  action                '<table>.insert' / '.update' / '.delete' / '.truncate'
 *	                        (<table> is schema.name, or name in schema public)
 *	  target_resource_type  the table, schema-qualified
 *	  target_resource_id    the primary key (its value; a JSON array for a
 *	                        composite key), or for a table without one
 *	                        'row:' and the SHA-256 of the row's values
 *	  principal_id          the session's principal (audit.current_principal())
 *	  organization_id       the row's organization column, the fixed value,
 *	                        or the session's organization
 *	  correlation_id        'stmt:<pid>.<transaction>.<command>': the same
 *	                        for every row of one statement
 *	  details               {"operation", "table", "old", "new", "changed",
 *	                        "actor": {session_user, current_user,
 *	                        application_name, client_addr, transaction_id}}
 *	                        Excluded columns are left out; hashed ones are
 *	                        'sha256:<hex>' of their text; an UPDATE keeps only
 *	                        the changed columns in old and new unless the
 *	                        table stores full rows.
 *
 * Everything the trigger needs about a table is loaded once per backend
 * (options from audit.tracked_table, columns, primary key, output
 * functions) and dropped on a relcache invalidation of the table or of the
 * registry: no catalog or registry query per row. Column options are
 * matched by name on the row's relation, so partitions of a tracked table
 * (whose column numbers may differ) work too.
 *
 * The actions of a tracked table are reserved for its trigger: the stamping
 * asks audit_action_is_tracked_change() about every event whose action ends
 * in .insert, .update, .delete or .truncate, and refuses those of a table
 * tracked now unless this file is writing them.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/partition.h"
#include "catalog/pg_index.h"
#include "catalog/pg_type.h"
#include "commands/trigger.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "utils/array.h"
#include "utils/datum.h"
#include "utils/json.h"
#include "utils/builtins.h"
#include "utils/fmgrprotos.h"
#include "utils/guc.h"
#include "utils/hsearch.h"
#include "utils/inval.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/numeric.h"
#include "utils/rel.h"
#include "utils/syscache.h"

#include "audit_db.h"
#include "change_tracking.h"
#include "event_writer.h"
#include "hashing.h"
#include "tenancy.h"

typedef enum ValueKind
{
	VK_TEXT,
	VK_NUMBER,
	VK_BOOL,
	VK_JSONB,
	VK_DATETIME					/* ISO 8601 whatever the session's DateStyle */
} ValueKind;

typedef struct TrackedColumn
{
	AttrNumber	attnum;			/* 1-based, in the row's relation */
	char	   *name;
	bool		excluded;
	bool		hashed;
	ValueKind	kind;
	Oid			type;
	bool		byval;
	int16		len;
	FmgrInfo	output;
} TrackedColumn;

enum
{
	OP_INSERT, OP_UPDATE, OP_DELETE, OP_TRUNCATE, OP_COUNT
};
static const char *const op_names[OP_COUNT] = {"insert", "update", "delete", "truncate"};
static const char *const op_sql[OP_COUNT] = {"INSERT", "UPDATE", "DELETE", "TRUNCATE"};

typedef struct TrackedTable
{
	Oid			relid;			/* hash key: the row's relation */
	bool		valid;
	bool		tracked;
	bool		ops[OP_COUNT];
	bool		full_rows;
	char	   *table;			/* the tracked table, schema-qualified */
	Datum		actions[OP_COUNT];	/* text: '<table>.insert', ... */
	Datum		table_text;		/* text: the table, for target_resource_type */
	Datum		classification; /* text */
	Datum		retention;		/* text */
	char	   *fixed_org;
	int			org_col;		/* index into cols, -1: none */
	int			ncols;
	TrackedColumn *cols;
	int		   *json_order;		/* indexes into cols, in jsonb's key order */
	int			nkeys;
	int		   *keys;			/* indexes into cols, in key order */
	Oid			owner;			/* the extension's owner, who writes the events */
	MemoryContext cxt;
} TrackedTable;

static HTAB *tracked_cache = NULL;
static Oid	registry_relid = InvalidOid;

/*
 * The actions of tracked tables ('<table>.insert', '.update', '.delete',
 * '.truncate') are the trigger's to write: the stamping refuses them in any
 * other INSERT (audit_action_is_tracked_change).  The tracked tables' action
 * prefixes ('<table>.') are loaded when such an action comes, and dropped on
 * every relcache invalidation (tracking a table creates its triggers, a
 * rename or untracking changes a relation: all send one; the registry's own
 * rows do not) and on a schema rename.  Only actions with those suffixes
 * written by hand pay for a reload, one query after some DDL or VACUUM.
 */
static bool tracked_event_in_progress = false;
static bool prefixes_valid = false;
static MemoryContext prefix_cxt = NULL;
static int	nprefixes = 0;
static char **prefixes = NULL;
static char *client_addr = NULL;	/* the session's client, NULL for a Unix socket */
static bool client_addr_known = false;

/*
 * invalidate
 *		Relcache callback: a change of the table, or of the registry (or a
 *		reset), drops what was loaded; any change drops the action prefixes.
 */
static void
invalidate(Datum arg, Oid relid)
{
	HASH_SEQ_STATUS seq;
	TrackedTable *t;

	prefixes_valid = false;
	if (tracked_cache == NULL)
		return;
	if (!OidIsValid(relid) || relid == registry_relid)
	{
		hash_seq_init(&seq, tracked_cache);
		while ((t = hash_seq_search(&seq)) != NULL)
			t->valid = false;
		return;
	}
	t = hash_search(tracked_cache, &relid, HASH_FIND, NULL);
	if (t != NULL)
		t->valid = false;
}

/* Syscache callback: a renamed schema renames its tables' actions. */
static void
invalidate_namespaces(Datum arg, int cacheid, uint32 hashvalue)
{
	prefixes_valid = false;
}

void
audit_change_tracking_init(void)
{
	CacheRegisterRelcacheCallback(invalidate, (Datum) 0);
	CacheRegisterSyscacheCallback(NAMESPACEOID, invalidate_namespaces, (Datum) 0);
}

/* The action prefix of a table: '<name>.' in schema public, else '<schema>.<name>.'. */
static char *
action_prefix(const char *nsp, const char *relname)
{
	return strcmp(nsp, "public") == 0 ? psprintf("%s.", relname) : psprintf("%s.%s.", nsp, relname);
}

/*
 * registry_read
 *		Call reader(arg) connected to SPI, with search_path pinned and as
 *		owner (the extension's owner: audit.tracked_table is not readable by
 *		every role whose changes or events reach this file).
 */
static void
registry_read(Oid owner, void (*reader) (void *arg), void *arg)
{
	Oid			save_userid;
	int			save_sec;
	int			nestlevel;

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	nestlevel = audit_pin_search_path();
	GetUserIdAndSecContext(&save_userid, &save_sec);
	SetUserIdAndSecContext(owner, save_sec | SECURITY_LOCAL_USERID_CHANGE | SECURITY_NOFORCE_RLS);
	PG_TRY();
	{
		reader(arg);
	}
	PG_FINALLY();
	{
		SetUserIdAndSecContext(save_userid, save_sec);
	}
	PG_END_TRY();
	AtEOXact_GUC(true, nestlevel);
	SPI_finish();
}

/* registry_read() reader: the action prefixes, into prefix_cxt. */
static void
read_action_prefixes(void *arg)
{
	MemoryContext old;

	if (SPI_execute("SELECT n.nspname::text, c.relname::text FROM audit.tracked_table t"
					" JOIN pg_catalog.pg_class c ON c.oid = t.table_name"
					" JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace", true, 0) != SPI_OK_SELECT)
		elog(ERROR, "audit_db: reading audit.tracked_table failed");
	old = MemoryContextSwitchTo(prefix_cxt);
	prefixes = palloc(Max(1, SPI_processed) * sizeof(char *));
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		HeapTuple	row = SPI_tuptable->vals[i];
		TupleDesc	rd = SPI_tuptable->tupdesc;

		prefixes[nprefixes++] = action_prefix(SPI_getvalue(row, rd, 1), SPI_getvalue(row, rd, 2));
	}
	MemoryContextSwitchTo(old);
}

/* Load the tracked tables' action prefixes. */
static void
load_action_prefixes(void)
{
	if (prefix_cxt == NULL)
		prefix_cxt = AllocSetContextCreate(CacheMemoryContext, "audit_db tracked actions", ALLOCSET_SMALL_SIZES);
	else
		MemoryContextReset(prefix_cxt);
	nprefixes = 0;
	prefixes = NULL;
	registry_relid = audit_tenancy_relid("tracked_table");
	if (OidIsValid(registry_relid))		/* else the extension is being dropped */
		registry_read(audit_extension_owner(), read_action_prefixes, NULL);
}

bool
audit_action_is_tracked_change(const char *action, int len)
{
	int			dot = len - 1;
	const char *op;
	int			oplen;

	if (tracked_event_in_progress)
		return false;
	while (dot > 0 && action[dot] != '.')
		dot--;
	if (dot <= 0)
		return false;
	op = action + dot + 1;
	oplen = len - dot - 1;
	if (!((oplen == 6 && (memcmp(op, "insert", 6) == 0 || memcmp(op, "update", 6) == 0 ||
						  memcmp(op, "delete", 6) == 0)) ||
		  (oplen == 8 && memcmp(op, "truncate", 8) == 0)))
		return false;

	if (!prefixes_valid)
	{
		prefixes_valid = true;	/* an invalidation during the load clears it again */
		PG_TRY();
		{
			load_action_prefixes();
		}
		PG_CATCH();
		{
			prefixes_valid = false;
			nprefixes = 0;
			PG_RE_THROW();
		}
		PG_END_TRY();
	}
	for (int i = 0; i < nprefixes; i++)
		if ((int) strlen(prefixes[i]) == dot + 1 && memcmp(prefixes[i], action, dot + 1) == 0)
			return true;
	return false;
}

/* The kind of JSON value a column's type becomes. */
static ValueKind
value_kind(Oid type)
{
	switch (type)
	{
		case INT2OID:
		case INT4OID:
		case INT8OID:
		case NUMERICOID:
			return VK_NUMBER;
		case BOOLOID:
			return VK_BOOL;
		case JSONBOID:
			return VK_JSONB;
		case DATEOID:
		case TIMEOID:
		case TIMETZOID:
		case TIMESTAMPOID:
		case TIMESTAMPTZOID:
			return VK_DATETIME;
		default:
			return VK_TEXT;
	}
}

/* jsonb's order of object keys: shorter first, then bytewise. */
static int
json_key_cmp(const char *a, const char *b)
{
	size_t		la = strlen(a);
	size_t		lb = strlen(b);

	if (la != lb)
		return la < lb ? -1 : 1;
	return memcmp(a, b, la);
}

/* qsort_arg comparator: two indexes into the TrackedColumn array arg. */
static int
column_json_cmp(const void *a, const void *b, void *arg)
{
	TrackedColumn *cols = (TrackedColumn *) arg;

	return json_key_cmp(cols[*(const int *) a].name, cols[*(const int *) b].name);
}

/* Whether name is one of the elements of a text[] datum. */
static bool
array_has_name(Datum arr, bool isnull, const char *name)
{
	Datum	   *elems;
	bool	   *nulls;
	int			n;

	if (isnull)
		return false;
	deconstruct_array(DatumGetArrayTypeP(arr), TEXTOID, -1, false, TYPALIGN_INT, &elems, &nulls, &n);
	for (int i = 0; i < n; i++)
		if (!nulls[i] && strcmp(TextDatumGetCString(elems[i]), name) == 0)
			return true;
	return false;
}

/* What load() hands its registry_read() reader. */
typedef struct LoadArgs
{
	TrackedTable *t;
	TupleDesc	desc;			/* of the row's relation */
	Datum		oids;			/* oid[]: the relation, then its ancestors */
} LoadArgs;

/* registry_read() reader: the options of the nearest registered relation, into t. */
static void
read_table_options(void *arg)
{
	LoadArgs   *la = (LoadArgs *) arg;
	TrackedTable *t = la->t;
	TupleDesc	desc = la->desc;
	MemoryContext old;

	/* The nearest registered relation: itself, else its closest ancestor. */
	if (SPI_execute_with_args("SELECT t.operations, audit.column_names(t.table_name, t.excluded_attnums),"
							  " audit.column_names(t.table_name, t.hashed_attnums), t.full_rows,"
							  " t.data_classification::text, t.retention_policy::text,"
							  " (audit.column_names(t.table_name, ARRAY[t.organization_attnum]))[1],"
							  " t.organization_id::text, t.table_name::oid"
							  " FROM audit.tracked_table t, unnest($1) WITH ORDINALITY AS r(oid, n)"
							  " WHERE t.table_name = r.oid ORDER BY r.n LIMIT 1",
							  1, (Oid[]) {OIDARRAYOID}, &la->oids, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "audit_db: reading audit.tracked_table failed");
	if (SPI_processed == 1)
	{
		HeapTuple	row = SPI_tuptable->vals[0];
		TupleDesc	rd = SPI_tuptable->tupdesc;
		bool		isnull[9];
		Datum		v[9];
		Datum	   *ops;
		bool	   *opnulls;
		int			nops;
		Oid			tracked_relid;
		char	   *nsp;
		char	   *relname;

		for (int k = 0; k < 9; k++)
			v[k] = SPI_getbinval(row, rd, k + 1, &isnull[k]);
		old = MemoryContextSwitchTo(t->cxt);
		t->tracked = true;
		memset(t->ops, 0, sizeof(t->ops));
		deconstruct_array(DatumGetArrayTypeP(v[0]), TEXTOID, -1, false, TYPALIGN_INT, &ops, &opnulls, &nops);
		for (int k = 0; k < nops; k++)
			for (int o = 0; o < OP_COUNT; o++)
				if (!opnulls[k] && strcmp(TextDatumGetCString(ops[k]), op_sql[o]) == 0)
					t->ops[o] = true;
		t->full_rows = DatumGetBool(v[3]);
		t->classification = datumCopy(v[4], false, -1);
		t->retention = datumCopy(v[5], false, -1);
		t->fixed_org = isnull[7] ? NULL : TextDatumGetCString(v[7]);
		tracked_relid = DatumGetObjectId(v[8]);
		nsp = get_namespace_name(get_rel_namespace(tracked_relid));
		relname = get_rel_name(tracked_relid);
		t->table = psprintf("%s.%s", nsp, relname);
		t->table_text = CStringGetTextDatum(t->table);
		for (int o = 0; o < OP_COUNT; o++)
			t->actions[o] = CStringGetTextDatum(psprintf("%s%s", action_prefix(nsp, relname), op_names[o]));

		t->cols = palloc0(desc->natts * sizeof(TrackedColumn));
		for (int a = 0; a < desc->natts; a++)
		{
			Form_pg_attribute att = TupleDescAttr(desc, a);
			TrackedColumn *c;
			Oid			outfn;
			bool		varlena;

			if (att->attisdropped)
				continue;
			c = &t->cols[t->ncols];
			c->attnum = att->attnum;
			c->name = pstrdup(NameStr(att->attname));
			c->excluded = array_has_name(v[1], isnull[1], c->name);
			c->hashed = array_has_name(v[2], isnull[2], c->name);
			c->kind = value_kind(att->atttypid);
			c->type = att->atttypid;
			c->byval = att->attbyval;
			c->len = att->attlen;
			getTypeOutputInfo(att->atttypid, &outfn, &varlena);
			fmgr_info_cxt(outfn, &c->output, t->cxt);
			if (!isnull[6] && strcmp(c->name, TextDatumGetCString(v[6])) == 0)
				t->org_col = t->ncols;
			t->ncols++;
		}
		t->json_order = palloc(Max(1, t->ncols) * sizeof(int));
		for (int k = 0; k < t->ncols; k++)
			t->json_order[k] = k;
		qsort_arg(t->json_order, t->ncols, sizeof(int), column_json_cmp, t->cols);
		MemoryContextSwitchTo(old);
	}
}

/*
 * load
 *		Fill t for the row's relation rel: the registry row of rel or of the
 *		partitioned table it belongs to, read as the extension's owner.
 */
static void
load(TrackedTable *t, Relation rel)
{
	Oid			relid = RelationGetRelid(rel);
	List	   *ancestors = get_partition_ancestors(relid);
	Datum	   *oids;
	int			noids = 1 + list_length(ancestors);
	ListCell   *lc;
	int			i = 0;
	LoadArgs	la;
	Oid			pkidx;

	if (t->cxt == NULL)
		t->cxt = AllocSetContextCreate(CacheMemoryContext, "audit_db tracked table", ALLOCSET_SMALL_SIZES);
	else
		MemoryContextReset(t->cxt);
	t->tracked = false;
	t->cols = NULL;
	t->ncols = 0;
	t->nkeys = 0;
	t->org_col = -1;

	registry_relid = audit_tenancy_relid("tracked_table");
	if (!OidIsValid(registry_relid))
	{
		t->valid = true;
		return;					/* the extension is being dropped */
	}
	t->owner = audit_extension_owner();

	oids = palloc(noids * sizeof(Datum));
	oids[i++] = ObjectIdGetDatum(relid);
	foreach(lc, ancestors)
		oids[i++] = ObjectIdGetDatum(lfirst_oid(lc));
	la.t = t;
	la.desc = RelationGetDescr(rel);
	la.oids = PointerGetDatum(construct_array(oids, noids, OIDOID, sizeof(Oid), true, TYPALIGN_INT));
	registry_read(t->owner, read_table_options, &la);

	/* The primary key of the row's relation, in key order. */
	pkidx = t->tracked ? RelationGetPrimaryKeyIndex(rel) : InvalidOid;
	if (OidIsValid(pkidx))
	{
		HeapTuple	idx = SearchSysCache1(INDEXRELID, ObjectIdGetDatum(pkidx));

		if (HeapTupleIsValid(idx))
		{
			Form_pg_index form = (Form_pg_index) GETSTRUCT(idx);

			t->keys = MemoryContextAlloc(t->cxt, Max(1, form->indnkeyatts) * sizeof(int));
			for (int k = 0; k < form->indnkeyatts; k++)
				for (int c = 0; c < t->ncols; c++)
					if (t->cols[c].attnum == form->indkey.values[k])
						t->keys[t->nkeys++] = c;
			ReleaseSysCache(idx);
		}
	}
	t->valid = true;
}

/* The cached entry of rel, loaded when needed. */
static TrackedTable *
tracked_table_for(Relation rel)
{
	Oid			relid = RelationGetRelid(rel);
	TrackedTable *t;
	bool		found;

	if (tracked_cache == NULL)
	{
		HASHCTL		ctl;

		ctl.keysize = sizeof(Oid);
		ctl.entrysize = sizeof(TrackedTable);
		ctl.hcxt = CacheMemoryContext;
		tracked_cache = hash_create("audit_db tracked tables", 32, &ctl, HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	}
	t = hash_search(tracked_cache, &relid, HASH_ENTER, &found);
	if (!found)
	{
		t->valid = false;
		t->cxt = NULL;
	}
	if (!t->valid)
	{
		t->valid = true;		/* an invalidation during the load clears it again */
		PG_TRY();
		{
			load(t, rel);
		}
		PG_CATCH();
		{
			t->valid = false;
			PG_RE_THROW();
		}
		PG_END_TRY();
	}
	return t;
}

/*
 * value_text
 *		Text of a column's value (palloc'd): its output function, except
 *		for dates and times, written in ISO 8601 as JSON does, so that the
 *		session's DateStyle does not change what is recorded.
 */
static char *
value_text(TrackedColumn *c, Datum value)
{
	if (c->kind == VK_DATETIME)
		return JsonEncodeDateTime(NULL, value, c->type, NULL);
	return OutputFunctionCall(&c->output, value);
}

/*
 * The details document is built as a JsonbValue tree and converted once
 * (JsonbValueToJsonb), not token by token through pushJsonbValue(), which
 * copies every key and value into its parse state and sorts each object's
 * keys when it closes.  The keys are added here already in jsonb's storage
 * order (shorter keys first, then bytewise): the fixed keys are listed in
 * that order below, a table's column names are sorted once when it is
 * loaded (TrackedTable.json_order).  The result is byte for byte the jsonb
 * pushJsonbValue() would build.
 */

/* A JSON object with room for npairs keys. */
static JsonbValue *
new_object(int npairs)
{
	JsonbValue *obj = palloc(sizeof(JsonbValue));

	obj->type = jbvObject;
	obj->val.object.nPairs = 0;
	obj->val.object.pairs = palloc(Max(1, npairs) * sizeof(JsonbPair));
	return obj;
}

/*
 * add_key
 *		Append key to obj and return its value, for the caller to fill.  Keys
 *		must come in jsonb's order (json_key_cmp) and be unique.
 */
static JsonbValue *
add_key(JsonbValue *obj, const char *key)
{
	JsonbPair  *p = &obj->val.object.pairs[obj->val.object.nPairs];

	p->key.type = jbvString;
	p->key.val.string.val = (char *) key;
	p->key.val.string.len = strlen(key);
	p->order = obj->val.object.nPairs;
	Assert(obj->val.object.nPairs == 0 ||
		   json_key_cmp(obj->val.object.pairs[obj->val.object.nPairs - 1].key.val.string.val, key) < 0);
	obj->val.object.nPairs++;
	return &p->value;
}

/* s as a JSON string, NULL as JSON null. */
static void
set_string(JsonbValue *v, const char *s)
{
	if (s == NULL)
		v->type = jbvNull;
	else
	{
		v->type = jbvString;
		v->val.string.val = (char *) s;
		v->val.string.len = strlen(s);
	}
}

/* prefix followed by the SHA-256 of len bytes of data, in hex (palloc'd). */
static char *
sha256_hex(const char *prefix, const char *data, size_t len)
{
	uint8		digest[AUDIT_HASH_LEN];
	size_t		plen = strlen(prefix);
	char	   *out = palloc(plen + 2 * AUDIT_HASH_LEN + 1);

	audit_sha256(data, len, digest);
	memcpy(out, prefix, plen);
	hex_encode((const char *) digest, AUDIT_HASH_LEN, out + plen);
	out[plen + 2 * AUDIT_HASH_LEN] = '\0';
	return out;
}

/*
 * set_jsonb
 *		A jsonb column's value, unpacked into a JsonbValue tree (the binary
 *		form cannot be nested as it is: JsonbValueToJsonb() converts only
 *		trees).
 */
static void
set_jsonb(JsonbValue *v, Jsonb *jb)
{
	JsonbIterator *it;
	JsonbParseState *st = NULL;
	JsonbValue	tok;
	JsonbIteratorToken r;
	JsonbValue *res = NULL;

	if (JB_ROOT_IS_SCALAR(jb))
	{
		(void) JsonbExtractScalar(&jb->root, v);
		return;
	}
	it = JsonbIteratorInit(&jb->root);
	while ((r = JsonbIteratorNext(&it, &tok, false)) != WJB_DONE)
		res = pushJsonbValue(&st, r, r < WJB_BEGIN_ARRAY ? &tok : NULL);
	*v = *res;
}

/* One column's value as a JSON value. */
static void
set_value(JsonbValue *v, TrackedColumn *c, Datum value, bool isnull)
{
	char	   *text;

	if (isnull)
	{
		v->type = jbvNull;
		return;
	}
	if (c->hashed)
	{
		text = value_text(c, value);
		set_string(v, sha256_hex("sha256:", text, strlen(text)));
		return;
	}
	switch (c->kind)
	{
		case VK_BOOL:
			v->type = jbvBool;
			v->val.boolean = DatumGetBool(value);
			return;
		case VK_NUMBER:
			v->type = jbvNumeric;
			switch (c->type)
			{
				case INT2OID:
					v->val.numeric = int64_to_numeric(DatumGetInt16(value));
					return;
				case INT4OID:
					v->val.numeric = int64_to_numeric(DatumGetInt32(value));
					return;
				case INT8OID:
					v->val.numeric = int64_to_numeric(DatumGetInt64(value));
					return;
				default:
					/* numeric: NaN and the infinities are not JSON numbers */
					v->val.numeric = DatumGetNumeric(value);
					if (numeric_is_nan(v->val.numeric) || numeric_is_inf(v->val.numeric))
						set_string(v, value_text(c, value));
					return;
			}
		case VK_JSONB:
			set_jsonb(v, DatumGetJsonbP(value));
			return;
		default:
			set_string(v, value_text(c, value));
			return;
	}
}

/*
 * row_object
 *		A row as a JSON object: its tracked columns (not the excluded ones),
 *		or only those marked in only.
 */
static JsonbValue *
row_object(TrackedTable *t, HeapTuple tuple, TupleDesc desc, const bool *only)
{
	JsonbValue *obj = new_object(t->ncols);

	for (int k = 0; k < t->ncols; k++)
	{
		int			i = t->json_order[k];
		TrackedColumn *c = &t->cols[i];
		bool		isnull;
		Datum		value;

		if (c->excluded || (only != NULL && !only[i]))
			continue;
		value = heap_getattr(tuple, c->attnum, desc, &isnull);
		set_value(add_key(obj, c->name), c, value, isnull);
	}
	return obj;
}

/*
 * row_identity
 *		The primary key of the row as text (a JSON array of texts for a
 *		composite key), or 'row:' and the SHA-256 of all its values.
 */
static char *
row_identity(TrackedTable *t, HeapTuple tuple, TupleDesc desc)
{
	StringInfoData s;

	initStringInfo(&s);
	if (t->nkeys == 1)
	{
		bool		isnull;
		Datum		v = heap_getattr(tuple, t->cols[t->keys[0]].attnum, desc, &isnull);

		return isnull ? NULL : value_text(&t->cols[t->keys[0]], v);
	}
	if (t->nkeys > 1)
	{
		appendStringInfoChar(&s, '[');
		for (int k = 0; k < t->nkeys; k++)
		{
			TrackedColumn *c = &t->cols[t->keys[k]];
			bool		isnull;
			Datum		v = heap_getattr(tuple, c->attnum, desc, &isnull);

			if (k > 0)
				appendStringInfoString(&s, ", ");
			if (isnull)
				appendStringInfoString(&s, "null");
			else
				escape_json(&s, value_text(c, v));
		}
		appendStringInfoChar(&s, ']');
		return s.data;
	}
	/* No primary key: length-prefixed texts of every column (NULL: 0xff). */
	for (int i = 0; i < t->ncols; i++)
	{
		bool		isnull;
		Datum		v = heap_getattr(tuple, t->cols[i].attnum, desc, &isnull);

		if (isnull)
			appendStringInfoChar(&s, (char) 0xff);
		else
		{
			char	   *text = value_text(&t->cols[i], v);
			uint32		len = strlen(text);
			uint8		n[4] = {(uint8) (len >> 24), (uint8) (len >> 16), (uint8) (len >> 8), (uint8) len};

			appendBinaryStringInfo(&s, (char *) n, 4);
			appendBinaryStringInfo(&s, text, len);
		}
	}
	return sha256_hex("row:", s.data, s.len);
}

/*
 * actor_object
 *		Who made the change, really.  Its keys in jsonb's order: client_addr,
 *		current_user, session_user, transaction_id, application_name.
 */
static JsonbValue *
actor_object(void)
{
	const char *app = GetConfigOption("application_name", true, false);
	JsonbValue *obj = new_object(5);

	/* The client's address does not change during a session: read it once. */
	if (!client_addr_known)
	{
		LOCAL_FCINFO(addr_fcinfo, 0);
		Datum		inet;

		InitFunctionCallInfoData(*addr_fcinfo, NULL, 0, InvalidOid, NULL, NULL);
		inet = inet_client_addr(addr_fcinfo);	/* NULL over a Unix socket */
		if (!addr_fcinfo->isnull)
			client_addr = MemoryContextStrdup(TopMemoryContext,
											  DatumGetCString(DirectFunctionCall1(inet_out, inet)));
		client_addr_known = true;
	}

	set_string(add_key(obj, "client_addr"), client_addr);
	set_string(add_key(obj, "current_user"), GetUserNameFromId(GetUserId(), false));
	set_string(add_key(obj, "session_user"), GetUserNameFromId(GetSessionUserId(), false));
	set_string(add_key(obj, "transaction_id"),
			   psprintf(UINT64_FORMAT, U64FromFullTransactionId(GetTopFullTransactionId())));
	set_string(add_key(obj, "application_name"), app && app[0] ? app : NULL);
	return obj;
}

/*
 * statement_correlation_id
 *		'stmt:<pid>.<transaction>.<command>' as text: the correlation id of
 *		every event of the statement whose triggers are firing.  Kept from
 *		one row to the next of the same statement.
 */
static Datum
statement_correlation_id(void)
{
	static FullTransactionId xid;
	static CommandId cid = InvalidCommandId;
	static Datum text = (Datum) 0;
	FullTransactionId cur_xid = GetTopFullTransactionId();
	CommandId	cur_cid = audit_event_statement_cid();

	if (text == (Datum) 0 || cur_cid != cid || !FullTransactionIdEquals(cur_xid, xid))
	{
		char	   *id = psprintf("stmt:%d." UINT64_FORMAT ".%u", MyProcPid,
								  U64FromFullTransactionId(cur_xid), cur_cid);
		MemoryContext old = MemoryContextSwitchTo(TopMemoryContext);
		Datum		fresh = CStringGetTextDatum(id);

		MemoryContextSwitchTo(old);
		if (text != (Datum) 0)
			pfree(DatumGetPointer(text));
		text = fresh;
		xid = cur_xid;
		cid = cur_cid;
	}
	return text;
}

/*
 * write_event
 *		Write the event into audit.audit_log as the extension's owner, through
 *		the event writer (event_writer.c): no SQL per row.
 */
static void
write_event(TrackedTable *t, int op, const char *target_id, const char *organization, Jsonb *details)
{
	AuditEventValues ev;
	const char *principal;
	const char *session_org;
	Oid			save_userid;
	int			save_sec;

	audit_session_identity(&session_org, &principal);
	if (organization == NULL)
		organization = t->fixed_org ? t->fixed_org : session_org;

	audit_event_values_init(&ev);
#define SETV(c, v) (ev.values[c] = (v), ev.nulls[c] = false)
	SETV(AC_ACTION, t->actions[op]);
	if (principal)
		SETV(AC_PRINCIPAL_ID, CStringGetTextDatum(principal));
	if (organization)
		SETV(AC_ORGANIZATION_ID, CStringGetTextDatum(organization));
	SETV(AC_TARGET_RESOURCE_TYPE, t->table_text);
	if (target_id)
		SETV(AC_TARGET_RESOURCE_ID, CStringGetTextDatum(target_id));
	SETV(AC_DATA_CLASSIFICATION, t->classification);
	SETV(AC_RETENTION_POLICY, t->retention);
	SETV(AC_CORRELATION_ID, statement_correlation_id());
	SETV(AC_DETAILS, JsonbPGetDatum(details));
#undef SETV

	GetUserIdAndSecContext(&save_userid, &save_sec);
	SetUserIdAndSecContext(t->owner, save_sec | SECURITY_LOCAL_USERID_CHANGE | SECURITY_NOFORCE_RLS);
	tracked_event_in_progress = true;
	PG_TRY();
	{
		audit_event_write(&ev);
	}
	PG_FINALLY();
	{
		tracked_event_in_progress = false;
		SetUserIdAndSecContext(save_userid, save_sec);
	}
	PG_END_TRY();
}

PG_FUNCTION_INFO_V1(audit_record_change);

/*
 * audit_record_change
 *		Trigger function audit.record_change(): AFTER INSERT OR UPDATE OR
 *		DELETE FOR EACH ROW and AFTER TRUNCATE FOR EACH STATEMENT on tracked
 *		tables (audit.track_table() creates the triggers).
 */
Datum
audit_record_change(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;
	TrackedTable *t;
	TupleDesc	desc;
	HeapTuple	old_row = NULL;
	HeapTuple	new_row = NULL;
	int			op;
	JsonbValue *doc;
	bool	   *changed = NULL;
	const char *organization = NULL;
	char	   *target_id = NULL;

	if (!CALLED_AS_TRIGGER(fcinfo) || !TRIGGER_FIRED_AFTER(trigdata->tg_event))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("audit.record_change() must be fired as an AFTER trigger"),
				 errhint("audit.track_table() creates its triggers; do not attach it yourself.")));

	t = tracked_table_for(trigdata->tg_relation);
	if (!t->tracked)
		return PointerGetDatum(NULL);	/* a leftover trigger: not tracked any more */
	desc = RelationGetDescr(trigdata->tg_relation);

	if (TRIGGER_FIRED_BY_TRUNCATE(trigdata->tg_event))
		op = OP_TRUNCATE;
	else if (!TRIGGER_FIRED_FOR_ROW(trigdata->tg_event))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("audit.record_change() must be fired for each row, except for TRUNCATE"),
				 errhint("audit.track_table() creates its triggers; do not attach it yourself.")));
	else if (TRIGGER_FIRED_BY_INSERT(trigdata->tg_event))
	{
		op = OP_INSERT;
		new_row = trigdata->tg_trigtuple;
	}
	else if (TRIGGER_FIRED_BY_UPDATE(trigdata->tg_event))
	{
		op = OP_UPDATE;
		old_row = trigdata->tg_trigtuple;
		new_row = trigdata->tg_newtuple;
	}
	else
	{
		op = OP_DELETE;
		old_row = trigdata->tg_trigtuple;
	}
	if (!t->ops[op])
		return PointerGetDatum(NULL);

	if (op == OP_UPDATE)
	{
		changed = palloc0(Max(1, t->ncols) * sizeof(bool));
		for (int i = 0; i < t->ncols; i++)
		{
			TrackedColumn *c = &t->cols[i];
			bool		n1,
						n2;
			Datum		v1 = heap_getattr(old_row, c->attnum, desc, &n1);
			Datum		v2 = heap_getattr(new_row, c->attnum, desc, &n2);

			changed[i] = (n1 != n2) || (!n1 && !datumIsEqual(v1, v2, c->byval, c->len));
		}
	}

	/* The keys in jsonb's order: new, old, actor, table, changed, operation. */
	doc = new_object(6);
	if (new_row)
		*add_key(doc, "new") = *row_object(t, new_row, desc, t->full_rows ? NULL : changed);
	if (old_row)
		*add_key(doc, "old") = *row_object(t, old_row, desc, t->full_rows ? NULL : changed);
	*add_key(doc, "actor") = *actor_object();
	set_string(add_key(doc, "table"), t->table);
	if (changed)
	{
		JsonbValue *names = add_key(doc, "changed");

		names->type = jbvArray;
		names->val.array.rawScalar = false;
		names->val.array.nElems = 0;
		names->val.array.elems = palloc(Max(1, t->ncols) * sizeof(JsonbValue));
		for (int i = 0; i < t->ncols; i++)
			if (changed[i] && !t->cols[i].excluded)
				set_string(&names->val.array.elems[names->val.array.nElems++], t->cols[i].name);
	}
	set_string(add_key(doc, "operation"), op_names[op]);

	if (op != OP_TRUNCATE)
	{
		HeapTuple	row = new_row ? new_row : old_row;

		target_id = row_identity(t, op == OP_UPDATE ? (t->nkeys > 0 ? new_row : old_row) : row, desc);
		if (t->org_col >= 0)
		{
			bool		isnull;
			Datum		v = heap_getattr(row, t->cols[t->org_col].attnum, desc, &isnull);

			if (!isnull)
				organization = value_text(&t->cols[t->org_col], v);
		}
	}
	write_event(t, op, target_id, organization, JsonbValueToJsonb(doc));
	return PointerGetDatum(NULL);
}

PG_FUNCTION_INFO_V1(audit_record_tracking_event_sql);

/*
 * audit.record_tracking_event(action text, tbl text, details jsonb) returns void
 *		Log a 'change_tracking.' event about a table (switched on or off,
 *		DDL, dropped), as the extension's owner and attributed to the
 *		caller.  Internal to src/sql/77_change_tracking.sql.
 */
Datum
audit_record_tracking_event_sql(PG_FUNCTION_ARGS)
{
	char	   *action;

	if (PG_ARGISNULL(0) || PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("a change-tracking event needs an action and a table"),
				 errhint("audit.record_tracking_event() is internal to audit.track_table().")));
	action = text_to_cstring(PG_GETARG_TEXT_PP(0));
	if (strncmp(action, "change_tracking.", 16) != 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("\"%s\" is not a change-tracking action", action),
				 errhint("Change-tracking actions start with \"change_tracking.\".")));
	audit_record_administrative_event(action, NULL, "table", text_to_cstring(PG_GETARG_TEXT_PP(1)),
									  PG_ARGISNULL(2) ? NULL : PG_GETARG_JSONB_P(2));
	PG_RETURN_VOID();
}
