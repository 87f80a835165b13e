/*-------------------------------------------------------------------------
 *
 * tenancy.c
 *	  Tenant isolation: which organization a session acts for, and the
 *	  row-level-security policies that confine a table to it.
 *
 * The organization context comes only from audit.organization_access, a
 * mapping of database roles to organizations that only the extension's
 * owner writes.  A session's role (the outer user: SET ROLE changes it,
 * SECURITY DEFINER functions do not) may act for every organization mapped
 * to a role whose privileges it has; '*' means any organization.  The
 * session acts for one organization at a time:
 *	- a role mapped to exactly one organization acts for it from the start
 *	  (deployment "one database role per tenant");
 *	- audit.set_organization(org [, principal]) selects one of the mapped
 *	  organizations (deployment "pooled application role": once per request,
 *	  local => true for transaction pooling); naming the principal needs
 *	  may_set_principal on the mapping.
 * The selection is kept in this backend's memory, not in a setting, so no
 * SET, set_config() or function SET clause can touch it; it follows the
 * transaction like SET does (an abort, or the abort of the subtransaction
 * it was made in, undoes it; local => true ends with the transaction),
 * DISCARD ALL clears it, and it is checked against the
 * mapping at every use, so revoking access ends it.
 *
 * Policies compare a row's organization column with
 * audit.current_organization(), a STABLE function without arguments: the
 * planner treats the comparison as "column = constant", so the (organization,
 * time) index serves a tenant's "latest events" query exactly as it serves
 * an explicit WHERE organization_id = '...'.  The permission part,
 * audit.session_has_permission(resource, action), has no column argument
 * either: on a partitioned table the planner makes it a one-time filter per
 * partition, on a plain table it stays a row filter answered from the
 * per-backend cache (organization_roles.c).
 *
 * Members of audit_db_all_organizations get a policy of their own that
 * admits every row; superusers and BYPASSRLS roles skip policies entirely
 * (PostgreSQL's rule).  FORCE ROW LEVEL SECURITY subjects the table owner
 * to the policies too.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_class.h"
#include "catalog/pg_type.h"
#include "commands/extension.h"
#include "executor/spi.h"
#include "funcapi.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/inval.h"
#include "utils/json.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"

#include "audit_db.h"
#include "restore.h"
#include "tenancy.h"

/* Names of the policies enable_tenant_isolation() creates. */
static const char *const isolation_policies[] = {
	"audit_tenant_read", "audit_tenant_insert", "audit_tenant_update", "audit_tenant_delete",
	"audit_tenant_shared_read", "audit_all_organizations"
};

/* ---------------------------------------------------------------------
 * The session role's organizations (audit.organization_access)
 * ---------------------------------------------------------------------
 */

typedef struct OrganizationAccess
{
	char	   *organization;	/* or AUDIT_ANY_ORGANIZATION */
	bool		may_set_principal;
} OrganizationAccess;

static MemoryContext access_cxt = NULL;
static Oid	access_user = InvalidOid;
static char *access_user_name = NULL;
static OrganizationAccess *access_items = NULL;
static int	access_count = 0;
static Oid	access_relid = InvalidOid;

/* Bumped by the invalidation callbacks; a cache built at an older one is stale. */
static uint64 access_generation = 1;
static uint64 access_loaded_generation = 0;

/* Whether the current user sees every organization (superuser, BYPASSRLS, member). */
static Oid	scope_user = InvalidOid;
static bool scope_all = false;
static uint64 scope_loaded_generation = 0;

AttrNumber
audit_column_of(Relation rel, const char *name)
{
	TupleDesc	desc = RelationGetDescr(rel);

	for (int i = 0; i < desc->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, i);

		if (!att->attisdropped && strcmp(NameStr(att->attname), name) == 0)
			return att->attnum;
	}
	elog(ERROR, "table %s has no column \"%s\"", RelationGetRelationName(rel), name);
	return InvalidAttrNumber;	/* keep the compiler quiet */
}

Oid
audit_tenancy_relid(const char *relname)
{
	Oid			nsp = get_namespace_oid(AUDIT_SCHEMA_NAME, true);

	return OidIsValid(nsp) ? get_relname_relid(relname, nsp) : InvalidOid;
}

/*
 * load_access
 *		Read audit.organization_access for user: every organization mapped to
 *		a role whose privileges the user has (a superuser: only roles it is
 *		really a member of), merged by organization.  Reads with a fresh
 *		snapshot, so the result is what is committed now.
 */
