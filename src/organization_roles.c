/*-------------------------------------------------------------------------
 *
 * organization_roles.c
 *	  Who may do what inside an organization: organization roles with
 *	  permissions ({resource, action} patterns) and inherited roles,
 *	  assigned to principals; the checks policies call.
 *
 * A principal's effective permissions in an organization are the union of
 * the permissions of every role assigned to it there and of every role
 * those inherit, at any depth.  They are computed once per (organization,
 * principal) and kept in a per-backend cache; a check is then a hash lookup
 * and a scan of a short list of patterns.
 *
 * The cache reads audit.organization_role and
 * audit.organization_role_assignment directly (index scans with a fresh
 * snapshot), not through SQL: no row-level security or table privilege of
 * the checking role applies, and a policy that calls a check cannot recurse
 * into itself.  Any change to either table (or to organization_access)
 * fires audit.log_organization_change(), which queues a relcache
 * invalidation of the changed table; every backend's callback then drops
 * its cache, and tenancy.c takes in the invalidations at each session's
 * next statement, so a revoked permission stops working there.
 *
 * Writes of roles are checked by audit.check_organization_role(): the
 * permission list's shape, inherited roles that exist, and no inheritance
 * cycle.  Changes to roles are serialized by a table lock taken before the
 * statement locks any row, and the checks read the latest committed
 * roles, so two concurrent changes cannot close a cycle between them.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/skey.h"
#include "access/table.h"
#include "access/xact.h"
#include "catalog/pg_type.h"
#include "commands/trigger.h"
#include "common/hashfn.h"
#include "funcapi.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/inval.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/relcache.h"
#include "storage/lmgr.h"

#include "audit_db.h"
#include "organization_roles.h"
#include "tenancy.h"

/* Longest resource or action pattern, in bytes. */
#define MAX_PATTERN_BYTES		255

/* Most roles one principal's permissions may pass through (a guard, not a design limit). */
#define MAX_ROLES_WALKED		10000

/*
 * Most (organization, principal) permission sets cached per backend (about
 * 400 bytes each); past it, a quarter of the buckets, in turn, are emptied.
 */
#define MAX_CACHED_SETS			50000

typedef struct Permission
{
	char	   *resource;
	int			resource_len;
	char	   *action;
	int			action_len;
} Permission;

typedef struct PermissionSet
{
	struct PermissionSet *next; /* hash chain */
	uint32		hash;
	char	   *organization;
	int			organization_len;
	char	   *principal;
	int			principal_len;
	bool		everything;		/* holds ('*', '*') */
	int			count;
	Permission *items;
} PermissionSet;

static MemoryContext perm_cxt = NULL;
static PermissionSet **perm_buckets = NULL;
static int	perm_nbuckets = 0;
static int	perm_count = 0;
static PermissionSet *perm_last = NULL;

/* Bumped by the invalidation callback; a cache built at an older one is stale. */
static uint64 perm_generation = 1;
static uint64 perm_built_generation = 0;

/* The tables whose changes invalidate the cache, as last looked up. */
static Oid	role_relid = InvalidOid;
static Oid	assignment_relid = InvalidOid;

/* A change to either table (or to every relation; or before they were found) empties the cache. */
static void
roles_relcache_callback(Datum arg, Oid relid)
{
	if (!OidIsValid(relid) || !OidIsValid(role_relid) || !OidIsValid(assignment_relid) ||
		relid == role_relid || relid == assignment_relid)
		perm_generation++;
}

void
audit_organization_roles_init(void)
{
	CacheRegisterRelcacheCallback(roles_relcache_callback, (Datum) 0);
}

/* ---------------------------------------------------------------------
 * Reading roles and assignments
 * ---------------------------------------------------------------------
 */

/* Open one of the role tables, or error if the extension's schema lacks it. */
static Relation
open_role_table(const char *relname, Oid *relid_out)
{
	Oid			relid = audit_tenancy_relid(relname);

	if (!OidIsValid(relid))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("table audit.%s does not exist", relname),
				 errhint("Is the audit_db extension installed in this database?")));
	*relid_out = relid;
	return table_open(relid, AccessShareLock);
}

/*
 * scan_by_keys
 *		Index scan of rel's primary key on its leading columns (given as
 *		text values; the key columns are COLLATE "C"), with a fresh snapshot.
 */
static SysScanDesc
scan_by_keys(Relation rel, int nkeys, const AttrNumber *attnos, const char *const *values, ScanKeyData *keys)
{
	for (int i = 0; i < nkeys; i++)
		ScanKeyInit(&keys[i], attnos[i], BTEqualStrategyNumber, F_TEXTEQ, CStringGetTextDatum(values[i]));
	return systable_beginscan(rel, RelationGetPrimaryKeyIndex(rel), true, NULL, nkeys, keys);
}

typedef struct RoleRow
{
	bool		found;
	Jsonb	   *permissions;	/* palloc'd copy */
	int			ninherits;
	char	  **inherits;
} RoleRow;

