#!/usr/bin/env python3
"""test/attach_race.py: a writer racing maintenance's ATTACH PARTITION.

An event dated in a month without a partition goes to audit.audit_log's
default partition; maintenance later creates the month's partition and
attaches it, which takes ACCESS EXCLUSIVE on the default partition.  A writer
that routes an event of that month by the partitions it saw before the attach
committed waits for that lock; PostgreSQL then checks the default partition's
new constraint and refuses the row with 23514 (docs/operations.md: retry).
This test makes that race happen on purpose (the month's creation held open
in a transaction, the writer's wait on the default partition's lock checked
in pg_locks) and asserts that nothing is half-done and nothing lands in the
wrong place:
  1. a plain INSERT is refused with 23514 and writes nothing; its retry lands
     in the month's new partition;
  2. the same for audit.log_event();
  3. an UPDATE of a tracked table whose change events meet the race is
     refused whole (the table row unchanged, no event); its retry commits
     with its events in the new partition, none left in the default one.
The worker's maintenance is kept out by holding its advisory lock.
Connects through the libpq environment as a superuser; needs Debian's
python3-psycopg. Last line: "attach_race: N passed, M failed".
"""
import os
import sys
import threading

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
from testkit import Results, q1, seal_all, wait_for, wait_worker_maintenance, psycopg as _load_psycopg  # noqa: E402

psycopg = _load_psycopg()

LOCK_KEY = 0x6175646974646244   # AUDIT_MAINTENANCE_LOCK_KEY in src/maintenance.c


def connect(**kw):
    args = dict(autocommit=True, application_name="attach-race-test")
    args.update(kw)
    return psycopg.connect(**args)


def run_in_thread(fn):
    """Start fn() in a thread; returns (thread, box) where box gets 'result' or 'error'."""
    box = {}

    def body():
        try:
            box["result"] = fn()
        except Exception as e:  # noqa: BLE001 - handed to the main thread
            box["error"] = e

    t = threading.Thread(target=body, daemon=True)
    t.start()
    return t, box


def waiting_on(admin, pid):
    """The relation pid waits to lock, or None."""
    return q1(admin, "SELECT relation::regclass::text FROM pg_locks WHERE pid = %s AND NOT granted"
                     " AND locktype = 'relation'", (pid,))


def race(res, admin, what, month_time, write):
    """Hold create_month_partition(month_time) open, let write(conn) wait for the
    default partition, commit; returns (box, partition of the month)."""
    maint = connect()
    writer = connect()
    wpid = writer.info.backend_pid
    maint.execute("BEGIN")
    maint.execute("SELECT audit.create_month_partition(%s)", (month_time,))
    t, box = run_in_thread(lambda: write(writer))
    rel, _ = wait_for(lambda: waiting_on(admin, wpid), 10, 0.05)
    res.check(rel == "audit.audit_log_default",
              "%s: the writer waits for the default partition while the month is attached" % what,
              "waits on %r" % (rel,))
    maint.execute("COMMIT")
    t.join(30)
    part = q1(admin, "SELECT partition::text FROM audit.partitions WHERE range_from <= %s AND %s < range_to"
                     " AND NOT is_default", (month_time, month_time))
    maint.close()
    return box, writer, part


def refused_23514(res, what, box):
    err = box.get("error")
    return res.check(err is not None and getattr(err, "sqlstate", None) == "23514"
                     and "audit_log_default" in str(err),
                     "%s: refused with 23514 (the default partition's new constraint)" % what,
                     "error %r (sqlstate %s)" % (err, getattr(err, "sqlstate", None)))


