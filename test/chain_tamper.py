#!/usr/bin/python3
"""test/chain_tamper.py: tampering with the sealed audit chain is detected, at the right place.

Every case starts from a fresh chain (DROP EXTENSION audit_db CASCADE; CREATE
EXTENSION audit_db), logs 200 events for three organizations (org0, org1, org2)
in three seal runs (120, 70 and 10 rows; most in the current month's partition,
some in the 2024-03 partition and some in the default partition) with
audit_db.seal_block_rows = 50, seals them with audit.seal() and takes an
audit.digest() after each run. Then, as a superuser with the guard triggers
switched off (ALTER TABLE ... DISABLE TRIGGER USER on audit.audit_log, which
recurses to its partitions, and on audit.audit_chain_block; restored to ENABLE
ALWAYS afterwards), it tampers with one thing and asserts what audit.verify()
reports: the problem kind, the block height and the row id (each expected
problem present, nothing else reported), and where a digest is involved what
audit.verify_digest() says.

  guards     the triggers fire ALWAYS: with session_replication_role = replica
             an UPDATE/DELETE of an audit row and an UPDATE/DELETE of a block
             is still refused (SQLSTATE 42501).
  clean      an intact chain verifies with no problem; audit_integrity_log gets
             a 'clean' row (all 200 rows and every block checked, no
             first_problem); the digests verify.
  a. fields  one field of one sealed row changed: action, principal_id and
             target_resource_id (only in the leaf through the personal-data
             commitment), details, timestamp (same month), status,
             organization_id, processing_latency, the stored hash alone
             ('modified', field 'hash'), transaction_id moved into a later
             seal run ('modified', field 'transaction_id') and to another
             transaction of the same run ('modified'): each is the only
             problem, at the row's block and id, and the integrity log row
             says 'problems' with first_problem naming that block and row.
             transaction_id moved into an earlier run: reported at the row
             (as 'modified', or 'inserted' plus 'missing' at its block).
             transaction_id moved above the sealed horizon, so that the sealer
             seals the row again in a new block: reported at the old block.
             The id changed: 'missing' old id at its block, 'inserted' new id.
             The timestamp moved to another month (another partition):
             'missing' at the block, 'inserted' row.
             A fake redaction (salt dropped, commitment stored, principal_id
             changed) is only printed ("KNOWN GAP"): nothing can tell it from a
             real redaction until erasure writes sealed redaction records.
  b. delete  one row deleted: 'missing' at its block and id; all rows of one
             block deleted: 'missing' at that block (no row id).
  c. insert  a forged row with an old, sealed transaction id, a new id and a
             valid leaf hash (audit.leaf_hash): 'inserted' at that id; a forged
             second row with the id of a sealed row: 'inserted' at that id; a
             row naming a transaction id not assigned yet: 'inserted'.
  d. swap    two rows of one block swap all columns but id: both reported
             ('modified' or 'reordered'), nothing else; two entries of a
             block's row_ids swapped: both rows 'reordered'.
  e. blocks  a header field changed: sealed_at ('header' at the block);
             merkle_root ('header' and 'leaves' at the block); rows_total
             ('header' and 'rows_total' at the block, 'rows_total' at the
             next); header_hash ('header' at the block, 'prev_hash' at the
             next); partition_to ('header' and 'partition' missing at the
             block, its rows 'inserted'). One leaf of a block changed: 'leaves'
             at the block and the row whose leaf changed 'modified'. The chain
             state's head_hash ('head_hash' at the last block) or height
             ('missing' at that height). A middle block deleted with its rows:
             'missing' at its height; a block deleted but its rows kept:
             'missing' at its height and each row 'inserted'. A partition
             dropped: 'missing' partition at each of its blocks.
  f. truncate the newest blocks and their rows deleted and the chain state
             pointed at the new last block: verify() is clean (nothing inside
             the database can tell), but verify_digest() of a digest taken
             above the truncation is false (also once new runs made the chain
             as long again), one taken at or below it is still true; and
             verify(since_last) after a clean run at the old head reports it.
  g. rewrite one row changed and its block's leaves, Merkle root, every later
             header and the chain state recomputed (audit.leaf_hash,
             audit.merkle_root, audit.block_header_hash): verify() is clean,
             verify_digest() of every digest at or above the rewritten block is
             false, of one below it true, and verify(since_last) after a clean
             run reports that the last verified block has another header hash.
  h. scope    verify(organization_id) reports problems of that organization's
             rows (and missing rows, whose organization is unknown) only; a
             row moved to another organization is reported under the new one
             (under the old one it is not looked at: printed as a limitation);
             verify(from_time, to_time) reports only the partitions in range
             (the default partition always); verify(since_last => true) after
             a clean run checks only the new rows (rows_checked in
             audit_integrity_log), and catches changed rows in new blocks of
             all three partitions, a deleted row of a new block and a forged
             row with a new block's transaction id, but (by design) not a
             changed row of a block verified before; the whole verify() does.
  unsealed   committed rows that are not sealed (the worker is kept off by a
             lock on audit.audit_chain_state, which the sealer must lock) are
             not reported within audit_db.unsealed_grace; with the grace set to
             1 s, after 2 s, they are 'unsealed' (with no seal ever, and after a
             seal whose last_sealed_at was made old; verify(since_last) too),
             and once sealed nothing is reported.
  empty      verify(since_last) after a clean run of an empty chain (recorded
             with to_height 0 and no head hash) neither fails nor crashes the
             server (run last; the script reconnects if it did crash).

The background worker (if audit_db is preloaded) may seal any run before
audit.seal() does; the script sets audit_db.seal_block_rows = 50 for the
database (ALTER DATABASE, which a newly started worker reads) and in its
session, and looks up every block and position in audit.audit_chain_block
rather than assuming one. It must run as a superuser, in a database of its own
(test/run gives it t_chain_tamper): it drops and re-creates the extension there.

Connection: libpq environment (PGHOST, PGPORT, PGUSER, PGDATABASE). Needs
Debian's python3-psycopg. Output: "ok - ..." / "not ok - ..." lines, then
"chain_tamper: N passed, M failed"; exit status 1 if anything failed.
"""
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
from testkit import Results, info, psycopg as _load_psycopg, q, q1, sqlstate_of, trigger_states, wait_worker_maintenance  # noqa: E402

psycopg = _load_psycopg()
from psycopg import sql as pgsql  # noqa: E402
from psycopg.types.json import Jsonb  # noqa: E402

ORGS = ("org0", "org1", "org2")
RUNS = ((4, 30), (2, 35), (1, 10))   # per seal run: transactions x rows
TOTAL_ROWS = sum(t * n for t, n in RUNS)
BLOCK_ROWS = 50
OLD_MONTH = "2024-03"

R = Results()


# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------

def connect():
    conn = psycopg.connect(autocommit=True)
    conn.execute("SET TimeZone = 'UTC'")
    conn.execute("SET audit_db.seal_block_rows = %d" % BLOCK_ROWS)
    return conn