/* Decode a text[] into C strings; NULL elements become NULL pointers. */
static void
text_array_to_cstrings(Datum arr, int *n, char ***out)
{
	Datum	   *elems;
	bool	   *nulls;

	deconstruct_array(DatumGetArrayTypeP(arr), TEXTOID, -1, false, TYPALIGN_INT, &elems, &nulls, n);
	*out = palloc(sizeof(char *) * Max(*n, 1));
	for (int i = 0; i < *n; i++)
		(*out)[i] = nulls[i] ? NULL : TextDatumGetCString(elems[i]);
}

/* Read role (organization, name) as committed now (its permissions and inherits). */
static RoleRow
read_role(Relation rel, const char *organization, const char *name)
{
	RoleRow		row = {false, NULL, 0, NULL};
	AttrNumber	attnos[2] = {audit_column_of(rel, "organization_id"), audit_column_of(rel, "role_name")};
	const char *values[2] = {organization, name};
	ScanKeyData keys[2];
	SysScanDesc scan = scan_by_keys(rel, 2, attnos, values, keys);
	HeapTuple	tup = systable_getnext(scan);

	if (HeapTupleIsValid(tup))
	{
		TupleDesc	desc = RelationGetDescr(rel);
		bool		isnull;
		Datum		d;

		row.found = true;
		d = heap_getattr(tup, audit_column_of(rel, "permissions"), desc, &isnull);
		row.permissions = isnull ? NULL : DatumGetJsonbPCopy(d);
		d = heap_getattr(tup, audit_column_of(rel, "inherits"), desc, &isnull);
		if (!isnull)
			text_array_to_cstrings(d, &row.ninherits, &row.inherits);
	}
	systable_endscan(scan);
	return row;
}

/* A string member of a permission object, or NULL. */
static JsonbValue *
permission_member(JsonbContainer *obj, const char *key)
{
	JsonbValue *v = getKeyJsonValueFromContainer(obj, key, strlen(key), NULL);

	return (v != NULL && v->type == jbvString) ? v : NULL;
}

/* Callback per well-formed permission of a list: its resource and action strings. */
typedef void (*PermissionFn) (JsonbValue *resource, JsonbValue *action, void *arg);

/* Call fn for each {"resource": string, "action": string} of a permission list. */
static void
for_each_permission(Jsonb *permissions, PermissionFn fn, void *arg)
{
	int			n;

	if (permissions == NULL || !JsonContainerIsArray(&permissions->root))
		return;
	n = JsonContainerSize(&permissions->root);
	for (int i = 0; i < n; i++)
	{
		JsonbValue *elem = getIthJsonbValueFromContainer(&permissions->root, i);
		JsonbValue *res;
		JsonbValue *act;

		if (elem == NULL || elem->type != jbvBinary || !JsonContainerIsObject(elem->val.binary.data))
			continue;
		res = permission_member(elem->val.binary.data, "resource");
		act = permission_member(elem->val.binary.data, "action");
		if (res != NULL && act != NULL)
			fn(res, act, arg);
	}
}

typedef struct RoleVisit
{
	char	   *name;
	int			parent;			/* index of the role that inherits it; -1: assigned */
} RoleVisit;

/* Queue role name for a visit (reached from visit parent) unless it is queued already. */
static void
visit_once(RoleVisit **visits, int *n, int *allocated, char *name, int parent)
{
	for (int k = 0; k < *n; k++)
		if (strcmp((*visits)[k].name, name) == 0)
			return;
	if (*n == *allocated)
		*visits = repalloc(*visits, (*allocated *= 2) * sizeof(RoleVisit));
	(*visits)[*n].name = name;
	(*visits)[*n].parent = parent;
	(*n)++;
}

/* Callback per role reached: its visit index and its permissions (may be NULL). */
typedef void (*RoleVisitFn) (RoleVisit *visits, int index, Jsonb *permissions, void *arg);

/*
 * walk_roles
 *		Breadth-first over the roles assigned to principal in organization
 *		and everything they inherit, each role once; calls fn for each role
 *		that exists.  Returns the number of roles visited.
 */
