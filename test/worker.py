#!/usr/bin/env python3
"""test/worker.py: audit_db's background workers (audit_db in shared_preload_libraries).

Uses three databases: the test database (PGDATABASE, where it creates the
extension), and two it creates and drops again: NAME_other (with the
extension) and NAME_noext (without it). A monitor thread samples
pg_stat_activity every 0.2 s throughout. It asserts:
  1. an 'audit_db worker' (pg_stat_activity.backend_type) connected to the
     test database appears within 15 s of CREATE EXTENSION (CREATE EXTENSION
     wakes the launcher; without that it scans every 10 s), and one appears in
     NAME_other too;
  2. rows get sealed without anyone calling audit.seal() (time reported);
  2b. with nothing to seal, the worker uses under 5% of a CPU (utime + stime
     from /proc over 4 s; each idle run is one index probe, planned without
     JIT);
  3. one database's trouble does not stop sealing in another: while a session
     holds EXCLUSIVE on audit.audit_chain_state of NAME_other for 5 s,
     its worker waits on the lock and its new row stays unsealed, but rows of
     the test database are sealed within 3 s; after COMMIT the row of
     NAME_other is sealed. Then audit.audit_chain_state of NAME_other is renamed
     away (every seal run there fails): its worker stays (same PID), rows of
     the test database are still sealed within 3 s, and once the table is back
     NAME_other seals again (after the worker's back-off; time reported);
     3c: while a transaction in NAME_noext holds a transaction id for 4 s,
     either a row of the test database is still sealed, or (the horizon is
     the cluster-wide snapshot xmin) audit.chain_status names that session as
     holding sealing back and the row is sealed within 3 s of its COMMIT;
  4. ALTER SYSTEM SET audit_db.seal_interval = '5s' + pg_reload_conf() slows
     sealing (rows inserted every 0.25 s for 11 s: the worker's seal runs are
     about 5 s apart, and some row waits more than 2 s); ALTER SYSTEM RESET +
     reload brings back the 200 ms default (seal runs a median of at most 1 s
     apart, no row waits more than 1.5 s);
  4b. with the default interval, 10 rows each committed 1.2-2 s after the
     previous one (the worker pauses up to 1 s after runs that found
     nothing) are each sealed within 0.6 s: the commit wakes the worker,
     which runs one interval later (without that, a row waits 0.5 s on
     average and all 10 under 0.6 s has a chance below 1%);
  5. pg_terminate_backend() of the test database's worker: a new worker
     appears (the postmaster restarts it after 5 s: asserted within 80 s, time
     reported), and seals the row inserted meanwhile;
  6. DROP EXTENSION in NAME_other makes its worker exit (within 15 s);
  7. a database without the extension (NAME_noext) has no lasting worker: no
     worker in it lives 15 s or more (the transient ones are reported);
  8a. a row whose transaction ran 3 s and committed after more than 3 s
     without any seal is not reported 'unsealed' by audit.verify() right
     after COMMIT, with audit_db.unsealed_grace = 2 s: the worker's
     heartbeat shows the sealer running (the chain's last seal alone would
     call it stalled); it is sealed within 5 s;
  8. audit.verify() of the test database returns no row at the end.
The server-wide setting is reset (ALTER SYSTEM RESET audit_db.seal_interval)
even when a check fails. Runs in about 2 minutes. Connects through the libpq environment (PGHOST, PGPORT, PGUSER,
PGDATABASE) as a superuser; needs Debian's python3-psycopg.
Last line: "worker: N passed, M failed"; exit status 1 if anything failed.
"""
import os
import random
import statistics
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
from testkit import Results, info, psycopg as _load_psycopg  # noqa: E402

psycopg = _load_psycopg()
from psycopg import sql  # noqa: E402

RESTART_LIMIT = 80          # s: launcher pause (60 s) + scan (10 s) + slack
NO_LASTING = 15             # s: the longest a worker may stay in a database without audit_db


