/*-------------------------------------------------------------------------
 *
 * pseudonyms.c
 *	  Authorization and cryptography of the GDPR operations
 *	  (src/sql/80_gdpr.sql): who may pseudonymize, reverse a pseudonym,
 *	  export or erase a data subject, and in which organizations; keyed
 *	  HMAC-SHA-256 for deterministic pseudonyms and lookup digests;
 *	  AES-256-GCM for the encrypted originals; PBKDF2 for keys given as
 *	  passphrases; strong random bytes for tokens and keys.
 *
 * All of it is OpenSSL, the library PostgreSQL and pgcrypto use themselves
 * (audit_db already links it for SHA-256), so the GDPR functions need no
 * other extension.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "fmgr.h"
#include "miscadmin.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"

#include "hashing.h"
#include "organization_roles.h"
#include "pseudonyms.h"
#include "tenancy.h"

char	   *audit_pseudonym_encryption_key = NULL;

#define GCM_NONCE_LEN		12
#define GCM_TAG_LEN			16
#define AES_KEY_LEN			32
#define CIPHERTEXT_VERSION	0x01
#define PBKDF2_ITERATIONS	100000
#define PBKDF2_SALT			"audit_db.pseudonym.encryption.v1"
#define GCM_AAD				"audit_db.pseudonym.v1"

/* The GDPR operations a caller can be authorized for. */
static const char *const gdpr_operations[] = {
	"pseudonymize", "reverse_lookup", "export", "erase"
};

PG_FUNCTION_INFO_V1(audit_gdpr_authorize_sql);

/*
 * audit.gdpr_authorize(operation text) returns text
 *		Where the calling session may run the GDPR operation: '*' (every
 *		organization) for superusers and members of audit_db_privacy_officer,
 *		else the organization the session acts for, provided its
 *		organization roles grant resource 'gdpr', action <operation>.
 *		Anyone else gets SQLSTATE 42501.  The caller is the outer user (the
 *		session role, or the role of SET ROLE), never the owner of a
 *		SECURITY DEFINER function that asks.
 */
Datum
audit_gdpr_authorize_sql(PG_FUNCTION_ARGS)
{
	char	   *operation;
	Oid			caller = GetOuterUserId();
	Oid			officer;
	const char *organization;
	bool		known = false;

	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("the GDPR operation must not be NULL"),
				 errhint("One of: pseudonymize, reverse_lookup, export, erase.")));
	operation = text_to_cstring(PG_GETARG_TEXT_PP(0));
	for (int i = 0; i < lengthof(gdpr_operations); i++)
		known |= strcmp(operation, gdpr_operations[i]) == 0;
	if (!known)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("unknown GDPR operation \"%s\"", operation),
				 errhint("One of: pseudonymize, reverse_lookup, export, erase.")));

	officer = get_role_oid(AUDIT_PRIVACY_OFFICER_ROLE, true);
	if (superuser_arg(caller) || (OidIsValid(officer) && has_privs_of_role(caller, officer)))
		PG_RETURN_TEXT_P(cstring_to_text("*"));

	organization = audit_current_organization();
	if (organization == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied for GDPR operation \"%s\"", operation),
				 errdetail("Role \"%s\" is not a member of %s and acts for no organization.",
						   GetUserNameFromId(caller, false), AUDIT_PRIVACY_OFFICER_ROLE),
				 errhint("GRANT %s to the role, or act for an organization (audit.set_organization()) "
						 "where an organization role grants resource '%s', action '%s'.",
						 AUDIT_PRIVACY_OFFICER_ROLE, AUDIT_GDPR_RESOURCE, operation)));
	organization = pstrdup(organization);
	if (!audit_session_has_permission(AUDIT_GDPR_RESOURCE, operation))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied for GDPR operation \"%s\" in organization \"%s\"",
						operation, organization),
				 errdetail("The principal \"%s\" has no organization role granting resource '%s', action '%s'.",
						   audit_current_principal(), AUDIT_GDPR_RESOURCE, operation),
				 errhint("An administrator of the organization can assign a role with the permission "
						 "{\"resource\": \"%s\", \"action\": \"%s\"}.", AUDIT_GDPR_RESOURCE, operation)));
	PG_RETURN_TEXT_P(cstring_to_text(organization));
}

