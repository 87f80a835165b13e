/*-------------------------------------------------------------------------
 *
 * audit_db.h
 *	  Declarations shared by every part of the audit_db extension: the
 *	  extension's schema and table names, its settings (GUCs), and the
 *	  vocabulary of enumerated audit values.
 *
 * Each concern lives in its own file under src/ with its own header; this
 * header holds only what more than one of them needs.
 *
 *-------------------------------------------------------------------------
 */
#ifndef AUDIT_DB_H
#define AUDIT_DB_H

#include "postgres.h"

/* Schema that holds every object of the extension (not relocatable). */
#define AUDIT_SCHEMA_NAME		"audit"
#define AUDIT_LOG_TABLE_NAME	"audit_log"
#define AUDIT_LOG_ID_SEQUENCE	"audit_log_id_seq"

/* The only hash algorithm of hash format v1. */
#define AUDIT_HASH_ALGORITHM	"SHA-256"

/* Settings (see audit_db.c for their documentation). */
extern int	audit_max_details_bytes;

/*
 * Enumerated values of audit_log.status and audit_log.data_classification.
 * The CHECK constraints in src/sql/20_audit_log.sql list the same values;
 * these arrays let C code give a precise error with a hint before the
 * constraint would fire.
 */
extern const char *const audit_status_values[];
extern const int audit_status_count;
extern const char *const audit_classification_values[];
extern const int audit_classification_count;

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

#endif							/* AUDIT_DB_H */