static int
walk_roles(const char *organization, const char *principal, RoleVisitFn fn, void *arg)
{
	Relation	roles = open_role_table("organization_role", &role_relid);
	Relation	assignments = open_role_table("organization_role_assignment", &assignment_relid);
	int			allocated = 8;
	int			n = 0;
	RoleVisit  *visits = palloc(allocated * sizeof(RoleVisit));

	/* The assigned roles. */
	{
		AttrNumber	attnos[2] = {audit_column_of(assignments, "organization_id"), audit_column_of(assignments, "principal_id")};
		AttrNumber	role_att = audit_column_of(assignments, "role_name");
		const char *values[2] = {organization, principal};
		ScanKeyData keys[2];
		SysScanDesc scan = scan_by_keys(assignments, 2, attnos, values, keys);
		HeapTuple	tup;

		while (HeapTupleIsValid(tup = systable_getnext(scan)))
		{
			bool		isnull;
			Datum		d = heap_getattr(tup, role_att, RelationGetDescr(assignments), &isnull);

			if (isnull)
				continue;
			if (n == allocated)
				visits = repalloc(visits, (allocated *= 2) * sizeof(RoleVisit));
			visits[n].name = TextDatumGetCString(d);
			visits[n].parent = -1;
			n++;
		}
		systable_endscan(scan);
	}

	/* Breadth-first through the inheritance. */
	for (int i = 0; i < n && i < MAX_ROLES_WALKED; i++)
	{
		RoleRow		row = read_role(roles, organization, visits[i].name);

		if (!row.found)
			continue;
		fn(visits, i, row.permissions, arg);
		for (int j = 0; j < row.ninherits; j++)
			if (row.inherits[j] != NULL)
				visit_once(&visits, &n, &allocated, row.inherits[j], i);
	}
	table_close(assignments, AccessShareLock);
	table_close(roles, AccessShareLock);
	return n;
}

/* ---------------------------------------------------------------------
 * The permission cache
 * ---------------------------------------------------------------------
 */

static uint32
set_hash(const char *org, int org_len, const char *principal, int principal_len)
{
	return hash_combine(hash_bytes((const unsigned char *) org, org_len),
						hash_bytes((const unsigned char *) principal, principal_len));
}

/* Drop the cache if an invalidation arrived since it was built. */
static void
perm_cache_check(void)
{
	if (perm_built_generation == perm_generation && perm_buckets != NULL)
		return;
	if (perm_cxt == NULL)
		perm_cxt = AllocSetContextCreate(CacheMemoryContext, "audit_db permission cache",
										 ALLOCSET_DEFAULT_SIZES);
	else
		MemoryContextReset(perm_cxt);
	perm_nbuckets = 256;
	perm_buckets = MemoryContextAllocZero(perm_cxt, perm_nbuckets * sizeof(PermissionSet *));
	perm_count = 0;
	perm_last = NULL;
	perm_built_generation = perm_generation;
}

/* Double the bucket array when chains grow long. */
static void
perm_cache_grow(void)
{
	int			nb = perm_nbuckets * 2;
	PermissionSet **b = MemoryContextAllocZero(perm_cxt, nb * sizeof(PermissionSet *));

	for (int i = 0; i < perm_nbuckets; i++)
	{
		PermissionSet *s = perm_buckets[i];

		while (s)
		{
			PermissionSet *next = s->next;

			s->next = b[s->hash % nb];
			b[s->hash % nb] = s;
			s = next;
		}
	}
	pfree(perm_buckets);
	perm_buckets = b;
	perm_nbuckets = nb;
}

/* Free one cached set and what it holds. */
static void
perm_set_free(PermissionSet *s)
{
	for (int i = 0; i < s->count; i++)
	{
		pfree(s->items[i].resource);
		pfree(s->items[i].action);
	}
	pfree(s->items);
	pfree(s->organization);
	pfree(s->principal);
	pfree(s);
}

/* Empty the next quarter of the buckets (round robin), so the cache never starts over at once. */
static void
perm_cache_evict(void)
{
	static int	next_bucket = 0;
	int			quarter = Max(perm_nbuckets / 4, 1);

	for (int n = 0; n < quarter; n++)
	{
		int			b = (next_bucket + n) % perm_nbuckets;
		PermissionSet *s = perm_buckets[b];

		while (s != NULL)
		{
			PermissionSet *next = s->next;

			perm_set_free(s);
			perm_count--;
			s = next;
		}
		perm_buckets[b] = NULL;
	}
	next_bucket = (next_bucket + quarter) % perm_nbuckets;
	perm_last = NULL;
}

typedef struct CollectState
{
	PermissionSet *set;
	int			allocated;
} CollectState;

/* PermissionFn: add one permission to the set being built. */
static void
collect_permission(JsonbValue *res, JsonbValue *act, void *arg)
{
	CollectState *cs = arg;
	PermissionSet *set = cs->set;
	Permission *p;

	if (set->count == cs->allocated)
	{
		cs->allocated *= 2;
		set->items = repalloc(set->items, cs->allocated * sizeof(Permission));
	}
	p = &set->items[set->count++];
	p->resource = MemoryContextStrdup(perm_cxt, pnstrdup(res->val.string.val, res->val.string.len));
	p->resource_len = res->val.string.len;
	p->action = MemoryContextStrdup(perm_cxt, pnstrdup(act->val.string.val, act->val.string.len));
	p->action_len = act->val.string.len;
	if (p->resource_len == 1 && p->resource[0] == '*' && p->action_len == 1 && p->action[0] == '*')
		set->everything = true;
}

/* RoleVisitFn: add a role's permissions to the set being built. */
static void
collect_permissions(RoleVisit *visits, int index, Jsonb *permissions, void *arg)
{
	for_each_permission(permissions, collect_permission, arg);
}