def fresh(conn):
    conn.execute("DROP EXTENSION IF EXISTS audit_db CASCADE")
    conn.execute("CREATE EXTENSION audit_db")
    # The worker's first maintenance run would move the 1990 rows out of the default partition.
    wait_worker_maintenance(conn)
    conn.execute("SELECT audit.ensure_month_partition(%s::timestamptz)", (OLD_MONTH + "-15",))


def seal_all(conn):
    """audit.seal() until every committed row is below the sealed horizon."""
    for _ in range(100):
        conn.execute("SELECT * FROM audit.seal()")
        left = q1(conn, "SELECT count(*) FROM audit.audit_log "
                        "WHERE transaction_id >= (SELECT horizon_xid FROM audit.audit_chain_state)")
        if left == 0:
            return
        time.sleep(0.05)
    raise RuntimeError("rows stay unsealed")


def event_time(i):
    """Where row i of a run goes: the 2024-03 partition, the default one or now."""
    if i % 10 == 3:
        return "%s-%02d 12:00:%02d+00" % (OLD_MONTH, 1 + i % 28, i % 60)
    if i % 25 == 7:
        return "1990-06-%02d 08:00:00+00" % (1 + i % 28)
    return None


def log_run(conn, run_no, txns, rows):
    """One seal run: txns transactions of rows events each, then a seal. A
    transaction that takes its id before the first of them and commits after
    the last holds the sealing horizon back meanwhile, so no sealer (the worker
    included, which a commit wakes) seals part of the run early."""
    holder = psycopg.connect(autocommit=True)
    holder.execute("BEGIN")
    holder.execute("SELECT pg_current_xact_id()")
    try:
        write_run(conn, run_no, txns, rows)
    finally:
        holder.execute("COMMIT")
        holder.close()
    seal_all(conn)
    return q1(conn, "SELECT audit.digest()")


def write_run(conn, run_no, txns, rows):
    """The events of log_run: txns transactions of rows events each."""
    k = 0
    for t in range(txns):
        with conn.transaction():
            for j in range(rows):
                i = k
                k += 1
                conn.execute(
                    "SELECT audit.log_event(action => %s, status => %s, principal_id => %s,"
                    " organization_id => %s, target_resource_type => 'document',"
                    " target_resource_id => %s, outcome_description => %s, correlation_id => %s,"
                    " processing_latency => %s, details => %s::jsonb, event_time => %s::timestamptz)",
                    ("read" if i % 2 else "update", ("success", "failure", "attempt")[i % 3],
                     "user%d@example.com" % (i % 17), ORGS[(i + run_no) % 3], "doc-%d-%d" % (run_no, i),
                     "outcome %d" % i, "corr-%d-%d" % (run_no, t), i % 500,
                     '{"run": %d, "i": %d, "amount": %d.25, "tags": ["a", "b"]}' % (run_no, i, i * 3),
                     event_time(i)))


def populate(conn):
    """Fresh extension, 200 events in three sealed runs; the digest after each run."""
    fresh(conn)
    digests = []
    for n, (txns, rows) in enumerate(RUNS, 1):
        digests.append(log_run(conn, n, txns, rows))
    return digests


def block_of(conn, row_id):
    """(height, position) of the block that seals row_id."""
    rows = q(conn, "SELECT height, array_position(row_ids, %s) - 1 FROM audit.audit_chain_block "
                   "WHERE %s = ANY (row_ids) ORDER BY height", (row_id, row_id))
    if len(rows) != 1:
        raise RuntimeError("row %s is in %d blocks" % (row_id, len(rows)))
    return rows[0]


def current_rows(conn, where="true"):
    """Ids of this month's rows (the current partition), in id order."""
    return [r[0] for r in q(conn, "SELECT id FROM audit.audit_log WHERE \"timestamp\" >= "
                                  "date_trunc('month', now()) AND (%s) ORDER BY id" % where)]


def tamper(conn, *statements):
    """Run statements with the guard triggers off, in one transaction; restore them."""
    states = trigger_states(conn)
    with conn.transaction():
        conn.execute("ALTER TABLE audit.audit_log DISABLE TRIGGER USER")
        conn.execute("ALTER TABLE audit.audit_chain_block DISABLE TRIGGER USER")
        for s in statements:
            if isinstance(s, tuple):
                conn.execute(s[0], s[1])
            else:
                conn.execute(s)
        gone = set()
        for rel, name, enabled, _parent in states:
            if rel in gone or q1(conn, "SELECT to_regclass(%s)", (rel,)) is None:
                gone.add(rel)     # dropped by the tamper
                continue
            how = {"A": "ENABLE ALWAYS", "O": "ENABLE", "R": "ENABLE REPLICA", "D": "DISABLE"}[enabled]
            conn.execute('ALTER TABLE %s %s TRIGGER "%s"' % (rel, how, name))
    after = trigger_states(conn)
    if after != [st for st in states if st[0] not in gone]:
        raise RuntimeError("trigger states not restored: %s" % after)


def verify(conn, **kwargs):
    """audit.verify(**kwargs) as a list of (block_height, row_id, field, problem) tuples."""
    args = ", ".join("%s => %%(%s)s" % (k, k) for k in kwargs)
    rows = q(conn, "SELECT block_height, row_id, field, problem, detail FROM audit.verify(%s)" % args, kwargs)
    return [tuple(r[:4]) for r in rows], rows


def last_run(conn):
    return q(conn, "SELECT scope, from_height, to_height, blocks_checked, rows_checked, rows_unsealed, "
                   "problems, first_problem, status FROM audit.audit_integrity_log ORDER BY run_id DESC LIMIT 1")[0]


def expect_problems(what, got, expected):
    """got: list of (height, row, field, problem) tuples; expected: list of the same,
    where a field of None in expected matches any field. Exactly these, nothing else."""
    got_list, raw = got
    remaining = list(got_list)
    missing = []
    for e in expected:
        match = None
        for g in remaining:
            if all(ev is Ellipsis or ev == gv for ev, gv in zip(e, g)):
                match = g
                break
        if match is None:
            missing.append(e)
        else:
            remaining.remove(match)
    ok = not missing and not remaining
    return R.check(ok, what, "expected %s\ngot %s\nnot found: %s\nunexpected: %s" % (
        expected, raw, missing, remaining))


ANY = Ellipsis


def digest_ok(conn, digest):
    return q(conn, "SELECT ok, detail FROM audit.verify_digest(%s::jsonb)",
             (Jsonb(digest),))[0]


def pick(conn, org=None, offset=40, where="true"):
    cond = where if org is None else "organization_id = '%s' AND (%s)" % (org, where)
    ids = current_rows(conn, cond)
    return ids[min(offset, len(ids) - 1)]


# --------------------------------------------------------------------------
# Cases
# --------------------------------------------------------------------------

