#!/usr/bin/env python3
"""test/maintenance.py: audit_db maintenance, by the worker and by CALL
(audit_db in shared_preload_libraries).

Uses the test database (PGDATABASE, extension created here) and NAME_m2, a
second database with the extension that it creates and drops again. With
audit_db.maintenance_interval = 1 s (ALTER SYSTEM + reload, reset at the end
even when a check fails) it asserts:
  1. the worker recreates a dropped premade partition by itself (within 10 s);
  2. rows written to a month without a partition land in the default
     partition and the worker moves them into a new partition for that month;
     while a transaction holds the sealing horizon back, some of the month's
     rows are sealed and some are not: only the sealed ones are recorded as
     relocated, the others are sealed later in the new partition, and
     audit.verify() reports nothing;
  3. SIGHUP changes the interval: 0 stops the worker's runs (none in 4 s),
     1 s brings them back;
  4. an error in one database does not stop the others: a stray table under a
     premade month's name makes every run in NAME_m2 record the error, while
     the test database's runs go on (a dropped partition there is recreated),
     and NAME_m2's later steps still run (a row in its default partition
     is moved while premake keeps failing); once the table is gone the
     partition is created;
  5. a second caller returns at once: while another session holds the
     maintenance advisory lock, CALL audit.run_maintenance() returns within
     1 s with a NOTICE and records no run;
  6. DDL never queues for long behind the application: while a session holds
     SHARE on audit.audit_log, a CALL that must attach a partition returns
     within 5 s, its run recording a lock timeout (55P03 message), and the
     next run after the lock is gone creates the partition.
Connects through the libpq environment as a superuser; needs Debian's
python3-psycopg. Last line: "maintenance: N passed, M failed".
"""
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
from testkit import Results, info, seal_all, set_setting, wait_for, psycopg as _load_psycopg  # noqa: E402

psycopg = _load_psycopg()
from psycopg import sql  # noqa: E402

LOCK_KEY = 0x6175646974646244   # AUDIT_MAINTENANCE_LOCK_KEY in src/maintenance.c


def connect(dbname=None, **kw):
    args = dict(autocommit=True, application_name="maintenance-test")
    if dbname:
        args["dbname"] = dbname
    args.update(kw)
    return psycopg.connect(**args)


def last_premade(conn):
    """The partition with the latest bounds: (name, range_from)."""
    return conn.execute("SELECT partition::text, range_from FROM audit.partitions"
                        " WHERE NOT is_default ORDER BY range_from DESC LIMIT 1").fetchone()


def has_month(conn, range_from):
    return conn.execute("SELECT count(*) FROM audit.partitions WHERE range_from = %s",
                        (range_from,)).fetchone()[0] == 1


def worker_runs(conn):
    return conn.execute("SELECT count(*) FROM audit.maintenance_run WHERE via = 'worker'").fetchone()[0]


