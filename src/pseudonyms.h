/*-------------------------------------------------------------------------
 *
 * pseudonyms.h
 *	  GDPR pseudonyms: who may pseudonymize, look up, export and erase
 *	  (audit.gdpr_authorize), and the cryptography of the three pseudonym
 *	  strategies: keyed HMAC-SHA-256 (hash), random tokens (token) and
 *	  AES-256-GCM (encryption, and the encrypted originals of the mapping).
 *
 * SQL-callable entry points (pseudonyms.c), all internal to the GDPR
 * functions of src/sql/80_gdpr.sql except where noted:
 *		audit.gdpr_authorize(operation)					audit_gdpr_authorize_sql
 *		audit.gdpr_hmac(key, domain, scope, value)		audit_gdpr_hmac_sql
 *		audit.gdpr_encrypt(key, plaintext)				audit_gdpr_encrypt_sql
 *		audit.gdpr_decrypt(key, ciphertext)				audit_gdpr_decrypt_sql
 *		audit.gdpr_encryption_key(passphrase)			audit_gdpr_encryption_key_sql
 *		audit.gdpr_random_bytes(n)						audit_gdpr_random_bytes_sql
 *
 * docs/gdpr.md explains the key handling.
 *
 *-------------------------------------------------------------------------
 */
#ifndef AUDIT_PSEUDONYMS_H
#define AUDIT_PSEUDONYMS_H

#include "postgres.h"

/* The role whose members may run every GDPR operation in every organization. */
#define AUDIT_PRIVACY_OFFICER_ROLE	"audit_db_privacy_officer"

/* Organization-role permission resource of the GDPR operations. */
#define AUDIT_GDPR_RESOURCE			"gdpr"

/* Setting: passphrase of the encryption strategy when none is passed in. */
extern char *audit_pseudonym_encryption_key;

#endif							/* AUDIT_PSEUDONYMS_H */