def case_guards(conn):
    populate(conn)
    rid = pick(conn)
    h, _ = block_of(conn, rid)
    conn.execute("SET session_replication_role = replica")
    try:
        R.check(sqlstate_of(conn, "UPDATE audit.audit_log SET action = 'x' WHERE id = %s", (rid,)) == "42501",
                "guards: UPDATE of an audit row refused under session_replication_role = replica")
        R.check(sqlstate_of(conn, "DELETE FROM audit.audit_log WHERE id = %s", (rid,)) == "42501",
                "guards: DELETE of an audit row refused under session_replication_role = replica")
        R.check(sqlstate_of(conn, "UPDATE audit.audit_chain_block SET sealed_at = now() WHERE height = %s",
                            (h,)) == "42501",
                "guards: UPDATE of a chain block refused under session_replication_role = replica")
        R.check(sqlstate_of(conn, "DELETE FROM audit.audit_chain_block WHERE height = %s", (h,)) == "42501",
                "guards: DELETE of a chain block refused under session_replication_role = replica")
    finally:
        conn.execute("RESET session_replication_role")
    # The tamper helper restores the triggers: afterwards the guards hold again.
    tamper(conn, "SELECT 1")
    R.check(sqlstate_of(conn, "UPDATE audit.audit_log SET action = 'x' WHERE id = %s", (rid,)) == "42501",
            "guards: the triggers are ENABLE ALWAYS again after a tamper")


def case_clean(conn):
    digests = populate(conn)
    nblocks = q1(conn, "SELECT count(*) FROM audit.audit_chain_block")
    info("clean chain: %d rows, %d blocks, heights %s" % (
        TOTAL_ROWS, nblocks, [d["height"] for d in digests]))
    R.check(q1(conn, "SELECT max(rows_total) FROM audit.audit_chain_block") == TOTAL_ROWS
            and q1(conn, "SELECT bool_and(row_count <= %d) FROM audit.audit_chain_block" % BLOCK_ROWS),
            "clean: all %d rows sealed in blocks of at most %d rows" % (TOTAL_ROWS, BLOCK_ROWS))
    R.check(q1(conn, "SELECT count(DISTINCT coalesce(partition_from::text, 'default')) "
                     "FROM audit.audit_chain_block") == 3,
            "clean: blocks in three partitions (current month, %s, default)" % OLD_MONTH)
    expect_problems("clean: verify() reports nothing", verify(conn), [])
    run = last_run(conn)
    R.check(run[8] == "clean" and run[6] == 0 and run[7] is None and run[4] == TOTAL_ROWS
            and run[3] == nblocks and run[5] == 0 and run[1] == 1 and run[2] == digests[-1]["height"],
            "clean: audit_integrity_log row is 'clean', %d rows and %d blocks checked" % (TOTAL_ROWS, nblocks),
            run)
    for d in digests:
        ok, detail = digest_ok(conn, d)
        R.check(ok, "clean: verify_digest(digest at height %s) is true" % d["height"], detail)


def case_fields(conn):
    def one(what, setter, row_where="true", field=ANY, org=None):
        populate(conn)
        rid = pick(conn, org=org, where=row_where) if not callable(row_where) else row_where(conn)
        h, pos = block_of(conn, rid)
        stmt = setter(conn, rid) if callable(setter) else ("UPDATE audit.audit_log SET %s WHERE id = %%s" % setter,
                                                           (rid,))
        tamper(conn, stmt)
        got = verify(conn)
        ok = expect_problems("a. %s changed: 'modified' at block %d row %d" % (what, h, rid), got,
                             [(h, rid, field, "modified")])
        run = last_run(conn)
        R.check(run[8] == "problems" and run[6] == 1 and run[7] is not None
                and run[7].startswith("modified at block %d row %d:" % (h, rid)),
                "a. %s: audit_integrity_log row says 'problems', first_problem names the row" % what, run)
        return ok

    one("action", "action = action || '_x'", field=None)
    one("principal_id (personal data, via the commitment)", "principal_id = 'mallory@example.com'", field=None)
    one("details", "details = details || '{\"amount\": 1000000}'", field=None)
    one("details, one key removed", "details = details - 'tags'", field=None)

    def old_month_row(c):
        return q1(c, "SELECT id FROM audit.audit_log WHERE \"timestamp\" >= %s::timestamptz "
                     "AND \"timestamp\" < %s::timestamptz + interval '1 month' ORDER BY id OFFSET 4 LIMIT 1",
                  (OLD_MONTH + "-01", OLD_MONTH + "-01"))
    one("timestamp (one second later, same month)", "\"timestamp\" = \"timestamp\" + interval '1 second'",
        row_where=old_month_row, field=None)
    one("timestamp of a current-month row (one microsecond earlier)",
        "\"timestamp\" = \"timestamp\" - interval '1 microsecond'", field=None)
    one("stored hash alone", "hash = sha256('forged'::bytea)", field="hash")
    one("processing_latency", "processing_latency = processing_latency + 1", field=None)
    one("target_resource_id (personal)", "target_resource_id = 'doc-other'", field=None)
    one("status", "status = 'success'", row_where="status <> 'success'", field=None)
    one("organization_id", "organization_id = 'org9'", field=None)

    # transaction_id moved into a later seal run (outside the block's interval).
    def to_later_run(c, rid):
        later = q1(c, "SELECT max(transaction_id) FROM audit.audit_log")
        return ("UPDATE audit.audit_log SET transaction_id = %s WHERE id = %s", (later, rid))
    one("transaction_id (moved to a later seal run)", to_later_run,
        row_where=lambda c: current_rows(c)[5], field="transaction_id")

    # transaction_id moved to another transaction of the same seal run.
    def to_same_run(c, rid):
        h, _ = block_of(c, rid)
        other = q1(c, "SELECT max(l.transaction_id) FROM audit.audit_log l, audit.audit_chain_block b "
                      "WHERE b.height = %s AND l.transaction_id >= b.xid_from AND l.transaction_id < b.xid_to "
                      "AND l.transaction_id <> (SELECT transaction_id FROM audit.audit_log WHERE id = %s)",
                   (h, rid))
        if other is None:
            raise RuntimeError("the run of row %s has one transaction only" % rid)
        return ("UPDATE audit.audit_log SET transaction_id = %s WHERE id = %s", (other, rid))
    one("transaction_id (another transaction of the same seal run)", to_same_run,
        row_where=lambda c: current_rows(c)[5], field=None)

    # transaction_id moved into an earlier seal run: met before its block is
    # loaded it is a row no block holds (and its sealed id is missing); met
    # after, its leaf does not match.
    populate(conn)
    rid = q1(conn, "SELECT unnest(row_ids) FROM audit.audit_chain_block WHERE xid_from > 0 "
                   "AND partition_from IS NOT NULL ORDER BY height, 1 LIMIT 1 OFFSET 5")
    h, _ = block_of(conn, rid)
    earlier = q1(conn, "SELECT min(transaction_id) FROM audit.audit_log")
    tamper(conn, ("UPDATE audit.audit_log SET transaction_id = %s WHERE id = %s", (earlier, rid)))
    got = verify(conn)
    R.check(sorted(got[0], key=str) in (
                [(h, rid, "transaction_id", "modified")],
                sorted([(None, rid, "transaction_id", "inserted"), (h, rid, None, "missing")], key=str)),
            "a. transaction_id moved into an earlier seal run: reported at block %d row %d" % (h, rid), got[1])
    info("a. transaction_id moved earlier reported as: %s" % (got[1],))

    # transaction_id moved above the sealed horizon: the sealer seals the row
    # again, in a new block; the old block still shows the change.
    populate(conn)
    rid = pick(conn)
    h, _ = block_of(conn, rid)
    tamper(conn, ("UPDATE audit.audit_log SET transaction_id = pg_current_xact_id()::text::bigint, "
                  "action = 'resealed' WHERE id = %s", (rid,)),
           ("UPDATE audit.audit_log l SET hash = audit.leaf_hash(l) WHERE id = %s", (rid,)))
    seal_all(conn)
    hn = q1(conn, "SELECT max(height) FROM audit.audit_chain_block WHERE %s = ANY (row_ids)", (rid,))
    R.check(hn is not None and hn > h, "a. the row with a new transaction id was sealed again, in block %s" % hn)
    got = verify(conn)
    at_old = [g for g in got[0] if g[0] == h and g[1] == rid and g[3] in ("modified", "missing")]
    R.check(len(at_old) == 1 and all(g[1] == rid and g[0] in (h, hn) for g in got[0]),
            "a. re-sealed row: reported at its old block %d row %d (and the second seal at block %s)"
            % (h, rid, hn), got[1])
    info("a. re-sealed row reported as: %s" % (got[1],))

    # A fake redaction: the salt dropped, the commitment stored, and the
    # personal fields changed. The leaf only covers the commitment of a
    # redacted row; until erasure writes a sealed redaction record, nothing
    # tells this from a real redaction (docs/hash-format.md, "The commitment").
    populate(conn)
    rid = pick(conn)
    tamper(conn, ("UPDATE audit.audit_log l SET personal_data_commitment = sha256(audit.commitment_encoding(l)) "
                  "WHERE id = %s", (rid,)),
           ("UPDATE audit.audit_log SET personal_data_salt = NULL, principal_id = 'mallory@example.com' "
            "WHERE id = %s", (rid,)))
    got = verify(conn)
    info("a. KNOWN GAP: a fake redaction that changes principal_id of row %d is reported as: %s" % (rid, got[1]))

    # The id changed: the sealed id is missing, the new id was inserted.
    populate(conn)
    rid = pick(conn)
    h, _ = block_of(conn, rid)
    tamper(conn, ("UPDATE audit.audit_log SET id = id + 1000000 WHERE id = %s", (rid,)))
    expect_problems("a. id changed: old id 'missing' at block %d, new id 'inserted'" % h, verify(conn),
                    [(h, rid, ANY, "missing"), (None, rid + 1000000, ANY, "inserted")])

    # The timestamp moved to another month: the row changes partition.
    populate(conn)
    rid = pick(conn)
    h, _ = block_of(conn, rid)
    tamper(conn, ("UPDATE audit.audit_log SET \"timestamp\" = %s::timestamptz WHERE id = %s",
                  (OLD_MONTH + "-20 10:00+00", rid)))
    R.check(q1(conn, "SELECT tableoid::regclass::text FROM audit.audit_log WHERE id = %s", (rid,))
            == "audit.audit_log_%s" % OLD_MONTH.replace("-", "_"),
            "a. timestamp moved to %s: the row is in that partition now" % OLD_MONTH)
    expect_problems("a. timestamp moved to another month: 'missing' at block %d, 'inserted' row %d" % (h, rid),
                    verify(conn), [(h, rid, ANY, "missing"), (None, rid, ANY, "inserted")])


