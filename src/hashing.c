/*-------------------------------------------------------------------------
 *
 * hashing.c
 *	  Hash format v1: canonical encoding of audit rows, salted commitments
 *	  to personal fields, SHA-256 leaf hashes, and the SQL functions that
 *	  expose them (audit.leaf_hash, audit.leaf_encoding,
 *	  audit.commitment_encoding), and RFC 6962 Merkle tree roots over leaf
 *	  hashes (audit.merkle_root), the building block of sealed blocks.
 *
 * Encoding of one field (docs/hash-format.md has the full specification):
 *		NULL			0x00
 *		value v			0x01, uint32 big-endian byte length of v, bytes of v
 * Text is hashed as UTF-8; integers as decimal ASCII; timestamps as the
 * decimal count of microseconds since 1970-01-01 00:00:00 UTC; jsonb as the
 * text PostgreSQL's jsonb output function produces (its canonical form:
 * keys unique and ordered by length then bytes, fixed separators).
 *
 * SHA-256 comes from OpenSSL (PostgreSQL itself is built with it), through
 * its low-level interface so that the insert path allocates nothing for
 * hashing.  jsonb is written in its canonical text by
 * put_jsonb_container_text(), which walks the binary form and produces
 * exactly what jsonb_out() produces, without its iterator and copies.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

/* SHA256_Init() and friends are deprecated in OpenSSL 3 but fully supported. */
#define OPENSSL_SUPPRESS_DEPRECATED
#include <openssl/crypto.h>
#include <openssl/sha.h>

#if defined(__x86_64__) && defined(__GNUC__)
#include <cpuid.h>
#include <immintrin.h>
#define AUDIT_HAVE_SHANI 1
#endif

#include "access/htup_details.h"
#include "datatype/timestamp.h"
#include "fmgr.h"
#include "funcapi.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "catalog/pg_type.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/fmgrprotos.h"
#include "utils/jsonb.h"
#include "utils/numeric.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"
#include "utils/typcache.h"

#include "audit_db.h"
#include "hashing.h"

/* Microseconds between the Unix epoch and PostgreSQL's epoch (2000-01-01). */
#define UNIX_TO_POSTGRES_USECS \
	((int64) (POSTGRES_EPOCH_JDATE - UNIX_EPOCH_JDATE) * USECS_PER_DAY)

/* Encoding buffers are kept between rows; shrink them past this size. */
#define ENCODING_BUFFER_KEEP	(64 * 1024)

/* Salt bytes drawn from pg_strong_random in batches. */
static uint8 salt_pool[AUDIT_SALT_LEN * 256];
static size_t salt_pool_pos = sizeof(salt_pool);
static int	salt_pool_pid = 0;

static StringInfo encoding_buffer(void);
static void put_jsonb_container_text(StringInfo buf, const JsonbContainer *jc);
static void put_jsonb_entry_text(StringInfo buf, JEntry e, const char *base, uint32 off, uint32 end);

void
audit_sha256(const void *data, size_t len, uint8 out[AUDIT_HASH_LEN])
{
	SHA256_CTX	ctx;

	/*
	 * OpenSSL's one-block-at-a-time interface: no allocation and none of the
	 * per-call provider set-up of EVP, which costs as much as hashing a
	 * short row (measured: test/bench).  These functions cannot fail.
	 */
	SHA256_Init(&ctx);
	SHA256_Update(&ctx, data, len);
	SHA256_Final(out, &ctx);
	OPENSSL_cleanse(&ctx, sizeof(ctx));
}

/* Two SHA-256 computations at once (verification) ------------------------- */

/*
 * audit.verify() hashes every row twice (commitment, leaf) and every Merkle
 * node once, one short message after another; that is most of its time.
 * With the x86 SHA extensions, one SHA-256 runs at the latency of its
 * sha256rnds2 chain, not at the instructions' throughput: two independent
 * messages interleaved take little more time than one.  audit_sha256_x2()
 * does that when the CPU has the extensions (and they pass a self-test
 * against OpenSSL on first use); otherwise it is two audit_sha256() calls.
 * Its results are SHA-256, nothing else: the hash format is unchanged.
 */
#ifdef AUDIT_HAVE_SHANI

/* SHA-256 round constants and initial hash value (FIPS 180-4). */
static const uint32 sha256_k[64] __attribute__((aligned(16))) = {
	0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
	0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
	0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
	0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
	0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
	0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
	0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
	0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2
};

static const uint32 sha256_h0[8] = {
	0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19
};

/* Only these functions use the extensions; shani_usable() checks the CPU. */
#define SHANI_TARGET __attribute__((target("sha,sse4.1,ssse3")))

/*
 * shani_load_state
 *		The eight state words h[] in the register layout sha256rnds2 works
 *		on: s0 = (A, B, E, F), s1 = (C, D, G, H).
 */
SHANI_TARGET static inline void
shani_load_state(const uint32 h[8], __m128i *s0, __m128i *s1)
{
	__m128i		tmp = _mm_loadu_si128((const __m128i *) &h[0]);
	__m128i		t1 = _mm_loadu_si128((const __m128i *) &h[4]);

	tmp = _mm_shuffle_epi32(tmp, 0xB1);		/* CDAB */
	t1 = _mm_shuffle_epi32(t1, 0x1B);		/* EFGH */
	*s0 = _mm_alignr_epi8(tmp, t1, 8);		/* ABEF */
	*s1 = _mm_blend_epi16(t1, tmp, 0xF0);	/* CDGH */
}

/*
 * shani_store_digest
 *		The 32-byte digest (big-endian words A..H) of a state in the layout
 *		of shani_load_state().
 */
SHANI_TARGET static inline void
shani_store_digest(__m128i s0, __m128i s1, uint8 out[32])
{
	const __m128i bswap = _mm_set_epi64x(0x0c0d0e0f08090a0bULL, 0x0405060700010203ULL);
	__m128i		tmp = _mm_shuffle_epi32(s0, 0x1B);	/* FEBA */

	s1 = _mm_shuffle_epi32(s1, 0xB1);	/* DCHG */
	s0 = _mm_blend_epi16(tmp, s1, 0xF0);	/* DCBA */
	s1 = _mm_alignr_epi8(s1, tmp, 8);	/* HGFE */
	/* words are big-endian in the digest */
	_mm_storeu_si128((__m128i *) out, _mm_shuffle_epi8(s0, bswap));
	_mm_storeu_si128((__m128i *) (out + 16), _mm_shuffle_epi8(s1, bswap));
}

/* Rounds 4i .. 4i + 3 on state (S0, S1), message words W[4i..4i+3] in M[i & 3]. */
#define SHANI_ROUNDS(S0, S1, M, i) do { \
	__m128i t_ = _mm_add_epi32((M)[(i) & 3], _mm_load_si128((const __m128i *) &sha256_k[4 * (i)])); \
	(S1) = _mm_sha256rnds2_epu32((S1), (S0), t_); \
	t_ = _mm_shuffle_epi32(t_, 0x0E); \
	(S0) = _mm_sha256rnds2_epu32((S0), (S1), t_); \
} while (0)

/*
 * Message schedule, i >= 4: W[4i..4i+3] from the four previous groups, held
 * in M[(i - 4) & 3] .. M[(i - 1) & 3]; it replaces the oldest, M[i & 3].
 */