def main():
    res = Results()
    admin = connect()
    admin.execute("CREATE EXTENSION IF NOT EXISTS audit_db")
    wait_worker_maintenance(admin)
    locker = connect()
    locker.execute("SELECT pg_advisory_lock(%s)", (LOCK_KEY,))
    try:
        # 1. A plain INSERT dated in a month without a partition.
        month = "2031-05-15 12:00:00+00"
        res.check(q1(admin, "SELECT count(*) FROM audit.partitions WHERE range_from <= %s AND %s < range_to"
                            " AND NOT is_default", (month, month)) == 0,
                  "no partition for May 2031 yet")
        insert = ("INSERT INTO audit.audit_log (\"timestamp\", action, status, principal_id)"
                  " VALUES ('2031-05-10 08:00:00+00', 'race.insert', 'success', 'u1')")
        box, writer, part = race(res, admin, "INSERT", month, lambda c: c.execute(insert))
        refused_23514(res, "INSERT", box)
        res.check(q1(admin, "SELECT count(*) FROM audit.audit_log WHERE action = 'race.insert'") == 0,
                  "INSERT: nothing written")
        writer.execute(insert)
        where = q1(admin, "SELECT tableoid::regclass::text FROM audit.audit_log WHERE action = 'race.insert'")
        res.check(part is not None and where == part,
                  "INSERT: the retried event is in the month's new partition",
                  "in %s, partition %s" % (where, part))
        writer.close()

        # 2. audit.log_event(), the API.
        month = "2031-07-15 12:00:00+00"
        call = ("SELECT audit.log_event(action => 'race.log_event', status => 'success',"
                " event_time => '2031-07-02 09:00:00+00')")
        box, writer, part = race(res, admin, "log_event", month, lambda c: c.execute(call))
        refused_23514(res, "log_event", box)
        writer.execute(call)
        rows = admin.execute("SELECT tableoid::regclass::text, count(*) FROM audit.audit_log"
                             " WHERE action = 'race.log_event' GROUP BY 1").fetchall()
        res.check(part is not None and rows == [(part, 1)],
                  "log_event: one event, the retried one, in the month's new partition",
                  "rows %r, partition %s" % (rows, part))
        writer.close()

        # 3. The change-tracking writer.  Its events are dated at their
        # transaction's start, so the current month's partition is taken away
        # first (this test database only).
        current = q1(admin, "SELECT partition::text FROM audit.partitions WHERE range_from <= now()"
                            " AND now() < range_to AND NOT is_default")
        admin.execute("ALTER TABLE audit.audit_log DETACH PARTITION %s" % current)
        admin.execute("ALTER TABLE %s RENAME TO attach_race_detached" % current)
        admin.execute("CREATE TABLE public.race_accounts (id int PRIMARY KEY, balance int NOT NULL)")
        admin.execute("INSERT INTO public.race_accounts VALUES (1, 100), (2, 200)")
        admin.execute("SELECT audit.track_table('public.race_accounts')")
        update = "UPDATE public.race_accounts SET balance = balance + 1"
        box, writer, part = race(res, admin, "change tracking",
                                 q1(admin, "SELECT now()::text"), lambda c: c.execute(update))
        refused_23514(res, "change tracking", box)
        res.check(q1(admin, "SELECT sum(balance) FROM public.race_accounts") == 300
                  and q1(admin, "SELECT count(*) FROM audit.audit_log WHERE action = 'race_accounts.update'") == 0,
                  "change tracking: the UPDATE is refused whole (rows unchanged, no event)")
        writer.execute(update)
        rows = admin.execute("SELECT tableoid::regclass::text, count(*) FROM audit.audit_log"
                             " WHERE action = 'race_accounts.update' GROUP BY 1").fetchall()
        res.check(part is not None and rows == [(part, 2)]
                  and q1(admin, "SELECT sum(balance) FROM public.race_accounts") == 302,
                  "change tracking: the retry commits, both change events in the month's new partition",
                  "rows %r, partition %s" % (rows, part))
        left = q1(admin, "SELECT count(*) FROM ONLY audit.audit_log_default"
                         " WHERE \"timestamp\" >= date_trunc('month', now(), 'UTC')")
        res.check(left == 0, "change tracking: no row of the month is left in the default partition",
                  "%s rows" % left)
        writer.close()
        res.check(seal_all(admin), "every committed row sealed")
    finally:
        locker.execute("SELECT pg_advisory_unlock(%s)", (LOCK_KEY,))
        locker.close()
    return res.finish("attach_race")


if __name__ == "__main__":
    sys.exit(main())