class Monitor(threading.Thread):
    """Samples the audit_db workers of the whole cluster every 0.2 s."""

    def __init__(self):
        super().__init__(name="monitor", daemon=True)
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.seen = {}          # pid -> dict(datname, first, last, waits=set())
        self.current = []       # latest sample: (pid, datname, wait_event_type)
        self.error = None

    def run(self):
        try:
            conn = psycopg.connect(autocommit=True, application_name="worker-test-monitor")
            while not self.stop.is_set():
                rows = conn.execute(
                    "SELECT pid, datname, wait_event_type FROM pg_stat_activity"
                    " WHERE backend_type = 'audit_db worker'").fetchall()
                now = time.monotonic()
                with self.lock:
                    self.current = rows
                    for pid, db, wait in rows:
                        s = self.seen.setdefault(pid, {"datname": db, "first": now,
                                                       "waits": set()})
                        s["last"] = now
                        if wait:
                            s["waits"].add(wait)
                self.stop.wait(0.2)
            conn.close()
        except psycopg.Error as e:
            self.error = str(e)

    def pids(self, db):
        with self.lock:
            return [r[0] for r in self.current if r[1] == db]

    def history(self, db):
        with self.lock:
            return {p: dict(s) for p, s in self.seen.items() if s["datname"] == db}


def wait_until(fn, timeout, step=0.1):
    """Poll fn() until it returns something true; (value, seconds waited)."""
    t0 = time.monotonic()
    while True:
        v = fn()
        if v or time.monotonic() - t0 >= timeout:
            return v, time.monotonic() - t0
        time.sleep(step)


def insert_row(conn, note):
    rid = conn.execute("INSERT INTO audit.audit_log (action, status, details)"
                       " VALUES ('worker_test', 'success', jsonb_build_object('note', %s::text))"
                       " RETURNING id", (note,)).fetchone()[0]
    return rid, time.time()


def sealed_at(conn, rid):
    """sealed_at of the block holding row rid, or None."""
    r = conn.execute("SELECT sealed_at FROM audit.audit_chain_block WHERE %s = ANY(row_ids)",
                     (rid,)).fetchone()
    return r[0] if r else None


def time_to_seal(conn, rid, timeout):
    """Seconds until row rid is in a block (polled), or None after timeout."""
    at, waited = wait_until(lambda: sealed_at(conn, rid), timeout, 0.05)
    return waited if at else None


def reload_conf(conn):
    conn.execute("SELECT pg_reload_conf()")
    time.sleep(1.0)     # the postmaster signals the workers; let them reload


def idle_cpu_share(monitor, db, seconds):
    """(share of one CPU the database's worker used over seconds, its PID),
    from utime + stime in /proc/PID/stat (the server runs on this machine)."""
    pids = monitor.pids(db)
    if not pids:
        return None, None
    pid = pids[0]

    def ticks():
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])     # utime, stime (fields 14, 15)
    try:
        before = ticks()
        time.sleep(seconds)
        used = (ticks() - before) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None, pid
    return used / seconds, pid


def interval_run(conn, seconds, label):
    """Insert a row every 0.25 s for seconds; once sealed, (max lag, gaps between runs)."""
    rows = []
    t_end = time.monotonic() + seconds
    while time.monotonic() < t_end:
        rows.append(insert_row(conn, label))
        time.sleep(0.25)
    last = rows[-1][0]
    time_to_seal(conn, last, 12)
    ats = {}
    for rid, t in rows:
        at = sealed_at(conn, rid)
        ats[rid] = at.timestamp() if at else None
    unsealed = [rid for rid, at in ats.items() if at is None]
    lags = [ats[rid] - t for rid, t in rows if ats[rid] is not None]
    runs = sorted(set(a for a in ats.values() if a is not None))
    gaps = [b - a for a, b in zip(runs, runs[1:])]
    return unsealed, lags, gaps