/* The cached permission set of (organization, principal), built if missing. */
static PermissionSet *
permission_set(const char *principal, int principal_len, const char *org, int org_len)
{
	uint32		h = set_hash(org, org_len, principal, principal_len);
	PermissionSet *s;

	audit_tenancy_refresh();
	perm_cache_check();
	if (perm_last != NULL && perm_last->hash == h &&
		perm_last->organization_len == org_len && perm_last->principal_len == principal_len &&
		memcmp(perm_last->organization, org, org_len) == 0 &&
		memcmp(perm_last->principal, principal, principal_len) == 0)
		return perm_last;

	/* A bounded cache (a pool serving many users): make room. */
	if (perm_count >= MAX_CACHED_SETS)
		perm_cache_evict();
	for (s = perm_buckets[h % perm_nbuckets]; s != NULL; s = s->next)
		if (s->hash == h && s->organization_len == org_len && s->principal_len == principal_len &&
			memcmp(s->organization, org, org_len) == 0 && memcmp(s->principal, principal, principal_len) == 0)
			break;

	if (s == NULL)
	{
		MemoryContext tmp = AllocSetContextCreate(CurrentMemoryContext, "audit_db permission walk",
												  ALLOCSET_SMALL_SIZES);
		MemoryContext old = MemoryContextSwitchTo(tmp);
		CollectState cs;
		char	   *org_c = pnstrdup(org, org_len);
		char	   *principal_c = pnstrdup(principal, principal_len);

		s = MemoryContextAllocZero(perm_cxt, sizeof(PermissionSet));
		s->hash = h;
		s->organization = MemoryContextStrdup(perm_cxt, org_c);
		s->organization_len = org_len;
		s->principal = MemoryContextStrdup(perm_cxt, principal_c);
		s->principal_len = principal_len;
		cs.set = s;
		cs.allocated = 8;
		s->items = MemoryContextAlloc(perm_cxt, cs.allocated * sizeof(Permission));
		(void) walk_roles(org_c, principal_c, collect_permissions, &cs);
		MemoryContextSwitchTo(old);
		MemoryContextDelete(tmp);

		/*
		 * An invalidation processed while the tables were opened (the walk
		 * read with a snapshot taken after it) leaves the cache stale: keep
		 * the new set for this call only, the next call rebuilds.
		 */
		if (perm_built_generation != perm_generation)
			return s;
		s->next = perm_buckets[h % perm_nbuckets];
		perm_buckets[h % perm_nbuckets] = s;
		if (++perm_count > 2 * perm_nbuckets)
			perm_cache_grow();
	}
	perm_last = s;
	return s;
}

/* '*' matches anything, 'prefix*' values starting with prefix, anything else itself. */
static inline bool
pattern_matches(const char *pattern, int plen, const char *value, int vlen)
{
	if (plen > 0 && pattern[plen - 1] == '*')
		return vlen >= plen - 1 && memcmp(pattern, value, plen - 1) == 0;
	return plen == vlen && memcmp(pattern, value, vlen) == 0;
}

bool
audit_principal_has_permission(const char *principal, int principal_len,
							   const char *organization, int organization_len,
							   const char *resource, int resource_len,
							   const char *action, int action_len)
{
	PermissionSet *s = permission_set(principal, principal_len, organization, organization_len);

	if (s->everything)
		return true;
	for (int i = 0; i < s->count; i++)
	{
		Permission *p = &s->items[i];

		if (pattern_matches(p->resource, p->resource_len, resource, resource_len) &&
			pattern_matches(p->action, p->action_len, action, action_len))
			return true;
	}
	return false;
}

/* Error unless a session confined to one organization asks about that one. */
static void
check_inspectable(const char *organization, int organization_len)
{
	const char *current;

	if (!audit_tenancy_scoped())
		return;
	current = audit_current_organization();
	if (current == NULL || strlen(current) != (size_t) organization_len ||
		memcmp(current, organization, organization_len) != 0)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied to inspect organization \"%.*s\"", organization_len, organization),
				 errhint("A session confined to one organization inspects only that one (audit.current_organization()).")));
}

PG_FUNCTION_INFO_V1(audit_has_permission_sql);

/*
 * audit_has_permission_sql
 *		audit.has_permission(principal, organization, resource, action) ->
 *		boolean, from the cache.  A session confined to one organization may
 *		ask only about that organization (42501 otherwise).
 */
Datum
audit_has_permission_sql(PG_FUNCTION_ARGS)
{
	text	   *principal = PG_GETARG_TEXT_PP(0);
	text	   *organization = PG_GETARG_TEXT_PP(1);
	text	   *resource = PG_GETARG_TEXT_PP(2);
	text	   *action = PG_GETARG_TEXT_PP(3);

	check_inspectable(VARDATA_ANY(organization), VARSIZE_ANY_EXHDR(organization));
	PG_RETURN_BOOL(audit_principal_has_permission(VARDATA_ANY(principal), VARSIZE_ANY_EXHDR(principal),
												  VARDATA_ANY(organization), VARSIZE_ANY_EXHDR(organization),
												  VARDATA_ANY(resource), VARSIZE_ANY_EXHDR(resource),
												  VARDATA_ANY(action), VARSIZE_ANY_EXHDR(action)));
}

