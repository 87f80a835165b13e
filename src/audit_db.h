/*-------------------------------------------------------------------------
 *
 * audit_db.h
 *	  Declarations shared by every part of the audit_db extension: the
 *	  extension's schema and table names and its settings (GUCs).
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

extern int	audit_plan_transaction_range_scans(void);
extern int	audit_pin_search_path(void);

#endif							/* AUDIT_DB_H */