static void
load_access(Oid user)
{
	uint64		generation = access_generation;
	bool		is_super = superuser_arg(user);
	int			allocated = 4;

	if (access_cxt == NULL)
		access_cxt = AllocSetContextCreate(CacheMemoryContext, "audit_db organization access",
										   ALLOCSET_SMALL_SIZES);
	else
		MemoryContextReset(access_cxt);
	access_items = MemoryContextAlloc(access_cxt, allocated * sizeof(OrganizationAccess));
	access_count = 0;
	access_user = user;
	access_user_name = MemoryContextStrdup(access_cxt, GetUserNameFromId(user, false));

	access_relid = audit_tenancy_relid("organization_access");
	if (OidIsValid(access_relid))
	{
		Relation	rel = table_open(access_relid, AccessShareLock);
		TupleDesc	desc = RelationGetDescr(rel);
		AttrNumber	role_att = audit_column_of(rel, "database_role");
		AttrNumber	org_att = audit_column_of(rel, "organization_id");
		AttrNumber	flag_att = audit_column_of(rel, "may_set_principal");
		SysScanDesc scan = systable_beginscan(rel, InvalidOid, false, NULL, 0, NULL);
		HeapTuple	tup;

		while (HeapTupleIsValid(tup = systable_getnext(scan)))
		{
			bool		isnull;
			Oid			role = DatumGetObjectId(heap_getattr(tup, role_att, desc, &isnull));
			char	   *org;
			bool		flag;
			int			i;

			if (isnull)
				continue;
			if (!(is_super ? is_member_of_role_nosuper(user, role) : has_privs_of_role(user, role)))
				continue;
			org = TextDatumGetCString(heap_getattr(tup, org_att, desc, &isnull));
			flag = DatumGetBool(heap_getattr(tup, flag_att, desc, &isnull)) && !isnull;
			for (i = 0; i < access_count; i++)
				if (strcmp(access_items[i].organization, org) == 0)
					break;
			if (i < access_count)
			{
				access_items[i].may_set_principal |= flag;
				continue;
			}
			if (access_count == allocated)
			{
				allocated *= 2;
				access_items = repalloc(access_items, allocated * sizeof(OrganizationAccess));
			}
			access_items[access_count].organization = MemoryContextStrdup(access_cxt, org);
			access_items[access_count].may_set_principal = flag;
			access_count++;
		}
		systable_endscan(scan);
		table_close(rel, AccessShareLock);
	}
	access_loaded_generation = generation;
}

/* Make the access cache describe user as of the latest invalidation. */
static void
ensure_access(Oid user)
{
	if (user != access_user || access_loaded_generation != access_generation)
		load_access(user);
}

/* The mapping that lets the role act for org (exact beats '*'), or NULL. */
static OrganizationAccess *
access_for(const char *org)
{
	OrganizationAccess *any = NULL;

	for (int i = 0; i < access_count; i++)
	{
		if (strcmp(access_items[i].organization, org) == 0)
			return &access_items[i];
		if (strcmp(access_items[i].organization, AUDIT_ANY_ORGANIZATION) == 0)
			any = &access_items[i];
	}
	return any;
}

/* Whether the role may name the principal it acts as, in org. */
static bool
may_set_principal_in(const char *org)
{
	for (int i = 0; i < access_count; i++)
		if (access_items[i].may_set_principal &&
			(strcmp(access_items[i].organization, org) == 0 ||
			 strcmp(access_items[i].organization, AUDIT_ANY_ORGANIZATION) == 0))
			return true;
	return false;
}

/* ---------------------------------------------------------------------
 * Invalidation: other sessions' changes, seen at the next statement
 * ---------------------------------------------------------------------
 */

/*
 * A change to audit.organization_access (or to every relation) makes the
 * access cache stale; so does any relation change while the table was
 * missing at the last load (the extension may just have been created).
 */
static void
tenancy_relcache_callback(Datum arg, Oid relid)
{
	if (!OidIsValid(relid) || !OidIsValid(access_relid) || relid == access_relid)
		access_generation++;
}

static void
tenancy_syscache_callback(Datum arg, int cacheid, uint32 hashvalue)
{
	/* Role attributes or memberships changed: both caches depend on them. */
	access_generation++;
}

void
audit_tenancy_refresh(void)
{
	static TimestampTz last_statement = 0;
	static TimestampTz last_transaction = 0;
	TimestampTz statement = GetCurrentStatementStartTimestamp();
	TimestampTz transaction = GetCurrentTransactionStartTimestamp();

	if (statement != last_statement || transaction != last_transaction)
	{
		last_statement = statement;
		last_transaction = transaction;
		AcceptInvalidationMessages();
	}
}

bool
audit_tenancy_scoped(void)
{
	Oid			user = GetUserId();

	audit_tenancy_refresh();
	if (user != scope_user || scope_loaded_generation != access_generation)
	{
		uint64		generation = access_generation;
		Oid			all = get_role_oid(AUDIT_ALL_ORGANIZATIONS_ROLE, true);

		scope_all = superuser_arg(user) || has_bypassrls_privilege(user) ||
			(OidIsValid(all) && has_privs_of_role(user, all));
		scope_user = user;
		scope_loaded_generation = generation;
	}
	return !scope_all;
}

char *
audit_tenancy_confinement(const char *hint)
{
	const char *org;

	if (!audit_tenancy_scoped())
		return NULL;
	org = audit_current_organization();
	if (org == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("the session acts for no organization"),
				 errhint("%s", hint)));
	return pstrdup(org);
}

/* ---------------------------------------------------------------------
 * The selection made by audit.set_organization()
 * ---------------------------------------------------------------------
 */

typedef struct OrganizationSelection
{
	bool		active;
	Oid			user;			/* the outer user that made it */
	char	   *organization;	/* in TopMemoryContext */
	char	   *principal;		/* NULL: the role's own name */
} OrganizationSelection;

