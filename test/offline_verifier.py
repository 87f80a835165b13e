#!/usr/bin/env python3
"""test/offline_verifier.py: tools/audit_db_verify against real exports,
digests and proofs.

Logs events of varied shapes (NULLs, empty strings, jsonb null, Unicode,
nested details, numbers such as 1.0E+2, the largest processing_latency)
into three partitions: the current month, February 2020 (created here) and
the default partition (event times in the years 1 and 2999, for which no
partition exists). Sealing runs with audit_db.seal_block_rows = 7 (SET in
the sealing session), in two seal runs, so the chain has blocks of 7, 5, 3,
2 and 1 rows; while the test seals, it holds audit.audit_chain_state locked
(LOCK TABLE ... IN EXCLUSIVE MODE, which takes no transaction id) so the
background worker cannot seal the rows first with its own block size. Some
rows come from two interleaved transactions, so that the sealing order
(transaction_id, id) differs from id order. One more row is logged and left
unsealed.

It then asserts that the tool, run as `sys.executable tools/audit_db_verify`:
  - accepts the export of audit.export_chain() with audit.digest(), and an
    older digest; reports the unsealed row as a note (a problem only with
    --strict); accepts a copy in which one row is redacted (salt removed,
    personal fields NULL, commitment kept);
  - rejects (exit 1, naming the block and/or row) a row field edited, a row
    deleted, a block's leaves edited, a header's sealed_at edited, a row
    listed nowhere although its transaction id is below the sealed horizon,
    a digest with another header_hash, a truncated export (last block
    removed), and an export rewritten consistently after the digest (which
    passes without the digest, the documented limit);
  - accepts audit.prove(id) for the first, a middle and the last row of a
    7-row block, the last row of a 5-row block, the row of a 1-row block and
    a row of the last block, with and without --digest; rejects proofs with
    leaf_index, tree_size, an audit path element, a row field or a later
    header changed (also with its header_hash recomputed), a later header
    dropped, and digests that the proof's headers do not pass through;
  - computes the header-hash test vectors of docs/hash-format.md ("Blocks",
    H1 to H4, two of them retention blocks), and so does
    audit.block_header_hash();
  - with retention (policy 'short', 30 days; months of an unused year before
    2025, CALL audit.run_maintenance('2026-12-01')): a partition dropped
    whole, rows deleted from another, rows relocated out of the default
    partition into a month then dropped, relocated rows deleted row by row.
    The export (blocks, relocations, rows) verifies and counts the 12 rows
    removed by retention; a row deleted by tampering in the same database
    (rolled back afterwards) is the one problem, missing; a retention_rows
    block's ids edited (an id added, removed, replaced; also with leaf, root
    and header recomputed), its leaves, kind or rows_total edited, a
    relocation line dropped, its chain_height raised to the drop's height
    (rule 3 follows heights: the rows are missing, the drop's count is off)
    or lowered below the block that sealed its rows, a relocation forged to
    hide a deleted row, and a removed row put back are reported, while a
    relocation's relocated_at_us (information only) may change; export
    lines carry chain_height; a proof whose later headers include retention
    blocks verifies;
  - with archival (policy 'cold': retention 60, archive after 30, delete
    after 100 days; another unused year; months 3 and 4 with partitions,
    month 5 in the default partition; the test's session holds the
    maintenance advisory lock so the worker's own runs stay off):
    CALL audit.run_maintenance(June 20) until done deletes two rows of
    month 3, archives three of month 3, three of month 4 and two relocated
    rows of month 5 (one archive entry and archive_rows block each), drops
    month 3 (count 0); audit.archive_plan(August 1) expires the entry of
    month 3 only, and runs as of August 1 expire it (retention_archive),
    archive the last row of month 5 and drop month 5. audit.verify() is
    clean; the export lists each entry (archive line, then its rows as
    archived_row lines in the block's order) and counts no retrieval;
    (a) the export verifies with its digest and the tool counts the
    archived rows as the database does (in entries, expired), also against
    the digest of June 20, whose export verifies too; (b) an archived row
    edited (also with its hash recomputed), dropped, swapped with another,
    or put back into the log is reported; (c) an archive line and its rows
    removed is the one problem, missing at its block (as an entry deleted
    in the database is, for audit.verify() and the tool), while the expired
    entry is not missing, and reported when put back; an archive line with
    another root or naming a rows block, and a retention_archive block
    listing other ids, are reported; (d) the relocation of month 5 with its
    chain_height raised to the drop's height: the drop's count and the
    archive blocks' partition are reported; a proof whose later headers
    include archive blocks verifies.

Connects through the libpq environment (PGHOST, PGPORT, PGUSER, PGDATABASE)
as a superuser (SET audit_db.seal_block_rows is PGC_SUSET) and creates the
extension if it is missing. The rows it logs stay (audit.audit_log is
append-only). Needs Debian's python3-psycopg. Last line:
"offline_verifier: N passed, M failed"; exit status 1 if anything failed.
"""
import copy
import importlib.machinery
import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
from testkit import Results, info, psycopg as _load_psycopg, wait_worker_maintenance  # noqa: E402

psycopg = _load_psycopg()

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(ROOT, "tools", "audit_db_verify")
BLOCK_ROWS = 7

# The header-hash test vectors of docs/hash-format.md, "Blocks".
HEADER_VECTORS = [
    {"name": "H1", "fields": {
        "height": 42, "kind": "rows",
        "partition_from_us": 1709251200000000,   # 2024-03-01 00:00:00+00
        "partition_to_us": 1711929600000000,     # 2024-04-01 00:00:00+00
        "xid_from": 700, "xid_to": 760, "row_count": 1, "rows_total": 1001,
        "merkle_root": "381c9885bc856056ac7866b1a12fb181745ffdcf7fc7acf1c43633946b2ea70a",
        "sealed_at_us": 1710513001500000,        # 2024-03-15 14:30:01.5+00
        "prev_hash": "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"},
     "header_hash": "90ab7158c6338be65c6587d3cfea1300cb2b4c7a74dd846fa2aa758b041c1f8b"},
    {"name": "H2", "fields": {
        "height": 1, "kind": "rows", "partition_from_us": None, "partition_to_us": None,
        "xid_from": 0, "xid_to": 1203, "row_count": 2, "rows_total": 2,
        # root of the leaves of V2 and V3 of docs/hash-format.md
        "merkle_root": "19545d76ac0712c8e456200f58a026dd6ef69ac00f2cb9fe73c5726c83764be2",
        "sealed_at_us": -1,                      # 1969-12-31 23:59:59.999999+00
        "prev_hash": "00" * 32},
     "header_hash": "6f45e4d9f5b9c813a40d50f667ff3f9b93b773a12b12f36f66854be7327b4f7e"},
    {"name": "H3", "fields": {
        # retention removes the row of H1 from its partition, after H1
        "height": 43, "kind": "retention_rows",
        "partition_from_us": 1709251200000000, "partition_to_us": 1711929600000000,
        "xid_from": 760, "xid_to": 760, "row_count": 1, "rows_total": 1001,
        "merkle_root": "381c9885bc856056ac7866b1a12fb181745ffdcf7fc7acf1c43633946b2ea70a",
        "sealed_at_us": 1743562800250000,        # 2025-04-02 03:00:00.25+00
        "prev_hash": "90ab7158c6338be65c6587d3cfea1300cb2b4c7a74dd846fa2aa758b041c1f8b"},
     "header_hash": "06fb9dc38a981ef237ceb8353fe568dd1512219c515436b424e298d933fcc543"},
    {"name": "H4", "fields": {
        # retention drops that partition, by then empty, after H3
        "height": 44, "kind": "retention_partition",
        "partition_from_us": 1709251200000000, "partition_to_us": 1711929600000000,
        "xid_from": 760, "xid_to": 760, "row_count": 0, "rows_total": 1001,
        "merkle_root": "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "sealed_at_us": 1746154800500000,        # 2025-05-02 03:00:00.5+00
        "prev_hash": "06fb9dc38a981ef237ceb8353fe568dd1512219c515436b424e298d933fcc543"},
     "header_hash": "da37e9764f02189bd21e3410b195ffb913384b60880bd7d971394fc6221d2e28"},
]

CURRENT_EVENTS = [
    dict(action="document.read", status="success", principal_id="alice@example.com",
         organization_id="org-acme", target_resource_type="document",
         target_resource_id="doc-2024-0042", outcome_description="Document opened",
         correlation_id="req-7f3a", data_classification="CONFIDENTIAL", processing_latency=42,
         details='{"pages": 3, "ip": "192.0.2.10"}'),
    dict(action="login", status="failure"),
    dict(action="login", status="attempt", principal_id="", organization_id="",
         target_resource_type="", target_resource_id="", outcome_description="",
         correlation_id="", details="{}"),
    dict(action="json.null", status="success", details="null"),
    dict(action="\u30c9\u30ad\u30e5\u30e1\u30f3\u30c8.\u95b2\u89a7", status="success",
         organization_id="\u682a\u5f0f\u4f1a\u793e\u30c6\u30b9\u30c8",
         principal_id="Jos\u00e9 \u00d1\u00fa\u00f1ez \U0001F600",
         target_resource_id="\u0394-\u03b1\u03b2\u03b3",
         outcome_description="\u2713 ok\nline two\ttab \\ backslash",
         correlation_id="c-\u00fc",
         details='{"zeta": {"b": [1.50, 1.0E+2, -0.0, 2.5E-3, true, false, null], "a": "x"}, '
                 '"msg": "quote \\" backslash \\\\ ctrl \\u0001 caf\\u00e9 \u00e9t\u00e9", '
                 '"\u00e9": 1, "ab": [], "b": {}, "aa": 1, "aa": 2}'),
    dict(action="numbers", status="success", processing_latency=0,
         details='{"n": 1.0E+2, "big": 123456789012345678901234567890.000, "neg": -1e-3, '
                 '"nest": [[], {}, [1, [2, [3, {"deep": {"deeper": [0e5]}}]]]]}'),
    dict(action="scalar.string", status="success", details='"just a string"'),
    dict(action="scalar.number", status="success", details="1.0E+2"),
    dict(action="big.latency", status="success", processing_latency=2147483647,
         data_classification="PHI", retention_policy="7y", event_version="2.0"),
    dict(action="classified", status="success", data_classification="FINANCIAL",
         details='[{"k": "v"}, "\u65e5\u672c", 0.000]'),
    dict(action="public", status="success", data_classification="PUBLIC",
         principal_id="bob", details='{"a": {"b": {"c": {"d": {"e": "f"}}}}}'),
    dict(action="bulk.1", status="success"),
    dict(action="bulk.2", status="success", outcome_description="x" * 300),
]

