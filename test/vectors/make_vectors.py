#!/usr/bin/python3
"""Regenerate test/vectors/hash_vectors.json from the inputs below.

Expected values come from the real extension (audit.leaf_hash,
audit.leaf_encoding, audit.commitment_encoding of each row built as a value
of audit.audit_log; nothing is inserted), and must agree with the independent
Python implementation in test/hash_vectors.py, or nothing is written.

Connection from the libpq environment (PGHOST, PGPORT, PGUSER, PGDATABASE).

    /usr/bin/python3 test/vectors/make_vectors.py [--markdown]

--markdown also prints the vectors as Markdown for docs/hash-format.md.
Only run it when the format (or the set of vectors) changes on purpose:
the committed JSON is the reference the tests hold the code to.
"""

import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import hash_vectors as hv  # noqa: E402

import psycopg  # noqa: E402

COMMON = {
    "hash_algorithm": "SHA-256",
    "archived_at": None,
    "personal_data_commitment": None,
}

BASIC = dict(COMMON, **{
    "id": "1001", "transaction_id": "750",
    "timestamp": "2024-03-15 14:30:00.123456+00",
    "principal_id": "alice@example.com", "organization_id": "org-acme",
    "action": "document.read", "target_resource_type": "document",
    "target_resource_id": "doc-2024-0042", "status": "success",
    "outcome_description": "Document opened", "event_version": "1.0",
    "correlation_id": "req-7f3a", "data_classification": "CONFIDENTIAL",
    "retention_policy": "standard", "processing_latency": 42,
    "details": '{"pages": 3, "ip": "192.0.2.10"}',
    "personal_data_salt": "000102030405060708090a0b0c0d0e0f",
    "archived_at": "2025-01-01 00:00:00+00",
})

NULLS = dict(COMMON, **{
    "id": "2", "transaction_id": "1000", "timestamp": "2024-03-15 14:30:00+00",
    "principal_id": None, "organization_id": None, "action": "login",
    "target_resource_type": None, "target_resource_id": None, "status": "failure",
    "outcome_description": None, "event_version": "1.0", "correlation_id": None,
    "data_classification": "INTERNAL", "retention_policy": "standard",
    "processing_latency": None, "details": None,
    "personal_data_salt": "ffeeddccbbaa99887766554433221100",
})

EMPTY = dict(NULLS, **{
    "principal_id": "", "organization_id": "", "target_resource_type": "",
    "target_resource_id": "", "outcome_description": "", "correlation_id": "",
})

JSON_NULL = dict(NULLS, details="null")

UNICODE_NESTED = dict(COMMON, **{
    "id": "9223372036854775807", "transaction_id": "8589934593",
    "timestamp": "2024-02-29 23:59:59.999999+00",
    "principal_id": "Jos\u00e9 \u00d1\u00fa\u00f1ez",
    "organization_id": "\u682a\u5f0f\u4f1a\u793e\u30c6\u30b9\u30c8",
    "action": "\u30c9\u30ad\u30e5\u30e1\u30f3\u30c8.\u95b2\u89a7",
    "target_resource_type": "fichier", "target_resource_id": "\u0394-\u03b1\u03b2\u03b3",
    "status": "attempt", "outcome_description": "\u2713 ok \U0001F600",
    "event_version": "2.0", "correlation_id": "c-\u00fc",
    "data_classification": "PHI", "retention_policy": "7y", "processing_latency": 0,
    "details": ('{"zeta": {"b": [1.50, 1e3, -0.0, 2.5E-3, true, false, null], "a": "x"}, '
                '"msg": "quote \\" backslash \\\\ tab \\t newline \\n ctrl \\u0001 '
                'slash / caf\\u00e9 \u00e9t\u00e9", '
                '"\u00e9": 1, "ab": [], "b": {}, "aa": 1, "aa": 2}'),
    "personal_data_salt": "8f14e45fceea167a5a36dedd4bea2543",
})

PRE_1970 = dict(COMMON, **{
    "id": "1", "transaction_id": "3", "timestamp": "1969-07-20 20:17:40.000001+00",
    "principal_id": "nasa", "organization_id": None, "action": "landing",
    "target_resource_type": "moon", "target_resource_id": "tranquility-base",
    "status": "success", "outcome_description": "The Eagle has landed",
    "event_version": "1.0", "correlation_id": None, "data_classification": "PUBLIC",
    "retention_policy": "forever", "processing_latency": 2147483647,
    "details": '{"crew": ["Armstrong", "Aldrin"], "lat": 0.67408, "lon": 23.47297}',
    "personal_data_salt": "0123456789abcdef0123456789abcdef",
})

BC = dict(PRE_1970, **{
    "id": "4", "timestamp": "0044-03-15 12:00:00+00 BC", "principal_id": "brutus",
    "action": "stab", "target_resource_type": "person", "target_resource_id": "caesar",
    "outcome_description": "Et tu", "processing_latency": 1, "details": "[]",
})

FAR_FUTURE = dict(PRE_1970, **{
    "id": "5", "timestamp": "12345-06-07 08:09:10.5+00", "principal_id": "h.g.wells",
    "action": "travel", "target_resource_type": "machine",
    "target_resource_id": "time-machine", "outcome_description": None,
    "processing_latency": None, "details": '{"year": 12345}',
})