static OrganizationSelection sel_effective;	/* what applies now */
static OrganizationSelection sel_session;	/* what a commit keeps */
static OrganizationSelection sel_xact_start;	/* what an abort restores */
static bool sel_changed_in_xact = false;

static void
selection_clear(OrganizationSelection *s)
{
	if (s->organization)
		pfree(s->organization);
	if (s->principal)
		pfree(s->principal);
	memset(s, 0, sizeof(*s));
}

static void
selection_set(OrganizationSelection *s, bool active, Oid user, const char *org, const char *principal)
{
	selection_clear(s);
	s->active = active;
	s->user = user;
	if (org)
		s->organization = MemoryContextStrdup(TopMemoryContext, org);
	if (principal)
		s->principal = MemoryContextStrdup(TopMemoryContext, principal);
}

static void
selection_copy(OrganizationSelection *dst, const OrganizationSelection *src)
{
	if (dst == src)
		return;
	selection_set(dst, src->active, src->user, src->organization, src->principal);
}

/*
 * What a subtransaction's abort (ROLLBACK TO SAVEPOINT, an exception caught
 * by PL/pgSQL) restores: the selection as it was when the subtransaction
 * started, kept only for subtransactions inside which it changed, innermost
 * last.
 */
typedef struct SubxactSelection
{
	int			nest_level;
	OrganizationSelection effective;
	OrganizationSelection session;
} SubxactSelection;

static SubxactSelection *subxact_saved = NULL;
static int	subxact_saved_count = 0;
static int	subxact_saved_allocated = 0;

/* Before a change: remember what an abort (of the transaction or of any open subtransaction) restores. */
static void
selection_begin_change(void)
{
	int			level = GetCurrentTransactionNestLevel();
	int			from;

	if (!sel_changed_in_xact)
	{
		selection_copy(&sel_xact_start, &sel_session);
		sel_changed_in_xact = true;
	}
	/* Subtransactions opened since the last change start with the current selection. */
	from = subxact_saved_count > 0 ? subxact_saved[subxact_saved_count - 1].nest_level + 1 : 2;
	for (int l = from; l <= level; l++)
	{
		SubxactSelection *e;

		if (subxact_saved_count == subxact_saved_allocated)
		{
			subxact_saved_allocated = Max(8, subxact_saved_allocated * 2);
			subxact_saved = subxact_saved == NULL
				? MemoryContextAllocZero(TopMemoryContext, subxact_saved_allocated * sizeof(SubxactSelection))
				: repalloc(subxact_saved, subxact_saved_allocated * sizeof(SubxactSelection));
		}
		e = &subxact_saved[subxact_saved_count++];
		memset(e, 0, sizeof(*e));
		e->nest_level = l;
		selection_copy(&e->effective, &sel_effective);
		selection_copy(&e->session, &sel_session);
	}
}

static void
subxact_saved_pop(void)
{
	SubxactSelection *e = &subxact_saved[--subxact_saved_count];

	selection_clear(&e->effective);
	selection_clear(&e->session);
}

static void
tenancy_subxact_callback(SubXactEvent event, SubTransactionId mySubid, SubTransactionId parentSubid, void *arg)
{
	int			level = GetCurrentTransactionNestLevel();
	SubxactSelection *e;

	if (subxact_saved_count == 0 || subxact_saved[subxact_saved_count - 1].nest_level != level)
		return;
	e = &subxact_saved[subxact_saved_count - 1];
	if (event == SUBXACT_EVENT_ABORT_SUB)
	{
		selection_copy(&sel_effective, &e->effective);
		selection_copy(&sel_session, &e->session);
		subxact_saved_pop();
	}
	else if (event == SUBXACT_EVENT_COMMIT_SUB)
	{
		/*
		 * The parent started with the same selection unless it changed it
		 * before opening this subtransaction (then it has its own entry).
		 */
		if (level - 1 >= 2 &&
			(subxact_saved_count < 2 || subxact_saved[subxact_saved_count - 2].nest_level != level - 1))
			e->nest_level = level - 1;
		else
			subxact_saved_pop();
	}
}

static void
tenancy_xact_callback(XactEvent event, void *arg)
{
	if (!sel_changed_in_xact)
		return;
	switch (event)
	{
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_PARALLEL_COMMIT:
		case XACT_EVENT_PREPARE:
			selection_copy(&sel_effective, &sel_session);
			break;
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PARALLEL_ABORT:
			selection_copy(&sel_session, &sel_xact_start);
			selection_copy(&sel_effective, &sel_xact_start);
			break;
		default:
			return;
	}
	selection_clear(&sel_xact_start);
	while (subxact_saved_count > 0)
		subxact_saved_pop();
	sel_changed_in_xact = false;
}

void
audit_tenancy_discard(void)
{
	selection_clear(&sel_effective);
	selection_clear(&sel_session);
	selection_clear(&sel_xact_start);
	sel_changed_in_xact = false;
}

/* The organization, with the access cache loaded for user (no reload here). */
static const char *
organization_now(Oid user)
{
	if (sel_effective.active && sel_effective.user == user)
	{
		if (access_for(sel_effective.organization) != NULL)
			return sel_effective.organization;
		/* Access was revoked: the selection ends (a later grant does not revive it). */
		selection_clear(&sel_effective);
		selection_clear(&sel_session);
	}
	if (access_count == 1 && strcmp(access_items[0].organization, AUDIT_ANY_ORGANIZATION) != 0)
		return access_items[0].organization;
	return NULL;
}