/*
 * key_argument
 *		The bytes of a key argument, which must be AES_KEY_LEN long.
 */
static const uint8 *
key_argument(bytea *key)
{
	if (VARSIZE_ANY_EXHDR(key) != AES_KEY_LEN)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("a GDPR key must be %d bytes, not %d", AES_KEY_LEN, (int) VARSIZE_ANY_EXHDR(key)),
				 errhint("Keys come from audit.pseudonym_secret or audit.gdpr_encryption_key().")));
	return (const uint8 *) VARDATA_ANY(key);
}

/* Append a length-prefixed field (uint32 big-endian length, bytes). */
static void
append_field(StringInfo buf, const char *data, int len)
{
	uint8		n[4] = {(uint8) (len >> 24), (uint8) (len >> 16), (uint8) (len >> 8), (uint8) len};

	appendBinaryStringInfo(buf, (const char *) n, 4);
	appendBinaryStringInfo(buf, data, len);
}

PG_FUNCTION_INFO_V1(audit_gdpr_hmac_sql);

/*
 * audit.gdpr_hmac(key bytea, domain text, scope text, value text) returns bytea
 *		HMAC-SHA-256 under key (32 bytes) of the three length-prefixed
 *		fields domain, scope, value: deterministic pseudonyms
 *		('audit_db.pseudonym.v1') and the digests that find a subject's
 *		mapping rows without decrypting them ('audit_db.lookup.v1').  STRICT.
 */
Datum
audit_gdpr_hmac_sql(PG_FUNCTION_ARGS)
{
	const uint8 *key = key_argument(PG_GETARG_BYTEA_PP(0));
	text	   *fields[3] = {PG_GETARG_TEXT_PP(1), PG_GETARG_TEXT_PP(2), PG_GETARG_TEXT_PP(3)};
	StringInfoData msg;
	uint8		out[EVP_MAX_MD_SIZE];
	unsigned int outlen = 0;

	initStringInfo(&msg);
	for (int i = 0; i < 3; i++)
		append_field(&msg, VARDATA_ANY(fields[i]), VARSIZE_ANY_EXHDR(fields[i]));
	if (HMAC(EVP_sha256(), key, AES_KEY_LEN, (const unsigned char *) msg.data, msg.len,
			 out, &outlen) == NULL || outlen != AUDIT_HASH_LEN)
		ereport(ERROR,
				(errcode(ERRCODE_EXTERNAL_ROUTINE_EXCEPTION),
				 errmsg("HMAC-SHA-256 failed in the crypto library"),
				 errhint("Nothing was changed; check the server's OpenSSL installation.")));
	pfree(msg.data);
	PG_RETURN_BYTEA_P(audit_bytea_from_bytes(out, AUDIT_HASH_LEN));
}

PG_FUNCTION_INFO_V1(audit_gdpr_encrypt_sql);

/*
 * audit.gdpr_encrypt(key bytea, plaintext text) returns bytea
 *		AES-256-GCM under key (32 bytes) with a fresh random 96-bit nonce:
 *		version byte 0x01 || nonce || ciphertext || 128-bit tag.  The tag
 *		also authenticates the constant 'audit_db.pseudonym.v1'.  STRICT.
 */
