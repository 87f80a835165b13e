#!/usr/bin/python3
"""test/health.py: audit.health() turns degraded and unhealthy for the causes
a DBA must hear about, and healthy again once they are gone.

In the test database (PGDATABASE; the extension is re-created there), on the
cluster of test/run (audit_db preloaded), as a superuser:
  1. all healthy to start with (after a clean audit.verify());
  2. a stopped worker: audit_db.skip_databases names this database (ALTER
     SYSTEM, reload) and the worker is terminated, so the launcher does not
     start another; the worker component is
     unhealthy (overall too); the metrics say 2 for it;
  3. an old seal lag: with the worker still away and audit_db.unsealed_grace
     at 1 s, a logged row waits: sealing is degraded past 1 s and unhealthy
     past 10 s; the settings put back and the launcher woken
     (audit.wake_launcher()), the worker returns and seals, and
     worker and sealing are healthy again;
  4. rows in the default partition: partitions degraded until maintenance
     moves them (CALL audit.run_maintenance() after the month's partition
     is created);
  5. a failed audit.verify() (a row changed with the triggers off): chain
     unhealthy, and healthy again after the row is put back and verified.
Every wait is bounded. Runs in about 25 s.
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
from testkit import Results, info, psycopg, q, q1, seal_all, set_setting, wait_for, wait_worker_maintenance  # noqa: E402

pg = psycopg()
R = Results()


def health(conn):
    return {c: (s, d) for c, s, d in q(conn, "SELECT component, status, detail FROM audit.health()")}


def status(conn, component):
    return health(conn)[component][0]


def main():
    conn = pg.connect(autocommit=True)
    db = q1(conn, "SELECT current_database()")
    touched = False
    try:
        conn.execute("DROP EXTENSION IF EXISTS audit_db CASCADE")
        conn.execute("CREATE EXTENSION audit_db")
        wait_worker_maintenance(conn)

        info("1. healthy")
        conn.execute("SELECT audit.log_event(action => 'login', status => 'success', principal_id => 'a')")
        seal_all(conn)
        conn.execute("SELECT count(*) FROM audit.verify()")
        h = health(conn)
        R.check(all(s == "healthy" for s, _ in h.values()), "every component is healthy at the start", h)

        info("2. a stopped worker")
        touched = True
        set_setting(conn, "audit_db.skip_databases", db)
        conn.execute("SELECT pg_terminate_backend(audit.worker_pid())")
        gone, waited = wait_for(lambda: q1(conn, "SELECT audit.worker_pid()") is None, 20)
        R.check(gone, "the worker, terminated, is not started again while the database is skipped (%.1f s)" % waited)
        h = health(conn)
        R.check(h["worker"][0] == "unhealthy" and h["overall"][0] == "unhealthy",
                "worker and overall are unhealthy without the worker", h["worker"])
        R.check('audit_db_health{component="worker"} 2' in q1(conn, "SELECT audit.metrics_prometheus()"),
                "the metrics report the worker as 2 (unhealthy)")

        info("3. an old seal lag")
        set_setting(conn, "audit_db.unsealed_grace", "1")
        conn.execute("SELECT audit.log_event(action => 'login', status => 'success', principal_id => 'b')")
        degraded, waited = wait_for(lambda: status(conn, "sealing") != "healthy", 10)
        R.check(degraded and status(conn, "sealing") == "degraded",
                "sealing is degraded once the unsealed row is older than the grace (%.1f s)" % waited,
                health(conn)["sealing"])
        bad, waited = wait_for(lambda: status(conn, "sealing") == "unhealthy", 20)
        R.check(bad, "and unhealthy past ten times the grace (%.1f s more)" % waited, health(conn)["sealing"])
        set_setting(conn, "audit_db.unsealed_grace", None)
        set_setting(conn, "audit_db.skip_databases", None)
        touched = False
        conn.execute("SELECT audit.wake_launcher()")
        back, waited = wait_for(lambda: q1(conn, "SELECT audit.worker_pid()") is not None, 30)
        R.check(back, "the worker comes back once the database is no longer skipped (%.1f s)" % waited)
        ok, waited = wait_for(lambda: status(conn, "sealing") == "healthy" and status(conn, "worker") == "healthy",
                              20)
        R.check(ok, "it seals the row: sealing and worker healthy again (%.1f s)" % waited, health(conn))

        info("4. rows in the default partition")
        conn.execute("INSERT INTO audit.audit_log (\"timestamp\", action, status) VALUES ('2091-03-05', 'x', 'success')")
        R.check(status(conn, "partitions") == "degraded", "partitions degraded with a row in the default partition",
                health(conn)["partitions"])
        conn.execute("SELECT audit.create_partitions(1, '2091-03-01')")
        R.check(status(conn, "partitions") == "healthy",
                "healthy again once the month's partition took the row", health(conn)["partitions"])

        info("5. a failed verification")
        seal_all(conn)
        conn.execute("ALTER TABLE audit.audit_log DISABLE TRIGGER USER")
        conn.execute("UPDATE audit.audit_log SET principal_id = 'eve' WHERE principal_id = 'a'")
        conn.execute("ALTER TABLE audit.audit_log ENABLE TRIGGER USER")
        problems = q1(conn, "SELECT count(*) FROM audit.verify()")
        h = health(conn)
        R.check(problems == 1 and h["chain"][0] == "unhealthy" and h["overall"][0] == "unhealthy",
                "chain and overall unhealthy after a failed verification", h["chain"])
        conn.execute("ALTER TABLE audit.audit_log DISABLE TRIGGER USER")
        conn.execute("UPDATE audit.audit_log SET principal_id = 'a' WHERE principal_id = 'eve'")
        conn.execute("ALTER TABLE audit.audit_log ENABLE TRIGGER USER")
        conn.execute("SELECT count(*) FROM audit.verify()")
        R.check(status(conn, "chain") == "healthy", "healthy again after a clean verification",
                health(conn)["chain"])
    except Exception as e:  # noqa: BLE001 - report, go on to cleanup
        R.check(False, "the test ran to its end", "%s: %s" % (type(e).__name__, e))
    finally:
        if touched:
            set_setting(conn, "audit_db.unsealed_grace", None)
            set_setting(conn, "audit_db.skip_databases", None)
        conn.execute("DROP EXTENSION IF EXISTS audit_db CASCADE")
        conn.close()
    return R.finish("health")


if __name__ == "__main__":
    sys.exit(main())