/* The principal, with the access cache loaded for user (no reload here). */
static const char *
principal_now(Oid user)
{
	if (sel_effective.active && sel_effective.user == user && sel_effective.principal != NULL &&
		may_set_principal_in(sel_effective.organization))
		return sel_effective.principal;
	return access_user_name;
}

const char *
audit_current_organization(void)
{
	Oid			user = GetOuterUserId();

	audit_tenancy_refresh();
	ensure_access(user);
	return organization_now(user);
}

const char *
audit_current_principal(void)
{
	Oid			user = GetOuterUserId();

	audit_tenancy_refresh();
	ensure_access(user);
	return principal_now(user);
}

void
audit_session_identity(const char **organization, const char **principal)
{
	Oid			user = GetOuterUserId();

	audit_tenancy_refresh();
	ensure_access(user);
	*organization = organization_now(user);
	*principal = principal_now(user);
}

void
audit_tenancy_init(void)
{
	CacheRegisterRelcacheCallback(tenancy_relcache_callback, (Datum) 0);
	CacheRegisterSyscacheCallback(AUTHOID, tenancy_syscache_callback, (Datum) 0);
	CacheRegisterSyscacheCallback(AUTHMEMROLEMEM, tenancy_syscache_callback, (Datum) 0);
	RegisterXactCallback(tenancy_xact_callback, NULL);
	RegisterSubXactCallback(tenancy_subxact_callback, NULL);
}

/* ---------------------------------------------------------------------
 * SQL: the context
 * ---------------------------------------------------------------------
 */

PG_FUNCTION_INFO_V1(audit_current_organization_sql);

/*
 * audit_current_organization_sql
 *		audit.current_organization() -> text: the organization the session
 *		acts for, NULL when none.
 */
Datum
audit_current_organization_sql(PG_FUNCTION_ARGS)
{
	const char *org = audit_current_organization();

	if (org == NULL)
		PG_RETURN_NULL();
	PG_RETURN_TEXT_P(cstring_to_text(org));
}

PG_FUNCTION_INFO_V1(audit_current_principal_sql);

/*
 * audit_current_principal_sql
 *		audit.current_principal() -> text: the principal whose organization
 *		roles apply.
 */
Datum
audit_current_principal_sql(PG_FUNCTION_ARGS)
{
	PG_RETURN_TEXT_P(cstring_to_text(audit_current_principal()));
}

PG_FUNCTION_INFO_V1(audit_set_organization_sql);

/*
 * audit_set_organization_sql
 *		audit.set_organization(organization, principal, local) -> text:
 *		act for one of the organizations the session's role is mapped to,
 *		optionally as a named principal (needs may_set_principal).  Errors
 *		with 42501 for anything the mapping does not allow; never widens.
 */
Datum
audit_set_organization_sql(PG_FUNCTION_ARGS)
{
	Oid			user = GetOuterUserId();
	char	   *org;
	char	   *principal = NULL;
	bool		local = !PG_ARGISNULL(2) && PG_GETARG_BOOL(2);

	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("organization must not be NULL"),
				 errhint("Call audit.reset_organization() to stop acting for an organization.")));
	org = text_to_cstring(PG_GETARG_TEXT_PP(0));
	if (org[0] == '\0' || strcmp(org, AUDIT_ANY_ORGANIZATION) == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("\"%s\" is not an organization", org),
				 errhint("Name one organization; '*' in audit.organization_access means any, one at a time.")));
	if (!PG_ARGISNULL(1))
	{
		principal = text_to_cstring(PG_GETARG_TEXT_PP(1));
		if (principal[0] == '\0')
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("principal must not be empty"),
					 errhint("Pass NULL to act as the session's own role.")));
	}

	audit_tenancy_refresh();
	ensure_access(user);
	if (access_for(org) == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("role \"%s\" may not act for organization \"%s\"", access_user_name, org),
				 errhint("The extension's owner maps database roles to organizations with audit.grant_organization_access().")));
	if (principal != NULL && strcmp(principal, access_user_name) != 0 && !may_set_principal_in(org))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("role \"%s\" may not act as principal \"%s\"", access_user_name, principal),
				 errhint("Only roles granted organization access with may_set_principal => true (pooled application roles) name the principal.")));
	if (principal != NULL && strcmp(principal, access_user_name) == 0)
		principal = NULL;

	if (local && !IsTransactionBlock())
	{
		ereport(WARNING,
				(errcode(ERRCODE_NO_ACTIVE_SQL_TRANSACTION),
				 errmsg("audit.set_organization(local => true) has no effect outside a transaction block"),
				 errhint("Call it after BEGIN; it ends with the transaction.")));
		PG_RETURN_NULL();
	}

	selection_begin_change();
	selection_set(&sel_effective, true, user, org, principal);
	if (!local)
		selection_set(&sel_session, true, user, org, principal);
	PG_RETURN_TEXT_P(cstring_to_text(org));
}

PG_FUNCTION_INFO_V1(audit_reset_organization_sql);