Datum
audit_gdpr_encrypt_sql(PG_FUNCTION_ARGS)
{
	const uint8 *key = key_argument(PG_GETARG_BYTEA_PP(0));
	text	   *plain = PG_GETARG_TEXT_PP(1);
	int			plen = VARSIZE_ANY_EXHDR(plain);
	int			total = 1 + GCM_NONCE_LEN + plen + GCM_TAG_LEN;
	bytea	   *result = palloc(VARHDRSZ + total);
	uint8	   *out = (uint8 *) VARDATA(result);
	EVP_CIPHER_CTX *ctx;
	int			len = 0;
	int			fin = 0;
	bool		ok;

	SET_VARSIZE(result, VARHDRSZ + total);
	out[0] = CIPHERTEXT_VERSION;
	if (!pg_strong_random(out + 1, GCM_NONCE_LEN))
		ereport(ERROR,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("could not generate a random nonce"),
				 errhint("The server's strong random source failed; nothing was changed.")));

	ctx = EVP_CIPHER_CTX_new();
	ok = ctx != NULL &&
		EVP_EncryptInit_ex(ctx, EVP_aes_256_gcm(), NULL, NULL, NULL) == 1 &&
		EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_IVLEN, GCM_NONCE_LEN, NULL) == 1 &&
		EVP_EncryptInit_ex(ctx, NULL, NULL, key, out + 1) == 1 &&
		EVP_EncryptUpdate(ctx, NULL, &len, (const unsigned char *) GCM_AAD, strlen(GCM_AAD)) == 1 &&
		EVP_EncryptUpdate(ctx, out + 1 + GCM_NONCE_LEN, &len,
						  (const unsigned char *) VARDATA_ANY(plain), plen) == 1 &&
		EVP_EncryptFinal_ex(ctx, out + 1 + GCM_NONCE_LEN + len, &fin) == 1 &&
		len + fin == plen &&
		EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, GCM_TAG_LEN,
							out + 1 + GCM_NONCE_LEN + plen) == 1;
	EVP_CIPHER_CTX_free(ctx);
	if (!ok)
		ereport(ERROR,
				(errcode(ERRCODE_EXTERNAL_ROUTINE_EXCEPTION),
				 errmsg("AES-256-GCM encryption failed in the crypto library"),
				 errhint("Nothing was changed; check the server's OpenSSL installation.")));
	PG_RETURN_BYTEA_P(result);
}

PG_FUNCTION_INFO_V1(audit_gdpr_decrypt_sql);

/*
 * audit.gdpr_decrypt(key bytea, ciphertext bytea) returns text
 *		The plaintext of audit.gdpr_encrypt()'s output; SQLSTATE 22023 when
 *		the key is wrong or the ciphertext was altered (the tag does not
 *		verify).  STRICT.
 */
Datum
audit_gdpr_decrypt_sql(PG_FUNCTION_ARGS)
{
	const uint8 *key = key_argument(PG_GETARG_BYTEA_PP(0));
	bytea	   *data = PG_GETARG_BYTEA_PP(1);
	const uint8 *in = (const uint8 *) VARDATA_ANY(data);
	int			inlen = VARSIZE_ANY_EXHDR(data);
	int			clen = inlen - 1 - GCM_NONCE_LEN - GCM_TAG_LEN;
	char	   *plain;
	EVP_CIPHER_CTX *ctx;
	int			len = 0;
	int			fin = 0;
	bool		ok;

	if (clen < 0 || in[0] != CIPHERTEXT_VERSION)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("not an audit_db ciphertext"),
				 errhint("Pseudonyms of the encryption strategy start with 'pe_'.")));
	plain = palloc(clen + 1);
	ctx = EVP_CIPHER_CTX_new();
	ok = ctx != NULL &&
		EVP_DecryptInit_ex(ctx, EVP_aes_256_gcm(), NULL, NULL, NULL) == 1 &&
		EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_IVLEN, GCM_NONCE_LEN, NULL) == 1 &&
		EVP_DecryptInit_ex(ctx, NULL, NULL, key, in + 1) == 1 &&
		EVP_DecryptUpdate(ctx, NULL, &len, (const unsigned char *) GCM_AAD, strlen(GCM_AAD)) == 1 &&
		EVP_DecryptUpdate(ctx, (unsigned char *) plain, &len, in + 1 + GCM_NONCE_LEN, clen) == 1 &&
		EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, GCM_TAG_LEN,
							(void *) (in + 1 + GCM_NONCE_LEN + clen)) == 1 &&
		EVP_DecryptFinal_ex(ctx, (unsigned char *) plain + len, &fin) == 1 &&
		len + fin == clen;
	EVP_CIPHER_CTX_free(ctx);
	if (!ok)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("the key does not decrypt this pseudonym"),
				 errhint("Pass the passphrase the pseudonym was made with (encryption_key), "
						 "or set audit_db.pseudonym_encryption_key to it.")));
	plain[clen] = '\0';
	PG_RETURN_TEXT_P(cstring_to_text_with_len(plain, clen));
}

PG_FUNCTION_INFO_V1(audit_gdpr_encryption_key_sql);