/* The session's check, lengths in bytes. */
static bool
session_permits(const char *resource, int resource_len, const char *action, int action_len)
{
	const char *org;
	const char *principal;

	audit_session_identity(&org, &principal);
	if (org == NULL)
		return false;
	return audit_principal_has_permission(principal, strlen(principal), org, strlen(org),
										  resource, resource_len, action, action_len);
}

bool
audit_session_has_permission(const char *resource, const char *action)
{
	return session_permits(resource, strlen(resource), action, strlen(action));
}

PG_FUNCTION_INFO_V1(audit_session_has_permission_sql);

/*
 * audit_session_has_permission_sql
 *		audit.session_has_permission(resource, action) -> boolean: the check
 *		policies make, for the session's organization and principal; false
 *		when the session acts for no organization.
 */
Datum
audit_session_has_permission_sql(PG_FUNCTION_ARGS)
{
	text	   *resource = PG_GETARG_TEXT_PP(0);
	text	   *action = PG_GETARG_TEXT_PP(1);

	PG_RETURN_BOOL(session_permits(VARDATA_ANY(resource), VARSIZE_ANY_EXHDR(resource),
								   VARDATA_ANY(action), VARSIZE_ANY_EXHDR(action)));
}

/* ---------------------------------------------------------------------
 * audit.user_permissions()
 * ---------------------------------------------------------------------
 */

typedef struct ListState
{
	ReturnSetInfo *rsinfo;
	const char *role_name;		/* the role being listed */
	ArrayType  *path;			/* inheritance path to it */
} ListState;

/* PermissionFn: one output row. */
static void
list_permission(JsonbValue *res, JsonbValue *act, void *arg)
{
	ListState  *ls = arg;
	Datum		values[4];
	bool		nulls[4] = {false, false, false, false};

	values[0] = PointerGetDatum(cstring_to_text_with_len(res->val.string.val, res->val.string.len));
	values[1] = PointerGetDatum(cstring_to_text_with_len(act->val.string.val, act->val.string.len));
	values[2] = CStringGetTextDatum(ls->role_name);
	values[3] = PointerGetDatum(ls->path);
	tuplestore_putvalues(ls->rsinfo->setResult, ls->rsinfo->setDesc, values, nulls);
}

/* RoleVisitFn: one output row per permission of the role, with the path to it. */
static void
list_permissions(RoleVisit *visits, int index, Jsonb *permissions, void *arg)
{
	ListState  *ls = arg;
	int			depth = 0;
	Datum	   *path;

	for (int i = index; i >= 0; i = visits[i].parent)
		depth++;
	path = palloc(depth * sizeof(Datum));
	for (int i = index, k = depth - 1; i >= 0; i = visits[i].parent, k--)
		path[k] = CStringGetTextDatum(visits[i].name);
	ls->role_name = visits[index].name;
	ls->path = construct_array(path, depth, TEXTOID, -1, false, TYPALIGN_INT);
	for_each_permission(permissions, list_permission, ls);
}

PG_FUNCTION_INFO_V1(audit_user_permissions_sql);

/*
 * audit_user_permissions_sql
 *		audit.user_permissions(principal, organization) -> (resource, action,
 *		role_name, inherited_via): the effective permissions, one row per
 *		permission of each role reached, inherited_via the path of roles from
 *		the assigned one.  NULL arguments mean the session's own.
 */
Datum
audit_user_permissions_sql(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	const char *principal;
	const char *org;
	ListState	ls;

	audit_session_identity(&org, &principal);
	if (!PG_ARGISNULL(0))
		principal = text_to_cstring(PG_GETARG_TEXT_PP(0));
	if (!PG_ARGISNULL(1))
		org = text_to_cstring(PG_GETARG_TEXT_PP(1));

	if (org == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("no organization given and the session acts for none"),
				 errhint("Pass organization => '...', or call audit.set_organization() first.")));
	principal = pstrdup(principal);
	org = pstrdup(org);
	check_inspectable(org, strlen(org));
	InitMaterializedSRF(fcinfo, 0);
	ls.rsinfo = rsinfo;
	(void) walk_roles(org, principal, list_permissions, &ls);
	return (Datum) 0;
}

/* ---------------------------------------------------------------------
 * Trigger: audit.check_organization_role()
 * ---------------------------------------------------------------------
 */