def main():
    res = Results()
    db = os.environ.get("PGDATABASE", "postgres")
    other = db + "_m2"
    admin = connect()
    admin.execute("CREATE EXTENSION IF NOT EXISTS audit_db")
    admin.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(other)))
    admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(other)))
    conn2 = connect(other)
    conn2.execute("CREATE EXTENSION audit_db")
    try:
        set_setting(admin, 'audit_db.maintenance_interval', "1s")

        # 1. A dropped premade partition comes back by itself.
        name, month = last_premade(admin)
        admin.execute(sql.SQL("DROP TABLE {}").format(sql.SQL(name)))
        ok, secs = wait_for(lambda: has_month(admin, month), 10)
        res.check(ok, "1: the worker recreated %s (%.1f s)" % (name, secs))

        # 2. Rows in the default partition move; sealed ones are relocated, verify stays clean.
        admin.execute("INSERT INTO audit.audit_log (\"timestamp\", action, status)"
                      " SELECT timestamptz '2019-07-03 00:00+00' + g * interval '1 hour', 'm.sealed', 'success'"
                      " FROM generate_series(1, 4) g")
        seal_all(admin)
        holder = connect(autocommit=False)
        holder.execute("INSERT INTO audit.audit_log (action, status) VALUES ('m.holder', 'attempt')")
        admin.execute("INSERT INTO audit.audit_log (\"timestamp\", action, status)"
                      " SELECT timestamptz '2019-07-20 00:00+00' + g * interval '1 hour', 'm.unsealed', 'success'"
                      " FROM generate_series(1, 3) g")
        moved, secs = wait_for(lambda: admin.execute(
            "SELECT count(*) = 7 FROM audit.audit_log WHERE tableoid = 'audit.audit_log_2019_07'::regclass"
            if admin.execute("SELECT to_regclass('audit.audit_log_2019_07') IS NOT NULL").fetchone()[0]
            else "SELECT false").fetchone()[0], 10)
        res.check(moved, "2a: the worker moved the month's 7 rows out of the default partition (%.1f s)" % secs)
        reloc = admin.execute("SELECT coalesce(sum(row_count), 0) FROM audit.audit_log_relocation"
                              " WHERE partition_from = '2019-07-01 00:00+00'").fetchone()[0]
        res.check(reloc == 4, "2b: only the 4 sealed rows are recorded as relocated", "relocated: %s" % reloc)
        holder.commit()
        holder.close()
        sealed = seal_all(admin)
        problems = admin.execute("SELECT count(*) FROM audit.verify()").fetchone()[0]
        in_block = admin.execute(
            "SELECT count(*) FROM audit.audit_chain_block WHERE partition_from = '2019-07-01 00:00+00'").fetchone()[0]
        res.check(sealed and problems == 0 and in_block >= 1,
                  "2c: the unsealed rows are sealed in the new partition and verify reports nothing",
                  "sealed=%s problems=%s blocks of 2019-07=%s" % (sealed, problems, in_block))

        # 3. SIGHUP changes the interval.
        set_setting(admin, 'audit_db.maintenance_interval', "0")
        time.sleep(1.5)
        before = worker_runs(admin)
        time.sleep(4)
        after = worker_runs(admin)
        res.check(after == before, "3a: maintenance_interval = 0 stops the worker's runs",
                  "runs went from %d to %d" % (before, after))
        set_setting(admin, 'audit_db.maintenance_interval', "1s")
        ok, secs = wait_for(lambda: worker_runs(admin) >= after + 2, 10)
        res.check(ok, "3b: maintenance_interval = 1s brings them back (%.1f s)" % secs)

        # 4. An error in one database does not stop the other.
        name2, month2 = last_premade(conn2)
        conn2.execute(sql.SQL("DROP TABLE {}").format(sql.SQL(name2)))
        conn2.execute(sql.SQL("CREATE TABLE {} (x int)").format(sql.SQL(name2)))
        ok2, _ = wait_for(lambda: conn2.execute(
            "SELECT count(*) FROM audit.maintenance_run WHERE via = 'worker' AND status = 'errors'"
            " AND errors[1] LIKE '%%already exists%%'").fetchone()[0] >= 2, 10)
        res.check(ok2, "4a: every run in %s records the failing premake step" % other)
        name, month = last_premade(admin)
        admin.execute(sql.SQL("DROP TABLE {}").format(sql.SQL(name)))
        ok, secs = wait_for(lambda: has_month(admin, month), 10)
        res.check(ok, "4b: meanwhile the test database's partition %s is recreated (%.1f s)" % (name, secs))
        conn2.execute("INSERT INTO audit.audit_log (\"timestamp\", action, status)"
                      " VALUES ('2019-09-09 09:00+00', 'm.other', 'success')")
        ok3, secs = wait_for(lambda: conn2.execute(
            "SELECT to_regclass('audit.audit_log_2019_09') IS NOT NULL AND NOT EXISTS"
            " (SELECT FROM audit.audit_log_default)").fetchone()[0], 10)
        # The status of the first worker run to finish from now on (the one
        # that moved the row may still be running; a later one has the same
        # failing premake step).
        moved_at = conn2.execute("SELECT clock_timestamp()").fetchone()[0]
        finished, _ = wait_for(lambda: conn2.execute(
            "SELECT status FROM audit.maintenance_run WHERE via = 'worker' AND finished_at >= %s"
            " ORDER BY finished_at LIMIT 1", (moved_at,)).fetchone(), 10)
        still = finished[0] if finished else None
        res.check(ok3 and still == "errors",
                  "4c: in %s the later steps still run: a row in the default partition is moved (%.1f s)"
                  % (other, secs), "moved=%s last status=%s" % (ok3, still))
        conn2.execute(sql.SQL("DROP TABLE {}").format(sql.SQL(name2)))
        ok, _ = wait_for(lambda: has_month(conn2, month2), 10)
        res.check(ok, "4d: once the stray table is gone, %s gets its partition back" % other)

        # 5. A second caller returns at once.
        set_setting(admin, 'audit_db.maintenance_interval', "0")
        time.sleep(1.5)
        locker = connect()
        locker.execute("SELECT pg_advisory_lock(%s)", (LOCK_KEY,))
        notices = []
        caller = connect()
        caller.add_notice_handler(lambda d: notices.append(d.message_primary))
        runs_before = caller.execute("SELECT count(*) FROM audit.maintenance_run").fetchone()[0]
        t0 = time.monotonic()
        caller.execute("CALL audit.run_maintenance()")
        secs = time.monotonic() - t0
        runs_after = caller.execute("SELECT count(*) FROM audit.maintenance_run").fetchone()[0]
        res.check(secs < 1 and runs_after == runs_before and any("in progress" in n for n in notices),
                  "5: a CALL while another run holds the lock returns in %.2f s, records nothing" % secs,
                  "notices=%s runs %d -> %d" % (notices, runs_before, runs_after))
        locker.execute("SELECT pg_advisory_unlock(%s)", (LOCK_KEY,))
        locker.close()

        # 6. DDL gives up quickly behind an application lock, and succeeds later.
        name, month = last_premade(admin)
        admin.execute(sql.SQL("DROP TABLE {}").format(sql.SQL(name)))
        blocker = connect(autocommit=False)
        blocker.execute("LOCK TABLE audit.audit_log IN SHARE MODE")
        t0 = time.monotonic()
        caller.execute("CALL audit.run_maintenance()")
        secs = time.monotonic() - t0
        err = caller.execute("SELECT errors FROM audit.maintenance_run WHERE via = 'call'"
                             " ORDER BY run_id DESC LIMIT 1").fetchone()[0]
        res.check(secs < 5 and err and any("lock timeout" in e for e in err),
                  "6a: with audit.audit_log locked, the CALL returns in %.2f s recording a lock timeout" % secs,
                  "errors=%s" % err)
        blocker.rollback()
        blocker.close()
        caller.execute("CALL audit.run_maintenance()")
        res.check(has_month(admin, month), "6b: the next run creates %s" % name)
        caller.close()
    finally:
        set_setting(admin, 'audit_db.maintenance_interval', None)
        conn2.close()
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(other)))
        info("audit_db.maintenance_interval reset")
    return res.finish("maintenance")


if __name__ == "__main__":
    sys.exit(main())
