/*-------------------------------------------------------------------------
 *
 * redaction.h
 *	  Redaction of a data subject's personal data in audit.audit_log
 *	  (pseudonymization and erasure) that keeps the chain verifiable, and
 *	  the checks audit.verify() makes of redacted rows.
 *
 * A redacted row keeps its leaf: the personal fields entered the leaf only
 * through the salted commitment, which redaction stores before destroying
 * the salt.  What the personal fields hold afterwards is attested instead:
 * audit.redacted_row keeps, per redacted row and request, a digest of the
 * new fields (hash format, "Redaction records"), and the request's sealed
 * event ('gdpr.pseudonymize', 'gdpr.erase') carries the Merkle root of its
 * digests.  docs/gdpr.md describes the whole.
 *
 * SQL-callable entry points (redaction.c):
 *		audit.mentions_subject(row, terms)		audit_mentions_subject_sql
 *		audit.redact_subject_rows(...)			audit_redact_subject_rows_sql
 *
 *-------------------------------------------------------------------------
 */
#ifndef AUDIT_REDACTION_H
#define AUDIT_REDACTION_H

#include "postgres.h"

#include "audit_log_columns.h"
#include "hashing.h"

/* What audit.verify() keeps while it checks redacted rows. */
typedef struct AuditRedactionCheck AuditRedactionCheck;

/* Called with a problem found in the redaction records. */
typedef void (*AuditRedactionReport) (void *arg, int64 row_id, const char *field,
									  const char *problem, const char *detail);

/*
 * audit_redaction_check_begin
 *		Load the latest attestation of every redacted row (SPI connected,
 *		allocations in cxt).
 */
extern AuditRedactionCheck *audit_redaction_check_begin(MemoryContext cxt);

/*
 * audit_redaction_check_row
 *		For a row of the log whose leaf checked out: a redacted row's
 *		personal fields must match its latest attestation; a GDPR request
 *		event's attestation root is remembered for the final check.  Reports
 *		through report.
 */
extern void audit_redaction_check_row(AuditRedactionCheck *rc, Datum *values, bool *nulls,
									  const AuditColumnMap *map,
									  AuditRedactionReport report, void *arg);

/*
 * audit_redaction_check_finish
 *		Each request event met must carry the Merkle root of its request's
 *		attestations; with whole_log, each request that attests a row met
 *		must have had its sealed event met.
 */
extern void audit_redaction_check_finish(AuditRedactionCheck *rc, bool whole_log,
										 AuditRedactionReport report, void *arg);

#endif							/* AUDIT_REDACTION_H */
