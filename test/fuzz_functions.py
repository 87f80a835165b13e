#!/usr/bin/python3
"""test/fuzz_functions.py: every SQL function of the extension called with
bad arguments: no backend crash, a clear error, nothing changed.

In the test database (PGDATABASE; the extension is re-created there, with a
few events logged and sealed), as a superuser. For every function in schema
audit (trigger and event-trigger functions left out), with its arguments
typed from pg_proc: one call with every argument NULL and one with a
plausible value for each, then for each argument in turn each hostile value
of its type (NULL, empty, 1 MB of text, invalid or deep JSON, a JSON array
where an object is expected, negative, zero and enormous numbers, infinite
and extreme timestamps, empty and NULL-holding arrays, 0 and 1 MB of random
bytes), once with the other arguments NULL and once with them plausible. Each call runs in a savepoint that is rolled back; the whole run in
one transaction that is rolled back.

Asserted: the connection survives every call (a crash would end it and the
postmaster would restart every backend); every error carries a SQLSTATE
outside class XX (internal error) except XX001 (data corrupted, which the
extension raises on purpose); the audit log, the chain and the registry
tables hold exactly what they held before. The calls and their outcomes
are summarised (by SQLSTATE class). Runs in about 30 s.
"""
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
from testkit import Results, info, psycopg, q, q1, seal_all, wait_worker_maintenance  # noqa: E402

pg = psycopg()
R = Results()

HUGE = "x" * (1 << 20)
HOSTILE = {
    "text": [None, "", HUGE, "'; DROP TABLE audit.audit_log; --", "\u00e9\u0301\U0001F600", "*", "gdpr.erase"],
    "character varying": [None, "", HUGE],
    "jsonb": [None, "{", "[]", "null", "\"s\"", "[" * 5000 + "]" * 5000, "{\"a\": " + "1" * 2000 + "}"],
    "json": [None, "{", "[]"],
    "integer": [None, -1, 0, 2147483647, -2147483648],
    "smallint": [None, -1, 0, 32767],
    "bigint": [None, -1, 0, 9223372036854775807, -9223372036854775808],
    "boolean": [None, True, False],
    "timestamp with time zone": [None, "infinity", "-infinity", "0001-01-01 BC", "294276-12-31"],
    "interval": [None, "-1 day", "1000000 years"],
    "bytea": [None, b"", os.urandom(1 << 20), os.urandom(32)],
    "text[]": [None, [], [None], [""], [HUGE]],
    "regclass": [None, "pg_class", "audit.audit_log", "pg_catalog.pg_proc"],
    "smallint[]": [None, [], [None], [-1, 32767]],
    "bigint[]": [None, [], [None]],
    "bytea[]": [None, [], [None], [b"x"]],
}
# A plausible value of each type: the second pass varies one argument at a
# time around these, so that calls get past the first NULL check.
PLAUSIBLE = {
    "text": "alice", "character varying": "alice", "jsonb": "{}", "json": "{}", "integer": 1, "smallint": 1,
    "bigint": 1, "boolean": True, "timestamp with time zone": "2026-01-01", "interval": "1 minute",
    "bytea": bytes(32), "text[]": ["alice"], "regclass": "audit.audit_log", "smallint[]": [1], "bigint[]": [1],
    "bytea[]": [bytes(32)],
}
STATE_TABLES = ["audit.audit_log", "audit.audit_chain_block", "audit.pseudonym_mapping", "audit.tracked_table",
                "audit.alerts", "audit.scheduled_reports", "audit.organization_access", "audit.redacted_row"]
# Functions whose bad arguments are not the point, or that a fuzz must not run.
SKIP = {"wake_launcher"}


def snapshot(conn):
    return {t: q1(conn, "SELECT md5(coalesce(string_agg(x::text, '|' ORDER BY x::text), '')) FROM %s x" % t)
            for t in STATE_TABLES}


def main():
    conn = pg.connect(autocommit=True)
    conn.execute("DROP EXTENSION IF EXISTS audit_db CASCADE")
    conn.execute("CREATE EXTENSION audit_db")
    wait_worker_maintenance(conn)
    conn.execute("SELECT audit.log_event(action => 'login', status => 'failure', principal_id => 'alice',"
                 " organization_id => 'org') FROM generate_series(1, 5)")
    seal_all(conn)
    # Everything is sealed: the worker has nothing left to change meanwhile.
    before = snapshot(conn)
    backend = q1(conn, "SELECT pg_backend_pid()")

    funcs = q(conn, """
        SELECT p.proname, p.oid::regprocedure::text,
               coalesce(array(SELECT format_type(t, NULL) FROM unnest(p.proargtypes) t), '{}')
          FROM pg_proc p
         WHERE p.pronamespace = 'audit'::regnamespace AND p.prokind = 'f'
           AND p.prorettype NOT IN ('trigger'::regtype, 'event_trigger'::regtype)
         ORDER BY 1, 2""")
    info("%d functions" % len(funcs))
    outcomes = {}
    calls = 0
    internal = []
    conn.execute("SET statement_timeout = '10s'")
    conn.execute("BEGIN")
    started = time.monotonic()
    for name, sig, types in funcs:
        if name in SKIP:
            continue
        plausible = [PLAUSIBLE.get(t) for t in types]
        variants = [[None] * len(types), list(plausible)]
        for base in ([None] * len(types), plausible):
            for i, t in enumerate(types):
                for v in HOSTILE.get(t, [None]):
                    args = list(base)
                    args[i] = v
                    variants.append(args)
        for args in variants:
            sql = "SELECT %s(%s)" % ("audit." + name, ", ".join("%%s::%s" % t for t in types))
            calls += 1
            try:
                conn.execute("SAVEPOINT f")
                conn.execute(sql, args)
                state = "ok"
            except pg.errors.QueryCanceled:
                state = "57014"
            except pg.Error as e:
                if conn.closed or conn.broken:
                    R.check(False, "the connection survives %s with %s" % (sig, [str(a)[:20] for a in args]))
                    return R.finish("fuzz_functions")
                state = e.sqlstate or "none"
                if state.startswith("XX") and state != "XX001":
                    internal.append((sig, [str(a)[:30] for a in args], state, str(e).splitlines()[0][:200]))
            conn.execute("ROLLBACK TO SAVEPOINT f")
            outcomes[state[:2]] = outcomes.get(state[:2], 0) + 1
    conn.execute("ROLLBACK")
    info("%d calls in %.1f s; outcomes by SQLSTATE class: %s"
         % (calls, time.monotonic() - started, dict(sorted(outcomes.items()))))
    R.check(q1(conn, "SELECT pg_backend_pid()") == backend,
            "the same backend answered all %d calls (no crash, no restart)" % calls)
    R.check(not internal, "no internal error (SQLSTATE class XX other than XX001)", internal[:10])
    R.check(snapshot(conn) == before, "the log, the chain and the registries hold what they held before")
    conn.execute("DROP EXTENSION IF EXISTS audit_db CASCADE")
    conn.close()
    return R.finish("fuzz_functions")


if __name__ == "__main__":
    sys.exit(main())
