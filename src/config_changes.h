/*-------------------------------------------------------------------------
 *
 * config_changes.h
 *	  Recording changes of audit_db.* settings (ALTER SYSTEM, ALTER
 *	  DATABASE ... SET, ALTER ROLE ... SET) in audit.config_change_event,
 *	  from the utility hook of audit_db.c.  Changes of policy rows are
 *	  recorded by triggers (src/sql/82_error_log.sql, 88_config_changes.sql).
 *
 * Use, around standard_ProcessUtility():
 *		AuditSettingChange *change = audit_setting_change_begin(stmt);
 *		... run the statement ...
 *		audit_setting_change_finish(change);	(NULL is allowed)
 *
 *-------------------------------------------------------------------------
 */
#ifndef AUDIT_CONFIG_CHANGES_H
#define AUDIT_CONFIG_CHANGES_H

#include "postgres.h"

#include "nodes/parsenodes.h"

typedef struct AuditSettingChange AuditSettingChange;

/*
 * audit_setting_change_begin
 *		For a statement that sets or resets an audit_db.* setting: what it
 *		changes and the value before (palloc'd in the current context);
 *		NULL for any other statement.
 */
extern AuditSettingChange *audit_setting_change_begin(Node *stmt);

/*
 * audit_setting_change_finish
 *		After the statement succeeded: record the change, when this database
 *		has the extension (outside recovery).
 */
extern void audit_setting_change_finish(AuditSettingChange *change);

#endif							/* AUDIT_CONFIG_CHANGES_H */
