#!/usr/bin/python3
"""Independent implementation and test of audit_db hash format v1.

The format is specified in docs/hash-format.md.  This file re-implements it
with hashlib alone (its own jsonb canonicalization included: details are
parsed here and written back the way PostgreSQL's jsonb output does), then
checks it against

  (a) the vectors in test/vectors/hash_vectors.json,
  (b) the extension's audit.leaf_hash / leaf_encoding / commitment_encoding
      of the same rows,
  (c) rows really inserted into audit.audit_log (plain INSERT and
      audit.log_event), read back and recomputed here,
  (d) sanity: changing a hashed field changes the hash, changing an excluded
      one does not,
  (e) a LATIN1 database hashes text as UTF-8 too (skipped when the role may
      not create databases),
  (f) the jsonb canonicalization here equals the server's jsonb text on
      random documents (a comparison only: hashing never asks the server).

Connection: libpq environment (PGHOST, PGPORT, PGUSER, PGDATABASE).  The
script runs CREATE EXTENSION IF NOT EXISTS audit_db in that database.  The
rows it inserts stay there (audit.audit_log is append-only).

Output: one "ok - ..." / "not ok - ..." line per check, then
"hash_vectors: N passed, M failed"; exit status 1 if any check failed.

Needs Python 3 with psycopg 3 (Debian's python3-psycopg).  When run by an
interpreter without psycopg, it re-runs itself with /usr/bin/python3.
"""

import decimal
import hashlib
import json
import os
import re
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
from testkit import Results, psycopg as _load_psycopg  # noqa: E402

try:
    psycopg = _load_psycopg()
except ImportError:  # vectors can still be checked without a server
    psycopg = None

HERE = os.path.dirname(os.path.abspath(__file__))
VECTORS_FILE = os.path.join(HERE, "vectors", "hash_vectors.json")

# --------------------------------------------------------------------------
# The format
# --------------------------------------------------------------------------

LEAF_PREFIX = b"\x00"
COMMIT_PREFIX = b"\x02"
LEAF_DOMAIN = "audit_db.leaf.v1"
COMMIT_DOMAIN = "audit_db.personal.v1"

# Leaf fields after id, transaction_id and timestamp, in order (all text).
LEAF_TEXT_FIELDS = ("organization_id", "action", "target_resource_type", "status",
                    "event_version", "correlation_id", "data_classification",
                    "retention_policy")
# Personal fields of the commitment after the salt (text), then details.
COMMIT_TEXT_FIELDS = ("principal_id", "target_resource_id", "outcome_description")

# Every field that enters a row's leaf hash (directly or via the commitment).
HASHED_FIELDS = ("id", "transaction_id", "timestamp") + LEAF_TEXT_FIELDS + \
    ("processing_latency", "personal_data_salt") + COMMIT_TEXT_FIELDS + ("details",)
# Columns that never enter the hash.
EXCLUDED_FIELDS = ("hash", "hash_algorithm", "archived_at")


def field(value):
    """One field: None -> 00; bytes/str/int -> 01, uint32 BE length, bytes."""
    if value is None:
        return b"\x00"
    if isinstance(value, bool):
        raise TypeError("booleans are not a field type")
    if isinstance(value, int):
        value = str(value).encode("ascii")
    elif isinstance(value, str):
        value = value.encode("utf-8")
    if len(value) > 0xFFFFFFFF:
        raise ValueError("field too long")
    return b"\x01" + len(value).to_bytes(4, "big") + bytes(value)


# -- jsonb canonical text ---------------------------------------------------

class _Pairs(list):
    """A JSON object as parsed: its (key, value) pairs in input order."""


def _reject_constant(name):
    raise ValueError("%s is not valid JSON for jsonb" % name)


def parse_json(text):
    """Parse JSON text keeping numbers exact and objects as ordered pairs."""
    return json.loads(text, parse_float=decimal.Decimal, parse_int=decimal.Decimal,
                      parse_constant=_reject_constant, object_pairs_hook=_Pairs)


def jsonb_numeric_text(d):
    """numeric_out of the value PostgreSQL's numeric_in reads from the JSON
    number text: plain decimal notation, as many fraction digits as the input
    had after applying its exponent (at least 0), no sign on zero."""
    sign, digits, exp = d.as_tuple()
    if not isinstance(exp, int):
        raise ValueError("NaN/Infinity are not valid JSON numbers")
    coeff = int("".join(map(str, digits))) if digits else 0
    if exp >= 0:
        text = str(coeff * 10 ** exp)
    else:
        scale = -exp
        text = str(coeff).rjust(scale + 1, "0")
        text = text[:-scale] + "." + text[-scale:]
    return ("-" if sign and coeff != 0 else "") + text


_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\f": "\\f",
            "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def jsonb_string_text(s):
    """A JSON string as jsonb writes it."""
    out = ['"']
    for ch in s:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif ch == "\x00":
            raise ValueError("jsonb cannot hold \\u0000")
        elif ord(ch) < 0x20:
            out.append("\\u%04x" % ord(ch))
        elif 0xD800 <= ord(ch) <= 0xDFFF:
            raise ValueError("lone surrogate in JSON string")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _key_order(key):
    b = key.encode("utf-8")
    return (len(b), b)


