/*-------------------------------------------------------------------------
 *
 * vocabulary.h
 *	  The enumerated values of audit events (status, data classification,
 *	  hash algorithm) and the helpers that test and list them.
 *
 * The domains (audit.event_status and friends, used by presets, retention
 * and tracking) call the SQL forms (audit.is_event_status() and friends);
 * the stamping trigger of audit.audit_log, audit.log_event() and the preset
 * validator call the C forms: one list of values for all of them.
 *
 *-------------------------------------------------------------------------
 */
#ifndef AUDIT_VOCABULARY_H
#define AUDIT_VOCABULARY_H

extern const char *const audit_status_values[];
extern const int audit_status_count;
extern const char *const audit_classification_values[];
extern const int audit_classification_count;
extern const char *const audit_hash_algorithm_values[];
extern const int audit_hash_algorithm_count;

/*
 * audit_value_in_list
 *		True when the len bytes at value equal one of the count strings in list.
 */
extern bool audit_value_in_list(const char *value, int len,
								const char *const *list, int count);

/*
 * audit_list_to_string
 *		The list as "'a', 'b', 'c'" (palloc'd), for error hints.
 */
extern char *audit_list_to_string(const char *const *list, int count);

/*
 * audit_check_enumerated
 *		Raise 23514 with a hint listing the accepted values unless the text
 *		value is in list; field names the value in the message.
 */
extern void audit_check_enumerated(const char *field, Datum value,
								   const char *const *list, int count);

#endif							/* AUDIT_VOCABULARY_H */