def case_delete(conn):
    populate(conn)
    rid = pick(conn, offset=61)
    h, _ = block_of(conn, rid)
    tamper(conn, ("DELETE FROM audit.audit_log WHERE id = %s", (rid,)))
    expect_problems("b. one row deleted: 'missing' at block %d row %d" % (h, rid), verify(conn),
                    [(h, rid, None, "missing")])
    run = last_run(conn)
    R.check(run[8] == "problems" and run[7] is not None and run[7].startswith("missing at block %d row %d" % (h, rid)),
            "b. audit_integrity_log first_problem names the missing row", run)

    # All rows of one block.
    populate(conn)
    h = q1(conn, "SELECT min(height) FROM audit.audit_chain_block WHERE row_count > 1 AND height > 1")
    n = q1(conn, "SELECT row_count FROM audit.audit_chain_block WHERE height = %s", (h,))
    tamper(conn, ("DELETE FROM audit.audit_log WHERE id = ANY ((SELECT row_ids FROM audit.audit_chain_block "
                  "WHERE height = %s)::bigint[])", (h,)))
    expect_problems("b. all %d rows of block %d deleted: 'missing' at block %d" % (n, h, h), verify(conn),
                    [(h, None, None, "missing")])


def forged_insert(rid, new_id, **overrides):
    """Statements: copy row rid as new_id (overrides applied), then give it a valid leaf hash."""
    sets = ", ".join("%s = %s" % (k, v) for k, v in overrides.items())
    stmts = [
        ("INSERT INTO audit.audit_log SELECT * FROM audit.audit_log WHERE id = %s", (rid,)),
        # The copy and the original are alike; tell them apart by ctid.
        ("UPDATE audit.audit_log SET id = %%s, action = 'forged'%s WHERE id = %%s AND ctid = "
         "(SELECT max(ctid) FROM audit.audit_log WHERE id = %%s)" % ((", " + sets) if sets else ""),
         (new_id, rid, rid)),
        ("UPDATE audit.audit_log l SET hash = audit.leaf_hash(l) WHERE id = %s AND action = 'forged'", (new_id,)),
    ]
    return stmts


def case_insert(conn):
    populate(conn)
    rid = pick(conn, offset=20)
    new_id = q1(conn, "SELECT max(id) + 1000 FROM audit.audit_log")
    tamper(conn, *forged_insert(rid, new_id))
    R.check(q1(conn, "SELECT hash = audit.leaf_hash(l) AND transaction_id = (SELECT transaction_id FROM "
                     "audit.audit_log WHERE id = %s) FROM audit.audit_log l WHERE id = %s", (rid, new_id)),
            "c. the forged row has a valid leaf hash and an old, sealed transaction id")
    expect_problems("c. forged row with an old transaction id: 'inserted' at row %d" % new_id, verify(conn),
                    [(None, new_id, "transaction_id", "inserted")])

    # A forged second row carrying the id of a sealed row.
    populate(conn)
    rid = pick(conn, offset=20)
    h, _ = block_of(conn, rid)
    tamper(conn, *forged_insert(rid, rid, details="'{\"forged\": true}'::jsonb"))
    R.check(q1(conn, "SELECT count(*) FROM audit.audit_log WHERE id = %s", (rid,)) == 2,
            "c. two rows carry id %d now" % rid)
    # The forged copy lies after every row of the block in the heap, so the
    # block is closed (all its rows met) when the copy comes: it is reported
    # as a row no block holds. Met while the block is open, it would be
    # "a second row with the id of a sealed row" at the block.
    got = verify(conn)
    R.check(got[0] in ([(h, rid, "id", "inserted")], [(None, rid, "transaction_id", "inserted")]),
            "c. forged row with the id of a sealed row: 'inserted' at row %d" % rid, got[1])
    info("c. duplicate id reported as: %s" % (got[1],))

    # A forged row naming a transaction id that was never assigned.
    populate(conn)
    rid = pick(conn, offset=20)
    new_id = q1(conn, "SELECT max(id) + 1000 FROM audit.audit_log")
    tamper(conn, *forged_insert(rid, new_id, transaction_id="(pg_current_xact_id()::text::bigint + 1000000)"))
    expect_problems("c. forged row with a future transaction id: 'inserted' at row %d" % new_id, verify(conn),
                    [(None, new_id, "transaction_id", "inserted")])


