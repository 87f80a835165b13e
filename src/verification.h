/*-------------------------------------------------------------------------
 *
 * verification.h
 *	  audit.verify() and the shared progress of running verifications.
 *
 *-------------------------------------------------------------------------
 */
#ifndef AUDIT_VERIFICATION_H
#define AUDIT_VERIFICATION_H

/* audit_db.unsealed_grace: seconds before an unsealed row is a problem. */
extern int	audit_unsealed_grace;

/*
 * audit_verification_init
 *		Called from _PG_init: with the library preloaded, reserve shared
 *		memory for audit.verification_in_progress.
 */
extern void audit_verification_init(void);

#endif							/* AUDIT_VERIFICATION_H */