#define SHANI_SCHED(M, i) do { \
	(M)[(i) & 3] = _mm_sha256msg2_epu32(_mm_add_epi32(_mm_sha256msg1_epu32((M)[(i) & 3], (M)[((i) + 1) & 3]), \
		_mm_alignr_epi8((M)[((i) + 3) & 3], (M)[((i) + 2) & 3], 4)), (M)[((i) + 3) & 3]); \
} while (0)

/*
 * shani_block
 *		Compress one 64-byte block p into the state (*s0, *s1).
 */
SHANI_TARGET static inline void
shani_block(__m128i *s0, __m128i *s1, const uint8 *p)
{
	const __m128i bswap = _mm_set_epi64x(0x0c0d0e0f08090a0bULL, 0x0405060700010203ULL);
	__m128i		a0 = *s0, a1 = *s1;
	__m128i		m[4];

	for (int i = 0; i < 4; i++)
		m[i] = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *) (p + 16 * i)), bswap);
	for (int i = 0; i < 16; i++)
	{
		if (i >= 4)
			SHANI_SCHED(m, i);
		SHANI_ROUNDS(a0, a1, m, i);
	}
	*s0 = _mm_add_epi32(*s0, a0);
	*s1 = _mm_add_epi32(*s1, a1);
}

/*
 * shani_block_x2
 *		shani_block() of block p into (*s0, *s1) and of block q into
 *		(*r0, *r1), the two dependency chains interleaved.
 */
SHANI_TARGET static inline void
shani_block_x2(__m128i *s0, __m128i *s1, const uint8 *p,
			   __m128i *r0, __m128i *r1, const uint8 *q)
{
	const __m128i bswap = _mm_set_epi64x(0x0c0d0e0f08090a0bULL, 0x0405060700010203ULL);
	__m128i		a0 = *s0, a1 = *s1, b0 = *r0, b1 = *r1;
	__m128i		m[4], n[4];

	for (int i = 0; i < 4; i++)
	{
		m[i] = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *) (p + 16 * i)), bswap);
		n[i] = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *) (q + 16 * i)), bswap);
	}
	for (int i = 0; i < 16; i++)
	{
		if (i >= 4)
		{
			SHANI_SCHED(m, i);
			SHANI_SCHED(n, i);
		}
		SHANI_ROUNDS(a0, a1, m, i);
		SHANI_ROUNDS(b0, b1, n, i);
	}
	*s0 = _mm_add_epi32(*s0, a0);
	*s1 = _mm_add_epi32(*s1, a1);
	*r0 = _mm_add_epi32(*r0, b0);
	*r1 = _mm_add_epi32(*r1, b1);
}

/* A message as a sequence of 64-byte blocks, the padded tail copied out. */
typedef struct ShaniMsg
{
	const uint8 *data;
	size_t		nfull;			/* whole 64-byte blocks of data */
	size_t		nblocks;		/* with the padded tail */
	uint8		tail[128];
} ShaniMsg;

/*
 * shani_msg_init
 *		Set m up for the len bytes at data: its whole blocks are read in
 *		place, the rest is padded (0x80, zeros, the bit length as a 64-bit
 *		big-endian number) into one or two tail blocks.
 */
static inline void
shani_msg_init(ShaniMsg *m, const uint8 *data, size_t len)
{
	size_t		rest = len % 64;
	size_t		ntail = rest + 9 <= 64 ? 1 : 2;
	uint64		bits = (uint64) len * 8;

	m->data = data;
	m->nfull = len / 64;
	m->nblocks = m->nfull + ntail;
	memset(m->tail, 0, 64 * ntail);
	if (rest > 0)
		memcpy(m->tail, data + m->nfull * 64, rest);
	m->tail[rest] = 0x80;
	for (int i = 0; i < 8; i++)
		m->tail[64 * ntail - 1 - i] = (uint8) (bits >> (8 * i));
}

/*
 * shani_msg_block
 *		Block i of the padded message.
 */
static inline const uint8 *
shani_msg_block(const ShaniMsg *m, size_t i)
{
	return i < m->nfull ? m->data + 64 * i : m->tail + 64 * (i - m->nfull);
}

/*
 * sha256_shani_x2
 *		SHA-256 of a (alen bytes) into aout and of b (blen bytes) into bout:
 *		their common number of blocks two at a time, the rest one at a time.
 */
SHANI_TARGET static void
sha256_shani_x2(const uint8 *a, size_t alen, uint8 aout[32],
				const uint8 *b, size_t blen, uint8 bout[32])
{
	ShaniMsg	ma, mb;
	__m128i		s0, s1, r0, r1;
	size_t		i;

	shani_msg_init(&ma, a, alen);
	shani_msg_init(&mb, b, blen);
	shani_load_state(sha256_h0, &s0, &s1);
	r0 = s0;
	r1 = s1;
	for (i = 0; i < ma.nblocks && i < mb.nblocks; i++)
		shani_block_x2(&s0, &s1, shani_msg_block(&ma, i), &r0, &r1, shani_msg_block(&mb, i));
	for (size_t j = i; j < ma.nblocks; j++)
		shani_block(&s0, &s1, shani_msg_block(&ma, j));
	for (size_t j = i; j < mb.nblocks; j++)
		shani_block(&r0, &r1, shani_msg_block(&mb, j));
	shani_store_digest(s0, s1, aout);
	shani_store_digest(r0, r1, bout);
}

/*
 * shani_usable
 *		Whether the CPU has the SHA extensions (and SSSE3, SSE4.1) and the
 *		code above agrees with OpenSSL on a set of lengths around the block
 *		and padding boundaries; decided once per process.
 */
static bool
shani_usable(void)
{
	static int	usable = -1;

	if (usable < 0)
	{
		unsigned int a,
					b,
					c,
					d;

		usable = 0;
		if (__get_cpuid(1, &a, &b, &c, &d) && (c & bit_SSSE3) && (c & bit_SSE4_1) &&
			__get_cpuid_count(7, 0, &a, &b, &c, &d) && (b & bit_SHA))
		{
			uint8		msg[300];
			uint8		x[AUDIT_HASH_LEN],
						y[AUDIT_HASH_LEN],
						rx[AUDIT_HASH_LEN],
						ry[AUDIT_HASH_LEN];

			for (int i = 0; i < (int) sizeof(msg); i++)
				msg[i] = (uint8) (i * 7 + 3);
			usable = 1;
			for (size_t len = 0; len < 200 && usable; len += 5)
			{
				sha256_shani_x2(msg, len, x, msg + 1, len + 61, y);
				audit_sha256(msg, len, rx);
				audit_sha256(msg + 1, len + 61, ry);
				if (memcmp(x, rx, AUDIT_HASH_LEN) != 0 || memcmp(y, ry, AUDIT_HASH_LEN) != 0)
					usable = 0;
			}
			if (!usable)
				elog(LOG, "audit_db: the SHA extensions disagree with OpenSSL, not using them");
		}
	}
	return usable == 1;
}
#endif							/* AUDIT_HAVE_SHANI */