/*
 * audit.gdpr_encryption_key(passphrase text) returns bytea
 *		The AES-256 key of the encryption strategy: PBKDF2-HMAC-SHA-256 of
 *		the passphrase (100,000 iterations).  A NULL passphrase means the
 *		superuser-only setting audit_db.pseudonym_encryption_key; when that
 *		is empty too, SQLSTATE 22023.  The database never stores the key.
 */
Datum
audit_gdpr_encryption_key_sql(PG_FUNCTION_ARGS)
{
	const char *pass;
	int			passlen;
	uint8		key[AES_KEY_LEN];
	bytea	   *result;

	if (!PG_ARGISNULL(0))
	{
		text	   *t = PG_GETARG_TEXT_PP(0);

		pass = VARDATA_ANY(t);
		passlen = VARSIZE_ANY_EXHDR(t);
	}
	else
	{
		pass = audit_pseudonym_encryption_key ? audit_pseudonym_encryption_key : "";
		passlen = strlen(pass);
	}
	if (passlen == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("the encryption strategy needs a key"),
				 errhint("Pass encryption_key => '...', or have a superuser set audit_db.pseudonym_encryption_key "
						 "in postgresql.conf (docs/gdpr.md).")));
	if (passlen < 16)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("the encryption key is too short (%d bytes)", passlen),
				 errhint("Use a passphrase of at least 16 bytes, for example 32 random bytes in hex.")));
	if (PKCS5_PBKDF2_HMAC(pass, passlen, (const unsigned char *) PBKDF2_SALT, strlen(PBKDF2_SALT),
						  PBKDF2_ITERATIONS, EVP_sha256(), AES_KEY_LEN, key) != 1)
		ereport(ERROR,
				(errcode(ERRCODE_EXTERNAL_ROUTINE_EXCEPTION),
				 errmsg("PBKDF2 failed in the crypto library"),
				 errhint("Nothing was changed; check the server's OpenSSL installation.")));
	result = audit_bytea_from_bytes(key, AES_KEY_LEN);
	OPENSSL_cleanse(key, sizeof(key));
	PG_RETURN_BYTEA_P(result);
}

PG_FUNCTION_INFO_V1(audit_gdpr_random_bytes_sql);

/*
 * audit.gdpr_random_bytes(n integer) returns bytea
 *		n (1 to 1024) bytes from the server's strong random source.
 */
Datum
audit_gdpr_random_bytes_sql(PG_FUNCTION_ARGS)
{
	int32		n = PG_GETARG_INT32(0);
	bytea	   *result;

	if (n < 1 || n > 1024)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("random byte count %d is out of range", n),
				 errhint("Ask for 1 to 1024 bytes.")));
	result = palloc(VARHDRSZ + n);
	SET_VARSIZE(result, VARHDRSZ + n);
	if (!pg_strong_random(VARDATA(result), n))
		ereport(ERROR,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("could not generate random bytes"),
				 errhint("The server's strong random source failed; nothing was changed.")));
	PG_RETURN_BYTEA_P(result);
}

PG_FUNCTION_INFO_V1(audit_record_gdpr_event_sql);

/*
 * audit.record_gdpr_event(action text, organization text, target_type text,
 *		target_id text, details jsonb) returns void
 *		Log one GDPR request in audit.audit_log under its reserved 'gdpr.'
 *		action, attributed to the caller, as the extension's owner, under
 *		retention policy 'gdpr_record' (no policy row by default: kept for
 *		ever, as the record of what was done to personal data must be).
 */
Datum
audit_record_gdpr_event_sql(PG_FUNCTION_ARGS)
{
	char	   *action;

	if (PG_ARGISNULL(0) || PG_ARGISNULL(4))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("a GDPR event needs an action and details"),
				 errhint("audit.record_gdpr_event() is internal to the GDPR functions.")));
	action = text_to_cstring(PG_GETARG_TEXT_PP(0));
	if (strncmp(action, "gdpr.", 5) != 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("\"%s\" is not a GDPR event action", action),
				 errhint("GDPR event actions start with \"gdpr.\".")));
	audit_record_administrative_event_kept(action,
										   PG_ARGISNULL(1) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(1)),
										   PG_ARGISNULL(2) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(2)),
										   PG_ARGISNULL(3) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(3)),
										   PG_GETARG_JSONB_P(4), "gdpr_record");
	PG_RETURN_VOID();
}
