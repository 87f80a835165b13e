/*-------------------------------------------------------------------------
 *
 * event_api.h
 *	  The SQL API for writing events: audit.log_event(...) with named
 *	  arguments and defaults, and event presets (audit.audit_preset) that
 *	  supply defaults, required fields and validation rules.
 *
 * SQL-callable entry points (no C callers):
 *		audit.log_event(...)			audit_log_event
 *		audit.check_audit_preset()		audit_check_preset (trigger)
 *
 *-------------------------------------------------------------------------
 */
#ifndef AUDIT_EVENT_API_H
#define AUDIT_EVENT_API_H

#include "fmgr.h"

extern Datum audit_log_event(PG_FUNCTION_ARGS);
extern Datum audit_check_preset(PG_FUNCTION_ARGS);

#endif							/* AUDIT_EVENT_API_H */