void
audit_sha256_x2(const void *a, size_t alen, uint8 aout[AUDIT_HASH_LEN],
				const void *b, size_t blen, uint8 bout[AUDIT_HASH_LEN])
{
#ifdef AUDIT_HAVE_SHANI
	if (shani_usable())
	{
		sha256_shani_x2(a, alen, aout, b, blen, bout);
		return;
	}
#endif
	audit_sha256(a, alen, aout);
	audit_sha256(b, blen, bout);
}

void
audit_random_salt(uint8 out[AUDIT_SALT_LEN])
{
	/* Refill when empty, and never share a pool across a fork. */
	if (salt_pool_pos + AUDIT_SALT_LEN > sizeof(salt_pool) || salt_pool_pid != MyProcPid)
	{
		if (!pg_strong_random(salt_pool, sizeof(salt_pool)))
			ereport(ERROR,
					(errcode(ERRCODE_INTERNAL_ERROR),
					 errmsg("could not generate random salt for an audit row"),
					 errhint("The server's strong random source failed; the event was not recorded.")));
		salt_pool_pos = 0;
		salt_pool_pid = MyProcPid;
	}
	memcpy(out, salt_pool + salt_pool_pos, AUDIT_SALT_LEN);
	/* Never hand out the same bytes twice. */
	memset(salt_pool + salt_pool_pos, 0, AUDIT_SALT_LEN);
	salt_pool_pos += AUDIT_SALT_LEN;
}

static StringInfo shared_buffer = NULL;

/*
 * release_large_buffer
 *		Give back the encoding buffer once it has grown past what is worth
 *		keeping (an event with large details), so that no backend holds on
 *		to it.  Called after each use.
 */
static void
release_large_buffer(void)
{
	if (shared_buffer != NULL && shared_buffer->maxlen > ENCODING_BUFFER_KEEP)
	{
		pfree(shared_buffer->data);
		pfree(shared_buffer);
		shared_buffer = NULL;
	}
}

/*
 * encoding_buffer
 *		The backend's reusable encoding buffer, reset and ready.
 */
static StringInfo
encoding_buffer(void)
{
	StringInfo	buf;

	release_large_buffer();		/* in case an error skipped the release */
	buf = shared_buffer;
	if (buf == NULL)
	{
		MemoryContext old = MemoryContextSwitchTo(TopMemoryContext);

		buf = makeStringInfo();
		MemoryContextSwitchTo(old);
		shared_buffer = buf;
	}
	resetStringInfo(buf);
	return buf;
}

/* Field encoders --------------------------------------------------------- */

/*
 * reserve / append
 *		Room for n more bytes (enlargeStringInfo only when the buffer is
 *		full, which after the first rows is never), and a raw append.  The
 *		encoders keep no trailing NUL: buffers are hashed by length.
 */
static inline void
reserve(StringInfo buf, int n)
{
	if (unlikely(buf->len + n >= buf->maxlen))
		enlargeStringInfo(buf, n);
}

static inline void
append(StringInfo buf, const char *data, int len)
{
	reserve(buf, len);
	memcpy(buf->data + buf->len, data, len);
	buf->len += len;
}

static inline void
append_byte(StringInfo buf, char c)
{
	reserve(buf, 1);
	buf->data[buf->len++] = c;
}

static inline void
put_null(StringInfo buf)
{
	append_byte(buf, 0x00);
}

static inline void
write_length(char *p, uint32 len)
{
	p[0] = 0x01;
	p[1] = (char) (len >> 24);
	p[2] = (char) (len >> 16);
	p[3] = (char) (len >> 8);
	p[4] = (char) len;
}

static inline void
put_length(StringInfo buf, uint32 len)
{
	reserve(buf, 5);
	write_length(buf->data + buf->len, len);
	buf->len += 5;
}

/*
 * put_bytes
 *		A present field of len raw bytes: one capacity check, two copies.
 */
static inline void
put_bytes(StringInfo buf, const char *data, int len)
{
	reserve(buf, len + 5);
	write_length(buf->data + buf->len, (uint32) len);
	memcpy(buf->data + buf->len + 5, data, len);
	buf->len += len + 5;
}

/*
 * server_encoding_is_utf8
 *		True when text needs no conversion to be hashed (UTF8 or SQL_ASCII
 *		databases); a database's encoding never changes under a backend.
 */
static inline bool
server_encoding_is_utf8(void)
{
	static int	known = -1;

	if (known < 0)
		known = (GetDatabaseEncoding() == PG_UTF8 || GetDatabaseEncoding() == PG_SQL_ASCII);
	return known == 1;
}

/*
 * put_server_text
 *		A present field whose bytes are text in the server encoding; hashed
 *		as UTF-8.
 */
static void
put_server_text(StringInfo buf, const char *data, int len)
{
	if (server_encoding_is_utf8())
		put_bytes(buf, data, len);
	else
	{
		/* Returns data itself (not NUL-terminated) when nothing changes. */
		char	   *utf8 = pg_server_to_any(data, len, PG_UTF8);

		if (utf8 == data)
			put_bytes(buf, data, len);
		else
		{
			put_bytes(buf, utf8, strlen(utf8));
			pfree(utf8);
		}
	}
}

static void
put_text_datum(StringInfo buf, Datum value, bool isnull)
{
	text	   *t;

	if (isnull)
	{
		put_null(buf);
		return;
	}
	t = DatumGetTextPP(value);
	put_server_text(buf, VARDATA_ANY(t), VARSIZE_ANY_EXHDR(t));
	if ((Pointer) t != DatumGetPointer(value))
		pfree(t);
}

static void
put_int64(StringInfo buf, int64 v)
{
	char		digits[MAXINT8LEN + 1];
	int			len = pg_lltoa(v, digits);

	put_bytes(buf, digits, len);
}

static void
put_bytea_datum(StringInfo buf, Datum value, bool isnull)
{
	bytea	   *b;

	if (isnull)
	{
		put_null(buf);
		return;
	}
	b = DatumGetByteaPP(value);
	put_bytes(buf, VARDATA_ANY(b), VARSIZE_ANY_EXHDR(b));
}

/*
 * json_plain_prefix
 *		Length of the longest prefix of s[0..len) that JSON needs no escape
 *		for: no byte below 0x20, no '"', no '\\'.  Eight bytes at a time
 *		(the classic "has a byte less than n / equal to c" word tests; they
 *		never fire on bytes >= 0x80, which UTF-8 text leaves as they are;
 *		a word that may hold such a byte is rescanned byte by byte).
 */
static inline int
json_plain_prefix(const char *s, int len)
{
#define ONES	UINT64CONST(0x0101010101010101)
#define HIGHS	UINT64CONST(0x8080808080808080)
	int			i = 0;

	for (; i + 8 <= len; i += 8)
	{
		uint64		w;
		uint64		q;
		uint64		b;

		memcpy(&w, s + i, 8);
		q = w ^ (ONES * '"');
		b = w ^ (ONES * '\\');
		if (((w - ONES * 0x20) | (q - ONES) | (b - ONES)) & ~w & HIGHS)
			break;
	}
	for (; i < len; i++)
	{
		unsigned char c = (unsigned char) s[i];

		if (c < 0x20 || c == '"' || c == '\\')
			break;
	}
	return i;
#undef ONES
#undef HIGHS
}