def main():
    res = Results()
    conn = psycopg.connect(autocommit=True)
    conn.execute("SET statement_timeout = '20s'")
    db = conn.execute("SELECT current_database()").fetchone()[0]
    other, noext = db + "_other", db + "_noext"
    preload = conn.execute("SHOW shared_preload_libraries").fetchone()[0]
    if not res.check("audit_db" in [p.strip() for p in preload.split(",")],
                     "audit_db is in shared_preload_libraries", "it is %r" % preload):
        return res.finish("worker")
    info("databases: %s (test), %s, %s; max_worker_processes %s, audit_db.max_database_workers "
         "%s; %d audit_db workers already run" % ((db, other, noext) + conn.execute(
             "SELECT current_setting('max_worker_processes'),"
             " current_setting('audit_db.max_database_workers'),"
             " (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'audit_db worker')"
         ).fetchone()))
    monitor = Monitor()
    monitor.start()
    changed_conf = False
    extra = []
    try:
        for name in (other, noext):
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(name)))
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        t_noext = time.monotonic()
        oconn = psycopg.connect(autocommit=True, dbname=other)
        extra.append(oconn)
        oconn.execute("SET statement_timeout = '20s'")
        oconn.execute("CREATE EXTENSION audit_db")

        # 1. A worker appears after CREATE EXTENSION.
        conn.execute("CREATE EXTENSION IF NOT EXISTS audit_db")
        pids, waited = wait_until(lambda: monitor.pids(db), 15)
        res.check(bool(pids), "1: an 'audit_db worker' for this database appears %.1f s after "
                  "CREATE EXTENSION (limit 15 s)" % waited,
                  "none after %.1f s; workers now: %s" % (waited, monitor.current))
        opids, owaited = wait_until(lambda: monitor.pids(other), 15)
        res.check(bool(opids), "1: one appears in %s too (%.1f s)" % (other, owaited),
                  "none; workers now: %s" % monitor.current)

        # 2. Sealed without audit.seal().
        times = []
        for i in range(3):
            rid, _ = insert_row(conn, "plain %d" % i)
            times.append(time_to_seal(conn, rid, 5))
            time.sleep(0.3)
        res.check(None not in times, "2: rows are sealed without anyone calling audit.seal() "
                  "(after %s s)" % ", ".join("%.2f" % t if t is not None else "never"
                                             for t in times), "limit 5 s")

        # 2b. An idle worker costs next to nothing: each run is one probe.
        cpu, wpid = idle_cpu_share(monitor, db, 4.0)
        res.check(cpu is not None and cpu < 0.05,
                  "2b: with nothing to seal, the worker (PID %s) used %.1f%% of a CPU over 4 s "
                  "(limit 5%%; a run every %s)" % (wpid, 100 * (cpu or 0), conn.execute(
                      "SHOW audit_db.seal_interval").fetchone()[0]),
                  "CPU share %r (None: the worker's /proc entry could not be read)" % cpu)

        # 3. Trouble in one database does not stop sealing in another.
        lock = psycopg.connect(autocommit=True, dbname=other, application_name="worker-test-lock")
        extra.append(lock)
        lock.execute("BEGIN")
        # EXCLUSIVE blocks the seal run's FOR UPDATE; unlike ACCESS EXCLUSIVE it
        # takes no transaction id, which would hold back every database (3c).
        lock.execute("LOCK TABLE audit.audit_chain_state IN EXCLUSIVE MODE")
        t_lock = time.monotonic()
        orow, _ = insert_row(oconn, "while locked")
        times = []
        while time.monotonic() - t_lock < 4.0:
            rid, _ = insert_row(conn, "other locked")
            times.append(time_to_seal(conn, rid, 3))
            time.sleep(0.2)
        time.sleep(max(0.0, 5.0 - (time.monotonic() - t_lock)))
        o_locked = sealed_at(oconn, orow)
        waits = set()
        for p, s in monitor.history(other).items():
            waits |= s["waits"]
        lock.execute("COMMIT")
        o_after = time_to_seal(oconn, orow, 5)
        res.check(None not in times,
                  "3: while %s's chain state is locked (EXCLUSIVE) for 5 s, rows of this "
                  "database are sealed (after %s s)" % (other, ", ".join(
                      "%.2f" % t if t is not None else "never" for t in times)), "limit 3 s")
        res.check(o_locked is None and "Lock" in waits and o_after is not None,
                  "3: meanwhile %s's worker waited on the lock (wait_event_type Lock) and its "
                  "row stayed unsealed; sealed %.2f s after COMMIT"
                  % (other, o_after if o_after is not None else -1),
                  "sealed during the lock: %s; wait events seen: %s; sealed after: %s"
                  % (o_locked, waits, o_after))

        opid_before = monitor.pids(other)
        oconn.execute("ALTER TABLE audit.audit_chain_state RENAME TO audit_chain_state_away")
        t_err = time.monotonic()
        orow2, _ = insert_row(oconn, "while broken")
        times = []
        while time.monotonic() - t_err < 4.0:
            rid, _ = insert_row(conn, "other broken")
            times.append(time_to_seal(conn, rid, 3))
            time.sleep(0.2)
        o_broken = sealed_at(oconn, orow2)
        opid_during = monitor.pids(other)
        oconn.execute("ALTER TABLE audit.audit_chain_state_away RENAME TO audit_chain_state")
        o_fixed = time_to_seal(oconn, orow2, 40)
        res.check(None not in times,
                  "3: while every seal run in %s fails (audit.audit_chain_state renamed away), "
                  "rows of this database are sealed (after %s s)" % (other, ", ".join(
                      "%.2f" % t if t is not None else "never" for t in times)), "limit 3 s")
        res.check(o_broken is None and opid_before and opid_during == opid_before
                  and o_fixed is not None,
                  "3: %s's worker survives its errors (PID %s) and seals again %.1f s after the "
                  "table is back" % (other, opid_before, o_fixed if o_fixed is not None else -1),
                  "sealed while broken: %s; PIDs before %s, during %s; sealed after: %s"
                  % (o_broken, opid_before, opid_during, o_fixed))

        # 3c. An open transaction with a transaction id in another database.
        hold = psycopg.connect(autocommit=True, dbname=noext, application_name="worker-test-xid")
        extra.append(hold)
        hold.execute("BEGIN")
        hpid, hxid = hold.execute("SELECT pg_backend_pid(), pg_current_xact_id()").fetchone()
        t_hold = time.monotonic()
        rid, _ = insert_row(conn, "other database holds an xid")
        during = time_to_seal(conn, rid, 3)
        named = None
        if during is None:
            named = conn.execute("SELECT holding_back_pid, unsealed_rows FROM audit.chain_status"
                                 ).fetchone()
        time.sleep(max(0.0, 4.0 - (time.monotonic() - t_hold)))
        hold.execute("COMMIT")
        after = time_to_seal(conn, rid, 3) if during is None else 0.0
        if during is None:
            info("3c: design note: a transaction holding an xid in %s (no audit_db there) held "
                 "back sealing in this database until it ended (the horizon is the cluster-wide "
                 "snapshot xmin); sealed %.2f s after its COMMIT; chain_status named PID %s"
                 % (noext, after if after is not None else -1, named[0]))
        res.check(after is not None and (during is not None or named[0] == hpid),
                  "3c: an open transaction (xid %s) in %s %s" % (
                      hxid, noext, "did not hold back sealing here (%.2f s)" % during
                      if during is not None else "held back sealing here, and "
                      "audit.chain_status named it (holding_back_pid %s); sealed %.2f s after "
                      "its COMMIT" % (hpid, after if after is not None else -1)),
                  "sealed during: %s, after: %s; chain_status (holding_back_pid, unsealed_rows)"
                  ": %s" % (during, after, named))

        # 4. audit_db.seal_interval.
        changed_conf = True
        conn.execute("ALTER SYSTEM SET audit_db.seal_interval = '5s'")
        reload_conf(conn)
        unsealed, lags, gaps = interval_run(conn, 11, "interval 5s")
        info("4: seal_interval 5s: row lag %s; seal runs %s s apart"
             % ("max %.2f s, median %.2f s" % (max(lags), statistics.median(lags)) if lags
                else "-", ", ".join("%.2f" % g for g in gaps)))
        res.check(not unsealed and lags and max(lags) > 2 and gaps
                  and statistics.median(gaps) >= 4,
                  "4: with audit_db.seal_interval = '5s' (ALTER SYSTEM, pg_reload_conf()) rows "
                  "wait up to %.1f s and seal runs are %.1f s apart (median)"
                  % (max(lags) if lags else -1, statistics.median(gaps) if gaps else -1),
                  "unsealed %s" % unsealed)
        conn.execute("ALTER SYSTEM RESET audit_db.seal_interval")
        reload_conf(conn)
        changed_conf = False
        unsealed, lags, gaps = interval_run(conn, 4, "interval default")
        info("4: seal_interval reset: row lag %s; seal runs %s s apart"
             % ("max %.2f s, median %.2f s" % (max(lags), statistics.median(lags)) if lags
                else "-", ", ".join("%.2f" % g for g in gaps)))
        res.check(not unsealed and lags and max(lags) <= 1.5 and gaps
                  and statistics.median(gaps) <= 1.0,
                  "4: reset to the default (200 ms): rows wait at most %.2f s, seal runs %.2f s "
                  "apart (median)" % (max(lags) if lags else -1,
                                      statistics.median(gaps) if gaps else -1),
                  "unsealed %s" % unsealed)

        # 4b. A commit cuts the worker's idle pause short. After a quiet
        # spell its runs find nothing and it pauses up to 1 s between them;
        # a commit that wrote rows wakes it, and it seals one seal_interval
        # (200 ms) later. Rows committed at random moments of the pause would
        # otherwise wait up to 1 s (0.5 s on average).
        idle_waits = []
        for i in range(10):
            time.sleep(1.2 + random.random() * 0.8)
            rid, _ = insert_row(conn, "nudge %d" % i)
            idle_waits.append(time_to_seal(conn, rid, 5))
        waits_text = ", ".join("%.2f" % w if w is not None else "never" for w in idle_waits)
        info("4b: rows committed after 1.2-2 s without rows: sealed %s s later" % waits_text)
        res.check(all(w is not None for w in idle_waits) and max(idle_waits) < 0.6,
                  "4b: a row committed while the worker pauses after runs that found nothing is "
                  "sealed within 0.6 s, 10 times (%s s): the commit wakes the worker" % waits_text,
                  "the rows waited for the end of the pause")

        # 5. pg_terminate_backend(): the launcher starts a new worker.
        old = monitor.pids(db)
        ok = bool(old) and conn.execute("SELECT pg_terminate_backend(%s)", (old[0],)).fetchone()[0]
        t_term = time.monotonic()
        gone, _ = wait_until(lambda: old[0] not in monitor.pids(db) if old else False, 5)
        res.check(ok and gone, "5: pg_terminate_backend() ended the worker (PID %s)"
                  % (old[0] if old else None), "workers now: %s" % monitor.current)
        rid, _ = insert_row(conn, "while no worker")

        # 6. Meanwhile: DROP EXTENSION in the other database ends its worker.
        opids = monitor.pids(other)
        oconn.execute("DROP EXTENSION audit_db")
        still, waited = wait_until(lambda: not (set(monitor.pids(other)) & set(opids)), 15)
        res.check(bool(opids) and still, "6: DROP EXTENSION in %s made its worker (PID %s) exit "
                  "after %.1f s" % (other, opids, waited),
                  "still there after %.1f s: %s" % (waited, monitor.pids(other)))

        time.sleep(max(0.0, 3.0 - (time.monotonic() - t_term)))
        unsealed_meanwhile = sealed_at(conn, rid) is None and not monitor.pids(db)
        new, waited = wait_until(lambda: [p for p in monitor.pids(db) if p not in old],
                                 RESTART_LIMIT - (time.monotonic() - t_term), 0.2)
        restart = time.monotonic() - t_term
        res.check(bool(new), "5: a new worker (PID %s) appears %.1f s after pg_terminate_backend()"
                  " (limit %d s; a terminated worker is restarted after 5 s)"
                  % (new[0] if new else None, restart, RESTART_LIMIT),
                  "workers now: %s" % monitor.current)
        if new and restart > 15:
            info("5: design note: a terminated or crashed worker leaves its database unsealed "
                 "for %.0f s (audit.seal() still works meanwhile)" % restart)
        t_new = time_to_seal(conn, rid, 5) if new else None
        info("5: the row inserted after the termination was %s 3 s later"
             % ("still unsealed" if unsealed_meanwhile else "already sealed or a worker was back"))
        res.check(t_new is not None,
                  "5: the row inserted after the termination is sealed once the new worker runs "
                  "(%.2f s after it appeared)" % (t_new if t_new is not None else -1),
                  "unsealed while no worker: %s; sealed after: %s" % (unsealed_meanwhile, t_new))

        # 7. No lasting worker in a database without the extension.
        age = time.monotonic() - t_noext
        hist = monitor.history(noext)
        lives = sorted((s["last"] - s["first"] for s in hist.values()), reverse=True)
        res.check(age >= NO_LASTING and all(x < NO_LASTING for x in lives),
                  "7: in %s (no extension; watched for %.0f s) no worker lasted: %d came and "
                  "went, the longest seen for %.1f s (limit %d s)"
                  % (noext, age, len(lives), lives[0] if lives else 0, NO_LASTING),
                  "lifetimes %s" % ["%.1f" % x for x in lives])

        # 8a. A long transaction committing after a quiet spell is not 'unsealed'.
        quiet, _ = wait_until(lambda: conn.execute(
            "SELECT now() - last_sealed_at > interval '3 s' FROM audit.audit_chain_state").fetchone()[0], 20)
        long_tx = psycopg.connect(autocommit=False)
        extra.append(long_tx)
        rid = long_tx.execute("SELECT audit.log_event(action => 'long_transaction')").fetchone()[0]
        time.sleep(3.0)
        long_tx.commit()
        conn.execute("SET audit_db.unsealed_grace = 2")
        probs = conn.execute("SELECT * FROM audit.verify()").fetchall()
        conn.execute("RESET audit_db.unsealed_grace")
        t_long = time_to_seal(conn, rid, 5)
        res.check(quiet and not probs and t_long is not None,
                  "8a: a row committed 3 s after its transaction began, when nothing had been sealed "
                  "for over 3 s, is not reported 'unsealed' by verify() right after COMMIT with "
                  "audit_db.unsealed_grace = 2 (the worker's heartbeat shows the sealer running); "
                  "sealed %.2f s after COMMIT" % (t_long or -1),
                  "quiet spell: %s; problems: %s" % (quiet, probs[:5]))

        # 8. The chain of this database is sound.
        probs = conn.execute("SELECT * FROM audit.verify()").fetchall()
        res.check(not probs, "8: audit.verify() returns no row", "\n".join(map(str, probs[:10])))
    except psycopg.Error as e:
        res.check(False, "the test ran to its end", "%s: %s" % (type(e).__name__, e))
    finally:
        if changed_conf:
            try:
                conn.execute("ALTER SYSTEM RESET audit_db.seal_interval")
                conn.execute("SELECT pg_reload_conf()")
            except psycopg.Error as e:
                info("could not reset audit_db.seal_interval: %s" % e)
        monitor.stop.set()
        monitor.join(5)
        for c in extra:
            try:
                c.close()
            except psycopg.Error:
                pass
        for name in (other, noext):
            try:
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                    sql.Identifier(name)))
            except psycopg.Error as e:
                info("could not drop %s: %s" % (name, e))
    if monitor.error:
        info("monitor: %s" % monitor.error)
    conn.close()
    return res.finish("worker")


if __name__ == "__main__":
    sys.exit(main())