/*
 * audit_reset_organization_sql
 *		audit.reset_organization(): undo audit.set_organization(); the
 *		session is back to what its role's mapping gives by itself.
 */
Datum
audit_reset_organization_sql(PG_FUNCTION_ARGS)
{
	selection_begin_change();
	selection_clear(&sel_effective);
	selection_clear(&sel_session);
	PG_RETURN_VOID();
}

PG_FUNCTION_INFO_V1(audit_available_organizations_sql);

/*
 * audit_available_organizations_sql
 *		audit.available_organizations() -> (organization_id, may_set_principal,
 *		current): what the session's role may act for.
 */
Datum
audit_available_organizations_sql(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	const char *current = audit_current_organization();

	InitMaterializedSRF(fcinfo, 0);
	for (int i = 0; i < access_count; i++)
	{
		Datum		values[3];
		bool		nulls[3] = {false, false, false};

		values[0] = CStringGetTextDatum(access_items[i].organization);
		values[1] = BoolGetDatum(access_items[i].may_set_principal);
		values[2] = BoolGetDatum(current != NULL && strcmp(current, access_items[i].organization) == 0);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}

/* ---------------------------------------------------------------------
 * Administrative events
 * ---------------------------------------------------------------------
 */

/* True while audit_record_administrative_event() inserts its row. */
static bool administrative_event_in_progress = false;

/* Action prefixes only audit_record_administrative_event() may write. */
static const char *const reserved_action_prefixes[] = {
	"organization_access.", "organization_role.", "organization_role_assignment.", "tenant_isolation.",
	"gdpr.", "change_tracking.", "audit_db."
};

bool
audit_action_is_reserved(const char *action, int len)
{
	if (len == 0 || (action[0] != 'o' && action[0] != 't' && action[0] != 'g' && action[0] != 'c' &&
					 action[0] != 'a') ||
		administrative_event_in_progress)
		return false;
	for (int i = 0; i < lengthof(reserved_action_prefixes); i++)
	{
		int			plen = strlen(reserved_action_prefixes[i]);

		if (len >= plen && memcmp(action, reserved_action_prefixes[i], plen) == 0)
			return true;
	}
	return false;
}

Oid
audit_extension_owner(void)
{
	Oid			relid = audit_tenancy_relid(AUDIT_LOG_TABLE_NAME);
	HeapTuple	tup;
	Oid			owner;

	if (!OidIsValid(relid))
		elog(ERROR, "audit_db: table audit.audit_log is missing");
	tup = SearchSysCache1(RELOID, ObjectIdGetDatum(relid));
	if (!HeapTupleIsValid(tup))
		elog(ERROR, "cache lookup failed for relation %u", relid);
	owner = ((Form_pg_class) GETSTRUCT(tup))->relowner;
	ReleaseSysCache(tup);
	return owner;
}

void
audit_record_administrative_event(const char *action, const char *organization,
								  const char *target_type, const char *target_id,
								  Jsonb *details)
{
	audit_record_administrative_event_kept(action, organization, target_type, target_id,
										   details, NULL);
}

void
audit_record_administrative_event_kept(const char *action, const char *organization,
									   const char *target_type, const char *target_id,
									   Jsonb *details, const char *retention_policy)
{
	StringInfoData who;
	Oid			save_userid;
	int			save_sec;
	char	   *principal;
	Datum		values[7];
	char		nulls[7] = {' ', ' ', ' ', ' ', ' ', ' ', ' '};
	Jsonb	   *who_doc;
	Jsonb	   *merged;
	int			nestlevel;

	/*
	 * Not while the extension is created, nor for rows loaded verbatim (a
	 * restore, logical replication): their events are in the rows loaded.
	 */
	if (creating_extension || audit_loading_verbatim())
		return;
	principal = pstrdup(audit_current_principal());

	initStringInfo(&who);
	appendStringInfoString(&who, "{\"session_user\": ");
	escape_json(&who, GetUserNameFromId(GetSessionUserId(), false));
	appendStringInfoString(&who, ", \"current_user\": ");
	escape_json(&who, GetUserNameFromId(GetUserId(), false));
	appendStringInfoChar(&who, '}');
	who_doc = DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(who.data)));
	merged = details ? DatumGetJsonbP(DirectFunctionCall2(jsonb_concat, JsonbPGetDatum(details),
														  JsonbPGetDatum(who_doc)))
		: who_doc;

	values[0] = CStringGetTextDatum(action);
	values[1] = CStringGetTextDatum(principal);
	values[2] = organization ? CStringGetTextDatum(organization) : (Datum) 0;
	nulls[2] = organization ? ' ' : 'n';
	values[3] = target_type ? CStringGetTextDatum(target_type) : (Datum) 0;
	nulls[3] = target_type ? ' ' : 'n';
	values[4] = target_id ? CStringGetTextDatum(target_id) : (Datum) 0;
	nulls[4] = target_id ? ' ' : 'n';
	values[5] = JsonbPGetDatum(merged);
	values[6] = CStringGetTextDatum(retention_policy ? retention_policy : "standard");

	GetUserIdAndSecContext(&save_userid, &save_sec);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	/* Written as the owner: nothing of the caller's search_path may apply. */
	nestlevel = audit_pin_search_path();
	SetUserIdAndSecContext(audit_extension_owner(),
						   save_sec | SECURITY_LOCAL_USERID_CHANGE | SECURITY_NOFORCE_RLS);
	administrative_event_in_progress = true;
	PG_TRY();
	{
		int			rc = SPI_execute_with_args("INSERT INTO audit.audit_log (action, status, principal_id,"
											   " organization_id, target_resource_type, target_resource_id,"
											   " data_classification, details, retention_policy)"
											   " VALUES ($1, 'success', $2, $3, $4, $5, 'INTERNAL', $6, $7)",
											   7, (Oid[]) {TEXTOID, TEXTOID, TEXTOID, TEXTOID, TEXTOID, JSONBOID, TEXTOID},
											   values, nulls, false, 0);

		if (rc != SPI_OK_INSERT)
			elog(ERROR, "logging \"%s\" failed: %s", action, SPI_result_code_string(rc));
	}
	PG_FINALLY();
	{
		administrative_event_in_progress = false;
		SetUserIdAndSecContext(save_userid, save_sec);
	}
	PG_END_TRY();
	AtEOXact_GUC(true, nestlevel);
	SPI_finish();
}