def case_swap(conn):
    populate(conn)
    ids = current_rows(conn)
    a, b = ids[10], ids[13]
    ha, _ = block_of(conn, a)
    hb, _ = block_of(conn, b)
    cols = [r[0] for r in q(conn, "SELECT attname FROM pg_attribute WHERE attrelid = 'audit.audit_log'::regclass "
                                  "AND attnum > 0 AND NOT attisdropped AND attname <> 'id' ORDER BY attnum")]
    collist = ", ".join('"%s"' % c for c in cols)
    tamper(conn, ("UPDATE audit.audit_log l SET (%s) = (SELECT %s FROM audit.audit_log o "
                  "WHERE o.id = CASE l.id WHEN %%s THEN %%s ELSE %%s END) WHERE l.id IN (%%s, %%s)"
                  % (collist, collist), (a, b, a, a, b)))
    got = verify(conn)
    kinds = {g[3] for g in got[0]}
    R.check(kinds <= {"modified", "reordered"}
            and {(g[0], g[1]) for g in got[0]} == {(ha, a), (hb, b)} and len(got[0]) == 2,
            "d. two rows' contents swapped: both reported (%s) at blocks %d/%d rows %d/%d" % (
                "/".join(sorted(kinds)), ha, hb, a, b), got[1])

    # Two entries of a block's row_ids swapped (leaves left alone).
    populate(conn)
    h = q1(conn, "SELECT min(height) FROM audit.audit_chain_block WHERE row_count >= 10")
    ids = q1(conn, "SELECT row_ids FROM audit.audit_chain_block WHERE height = %s", (h,))
    a, b = ids[2], ids[7]
    tamper(conn, ("UPDATE audit.audit_chain_block SET row_ids[3] = row_ids[8], row_ids[8] = row_ids[3] "
                  "WHERE height = %s", (h,)))
    expect_problems("d. two row ids of block %d swapped: rows %d and %d 'reordered'" % (h, a, b), verify(conn),
                    [(h, a, None, "reordered"), (h, b, None, "reordered")])


def case_blocks(conn):
    def middle_block(c):
        return q1(c, "SELECT height FROM audit.audit_chain_block ORDER BY height OFFSET 2 LIMIT 1")

    populate(conn)
    k = middle_block(conn)
    tamper(conn, ("UPDATE audit.audit_chain_block SET sealed_at = sealed_at + interval '1 second' "
                  "WHERE height = %s", (k,)))
    expect_problems("e. sealed_at of block %d changed: header 'modified' at block %d" % (k, k), verify(conn),
                    [(k, None, "header", "modified")])

    populate(conn)
    k = middle_block(conn)
    tamper(conn, ("UPDATE audit.audit_chain_block SET merkle_root = sha256('forged'::bytea) WHERE height = %s", (k,)))
    expect_problems("e. merkle_root of block %d changed: header and leaves 'modified' at block %d" % (k, k),
                    verify(conn), [(k, None, "header", "modified"), (k, None, "leaves", "modified")])

    populate(conn)
    k = middle_block(conn)
    tamper(conn, ("UPDATE audit.audit_chain_block SET rows_total = rows_total + 1 WHERE height = %s", (k,)))
    expect_problems("e. rows_total of block %d changed: header and rows_total 'modified' at %d, rows_total at %d"
                    % (k, k, k + 1), verify(conn),
                    [(k, None, "header", "modified"), (k, None, "rows_total", "modified"),
                     (k + 1, None, "rows_total", "modified")])

    populate(conn)
    k = middle_block(conn)
    tamper(conn, ("UPDATE audit.audit_chain_block SET header_hash = sha256('forged'::bytea) WHERE height = %s", (k,)))
    expect_problems("e. header_hash of block %d changed: header 'modified' at %d, prev_hash at %d" % (k, k, k + 1),
                    verify(conn), [(k, None, "header", "modified"), (k + 1, None, "prev_hash", "modified")])

    populate(conn)
    k = middle_block(conn)
    tamper(conn, ("UPDATE audit.audit_chain_block SET partition_to = partition_to + interval '1 day' "
                  "WHERE height = %s", (k,)))
    ids = q1(conn, "SELECT row_ids FROM audit.audit_chain_block WHERE height = %s", (k,))
    # The block no longer names its partition: its partition is "missing",
    # and its rows are rows that no block of their partition holds.
    expect_problems("e. partition_to of block %d changed: header 'modified' and partition 'missing' at block %d, "
                    "its rows 'inserted'" % (k, k), verify(conn),
                    [(k, None, "header", "modified"), (k, None, "partition", "missing")]
                    + [(None, i, "transaction_id", "inserted") for i in ids])

    populate(conn)
    k = q1(conn, "SELECT max(height) FROM audit.audit_chain_block")
    tamper(conn, "UPDATE audit.audit_chain_state SET head_hash = sha256('forged'::bytea)")
    expect_problems("e. chain state head_hash changed: 'modified' at the last block %d" % k, verify(conn),
                    [(k, None, "head_hash", "modified")])

    populate(conn)
    k = q1(conn, "SELECT max(height) FROM audit.audit_chain_block")
    tamper(conn, "UPDATE audit.audit_chain_state SET height = height + 1")
    expect_problems("e. chain state height changed: 'missing' at height %d" % (k + 1), verify(conn),
                    [(k + 1, None, "height", "missing")])

    # A partition dropped (with its guards it cannot be truncated, but DROP TABLE works).
    populate(conn)
    part = "audit.audit_log_%s" % OLD_MONTH.replace("-", "_")
    hs = [r[0] for r in q(conn, "SELECT height FROM audit.audit_chain_block WHERE partition_from = %s::timestamptz "
                                "ORDER BY height", (OLD_MONTH + "-01 00:00+00",))]
    tamper(conn, "DROP TABLE %s" % part)
    expect_problems("e. partition %s dropped: 'missing' partition at its blocks %s" % (part, hs), verify(conn),
                    [(h, None, "partition", "missing") for h in hs])

    # One leaf inside a block's leaves.
    populate(conn)
    k = middle_block(conn)
    pos = 7
    rid = q1(conn, "SELECT row_ids[%s] FROM audit.audit_chain_block WHERE height = %s", (pos + 1, k))
    tamper(conn, ("UPDATE audit.audit_chain_block SET leaves = overlay(leaves PLACING sha256('forged'::bytea) "
                  "FROM %s FOR 32) WHERE height = %s", (pos * 32 + 1, k)))
    expect_problems("e. leaf %d of block %d changed: leaves 'modified' at block %d, row %d 'modified'"
                    % (pos, k, k, rid), verify(conn),
                    [(k, None, "leaves", "modified"), (k, rid, None, "modified")])

    # A middle block deleted with its rows.
    populate(conn)
    k = middle_block(conn)
    tamper(conn, ("DELETE FROM audit.audit_log WHERE id = ANY ((SELECT row_ids FROM audit.audit_chain_block "
                  "WHERE height = %s)::bigint[])", (k,)),
           ("DELETE FROM audit.audit_chain_block WHERE height = %s", (k,)))
    expect_problems("e. block %d deleted with its rows: 'missing' at height %d" % (k, k), verify(conn),
                    [(k, None, "height", "missing")])

    # A block deleted, its rows kept.
    populate(conn)
    k = middle_block(conn)
    ids = q1(conn, "SELECT row_ids FROM audit.audit_chain_block WHERE height = %s", (k,))
    tamper(conn, ("DELETE FROM audit.audit_chain_block WHERE height = %s", (k,)))
    expect_problems("e. block %d deleted, its %d rows kept: 'missing' at height %d, each row 'inserted'"
                    % (k, len(ids), k), verify(conn),
                    [(k, None, "height", "missing")] + [(None, i, "transaction_id", "inserted") for i in ids])