TYPES = {"processing_latency": "integer", "details": "jsonb", "event_time": "timestamptz"}


def log_event(conn, ev):
    sql = "SELECT audit.log_event(%s)" % ", ".join(
        "%s => %%s::text::%s" % (k, TYPES.get(k, "text")) for k in ev)
    return conn.execute(sql, [None if v is None else str(v) for v in ev.values()]).fetchone()[0]


def insert_row(conn, ev):
    cols = list(ev)
    sql = "INSERT INTO audit.audit_log (%s) VALUES (%s) RETURNING id" % (
        ", ".join('"timestamp"' if c == "event_time" else c for c in cols),
        ", ".join("%s" for _ in cols))
    return conn.execute(sql, list(ev.values())).fetchone()[0]


def load_tool_module():
    sys.dont_write_bytecode = True  # no tools/__pycache__
    loader = importlib.machinery.SourceFileLoader("audit_db_verify_mod", TOOL)
    spec = importlib.util.spec_from_loader("audit_db_verify_mod", loader)
    mod = importlib.util.module_from_spec(spec)
    loader.exec_module(mod)
    return mod


class Tool:
    """Runs tools/audit_db_verify on documents written to a temp dir."""

    def __init__(self, tmp):
        self.tmp = tmp
        self.n = 0

    def write(self, name, content):
        self.n += 1
        path = os.path.join(self.tmp, "%03d-%s" % (self.n, name))
        with open(path, "w", encoding="utf-8") as f:
            if isinstance(content, list):  # export lines
                f.write("".join(line + "\n" for line in content))
            elif isinstance(content, str):
                f.write(content)
            else:
                json.dump(content, f, ensure_ascii=False)
        return path

    def run(self, *args):
        p = subprocess.run([sys.executable, TOOL] + [str(a) for a in args],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           encoding="utf-8", timeout=600)
        return p.returncode, p.stdout

    def chain(self, lines, digest=None, extra=()):
        args = ["chain", self.write("export.jsonl", lines)]
        if digest is not None:
            args += ["--digest", self.write("digest.json", digest)]
        return self.run(*(args + list(extra)))

    def proof(self, proof, digest=None):
        args = ["proof", self.write("proof.json", proof)]
        if digest is not None:
            args += ["--digest", self.write("digest.json", digest)]
        return self.run(*args)


def expect_ok(rc_out, must=()):
    rc, out = rc_out
    problems = [] if rc == 0 else ["exit status %d, expected 0" % rc]
    for pattern in must:
        if not re.search(pattern, out, re.M):
            problems.append("output lacks /%s/" % pattern)
    return (not problems, "\n".join(problems + ["output:"] + out.splitlines()[-15:])
            if problems else None)


def expect_fail(rc_out, must=()):
    """Exit status 1 and every pattern (regex) found in some PROBLEM line."""
    rc, out = rc_out
    problems = [] if rc == 1 else ["exit status %d, expected 1" % rc]
    plines = [ln for ln in out.splitlines() if ln.startswith("PROBLEM")]
    if not plines:
        problems.append("no PROBLEM line")
    for pattern in must:
        if not any(re.search(pattern, ln) for ln in plines):
            problems.append("no PROBLEM line matches /%s/" % pattern)
    return (not problems, "\n".join(problems + ["output:"] + out.splitlines()[-15:])
            if problems else None)


# Line types of export_chain() in their order (an archive entry's rows follow it).
EXPORT_ORDER = {"block": 0, "relocation": 1, "archive": 2, "archived_row": 2, "row": 3}


def in_export_order(types):
    return types == sorted(types, key=EXPORT_ORDER.__getitem__)


def rows_of(lines):
    return [json.loads(x) for x in lines if json.loads(x)["type"] == "row"]


def blocks_of(lines):
    return [json.loads(x) for x in lines if json.loads(x)["type"] == "block"]


def dumps(obj):
    return json.dumps(obj, ensure_ascii=False)


def replace_line(lines, pred, fn):
    """A copy of the export with fn(obj) applied to the first line matching
    pred(obj); fn returns the new object or None to drop the line."""
    out, done = [], False
    for line in lines:
        obj = json.loads(line)
        if not done and pred(obj):
            done = True
            new = fn(copy.deepcopy(obj))
            if new is not None:
                out.append(dumps(new))
            continue
        out.append(line)
    if not done:
        raise AssertionError("no line matched")
    return out


def flip_hex(h, at=-1):
    """Hex text with one nibble changed at index at."""
    i = at % len(h)
    return h[:i] + ("0" if h[i] != "0" else "1") + h[i + 1:]


def seal_all(conn):
    """Seal whatever is pending (the worker may race; that is fine)."""
    for _ in range(100):
        conn.execute("SELECT audit.seal()")
        if conn.execute("SELECT unsealed_rows FROM audit.chain_status").fetchone()[0] == 0:
            return
        time.sleep(0.1)
    raise AssertionError("rows stay unsealed")


def unsealed_of(conn, ids):
    return conn.execute(
        "SELECT count(*) FROM unnest(%s::bigint[]) AS u(id) WHERE NOT EXISTS "
        "(SELECT 1 FROM audit.audit_chain_block b WHERE u.id = ANY (b.row_ids))",
        (ids,)).fetchone()[0]


def seal_locked(lock, ids):
    """In lock's open transaction (chain state locked): seal until ids are."""
    deadline = time.time() + 60
    while True:
        lock.execute("SELECT * FROM audit.seal()")
        if unsealed_of(lock, ids) == 0:
            return
        if time.time() > deadline:
            raise AssertionError("rows %s not sealed after 60 s" % ids)
        time.sleep(0.2)


