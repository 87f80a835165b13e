/*-------------------------------------------------------------------------
 *
 * organization_roles.h
 *	  Organization roles (audit.organization_role) with inherited
 *	  permissions, their assignment to principals, and the permission checks
 *	  row-level-security policies call, answered from a per-backend cache.
 *
 * SQL-callable entry points (organization_roles.c):
 *		audit.has_permission(principal, organization, resource, action)
 *		audit.session_has_permission(resource, action)
 *		audit.user_permissions(principal, organization)
 *		audit.check_organization_role()		(trigger: validity, cycles)
 *		audit.log_organization_change()		(trigger: log, invalidate caches)
 *
 *-------------------------------------------------------------------------
 */
#ifndef AUDIT_ORGANIZATION_ROLES_H
#define AUDIT_ORGANIZATION_ROLES_H

#include "postgres.h"

/*
 * audit_organization_roles_init
 *		Called from _PG_init: registers the cache invalidation callback.
 */
extern void audit_organization_roles_init(void);

/*
 * audit_principal_has_permission
 *		Whether principal, through the roles assigned to it in organization
 *		and the roles they inherit, may perform action on resource.
 *		Patterns: '*' matches anything, 'prefix*' any value starting with
 *		prefix ('audit.*'), anything else itself.  Strings need not be
 *		NUL-terminated; lengths are in bytes.
 */
extern bool audit_principal_has_permission(const char *principal, int principal_len,
										   const char *organization, int organization_len,
										   const char *resource, int resource_len,
										   const char *action, int action_len);

/*
 * audit_session_has_permission
 *		audit_principal_has_permission() for the session's organization and
 *		principal; false when the session acts for no organization.
 */
extern bool audit_session_has_permission(const char *resource, const char *action);

#endif							/* AUDIT_ORGANIZATION_ROLES_H */