def state_to_height_sql(height):
    return ("UPDATE audit.audit_chain_state s SET height = b.height, head_hash = b.header_hash, "
            "rows_total = b.rows_total FROM audit.audit_chain_block b WHERE b.height = %s", (height,))


def case_truncate(conn):
    digests = populate(conn)
    d1, d2, d3 = digests
    expect_problems("f. before: verify() clean (records the head for since_last)", verify(conn), [])
    cut = d2["height"]          # keep blocks 1..cut, drop the last run's blocks
    tamper(conn,
           ("DELETE FROM audit.audit_log WHERE id IN (SELECT unnest(row_ids) FROM audit.audit_chain_block "
            "WHERE height > %s)", (cut,)),
           ("DELETE FROM audit.audit_chain_block WHERE height > %s", (cut,)),
           state_to_height_sql(cut))
    R.check(q1(conn, "SELECT count(*) FROM audit.audit_log") < TOTAL_ROWS,
            "f. the newest blocks (above %d) and their rows are gone" % cut)
    # since_last first: the last clean run saw height d3, and that block is gone
    # (a plain verify() that finds nothing would become the new baseline).
    got = verify(conn, since_last=True)
    info("f. verify(since_last) after truncation reports: %s" % (got[1],))
    R.check(len(got[0]) > 0, "f. verify(since_last) after a clean run at the old head reports the truncation",
            got[1])
    got = verify(conn)
    info("f. verify() after truncation reports: %s" % (got[1],))
    R.check(True, "f. verify() after truncation ran (%d problems: a truncation is invisible inside the database)"
            % len(got[0]))
    ok, detail = digest_ok(conn, d3)
    R.check(ok is False, "f. verify_digest(digest at height %s, above the truncation) is false" % d3["height"],
            detail)
    info("f. verify_digest(d3): %s" % detail)
    ok, detail = digest_ok(conn, d2)
    R.check(ok is True, "f. verify_digest(digest at height %s, the new head) is true" % d2["height"], detail)
    ok, detail = digest_ok(conn, d1)
    R.check(ok is True, "f. verify_digest(digest at height %s, below the truncation) is true" % d1["height"], detail)

    # New events sealed after the truncation: the chain grows again past the
    # digest's height, but not through the digest's block.
    log_run(conn, 4, 1, 30)
    R.check(q1(conn, "SELECT max(height) FROM audit.audit_chain_block") >= d3["height"],
            "f. new runs make the chain as long as before the truncation")
    ok, detail = digest_ok(conn, d3)
    R.check(ok is False, "f. verify_digest(digest at height %s) is still false once the chain regrew"
            % d3["height"], detail)
    ok, detail = digest_ok(conn, d1)
    R.check(ok is True, "f. verify_digest(digest at height %s) is still true" % d1["height"], detail)


REWRITE_SQL = """
DO $$
DECLARE
  k bigint := %(height)s;
  rid bigint := %(rid)s;
  b audit.audit_chain_block;
  prev bytea;
  newleaves bytea;
  pos int;
  arr bytea[];
  root bytea;
  hh bytea;
BEGIN
  UPDATE audit.audit_log l SET action = 'rewritten' WHERE id = rid;
  UPDATE audit.audit_log l SET hash = audit.leaf_hash(l) WHERE id = rid;
  SELECT header_hash INTO prev FROM audit.audit_chain_block WHERE height = k - 1;
  IF prev IS NULL THEN prev := '\\x' || repeat('00', 32); END IF;
  FOR b IN SELECT * FROM audit.audit_chain_block WHERE height >= k ORDER BY height LOOP
    newleaves := b.leaves;
    root := b.merkle_root;
    IF b.height = k THEN
      pos := array_position(b.row_ids, rid) - 1;
      newleaves := overlay(b.leaves PLACING (SELECT hash FROM audit.audit_log WHERE id = rid) FROM pos * 32 + 1 FOR 32);
      SELECT array_agg(substring(newleaves FROM i * 32 + 1 FOR 32) ORDER BY i) INTO arr
        FROM generate_series(0, length(newleaves) / 32 - 1) i;
      root := audit.merkle_root(arr);
    END IF;
    hh := audit.block_header_hash(b.height, b.kind, b.partition_from, b.partition_to, b.xid_from, b.xid_to,
                                  b.row_count, b.rows_total, root, b.sealed_at, prev);
    UPDATE audit.audit_chain_block SET leaves = newleaves, merkle_root = root, prev_hash = prev, header_hash = hh
     WHERE height = b.height;
    prev := hh;
  END LOOP;
  UPDATE audit.audit_chain_state SET head_hash = prev;
END
$$
"""