def main():
    res = Results()
    conn = psycopg.connect(autocommit=True, options="-c client_encoding=UTF8")
    conn.execute("SET TimeZone = 'UTC'")
    conn.execute("CREATE EXTENSION IF NOT EXISTS audit_db")
    # The worker's first maintenance run would move the default partition's
    # rows below into partitions it creates for them.
    wait_worker_maintenance(conn)
    res.check(os.access(TOOL, os.X_OK), "tools/audit_db_verify exists and is executable")
    with open(TOOL, encoding="utf-8") as f:
        head = f.read(200)
    res.check(head.startswith("#!/usr/bin/env python3\n\"\"\""),
              "tools/audit_db_verify starts with #!/usr/bin/env python3 and a docstring")
    mod = load_tool_module()

    # -- header-hash vectors ------------------------------------------------
    for v in HEADER_VECTORS:
        f = v["fields"]
        h = dict(f, merkle_root=bytes.fromhex(f["merkle_root"]),
                 prev_hash=bytes.fromhex(f["prev_hash"]))
        mine = mod.header_hash(h).hex()
        server = bytes(conn.execute(
            "SELECT audit.block_header_hash(%s, %s, to_timestamp(%s::numeric / 1000000), "
            "to_timestamp(%s::numeric / 1000000), %s, %s, %s, %s, decode(%s, 'hex'), "
            "to_timestamp(%s::numeric / 1000000), decode(%s, 'hex'))",
            (f["height"], f["kind"], f["partition_from_us"], f["partition_to_us"],
             f["xid_from"], f["xid_to"], f["row_count"], f["rows_total"], f["merkle_root"],
             f["sealed_at_us"], f["prev_hash"])).fetchone()[0]).hex()
        problems = []
        if mine != server:
            problems.append("tool %s, audit.block_header_hash %s" % (mine, server))
        if v["header_hash"] is not None and mine != v["header_hash"]:
            problems.append("tool %s, documented %s" % (mine, v["header_hash"]))
        res.check(not problems, "header vector %s: tool = audit.block_header_hash%s"
                  % (v["name"], " = docs" if v["header_hash"] else ""), "\n".join(problems))
        info("header vector %s: %s" % (v["name"], mine))

    # -- data -----------------------------------------------------------------
    seal_all(conn)
    conn.execute("SELECT audit.ensure_month_partition(now())")
    conn.execute("SELECT audit.ensure_month_partition('2020-02-15 00:00:00+00')")
    default_times = ["2999-12-31 23:59:59.999999+00", "0001-01-01 00:00:00+00"]
    for t in default_times:
        part = conn.execute("SELECT c.relname FROM pg_inherits i JOIN pg_class c ON "
                            "c.oid = i.inhrelid WHERE i.inhparent = 'audit.audit_log'::regclass "
                            "AND c.relname = 'audit_log_' || to_char(%s::timestamptz AT TIME "
                            "ZONE 'UTC', 'YYYY_MM')", (t,)).fetchone()
        res.check(part is None, "no partition for %s: its row goes to the default partition" % t)

    lock = psycopg.connect(autocommit=True, options="-c client_encoding=UTF8")
    lock.execute("SET audit_db.seal_block_rows = %d" % BLOCK_ROWS)
    w2 = psycopg.connect(autocommit=True, options="-c client_encoding=UTF8")

    # Run 1: 19 rows in the current month (7 + 7 + 5), 1 in 2020-02, 3 in default.
    ids1 = []
    with lock.transaction():
        lock.execute("LOCK TABLE audit.audit_chain_state IN EXCLUSIVE MODE")
        with conn.transaction():
            for ev in CURRENT_EVENTS:
                ids1.append(log_event(conn, ev))
            ids1.append(insert_row(conn, dict(action="insert.plain", status="success",
                                              details='{"via": "INSERT", "n": 1.0E+2}')))
        # Two interleaved transactions: ids alternate, transaction ids do not.
        with conn.transaction(), w2.transaction():
            ids1.append(log_event(conn, dict(action="inter.a1", status="success")))
            ids1.append(log_event(w2, dict(action="inter.b1", status="success")))
            ids1.append(log_event(conn, dict(action="inter.a2", status="success")))
            ids1.append(log_event(w2, dict(action="inter.b2", status="success")))
            ids1.append(log_event(conn, dict(action="inter.a3", status="success")))
        ids1.append(log_event(conn, dict(action="leap.day", status="success",
                                         event_time="2020-02-29 23:59:59.999999+00",
                                         principal_id="feb")))
        with conn.transaction():
            ids1.append(log_event(conn, dict(action="far.future", status="success",
                                             event_time=default_times[0],
                                             details='{"year": 2999}')))
            ids1.append(log_event(conn, dict(action="far.past", status="success",
                                             event_time=default_times[1],
                                             principal_id="\u00e6on")))
            ids1.append(insert_row(conn, dict(action="far.past.insert", status="attempt",
                                              event_time="1969-07-20 20:17:40.000001+00")))
        seal_locked(lock, ids1)
        digest_a = lock.execute("SELECT audit.digest()").fetchone()[0]
        old_proof = lock.execute("SELECT audit.prove(%s)", (ids1[0],)).fetchone()[0]

    # Run 2: 9 rows in the current month (7 + 2), 1 in 2020-02; then one row
    # left unsealed; export while the chain state is still locked.
    ids2 = []
    with lock.transaction():
        lock.execute("LOCK TABLE audit.audit_chain_state IN EXCLUSIVE MODE")
        with conn.transaction():
            for i in range(9):
                ids2.append(log_event(conn, dict(action="run2.%d" % i, status="success",
                                                 processing_latency=i,
                                                 details='{"i": %d.0E+0}' % i)))
            ids2.append(log_event(conn, dict(action="run2.feb", status="failure",
                                             event_time="2020-02-01 00:00:00+00")))
        seal_locked(lock, ids2)
        unsealed_id = log_event(conn, dict(action="not.sealed.yet", status="success",
                                           details='{"pending": true}'))
        lines = [r[0] for r in lock.execute("SELECT * FROM audit.export_chain()")]
        digest_b = lock.execute("SELECT audit.digest()").fetchone()[0]
        blocks = blocks_of(lines)
        row_by_id = {r["id"]: r for r in rows_of(lines)}
        block_of = {}
        for b in blocks:
            for pos, rid in enumerate(b["row_ids"]):
                block_of[rid] = (b, pos)
        proofs = {}

        def prove(rid):
            if rid not in proofs:
                proofs[rid] = lock.execute("SELECT audit.prove(%s)", (rid,)).fetchone()[0]
            return proofs[rid]
        # Blocks for the proofs below: our run-1 blocks by size.
        ours = [b for b in blocks if set(b["row_ids"]) <= set(ids1 + ids2)]
        b7 = next(b for b in ours if b["row_count"] == 7)
        b5 = next(b for b in ours if b["row_count"] == 5)
        b1 = next(b for b in ours if b["row_count"] == 1)
        wanted = [("first row of a 7-row block", b7["row_ids"][0]),
                  ("middle row of a 7-row block", b7["row_ids"][3]),
                  ("last row of a 7-row block", b7["row_ids"][6]),
                  ("last row of a 5-row block", b5["row_ids"][4]),
                  ("row of a 1-row block", b1["row_ids"][0]),
                  ("row of the last block", blocks[-1]["row_ids"][-1])]
        for _, rid in wanted:
            prove(rid)
        redact_sql = conn.execute(
            "SELECT encode(sha256(audit.commitment_encoding(a)), 'hex') FROM audit.audit_log a "
            "WHERE id = %s", (b7["row_ids"][2],)).fetchone()[0]
    lock.close()
    w2.close()

    # -- the chain as exported ------------------------------------------------
    sizes = [b["row_count"] for b in ours]
    kinds = [json.loads(x)["type"] for x in lines]
    res.check(len(lines) == sum(kinds.count(k) for k in ("block", "relocation", "archive",
                                                         "archived_row")) + len(row_by_id)
              and in_export_order(kinds),
              "export_chain(): every block, then every relocation, then every archive entry "
              "with its rows, then every row")
    res.check(sorted(sizes) == sorted([7, 7, 5, 1, 3, 7, 2, 1]),
              "seal_block_rows = 7 gives blocks of 7, 7, 5, 1, 3 (run 1) and 7, 2, 1 (run 2)",
              "block sizes: %s" % sizes)
    parts = {(b["partition_from_us"], b["partition_to_us"]) for b in ours}
    res.check(len(parts) == 3 and (None, None) in parts,
              "blocks in three partitions, one of them the default partition",
              "partitions: %s" % parts)
    inter = [block_of[i] for i in ids1[14:19]]
    res.check(len({b["height"] for b, _ in inter}) == 1 and
              [p for _, p in inter] != sorted(p for _, p in inter),
              "interleaved transactions: sealing order differs from id order",
              "positions %s" % [p for _, p in inter])
    res.check(unsealed_id not in block_of and unsealed_id in row_by_id,
              "the last row is exported unsealed")

    tmp = tempfile.mkdtemp(prefix="offline_verifier.")
    tool = Tool(tmp)
    try:
        run_checks(res, tool, mod, lines, blocks, row_by_id, block_of, digest_a, digest_b,
                   wanted, proofs, old_proof, unsealed_id, b7, redact_sql)
        res.run("as an auditor of every organization: digest, then export and a proof, verify",
                lambda: auditor_round(conn, tool, unsealed_id))
        retention_checks(res, conn, tool, mod)
        archival_checks(res, conn, tool, mod)
        res.run("as an auditor of every organization after retention and archival: digest, then export (with "
                "archive entries) and a proof, verify",
                lambda: auditor_round(conn, tool, unsealed_id))
    finally:
        for name in os.listdir(tmp):
            os.unlink(os.path.join(tmp, name))
        os.rmdir(tmp)
    conn.close()
    return res.finish("offline_verifier")


AUDITOR_ROLE = "offline_verifier_auditor"


def auditor_round(conn, tool, some_id):
    """The documented routine as an auditor of every organization: digest first, then export."""
    with conn.transaction():
        conn.execute("DROP ROLE IF EXISTS %s" % AUDITOR_ROLE)
        conn.execute("CREATE ROLE %s IN ROLE audit_db_auditor, audit_db_all_organizations" % AUDITOR_ROLE)
        conn.execute("SET LOCAL ROLE %s" % AUDITOR_ROLE)
        digest = conn.execute("SELECT audit.digest()").fetchone()[0]
        export = [r[0] for r in conn.execute("SELECT * FROM audit.export_chain()")]
        proof = conn.execute("SELECT audit.prove(%s)", (some_id,)).fetchone()[0] \
            if conn.execute("SELECT EXISTS (SELECT 1 FROM audit.audit_chain_block "
                            "WHERE %s = ANY (row_ids))", (some_id,)).fetchone()[0] else None
    conn.execute("DROP ROLE IF EXISTS %s" % AUDITOR_ROLE)
    ok, detail = expect_ok(tool.chain(export, digest))
    if ok and proof is not None:
        ok, detail = expect_ok(tool.proof(proof, digest))
    return ok, detail


