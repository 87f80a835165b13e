#!/usr/bin/python3
"""test/drop_extension.py: DROP EXTENSION audit_db while the sealing worker works.

A DBA (or a benchmark resetting its tables) drops and re-creates the extension
while the background worker of the database may be in the middle of a seal
run. The drop locks the extension's objects one by one; a seal run locks the
chain head, the log's partitions and the blocks table. Unless the two take
their locks in one order, each can end up waiting for the other and the
deadlock detector cancels one of them, possibly the DBA's DROP.

With audit_db preloaded (the worker running), ROUNDS times in the test
database: CREATE EXTENSION audit_db; one INSERT .. SELECT of ROWS rows
(committed); wait (at most 2 s) until this database's worker is running a
seal, then 50 ms more (the run is then reading and sorting the new rows,
holding the log's locks, before it first writes a block); DROP EXTENSION
audit_db CASCADE. Asserts:
  - every DROP EXTENSION and CREATE EXTENSION succeeded (no deadlock, 40P01,
    or any other error);
  - in at least a third of the rounds the DROP was issued while the worker
    was seen sealing (otherwise the test did not test the race; the count is
    printed);
  - afterwards a final CREATE EXTENSION gets a worker that seals a new row
    (the worker comes back after the drops), and audit.verify() is clean.
A second loop (MAINT_ROUNDS, 15) races the worker's maintenance run instead:
CREATE EXTENSION (which gives the worker a maintenance run at once: premake,
default-partition move, seal), a few rows in the default partition, then
DROP EXTENSION at once, while that run creates and attaches partitions.
Asserts every statement succeeded (DROP EXTENSION waits the run out).
The server log's deadlock reports are not read; the statements' own errors are.

Connects through the libpq environment (PGHOST, PGPORT, PGUSER, PGDATABASE) as
a superuser; needs Debian's python3-psycopg. Runs in about a minute.
DE_ROUNDS (6) and DE_ROWS (200000) change the rounds and the rows per round.
Last line: "drop_extension: N passed, M failed"; exit status 1 if anything failed.
"""
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
from testkit import Results, info, psycopg as _load_psycopg  # noqa: E402

psycopg = _load_psycopg()

ROUNDS = int(os.environ.get("DE_ROUNDS", "6"))
ROWS = int(os.environ.get("DE_ROWS", "200000"))
MAINT_ROUNDS = int(os.environ.get("DE_MAINT_ROUNDS", "15"))

BULK = """
INSERT INTO audit.audit_log ("timestamp", principal_id, organization_id, action, status,
  data_classification, details)
SELECT now(), 'user-' || g, 'org-' || (g %% 7), 'record_read', 'success', 'PHI',
       jsonb_build_object('n', g, 'note', md5(g::text))
FROM generate_series(1, %s) g
"""


def worker_sealing(conn):
    """Whether this database's audit_db worker is inside a seal run now."""
    return conn.execute(
        "SELECT count(*) > 0 FROM pg_stat_activity WHERE backend_type = 'audit_db worker'"
        " AND datid = (SELECT oid FROM pg_database WHERE datname = current_database())"
        " AND state = 'active'").fetchone()[0]


def worker_maintaining(conn):
    """Whether this database's audit_db worker is in a maintenance run now."""
    return conn.execute(
        "SELECT count(*) > 0 FROM pg_stat_activity WHERE backend_type = 'audit_db worker'"
        " AND datname = current_database() AND query = 'audit_db: maintenance'").fetchone()[0]