/* Error unless permissions is an array of {"resource": "...", "action": "..."}. */
static void
check_permission_list(Jsonb *permissions, const char *role)
{
	int			n;

	if (!JsonContainerIsArray(&permissions->root) || JB_ROOT_IS_SCALAR(permissions))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("permissions of organization role \"%s\" must be a JSON array", role),
				 errhint("Example: '[{\"resource\": \"audit.audit_log\", \"action\": \"read\"}]'.")));
	n = JsonContainerSize(&permissions->root);
	for (int i = 0; i < n; i++)
	{
		JsonbValue *elem = getIthJsonbValueFromContainer(&permissions->root, i);
		JsonbContainer *obj;

		if (elem == NULL || elem->type != jbvBinary || !JsonContainerIsObject(elem->val.binary.data) ||
			JsonContainerSize(elem->val.binary.data) != 2)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("permission %d of organization role \"%s\" is not an object with exactly \"resource\" and \"action\"",
							i + 1, role),
					 errhint("Example: {\"resource\": \"audit.*\", \"action\": \"read\"}; '*' matches anything.")));
		obj = elem->val.binary.data;
		for (int k = 0; k < 2; k++)
		{
			const char *key = k == 0 ? "resource" : "action";
			JsonbValue *v = permission_member(obj, key);

			if (v == NULL || v->val.string.len == 0 || v->val.string.len > MAX_PATTERN_BYTES)
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						 errmsg("permission %d of organization role \"%s\" needs a non-empty string \"%s\" of at most %d bytes",
								i + 1, role, key, MAX_PATTERN_BYTES),
						 errhint("Example: {\"resource\": \"audit.*\", \"action\": \"read\"}; '*' matches anything.")));
		}
	}
}

/*
 * Serialize changes to organization roles until the transaction ends: SHARE
 * UPDATE EXCLUSIVE on audit.organization_role conflicts with itself but not
 * with reads or the row locks of writes, and only roles with write
 * privileges on the table can take it otherwise (LOCK TABLE), unlike an
 * advisory lock.  Taken by the statement-level trigger, before the
 * statement locks any row, so a transaction waiting here holds no role row
 * another one could need.
 */
static void
lock_organization_roles(Relation rel)
{
	LockRelationOid(RelationGetRelid(rel), ShareUpdateExclusiveLock);
}

/* The roles of org that inherit name (other than itself), as a comma list, or NULL. */
static char *
roles_inheriting(Relation rel, const char *org, const char *name)
{
	AttrNumber	attnos[1] = {audit_column_of(rel, "organization_id")};
	AttrNumber	name_att = audit_column_of(rel, "role_name");
	AttrNumber	inh_att = audit_column_of(rel, "inherits");
	const char *values[1] = {org};
	ScanKeyData keys[1];
	SysScanDesc scan = scan_by_keys(rel, 1, attnos, values, keys);
	HeapTuple	tup;
	StringInfoData out;

	initStringInfo(&out);
	while (HeapTupleIsValid(tup = systable_getnext(scan)))
	{
		bool		isnull;
		Datum		d = heap_getattr(tup, inh_att, RelationGetDescr(rel), &isnull);
		char	   *role = TextDatumGetCString(heap_getattr(tup, name_att, RelationGetDescr(rel), &isnull));
		int			n;
		char	  **inh;

		if (strcmp(role, name) == 0)
			continue;
		if (isnull)
			continue;
		text_array_to_cstrings(d, &n, &inh);
		for (int i = 0; i < n; i++)
			if (inh[i] != NULL && strcmp(inh[i], name) == 0)
			{
				appendStringInfo(&out, "%s%s", out.len ? ", " : "", role);
				break;
			}
	}
	systable_endscan(scan);
	return out.len ? out.data : NULL;
}

/*
 * check_inheritance
 *		Every inherited role exists in org and none leads back to role:
 *		breadth-first over the committed roles (role's own stored row is
 *		replaced by the new one, so it is never followed).
 */
static void
check_inheritance(Relation rel, const char *org, const char *role, int ninherits, char **inherits)
{
	int			allocated = Max(ninherits, 8);
	int			n = 0;
	RoleVisit  *visits = palloc(allocated * sizeof(RoleVisit));

	for (int i = 0; i < ninherits; i++)
	{
		if (inherits[i] == NULL)
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("organization role \"%s\" inherits a NULL role", role),
					 errhint("List the names of roles of the same organization.")));
		if (strcmp(inherits[i], role) == 0)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_RECURSION),
					 errmsg("organization role \"%s\" cannot inherit itself", role),
					 errhint("Remove \"%s\" from its inherits.", role)));
		visits[n].name = inherits[i];
		visits[n].parent = -1;
		n++;
	}
	for (int i = 0; i < n; i++)
	{
		RoleRow		row = read_role(rel, org, visits[i].name);

		if (!row.found)
		{
			if (visits[i].parent == -1)
				ereport(ERROR,
						(errcode(ERRCODE_FOREIGN_KEY_VIOLATION),
						 errmsg("organization role \"%s\" inherits \"%s\", which does not exist in organization \"%s\"",
								role, visits[i].name, org),
						 errhint("Create the inherited role first; roles inherit only roles of their own organization.")));
			continue;
		}
		for (int j = 0; j < row.ninherits; j++)
		{
			if (row.inherits[j] == NULL)
				continue;
			if (strcmp(row.inherits[j], role) == 0)
			{
				StringInfoData path;
				int			depth = 0;
				char	  **names;

				for (int k = i; k >= 0; k = visits[k].parent)
					depth++;
				names = palloc(depth * sizeof(char *));
				for (int k = i, m = depth - 1; k >= 0; k = visits[k].parent, m--)
					names[m] = visits[k].name;
				initStringInfo(&path);
				appendStringInfoString(&path, role);
				for (int m = 0; m < depth; m++)
					appendStringInfo(&path, " -> %s", names[m]);
				appendStringInfo(&path, " -> %s", role);
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_RECURSION),
						 errmsg("organization role inheritance would form a cycle: %s", path.data),
						 errhint("Roles inherit in one direction only; remove one of the links.")));
			}
			visit_once(&visits, &n, &allocated, row.inherits[j], i);
		}
	}
}