/*
 * put_json_string
 *		A JSON string literal, escaped exactly as PostgreSQL's escape_json()
 *		does: \b \f \n \r \t \" \\, other bytes below 0x20 as \u00xx,
 *		everything else (UTF-8 included) as is.  Copies unescaped runs whole.
 */
static void
put_json_string(StringInfo buf, const char *s, int len)
{
	append_byte(buf, '"');
	while (len > 0)
	{
		int			run = json_plain_prefix(s, len);
		unsigned char c;

		append(buf, s, run);
		if (run == len)
			break;
		c = (unsigned char) s[run];
		s += run + 1;
		len -= run + 1;
		switch (c)
		{
			case '\b':
				append(buf, "\\b", 2);
				break;
			case '\f':
				append(buf, "\\f", 2);
				break;
			case '\n':
				append(buf, "\\n", 2);
				break;
			case '\r':
				append(buf, "\\r", 2);
				break;
			case '\t':
				append(buf, "\\t", 2);
				break;
			case '"':
				append(buf, "\\\"", 2);
				break;
			case '\\':
				append(buf, "\\\\", 2);
				break;
			default:
				{
					char		esc[8];

					snprintf(esc, sizeof(esc), "\\u%04x", (int) c);
					append(buf, esc, 6);
				}
				break;
		}
	}
	append_byte(buf, '"');
}

/*
 * jsonb_for_reading
 *		The jsonb of a datum, aligned for reading.  A short inline value (a
 *		small details document as stored on disk, with a 1-byte header) is
 *		copied into a buffer kept for the backend instead of a fresh palloc,
 *		as DatumGetJsonbP() would do for every row; the result is valid
 *		until the next call.  Other values go through DatumGetJsonbP(),
 *		TOAST pointers included: they have a 1-byte header too
 *		(VARATT_IS_SHORT is true of them), but no inline data.
 */
static Jsonb *
jsonb_for_reading(Datum value)
{
	static char *aligned = NULL;
	struct varlena *v = (struct varlena *) DatumGetPointer(value);
	Size		len;

	if (!VARATT_IS_SHORT(v) || VARATT_IS_EXTERNAL(v))
		return DatumGetJsonbP(value);
	len = VARSIZE_SHORT(v) - VARHDRSZ_SHORT;
	if (aligned == NULL)
		aligned = MemoryContextAlloc(TopMemoryContext, VARATT_SHORT_MAX + VARHDRSZ);
	SET_VARSIZE(aligned, len + VARHDRSZ);
	memcpy(aligned + VARHDRSZ, VARDATA_SHORT(v), len);
	return (Jsonb *) aligned;
}

/*
 * put_jsonb_datum
 *		A jsonb field in its canonical text form, written straight into the
 *		buffer after a placeholder length that is patched afterwards.
 *		Returns the text's length (0 for NULL).
 */
static int
put_jsonb_datum(StringInfo buf, Datum value, bool isnull)
{
	Jsonb	   *jb;
	int			start;
	int			len;

	if (isnull)
	{
		put_null(buf);
		return 0;
	}
	jb = jsonb_for_reading(value);
	put_length(buf, 0);
	start = buf->len;
	put_jsonb_container_text(buf, &jb->root);
	len = buf->len - start;

	if (!server_encoding_is_utf8())
	{
		char	   *text = pnstrdup(buf->data + start, len);
		char	   *utf8 = pg_server_to_any(text, len, PG_UTF8);

		buf->len = start;
		len = strlen(utf8);
		append(buf, utf8, len);
		if (utf8 != text)
			pfree(utf8);
		pfree(text);
	}

	buf->data[start - 4] = (char) ((uint32) len >> 24);
	buf->data[start - 3] = (char) ((uint32) len >> 16);
	buf->data[start - 2] = (char) ((uint32) len >> 8);
	buf->data[start - 1] = (char) (uint32) len;
	return len;
}

/*
 * put_text_datum_direct
 *		put_text_datum() without a function call for the common case: a
 *		plain (untoasted, uncompressed) value, 1-byte header or 4-byte, is
 *		read in place.  Anything else goes through put_text_datum().
 */
static inline void
put_text_datum_direct(StringInfo buf, Datum value, bool isnull)
{
	struct varlena *v = (struct varlena *) DatumGetPointer(value);

	if (isnull)
		put_null(buf);
	else if (VARATT_IS_1B(v) && !VARATT_IS_1B_E(v))
		put_server_text(buf, VARDATA_1B(v), VARSIZE_1B(v) - VARHDRSZ_SHORT);
	else if (VARATT_IS_4B_U(v))
		put_server_text(buf, VARDATA_4B(v), VARSIZE_4B(v) - VARHDRSZ);
	else
		put_text_datum(buf, value, false);
}

/* Row encodings ---------------------------------------------------------- */

#define VAL(c)	values[map->attno[c]]
#define NUL(c)	nulls[map->attno[c]]

void
audit_encode_commitment_input(StringInfo buf, Datum *values, bool *nulls,
							  const AuditColumnMap *map, int *details_len)
{
	int			dlen;

	if (NUL(AC_PERSONAL_DATA_SALT))
		ereport(ERROR,
				(errcode(ERRCODE_DATA_CORRUPTED),
				 errmsg("audit row has no personal-data salt"),
				 errhint("A redacted row keeps its commitment instead; use it.")));

	appendStringInfoCharMacro(buf, AUDIT_COMMIT_PREFIX);
	put_bytes(buf, AUDIT_COMMIT_DOMAIN, strlen(AUDIT_COMMIT_DOMAIN));
	put_bytea_datum(buf, VAL(AC_PERSONAL_DATA_SALT), false);
	put_text_datum_direct(buf, VAL(AC_PRINCIPAL_ID), NUL(AC_PRINCIPAL_ID));
	put_text_datum_direct(buf, VAL(AC_TARGET_RESOURCE_ID), NUL(AC_TARGET_RESOURCE_ID));
	put_text_datum_direct(buf, VAL(AC_OUTCOME_DESCRIPTION), NUL(AC_OUTCOME_DESCRIPTION));
	dlen = put_jsonb_datum(buf, VAL(AC_DETAILS), NUL(AC_DETAILS));
	if (details_len)
		*details_len = dlen;
}

void
audit_encode_leaf_input(StringInfo buf, Datum *values, bool *nulls,
						const AuditColumnMap *map,
						const uint8 commitment[AUDIT_HASH_LEN])
{
	static const int text_fields[] = {
		AC_ORGANIZATION_ID, AC_ACTION, AC_TARGET_RESOURCE_TYPE, AC_STATUS,
		AC_EVENT_VERSION, AC_CORRELATION_ID, AC_DATA_CLASSIFICATION,
		AC_RETENTION_POLICY
	};

	appendStringInfoCharMacro(buf, AUDIT_LEAF_PREFIX);
	put_bytes(buf, AUDIT_LEAF_DOMAIN, strlen(AUDIT_LEAF_DOMAIN));

	if (NUL(AC_ID))
		put_null(buf);
	else
		put_int64(buf, DatumGetInt64(VAL(AC_ID)));

	if (NUL(AC_TRANSACTION_ID))
		put_null(buf);
	else
		put_int64(buf, DatumGetInt64(VAL(AC_TRANSACTION_ID)));

	if (NUL(AC_TIMESTAMP))
		put_null(buf);
	else
		put_int64(buf, DatumGetTimestampTz(VAL(AC_TIMESTAMP)) + UNIX_TO_POSTGRES_USECS);

	for (int i = 0; i < (int) lengthof(text_fields); i++)
		put_text_datum_direct(buf, VAL(text_fields[i]), NUL(text_fields[i]));

	if (NUL(AC_PROCESSING_LATENCY))
		put_null(buf);
	else
		put_int64(buf, DatumGetInt32(VAL(AC_PROCESSING_LATENCY)));

	put_bytes(buf, (const char *) commitment, AUDIT_HASH_LEN);
}