def run_checks(res, tool, mod, lines, blocks, row_by_id, block_of, digest_a, digest_b,
               wanted, proofs, old_proof, unsealed_id, b7, redact_sql):
    head = blocks[-1]
    H = head["height"]

    res.run("chain: the export with its digest verifies",
            lambda: expect_ok(tool.chain(lines, digest_b),
                              [r"^OK: .*extends the digest at height %d" % H,
                               r"NOTE 1 row not sealed yet.*: %d\b" % unsealed_id]))
    res.run("chain: the export extends the older digest of run 1",
            lambda: expect_ok(tool.chain(lines, digest_a),
                              [r"extends the digest at height %d" % digest_a["height"]]))
    res.run("chain: without --digest too", lambda: expect_ok(tool.chain(lines)))
    res.run("chain: --strict counts the unsealed row as a problem",
            lambda: expect_fail(tool.chain(lines, digest_b, ["--strict"]),
                                [r"row=%d unsealed" % unsealed_id]))

    # A redacted row: salt gone, personal fields NULL, commitment kept.
    rid = b7["row_ids"][2]

    def redact(r):
        r.update(personal_data_salt=None, principal_id=None, target_resource_id=None,
                 outcome_description=None, details=None, personal_data_commitment=redact_sql)
        return r
    res.run("chain: a redacted row (commitment kept, salt and personal fields gone) verifies",
            lambda: expect_ok(tool.chain(
                replace_line(lines, lambda o: o.get("id") == rid and o["type"] == "row", redact),
                digest_b)))

    def redact_badly(r):
        r = redact(r)
        r["principal_id"] = "mallory"
        return r
    res.run("chain: personal fields left in a redacted row are reported",
            lambda: expect_fail(tool.chain(
                replace_line(lines, lambda o: o.get("id") == rid and o["type"] == "row",
                             redact_badly), digest_b), [r"row=%d modified" % rid]))

    # -- tampering with the export -------------------------------------------
    def is_row(i):
        return lambda o: o["type"] == "row" and o["id"] == i

    def is_block(h):
        return lambda o: o["type"] == "block" and o["height"] == h

    mid = b7["row_ids"][3]
    hb7 = b7["height"]

    def edit(field, value):
        def fn(r):
            r[field] = value
            return r
        return fn
    for field, value in (("action", "document.deleted"), ("timestamp_us", None),
                         ("details", '{"pages": 4}'), ("principal_id", "someone else"),
                         ("processing_latency", 43), ("transaction_id", None)):
        if value is None:
            value = row_by_id[mid][field] + 1
        res.run("chain: row %d's %s edited -> block %d, row %d reported" % (mid, field, hb7, mid),
                lambda field=field, value=value: expect_fail(
                    tool.chain(replace_line(lines, is_row(mid), edit(field, value)), digest_b),
                    [r"block=%d row=%d modified" % (hb7, mid)]))

    def edit_with_hash(r):
        r["action"] = "document.deleted"
        row = mod.parse_row(r)
        r["hash"] = mod.row_leaf(row).hex()
        return r
    res.run("chain: row field edited and its hash column recomputed -> still reported",
            lambda: expect_fail(tool.chain(replace_line(lines, is_row(mid), edit_with_hash),
                                           digest_b), [r"block=%d row=%d modified" % (hb7, mid)]))

    res.run("chain: row %d deleted from the export -> missing at block %d" % (mid, hb7),
            lambda: expect_fail(tool.chain(replace_line(lines, is_row(mid), lambda r: None),
                                           digest_b),
                                [r"block=%d row=%d missing" % (hb7, mid)]))

    def edit_leaves(b):
        b["leaves"] = flip_hex(b["leaves"], 64 * 5 + 10)
        return b
    victim = b7["row_ids"][5]
    res.run("chain: block %d's leaves edited -> Merkle root and row %d reported" % (hb7, victim),
            lambda: expect_fail(tool.chain(replace_line(lines, is_block(hb7), edit_leaves),
                                           digest_b),
                                [r"block=%d modified: the Merkle root" % hb7,
                                 r"block=%d row=%d modified" % (hb7, victim)]))

    def edit_sealed_at(b):
        b["sealed_at_us"] += 1
        return b
    res.run("chain: block %d's sealed_at edited -> its header hash reported" % hb7,
            lambda: expect_fail(tool.chain(replace_line(lines, is_block(hb7), edit_sealed_at),
                                           digest_b),
                                [r"block=%d modified: the header hash recomputed" % hb7]))

    def swap_ids(b):
        ids = b["row_ids"]
        ids[1], ids[2] = ids[2], ids[1]
        lv = b["leaves"]
        lv = lv[:64] + lv[128:192] + lv[64:128] + lv[192:]
        b["leaves"] = lv
        return b
    res.run("chain: two rows swapped in block %d -> reported" % hb7,
            lambda: expect_fail(tool.chain(replace_line(lines, is_block(hb7), swap_ids),
                                           digest_b), [r"block=%d modified" % hb7]))

    # A forged row: an unsealed-looking row with an old transaction id.
    def forge(_):
        r = dict(row_by_id[mid])
        r["id"] = unsealed_id + 1000
        r["action"] = "forged"
        r["hash"] = mod.row_leaf(mod.parse_row(r)).hex()
        return [dumps(r)]
    forged = lines + forge(None)
    res.run("chain: a forged row with an old transaction id in no block -> inserted",
            lambda: expect_fail(tool.chain(forged, digest_b),
                                [r"row=%d inserted" % (unsealed_id + 1000)]))

    bad_digest = dict(digest_b, header_hash=flip_hex(digest_b["header_hash"]))
    res.run("chain: a digest with another header_hash -> rewritten at its height",
            lambda: expect_fail(tool.chain(lines, bad_digest),
                                [r"block=%d rewritten" % H]))
    bad_digest_a = dict(digest_a, header_hash=flip_hex(digest_a["header_hash"], 0))
    res.run("chain: an older digest with another header_hash -> rewritten at its height",
            lambda: expect_fail(tool.chain(lines, bad_digest_a),
                                [r"block=%d rewritten" % digest_a["height"]]))

    last_ids = set(head["row_ids"])
    cut = [x for x in lines if not (json.loads(x)["type"] == "block" and
                                    json.loads(x)["height"] == H)]
    res.run("chain: last block removed, its rows kept -> truncated against the digest",
            lambda: expect_fail(tool.chain(cut, digest_b), [r"block=%d truncated" % H]))
    cut_rows = [x for x in cut if not (json.loads(x)["type"] == "row" and
                                       json.loads(x)["id"] in last_ids)]
    res.run("chain: last block and its rows removed -> truncated against the digest",
            lambda: expect_fail(tool.chain(cut_rows, digest_b), [r"block=%d truncated" % H]))
    res.run("chain: ... yet consistent without the digest (why digests are kept outside)",
            lambda: expect_ok(tool.chain(cut_rows)))

    # A consistent rewrite after the digest: change a row, recompute its leaf,
    # the block's root and header and every later header.
    def rewrite():
        objs = [json.loads(x) for x in lines]
        r = next(o for o in objs if o["type"] == "row" and o["id"] == mid)
        r["action"] = "rewritten"
        r["hash"] = mod.row_leaf(mod.parse_row(r)).hex()
        prev = None
        for o in objs:
            if o["type"] != "block":
                continue
            if o["height"] == hb7:
                lv = bytearray.fromhex(o["leaves"])
                pos = o["row_ids"].index(mid)
                lv[32 * pos:32 * pos + 32] = bytes.fromhex(r["hash"])
                o["leaves"] = lv.hex()
                o["merkle_root"] = mod.merkle_root(
                    [bytes(lv[i:i + 32]) for i in range(0, len(lv), 32)]).hex()
            if o["height"] >= hb7:
                if prev is not None:
                    o["prev_hash"] = prev
                o["header_hash"] = mod.header_hash(mod.parse_block(o)).hex()
            prev = o["header_hash"]
        return [dumps(o) for o in objs]
    rewritten = rewrite()
    res.run("chain: a consistent rewrite passes without a digest",
            lambda: expect_ok(tool.chain(rewritten)))
    res.run("chain: ... and is caught by the digest",
            lambda: expect_fail(tool.chain(rewritten, digest_b), [r"block=%d rewritten" % H]))

    res.run("chain: a line that is not JSON -> malformed",
            lambda: expect_fail(tool.chain(lines[:3] + ["{not json"] + lines[3:], digest_b),
                                [r"malformed: line 4"]))
    res.run("chain: a block given twice -> reported",
            lambda: expect_fail(tool.chain(lines[:1] + lines, digest_b),
                                [r"block=%d inserted" % blocks[0]["height"]]))

    # -- proofs ---------------------------------------------------------------
    for label, rid in wanted:
        p = proofs[rid]
        b, pos = block_of[rid]
        res.run("proof: %s (row %d, leaf %d of %d in block %d) verifies, also with --digest"
                % (label, rid, pos, b["row_count"], b["height"]),
                lambda p=p, rid=rid, b=b: (lambda a, c: (a[0] and c[0], a[1] or c[1]))(
                    expect_ok(tool.proof(p), [r"^OK: row %d is leaf" % rid]),
                    expect_ok(tool.proof(p, digest_b),
                              [r"passes through the given digest at height %d" % H])))
        res.check(p["leaf_index"] == pos and p["tree_size"] == b["row_count"] and
                  p["digest"]["height"] == H,
                  "proof of row %d: leaf_index, tree_size and digest as in the export" % rid)

    p7 = proofs[b7["row_ids"][3]]
    res.check(hb7 <= digest_a["height"], "block %d was sealed in run 1" % hb7)
    res.run("proof: of a run-1 row, against the older digest of run 1",
            lambda: expect_ok(tool.proof(p7, digest_a),
                              [r"passes through the given digest at height %d"
                               % digest_a["height"]]))
    res.run("proof: an older digest with another header_hash -> rewritten",
            lambda: expect_fail(tool.proof(p7, bad_digest_a),
                                [r"block=%d rewritten" % digest_a["height"]]))
    res.run("proof: a proof older than the digest given -> reported",
            lambda: expect_fail(tool.proof(old_proof, digest_b),
                                [r"block=%d truncated" % H]))
    res.run("proof: the old proof verifies against its own digest",
            lambda: expect_ok(tool.proof(old_proof, digest_a)))
    res.run("proof: the digest of the empty chain is accepted",
            lambda: expect_ok(tool.proof(p7, {"format": "audit_db.digest.v1",
                                              "algorithm": "SHA-256", "height": 0,
                                              "header_hash": "00" * 32})))
    # A digest before the block that the proof cannot link to.
    p_last = proofs[head["row_ids"][-1]]
    if head["height"] - 1 > digest_a["height"]:
        res.run("proof: a digest the proof's headers cannot reach -> unverifiable",
                lambda: expect_fail(tool.proof(p_last, digest_a), [r"unverifiable"]))

    def tampered(p, fn):
        q = copy.deepcopy(p)
        fn(q)
        return q
    b7_rid = b7["row_ids"][3]
    cases = [
        ("leaf_index changed", p7, lambda q: q.update(leaf_index=q["leaf_index"] - 1),
         r"block=%d row=%d modified" % (hb7, b7_rid)),
        ("leaf_index beyond tree_size", proofs[wanted[4][1]],
         lambda q: q.update(leaf_index=1), r"modified: the audit path does not fit"),
        ("tree_size changed", p7, lambda q: q.update(tree_size=8), r"tree_size 8"),
        ("audit path element changed", p7,
         lambda q: q["audit_path"].__setitem__(1, flip_hex(q["audit_path"][1])),
         r"block=%d row=%d modified" % (hb7, b7_rid)),
        ("audit path element dropped", p7, lambda q: q["audit_path"].pop(),
         r"block=%d row=%d modified" % (hb7, b7_rid)),
        ("row field changed", p7, lambda q: q["row"].update(action="x"),
         r"row=%d modified" % b7_rid),
        ("row details changed", p7, lambda q: q["row"].update(details='{"pages": 4}'),
         r"row=%d modified" % b7_rid),
        ("block header changed", p7, lambda q: q["block"].update(xid_to=q["block"]["xid_to"] + 1),
         r"block=%d modified" % hb7),
        ("later header changed", p7,
         lambda q: q["later_headers"][0].update(sealed_at_us=q["later_headers"][0]["sealed_at_us"]
                                                + 1),
         r"block=%d modified" % (hb7 + 1)),
        ("later header changed with its hash recomputed", p7,
         lambda q: (q["later_headers"][0].update(
             sealed_at_us=q["later_headers"][0]["sealed_at_us"] + 1),
             q["later_headers"][0].update(header_hash=mod.header_hash(
                 mod.parse_header(q["later_headers"][0])).hex())),
         r"block=%d modified" % (hb7 + 2 if hb7 + 1 < H else hb7 + 1)),
        ("a later header dropped", p7, lambda q: q["later_headers"].pop(1),
         r"block=%d missing" % (hb7 + 3)),
        ("the last later header dropped", p7, lambda q: q["later_headers"].pop(),
         r"block=%d modified: the headers end" % (H - 1)),
        ("digest header_hash changed", p7,
         lambda q: q["digest"].update(header_hash=flip_hex(q["digest"]["header_hash"])),
         r"block=%d modified" % H),
    ]
    for label, p, fn, pattern in cases:
        res.run("proof: %s -> rejected" % label,
                lambda p=p, fn=fn, pattern=pattern: expect_fail(
                    tool.proof(tampered(p, fn)), [pattern]))


# -- retention --------------------------------------------------------------

RETENTION_AS_OF = "2026-12-01 00:00:00+00"


def retention_year(conn):
    """A year before 2025 of which no partition, block or relocation exists
    yet (the test may run again in the same database)."""
    for year in range(2010, 2025):
        used = conn.execute(
            "SELECT EXISTS (SELECT FROM audit.audit_chain_block WHERE partition_from >= %(a)s "
            "AND partition_from < %(b)s) OR EXISTS (SELECT FROM audit.audit_log_relocation "
            "WHERE partition_from >= %(a)s AND partition_from < %(b)s) OR EXISTS (SELECT FROM "
            "audit.partition_bounds() WHERE range_from >= %(a)s AND range_from < %(b)s)",
            {"a": "%d-01-01 00:00:00+00" % year, "b": "%d-01-01 00:00:00+00" % (year + 1)}
        ).fetchone()[0]
        if not used:
            return year
    raise AssertionError("no unused year left for the retention checks")