def case_rewrite(conn):
    digests = populate(conn)
    d1, d2, d3 = digests
    expect_problems("g. before: verify() clean (records the head for since_last)", verify(conn), [])
    # A row of the second run: d1 is below its block, d2 and d3 at or above it.
    rid = q1(conn, "SELECT unnest(row_ids) FROM audit.audit_chain_block WHERE height > %s "
                   "AND height <= %s AND partition_from IS NOT NULL ORDER BY 1 LIMIT 1",
             (d1["height"], d2["height"]))
    k, pos = block_of(conn, rid)
    old_header = q1(conn, "SELECT header_hash FROM audit.audit_chain_block WHERE height = %s", (k,))
    tamper(conn, REWRITE_SQL % {"height": k, "rid": rid})
    R.check(q1(conn, "SELECT action FROM audit.audit_log WHERE id = %s", (rid,)) == "rewritten"
            and q1(conn, "SELECT header_hash FROM audit.audit_chain_block WHERE height = %s", (k,)) != old_header,
            "g. row %d rewritten, block %d and every later header recomputed" % (rid, k))
    # since_last first (a clean plain verify() would become the new baseline).
    got = verify(conn, since_last=True)
    info("g. verify(since_last) after the rewrite reports: %s" % (got[1],))
    R.check(any(g[0] == d3["height"] and g[2] == "header_hash" and g[3] == "modified" for g in got[0]),
            "g. verify(since_last) after a clean run sees that block %d no longer has the head it saw"
            % d3["height"], got[1])
    got = verify(conn)
    info("g. verify() after a full rewrite reports: %s" % (got[1],))
    R.check(len(got[0]) == 0, "g. verify() alone is clean after a consistent rewrite (only digests tell)", got[1])
    for d in (d2, d3):
        ok, detail = digest_ok(conn, d)
        R.check(ok is False, "g. verify_digest(digest at height %s, at/above rewritten block %d) is false"
                % (d["height"], k), detail)
    ok, detail = digest_ok(conn, d1)
    R.check(ok is True, "g. verify_digest(digest at height %s, below rewritten block %d) is true"
            % (d1["height"], k), detail)