/* ---------------------------------------------------------------------
 * SQL: enable / disable tenant isolation on a table
 * ---------------------------------------------------------------------
 */

/* Error unless the current user owns the table (the rights ALTER TABLE needs). */
static void
check_table_owner(Oid relid)
{
#if PG_VERSION_NUM >= 160000
	bool		owner = object_ownercheck(RelationRelationId, relid, GetUserId());
#else
	bool		owner = pg_class_ownercheck(relid, GetUserId());
#endif

	if (!owner)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("must be owner of table %s", get_rel_name(relid)),
				 errhint("Tenant isolation changes a table's row-level security; only its owner may.")));
}

/* Run one DDL statement through SPI, as the caller. */
static void
run_ddl(const char *sql)
{
	int			rc = SPI_execute(sql, false, 0);

	if (rc != SPI_OK_UTILITY)
		elog(ERROR, "\"%s\" failed: %s", sql, SPI_result_code_string(rc));
}

/*
 * A C string as a Datum of type name, for an SPI parameter of NAMEOID: a name
 * is NAMEDATALEN bytes, and SPI copies that many, so the string itself (a
 * literal, or a palloc'd copy of its length) is too short to pass.
 */
static Datum
name_datum(const char *s)
{
	Name		name = (Name) palloc0(NAMEDATALEN);

	namestrcpy(name, s);
	return NameGetDatum(name);
}

/* Drop those of the tenant policies that exist on the table. */
static void
drop_isolation_policies(Oid relid, const char *qualified)
{
	for (int i = 0; i < lengthof(isolation_policies); i++)
	{
		bool		isnull;

		if (SPI_execute_with_args("SELECT EXISTS (SELECT FROM pg_catalog.pg_policy WHERE polrelid = $1 AND polname = $2)",
								  2, (Oid[]) {OIDOID, NAMEOID},
								  (Datum[]) {ObjectIdGetDatum(relid), name_datum(isolation_policies[i])},
								  NULL, false, 1) != SPI_OK_SELECT)
			elog(ERROR, "reading pg_policy failed");
		if (DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull)))
			run_ddl(psprintf("DROP POLICY %s ON %s", quote_identifier(isolation_policies[i]), qualified));
	}
}

/* A relation that can carry row-level security, or an error. */
static void
check_isolatable(Oid relid)
{
	char		kind = get_rel_relkind(relid);

	if (kind == '\0')
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("relation with OID %u does not exist", relid),
				 errhint("Pass the table's name, e.g. 'public.patients'.")));
	if (kind != RELKIND_RELATION && kind != RELKIND_PARTITIONED_TABLE)
		ereport(ERROR,
				(errcode(ERRCODE_WRONG_OBJECT_TYPE),
				 errmsg("\"%s\" is not a table", get_rel_name(relid)),
				 errhint("Row-level security applies to tables; isolate the tables a view or function reads.")));
}

/* Write the isolation registry (audit.tenant_isolated_table) as the extension's owner. */
static void
write_registry(const char *sql, int nargs, Oid *types, Datum *values)
{
	Oid			save_userid;
	int			save_sec;

	GetUserIdAndSecContext(&save_userid, &save_sec);
	SetUserIdAndSecContext(audit_extension_owner(),
						   save_sec | SECURITY_LOCAL_USERID_CHANGE | SECURITY_NOFORCE_RLS);
	PG_TRY();
	{
		int			rc = SPI_execute_with_args(sql, nargs, types, values, NULL, false, 0);

		if (rc < 0)
			elog(ERROR, "\"%s\" failed: %s", sql, SPI_result_code_string(rc));
	}
	PG_FINALLY();
	{
		SetUserIdAndSecContext(save_userid, save_sec);
	}
	PG_END_TRY();
}

PG_FUNCTION_INFO_V1(audit_enable_tenant_isolation_sql);