/*
 * A key column (organization_id, role_name) of a role row in a BEFORE ROW
 * trigger: the NOT NULL constraints are checked only after these triggers
 * run, so a NULL must be refused here rather than read.
 */
static char *
role_key_column(HeapTuple tup, TupleDesc desc, AttrNumber att)
{
	bool		isnull;
	Datum		d = heap_getattr(tup, att, desc, &isnull);

	if (isnull)
		ereport(ERROR,
				(errcode(ERRCODE_NOT_NULL_VIOLATION),
				 errmsg("null value in column \"%s\" of relation \"organization_role\" violates not-null constraint",
						NameStr(TupleDescAttr(desc, att - 1)->attname)),
				 errhint("Every organization role has an organization_id and a role_name.")));
	return TextDatumGetCString(d);
}

PG_FUNCTION_INFO_V1(audit_check_organization_role);

/*
 * audit_check_organization_role
 *		The checks of audit.organization_role, by trigger kind:
 *		BEFORE ... FOR EACH STATEMENT: wait for other transactions changing
 *		  roles (before this statement locks any row).
 *		BEFORE ... FOR EACH ROW: the permission list is well formed (22023);
 *		  a role does not move to another organization (0A000).
 *		AFTER ... FOR EACH ROW (so after the whole statement, seeing all its
 *		  rows and after row-level security accepted them): inherited roles
 *		  exist (23503) and lead back to no role (42P19); a role name that
 *		  is gone (deleted, renamed) is inherited by no one (23503).
 */
Datum
audit_check_organization_role(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;
	Relation	rel;
	TupleDesc	desc;
	HeapTuple	newtup = NULL;
	HeapTuple	oldtup = NULL;
	AttrNumber	org_att;
	AttrNumber	name_att;
	bool		isnull;

	if (!CALLED_AS_TRIGGER(fcinfo))
		elog(ERROR, "audit.check_organization_role() must be called as a trigger");
	if (!TRIGGER_FIRED_FOR_ROW(trigdata->tg_event))
	{
		if (TRIGGER_FIRED_BEFORE(trigdata->tg_event))
			lock_organization_roles(trigdata->tg_relation);
		return PointerGetDatum(NULL);
	}
	rel = trigdata->tg_relation;
	desc = RelationGetDescr(rel);
	org_att = audit_column_of(rel, "organization_id");
	name_att = audit_column_of(rel, "role_name");
	if (TRIGGER_FIRED_BY_INSERT(trigdata->tg_event))
		newtup = trigdata->tg_trigtuple;
	else if (TRIGGER_FIRED_BY_UPDATE(trigdata->tg_event))
	{
		oldtup = trigdata->tg_trigtuple;
		newtup = trigdata->tg_newtuple;
	}
	else
		oldtup = trigdata->tg_trigtuple;

	if (TRIGGER_FIRED_BEFORE(trigdata->tg_event))
	{
		if (newtup != NULL)
		{
			char	   *new_org = role_key_column(newtup, desc, org_att);
			char	   *new_name = role_key_column(newtup, desc, name_att);
			Datum		d;

			if (oldtup != NULL && strcmp(role_key_column(oldtup, desc, org_att), new_org) != 0)
				ereport(ERROR,
						(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
						 errmsg("organization role \"%s\" cannot move to another organization",
								role_key_column(oldtup, desc, name_att)),
						 errhint("Create the role in the other organization instead.")));
			d = heap_getattr(newtup, audit_column_of(rel, "permissions"), desc, &isnull);
			if (!isnull)
				check_permission_list(DatumGetJsonbP(d), new_name);
		}
		return PointerGetDatum(newtup != NULL ? newtup : oldtup);
	}

	/* AFTER: read the roles as the whole statement left them. */
	CommandCounterIncrement();
	if (oldtup != NULL)
	{
		char	   *org = TextDatumGetCString(heap_getattr(oldtup, org_att, desc, &isnull));
		char	   *name = TextDatumGetCString(heap_getattr(oldtup, name_att, desc, &isnull));

		if (!read_role(rel, org, name).found)
		{
			char	   *inheritors = roles_inheriting(rel, org, name);

			if (inheritors != NULL)
				ereport(ERROR,
						(errcode(ERRCODE_FOREIGN_KEY_VIOLATION),
						 errmsg("organization role \"%s\" is inherited by %s", name, inheritors),
						 errhint("Remove it from their inherits first.")));
		}
	}
	if (newtup != NULL)
	{
		char	   *org = TextDatumGetCString(heap_getattr(newtup, org_att, desc, &isnull));
		char	   *name = TextDatumGetCString(heap_getattr(newtup, name_att, desc, &isnull));
		RoleRow		now = read_role(rel, org, name);

		/* A later row of the statement may have changed or removed it again. */
		if (now.found)
			check_inheritance(rel, org, name, now.ninherits, now.inherits);
	}
	return PointerGetDatum(NULL);
}