def jsonb_value_text(v):
    if v is None:
        return "null"
    if v is True:
        return "true"
    if v is False:
        return "false"
    if isinstance(v, decimal.Decimal):
        return jsonb_numeric_text(v)
    if isinstance(v, str):
        return jsonb_string_text(v)
    if isinstance(v, _Pairs):
        obj = {}
        for k, val in v:  # a repeated key keeps its last value
            obj[k] = val
        return "{" + ", ".join(jsonb_string_text(k) + ": " + jsonb_value_text(obj[k])
                               for k in sorted(obj, key=_key_order)) + "}"
    if isinstance(v, list):
        return "[" + ", ".join(jsonb_value_text(x) for x in v) + "]"
    raise TypeError("unexpected JSON value %r" % (v,))


def canonical_jsonb(text):
    """The text PostgreSQL's jsonb output gives for the JSON text `text`."""
    return jsonb_value_text(parse_json(text))


# -- timestamps -------------------------------------------------------------

def _days_from_civil(y, m, d):
    """Days since 1970-01-01 of a proleptic Gregorian date (astronomical
    year: 1 BC is year 0)."""
    y -= m <= 2
    era = y // 400
    yoe = y - era * 400
    doy = (153 * (m + (-3 if m > 2 else 9)) + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


_TS_RE = re.compile(
    r"^(\d{4,})-(\d{2})-(\d{2})[ T](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,6}))?"
    r"(Z|[+-]\d{2}(?::?\d{2}(?::?\d{2})?)?)( BC)?$")


def timestamp_usecs(text):
    """Microseconds since 1970-01-01T00:00:00Z of a timestamptz written in
    PostgreSQL's ISO output style (DateStyle ISO), e.g.
    '1969-07-20 20:17:40.000001+00', '0044-03-15 12:00:00+00 BC',
    '12345-06-07 08:09:10.5+05:30'."""
    m = _TS_RE.match(text)
    if not m:
        raise ValueError("unrecognized timestamp %r" % text)
    year, mon, day, hh, mi, ss = (int(x) for x in m.group(1, 2, 3, 4, 5, 6))
    frac = int((m.group(7) or "").ljust(6, "0"))
    if m.group(9):
        year = 1 - year
    off = 0
    if m.group(8) != "Z":
        z = m.group(8)
        parts = re.findall(r"\d{2}", z[1:])
        off = int(parts[0]) * 3600 + (int(parts[1]) * 60 if len(parts) > 1 else 0) + \
            (int(parts[2]) if len(parts) > 2 else 0)
        if z[0] == "-":
            off = -off
    secs = _days_from_civil(year, mon, day) * 86400 + hh * 3600 + mi * 60 + ss - off
    return secs * 1000000 + frac


def _civil_from_days(z):
    """Inverse of _days_from_civil: (astronomical year, month, day)."""
    z += 719468
    era = z // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    d = doy - (153 * mp + 2) // 5 + 1
    m = mp + 3 if mp < 10 else mp - 9
    return yoe + era * 400 + (m <= 2), m, d


def usecs_to_timestamp_text(usecs):
    """A timestamptz literal (UTC, ISO style) for microseconds since the
    Unix epoch; timestamp_usecs() reads it back exactly."""
    secs, frac = divmod(usecs, 1000000)
    days, sod = divmod(secs, 86400)
    y, m, d = _civil_from_days(days)
    bc = y <= 0
    text = "%04d-%02d-%02d %02d:%02d:%02d.%06d+00" % (
        1 - y if bc else y, m, d, sod // 3600, sod // 60 % 60, sod % 60, frac)
    return text + (" BC" if bc else "")


# -- the two structures -----------------------------------------------------
#
# A row here is a dict: id, transaction_id, processing_latency: int or None;
# timestamp: int microseconds since the Unix epoch or None; text columns: str
# or None; details: JSON text (any spelling) or None for SQL NULL;
# personal_data_salt, personal_data_commitment: bytes or None.

def commitment_input(row):
    if row.get("personal_data_salt") is None:
        raise ValueError("a row without salt has no commitment input")
    details = row.get("details")
    return (COMMIT_PREFIX + field(COMMIT_DOMAIN) + field(row["personal_data_salt"]) +
            b"".join(field(row.get(f)) for f in COMMIT_TEXT_FIELDS) +
            field(None if details is None else canonical_jsonb(details)))


def commitment(row):
    if row.get("personal_data_salt") is None:
        c = row.get("personal_data_commitment")
        if c is None or len(c) != 32:
            raise ValueError("redacted row needs a 32-byte commitment")
        return bytes(c)
    return hashlib.sha256(commitment_input(row)).digest()


def leaf_input(row, commit=None):
    if commit is None:
        commit = commitment(row)
    return (LEAF_PREFIX + field(LEAF_DOMAIN) + field(row.get("id")) +
            field(row.get("transaction_id")) + field(row.get("timestamp")) +
            b"".join(field(row.get(f)) for f in LEAF_TEXT_FIELDS) +
            field(row.get("processing_latency")) + field(commit))


def leaf_hash(row):
    return hashlib.sha256(leaf_input(row)).digest()


# --------------------------------------------------------------------------
# Vectors
# --------------------------------------------------------------------------

INT64_FIELDS = ("id", "transaction_id")


def row_from_vector(vrow):
    """Python row from the "row" object of a vector (see the JSON file)."""
    row = {}
    for k, v in vrow.items():
        if v is None:
            row[k] = None
        elif k in INT64_FIELDS:
            row[k] = int(v)
        elif k in ("timestamp", "archived_at"):
            row[k] = timestamp_usecs(v)
        elif k in ("personal_data_salt", "personal_data_commitment", "hash"):
            row[k] = bytes.fromhex(v)
        else:
            row[k] = v
    return row


def load_vectors():
    with open(VECTORS_FILE, encoding="utf-8") as f:
        return json.load(f)


# --------------------------------------------------------------------------
# Test harness
# --------------------------------------------------------------------------

def diff(label, got, want):
    if got == want:
        return None
    g = got.hex() if isinstance(got, (bytes, bytearray)) else got
    w = want.hex() if isinstance(want, (bytes, bytearray)) else want
    return "%s:\n  got  %s\n  want %s" % (label, g, w)


def first_problem(*problems):
    found = [p for p in problems if p]
    return (not found, "\n".join(found) if found else None)


# -- building rows in the server --------------------------------------------

class RowBuilder:
    """SQL for a value of type audit.audit_log built from a Python row,
    with every column in its place whatever the column order."""

    def __init__(self, conn):
        self.cols = conn.execute(
            "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
            "WHERE attrelid = 'audit.audit_log'::regclass AND attnum > 0 "
            "AND NOT attisdropped ORDER BY attnum").fetchall()

    def sql(self, row):
        """(sql expression, params) of the row value."""
        parts, params = [], []
        for name, typ in self.cols:
            v = row.get(name)
            if typ == "timestamp with time zone" and v is not None:
                v = usecs_to_timestamp_text(v)
            if v is None:
                parts.append("NULL::%s" % typ)
            elif typ == "bytea":
                parts.append("decode(%s, 'hex')")
                params.append(bytes(v).hex())
            else:
                parts.append("%%s::text::%s" % typ)
                params.append(str(v))
        return "ROW(" + ", ".join(parts) + ")::audit.audit_log", params


def server_hashes(conn, builder, row):
    expr, params = builder.sql(row)
    return conn.execute(
        "SELECT audit.leaf_hash(r), audit.leaf_encoding(r), audit.commitment_encoding(r) "
        "FROM (SELECT %s AS r) s" % expr, params).fetchone()


# --------------------------------------------------------------------------
# (a) + (b): vectors
# --------------------------------------------------------------------------

def check_vectors(res, data, conn, builder):
    for v in data["vectors"]:
        name = v["name"]
        row = row_from_vector(v["row"])

        def python_side(v=v, row=row):
            problems = []
            if v.get("timestamp_usecs") is not None:
                problems.append(diff("timestamp usecs", row["timestamp"],
                                     int(v["timestamp_usecs"])))
            c = commitment(row)
            problems.append(diff("commitment", c.hex(), v["commitment"]))
            problems.append(diff("leaf hash", leaf_hash(row).hex(), v["leaf_hash"]))
            if v.get("leaf_input"):
                problems.append(diff("leaf input", leaf_input(row).hex(), v["leaf_input"]))
            if v.get("commitment_input"):
                problems.append(diff("commitment input", commitment_input(row).hex(),
                                     v["commitment_input"]))
            if v.get("details_canonical") is not None:
                problems.append(diff("canonical details", canonical_jsonb(row["details"]),
                                     v["details_canonical"]))
            return first_problem(*problems)
        res.run("vector %s: Python recomputes commitment and leaf hash" % name, python_side)

        if conn is None:
            continue

        def server_side(v=v, row=row):
            h, enc, cenc = server_hashes(conn, builder, row)
            problems = [diff("audit.leaf_hash", bytes(h).hex(), v["leaf_hash"]),
                        diff("audit.leaf_encoding vs Python", bytes(enc), leaf_input(row))]
            if row.get("personal_data_salt") is None:
                problems.append(None if cenc is None else "commitment_encoding not NULL")
            else:
                problems.append(diff("audit.commitment_encoding vs Python", bytes(cenc),
                                     commitment_input(row)))
            return first_problem(*problems)
        res.run("vector %s: extension's audit.leaf_hash gives the same hash" % name,
                server_side)

    # Pairs the vectors are meant to tell apart.
    by_name = {v["name"]: v for v in data["vectors"]}
    for a, b, why in data.get("must_differ", []):
        res.check(by_name[a]["leaf_hash"] != by_name[b]["leaf_hash"],
                  "vectors %s and %s hash differently (%s)" % (a, b, why))
    for a, b, why in data.get("must_equal", []):
        res.check(by_name[a]["leaf_hash"] == by_name[b]["leaf_hash"],
                  "vectors %s and %s have the same leaf hash (%s)" % (a, b, why))


# --------------------------------------------------------------------------
# (c): real rows
# --------------------------------------------------------------------------

NESTED = ('{"zeta": 1, "b": {"y": [3, 2, {"k2": 0, "k1": null}], "x": "\\u00e9t\\u00e9"}, '
          '"a": [1.50, 1e3, -0.0, 2.5E-3, 12345678901234567890123], "ab": true, '
          '"\u00e9": false, "aa": "dup-first", "aa": "dup-last", "": {}, "arr": []}')
ESCAPES = ('{"s": "quote \\" backslash \\\\ slash / bs \\b ff \\f nl \\n cr \\r tab \\t '
           'c1 \\u0001 c1f \\u001f del \\u007f nbsp \\u00a0 snow \\u2603 emoji \\ud83d\\ude00"}')

# (label, how, fields).  how: "insert" (plain INSERT naming the fields) or
# "log_event" (named arguments; "timestamp" passed as event_time).
REAL_EVENTS = [
    ("minimal insert", "insert", {"action": "login", "status": "success"}),
    ("full insert", "insert", {
        "timestamp": "2024-05-06 07:08:09.123456+00", "principal_id": "user-42",
        "organization_id": "org-1", "action": "document.read",
        "target_resource_type": "document", "target_resource_id": "doc-9",
        "status": "success", "outcome_description": "read 3 pages",
        "event_version": "2.1", "correlation_id": "req-abc",
        "data_classification": "CONFIDENTIAL", "retention_policy": "long",
        "processing_latency": 17, "details": '{"pages": 3, "ip": "10.0.0.1"}'}),
    ("empty strings insert", "insert", {
        "principal_id": "", "organization_id": "", "action": "", "target_resource_type": "",
        "target_resource_id": "", "status": "attempt", "outcome_description": "",
        "event_version": "", "correlation_id": "", "retention_policy": "",
        "processing_latency": 0, "details": "{}"}),
    ("explicit NULLs insert", "insert", {
        "principal_id": None, "organization_id": None, "action": "x",
        "target_resource_type": None, "target_resource_id": None, "status": "failure",
        "outcome_description": None, "correlation_id": None, "processing_latency": None,
        "details": None}),
    ("unicode insert", "insert", {
        "principal_id": "Jos\u00e9 \u00d1\u00fa\u00f1ez", "organization_id": "\u682a\u5f0f\u4f1a\u793e",
        "action": "\u0432\u0445\u043e\u0434", "status": "success",
        "outcome_description": "ok \U0001F600 \u2603 \u00df",
        "target_resource_id": "\u00e9\u00e8\u00ea", "details":
        '{"\u00fc": "\u00e4", "z": "\u65e5\u672c\u8a9e", "\u00e9": 1}'}),
    ("nested details insert", "insert", {"action": "nested", "status": "success",
                                         "details": NESTED}),
    ("escapes insert", "insert", {"action": "esc", "status": "success", "details": ESCAPES}),
    ("pre-1970 insert (-1 us)", "insert", {"action": "old", "status": "success",
                                            "timestamp": "1969-12-31 23:59:59.999999+00"}),
    ("year 1 insert", "insert", {"action": "ancient", "status": "success",
                                 "timestamp": "0001-01-01 00:00:00+00"}),
    ("year 9999 insert", "insert", {"action": "future", "status": "success",
                                    "timestamp": "9999-12-31 23:59:59.999999+00"}),
    ("offset timestamp insert", "insert", {"action": "tz", "status": "success",
                                           "timestamp": "2024-02-29 23:30:00.5-08:00"}),
    ("jsonb null details insert", "insert", {"action": "jnull", "status": "success",
                                             "details": "null"}),
    ("scalar details insert", "insert", {"action": "jscalar", "status": "success",
                                         "details": '"just a string"'}),
    ("array details insert", "insert", {"action": "jarray", "status": "success",
                                        "details": '[3, "b", {"b": 1, "a": 2}, 0.10]'}),
    ("insert with forged id/hash/salt", "insert", {
        "id": 1, "transaction_id": 1, "hash": bytes(32), "hash_algorithm": "SHA-256",
        "personal_data_salt": bytes(16), "action": "forged", "status": "success"}),
    ("minimal log_event", "log_event", {"action": "logout", "status": "success"}),
    ("full log_event", "log_event", {
        "timestamp": "2023-01-01 00:00:00+00", "principal_id": "svc",
        "organization_id": "org-2", "action": "payment.create",
        "target_resource_type": "payment", "target_resource_id": "pay-1",
        "status": "attempt", "outcome_description": "pending", "correlation_id": "c-1",
        "data_classification": "FINANCIAL", "retention_policy": "7y",
        "processing_latency": 2147483647, "details": '{"amount": 1.50, "currency": "EUR"}',
        "event_version": "1.1"}),
    ("unicode log_event, pre-1970", "log_event", {
        "timestamp": "1901-12-13 20:45:52.123456+00", "action": "\u00e9v\u00e9nement",
        "status": "failure", "principal_id": "\u674e\u96f7", "details": NESTED}),
    ("empty strings log_event", "log_event", {
        "action": "", "status": "success", "principal_id": "", "organization_id": "",
        "target_resource_type": "", "target_resource_id": "", "outcome_description": "",
        "correlation_id": "", "retention_policy": "", "event_version": "",
        "details": '""'}),
    ("escapes log_event, year 3000", "log_event", {
        "timestamp": "3000-06-15 12:00:00+00", "action": "esc", "status": "success",
        "data_classification": "PHI", "details": ESCAPES}),
]

# Rows inserted together in one transaction (same transaction_id).
SAME_XACT_EVENTS = [
    ("one transaction, insert 1", "insert", {"action": "batch", "status": "success",
                                             "details": '{"n": 1}'}),
    ("one transaction, insert 2", "insert", {"action": "batch", "status": "success",
                                             "details": '{"n": 2}'}),
    ("one transaction, log_event", "log_event", {"action": "batch", "status": "success",
                                                 "details": '{"n": 3}'}),
]

LOG_EVENT_ARGS = ("action", "status", "principal_id", "organization_id",
                  "target_resource_type", "target_resource_id", "outcome_description",
                  "correlation_id", "data_classification", "retention_policy",
                  "processing_latency", "details", "event_version")


def insert_event(conn, types, how, fields):
    if how == "insert":
        cols, vals, params = [], [], []
        for k, v in fields.items():
            cols.append('"%s"' % k)
            if v is None:
                vals.append("NULL")
            elif isinstance(v, bytes):
                vals.append("decode(%s, 'hex')")
                params.append(v.hex())
            else:
                vals.append("%%s::text::%s" % types[k])
                params.append(str(v))
        sql = "INSERT INTO audit.audit_log (%s) VALUES (%s) RETURNING id" % (
            ", ".join(cols), ", ".join(vals))
        return conn.execute(sql, params).fetchone()[0]
    args, params = [], []
    for k, v in fields.items():
        name = "event_time" if k == "timestamp" else k
        typ = {"processing_latency": "integer", "details": "jsonb",
               "event_time": "timestamptz"}.get(name, "text")
        if v is None:
            args.append("%s => NULL::%s" % (name, typ))
        else:
            args.append("%s => %%s::text::%s" % (name, typ))
            params.append(str(v))
    return conn.execute("SELECT audit.log_event(%s)" % ", ".join(args), params).fetchone()[0]


# Event times outside 0001-01-01 .. 9999-12-31 UTC are refused (SQLSTATE 22008),
# so every stored timestamp fits the format's signed 64-bit microseconds.
OUT_OF_RANGE_EVENTS = [
    ("BC insert", "insert", {"action": "ancient", "status": "success",
                             "timestamp": "0001-01-01 00:00:00+00 BC"}),
    ("year 10000 insert", "insert", {"action": "far future", "status": "success",
                                     "timestamp": "10000-01-01 00:00:00+00"}),
    ("year 200000 log_event", "log_event", {"action": "far future", "status": "success",
                                            "timestamp": "200000-01-01 00:00:00.000001+00"}),
]


READ_BACK = """
SELECT id, transaction_id, "timestamp"::text AS ts_text,
       trunc(extract(epoch FROM "timestamp") * 1000000)::text AS ts_usecs_sql,
       principal_id, organization_id, action, target_resource_type, target_resource_id,
       status, outcome_description, event_version, correlation_id, data_classification,
       retention_policy, processing_latency, details::text AS details_text,
       personal_data_salt, personal_data_commitment, hash, hash_algorithm, archived_at,
       audit.leaf_hash(a) AS server_leaf
FROM audit.audit_log a WHERE id = %s
"""


def check_real_rows(res, conn):
    types = dict(conn.execute(
        "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
        "WHERE attrelid = 'audit.audit_log'::regclass AND attnum > 0 AND NOT attisdropped"
    ).fetchall())
    inserted = []  # (label, fields, id)

    def record(label, how, fields):
        try:
            with conn.transaction():
                inserted.append((label, fields, insert_event(conn, types, how, fields)))
        except Exception as e:  # noqa: BLE001
            res.check(False, "real row %s: inserted" % label, "%s: %s" % (type(e).__name__, e))

    for label, how, fields in REAL_EVENTS:
        record(label, how, fields)
    try:
        with conn.transaction():
            for label, how, fields in SAME_XACT_EVENTS:
                inserted.append((label, fields, insert_event(conn, types, how, fields)))
    except Exception as e:  # noqa: BLE001
        res.check(False, "real rows in one transaction: inserted", "%s: %s" % (type(e).__name__, e))

    res.check(len(inserted) == len(REAL_EVENTS) + len(SAME_XACT_EVENTS),
              "%d real events inserted (plain INSERT and audit.log_event)" % len(inserted))

    for label, how, fields in OUT_OF_RANGE_EVENTS:
        state = None
        try:
            with conn.transaction():
                insert_event(conn, types, how, fields)
        except psycopg.Error as e:
            state = e.sqlstate
        res.check(state == "22008", "real row %s: refused with SQLSTATE 22008" % label,
                  "got SQLSTATE %s" % state)

    xids = {}
    for label, fields, rid in inserted:
        def verify(label=label, fields=fields, rid=rid):
            r = conn.execute(READ_BACK, (rid,)).fetchone()
            cols = [d.name for d in conn.execute(READ_BACK, (rid,)).description]
            rec = dict(zip(cols, r))
            usecs = timestamp_usecs(rec["ts_text"])
            problems = [diff("timestamp usecs: text parse vs exact SQL epoch",
                             str(usecs), rec["ts_usecs_sql"])]
            if fields.get("timestamp") is not None:
                problems.append(diff("timestamp usecs vs the inserted value", usecs,
                                     timestamp_usecs(fields["timestamp"])))
            # details: hash the JSON text that was sent, canonicalized here.
            if "details" in fields:
                details = fields["details"]
            else:
                details = rec["details_text"]  # a default filled in by the server
            row = {
                "id": rec["id"], "transaction_id": rec["transaction_id"], "timestamp": usecs,
                "details": details,
                "personal_data_salt": None if rec["personal_data_salt"] is None
                else bytes(rec["personal_data_salt"]),
                "personal_data_commitment": None if rec["personal_data_commitment"] is None
                else bytes(rec["personal_data_commitment"]),
            }
            for f in LEAF_TEXT_FIELDS + COMMIT_TEXT_FIELDS + ("processing_latency",):
                row[f] = rec[f]
            stored = bytes(rec["hash"])
            problems.append(diff("stored hash vs Python leaf hash", leaf_hash(row), stored))
            problems.append(diff("audit.leaf_hash vs stored hash", bytes(rec["server_leaf"]),
                                 stored))
            canon = None if details is None else canonical_jsonb(details)
            problems.append(diff("canonical details vs server's jsonb text", canon,
                                 rec["details_text"]))
            for f in LEAF_TEXT_FIELDS + COMMIT_TEXT_FIELDS + ("processing_latency",):
                if f in fields and f not in ("id", "transaction_id"):
                    problems.append(diff("read-back %s" % f, rec[f], fields[f]))
            problems.append(None if rec["personal_data_salt"] is not None and
                            len(rec["personal_data_salt"]) == 16 else "salt missing")
            if "id" in fields:
                problems.append(None if rec["id"] != fields["id"] else "forged id kept")
            xids[label] = rec["transaction_id"]
            return first_problem(*problems)
        res.run("real row %s (id %s): stored hash = Python recomputation" % (label, rid), verify)

    same = [xids.get(label) for label, _, _ in SAME_XACT_EVENTS]
    res.check(None not in same and len(set(same)) == 1,
              "rows of one transaction share their transaction_id")


# --------------------------------------------------------------------------
# (d): sanity
# --------------------------------------------------------------------------

# Domain-checked columns take only these values (src/vocabulary.c).
ENUMERATED = {
    "status": ("attempt", "success", "failure"),
    "data_classification": ("PUBLIC", "INTERNAL", "CONFIDENTIAL", "PHI", "FINANCIAL"),
}


def mutations(row):
    """(description, mutated row) for a change of every hashed field."""
    out = []
    for f in HASHED_FIELDS:
        v = row.get(f)
        m = dict(row)
        if f == "personal_data_salt":
            m[f] = bytes([v[0] ^ 1]) + v[1:]
        elif f == "details":
            m[f] = '{"k": 2}' if v != '{"k": 2}' else '{"k": 3}'
        elif f in ENUMERATED:
            # The column is a domain: change to another accepted value.
            m[f] = next(x for x in ENUMERATED[f] if x != v)
        elif isinstance(v, int):
            m[f] = v + 1
        elif isinstance(v, str):
            m[f] = v + "x"
        else:
            m[f] = "x" if f not in ("processing_latency",) else 1
        out.append(("%s changed" % f, m))
        if v is not None and f not in ("personal_data_salt",):
            m = dict(row)
            m[f] = None
            out.append(("%s set to NULL" % f, m))
    # Same text moved between neighbouring fields must not collide.
    m = dict(row)
    m["organization_id"], m["action"] = (row["organization_id"] or "") + row["action"][:1], \
        row["action"][1:]
    out.append(("one character moved from action to organization_id", m))
    m = dict(row)
    m["details"] = '{"k": 1.5}'
    m2 = dict(row)
    m2["details"] = '{"k": 1.50}'
    out.append(("details 1.5 vs 1.50 (different numeric scale)", (m, m2)))
    return out


def check_sanity(res, data, conn, builder):
    v = data["vectors"][0]
    base = row_from_vector(v["row"])
    if base.get("personal_data_salt") is None:
        raise SystemExit("first vector must have a salt")
    base_hash = leaf_hash(base)
    for desc, m in mutations(base):
        if isinstance(m, tuple):
            res.run("sanity: %s changes the Python hash" % desc,
                    lambda m=m: (leaf_hash(m[0]) != leaf_hash(m[1]), "same hash"))
            continue

        def one(m=m):
            h = leaf_hash(m)
            problems = [None if h != base_hash else "Python hash unchanged"]
            if conn is not None:
                problems.append(diff("extension vs Python",
                                     bytes(server_hashes(conn, builder, m)[0]), h))
            return first_problem(*problems)
        res.run("sanity: %s changes the hash (vector %s)" % (desc, v["name"]), one)

    if conn is None:
        return
    # Excluded columns: the extension's hash must not move.
    # (hash_algorithm is a domain that accepts only 'SHA-256', or NULL.)
    other = {"hash": bytes(range(32)), "hash_algorithm": None,
             "archived_at": 1893456000000000,  # 2030-01-01
             "personal_data_commitment": bytes(32)}  # ignored while the salt exists
    for f in EXCLUDED_FIELDS + ("personal_data_commitment",):
        val = other[f]
        m = dict(base)
        m[f] = val
        res.run("sanity: %s does not enter the extension's hash" % f,
                lambda m=m: first_problem(diff(
                    "hash", bytes(server_hashes(conn, builder, m)[0]), base_hash)))


# --------------------------------------------------------------------------
# (f): jsonb canonicalization against the server on random documents
# --------------------------------------------------------------------------

def random_json_text(rnd, depth=0):
    """Random JSON text in deliberately non-canonical spelling."""
    ws = lambda: rnd.choice(["", " ", "  ", "\n", "\t", "\r\n "])  # noqa: E731
    kind = rnd.randrange(10 if depth < 4 else 6)
    if kind == 0:
        return rnd.choice(["true", "false", "null"])
    if kind in (1, 2):
        mant = rnd.choice(["0", "-0", "1", "-7", "42", "1234567890123456789012345",
                           str(rnd.randrange(10 ** rnd.randrange(1, 12)))])
        frac = rnd.choice(["", ".0", ".50", ".000", "." + str(rnd.randrange(10 ** 6)).zfill(6)])
        exp = rnd.choice(["", "", "e0", "E+2", "e-3", "E10", "e-25", "e+1"])
        return mant + frac + exp
    if kind in (3, 4, 5):
        return random_json_string(rnd)
    if kind in (6, 7):
        n = rnd.randrange(5)
        return "[" + ws() + ("," + ws()).join(random_json_text(rnd, depth + 1)
                                              for _ in range(n)) + ws() + "]"
    n = rnd.randrange(6)
    keys = [random_json_string(rnd) for _ in range(n)]
    if keys and rnd.random() < 0.3:
        keys.append(rnd.choice(keys))  # a repeated key: the last one wins
    return "{" + ws() + ("," + ws()).join(
        k + ws() + ":" + ws() + random_json_text(rnd, depth + 1) for k in keys) + ws() + "}"


def random_json_string(rnd):
    # JSON-text fragments: plain characters and escape sequences.
    alphabet = ["a", "b", "z", "A", "0", " ", "/", "~", "\x7f", "\u00e9", "\u00fc", "\u00df",
                "\u65e5", "\u2603", "\U0001F600", "\\\\", '\\"', "\\n", "\\t", "\\b", "\\f",
                "\\r", "\\u0001", "\\u001F", "\\u007f", "\\u00e9", "\\u65e5", "\\ud83d\\ude00",
                "\\/"]
    return '"' + "".join(rnd.choice(alphabet) for _ in range(rnd.randrange(6))) + '"'


def check_jsonb_fuzz(res, conn, count=400):
    import random
    rnd = random.Random(20240601)
    docs = [random_json_text(rnd) for _ in range(count)]
    bad = []
    for d in docs:
        server = conn.execute("SELECT %s::text::jsonb::text", (d,)).fetchone()[0]
        try:
            mine = canonical_jsonb(d)
        except Exception as e:  # noqa: BLE001
            mine = "%s: %s" % (type(e).__name__, e)
        if mine != server:
            bad.append("input  %r\nserver %r\npython %r" % (d, server, mine))
    res.check(not bad, "jsonb canonical text equals the server's on %d random documents"
              % count, "\n".join(bad[:3]))


# --------------------------------------------------------------------------
# (e): a LATIN1 database
# --------------------------------------------------------------------------

LATIN1_ROW = {
    "id": 77, "transaction_id": 88, "timestamp": 1234567890123456,
    "principal_id": "M\u00fcller", "organization_id": "Caf\u00e9 & Co",
    "action": "\u00e9dition", "target_resource_type": "r\u00e9sum\u00e9",
    "target_resource_id": "\u00a7 12", "status": "success",
    "outcome_description": "gr\u00fc\u00dfe \u00bd", "event_version": "1.0",
    "correlation_id": None, "data_classification": "INTERNAL",
    "retention_policy": "standard", "processing_latency": 5,
    "details": '{"\u00df": "\u00fc", "a\u00e9": ["\u00e7a", 1.50], "z": "\\u00e9"}',
    "personal_data_salt": bytes.fromhex("00ff00ff00ff00ff00ff00ff00ff00ff"),
}


def check_latin1(res, conn, data):
    me = conn.execute("SELECT rolcreatedb OR rolsuper FROM pg_roles WHERE rolname = current_user"
                      ).fetchone()[0]
    if not me:
        print("# skip - LATIN1 database check: the role may not create databases")
        return
    dbname = "hash_vectors_latin1_%d" % os.getpid()
    conn.execute('CREATE DATABASE "%s" TEMPLATE template0 ENCODING \'LATIN1\' '
                 "LC_COLLATE 'C' LC_CTYPE 'C'" % dbname)
    try:
        with psycopg.connect(dbname=dbname, autocommit=True,
                             options="-c client_encoding=UTF8") as lconn:
            lconn.execute("CREATE EXTENSION IF NOT EXISTS audit_db")
            lbuilder = RowBuilder(lconn)
            rows = [("LATIN1 text and details", LATIN1_ROW)]
            for v in data["vectors"]:
                r = row_from_vector(v["row"])
                try:
                    for val in r.values():
                        if isinstance(val, str):
                            val.encode("latin-1")
                except UnicodeEncodeError:
                    continue
                rows.append(("vector %s" % v["name"], r))
            for label, r in rows:
                res.run("LATIN1 database: %s hashes as in Python (text as UTF-8)" % label,
                        lambda r=r: first_problem(diff(
                            "hash", bytes(server_hashes(lconn, lbuilder, r)[0]), leaf_hash(r))))
            # Real inserts: the stored hash must be the Python one.
            lconn.execute("SET TimeZone = 'UTC'")
            events = [
                ("LATIN1 text", {k: v for k, v in LATIN1_ROW.items()
                                 if k in LEAF_TEXT_FIELDS + COMMIT_TEXT_FIELDS +
                                 ("processing_latency", "details")}),
                ("empty strings", {"action": "e", "status": "success", "organization_id": "",
                                   "principal_id": "", "correlation_id": ""}),
            ]
            for label, fields in events:
                def real(fields=fields):
                    with lconn.transaction():
                        rid = lconn.execute(
                            "SELECT audit.log_event(%s)" % ", ".join(
                                "%s => %%s::text::%s" % (k, {"processing_latency": "integer",
                                                            "details": "jsonb"}.get(k, "text"))
                                for k in fields), [str(v) for v in fields.values()]).fetchone()[0]
                    rec = lconn.execute(
                        "SELECT id, transaction_id, \"timestamp\"::text AS ts, principal_id, "
                        "organization_id, action, target_resource_type, target_resource_id, "
                        "status, outcome_description, event_version, correlation_id, "
                        "data_classification, retention_policy, processing_latency, "
                        "personal_data_salt, personal_data_commitment, hash "
                        "FROM audit.audit_log WHERE id = %s", (rid,))
                    cols = [d.name for d in rec.description]
                    rec = dict(zip(cols, rec.fetchone()))
                    row = dict(rec, timestamp=timestamp_usecs(rec.pop("ts")),
                               details=fields.get("details"),
                               personal_data_salt=bytes(rec["personal_data_salt"]))
                    return first_problem(diff("stored hash vs Python", bytes(rec["hash"]),
                                              leaf_hash(row)))
                res.run("LATIN1 database: inserted row with %s has the Python hash" % label, real)
    finally:
        conn.execute('DROP DATABASE IF EXISTS "%s"' % dbname)


# --------------------------------------------------------------------------

def main():
    res = Results()
    try:
        data = load_vectors()
    except Exception as e:  # noqa: BLE001
        res.check(False, "load %s" % VECTORS_FILE, e)
        return res.finish("hash_vectors")
    res.check(len(data.get("vectors", [])) >= 4, "vector file has at least 4 vectors")

    conn = None
    builder = None
    if psycopg is None:
        res.check(False, "psycopg 3 is importable (Debian package python3-psycopg)")
    else:
        try:
            conn = psycopg.connect(autocommit=True, options="-c client_encoding=UTF8")
            conn.execute("SET TimeZone = 'UTC'")
            conn.execute("SET DateStyle = 'ISO, YMD'")
            conn.execute("CREATE EXTENSION IF NOT EXISTS audit_db")
            builder = RowBuilder(conn)
            res.check(True, "connected to %s, extension audit_db present" %
                      conn.info.dbname)
        except Exception as e:  # noqa: BLE001
            res.check(False, "connect and CREATE EXTENSION IF NOT EXISTS audit_db",
                      "%s: %s" % (type(e).__name__, e))
            conn = None

    check_vectors(res, data, conn, builder)
    if conn is not None:
        try:
            check_real_rows(res, conn)
        except Exception as e:  # noqa: BLE001
            res.check(False, "real rows", "%s: %s" % (type(e).__name__, e))
    check_sanity(res, data, conn, builder)
    if conn is not None:
        try:
            check_jsonb_fuzz(res, conn)
        except Exception as e:  # noqa: BLE001
            res.check(False, "jsonb canonicalization fuzz", "%s: %s" % (type(e).__name__, e))
        try:
            check_latin1(res, conn, data)
        except Exception as e:  # noqa: BLE001
            res.check(False, "LATIN1 database check", "%s: %s" % (type(e).__name__, e))
        conn.close()

    return res.finish("hash_vectors")


if __name__ == "__main__":
    sys.exit(main())