def maintenance_rounds(res, conn):
    """DROP EXTENSION right after CREATE EXTENSION, into the worker's maintenance run."""
    errors = []
    overlapped = 0
    for r in range(MAINT_ROUNDS):
        try:
            conn.execute("CREATE EXTENSION audit_db")
            conn.execute("INSERT INTO audit.audit_log (\"timestamp\", action, status) "
                         "SELECT timestamptz '1990-01-10' + g * interval '32 days', 'old', 'success' "
                         "FROM generate_series(0, 5) g")
            deadline = time.monotonic() + 0.3 + 0.02 * r
            seen = False
            while time.monotonic() < deadline:
                if worker_maintaining(conn):
                    seen = True
                    break
                time.sleep(0.002)
            overlapped += seen
            conn.execute("DROP EXTENSION audit_db CASCADE")
        except psycopg.Error as e:
            errors.append("round %d: %s %s" % (r + 1, e.sqlstate, str(e).strip()))
            info(errors[-1])
            conn.execute("DROP EXTENSION IF EXISTS audit_db CASCADE")
    info("maintenance rounds: the DROP met the worker in its maintenance run in %d of %d rounds"
         % (overlapped, MAINT_ROUNDS))
    res.check(not errors, "%d rounds of CREATE EXTENSION, rows in the default partition, DROP EXTENSION "
              "during the worker's first maintenance run: every statement succeeded" % MAINT_ROUNDS,
              "\n#   ".join(errors))
    res.check(overlapped > 0, "the DROP met a running maintenance run at least once "
              "(%d of %d rounds)" % (overlapped, MAINT_ROUNDS))


def main():
    res = Results()
    conn = psycopg.connect(autocommit=True)
    conn.execute("SET statement_timeout = '60s'")
    preload = conn.execute("SHOW shared_preload_libraries").fetchone()[0]
    if not res.check("audit_db" in [p.strip() for p in preload.split(",")],
                     "audit_db is in shared_preload_libraries", "it is %r" % preload):
        return res.finish("drop_extension")

    conn.execute("DROP EXTENSION IF EXISTS audit_db CASCADE")
    errors = []
    overlapped = 0
    for r in range(ROUNDS):
        try:
            conn.execute("CREATE EXTENSION audit_db")
            conn.execute(BULK % ROWS)
            seen = False
            deadline = time.monotonic() + 2.0
            while time.monotonic() < deadline:
                if worker_sealing(conn):
                    seen = True
                    break
                time.sleep(0.005)
            overlapped += seen
            # Into the run: it reads (and sorts) the rows holding the log's
            # locks before it first writes to the blocks table.
            time.sleep(0.05)
            t0 = time.monotonic()
            conn.execute("DROP EXTENSION audit_db CASCADE")
            info("round %d: DROP EXTENSION %s the worker was seen sealing; took %.2f s"
                 % (r + 1, "after" if seen else "without", time.monotonic() - t0))
        except psycopg.Error as e:
            errors.append("round %d: %s %s" % (r + 1, e.sqlstate, str(e).strip()))
            info(errors[-1])
            conn.execute("DROP EXTENSION IF EXISTS audit_db CASCADE")

    res.check(not errors, "%d rounds of CREATE EXTENSION, %d-row insert, DROP EXTENSION "
              "CASCADE: every statement succeeded" % (ROUNDS, ROWS), "\n#   ".join(errors))
    res.check(overlapped * 3 >= ROUNDS,
              "the DROP was issued while the worker was sealing in %d of %d rounds "
              "(at least a third, or the race was not exercised)" % (overlapped, ROUNDS))

    maintenance_rounds(res, conn)

    conn.execute("CREATE EXTENSION audit_db")
    rid = conn.execute("SELECT audit.log_event(action => 'after_drops', status => 'success')"
                       ).fetchone()[0]
    sealed = None
    t0 = time.monotonic()
    while time.monotonic() - t0 < 90:
        if conn.execute("SELECT unsealed_rows = 0 FROM audit.chain_status").fetchone()[0]:
            sealed = time.monotonic() - t0
            break
        time.sleep(0.2)
    res.check(sealed is not None, "after the drops, CREATE EXTENSION gets a worker that seals "
              "a new row (%s)" % ("after %.1f s" % sealed if sealed is not None else "not in 90 s"),
              "row id %s" % rid)
    problems = conn.execute("SELECT count(*) FROM audit.verify()").fetchone()[0]
    res.check(problems == 0, "audit.verify() reports nothing", "%d problems" % problems)
    conn.execute("DROP EXTENSION audit_db CASCADE")
    return res.finish("drop_extension")


if __name__ == "__main__":
    sys.exit(main())