void
audit_row_commitment(Datum *values, bool *nulls, const AuditColumnMap *map,
					 uint8 out[AUDIT_HASH_LEN], int *details_len)
{
	if (NUL(AC_PERSONAL_DATA_SALT))
	{
		bytea	   *c;

		if (NUL(AC_PERSONAL_DATA_COMMITMENT))
			ereport(ERROR,
					(errcode(ERRCODE_DATA_CORRUPTED),
					 errmsg("audit row has neither a personal-data salt nor a commitment"),
					 errhint("The row was altered outside audit_db; audit.verify() reports such rows.")));
		c = DatumGetByteaPP(VAL(AC_PERSONAL_DATA_COMMITMENT));
		if (VARSIZE_ANY_EXHDR(c) != AUDIT_HASH_LEN)
			ereport(ERROR,
					(errcode(ERRCODE_DATA_CORRUPTED),
					 errmsg("audit row has a personal-data commitment of %d bytes, expected %d",
							(int) VARSIZE_ANY_EXHDR(c), AUDIT_HASH_LEN),
					 errhint("The row was altered outside audit_db; audit.verify() reports such rows.")));
		memcpy(out, VARDATA_ANY(c), AUDIT_HASH_LEN);
		if (details_len)
			*details_len = 0;
	}
	else
	{
		StringInfo	buf = encoding_buffer();

		audit_encode_commitment_input(buf, values, nulls, map, details_len);
		audit_sha256(buf->data, buf->len, out);
		release_large_buffer();
	}
}

void
audit_row_leaf_hash(Datum *values, bool *nulls, const AuditColumnMap *map,
					const uint8 commitment[AUDIT_HASH_LEN], uint8 out[AUDIT_HASH_LEN])
{
	StringInfo	buf = encoding_buffer();

	audit_encode_leaf_input(buf, values, nulls, map, commitment);
	audit_sha256(buf->data, buf->len, out);
	release_large_buffer();
}

void
audit_encode_redacted_input(StringInfo buf, Datum *values, bool *nulls,
							const AuditColumnMap *map)
{
	appendStringInfoCharMacro(buf, AUDIT_REDACTED_PREFIX);
	put_bytes(buf, AUDIT_REDACTED_DOMAIN, strlen(AUDIT_REDACTED_DOMAIN));
	if (NUL(AC_ID))
		put_null(buf);
	else
		put_int64(buf, DatumGetInt64(VAL(AC_ID)));
	put_text_datum(buf, VAL(AC_PRINCIPAL_ID), NUL(AC_PRINCIPAL_ID));
	put_text_datum(buf, VAL(AC_TARGET_RESOURCE_ID), NUL(AC_TARGET_RESOURCE_ID));
	put_text_datum(buf, VAL(AC_OUTCOME_DESCRIPTION), NUL(AC_OUTCOME_DESCRIPTION));
	(void) put_jsonb_datum(buf, VAL(AC_DETAILS), NUL(AC_DETAILS));
}

void
audit_redacted_fields_digest(Datum *values, bool *nulls, const AuditColumnMap *map,
							 uint8 out[AUDIT_HASH_LEN])
{
	StringInfo	buf = encoding_buffer();

	audit_encode_redacted_input(buf, values, nulls, map);
	audit_sha256(buf->data, buf->len, out);
	release_large_buffer();
}

/* Verification's row hashing ----------------------------------------------- */

/*
 * put_jsonb_container_text
 *		The canonical text of a jsonb container, written from its binary
 *		form without JsonbIterator (which allocates an iterator per nested
 *		container and fills a JsonbValue per token): byte for byte what
 *		jsonb_out() writes (JsonbToCString without indentation).
 *		Children are walked in storage order, which for objects is jsonb's
 *		key order; an object's values follow all its keys, so two offsets
 *		advance side by side.
 */
static void
put_jsonb_container_text(StringInfo buf, const JsonbContainer *jc)
{
	uint32		count = jc->header & JB_CMASK;

	check_stack_depth();
	if (jc->header & JB_FOBJECT)
	{
		const char *base = (const char *) &jc->children[count * 2];
		uint32		koff = 0;
		uint32		voff = count > 0 ? getJsonbOffset(jc, (int) count) : 0;

		append_byte(buf, '{');
		for (uint32 i = 0; i < count; i++)
		{
			JEntry		ke = jc->children[i];
			JEntry		ve = jc->children[i + count];
			uint32		kend = JBE_HAS_OFF(ke) ? JBE_OFFLENFLD(ke) : koff + JBE_OFFLENFLD(ke);
			uint32		vend = JBE_HAS_OFF(ve) ? JBE_OFFLENFLD(ve) : voff + JBE_OFFLENFLD(ve);

			if (i > 0)
				append(buf, ", ", 2);
			put_json_string(buf, base + koff, (int) (kend - koff));
			append(buf, ": ", 2);
			put_jsonb_entry_text(buf, ve, base, voff, vend);
			koff = kend;
			voff = vend;
		}
		append_byte(buf, '}');
	}
	else
	{
		const char *base = (const char *) &jc->children[count];
		uint32		off = 0;
		bool		raw_scalar = (jc->header & JB_FSCALAR) != 0;

		if (!raw_scalar)
			append_byte(buf, '[');
		for (uint32 i = 0; i < count; i++)
		{
			JEntry		e = jc->children[i];
			uint32		end = JBE_HAS_OFF(e) ? JBE_OFFLENFLD(e) : off + JBE_OFFLENFLD(e);

			if (i > 0)
				append(buf, ", ", 2);
			put_jsonb_entry_text(buf, e, base, off, end);
			off = end;
		}
		if (!raw_scalar)
			append_byte(buf, ']');
	}
}

/*
 * put_jsonb_entry_text
 *		One child of a jsonb container (entry e, data from base + off to
 *		base + end) in canonical text.  Numbers and containers start at the
 *		next int-aligned offset, as jsonb stores them.
 */
static void
put_jsonb_entry_text(StringInfo buf, JEntry e, const char *base, uint32 off, uint32 end)
{
	switch (e & JENTRY_TYPEMASK)
	{
		case JENTRY_ISSTRING:
			put_json_string(buf, base + off, (int) (end - off));
			break;
		case JENTRY_ISNUMERIC:
			appendStringInfoString(buf,
								   DatumGetCString(DirectFunctionCall1(numeric_out,
																	   PointerGetDatum(base + INTALIGN(off)))));
			break;
		case JENTRY_ISBOOL_TRUE:
			append(buf, "true", 4);
			break;
		case JENTRY_ISBOOL_FALSE:
			append(buf, "false", 5);
			break;
		case JENTRY_ISNULL:
			append(buf, "null", 4);
			break;
		case JENTRY_ISCONTAINER:
			put_jsonb_container_text(buf, (const JsonbContainer *) (base + INTALIGN(off)));
			break;
		default:
			elog(ERROR, "unexpected jsonb entry type %u", (unsigned) (e & JENTRY_TYPEMASK));
	}
}

