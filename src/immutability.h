/*-------------------------------------------------------------------------
 *
 * immutability.h
 *	  Append-only enforcement of audit.audit_log, and the one controlled
 *	  exception: a backend-local permission that only audit_db's own C
 *	  code can grant, for the operations that must change stored rows
 *	  (retention, redaction of personal data).
 *
 * Use:
 *		audit_begin_privileged_change("retention");
 *		PG_TRY();
 *		{
 *			... UPDATE / DELETE / TRUNCATE through SPI ...
 *		}
 *		PG_FINALLY();
 *		{
 *			audit_end_privileged_change();
 *		}
 *		PG_END_TRY();
 *
 * There is no SQL function, setting or table row that grants it: a user
 * can only obtain it by loading C code, which already requires superuser.
 * A grant ends with its transaction, and one taken inside a subtransaction
 * ends when that subtransaction aborts.  While held, it covers every audit
 * row this backend touches: keep the section short and run no user code in it.
 *
 *-------------------------------------------------------------------------
 */
#ifndef AUDIT_IMMUTABILITY_H
#define AUDIT_IMMUTABILITY_H

/* Called once from _PG_init: registers the transaction-end reset. */
extern void audit_immutability_init(void);

/* Grant (nestable) / withdraw the permission for this backend. */
extern void audit_begin_privileged_change(const char *reason);
extern void audit_end_privileged_change(void);

/* Is the permission held right now? */
extern bool audit_privileged_change_active(void);

#endif							/* AUDIT_IMMUTABILITY_H */
