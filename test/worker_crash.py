#!/usr/bin/python3
"""test/worker_crash.py: one audit_db worker per database after a crash of
a server process (the postmaster's crash-restart, not a restart of the
whole server).

When any server process dies of a signal, the postmaster kills every other
one and starts again without stopping: it restarts the database workers
(they ask to be restarted) and the launcher, which knows nothing of them and
starts workers of its own. The workers whose launcher is gone must leave.

Starts a cluster of its own (audit_db preloaded), creates the extension in
two databases, then twice: kills one database worker with SIGKILL, waits for
the crash-restart, and asserts that for 6 s every database has at most one
audit_db worker and, at the end, exactly one; that the workers restarted
by the postmaster left (their log line); that rows logged after the crash
are sealed without audit.seal(); and that audit.verify() is clean.
Last line: "worker_crash: N passed, M failed".
"""
import os
import shutil
import signal
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
from clusterkit import log_tail, start_cluster, stop_cluster  # noqa: E402
from testkit import Results, info, psycopg, q, q1, wait_for  # noqa: E402

pg = psycopg()
R = Results()
DATABASES = ["crash_a", "crash_b"]


def connect(path, port, dbname):
    return pg.connect(host=path, port=port, user="postgres", dbname=dbname, autocommit=True,
                      application_name="worker-crash-test")


def workers(path, port):
    """{database: number of audit_db workers} now."""
    with connect(path, port, "postgres") as c:
        rows = q(c, "SELECT datname, count(*) FROM pg_stat_activity WHERE backend_type = 'audit_db worker' "
                    "GROUP BY datname")
    return {d: n for d, n in rows}


def try_connect(path, port):
    try:
        with connect(path, port, "postgres") as c:
            return q1(c, "SELECT NOT pg_is_in_recovery()")
    except pg.OperationalError:
        return False


def main():
    tmp = tempfile.mkdtemp(prefix="audit_db_worker_crash.")
    os.chmod(tmp, 0o755)
    path = os.path.join(tmp, "cluster")
    started = time.monotonic()
    try:
        port = start_cluster(path, (54900, 54999), "shared_preload_libraries = 'audit_db'", "fsync = off",
                             "restart_after_crash = on")
        with connect(path, port, "postgres") as c:
            for db in DATABASES:
                c.execute("CREATE DATABASE %s" % db)
        for db in DATABASES:
            with connect(path, port, db) as c:
                c.execute("CREATE EXTENSION audit_db")
        ok, waited = wait_for(lambda: all(workers(path, port).get(db) == 1 for db in DATABASES), 20)
        R.check(ok, "one worker per database after CREATE EXTENSION (%.1f s)" % waited, workers(path, port))

        for round_ in (1, 2):
            with connect(path, port, "postgres") as c:
                victim = q1(c, "SELECT pid FROM pg_stat_activity WHERE backend_type = 'audit_db worker' "
                               "AND datname = %s", (DATABASES[0],))
            info("round %d: SIGKILL of the worker of %s (pid %s)" % (round_, DATABASES[0], victim))
            os.kill(victim, signal.SIGKILL)
            time.sleep(1.0)
            back, waited = wait_for(lambda: try_connect(path, port), 60, step=0.5)
            R.check(back, "round %d: the server is back after the crash-restart (%.1f s)" % (round_, waited))
            # Let the postmaster restart the old workers and the launcher start new ones.
            ok, waited = wait_for(lambda: all(workers(path, port).get(db) == 1 for db in DATABASES), 30)
            R.check(ok, "round %d: one worker per database again (%.1f s)" % (round_, waited), workers(path, port))
            most = {}
            deadline = time.monotonic() + 6
            while time.monotonic() < deadline:
                now = workers(path, port)
                for db in DATABASES:        # others may get a short-lived probe (no extension there)
                    most[db] = max(most.get(db, 0), now.get(db, 0))
                time.sleep(0.2)
            R.check(all(most[db] == 1 for db in DATABASES),
                    "round %d: for 6 s no database has two workers" % round_, most)
            for db in DATABASES:
                with connect(path, port, db) as c:
                    rid = q1(c, "SELECT audit.log_event(action => 'after.crash', status => 'success')")
                    sealed, waited = wait_for(lambda: q1(c, "SELECT transaction_id < horizon_xid FROM "
                                                            "audit.audit_log, audit.audit_chain_state "
                                                            "WHERE id = %s", (rid,)), 15)
                    R.check(sealed, "round %d: %s seals a new row by itself (%.1f s)" % (round_, db, waited))
        with open(os.path.join(path, "server.log"), errors="replace") as f:
            orphans = sum("exits: the launcher that started it is gone" in line for line in f)
        R.check(orphans >= 2, "the workers the postmaster restarted left (%d log lines)" % orphans)
        for db in DATABASES:
            with connect(path, port, db) as c:
                problems = q(c, "SELECT * FROM audit.verify()")
                R.check(problems == [], "%s: audit.verify() is clean" % db, problems)
    except Exception as e:  # noqa: BLE001 - report, then clean up
        R.check(False, "the test ran to the end", "%s: %s" % (type(e).__name__, e))
        for line in log_tail(path, 25):
            info(line)
    finally:
        stop_cluster(path)
        shutil.rmtree(tmp, ignore_errors=True)
    info("ran in %.1f s" % (time.monotonic() - started))
    return R.finish("worker_crash")


if __name__ == "__main__":
    sys.exit(main())
