/*-------------------------------------------------------------------------
 *
 * tenancy.h
 *	  Tenant isolation: the organization a session acts for, which the
 *	  row-level-security policies of isolated tables compare rows with, and
 *	  the functions that put those policies on a table.
 *
 * SQL-callable entry points (tenancy.c):
 *		audit.current_organization()			audit_current_organization_sql
 *		audit.current_principal()				audit_current_principal_sql
 *		audit.set_organization(...)				audit_set_organization_sql
 *		audit.reset_organization()				audit_reset_organization_sql
 *		audit.available_organizations()			audit_available_organizations_sql
 *		audit.enable_tenant_isolation(...)		audit_enable_tenant_isolation_sql
 *		audit.disable_tenant_isolation(...)		audit_disable_tenant_isolation_sql
 *
 *-------------------------------------------------------------------------
 */
#ifndef AUDIT_TENANCY_H
#define AUDIT_TENANCY_H

#include "postgres.h"

#include "utils/jsonb.h"
#include "utils/rel.h"

/* The role whose members read and write every organization's rows. */
#define AUDIT_ALL_ORGANIZATIONS_ROLE	"audit_db_all_organizations"

/* organization_access.organization_id that lets a role select any organization. */
#define AUDIT_ANY_ORGANIZATION			"*"

/*
 * audit_tenancy_init
 *		Called from _PG_init: registers the cache invalidation and
 *		end-of-transaction callbacks.
 */
extern void audit_tenancy_init(void);

/*
 * audit_current_organization
 *		The organization the session acts for (palloc'd in no context: the
 *		string lives until the next call that may change it; copy it to keep
 *		it), or NULL when it acts for none.
 */
extern const char *audit_current_organization(void);

/*
 * audit_current_principal
 *		The principal whose organization roles decide the session's
 *		permissions: the one set by audit.set_organization(principal => ...),
 *		else the name of the session's role (outer user).  Same lifetime as
 *		audit_current_organization().
 */
extern const char *audit_current_principal(void);

/*
 * audit_tenancy_discard
 *		DISCARD ALL: forget the session's audit.set_organization() selection.
 */
extern void audit_tenancy_discard(void);

/*
 * audit_session_identity
 *		Both of the above from one look at the access cache: the two strings
 *		stay valid together (calling the two functions one after the other
 *		may reload the cache in between).
 */
extern void audit_session_identity(const char **organization, const char **principal);

/*
 * audit_tenancy_scoped
 *		Whether the current user is confined to one organization: not a
 *		superuser, no BYPASSRLS, not a member of audit_db_all_organizations.
 */
extern bool audit_tenancy_scoped(void);

/*
 * audit_tenancy_confinement
 *		NULL when the current user sees every organization; else the one
 *		organization it is confined to (a palloc'd copy), or an error
 *		(42501, with hint) when it acts for none.
 */
extern char *audit_tenancy_confinement(const char *hint);

/*
 * audit_tenancy_refresh
 *		Once per statement: take in other sessions' committed changes to
 *		organization access and roles (shared invalidation messages), so a
 *		revoked permission is gone at a session's next statement even inside
 *		an open transaction.
 */
extern void audit_tenancy_refresh(void);

/*
 * audit_tenancy_relid
 *		OID of the named table in schema audit (InvalidOid if missing); the
 *		invalidation callbacks watch the tables looked up this way.
 */
extern Oid	audit_tenancy_relid(const char *relname);

/*
 * audit_column_of
 *		Attribute number of rel's column name (not dropped); errors if missing.
 */
extern AttrNumber audit_column_of(Relation rel, const char *name);

/*
 * audit_extension_owner
 *		The owner of audit.audit_log: whom audit_db's own bookkeeping writes
 *		as.
 */
extern Oid	audit_extension_owner(void);

/*
 * audit_record_administrative_event
 *		Append an event about a change to tenancy or permissions to
 *		audit.audit_log, written as the extension's owner (no policy or table
 *		privilege of the caller applies) and attributed to the caller's
 *		principal, session user and current user.  Skipped while the
 *		extension is being created.  organization may be NULL.
 */
extern void audit_record_administrative_event(const char *action, const char *organization,
											  const char *target_type, const char *target_id,
											  Jsonb *details);

/*
 * audit_record_administrative_event_kept
 *		The same, under the named retention policy instead of 'standard'
 *		(GDPR records are kept under 'gdpr_record', which has no policy row
 *		by default: kept for ever).
 */
extern void audit_record_administrative_event_kept(const char *action, const char *organization,
												   const char *target_type, const char *target_id,
												   Jsonb *details, const char *retention_policy);

/*
 * audit_action_is_reserved
 *		Whether an event action (len bytes, not NUL-terminated) names one of
 *		audit_db's own administrative events ('organization_role.insert',
 *		'tenant_isolation.enable', 'gdpr.erase', ...), which only
 *		audit_record_administrative_event() may write: the stamping trigger
 *		refuses them from anyone else, so they cannot be forged.
 */
extern bool audit_action_is_reserved(const char *action, int len);

#endif							/* AUDIT_TENANCY_H */
