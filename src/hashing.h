/*-------------------------------------------------------------------------
 *
 * hashing.h
 *	  Hash format v1 of audit rows: the canonical, length-prefixed,
 *	  domain-separated encoding of a row, its salted commitment to the
 *	  personal fields, its leaf hash (SHA-256), and the salt source.
 *
 * docs/hash-format.md specifies the encoding byte by byte; keep the two in
 * step, together with test/vectors/ and the independent implementation in
 * test/hash_vectors.py.
 *
 *-------------------------------------------------------------------------
 */
#ifndef AUDIT_HASHING_H
#define AUDIT_HASHING_H

#include "datatype/timestamp.h"
#include "fmgr.h"
#include "lib/stringinfo.h"

#include "audit_log_columns.h"

#define AUDIT_HASH_LEN		32	/* SHA-256 output */
#define AUDIT_SALT_LEN		16	/* personal-data salt of one row */

/* Domain tags: change them only together with docs/hash-format.md. */
#define AUDIT_LEAF_PREFIX		0x00
#define AUDIT_COMMIT_PREFIX		0x02
#define AUDIT_LEAF_DOMAIN		"audit_db.leaf.v1"
#define AUDIT_COMMIT_DOMAIN		"audit_db.personal.v1"

/*
 * audit_sha256
 *		SHA-256 of len bytes at data into out.  Errors out (never returns a
 *		wrong digest) if the crypto library fails.
 */
extern void audit_sha256(const void *data, size_t len, uint8 out[AUDIT_HASH_LEN]);

/*
 * audit_sha256_x2
 *		SHA-256 of two messages (a: alen bytes, b: blen bytes) into aout and
 *		bout, computed together where the CPU allows it (faster than two
 *		audit_sha256() calls); the same digests either way.
 */
extern void audit_sha256_x2(const void *a, size_t alen, uint8 aout[AUDIT_HASH_LEN],
							const void *b, size_t blen, uint8 bout[AUDIT_HASH_LEN]);

/*
 * audit_random_salt
 *		AUDIT_SALT_LEN bytes from a cryptographically strong source.
 */
extern void audit_random_salt(uint8 out[AUDIT_SALT_LEN]);

/*
 * audit_encode_commitment_input / audit_encode_leaf_input
 *		Append to buf the exact bytes that are hashed into the commitment
 *		and the leaf of the row given by values/nulls under map.  The
 *		commitment input needs a salt in the row; the leaf input takes the
 *		commitment as an argument.  *details_len (may be NULL) receives the
 *		length of the canonical details text.
 */
extern void audit_encode_commitment_input(StringInfo buf, Datum *values, bool *nulls,
										  const AuditColumnMap *map, int *details_len);
extern void audit_encode_leaf_input(StringInfo buf, Datum *values, bool *nulls,
									const AuditColumnMap *map,
									const uint8 commitment[AUDIT_HASH_LEN]);

/*
 * audit_row_commitment
 *		The row's commitment to its personal fields: computed from the salt
 *		when the row still has one, else the stored commitment of a redacted
 *		row.  Errors out if the row has neither.
 */
extern void audit_row_commitment(Datum *values, bool *nulls, const AuditColumnMap *map,
								 uint8 out[AUDIT_HASH_LEN], int *details_len);

/*
 * audit_row_leaf_hash
 *		The leaf hash of the row, given its commitment.
 */
extern void audit_row_leaf_hash(Datum *values, bool *nulls, const AuditColumnMap *map,
								const uint8 commitment[AUDIT_HASH_LEN],
								uint8 out[AUDIT_HASH_LEN]);

/*
 * audit_row_leaf_for_verify
 *		The row's leaf hash, exactly as audit_row_commitment() followed by
 *		audit_row_leaf_hash() compute it (same errors too), through a path
 *		built for audit.verify(): jsonb is written from its binary form
 *		without iterators, plain text is read in place, one buffer serves
 *		both encodings, and nothing is allocated for an ordinary row.
 */
extern void audit_row_leaf_for_verify(Datum *values, bool *nulls, const AuditColumnMap *map,
									  uint8 leaf[AUDIT_HASH_LEN]);

/*
 * audit_row_leaf_inputs / audit_row_leaves_from_inputs
 *		The leaf of a row in two steps, so that two rows' hashes can be
 *		computed together.  audit_row_leaf_inputs() writes into commit the
 *		row's commitment input and into leaf its leaf input with the
 *		commitment (its last 32 bytes) left as zeros; the row must have its
 *		salt.  The buffers no longer depend on the row once written.
 *		audit_row_leaves_from_inputs() hashes the commitment inputs, puts
 *		the commitments into the leaf inputs and hashes those, for row a and
 *		row b at once (b's buffers may be NULL: row a alone).  The leaves
 *		are those of audit_row_commitment() + audit_row_leaf_hash().
 */