def case_scope(conn):
    # organization_id
    populate(conn)
    r0 = pick(conn, org="org0", offset=10)
    r1 = pick(conn, org="org1", offset=10)
    r2 = pick(conn, org="org2", offset=10)
    h0, _ = block_of(conn, r0)
    h1, _ = block_of(conn, r1)
    h2, _ = block_of(conn, r2)
    tamper(conn, ("UPDATE audit.audit_log SET action = 'x' WHERE id IN (%s, %s)", (r0, r1)),
           ("DELETE FROM audit.audit_log WHERE id = %s", (r2,)))
    expect_problems("h. whole log: org0 and org1 rows 'modified', org2 row 'missing'", verify(conn),
                    [(h0, r0, None, "modified"), (h1, r1, None, "modified"), (h2, r2, None, "missing")])
    expect_problems("h. verify(organization_id => 'org1'): its row 'modified' and the missing row only",
                    verify(conn, organization_id="org1"),
                    [(h1, r1, None, "modified"), (h2, r2, None, "missing")])
    R.check(last_run(conn)[0].get("organization_id") == "org1",
            "h. audit_integrity_log scope names the organization")
    expect_problems("h. verify(organization_id => 'org0'): its row 'modified' and the missing row only",
                    verify(conn, organization_id="org0"),
                    [(h0, r0, None, "modified"), (h2, r2, None, "missing")])
    expect_problems("h. verify(organization_id => 'nobody'): only the missing row",
                    verify(conn, organization_id="nobody"), [(h2, r2, None, "missing")])

    # A row moved from org0 to org1: verify(org1) sees a changed row; verify(org0)
    # does not look at it any more (only the organization's rows are hashed).
    populate(conn)
    r0 = pick(conn, org="org0", offset=10)
    h0, _ = block_of(conn, r0)
    tamper(conn, ("UPDATE audit.audit_log SET organization_id = 'org1' WHERE id = %s", (r0,)))
    expect_problems("h. row moved from org0 to org1: verify(organization_id => 'org1') reports it",
                    verify(conn, organization_id="org1"), [(h0, r0, None, "modified")])
    got = verify(conn, organization_id="org0")
    info("h. LIMITATION: the same row under verify(organization_id => 'org0'): %s" % (got[1],))

    # from_time / to_time
    populate(conn)
    rc = pick(conn, offset=10)
    ro = q1(conn, "SELECT id FROM audit.audit_log WHERE \"timestamp\" >= %s::timestamptz AND \"timestamp\" < "
                  "%s::timestamptz + interval '1 month' ORDER BY id OFFSET 3 LIMIT 1",
            (OLD_MONTH + "-01", OLD_MONTH + "-01"))
    rd = q1(conn, "SELECT id FROM audit.audit_log WHERE \"timestamp\" < '2000-01-01' ORDER BY id LIMIT 1")
    hc, _ = block_of(conn, rc)
    ho, _ = block_of(conn, ro)
    hd, _ = block_of(conn, rd)
    tamper(conn, ("UPDATE audit.audit_log SET action = 'x' WHERE id IN (%s, %s, %s)", (rc, ro, rd)))
    expect_problems("h. whole log: rows in three partitions 'modified'", verify(conn),
                    [(hc, rc, None, "modified"), (ho, ro, None, "modified"), (hd, rd, None, "modified")])
    month = q1(conn, "SELECT date_trunc('month', now())")
    expect_problems("h. verify(from_time => this month): this month's and the default partition's rows",
                    verify(conn, from_time=month),
                    [(hc, rc, None, "modified"), (hd, rd, None, "modified")])
    expect_problems("h. verify(%s-01, %s-01 + 1 month): that month's and the default partition's rows"
                    % (OLD_MONTH, OLD_MONTH),
                    verify(conn, from_time="%s-01 00:00+00" % OLD_MONTH, to_time="%s-01 00:00+00" % "2024-04"),
                    [(ho, ro, None, "modified"), (hd, rd, None, "modified")])
    expect_problems("h. verify(2025-01-01, 2025-02-01): only the default partition's row",
                    verify(conn, from_time="2025-01-01 00:00+00", to_time="2025-02-01 00:00+00"),
                    [(hd, rd, None, "modified")])
    scope = last_run(conn)[0]
    R.check("from_time" in scope and "to_time" in scope, "h. audit_integrity_log scope has the time range", scope)

    # since_last
    populate(conn)
    expect_problems("h. since_last: a whole clean run first", verify(conn), [])
    last_clean = last_run(conn)
    run3 = RUNS[-1][0] * RUNS[-1][1]
    log_run(conn, 4, 1, 20)
    total = q1(conn, "SELECT count(*) FROM audit.audit_log")
    expect_problems("h. verify(since_last => true) after new rows: clean", verify(conn, since_last=True), [])
    run = last_run(conn)
    R.check(run[8] == "clean" and 20 <= run[4] <= run3 + 20 and run[4] < total / 4
            and run[1] == last_clean[2],
            "h. since_last checked %s of %d rows (the 20 new ones), from height %s"
            % (run[4], total, run[1]), run)
    # Tampers in new blocks are caught, in every partition; one in a block
    # verified before is not (since_last skips it by design).
    before = q1(conn, "SELECT max(height) FROM audit.audit_chain_block")
    log_run(conn, 5, 1, 30)
    total = q1(conn, "SELECT count(*) FROM audit.audit_log")
    new_blocks = q(conn, "SELECT height, coalesce(partition_from::text, 'default'), row_ids "
                         "FROM audit.audit_chain_block WHERE height > %s ORDER BY height", (before,))
    R.check(len({b[1] for b in new_blocks}) == 3, "h. the new run has blocks in three partitions",
            [(b[0], b[1], len(b[2])) for b in new_blocks])
    changed = [(b[0], b[2][len(b[2]) // 2]) for b in new_blocks]
    deleted = (new_blocks[-1][0], new_blocks[-1][2][0]) if len(new_blocks[-1][2]) > 2 else None
    if deleted is None:
        big = max(new_blocks, key=lambda b: len(b[2]))
        deleted = (big[0], big[2][0])
    forged_from = [i for i in max(new_blocks, key=lambda b: len(b[2]))[2] if i not in
                   {c[1] for c in changed} | {deleted[1]}][1]
    forged_id = q1(conn, "SELECT max(id) + 1000 FROM audit.audit_log")
    rold = current_rows(conn)[3]
    hold, _ = block_of(conn, rold)
    tamper(conn, ("UPDATE audit.audit_log SET details = '{}' WHERE id = ANY (%s)",
                  ([c[1] for c in changed] + [rold],)),
           ("DELETE FROM audit.audit_log WHERE id = %s", (deleted[1],)),
           *forged_insert(forged_from, forged_id))
    new_expected = ([(h, i, None, "modified") for h, i in changed] + [(deleted[0], deleted[1], None, "missing")]
                    + [(None, forged_id, "transaction_id", "inserted")])
    expect_problems("h. verify(since_last => true) catches the tampers in new blocks %s (not old row %d)"
                    % ([c[0] for c in changed], rold), verify(conn, since_last=True), new_expected)
    run = last_run(conn)
    R.check(run[8] == "problems" and run[4] < total / 2, "h. since_last with problems: rows_checked %s of %d"
            % (run[4], total), run)
    expect_problems("h. the whole verify() catches them and the old row too", verify(conn),
                    new_expected + [(hold, rold, None, "modified")])
    # The last clean run is still the one before the tamper.
    expect_problems("h. since_last again (from the last clean run): the same problems",
                    verify(conn, since_last=True), new_expected)


def case_unsealed(conn):
    """Rows that stay unsealed (the sealer is locked out) and the grace period."""
    def locked_out(fn):
        blocker = connect()
        try:
            blocker.autocommit = False
            # The sealer locks the state row FOR UPDATE; EXCLUSIVE mode keeps it
            # out, but lets verify() read, and takes no transaction id.
            blocker.execute("LOCK TABLE audit.audit_chain_state IN EXCLUSIVE MODE")
            return fn()
        finally:
            blocker.rollback()
            blocker.close()

    def scenario(label, before_lock=None, since_last=False):
        if before_lock:
            before_lock()

        def body():
            ids = []
            for i in range(5):
                ids.append(q1(conn, "SELECT audit.log_event(action => 'late', organization_id => 'org1', "
                                    "principal_id => 'late%d')" % i))
            conn.execute("RESET audit_db.unsealed_grace")
            expect_problems("unsealed (%s): within the grace, 5 unsealed rows are not reported" % label,
                            verify(conn), [])
            run = last_run(conn)
            R.check(run[5] == 5, "unsealed (%s): audit_integrity_log counts 5 unsealed rows" % label, run)
            time.sleep(2.1)
            conn.execute("SET audit_db.unsealed_grace = 1")
            expect_problems("unsealed (%s): with grace 1 s, after 2 s, each row 'unsealed'" % label, verify(conn),
                            [(None, i, None, "unsealed") for i in ids])
            expect_problems("unsealed (%s): verify(organization_id => 'org2') does not list org1's rows" % label,
                            verify(conn, organization_id="org2"), [])
            if since_last:
                expect_problems("unsealed (%s): verify(since_last => true) reports them too" % label,
                                verify(conn, since_last=True), [(None, i, None, "unsealed") for i in ids])
            conn.execute("RESET audit_db.unsealed_grace")
            return ids
        ids = locked_out(body)
        seal_all(conn)
        conn.execute("SET audit_db.unsealed_grace = 1")
        expect_problems("unsealed (%s): once sealed, nothing is reported" % label, verify(conn), [])
        conn.execute("RESET audit_db.unsealed_grace")
        R.check(all(block_of(conn, i) for i in ids), "unsealed (%s): the rows are in blocks now" % label)

    fresh(conn)
    scenario("no seal ever")

    populate(conn)
    expect_problems("unsealed: a clean whole run before (a baseline for since_last)", verify(conn), [])
    scenario("last seal made old", since_last=True,
             before_lock=lambda: tamper(conn, "UPDATE audit.audit_chain_state "
                                              "SET last_sealed_at = last_sealed_at - interval '1 hour'"))


def reconnect():
    """A new connection once the server accepts them again (after a crash)."""
    for _ in range(60):
        try:
            return connect()
        except psycopg.OperationalError:
            time.sleep(0.5)
    return connect()


def case_empty_since_last(conn):
    """verify(since_last) after a clean run of an empty chain (that run recorded
    to_height 0 and no head hash). Run last: it crashed the server once."""
    fresh(conn)
    # Keep the worker from sealing anything: no rows at all.
    expect_problems("empty: verify() of an empty chain reports nothing", verify(conn), [])
    run = last_run(conn)
    R.check(run[8] == "clean" and run[2] == 0, "empty: the clean run records to_height 0", run)
    try:
        got = verify(conn, since_last=True)
    except psycopg.OperationalError as e:
        R.check(False, "empty: verify(since_last => true) after it does not crash the server", e)
        return "reconnect"
    expect_problems("empty: verify(since_last => true) after it does not crash and reports nothing", got, [])
    return None


def main():
    conn = connect()
    if not q1(conn, "SELECT rolsuper FROM pg_roles WHERE rolname = current_user"):
        print("chain_tamper: needs a superuser")
        R.check(False, "running as a superuser")
        return R.finish("chain_tamper")
    db = q1(conn, "SELECT current_database()")
    # A database worker started from now on seals in blocks of BLOCK_ROWS too.
    conn.execute("ALTER DATABASE %s SET audit_db.seal_block_rows = %d"
                 % (pgsql.Identifier(db).as_string(conn), BLOCK_ROWS))
    had = q1(conn, "SELECT count(*) FROM pg_extension WHERE extname = 'audit_db'")
    conn.execute("DROP EXTENSION IF EXISTS audit_db CASCADE")
    if had:
        time.sleep(1.5)   # a running worker notices the drop and exits
    try:
        for name, fn in (("guards", case_guards), ("clean", case_clean), ("a", case_fields),
                         ("b", case_delete), ("c", case_insert), ("d", case_swap), ("e", case_blocks),
                         ("f", case_truncate), ("g", case_rewrite), ("h", case_scope),
                         ("unsealed", case_unsealed), ("empty", case_empty_since_last)):
            try:
                if fn(conn) == "reconnect":
                    conn = reconnect()
            except Exception as e:  # noqa: BLE001 - report, go on with the next case
                R.check(False, "case %s ran to the end" % name, "%s: %s" % (type(e).__name__, e))
                if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                    conn.rollback()
    finally:
        conn.execute("ALTER DATABASE %s RESET audit_db.seal_block_rows"
                     % pgsql.Identifier(db).as_string(conn))
    return R.finish("chain_tamper")


if __name__ == "__main__":
    sys.exit(main())