def removed_counts(out):
    """(total, by retention_rows, by dropped partitions) from the tool's output."""
    m = re.search(r"(\d+) rows removed by retention", out)
    n = re.search(r"(\d+) listed by retention_rows blocks, (\d+) with partitions", out)
    return (int(m.group(1)) if m else None,
            int(n.group(1)) if n else 0, int(n.group(2)) if n else 0)


def retention_checks(res, conn, tool, mod):
    """A chain with retention: a partition dropped whole, rows deleted from
    another, rows relocated out of the default partition into a month that
    is then dropped, and relocated rows deleted row by row."""
    y = retention_year(conn)
    info("retention checks in the months of %d" % y)
    conn.execute("INSERT INTO audit.audit_retention_policy (policy_name, retention_days) "
                 "SELECT 'short', 30 WHERE NOT EXISTS (SELECT FROM audit.audit_retention_policy "
                 "WHERE policy_name = 'short' AND data_classification IS NULL)")
    conn.execute("SELECT audit.ensure_month_partition(%s)", ("%d-03-15 00:00:00+00" % y,))
    conn.execute("SELECT audit.ensure_month_partition(%s)", ("%d-04-15 00:00:00+00" % y,))

    def log(month, n, policy=None, tag=""):
        ids = []
        for i in range(n):
            ev = dict(action="retention.%02d%s.%d" % (month, tag, i), status="success",
                      event_time="%d-%02d-%02d 12:00:00+00" % (y, month, 10 + i),
                      details='{"month": %d, "i": %d}' % (month, i))
            if policy:
                ev["retention_policy"] = policy
            ids.append(log_event(conn, ev))
        return ids
    pre_digest = conn.execute("SELECT audit.digest()").fetchone()[0]
    pre_export = [r[0] for r in conn.execute("SELECT * FROM audit.export_chain()")]
    dropped = log(3, 4, "short")                         # month 3: dropped whole
    deleted = log(4, 3, "short")                         # month 4: these deleted ...
    kept = log(4, 2, tag=".kept")                        # ... these kept
    relocated_dropped = log(5, 3, "short")               # month 5: default, then dropped
    relocated_deleted = log(6, 2, "short")               # month 6: default, then deleted
    relocated_kept = log(6, 1, tag=".kept")
    in_default = conn.execute(
        "SELECT count(*) FROM audit.audit_log a WHERE a.id = ANY (%s) AND a.tableoid = "
        "(SELECT partition FROM audit.partition_bounds() WHERE is_default)",
        (relocated_dropped + relocated_deleted + relocated_kept,)).fetchone()[0]
    res.check(in_default == 6, "retention: the rows of months 5 and 6 of %d are in the default "
              "partition" % y, "%d of 6" % in_default)
    seal_all(conn)
    sealed_export = [r[0] for r in conn.execute("SELECT * FROM audit.export_chain()")]
    gone = dropped + deleted + relocated_dropped + relocated_deleted
    for _ in range(10):
        conn.execute("CALL audit.run_maintenance(%s)", (RETENTION_AS_OF,))
        left = conn.execute("SELECT count(*) FROM audit.audit_log WHERE id = ANY (%s)",
                            (gone,)).fetchone()[0]
        if left == 0:
            break
        time.sleep(0.5)   # the worker's maintenance run held the lock, or summaries only
    res.check(left == 0, "retention: run_maintenance(%s) removed the %d expired rows"
              % (RETENTION_AS_OF, len(gone)), "%d left" % left)
    res.check(conn.execute("SELECT count(*) FROM audit.audit_log WHERE id = ANY (%s)",
                           (kept + relocated_kept,)).fetchone()[0] == 3,
              "retention: the rows of other policies stayed")
    seal_all(conn)

    def bounds(month):
        lo = "%d-%02d-01 00:00:00+00" % (y, month)
        hi = "%d-%02d-01 00:00:00+00" % (y + (month == 12), month % 12 + 1)
        return lo, hi
    kinds = {}
    for month in (3, 4, 5, 6):
        kinds[month] = conn.execute(
            "SELECT kind, row_count, row_ids FROM audit.audit_chain_block WHERE kind <> 'rows' "
            "AND partition_from = %s AND partition_to = %s ORDER BY height", bounds(month)
        ).fetchall()
    want = {3: [("retention_partition", 4, [])], 4: [("retention_rows", 3, sorted(deleted))],
            5: [("retention_partition", 3, [])],
            6: [("retention_rows", 2, sorted(relocated_deleted))]}
    res.check(kinds == want, "retention: blocks retention_partition (month 3, 4 rows), "
              "retention_rows (month 4), retention_partition (month 5, 3 relocated rows), "
              "retention_rows (month 6, relocated rows)", "blocks: %s" % kinds)
    rel = conn.execute("SELECT partition_from, array_agg(u.id ORDER BY u.id) FROM "
                       "audit.audit_log_relocation, unnest(row_ids) AS u(id) WHERE u.id = ANY (%s) "
                       "GROUP BY partition_from ORDER BY partition_from",
                       (relocated_dropped + relocated_deleted + relocated_kept,)).fetchall()
    res.check([sorted(r[1]) for r in rel] == [sorted(relocated_dropped),
                                              sorted(relocated_deleted + relocated_kept)],
              "retention: the sealed rows of months 5 and 6 were relocated out of the default "
              "partition", "relocations: %s" % rel)
    problems = conn.execute("SELECT block_height, row_id, problem, detail FROM audit.verify()"
                            ).fetchall()
    res.check(not problems, "retention: audit.verify() finds the chain intact",
              "\n".join(str(p) for p in problems[:10]))

    digest = conn.execute("SELECT audit.digest()").fetchone()[0]
    lines = [r[0] for r in conn.execute("SELECT * FROM audit.export_chain()")]
    types = [json.loads(x)["type"] for x in lines]
    first_row = types.index("row") if "row" in types else len(types)
    res.check(in_export_order(types) and "relocation" in types,
              "export_chain(): every block, then every relocation, then every archive entry "
              "with its rows, then every row")
    rel_lines = [json.loads(x) for x in lines[:first_row] if json.loads(x)["type"] == "relocation"]
    res.check(all(set(o) == {"type", "relocation_id", "partition_from_us", "partition_to_us",
                             "relocated_at_us", "chain_height", "row_ids"} for o in rel_lines),
              "export_chain(): relocation lines carry relocation_id, partition_from_us, "
              "partition_to_us, relocated_at_us, chain_height and row_ids", rel_lines[:1])
    H = digest["height"]
    blocks = {b["height"]: b for b in blocks_of(lines)}
    rr4 = next(b for b in blocks.values() if b["kind"] == "retention_rows" and
               b["row_ids"] == sorted(deleted))
    rp5 = next(b for b in blocks.values() if b["kind"] == "retention_partition" and
               b["row_count"] == 3 and b["height"] > pre_digest["height"])
    reloc5 = next(o for o in rel_lines if set(o["row_ids"]) == set(relocated_dropped))

    base = tool.chain(pre_export, pre_digest)
    n0 = removed_counts(base[1])
    res.check(base[0] == 0 and n0[0] is not None, "retention: the export before retention "
              "verifies", base[1][-500:])
    ok = tool.chain(lines, digest)
    n1 = removed_counts(ok[1])
    res.run("retention (a): the export after retention verifies with its digest and counts "
            "the removed rows",
            lambda: (lambda r: (r[0] and n1[0] is not None and
                                (n1[0] - n0[0], n1[1] - n0[1], n1[2] - n0[2]) == (12, 5, 7),
                                r[1] or "removed counts before %s, after %s" % (n0, n1)))(
                expect_ok(ok, [r"^OK: .*extends the digest at height %d" % H,
                               r"^NOTE \d+ sealed rows are not in the export because "
                               r"retention removed them"])))
    res.run("retention (a): ... and extends the digest taken before retention",
            lambda: expect_ok(tool.chain(lines, pre_digest),
                              [r"extends the digest at height %d" % pre_digest["height"]]))

    # (b) A row deleted behind retention's back, in the same database.
    victim = kept[0]
    with conn.transaction(force_rollback=True):
        conn.execute("ALTER TABLE audit.audit_log DISABLE TRIGGER USER")
        conn.execute("DELETE FROM audit.audit_log WHERE id = %s", (victim,))
        conn.execute("ALTER TABLE audit.audit_log ENABLE TRIGGER USER")
        tampered = [r[0] for r in conn.execute("SELECT * FROM audit.export_chain()")]
    hv = next(b["height"] for b in blocks.values()
              if b["kind"] == "rows" and victim in b["row_ids"])

    def only_missing(r):
        ok_, detail = expect_fail(r, [r"block=%d row=%d missing" % (hv, victim)])
        plines = [ln for ln in r[1].splitlines() if ln.startswith("PROBLEM")]
        if ok_ and len(plines) != 1:
            return False, "expected one PROBLEM line:\n" + "\n".join(plines[:15])
        return ok_, detail
    res.run("retention (b): a row deleted by tampering -> the only problem, missing (block %d, "
            "row %d); the rows removed by retention are not" % (hv, victim),
            lambda: only_missing(tool.chain(tampered, digest)))

    # (c) A retention_rows block's row_ids edited.
    def is_block(h):
        return lambda o: o["type"] == "block" and o["height"] == h
    h4 = rr4["height"]

    def add_id(b):
        b["row_ids"] = sorted(b["row_ids"] + [kept[1]])
        return b
    res.run("retention (c): a kept row's id added to retention_rows block %d -> its count and "
            "the row reported" % h4,
            lambda: expect_fail(tool.chain(replace_line(lines, is_block(h4), add_id), digest),
                                [r"block=%d modified: block %d: row_count 3, but 4 row ids"
                                 % (h4, h4), r"block=%d row=%d inserted" % (h4, kept[1])]))

    def drop_id(b):
        b["row_ids"] = b["row_ids"][:-1]
        return b
    gone_id = rr4["row_ids"][-1]
    hs = next(b["height"] for b in blocks.values()
              if b["kind"] == "rows" and gone_id in b["row_ids"])
    res.run("retention (c): a removed id taken out of retention_rows block %d -> its count and "
            "the row (missing) reported" % h4,
            lambda: expect_fail(tool.chain(replace_line(lines, is_block(h4), drop_id), digest),
                                [r"block=%d modified: block %d: row_count 3, but 2 row ids"
                                 % (h4, h4), r"block=%d row=%d missing" % (hs, gone_id)]))

    def swap_id(b):
        b["row_ids"][0] = kept[1]
        b["row_ids"].sort()
        return b
    res.run("retention (c): a removed id replaced by a kept one in block %d -> reported" % h4,
            lambda: expect_fail(tool.chain(replace_line(lines, is_block(h4), swap_id), digest),
                                [r"block=%d row=%d inserted" % (h4, kept[1]),
                                 r"row=%d missing" % sorted(deleted)[0]]))

    def edit_leaves(b):
        b["leaves"] = flip_hex(b["leaves"], 70)
        return b
    res.run("retention (c): retention_rows block %d's leaves edited -> Merkle root reported" % h4,
            lambda: expect_fail(tool.chain(replace_line(lines, is_block(h4), edit_leaves),
                                           digest),
                                [r"block=%d modified: the Merkle root" % h4]))

    def forge_consistent(b):
        # A kept row listed with its sealed leaf, Merkle root and header
        # recomputed: the links to the next block and the digest break.
        sealed = next(x for x in blocks.values() if x["kind"] == "rows" and kept[1] in x["row_ids"])
        pos = sealed["row_ids"].index(kept[1])
        pairs = list(zip(b["row_ids"], [b["leaves"][i:i + 64]
                                        for i in range(0, len(b["leaves"]), 64)]))
        pairs.append((kept[1], sealed["leaves"][64 * pos:64 * pos + 64]))
        pairs.sort()
        b["row_ids"] = [p[0] for p in pairs]
        b["leaves"] = "".join(p[1] for p in pairs)
        b["row_count"] = len(pairs)
        b["merkle_root"] = mod.merkle_root([bytes.fromhex(p[1]) for p in pairs]).hex()
        b["header_hash"] = mod.header_hash(mod.parse_block(b)).hex()
        return b
    res.run("retention (c): a kept row added to block %d with leaf, root and header recomputed "
            "-> reported" % h4,
            lambda: expect_fail(tool.chain(replace_line(lines, is_block(h4), forge_consistent),
                                           digest),
                                [r"block=%d row=%d inserted" % (h4, kept[1]),
                                 r"block=%d modified: block %d's prev_hash" % (h4 + 1, h4 + 1)
                                 if h4 < H else r"block=%d rewritten" % H]))

    def wrong_kind(b):
        b["kind"] = "retention_everything"
        return b
    res.run("retention: an unknown block kind -> reported",
            lambda: expect_fail(tool.chain(replace_line(lines, is_block(h4), wrong_kind), digest),
                                [r"block=%d modified: block %d has kind \"retention_everything\""
                                 % (h4, h4)]))

    def total_up(b):
        b["rows_total"] += b["row_count"]
        return b
    res.run("retention: a retention block whose rows_total grew by its row_count -> reported",
            lambda: expect_fail(tool.chain(replace_line(lines, is_block(h4), total_up), digest),
                                [r"block=%d modified: block %d: rows_total \d+ is not block "
                                 r"\d+'s \d+; a retention block leaves" % (h4, h4)]))

    # (d) Relocated rows whose partition was dropped: absent, not missing.
    hd = next(b["height"] for b in blocks.values()
              if b["kind"] == "rows" and relocated_dropped[0] in b["row_ids"])
    res.check(blocks[hd]["partition_from_us"] is None,
              "retention (d): month 5's rows were sealed in block %d of the default partition" % hd)
    out = ok[1]
    res.check(ok[0] == 0 and not any("row=%d " % i in out for i in relocated_dropped),
              "retention (d): rows relocated into month 5, then dropped with it (block %d), are "
              "not missing" % rp5["height"], out[-800:])
    res.run("retention (d): ... but without their relocation line they are missing, and block "
            "%d's count is off" % rp5["height"],
            lambda: expect_fail(tool.chain(replace_line(
                lines, lambda o: o["type"] == "relocation" and
                o["relocation_id"] == reloc5["relocation_id"], lambda o: None), digest),
                ["block=%d row=%d missing" % (hd, i) for i in relocated_dropped] +
                [r"block=%d modified: block %d dropped the partition" % (rp5["height"],
                                                                        rp5["height"])]))

    sealed_at_height = max(b["height"] for b in blocks.values() if b["kind"] == "rows" and
                           set(b["row_ids"]) & set(relocated_dropped))
    res.check(sealed_at_height <= reloc5["chain_height"] < rp5["height"],
              "retention (d): the relocation into month 5 records a chain height from the "
              "blocks that sealed its rows to below the drop (block %d)" % rp5["height"],
              "relocation %s" % reloc5)

    def is_reloc5(o):
        return o["type"] == "relocation" and o["relocation_id"] == reloc5["relocation_id"]

    def later(o):
        o["chain_height"] = rp5["height"]
        return o
    res.run("retention (d): a relocation's chain_height raised to the drop's height %d -> its "
            "rows are missing and block %d's count is off (rule 3 follows heights)"
            % (rp5["height"], rp5["height"]),
            lambda: expect_fail(tool.chain(replace_line(lines, is_reloc5, later), digest),
                                ["block=%d row=%d missing" % (hd, i) for i in relocated_dropped] +
                                [r"block=%d modified: block %d dropped the partition .* with "
                                 r"row_count 3, but the chain puts 0 rows in it"
                                 % (rp5["height"], rp5["height"])]))

    def earlier(o):
        o["chain_height"] = hd - 1
        return o
    res.run("retention (d): a relocation's chain_height lowered below the block that sealed its "
            "rows -> reported",
            lambda: expect_fail(tool.chain(replace_line(lines, is_reloc5, earlier), digest),
                                [r"block=%d row=%d modified: relocation %d \(chain_height %d\)"
                                 % (hd, relocated_dropped[0], reloc5["relocation_id"], hd - 1)]))

    def clock_later(o):
        o["relocated_at_us"] = rp5["sealed_at_us"] + 1
        return o
    res.run("retention (d): a relocation's relocated_at_us moved after the drop changes nothing "
            "(information only: the rules use chain_height)",
            lambda: expect_ok(tool.chain(replace_line(lines, is_reloc5, clock_later), digest)))

    def add_relocated(o):
        o["row_ids"] = sorted(o["row_ids"] + [relocated_kept[0]])
        return o
    forged = replace_line(replace_line(lines, lambda o: o["type"] == "row" and
                                       o["id"] == relocated_kept[0], lambda o: None),
                          lambda o: o["type"] == "relocation" and
                          o["relocation_id"] == reloc5["relocation_id"], add_relocated)
    res.run("retention (d): a row of the default partition deleted and hidden in the relocation "
            "into month 5 -> block %d's count reported" % rp5["height"],
            lambda: expect_fail(tool.chain(forged, digest),
                                [r"block=%d modified: block %d dropped the partition .* with "
                                 r"row_count 3, but the chain puts 4 rows in it"
                                 % (rp5["height"], rp5["height"])]))

    back = next(x for x in sealed_export if json.loads(x)["type"] == "row" and
                json.loads(x)["id"] == relocated_dropped[0])
    restored = [x for x in lines if json.loads(x)["type"] != "row"] + sorted(
        [x for x in lines if json.loads(x)["type"] == "row"] + [back],
        key=lambda x: json.loads(x)["id"])
    res.run("retention: a row of a dropped partition still in the export -> inserted",
            lambda: expect_fail(tool.chain(restored, digest),
                                [r"block=%d row=%d inserted: row %d is in the export, but block "
                                 r"%d removed it by retention" % (rp5["height"],
                                                                  relocated_dropped[0],
                                                                  relocated_dropped[0],
                                                                  rp5["height"])]))

    # Proofs still work after retention: later headers include retention blocks.
    proof = conn.execute("SELECT audit.prove(%s)", (kept[1],)).fetchone()[0]
    res.check(any(h["kind"] != "rows" for h in proof["later_headers"]),
              "retention: the proof of a kept row has retention blocks among its later headers")
    res.run("retention: that proof verifies, also against the digest",
            lambda: expect_ok(tool.proof(proof, digest),
                              [r"passes through the given digest at height %d" % H]))
    res.run("retention: a proof whose block claims to be a retention block -> reported",
            lambda: expect_fail(tool.proof(dict(proof, block=dict(proof["block"],
                                                                   kind="retention_rows"))),
                                [r"block=%d row=%d modified: block %d has kind"
                                 % (proof["block"]["height"], kept[1],
                                    proof["block"]["height"])]))



