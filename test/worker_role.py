#!/usr/bin/python3
"""test/worker_role.py: audit_db.worker_role, the role the database workers connect as.

With audit_db preloaded, in the test database (PGDATABASE):
  1. by default the database worker connects as the bootstrap superuser
     (pg_stat_activity.usename of the 'audit_db worker' is the cluster's
     first role);
  2. ALTER SYSTEM SET audit_db.worker_role = a LOGIN superuser role made for
     the test, reload, then DROP + CREATE EXTENSION (the old worker exits, the
     launcher starts a new one): the new worker connects as that role, and it
     seals a new row;
  3. a role that cannot log in (NOLOGIN): the launcher logs and falls back to
     the bootstrap superuser, and sealing goes on;
  4. a role that does not exist: the same.
The setting is reset and the roles dropped at the end, even on failure.
Connects through PGHOST/PGPORT/PGUSER/PGDATABASE as a superuser.
Last line: "worker_role: N passed, M failed"; exit status 1 if anything failed.
"""
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
from testkit import Results, set_setting, psycopg as _load_psycopg  # noqa: E402

psycopg = _load_psycopg()

LOGIN_ROLE = "audit_db_test_worker_login"
NOLOGIN_ROLE = "audit_db_test_worker_nologin"


def worker_user(conn, timeout=30.0, not_pid=None):
    """(pid, usename) of this database's audit_db worker, waiting for one (other than not_pid)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = conn.execute("SELECT pid, usename FROM pg_stat_activity WHERE backend_type = 'audit_db worker'"
                           " AND datname = current_database() AND pid IS DISTINCT FROM %s"
                           " ORDER BY backend_start DESC LIMIT 1", (not_pid,)).fetchone()
        if row:
            return row
        time.sleep(0.1)
    return (None, None)


def sealed_soon(conn, timeout=20.0):
    """Log a row; whether the worker seals it within timeout (nobody calls audit.seal())."""
    rid = conn.execute("SELECT audit.log_event(action => 'worker_role', status => 'success')").fetchone()[0]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if conn.execute("SELECT EXISTS (SELECT FROM audit.audit_chain_block WHERE %s = ANY (row_ids))",
                        (rid,)).fetchone()[0]:
            return True
        time.sleep(0.1)
    return False


def recreate_extension(conn, old_pid):
    """DROP + CREATE EXTENSION; returns the new worker's (pid, usename)."""
    conn.execute("DROP EXTENSION IF EXISTS audit_db CASCADE")
    deadline = time.monotonic() + 20
    while old_pid and time.monotonic() < deadline:
        if not conn.execute("SELECT EXISTS (SELECT FROM pg_stat_activity WHERE pid = %s)", (old_pid,)).fetchone()[0]:
            break
        time.sleep(0.1)
    conn.execute("CREATE EXTENSION audit_db")
    return worker_user(conn, 40.0, not_pid=old_pid)


def main():
    res = Results()
    conn = psycopg.connect(autocommit=True)
    preload = conn.execute("SHOW shared_preload_libraries").fetchone()[0]
    if not res.check("audit_db" in [p.strip() for p in preload.split(",")],
                     "audit_db is in shared_preload_libraries", "it is %r" % preload):
        return res.finish("worker_role")
    bootstrap = conn.execute("SELECT rolname FROM pg_roles WHERE oid = 10").fetchone()[0]
    try:
        conn.execute("DROP ROLE IF EXISTS %s" % LOGIN_ROLE)
        conn.execute("DROP ROLE IF EXISTS %s" % NOLOGIN_ROLE)
        conn.execute("CREATE ROLE %s LOGIN SUPERUSER" % LOGIN_ROLE)
        conn.execute("CREATE ROLE %s NOLOGIN SUPERUSER" % NOLOGIN_ROLE)

        pid, user = recreate_extension(conn, None)
        res.check(user == bootstrap, "1: by default the worker connects as the bootstrap superuser (%s)" % bootstrap,
                  "worker %s connects as %s" % (pid, user))

        set_setting(conn, 'audit_db.worker_role', LOGIN_ROLE)
        pid2, user2 = recreate_extension(conn, pid)
        res.check(user2 == LOGIN_ROLE, "2: with audit_db.worker_role = %s, a new worker connects as it" % LOGIN_ROLE,
                  "worker %s connects as %s" % (pid2, user2))
        res.check(sealed_soon(conn), "2: and seals a new row")

        set_setting(conn, 'audit_db.worker_role', NOLOGIN_ROLE)
        pid3, user3 = recreate_extension(conn, pid2)
        res.check(user3 == bootstrap, "3: a NOLOGIN role is refused: the worker falls back to %s" % bootstrap,
                  "worker %s connects as %s" % (pid3, user3))
        res.check(sealed_soon(conn), "3: and seals a new row")

        set_setting(conn, 'audit_db.worker_role', "audit_db_test_no_such_role")
        pid4, user4 = recreate_extension(conn, pid3)
        res.check(user4 == bootstrap, "4: a role that does not exist: the worker falls back to %s" % bootstrap,
                  "worker %s connects as %s" % (pid4, user4))
        res.check(sealed_soon(conn), "4: and seals a new row")
    except Exception as e:  # noqa: BLE001 - report, clean up
        res.check(False, "the test ran to its end", "%s: %s" % (type(e).__name__, e))
    finally:
        set_setting(conn, 'audit_db.worker_role', None)
        conn.execute("DROP EXTENSION IF EXISTS audit_db CASCADE")
        time.sleep(1.0)
        for role in (LOGIN_ROLE, NOLOGIN_ROLE):
            for _ in range(50):
                try:
                    conn.execute("DROP ROLE IF EXISTS %s" % role)
                    break
                except psycopg.Error:
                    time.sleep(0.2)     # a worker connected as it is still leaving
    return res.finish("worker_role")


if __name__ == "__main__":
    sys.exit(main())