extern void audit_row_leaf_inputs(StringInfo commit, StringInfo leaf, Datum *values, bool *nulls,
								  const AuditColumnMap *map);
extern void audit_row_leaves_from_inputs(StringInfo commit_a, StringInfo leaf_a,
										 uint8 out_a[AUDIT_HASH_LEN],
										 StringInfo commit_b, StringInfo leaf_b,
										 uint8 out_b[AUDIT_HASH_LEN]);

/* Redaction attestation of a redacted row's personal fields (0x04). */
#define AUDIT_REDACTED_PREFIX	0x04
#define AUDIT_REDACTED_DOMAIN	"audit_db.redacted.v1"

/*
 * audit_encode_redacted_input / audit_redacted_fields_digest
 *		The bytes, and their SHA-256, that a redaction record attests for a
 *		redacted row: its id and its four personal fields as they are after
 *		the redaction (no salt: they hold no personal data any more).
 */
extern void audit_encode_redacted_input(StringInfo buf, Datum *values, bool *nulls,
										const AuditColumnMap *map);
extern void audit_redacted_fields_digest(Datum *values, bool *nulls, const AuditColumnMap *map,
										 uint8 out[AUDIT_HASH_LEN]);

/* Merkle tree node prefix (RFC 6962); leaves carry AUDIT_LEAF_PREFIX. */
#define AUDIT_NODE_PREFIX		0x01

/*
 * audit_merkle_root
 *		Root of the RFC 6962 Merkle tree over n leaf hashes (32 bytes each,
 *		already domain-separated with prefix 0x00): the leaf itself for one
 *		leaf, SHA-256(0x01 || left || right) over the split at the largest
 *		power of two below n, SHA-256 of nothing for n = 0.
 */
extern void audit_merkle_root(const uint8 *leaves, int n, uint8 out[AUDIT_HASH_LEN]);

/*
 * audit_merkle_root_x2
 *		audit_merkle_root(), computed level by level with two node hashes at
 *		a time (audit_sha256_x2).  scratch must hold (n + 1) / 2 hashes of
 *		32 bytes.  The same root: pairing the nodes of each level from the
 *		left, an odd last node moving up unchanged, builds RFC 6962's tree.
 */
extern void audit_merkle_root_x2(const uint8 *leaves, int n, uint8 *scratch,
								 uint8 out[AUDIT_HASH_LEN]);

/* Longest audit path: blocks hold at most 2^31 leaves. */
#define AUDIT_MAX_PATH			32

/*
 * audit_merkle_path
 *		Write the RFC 6962 audit path of leaf m (0-based) of the tree over n
 *		leaves into path (AUDIT_MAX_PATH x 32 bytes), lowest sibling first;
 *		returns the number of hashes written.
 */
extern int	audit_merkle_path(const uint8 *leaves, int n, int m, uint8 *path);

/* Block header domain tag (prefix 0x03; docs/hash-format.md, "Blocks"). */
#define AUDIT_BLOCK_PREFIX		0x03
#define AUDIT_BLOCK_DOMAIN		"audit_db.block.v1"

/*
 * The fields of a chain block's header, as they are hashed.  Times are
 * PostgreSQL timestamps (the encoding converts them to Unix microseconds).
 */
typedef struct AuditBlockHeader
{
	int64		height;
	uint8		prev_hash[AUDIT_HASH_LEN];
	const char *kind;
	bool		in_default_partition;	/* partition bounds are NULL */
	TimestampTz partition_from;
	TimestampTz partition_to;
	int64		xid_from;
	int64		xid_to;
	int64		row_count;
	int64		rows_total;
	uint8		merkle_root[AUDIT_HASH_LEN];
	TimestampTz sealed_at;
} AuditBlockHeader;

/*
 * audit_block_header_hash
 *		SHA-256 header hash of a block (hash format v1).
 */
extern void audit_block_header_hash(const AuditBlockHeader *h, uint8 out[AUDIT_HASH_LEN]);

/*
 * audit_deform_row_argument
 *		Argument 0 of fcinfo, a row of audit.audit_log's type, deformed into
 *		palloc'd values/nulls, with its column map (cached in fn_extra).
 */
extern void audit_deform_row_argument(FunctionCallInfo fcinfo, Datum **values, bool **nulls,
									  const AuditColumnMap **map);

/*
 * audit_bytea_is_hash
 *		Whether a bytea datum (isnull: SQL NULL) is a 32-byte hash; if so,
 *		its bytes are copied to out.
 */
extern bool audit_bytea_is_hash(Datum value, bool isnull, uint8 out[AUDIT_HASH_LEN]);

/*
 * audit_bytea_from_bytes
 *		A new bytea (current memory context) holding len bytes of data.
 */
extern bytea *audit_bytea_from_bytes(const void *data, int len);

#endif							/* AUDIT_HASHING_H */