# -- archival -----------------------------------------------------------------

# The session advisory lock of audit.run_maintenance() (AUDIT_MAINTENANCE_LOCK_KEY
# in src/maintenance.h). The test's session holds it through the archival
# checks, so that the worker's own maintenance runs (as of the wall clock,
# when these rows are long past deletion) stay off them; the test's CALLs
# run in the same session, where the lock is re-entrant.
MAINTENANCE_LOCK_KEY = 0x6175646974646244


def archival_checks(res, conn, tool, mod):
    """A chain with archival: policy 'cold' (archive after 30 days, delete
    after 100) over rows of an unused year, two of its months with a
    partition, one without (its rows relocated, then archived)."""
    y = retention_year(conn)
    info("archival checks in the months of %d" % y)
    conn.execute("SELECT pg_advisory_lock(%s)", (MAINTENANCE_LOCK_KEY,))
    try:
        _archival_checks(res, conn, tool, mod, y)
    finally:
        conn.execute("SELECT pg_advisory_unlock(%s)", (MAINTENANCE_LOCK_KEY,))


def archived_counts(out):
    """(rows archived, rows in the export's entries, entries, rows of expired
    entries) from the tool's output (None where absent)."""
    m = re.search(r"(\d+) rows archived", out)
    n = re.search(r"(\d+) in the export's (\d+) archive entr(?:y|ies) \(\d+ archived row "
                  r"lines, each checked against its block\), (\d+) in entries that "
                  r"retention_archive blocks expired", out)
    return (int(m.group(1)) if m else None,) + \
        (tuple(int(g) for g in n.groups()) if n else (0, 0, 0))


