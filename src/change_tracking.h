/*-------------------------------------------------------------------------
 *
 * change_tracking.h
 *	  Change auditing for any table: the trigger audit.record_change() that
 *	  turns each changed row of a tracked table (audit.tracked_table) into
 *	  one audit event with its diff, and the per-backend cache of what it
 *	  needs to know about each table.
 *
 * SQL-callable entry points (change_tracking.c):
 *		audit.record_change()					audit_record_change (trigger)
 *		audit.record_tracking_event(...)		audit_record_tracking_event_sql
 *
 * The table's metadata (options, columns, primary key, output functions)
 * is cached per backend and dropped on any relcache invalidation of the
 * table (DDL) or of audit.tracked_table (options changed): never queried
 * per row.  Its actions ('<table>.insert', ...) are reserved for it: the
 * stamping refuses them from anyone else (audit_action_is_tracked_change).
 *
 *-------------------------------------------------------------------------
 */
#ifndef AUDIT_CHANGE_TRACKING_H
#define AUDIT_CHANGE_TRACKING_H

/*
 * audit_change_tracking_init
 *		Called from _PG_init: registers the cache invalidation callback.
 */
extern void audit_change_tracking_init(void);

/*
 * audit_action_is_tracked_change
 *		Whether action (len bytes, not terminated) is '<table>.insert',
 *		'.update', '.delete' or '.truncate' of a table tracked now, written
 *		other than by the tracking trigger: the stamping refuses it, so
 *		that the change events of a table cannot be forged.  Reads the
 *		tracked tables once per backend (cached until they change).
 */
extern bool audit_action_is_tracked_change(const char *action, int len);

#endif							/* AUDIT_CHANGE_TRACKING_H */