/*
 * audit_enable_tenant_isolation_sql
 *		audit.enable_tenant_isolation(tbl, column, resource, shared_null_rows):
 *		ENABLE and FORCE row-level security on tbl and (re)create its tenant
 *		policies:
 *		  audit_tenant_read     SELECT: column = current organization AND
 *		                        session_has_permission(resource, 'read')
 *		  audit_tenant_insert   INSERT ... WITH CHECK, 'write'
 *		  audit_tenant_update   UPDATE, 'write' on both the old and new row
 *		  audit_tenant_delete   DELETE, 'write'
 *		  audit_all_organizations  every row, for audit_db_all_organizations
 *		  audit_tenant_shared_read SELECT of rows whose column is NULL (only
 *		                        with shared_null_rows)
 *		resource defaults to 'schema.table'.  Only the table's owner may; the
 *		change is recorded in audit.tenant_isolated_table and logged.
 */
Datum
audit_enable_tenant_isolation_sql(PG_FUNCTION_ARGS)
{
	Oid			relid;
	char	   *column;
	char	   *resource;
	bool		shared_null_rows = !PG_ARGISNULL(3) && PG_GETARG_BOOL(3);
	char	   *qualified;
	AttrNumber	attnum;
	Oid			base_type;
	StringInfoData org_match;
	StringInfoData sql;
	StringInfoData details;
	const char *res_literal;

	if (PG_ARGISNULL(0) || PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("table and column must not be NULL"),
				 errhint("Call audit.enable_tenant_isolation('schema.table', column => 'organization_id').")));
	relid = PG_GETARG_OID(0);
	column = text_to_cstring(PG_GETARG_TEXT_PP(1));
	check_isolatable(relid);
	check_table_owner(relid);
	qualified = quote_qualified_identifier(get_namespace_name(get_rel_namespace(relid)), get_rel_name(relid));
	resource = PG_ARGISNULL(2)
		? psprintf("%s.%s", get_namespace_name(get_rel_namespace(relid)), get_rel_name(relid))
		: text_to_cstring(PG_GETARG_TEXT_PP(2));
	if (resource[0] == '\0')
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("resource must not be empty"),
				 errhint("Pass NULL for the table's own name ('schema.table').")));

	attnum = get_attnum(relid, column);
	if (attnum == InvalidAttrNumber || attnum < 0)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_COLUMN),
				 errmsg("column \"%s\" of table %s does not exist", column, qualified),
				 errhint("Name the column that holds each row's organization.")));
	if (!OidIsValid(get_role_oid(AUDIT_ALL_ORGANIZATIONS_ROLE, true)))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("role \"%s\" does not exist", AUDIT_ALL_ORGANIZATIONS_ROLE),
				 errhint("CREATE EXTENSION audit_db creates it; re-create it with CREATE ROLE %s NOLOGIN.",
						 AUDIT_ALL_ORGANIZATIONS_ROLE)));

	/*
	 * Text-like columns (text, varchar, char(n)) compare in their own type,
	 * so an index on the column serves the policy; other types (uuid,
	 * integers) compare as text (an index on (column::text) serves them).
	 */
	{
		Oid			typid;
		int32		typmod;
		Oid			collid;

		get_atttypetypmodcoll(relid, attnum, &typid, &typmod, &collid);
		if (OidIsValid(collid) && !get_collation_isdeterministic(collid))
			ereport(ERROR,
					(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
					 errmsg("column \"%s\" of table %s has a nondeterministic collation", column, qualified),
					 errhint("Organizations would match case- or accent-insensitively; give the column a deterministic collation (e.g. COLLATE \"C\").")));
		base_type = getBaseType(typid);
	}
	initStringInfo(&org_match);
	if (base_type == TEXTOID || base_type == VARCHAROID)
		appendStringInfo(&org_match, "%s = audit.current_organization()", quote_identifier(column));
	else if (base_type == BPCHAROID)
		appendStringInfo(&org_match, "%s = CAST(audit.current_organization() AS pg_catalog.bpchar)",
						 quote_identifier(column));
	else
		appendStringInfo(&org_match, "CAST(%s AS pg_catalog.text) = audit.current_organization()",
						 quote_identifier(column));
	res_literal = quote_literal_cstr(resource);

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	initStringInfo(&sql);
	appendStringInfo(&sql, "ALTER TABLE %s ENABLE ROW LEVEL SECURITY", qualified);
	run_ddl(sql.data);
	resetStringInfo(&sql);
	appendStringInfo(&sql, "ALTER TABLE %s FORCE ROW LEVEL SECURITY", qualified);
	run_ddl(sql.data);
	drop_isolation_policies(relid, qualified);
	resetStringInfo(&sql);
	appendStringInfo(&sql, "CREATE POLICY audit_tenant_read ON %s AS PERMISSIVE FOR SELECT TO PUBLIC"
					 " USING (%s AND audit.session_has_permission(%s, 'read'))",
					 qualified, org_match.data, res_literal);
	run_ddl(sql.data);
	resetStringInfo(&sql);
	appendStringInfo(&sql, "CREATE POLICY audit_tenant_insert ON %s AS PERMISSIVE FOR INSERT TO PUBLIC"
					 " WITH CHECK (%s AND audit.session_has_permission(%s, 'write'))",
					 qualified, org_match.data, res_literal);
	run_ddl(sql.data);
	resetStringInfo(&sql);
	appendStringInfo(&sql, "CREATE POLICY audit_tenant_update ON %s AS PERMISSIVE FOR UPDATE TO PUBLIC"
					 " USING (%s AND audit.session_has_permission(%s, 'write'))"
					 " WITH CHECK (%s AND audit.session_has_permission(%s, 'write'))",
					 qualified, org_match.data, res_literal, org_match.data, res_literal);
	run_ddl(sql.data);
	resetStringInfo(&sql);
	appendStringInfo(&sql, "CREATE POLICY audit_tenant_delete ON %s AS PERMISSIVE FOR DELETE TO PUBLIC"
					 " USING (%s AND audit.session_has_permission(%s, 'write'))",
					 qualified, org_match.data, res_literal);
	run_ddl(sql.data);
	resetStringInfo(&sql);
	appendStringInfo(&sql, "CREATE POLICY audit_all_organizations ON %s AS PERMISSIVE FOR ALL TO %s"
					 " USING (true) WITH CHECK (true)",
					 qualified, quote_identifier(AUDIT_ALL_ORGANIZATIONS_ROLE));
	run_ddl(sql.data);
	if (shared_null_rows)
	{
		resetStringInfo(&sql);
		appendStringInfo(&sql, "CREATE POLICY audit_tenant_shared_read ON %s AS PERMISSIVE FOR SELECT TO PUBLIC"
						 " USING (%s IS NULL)", qualified, quote_identifier(column));
		run_ddl(sql.data);
	}

	write_registry("INSERT INTO audit.tenant_isolated_table AS t"
				   " (table_name, organization_column, resource, shared_null_rows, built_in, policy_definitions,"
				   "  enabled_by, enabled_at)"
				   " VALUES ($1, $2, $3, $4, $5, audit.tenant_policy_definitions($1), session_user, pg_catalog.now())"
				   " ON CONFLICT (table_name) DO UPDATE SET organization_column = EXCLUDED.organization_column,"
				   " resource = EXCLUDED.resource, shared_null_rows = EXCLUDED.shared_null_rows,"
				   " policy_definitions = EXCLUDED.policy_definitions,"
				   " enabled_by = EXCLUDED.enabled_by, enabled_at = EXCLUDED.enabled_at",
				   5, (Oid[]) {REGCLASSOID, NAMEOID, TEXTOID, BOOLOID, BOOLOID},
				   (Datum[]) {ObjectIdGetDatum(relid), name_datum(column), CStringGetTextDatum(resource),
					   BoolGetDatum(shared_null_rows), BoolGetDatum(creating_extension)});
	SPI_finish();

	initStringInfo(&details);
	appendStringInfoString(&details, "{\"column\": ");
	escape_json(&details, column);
	appendStringInfoString(&details, ", \"resource\": ");
	escape_json(&details, resource);
	appendStringInfo(&details, ", \"shared_null_rows\": %s}", shared_null_rows ? "true" : "false");
	audit_record_administrative_event("tenant_isolation.enable", NULL, "table", qualified,
									  DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(details.data))));
	PG_RETURN_VOID();
}

