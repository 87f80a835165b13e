"""test/lib/testkit.py: what the Python tests in test/ share.

- psycopg(): import psycopg 3, re-running the script under Debian's
  /usr/bin/python3 when the first python3 on PATH lacks it (a pyenv build,
  say); psycopg comes from the python3-psycopg package, not PyPI.
- Results: TAP-like "ok - ..." / "not ok - ..." lines, and the closing line
  "NAME: N passed, M failed" that test/run counts.
"""
import os
import sys

DEBIAN_PYTHON = "/usr/bin/python3"


def psycopg():
    """The psycopg module; re-executes the script under Debian's python if needed."""
    try:
        import psycopg as module
    except ImportError:
        if (os.path.exists(DEBIAN_PYTHON)
                and os.path.realpath(sys.executable) != os.path.realpath(DEBIAN_PYTHON)
                and "AUDIT_DB_TEST_REEXEC" not in os.environ):
            os.environ["AUDIT_DB_TEST_REEXEC"] = "1"
            os.execv(DEBIAN_PYTHON, [DEBIAN_PYTHON] + sys.argv)
        raise
    return module


class Results:
    """Counts and prints checks."""

    def __init__(self):
        self.passed = 0
        self.failed = 0

    def check(self, ok, what, detail=None):
        """Record one check; detail (any text) is printed under a failure."""
        if ok:
            self.passed += 1
            print("ok - %s" % what)
        else:
            self.failed += 1
            print("not ok - %s" % what)
            if detail:
                for line in str(detail).splitlines():
                    print("#   %s" % line)
        sys.stdout.flush()
        return ok

    def run(self, what, fn):
        """Run fn() -> (ok, detail) as one check; an exception is a failure."""
        try:
            ok, detail = fn()
        except Exception as e:  # noqa: BLE001 - report, go on
            ok, detail = False, "%s: %s" % (type(e).__name__, e)
        return self.check(ok, what, detail)

    def finish(self, name):
        """Print the closing line; return the exit status (1 if anything failed)."""
        print("%s: %d passed, %d failed" % (name, self.passed, self.failed))
        sys.stdout.flush()
        return 1 if self.failed else 0


def info(msg):
    """A comment line in the output."""
    print("# " + msg)
    sys.stdout.flush()


def wait_worker_maintenance(conn, timeout=20.0):
    """After CREATE EXTENSION: wait until the database worker's first
    maintenance run has finished, so that it does not move rows out of the
    default partition under a test that puts them there on purpose.
    Returns at once when no audit_db worker serves this database (no preload)."""
    import time
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM audit.maintenance_run WHERE via = 'worker' AND finished_at IS NOT NULL")
            if cur.fetchone()[0] > 0:
                return True
            cur.execute("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'audit_db worker' "
                        "AND datname = current_database()")
            if cur.fetchone()[0] == 0 and time.monotonic() > deadline - timeout + 3.0:
                return False
        time.sleep(0.05)
    raise RuntimeError("the audit_db worker's first maintenance run did not finish in %.0f s" % timeout)


def q(conn, query, params=None):
    """All rows of a query."""
    return conn.execute(query, params).fetchall()


def q1(conn, query, params=None):
    """The first column of the first row of a query (None without rows)."""
    row = conn.execute(query, params).fetchone()
    return None if row is None else row[0]


def wait_for(fn, limit, step=0.2):
    """Poll fn() until true or limit seconds pass; return (result, seconds)."""
    import time
    start = time.monotonic()
    while True:
        v = fn()
        if v or time.monotonic() - start > limit:
            return v, time.monotonic() - start
        time.sleep(step)


def seal_all(conn, limit=60, step=0.1):
    """audit.seal() until no committed row is left above the sealed horizon; whether it got there."""
    def done():
        conn.execute("SELECT * FROM audit.seal()")
        return q1(conn, "SELECT NOT EXISTS (SELECT FROM audit.audit_log WHERE transaction_id >="
                        " (SELECT horizon_xid FROM audit.audit_chain_state))")
    return wait_for(done, limit, step)[0]


def set_setting(conn, name, value, settle=0.5):
    """ALTER SYSTEM SET name = value (RESET when value is None), reload, and let the workers reload."""
    import time
    from psycopg import sql
    if value is None:
        conn.execute(sql.SQL("ALTER SYSTEM RESET {}").format(sql.Identifier(*name.split("."))))
    else:
        conn.execute(sql.SQL("ALTER SYSTEM SET {} = {}").format(sql.Identifier(*name.split(".")),
                                                                sql.Literal(value)))
    conn.execute("SELECT pg_reload_conf()")
    time.sleep(settle)


def sqlstate_of(conn, query, params=None):
    """Run query in a transaction; the SQLSTATE of its error, or None if it succeeded."""
    from psycopg import Error
    try:
        with conn.transaction():
            conn.execute(query, params)
    except Error as e:
        return e.sqlstate
    return None


def trigger_states(conn):
    """(relation, trigger, tgenabled, is_parent) of every user trigger in schema audit, parents first:
    what a test that switches guard triggers off must put back."""
    return q(conn, "SELECT c.oid::regclass::text, t.tgname, t.tgenabled, c.relkind = 'p' AS parent "
                   "FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
                   "WHERE c.relnamespace = 'audit'::regnamespace AND NOT t.tgisinternal "
                   "ORDER BY parent DESC, 1, 2")


def find_server_log(conn, override=None, override_name="the override"):
    """(path, how) of the server log this test may read, or (None, why not):
    override (a path from the environment, named override_name) if given,
    else pg_current_logfile(), else data_directory/../server.log (the layout
    of test/lib/cluster.sh)."""
    import os
    if override:
        return (override, override_name) if os.access(override, os.R_OK) else (None, override_name + " unreadable")
    try:
        cur = q1(conn, "SELECT pg_current_logfile()")
    except Exception:  # noqa: BLE001 - not allowed to ask: fall back
        cur = None
    datadir = q1(conn, "SELECT current_setting('data_directory')")
    if cur:
        path = cur if os.path.isabs(cur) else os.path.join(datadir, cur)
        if os.access(path, os.R_OK):
            return path, "pg_current_logfile()"
    path = os.path.join(os.path.dirname(datadir), "server.log")
    if os.access(path, os.R_OK):
        return path, "data_directory/../server.log"
    return None, "no logging_collector file and no readable data_directory/../server.log"


def log_size(path):
    """Bytes in the file now (0 if it cannot be read): where to start reading later."""
    import os
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def log_since(path, offset):
    """What the file gained after offset, as text ('' if it cannot be read)."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""