/* ---------------------------------------------------------------------
 * Trigger: audit.log_organization_change()
 * ---------------------------------------------------------------------
 */

/* A row as a JSON document (jsonb), through row_to_json. */
static Jsonb *
row_document(HeapTuple tup, TupleDesc desc)
{
	Datum		composite = heap_copy_tuple_as_datum(tup, desc);
	Datum		json = DirectFunctionCall1(row_to_json, composite);

	return DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(TextDatumGetCString(json))));
}

/* A text column of tup, or NULL. */
static char *
text_column(HeapTuple tup, Relation rel, const char *name)
{
	bool		isnull;
	Datum		d = heap_getattr(tup, audit_column_of(rel, name), RelationGetDescr(rel), &isnull);

	return isnull ? NULL : TextDatumGetCString(d);
}

PG_FUNCTION_INFO_V1(audit_log_organization_change);

/*
 * audit_log_organization_change
 *		AFTER INSERT OR UPDATE OR DELETE FOR EACH ROW (and AFTER TRUNCATE FOR
 *		EACH STATEMENT) on organization_role, organization_role_assignment
 *		and organization_access: queue the invalidation that makes every
 *		session re-read permissions and access, and log the change to
 *		audit.audit_log ('<table>.insert' etc., old and new row in details).
 */
Datum
audit_log_organization_change(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;
	Relation	rel;
	const char *table;
	const char *op;
	HeapTuple	row;
	char	   *org = NULL;
	char	   *target = NULL;
	StringInfoData doc;
	Jsonb	   *details;

	if (!CALLED_AS_TRIGGER(fcinfo) || !TRIGGER_FIRED_AFTER(trigdata->tg_event))
		elog(ERROR, "audit.log_organization_change() must be an AFTER trigger");
	rel = trigdata->tg_relation;
	table = RelationGetRelationName(rel);
	CacheInvalidateRelcacheByRelid(RelationGetRelid(rel));

	if (TRIGGER_FIRED_BY_TRUNCATE(trigdata->tg_event))
	{
		audit_record_administrative_event(psprintf("%s.truncate", table), NULL, table, NULL, NULL);
		return PointerGetDatum(NULL);
	}
	if (!TRIGGER_FIRED_FOR_ROW(trigdata->tg_event))
		return PointerGetDatum(NULL);

	op = TRIGGER_FIRED_BY_INSERT(trigdata->tg_event) ? "insert"
		: TRIGGER_FIRED_BY_UPDATE(trigdata->tg_event) ? "update" : "delete";
	row = TRIGGER_FIRED_BY_UPDATE(trigdata->tg_event) ? trigdata->tg_newtuple : trigdata->tg_trigtuple;

	org = text_column(row, rel, "organization_id");
	if (org != NULL && strcmp(org, AUDIT_ANY_ORGANIZATION) == 0)
		org = NULL;
	if (strcmp(table, "organization_role") == 0)
		target = text_column(row, rel, "role_name");
	else if (strcmp(table, "organization_role_assignment") == 0)
		target = psprintf("%s:%s", text_column(row, rel, "principal_id"), text_column(row, rel, "role_name"));
	else
	{
		bool		isnull;
		Datum		d = heap_getattr(row, audit_column_of(rel, "database_role"), RelationGetDescr(rel), &isnull);

		target = isnull ? NULL : GetUserNameFromId(DatumGetObjectId(d), true);
	}

	initStringInfo(&doc);
	appendStringInfoChar(&doc, '{');
	if (trigdata->tg_trigtuple != NULL && !TRIGGER_FIRED_BY_INSERT(trigdata->tg_event))
	{
		Jsonb	   *old = row_document(trigdata->tg_trigtuple, RelationGetDescr(rel));

		appendStringInfo(&doc, "\"old\": %s", JsonbToCString(NULL, &old->root, VARSIZE(old)));
	}
	if (!TRIGGER_FIRED_BY_DELETE(trigdata->tg_event))
	{
		Jsonb	   *new = row_document(row, RelationGetDescr(rel));

		appendStringInfo(&doc, "%s\"new\": %s", doc.len > 1 ? ", " : "",
						 JsonbToCString(NULL, &new->root, VARSIZE(new)));
	}
	appendStringInfoChar(&doc, '}');
	details = DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(doc.data)));
	audit_record_administrative_event(psprintf("%s.%s", table, op), org, table, target, details);
	return PointerGetDatum(NULL);
}