PG_FUNCTION_INFO_V1(audit_disable_tenant_isolation_sql);

/*
 * audit_disable_tenant_isolation_sql
 *		audit.disable_tenant_isolation(tbl): drop the tenant policies; when no
 *		other policy is left on the table, switch row-level security off
 *		(NO FORCE, DISABLE).  Only the table's owner may; logged.
 */
Datum
audit_disable_tenant_isolation_sql(PG_FUNCTION_ARGS)
{
	Oid			relid;
	char	   *qualified;
	StringInfoData sql;
	bool		others;

	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("table must not be NULL"),
				 errhint("Call audit.disable_tenant_isolation('schema.table').")));
	relid = PG_GETARG_OID(0);
	check_isolatable(relid);
	check_table_owner(relid);
	qualified = quote_qualified_identifier(get_namespace_name(get_rel_namespace(relid)), get_rel_name(relid));

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	initStringInfo(&sql);
	drop_isolation_policies(relid, qualified);
	/* Not read-only: the query must see the policies just dropped as gone. */
	if (SPI_execute_with_args("SELECT EXISTS (SELECT FROM pg_catalog.pg_policy WHERE polrelid = $1)",
							  1, (Oid[]) {OIDOID}, (Datum[]) {ObjectIdGetDatum(relid)}, NULL, false, 1) != SPI_OK_SELECT)
		elog(ERROR, "reading pg_policy failed");
	{
		bool		isnull;

		others = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	}
	if (!others)
	{
		resetStringInfo(&sql);
		appendStringInfo(&sql, "ALTER TABLE %s NO FORCE ROW LEVEL SECURITY", qualified);
		run_ddl(sql.data);
		resetStringInfo(&sql);
		appendStringInfo(&sql, "ALTER TABLE %s DISABLE ROW LEVEL SECURITY", qualified);
		run_ddl(sql.data);
	}
	else
		ereport(NOTICE,
				(errmsg("row-level security stays on for %s: it has policies of its own", qualified)));
	write_registry("DELETE FROM audit.tenant_isolated_table WHERE table_name = $1",
				   1, (Oid[]) {REGCLASSOID}, (Datum[]) {ObjectIdGetDatum(relid)});
	SPI_finish();

	audit_record_administrative_event("tenant_isolation.disable", NULL, "table", qualified, NULL);
	PG_RETURN_VOID();
}