def _archival_checks(res, conn, tool, mod, y):
    conn.execute("INSERT INTO audit.audit_retention_policy (policy_name, retention_days, "
                 "archive_after_days, delete_after_days) SELECT 'cold', 60, 30, 100 WHERE NOT "
                 "EXISTS (SELECT FROM audit.audit_retention_policy WHERE policy_name = 'cold' "
                 "AND data_classification IS NULL)")
    for month in (3, 4):
        conn.execute("SELECT audit.ensure_month_partition(%s)",
                     ("%d-%02d-15 00:00:00+00" % (y, month),))

    def log(month, days, policy="cold", tag=""):
        ids = []
        for d in days:
            ev = dict(action="archive.%02d%s.%02d" % (month, tag, d), status="success",
                      event_time="%d-%02d-%02d 08:00:00.123456+00" % (y, month, d),
                      principal_id="user-%d" % d,
                      details='{"month": %d, "day": %d, "note": "caf\\u00e9 \\"q\\" 1.50", '
                              '"n": 1.50}' % (month, d))
            if policy:
                ev["retention_policy"] = policy
            ids.append(log_event(conn, ev))
        return ids
    # As of AS_OF_1 (June 20): before March 12 deleted, from then to May 21
    # archived, the rest kept. As of AS_OF_2 (August 1): archive entries whose
    # rows all lie before April 23 expire, rows before July 2 are archived.
    as_of_1 = "%d-06-20 00:00:00+00" % y
    as_of_2 = "%d-08-01 00:00:00+00" % y
    deleted = log(3, [5, 10])
    archived3 = log(3, [15, 20, 25])        # their entry expires as of AS_OF_2
    archived4 = log(4, [5, 15, 25])
    kept4 = log(4, [20], policy=None, tag=".kept")
    relocated = log(5, [5, 15])             # default partition: relocated, then archived
    relocated_late = log(5, [25])           # ... archived as of AS_OF_2
    in_default = conn.execute(
        "SELECT count(*) FROM audit.audit_log a WHERE a.id = ANY (%s) AND a.tableoid = "
        "(SELECT partition FROM audit.partition_bounds() WHERE is_default)",
        (relocated + relocated_late,)).fetchone()[0]
    res.check(in_default == 3, "archival: the rows of month 5 of %d are in the default partition"
              % y, "%d of 3" % in_default)
    seal_all(conn)

    def bounds(month):
        return ("%d-%02d-01 00:00:00+00" % (y, month),
                "%d-%02d-01 00:00:00+00" % (y + (month == 12), month % 12 + 1))

    def blocks_of_month(month):
        return conn.execute(
            "SELECT kind, row_count, row_ids, height FROM audit.audit_chain_block "
            "WHERE kind <> 'rows' AND partition_from = %s AND partition_to = %s ORDER BY height",
            bounds(month)).fetchall()

    def run_until(as_of, done, runs=8):
        for _ in range(runs):
            conn.execute("CALL audit.run_maintenance(%s)", (as_of,))
            if done():
                return True
        return False

    def log_count(ids):
        return conn.execute("SELECT count(*) FROM audit.audit_log WHERE id = ANY (%s)",
                            (ids,)).fetchone()[0]
    gone_1 = deleted + archived3 + archived4 + relocated
    ok = run_until(as_of_1, lambda: log_count(gone_1) == 0 and "retention_partition" in
                   [r[0] for r in blocks_of_month(3)])
    height = conn.execute("SELECT height FROM audit.audit_chain_state").fetchone()[0]
    conn.execute("CALL audit.run_maintenance(%s)", (as_of_1,))   # once more: nothing left to do
    res.check(ok and log_count(kept4 + relocated_late) == 2 and height == conn.execute(
                  "SELECT height FROM audit.audit_chain_state").fetchone()[0],
              "archival: run_maintenance(%s) removed or archived the %d rows due, kept the 2 "
              "others, dropped the emptied month 3; one more run does nothing"
              % (as_of_1, len(gone_1)), "%d left" % log_count(gone_1))
    # Month 3 holds nothing more by the chain's count: 5 sealed, 2 removed, 3 archived.
    want = {3: [("retention_rows", 2, sorted(deleted)), ("archive_rows", 3, sorted(archived3)),
                ("retention_partition", 0, [])],
            4: [("archive_rows", 3, sorted(archived4))],
            5: [("archive_rows", 2, sorted(relocated))]}
    got = {m: [tuple(r[:3]) for r in blocks_of_month(m)] for m in want}
    res.check(got == want, "archival: blocks retention_rows, archive_rows and "
              "retention_partition (month 3, count 0), archive_rows (month 4, and month 5 of "
              "relocated rows)", "blocks: %s" % got)
    entries = conn.execute(
        "SELECT a.block_height, array_agg((l->>'id')::bigint ORDER BY n) "
        "FROM audit.archive_storage a, audit.archive_lines(a.archive_id, false) "
        "WITH ORDINALITY AS x(l, n) "
        "WHERE a.partition_from >= %s AND a.partition_from < %s GROUP BY 1 ORDER BY 1",
        ("%d-01-01 00:00:00+00" % y, "%d-01-01 00:00:00+00" % (y + 1))).fetchall()
    res.check([sorted(e[1]) for e in entries] == [sorted(archived3), sorted(archived4),
                                                  sorted(relocated)],
              "archival: one archive entry per archive_rows block", "entries: %s" % entries)
    digest_1 = conn.execute("SELECT audit.digest()").fetchone()[0]
    export_1 = [r[0] for r in conn.execute("SELECT * FROM audit.export_chain()")]

    plan = conn.execute("SELECT a.block_height, p.action FROM audit.archive_plan(%s) p "
                        "JOIN audit.archive_storage a USING (archive_id) "
                        "WHERE a.partition_from >= %s AND a.partition_from < %s ORDER BY 1",
                        (as_of_2, "%d-01-01 00:00:00+00" % y,
                         "%d-01-01 00:00:00+00" % (y + 1))).fetchall()
    res.check([p[1] for p in plan] == ["expire", "keep", "keep"],
              "archival: audit.archive_plan(%s) expires the entry of month 3 only" % as_of_2,
              "plan: %s" % plan)

    def all_done_2():
        kinds3 = [r[0] for r in blocks_of_month(3)]
        kinds5 = [r[0] for r in blocks_of_month(5)]
        return (log_count(relocated_late) == 0 and "retention_archive" in kinds3 and
                "retention_partition" in kinds5)
    ok = run_until(as_of_2, all_done_2)
    res.check(ok, "archival: run_maintenance(%s) expired the entry of month 3, archived the last "
              "row of month 5 and dropped month 5" % as_of_2,
              "months 3, 5: %s, %s" % (blocks_of_month(3), blocks_of_month(5)))
    want = {3: [("retention_rows", 2, sorted(deleted)), ("archive_rows", 3, sorted(archived3)),
                ("retention_partition", 0, []), ("retention_archive", 3, sorted(archived3))],
            4: [("archive_rows", 3, sorted(archived4))],
            5: [("archive_rows", 2, sorted(relocated)), ("archive_rows", 1, relocated_late),
                ("retention_partition", 0, [])]}
    got = {m: [tuple(r[:3]) for r in blocks_of_month(m)] for m in want}
    res.check(got == want, "archival: then retention_archive (month 3, after its partition was "
              "dropped), archive_rows and retention_partition (month 5: 3 relocated, 3 "
              "archived, count 0)", "blocks: %s" % got)
    problems = conn.execute("SELECT block_height, row_id, problem, detail FROM audit.verify()"
                            ).fetchall()
    res.check(not problems, "archival: audit.verify() finds the chain intact",
              "\n".join(str(p) for p in problems[:10]))

    retrievals = conn.execute("SELECT coalesce(sum(retrieval_count), 0) FROM "
                              "audit.archive_storage").fetchone()[0]
    digest = conn.execute("SELECT audit.digest()").fetchone()[0]
    lines = [r[0] for r in conn.execute("SELECT * FROM audit.export_chain()")]
    res.check(conn.execute("SELECT coalesce(sum(retrieval_count), 0) FROM audit.archive_storage"
                           ).fetchone()[0] == retrievals,
              "archival: export_chain() does not count a retrieval of the archive entries")
    objs = [json.loads(x) for x in lines]
    H = digest["height"]
    blocks = {o["height"]: o for o in objs if o["type"] == "block"}
    by_kind = {}
    for m in (3, 4, 5):
        for kind, _, ids, height in blocks_of_month(m):
            by_kind.setdefault((m, kind), []).append(blocks[height])
    ar3, ra3 = by_kind[(3, "archive_rows")][0], by_kind[(3, "retention_archive")][0]
    ar4 = by_kind[(4, "archive_rows")][0]
    ar5, ar5_late = by_kind[(5, "archive_rows")]
    rp5 = by_kind[(5, "retention_partition")][0]
    archive_lines = {o["block_height"]: o for o in objs if o["type"] == "archive"}
    types = [o["type"] for o in objs]

    # The export's archive lines.
    def structure():
        problems = []
        if not in_export_order(types):
            problems.append("lines out of order")
        row_keys = set(json.loads(next(x for x in lines if json.loads(x)["type"] == "row"))) \
            if "row" in types else None
        db = dict(conn.execute("SELECT archive_id, row_count FROM audit.archive_storage"
                               ).fetchall())
        for i, o in enumerate(objs):
            if o["type"] != "archive":
                continue
            if set(o) != {"type", "archive_id", "block_height", "row_count", "merkle_root",
                          "retention_policy", "data_classification"}:
                problems.append("archive line keys %s" % sorted(o))
            rows = objs[i + 1:i + 1 + o["row_count"]]
            b = blocks.get(o["block_height"])
            if [r["type"] for r in rows] != ["archived_row"] * o["row_count"] or \
                    any(r["archive_id"] != o["archive_id"] for r in rows) or b is None or \
                    [r["id"] for r in rows] != b["row_ids"] or \
                    o["merkle_root"] != b["merkle_root"] or db.get(o["archive_id"]) != \
                    o["row_count"]:
                problems.append("archive %d: not followed by its block's rows" % o["archive_id"])
            if row_keys and rows and set(rows[0]) != row_keys | {"archive_id"}:
                problems.append("archived_row keys %s" % sorted(rows[0]))
        if len(db) != types.count("archive"):
            problems.append("%d entries, %d archive lines" % (len(db), types.count("archive")))
        return not problems, "\n".join(problems)
    res.run("archival: export_chain() writes each archive entry (archive_id, block_height, "
            "row_count, merkle_root, retention_policy, data_classification) followed by its "
            "rows as archived_row lines in the block's order", structure)
    res.check(ar3["height"] not in archive_lines and
              any(json.loads(x)["type"] == "archive" and
                  json.loads(x)["block_height"] == ar3["height"] for x in export_1),
              "archival: the expired entry of block %d was in the export of %s and is not in "
              "the last one" % (ar3["height"], as_of_1))

    # (a) The clean exports verify, archived rows counted.
    db_archived = conn.execute("SELECT coalesce(sum(row_count), 0) FROM audit.audit_chain_block "
                               "WHERE kind = 'archive_rows'").fetchone()[0]
    db_in_archive, db_entries = conn.execute("SELECT coalesce(sum(row_count), 0), count(*) FROM "
                                             "audit.archive_storage").fetchone()
    db_expired = conn.execute("SELECT coalesce(sum(row_count), 0) FROM audit.audit_chain_block "
                              "WHERE kind = 'retention_archive'").fetchone()[0]
    ok = tool.chain(lines, digest)

    def clean():
        good, detail = expect_ok(ok, [r"^OK: .*extends the digest at height %d" % H,
                                      r"^NOTE \d+ sealed rows are not in the log because "
                                      r"archive_rows blocks moved them into the archive"])
        counts = archived_counts(ok[1])
        if good and counts != (db_archived, db_in_archive, db_entries, db_expired):
            return False, "tool counts %s, database %s" % (
                counts, (db_archived, db_in_archive, db_entries, db_expired))
        return good, detail
    res.run("archival (a): the export verifies with its digest, counting the %d archived rows "
            "(%d in %d entries, %d expired)" % (db_archived, db_in_archive, db_entries,
                                                db_expired), clean)
    res.run("archival (a): ... and extends the digest taken as of %s, whose export verifies too"
            % as_of_1,
            lambda: (lambda r1, r2: (r1[0] and r2[0], r1[1] or r2[1]))(
                expect_ok(tool.chain(lines, digest_1),
                          [r"extends the digest at height %d" % digest_1["height"]]),
                expect_ok(tool.chain(export_1, digest_1),
                          [r"extends the digest at height %d" % digest_1["height"]])))
    res.check(ok[0] == 0 and "block=%d " % ar3["height"] not in ok[1],
              "archival (c): the entry of block %d, expired by retention_archive block %d, is "
              "not missing" % (ar3["height"], ra3["height"]), ok[1][-600:])

    def is_block(h):
        return lambda o: o["type"] == "block" and o["height"] == h

    def is_archived(i):
        return lambda o: o["type"] == "archived_row" and o["id"] == i

    def is_archive(h):
        return lambda o: o["type"] == "archive" and o["block_height"] == h

    def only(r, pattern):
        good, detail = expect_fail(r, [pattern])
        plines = [ln for ln in r[1].splitlines() if ln.startswith("PROBLEM")]
        if good and len(plines) != 1:
            return False, "expected one PROBLEM line:\n" + "\n".join(plines[:15])
        return good, detail

    # (b) Archived rows altered in the export.
    h4, victim = ar4["height"], archived4[1]

    def edit(o):
        o["action"] = "archive.tampered"
        return o
    res.run("archival (b): an archived row's action edited -> block %d, row %d modified"
            % (h4, victim),
            lambda: only(tool.chain(replace_line(lines, is_archived(victim), edit), digest),
                         r"block=%d row=%d modified: the leaf recomputed from archived row"
                         % (h4, victim)))

    def edit_with_hash(o):
        o["outcome_description"] = "rewritten"
        row = dict(o, type="row")
        del row["archive_id"]
        o["hash"] = mod.row_leaf(mod.parse_row(row)).hex()
        return o
    res.run("archival (b): ... also with its hash column recomputed",
            lambda: expect_fail(tool.chain(replace_line(lines, is_archived(victim),
                                                        edit_with_hash), digest),
                                [r"block=%d row=%d modified" % (h4, victim)]))
    res.run("archival (b): an archived row dropped from its entry -> missing at block %d" % h4,
            lambda: only(tool.chain(replace_line(lines, is_archived(victim), lambda o: None),
                                    digest),
                         r"block=%d row=%d missing: archive entry" % (h4, victim)))
    i1 = next(i for i, o in enumerate(objs) if o["type"] == "archived_row" and
              o["id"] == ar4["row_ids"][0])
    swapped = lines[:i1] + [lines[i1 + 1], lines[i1]] + lines[i1 + 2:]
    res.run("archival (b): two archived rows swapped -> reordered",
            lambda: expect_fail(tool.chain(swapped, digest),
                                [r"block=%d row=%d reordered" % (h4, ar4["row_ids"][0])]))
    back = dict(next(o for o in objs if o["type"] == "archived_row" and o["id"] == victim),
                type="row")
    del back["archive_id"]
    restored = [x for x in lines if json.loads(x)["type"] != "row"] + sorted(
        [x for x in lines if json.loads(x)["type"] == "row"] + [dumps(back)],
        key=lambda x: json.loads(x)["id"])
    res.run("archival (b): an archived row also back in the log -> inserted",
            lambda: only(tool.chain(restored, digest),
                         r"block=%d row=%d inserted: row %d is in the export, but block %d "
                         r"moved it into the archive" % (h4, victim, victim, h4)))

    # (c) Archive entries missing, added, altered.
    no_entry = [x for x in lines if not (
        (json.loads(x)["type"] == "archive" and json.loads(x)["block_height"] == h4) or
        (json.loads(x)["type"] == "archived_row" and
         json.loads(x)["archive_id"] == archive_lines[h4]["archive_id"]))]
    res.run("archival (c): the archive line of block %d and its rows removed -> missing at "
            "block %d, the only problem" % (h4, h4),
            lambda: only(tool.chain(no_entry, digest),
                         r"block=%d missing: block %d archived 3 rows, but the export has no "
                         r"archive entry" % (h4, h4)))
    with conn.transaction(force_rollback=True):
        conn.execute("ALTER TABLE audit.archive_storage DISABLE TRIGGER "
                     "archive_storage_refuse_delete")
        conn.execute("DELETE FROM audit.archive_storage WHERE block_height = %s", (h4,))
        conn.execute("ALTER TABLE audit.archive_storage ENABLE ALWAYS TRIGGER "
                     "archive_storage_refuse_delete")
        tampered = [r[0] for r in conn.execute("SELECT * FROM audit.export_chain()")]
        server = conn.execute("SELECT block_height, problem FROM audit.verify()").fetchall()
    res.check(server == [(h4, "missing")], "archival (c): an archive entry deleted in the "
              "database -> audit.verify() reports it missing at block %d" % h4,
              "verify: %s" % server)
    res.run("archival (c): ... and so does the tool on that database's export",
            lambda: only(tool.chain(tampered, digest),
                         r"block=%d missing: block %d archived" % (h4, h4)))
    old_entry = [x for x in export_1 if (json.loads(x)["type"] == "archive" and
                                         json.loads(x)["block_height"] == ar3["height"]) or
                 (json.loads(x)["type"] == "archived_row" and json.loads(x)["id"] in archived3)]
    first_row = types.index("row") if "row" in types else len(lines)
    put_back = lines[:first_row] + old_entry + lines[first_row:]
    res.run("archival (c): the expired entry of block %d put back -> inserted" % ar3["height"],
            lambda: only(tool.chain(put_back, digest),
                         r"block=%d inserted: archive entry \d+ is in the export, but block %d "
                         r"\(retention_archive\) expired it" % (ar3["height"], ra3["height"])))

    def other_root(o):
        o["merkle_root"] = ar5["merkle_root"]
        return o
    res.run("archival (c): an archive line with another block's merkle_root -> modified",
            lambda: expect_fail(tool.chain(replace_line(lines, is_archive(h4), other_root),
                                           digest),
                                [r"block=%d modified: archive entry \d+ has merkle_root" % h4]))
    hrows = next(b["height"] for b in blocks.values() if b["kind"] == "rows" and
                 set(b["row_ids"]) & set(archived4))

    def other_block(o):
        o["block_height"] = hrows
        return o
    res.run("archival (c): an archive line naming a rows block -> inserted, and block %d's "
            "entry missing" % h4,
            lambda: expect_fail(tool.chain(replace_line(lines, is_archive(h4), other_block),
                                           digest),
                                [r"block=%d inserted: archive entry \d+ names block %d, which "
                                 r"is of kind \"rows\"" % (hrows, hrows),
                                 r"block=%d missing" % h4]))

    def other_ids(o):
        o["row_ids"] = sorted(archived4)
        return o
    res.run("archival (c): retention_archive block %d listing other ids -> modified"
            % ra3["height"],
            lambda: expect_fail(tool.chain(replace_line(lines, is_block(ra3["height"]),
                                                        other_ids), digest),
                                [r"block=%d modified: block %d \(retention_archive\) lists "
                                 r"other row ids" % (ra3["height"], ra3["height"])]))

    def archive_kind(o):
        o["kind"] = "rows"
        return o
    res.run("archival: an archive_rows block claiming kind rows -> reported",
            lambda: expect_fail(tool.chain(replace_line(lines, is_block(h4), archive_kind),
                                           digest),
                                [r"block=%d modified" % h4]))

    # (d) The relocation of month 5, whose rows were archived, then the
    # partition dropped: its chain_height decides where its rows count.
    reloc = next(o for o in objs if o["type"] == "relocation" and
                 set(o["row_ids"]) == set(relocated + relocated_late))
    res.check(reloc["chain_height"] < ar5["height"],
              "archival (d): month 5's rows were relocated (chain height %d) before block %d "
              "archived them" % (reloc["chain_height"], ar5["height"]))

    def raise_height(o):
        o["chain_height"] = rp5["height"]
        return o
    res.run("archival (d): the relocation's chain_height raised to the drop's height %d -> the "
            "drop's count and the archive blocks' partition reported" % rp5["height"],
            lambda: expect_fail(tool.chain(replace_line(
                lines, lambda o: o["type"] == "relocation" and
                o["relocation_id"] == reloc["relocation_id"], raise_height), digest),
                [r"block=%d modified: block %d dropped the partition .* with row_count 0, but "
                 r"the chain puts -3 rows in it" % (rp5["height"], rp5["height"]),
                 r"block=%d row=%d modified: block %d took row %d out of the partition"
                 % (ar5["height"], relocated[0], ar5["height"], relocated[0])]))

    # Proofs: later headers of every kind.
    proof = conn.execute("SELECT audit.prove(%s)", (kept4[0],)).fetchone()[0]
    res.check({"archive_rows", "retention_archive"} <= {h["kind"] for h in
                                                         proof["later_headers"]},
              "archival: the proof of a kept row has archive_rows and retention_archive blocks "
              "among its later headers")
    res.run("archival: that proof verifies, also against the digest",
            lambda: expect_ok(tool.proof(proof, digest),
                              [r"passes through the given digest at height %d" % H]))


if __name__ == "__main__":
    sys.exit(main())