void
audit_row_leaf_inputs(StringInfo commit, StringInfo leaf, Datum *values, bool *nulls,
					  const AuditColumnMap *map)
{
	static const uint8 zeros[AUDIT_HASH_LEN];

	resetStringInfo(commit);
	audit_encode_commitment_input(commit, values, nulls, map, NULL);

	/* The commitment is the leaf input's last field: filled in later. */
	resetStringInfo(leaf);
	audit_encode_leaf_input(leaf, values, nulls, map, zeros);
}

void
audit_row_leaves_from_inputs(StringInfo commit_a, StringInfo leaf_a, uint8 out_a[AUDIT_HASH_LEN],
							 StringInfo commit_b, StringInfo leaf_b, uint8 out_b[AUDIT_HASH_LEN])
{
	uint8		ca[AUDIT_HASH_LEN];
	uint8		cb[AUDIT_HASH_LEN];

	Assert(leaf_a->len >= AUDIT_HASH_LEN);
	if (commit_b == NULL)
	{
		audit_sha256(commit_a->data, commit_a->len, ca);
		memcpy(leaf_a->data + leaf_a->len - AUDIT_HASH_LEN, ca, AUDIT_HASH_LEN);
		audit_sha256(leaf_a->data, leaf_a->len, out_a);
		return;
	}
	Assert(leaf_b->len >= AUDIT_HASH_LEN);
	audit_sha256_x2(commit_a->data, commit_a->len, ca, commit_b->data, commit_b->len, cb);
	memcpy(leaf_a->data + leaf_a->len - AUDIT_HASH_LEN, ca, AUDIT_HASH_LEN);
	memcpy(leaf_b->data + leaf_b->len - AUDIT_HASH_LEN, cb, AUDIT_HASH_LEN);
	audit_sha256_x2(leaf_a->data, leaf_a->len, out_a, leaf_b->data, leaf_b->len, out_b);
}

static StringInfo verify_buffer = NULL;

void
audit_row_leaf_for_verify(Datum *values, bool *nulls, const AuditColumnMap *map,
						  uint8 leaf[AUDIT_HASH_LEN])
{
	StringInfo	buf = verify_buffer;
	uint8		commitment[AUDIT_HASH_LEN];

	if (buf == NULL)
	{
		MemoryContext old = MemoryContextSwitchTo(TopMemoryContext);

		buf = makeStringInfo();
		MemoryContextSwitchTo(old);
		verify_buffer = buf;
	}

	if (NUL(AC_PERSONAL_DATA_SALT))
		audit_row_commitment(values, nulls, map, commitment, NULL);
	else
	{
		resetStringInfo(buf);
		audit_encode_commitment_input(buf, values, nulls, map, NULL);
		audit_sha256(buf->data, buf->len, commitment);
	}

	resetStringInfo(buf);
	audit_encode_leaf_input(buf, values, nulls, map, commitment);
	audit_sha256(buf->data, buf->len, leaf);

	/* Keep no large buffer (an event with large details) past the row. */
	if (buf->maxlen > ENCODING_BUFFER_KEEP)
	{
		pfree(buf->data);
		pfree(buf);
		verify_buffer = NULL;
	}
}

#undef VAL
#undef NUL

/* Merkle trees ------------------------------------------------------------ */

void
audit_merkle_root(const uint8 *leaves, int n, uint8 out[AUDIT_HASH_LEN])
{
	uint8		node[1 + 2 * AUDIT_HASH_LEN];
	int			k = 1;

	if (n == 0)
	{
		audit_sha256("", 0, out);
		return;
	}
	if (n == 1)
	{
		memcpy(out, leaves, AUDIT_HASH_LEN);
		return;
	}

	check_stack_depth();
	while (k * 2 < n)
		k *= 2;
	node[0] = AUDIT_NODE_PREFIX;
	audit_merkle_root(leaves, k, node + 1);
	audit_merkle_root(leaves + (size_t) k * AUDIT_HASH_LEN, n - k, node + 1 + AUDIT_HASH_LEN);
	audit_sha256(node, sizeof(node), out);
}

void
audit_merkle_root_x2(const uint8 *leaves, int n, uint8 *scratch, uint8 out[AUDIT_HASH_LEN])
{
	const uint8 *level = leaves;
	uint8		node_a[1 + 2 * AUDIT_HASH_LEN];
	uint8		node_b[1 + 2 * AUDIT_HASH_LEN];

	if (n <= 1)
	{
		audit_merkle_root(leaves, n, out);
		return;
	}
	node_a[0] = node_b[0] = AUDIT_NODE_PREFIX;
	while (n > 1)
	{
		int			pairs = n / 2;
		int			i = 0;

		/* Nodes are copied out before scratch is written: in place is fine. */
		for (; i + 1 < pairs; i += 2)
		{
			memcpy(node_a + 1, level + (size_t) (2 * i) * AUDIT_HASH_LEN, 2 * AUDIT_HASH_LEN);
			memcpy(node_b + 1, level + (size_t) (2 * i + 2) * AUDIT_HASH_LEN, 2 * AUDIT_HASH_LEN);
			audit_sha256_x2(node_a, sizeof(node_a), scratch + (size_t) i * AUDIT_HASH_LEN,
							node_b, sizeof(node_b), scratch + (size_t) (i + 1) * AUDIT_HASH_LEN);
		}
		if (i < pairs)
		{
			memcpy(node_a + 1, level + (size_t) (2 * i) * AUDIT_HASH_LEN, 2 * AUDIT_HASH_LEN);
			audit_sha256(node_a, sizeof(node_a), scratch + (size_t) i * AUDIT_HASH_LEN);
		}
		if (n % 2 == 1)			/* the odd last node moves up unchanged */
			memmove(scratch + (size_t) pairs * AUDIT_HASH_LEN,
					level + (size_t) (n - 1) * AUDIT_HASH_LEN, AUDIT_HASH_LEN);
		n = pairs + n % 2;
		level = scratch;
	}
	memcpy(out, level, AUDIT_HASH_LEN);
}

/*
 * audit_merkle_path
 *		Append to path the audit path of leaf m in the tree over n leaves
 *		(RFC 6962 section 2.1.1: siblings from the leaf's level upwards);
 *		returns how many 32-byte hashes were written.  path must hold
 *		AUDIT_MAX_PATH hashes.
 */
int
audit_merkle_path(const uint8 *leaves, int n, int m, uint8 *path)
{
	int			k = 1;
	int			written;

	Assert(m >= 0 && m < n);
	if (n <= 1)
		return 0;

	check_stack_depth();
	while (k * 2 < n)
		k *= 2;
	if (m < k)
	{
		written = audit_merkle_path(leaves, k, m, path);
		audit_merkle_root(leaves + (size_t) k * AUDIT_HASH_LEN, n - k,
						  path + (size_t) written * AUDIT_HASH_LEN);
	}
	else
	{
		written = audit_merkle_path(leaves + (size_t) k * AUDIT_HASH_LEN, n - k, m - k, path);
		audit_merkle_root(leaves, k, path + (size_t) written * AUDIT_HASH_LEN);
	}
	return written + 1;
}