VECTORS = [
    ("basic", "typical event; archived_at is set and does not enter the hash", BASIC),
    ("nulls", "every nullable field NULL", NULLS),
    ("empty_strings", "as nulls, with '' instead of NULL in the six nullable text fields",
     EMPTY),
    ("details_json_null", "as nulls, with details the jsonb value null instead of SQL NULL",
     JSON_NULL),
    ("unicode_nested", "non-ASCII text, largest id, nested details with keys reordered, "
     "a repeated key, escapes and numerics such as 1.50", UNICODE_NESTED),
    ("pre_1970", "negative timestamp with a fraction, largest processing_latency", PRE_1970),
    ("bc", "timestamp before year 1 (44 BC is astronomical year -43)", BC),
    ("far_future", "timestamp in year 12345", FAR_FUTURE),
]


def redacted_of(row, commitment_hex):
    r = dict(row)
    for f in ("principal_id", "target_resource_id", "outcome_description", "details",
              "personal_data_salt"):
        r[f] = None
    r["personal_data_commitment"] = commitment_hex
    return r


def main():
    conn = psycopg.connect(autocommit=True, options="-c client_encoding=UTF8")
    conn.execute("SET TimeZone = 'UTC'")
    conn.execute("CREATE EXTENSION IF NOT EXISTS audit_db")
    builder = hv.RowBuilder(conn)
    out = []

    def add(name, desc, vrow):
        row = hv.row_from_vector(vrow)
        h, enc, cenc = (None if x is None else bytes(x)
                        for x in hv.server_hashes(conn, builder, row))
        commit = enc[-32:]
        assert enc[-37:-32] == b"\x01\x00\x00\x00\x20", "leaf input does not end in the commitment"
        if cenc is not None:
            assert hv.hashlib.sha256(cenc).digest() == commit
        # The independent implementation must agree byte for byte.
        assert hv.leaf_input(row) == enc, (name, hv.leaf_input(row).hex(), enc.hex())
        assert hv.leaf_hash(row) == h, name
        if cenc is not None:
            assert hv.commitment_input(row) == cenc, name
        details = vrow.get("details")
        v = {
            "name": name,
            "description": desc,
            "row": vrow,
            "timestamp_usecs": str(row["timestamp"]),
            "details_canonical": None if details is None else hv.canonical_jsonb(details),
            "commitment_input": None if cenc is None else cenc.hex(),
            "commitment": commit.hex(),
            "leaf_input": enc.hex(),
            "leaf_hash": h.hex(),
        }
        if details is not None:
            server = conn.execute("SELECT %s::jsonb::text", (details,)).fetchone()[0]
            assert server == v["details_canonical"], (name, server, v["details_canonical"])
        out.append(v)
        return v

    made = {}
    for name, desc, vrow in VECTORS:
        made[name] = add(name, desc, vrow)
    add("redacted", "unicode_nested after erasure: salt destroyed, personal fields NULL, "
        "commitment kept; same leaf hash as unicode_nested",
        redacted_of(UNICODE_NESTED, made["unicode_nested"]["commitment"]))

    data = {
        "format": "audit_db hash format v1 (docs/hash-format.md)",
        "notes": [
            "row: the input columns of audit.audit_log. id and transaction_id are decimal "
            "strings (64-bit); timestamp and archived_at are timestamptz text in ISO style "
            "(' BC' suffix for years before 1); personal_data_salt and "
            "personal_data_commitment are hex; details is the JSON text as written "
            "(not canonical), null meaning SQL NULL; every other value is as stored.",
            "timestamp_usecs: the timestamp as signed microseconds since "
            "1970-01-01T00:00:00Z (decimal string).",
            "details_canonical: the canonical jsonb text that is hashed.",
            "commitment_input, leaf_input: hex of the exact bytes hashed "
            "(commitment_input is null for a redacted row).",
            "commitment, leaf_hash: hex SHA-256 digests; leaf_hash is what "
            "audit.audit_log.hash holds.",
            "hash_algorithm and archived_at never enter the hash.",
        ],
        "must_differ": [
            ["nulls", "empty_strings", "NULL and '' encode differently"],
            ["nulls", "details_json_null", "SQL NULL and jsonb null encode differently"],
        ],
        "must_equal": [
            ["unicode_nested", "redacted", "erasure keeps the leaf hash"],
        ],
        "vectors": out,
    }
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "hash_vectors.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, ensure_ascii=False)
        f.write("\n")
    print("wrote %d vectors to %s" % (len(out), path))

    if "--markdown" in sys.argv:
        for v in out:
            print("\n#### %s\n\n%s\n" % (v["name"], v["description"]))
            print("| column | value |\n| --- | --- |")
            for k, val in v["row"].items():
                print("| %s | %s |" % (k, "NULL" if val is None else "`%s`" % val))
            print("\n- timestamp_usecs: `%s`" % v["timestamp_usecs"])
            if v["details_canonical"] is not None:
                print("- canonical details: `%s`" % v["details_canonical"])
            print("- commitment: `%s`" % v["commitment"])
            print("- leaf hash: `%s`" % v["leaf_hash"])


if __name__ == "__main__":
    main()