/* Block headers ------------------------------------------------------------ */

void
audit_block_header_hash(const AuditBlockHeader *h, uint8 out[AUDIT_HASH_LEN])
{
	StringInfoData buf;

	initStringInfo(&buf);
	appendStringInfoChar(&buf, AUDIT_BLOCK_PREFIX);
	put_bytes(&buf, AUDIT_BLOCK_DOMAIN, strlen(AUDIT_BLOCK_DOMAIN));
	put_int64(&buf, h->height);
	put_bytes(&buf, (const char *) h->prev_hash, AUDIT_HASH_LEN);
	put_bytes(&buf, h->kind, strlen(h->kind));
	if (h->in_default_partition)
	{
		put_null(&buf);
		put_null(&buf);
	}
	else
	{
		put_int64(&buf, h->partition_from + UNIX_TO_POSTGRES_USECS);
		put_int64(&buf, h->partition_to + UNIX_TO_POSTGRES_USECS);
	}
	put_int64(&buf, h->xid_from);
	put_int64(&buf, h->xid_to);
	put_int64(&buf, h->row_count);
	put_int64(&buf, h->rows_total);
	put_bytes(&buf, (const char *) h->merkle_root, AUDIT_HASH_LEN);
	put_int64(&buf, h->sealed_at + UNIX_TO_POSTGRES_USECS);
	audit_sha256(buf.data, buf.len, out);
	pfree(buf.data);
}

/* SQL-callable functions --------------------------------------------------- */

/*
 * Deformed audit row passed to an SQL function as a composite value, with
 * the column map of its row type cached in fn_extra.
 */
typedef struct RowArgCache
{
	Oid			typid;
	int32		typmod;
	AuditColumnMap map;
} RowArgCache;

void
audit_deform_row_argument(FunctionCallInfo fcinfo, Datum **values, bool **nulls,
					const AuditColumnMap **map)
{
	HeapTupleHeader rec = PG_GETARG_HEAPTUPLEHEADER(0);
	Oid			typid = HeapTupleHeaderGetTypeId(rec);
	int32		typmod = HeapTupleHeaderGetTypMod(rec);
	TupleDesc	tupdesc = lookup_rowtype_tupdesc(typid, typmod);
	RowArgCache *cache = (RowArgCache *) fcinfo->flinfo->fn_extra;
	HeapTupleData tuple;

	if (cache == NULL || cache->typid != typid || cache->typmod != typmod)
	{
		RowArgCache built;

		audit_columns_build_map(tupdesc, format_type_be(typid), &built.map);
		built.typid = typid;
		built.typmod = typmod;
		cache = MemoryContextAlloc(fcinfo->flinfo->fn_mcxt, sizeof(RowArgCache));
		*cache = built;
		fcinfo->flinfo->fn_extra = cache;
	}

	tuple.t_len = HeapTupleHeaderGetDatumLength(rec);
	ItemPointerSetInvalid(&tuple.t_self);
	tuple.t_tableOid = InvalidOid;
	tuple.t_data = rec;

	*values = palloc(tupdesc->natts * sizeof(Datum));
	*nulls = palloc(tupdesc->natts * sizeof(bool));
	heap_deform_tuple(&tuple, tupdesc, *values, *nulls);
	ReleaseTupleDesc(tupdesc);
	*map = &cache->map;
}

bool
audit_bytea_is_hash(Datum value, bool isnull, uint8 out[AUDIT_HASH_LEN])
{
	bytea	   *b;

	if (isnull)
		return false;
	b = DatumGetByteaPP(value);
	if (VARSIZE_ANY_EXHDR(b) != AUDIT_HASH_LEN)
		return false;
	memcpy(out, VARDATA_ANY(b), AUDIT_HASH_LEN);
	return true;
}

bytea *
audit_bytea_from_bytes(const void *data, int len)
{
	bytea	   *result = palloc(VARHDRSZ + len);

	SET_VARSIZE(result, VARHDRSZ + len);
	memcpy(VARDATA(result), data, len);
	return result;
}

PG_FUNCTION_INFO_V1(audit_leaf_hash_sql);

/*
 * audit.leaf_hash(audit.audit_log) returns bytea
 *		Recompute the leaf hash of a row from its fields (never reads the
 *		stored hash).
 */
Datum
audit_leaf_hash_sql(PG_FUNCTION_ARGS)
{
	Datum	   *values;
	bool	   *nulls;
	const AuditColumnMap *map;
	uint8		commitment[AUDIT_HASH_LEN];
	uint8		leaf[AUDIT_HASH_LEN];

	audit_deform_row_argument(fcinfo, &values, &nulls, &map);
	audit_row_commitment(values, nulls, map, commitment, NULL);
	audit_row_leaf_hash(values, nulls, map, commitment, leaf);
	PG_RETURN_BYTEA_P(audit_bytea_from_bytes(leaf, AUDIT_HASH_LEN));
}

PG_FUNCTION_INFO_V1(audit_leaf_encoding_sql);

/*
 * audit.leaf_encoding(audit.audit_log) returns bytea
 *		The exact bytes hashed into the row's leaf (for documentation,
 *		debugging and independent implementations).
 */
Datum
audit_leaf_encoding_sql(PG_FUNCTION_ARGS)
{
	Datum	   *values;
	bool	   *nulls;
	const AuditColumnMap *map;
	uint8		commitment[AUDIT_HASH_LEN];
	StringInfo	buf;
	bytea	   *result;

	audit_deform_row_argument(fcinfo, &values, &nulls, &map);
	audit_row_commitment(values, nulls, map, commitment, NULL);
	buf = encoding_buffer();
	audit_encode_leaf_input(buf, values, nulls, map, commitment);
	result = audit_bytea_from_bytes(buf->data, buf->len);
	release_large_buffer();
	PG_RETURN_BYTEA_P(result);
}

PG_FUNCTION_INFO_V1(audit_commitment_encoding_sql);

/*
 * audit.commitment_encoding(audit.audit_log) returns bytea
 *		The exact bytes hashed into the row's personal-data commitment, or
 *		NULL for a redacted row (whose salt is gone).
 */
Datum
audit_commitment_encoding_sql(PG_FUNCTION_ARGS)
{
	Datum	   *values;
	bool	   *nulls;
	const AuditColumnMap *map;
	StringInfo	buf;
	bytea	   *result;

	audit_deform_row_argument(fcinfo, &values, &nulls, &map);
	if (nulls[map->attno[AC_PERSONAL_DATA_SALT]])
		PG_RETURN_NULL();
	buf = encoding_buffer();
	audit_encode_commitment_input(buf, values, nulls, map, NULL);
	result = audit_bytea_from_bytes(buf->data, buf->len);
	release_large_buffer();
	PG_RETURN_BYTEA_P(result);
}

PG_FUNCTION_INFO_V1(audit_redacted_fields_digest_sql);

/*
 * audit.redacted_fields_digest(audit.audit_log) returns bytea
 *		SHA-256 over the row's id and its four personal fields as they are
 *		now: what a redaction record attests for a redacted row.
 */
Datum
audit_redacted_fields_digest_sql(PG_FUNCTION_ARGS)
{
	Datum	   *values;
	bool	   *nulls;
	const AuditColumnMap *map;
	uint8		digest[AUDIT_HASH_LEN];

	audit_deform_row_argument(fcinfo, &values, &nulls, &map);
	audit_redacted_fields_digest(values, nulls, map, digest);
	PG_RETURN_BYTEA_P(audit_bytea_from_bytes(digest, AUDIT_HASH_LEN));
}

PG_FUNCTION_INFO_V1(audit_merkle_root_sql);

/*
 * audit.merkle_root(bytea[]) returns bytea
 *		The RFC 6962 Merkle tree root over the given leaf hashes, in array
 *		order.  NULL elements and hashes that are not 32 bytes are refused.
 */
Datum
audit_merkle_root_sql(PG_FUNCTION_ARGS)
{
	ArrayType  *arr = PG_GETARG_ARRAYTYPE_P(0);
	Datum	   *elems;
	bool	   *elemnulls;
	int			n;
	uint8	   *leaves;
	uint8		root[AUDIT_HASH_LEN];

	if (ARR_NDIM(arr) > 1)
		ereport(ERROR,
				(errcode(ERRCODE_ARRAY_SUBSCRIPT_ERROR),
				 errmsg("leaf hashes must be a one-dimensional array"),
				 errhint("Pass the leaves in tree order, for example array_agg(hash ORDER BY ...).")));
	deconstruct_array(arr, BYTEAOID, -1, false, TYPALIGN_INT, &elems, &elemnulls, &n);
	leaves = palloc((size_t) Max(n, 1) * AUDIT_HASH_LEN);
	for (int i = 0; i < n; i++)
	{
		bytea	   *b;

		if (elemnulls[i])
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("leaf hash %d is NULL", i + 1),
					 errhint("Every leaf of a Merkle tree is a 32-byte SHA-256 hash.")));
		b = DatumGetByteaPP(elems[i]);
		if (VARSIZE_ANY_EXHDR(b) != AUDIT_HASH_LEN)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("leaf hash %d has %d bytes, expected %d",
							i + 1, (int) VARSIZE_ANY_EXHDR(b), AUDIT_HASH_LEN),
					 errhint("Every leaf of a Merkle tree is a 32-byte SHA-256 hash.")));
		memcpy(leaves + (size_t) i * AUDIT_HASH_LEN, VARDATA_ANY(b), AUDIT_HASH_LEN);
	}
	audit_merkle_root(leaves, n, root);
	PG_RETURN_BYTEA_P(audit_bytea_from_bytes(root, AUDIT_HASH_LEN));
}

PG_FUNCTION_INFO_V1(audit_block_header_hash_sql);

/*
 * audit_block_header_hash_sql
 *		audit.block_header_hash(height, kind, partition_from, partition_to,
 *		xid_from, xid_to, row_count, rows_total, merkle_root, sealed_at,
 *		prev_hash): the header hash of a block from its fields.  The
 *		partition bounds may be NULL (default partition); nothing else.
 */
Datum
audit_block_header_hash_sql(PG_FUNCTION_ARGS)
{
	AuditBlockHeader h;
	uint8		out[AUDIT_HASH_LEN];
	bytea	   *root;
	bytea	   *prev;

	for (int i = 0; i < 11; i++)
		if (i != 2 && i != 3 && PG_ARGISNULL(i))
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("only the partition bounds of a block header may be NULL"),
					 errhint("Pass the columns of an audit.audit_chain_block row.")));
	root = PG_GETARG_BYTEA_PP(8);
	prev = PG_GETARG_BYTEA_PP(10);
	if (VARSIZE_ANY_EXHDR(root) != AUDIT_HASH_LEN || VARSIZE_ANY_EXHDR(prev) != AUDIT_HASH_LEN)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("merkle_root and prev_hash must be %d bytes", AUDIT_HASH_LEN),
				 errhint("Pass the columns of an audit.audit_chain_block row.")));

	memset(&h, 0, sizeof(h));
	h.height = PG_GETARG_INT64(0);
	h.kind = text_to_cstring(PG_GETARG_TEXT_PP(1));
	h.in_default_partition = PG_ARGISNULL(2) || PG_ARGISNULL(3);
	if (!h.in_default_partition)
	{
		h.partition_from = PG_GETARG_TIMESTAMPTZ(2);
		h.partition_to = PG_GETARG_TIMESTAMPTZ(3);
		if (TIMESTAMP_NOT_FINITE(h.partition_from) || TIMESTAMP_NOT_FINITE(h.partition_to))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("partition bounds of a block header must be finite"),
					 errhint("Blocks of an unbounded or default partition have NULL bounds.")));
	}
	h.xid_from = PG_GETARG_INT64(4);
	h.xid_to = PG_GETARG_INT64(5);
	h.row_count = PG_GETARG_INT64(6);
	h.rows_total = PG_GETARG_INT64(7);
	memcpy(h.merkle_root, VARDATA_ANY(root), AUDIT_HASH_LEN);
	h.sealed_at = PG_GETARG_TIMESTAMPTZ(9);
	if (TIMESTAMP_NOT_FINITE(h.sealed_at))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("sealed_at of a block header must be finite"),
				 errhint("Pass the columns of an audit.audit_chain_block row.")));
	memcpy(h.prev_hash, VARDATA_ANY(prev), AUDIT_HASH_LEN);
	audit_block_header_hash(&h, out);
	PG_RETURN_BYTEA_P(audit_bytea_from_bytes(out, AUDIT_HASH_LEN));
}

PG_FUNCTION_INFO_V1(audit_merkle_path_sql);

/*
 * audit_merkle_path_sql
 *		audit.merkle_path(leaves, leaf_index): the audit path of one leaf
 *		among the concatenated 32-byte leaves, as an array of hashes.
 */
Datum
audit_merkle_path_sql(PG_FUNCTION_ARGS)
{
	bytea	   *leaves = PG_GETARG_BYTEA_PP(0);
	int32		m = PG_GETARG_INT32(1);
	int			len = VARSIZE_ANY_EXHDR(leaves);
	int			n = len / AUDIT_HASH_LEN;
	uint8		path[AUDIT_MAX_PATH * AUDIT_HASH_LEN];
	int			k;
	Datum	   *elems;

	if (len % AUDIT_HASH_LEN != 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("leaves must be a multiple of %d bytes, got %d", AUDIT_HASH_LEN, len),
				 errhint("Pass the leaves column of an audit.audit_chain_block row.")));
	if (m < 0 || m >= n)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("leaf index %d is outside the %d leaves", m, n),
				 errhint("Leaf indexes start at 0.")));
	k = audit_merkle_path((const uint8 *) VARDATA_ANY(leaves), n, m, path);
	elems = palloc(sizeof(Datum) * Max(k, 1));
	for (int i = 0; i < k; i++)
		elems[i] = PointerGetDatum(audit_bytea_from_bytes(path + (size_t) i * AUDIT_HASH_LEN, AUDIT_HASH_LEN));
	PG_RETURN_ARRAYTYPE_P(construct_array(elems, k, BYTEAOID, -1, false, TYPALIGN_INT));
}
