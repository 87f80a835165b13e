#!/usr/bin/python3
"""test/replica.py: audit_db on a streaming replica (hot standby), and after
its promotion.

Starts two throwaway clusters of its own on loopback (test/lib/cluster.sh
conventions: the server runs as the postgres OS user, free ports from
54700..54799, sockets in the clusters' directories): a primary, and a
standby made from it with pg_basebackup -R (streaming), both with
shared_preload_libraries = 'audit_db'. It ignores the cluster of test/run
(PGDATABASE). In a database "audited":
  1. on the primary: CREATE EXTENSION audit_db (after the standby is up, so
     the standby replays it), events logged (PHI reads, failed logins),
     sealed, a clean audit.verify(); the standby replays all of it;
  2. on the standby, read-only: audit.verify() reports nothing, does not
     error and records nothing (a NOTICE says so; audit.audit_integrity_log
     unchanged); audit.digest() equals the primary's, and audit.verify_digest()
     accepts it and an older one; audit.prove() works; the built-in reports
     phi_access, failed_authentication and integrity (json, and csv) return
     the expected rows; audit.chain_status reads (same height, nothing
     unsealed); audit.health() finds chain, sealing, partitions, the worker
     (a standby needs none) and overall healthy;
  3. no maintenance on the standby: no audit_db launcher or worker in
     pg_stat_activity (also after audit.wake_launcher(), which finds no
     launcher), the standby's audit tables (chain, state, maintenance runs,
     integrity log, errors, alerts, partitions) equal the primary's at the
     same LSN, i.e. only replay changed them, and its server log holds no line
     of an audit_db background process and no error at all; by hand,
     CALL audit.run_maintenance() returns with its NOTICE ("does nothing on a
     hot standby") and records nothing, while audit.seal(),
     audit.create_partitions(), audit.create_month_partition(),
     audit.evaluate_alert_rules(), audit.cleanup_alerts() and
     audit.log_event() fail with SQLSTATE 25006 (read_only_sql_transaction);
  4. failover: the primary's worker kept away (audit_db.skip_databases), rows
     logged there stay unsealed and are replayed; the primary is stopped and
     the standby promoted (pg_ctl promote): its launcher and worker start,
     the rows committed but unsealed before the failover and rows logged after
     it are sealed without audit.seal(), a maintenance run by the worker is
     recorded (done), audit.verify() over the whole log is clean and recorded,
     an older digest still verifies, and the new primary's log holds no error
     of an audit_db process.
Both clusters are stopped and their directory removed at the end, also on
failure (after a failure the end of both server logs is printed first).
Runs in about 10 s. Last line: "replica: N passed, M failed".
"""
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
from clusterkit import BINDIR, as_postgres, bash  # noqa: E402
from testkit import Results, info, psycopg, q, q1, seal_all, sqlstate_of, wait_for, wait_worker_maintenance  # noqa: E402

pg = psycopg()
R = Results()
ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
APP = "replica-test"
DB = "audited"
# Log lines name the backend type (%b) and application (%a): audit_db's
# background processes are told apart from this test's sessions.
LOG_PREFIX = "%m [%p] %b %a: "
PHI = [("dr_house", 3), ("nurse_joy", 1)]
# Tables the worker or maintenance write: on the standby only replay may change them.
TABLES = ["audit_chain_block", "audit_chain_state", "maintenance_run", "audit_integrity_log", "error_log",
          "alerts", "alert_clock", "report_executions", "retention_summary", "audit_log_relocation"]


def run(cmd, timeout=120):
    p = subprocess.run(as_postgres(cmd), capture_output=True, text=True, timeout=timeout)
    if p.returncode != 0:
        raise RuntimeError("%s failed (%d): %s %s" % (" ".join(cmd), p.returncode, p.stdout, p.stderr))
    return p.stdout


def free_port():
    return int(bash("free_port 54700 54799"))


def stop(datadir):
    if os.path.exists(os.path.join(datadir, "postmaster.pid")):
        subprocess.run(as_postgres([BINDIR + "/pg_ctl", "-D", datadir, "-m", "fast", "-w", "-t", "30", "stop"]),
                       capture_output=True, text=True)


def connect(host, port, dbname=DB):
    return pg.connect(host=host, port=port, user="postgres", dbname=dbname, autocommit=True,
                      application_name=APP)


def snapshot(conn):
    """A digest of every table the worker or maintenance writes, and of the partitions."""
    out = {}
    for t in TABLES:
        out[t] = q1(conn, "SELECT md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), '')) FROM audit.%s t" % t)
    out["partitions"] = q1(conn, "SELECT string_agg(c.oid::regclass::text, ',' ORDER BY c.relname) FROM pg_inherits i"
                                 " JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = 'audit.audit_log'::regclass")
    out["audit_log"] = q1(conn, "SELECT count(*) || '/' || coalesce(max(id), 0) FROM audit.audit_log")
    return out


def wait_replayed(primary, standby, limit=30):
    lsn = q1(primary, "SELECT pg_current_wal_lsn()::text")
    ok, _ = wait_for(lambda: q1(standby, "SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (lsn,)), limit, step=0.05)
    return ok


def same_as_primary(primary, standby, tries=10):
    """Standby's snapshot equals the primary's while the primary stands still (its worker may write
    between two looks: then look again)."""
    s = t = None
    for _ in range(tries):
        s = snapshot(primary)
        if not wait_replayed(primary, standby):
            return False, "the standby did not replay in 30 s"
        t = snapshot(standby)
        if snapshot(primary) == s:
            return t == s, {k: (s[k], t[k]) for k in s if s[k] != t[k]}
        time.sleep(0.3)
    return False, "the primary never stood still"


def audit_processes(conn):
    return q(conn, "SELECT backend_type, datname, pid FROM pg_stat_activity"
                   " WHERE backend_type IN ('audit_db launcher', 'audit_db worker')"
                   " OR application_name IN ('audit_db launcher', 'audit_db worker') ORDER BY 1, 2")


def log_lines(path, start=0):
    with open(path, errors="replace") as f:
        f.seek(start)
        return f.read().splitlines()


def log_size(path):
    return os.path.getsize(path)


def background_lines(lines):
    """Lines written by audit_db's launcher or workers."""
    return [line for line in lines if re.search(r"\] audit_db (launcher|worker) ", line)]


def foreign_errors(lines, walreceiver=False):
    """ERROR / FATAL / PANIC lines not from this test's own sessions (whose failures are expected); with
    walreceiver=True, also those of the WAL receiver, which fails when the primary stops."""
    return [line for line in lines
            if re.search(r"\b(ERROR|FATAL|PANIC):", line) and (" %s: " % APP) not in line
            and not (walreceiver and "] walreceiver " in line)]


def read_only_lines(lines):
    return [line for line in lines if re.search(r"read-only transaction|during recovery|read_only", line)
            and (" %s: " % APP) not in line]


class Notices:
    def __init__(self, conn):
        self.items = []
        conn.add_notice_handler(lambda d: self.items.append(d.message_primary or ""))

    def take(self):
        items, self.items = self.items, []
        return items


def without_created_at(digest):
    """A digest without its created_at (the time audit.digest() was called)."""
    return {k: v for k, v in digest.items() if k != "created_at"}


def dump_logs(paths):
    """After a failure: the end of each server log, as comment lines."""
    for path in paths:
        if os.path.exists(path):
            info("--- last lines of %s" % path)
            for line in log_lines(path)[-40:]:
                info(line[:300])


def log_events(conn):
    ids = []
    for who, n in PHI:
        ids += [r[0] for r in q(conn, "SELECT audit.log_event(action => 'record.view', status => 'success',"
                                      " principal_id => %s, organization_id => 'clinic', target_resource_id => 'p-1',"
                                      " data_classification => 'PHI') FROM generate_series(1, %s)", (who, n))]
    ids += [r[0] for r in q(conn, "SELECT audit.log_event(action => 'login', status => 'failure',"
                                  " principal_id => 'mallory', organization_id => 'clinic') FROM generate_series(1, 2)")]
    ids.append(q1(conn, "SELECT audit.log_event(action => 'login', status => 'success', principal_id => 'dr_house',"
                        " organization_id => 'clinic')"))
    return ids


def sealed(conn, ids):
    """Every one of ids is in a sealed rows block."""
    return q1(conn, "SELECT count(DISTINCT i) FROM unnest(%s::bigint[]) i, audit.audit_chain_block b"
                    " WHERE b.kind = 'rows' AND i = ANY (b.row_ids)", (ids,)) == len(ids)


def main():
    tmp = tempfile.mkdtemp(prefix="audit_db_replica.")
    os.chmod(tmp, 0o755)
    pdir, sdir = os.path.join(tmp, "primary"), os.path.join(tmp, "standby")
    pdata, sdata = os.path.join(pdir, "data"), os.path.join(sdir, "data")
    slog = os.path.join(sdir, "server.log")
    conns = []
    started = time.monotonic()
    try:
        # ---- the two clusters
        pport = free_port()
        bash("cluster_start %s %d \"shared_preload_libraries = 'audit_db'\" \"fsync = off\""
             " \"wal_level = replica\" \"max_wal_senders = 4\" \"hot_standby = on\""
             " \"log_line_prefix = '%s'\"" % (pdir, pport, LOG_PREFIX))
        info("primary on port %d (%s)" % (pport, pdir))
        os.makedirs(sdir)
        if os.geteuid() == 0:
            shutil.chown(sdir, "postgres", "postgres")
        run([BINDIR + "/pg_basebackup", "-h", "127.0.0.1", "-p", str(pport), "-U", "postgres", "-D", sdata,
             "-R", "-X", "stream", "-c", "fast"])
        sport = free_port()
        with open(os.path.join(sdata, "postgresql.conf"), "a") as f:
            f.write("\n# standby\nport = %d\nunix_socket_directories = '%s'\n" % (sport, sdir))
        run([BINDIR + "/pg_ctl", "-D", sdata, "-l", slog, "-w", "-t", "60", "start"])
        info("standby on port %d (%s)" % (sport, sdir))

        padmin = connect(pdir, pport, "postgres")
        conns.append(padmin)
        streaming, waited = wait_for(lambda: q1(padmin, "SELECT count(*) FROM pg_stat_replication"
                                                        " WHERE state = 'streaming'") == 1, 20)
        R.check(streaming, "the standby streams from the primary (%.1f s)" % waited)

        # ---- 1. the primary
        info("1. on the primary: extension, events, seal")
        padmin.execute("CREATE DATABASE " + DB)
        p = connect(pdir, pport)
        conns.append(p)
        p.execute("CREATE EXTENSION audit_db")
        wait_worker_maintenance(p)
        ids = log_events(p)
        R.check(seal_all(p), "the primary seals every event")
        digest_old = q1(p, "SELECT audit.digest()")
        more = log_events(p)
        ids += more
        R.check(seal_all(p), "and a second batch")
        R.check(q1(p, "SELECT count(*) FROM audit.verify()") == 0, "audit.verify() is clean on the primary")
        s = connect(sdir, sport)
        conns.append(s)
        R.check(wait_replayed(p, s), "the standby has replayed everything")

        # ---- 2. the standby reads
        info("2. on the standby: verify, digests, reports, chain status")
        notices = Notices(s)
        R.check(q1(s, "SELECT pg_is_in_recovery()") is True, "the standby is in recovery (hot standby)")
        runs_before = q1(s, "SELECT count(*) FROM audit.audit_integrity_log")
        notices.take()
        problems = q(s, "SELECT * FROM audit.verify()")
        R.check(problems == [], "audit.verify() on the standby runs and reports nothing", problems)
        said = notices.take()
        R.check(any("not recorded" in n for n in said), "a NOTICE says the run is not recorded", said)
        R.check(q1(s, "SELECT count(*) FROM audit.audit_integrity_log") == runs_before,
                "audit.audit_integrity_log on the standby is unchanged (%d runs, all from the primary)" % runs_before)
        progress = q(s, "SELECT * FROM audit.verification_in_progress")
        R.check(progress == [], "no verification left in progress", progress)

        d_standby = q1(s, "SELECT audit.digest()")
        d_primary = q1(p, "SELECT audit.digest()")
        R.check(without_created_at(d_standby) == without_created_at(d_primary) and d_standby["height"] >= 2,
                "audit.digest() on the standby equals the primary's (but for created_at; height %s)"
                % d_standby.get("height"),
                (d_standby, d_primary))
        vd = q(s, "SELECT ok, digest_height, current_height, detail FROM audit.verify_digest(%s)",
               (json.dumps(d_standby),))
        R.check(len(vd) == 1 and vd[0][0] is True, "audit.verify_digest() of the current digest is ok", vd)
        vd = q(s, "SELECT ok, digest_height, current_height, detail FROM audit.verify_digest(%s)",
               (json.dumps(digest_old),))
        R.check(len(vd) == 1 and vd[0][0] is True and vd[0][1] < vd[0][2],
                "audit.verify_digest() of an older digest is ok (the chain extends it)", vd)
        tampered = dict(digest_old, header_hash="00" * 32)
        vd = q(s, "SELECT ok FROM audit.verify_digest(%s)", (json.dumps(tampered),))
        R.check(vd == [(False,)], "and refuses a digest with a wrong header hash", vd)
        proof = q1(s, "SELECT audit.prove(%s)", (ids[0],))
        R.check(without_created_at(proof["digest"]) == without_created_at(d_standby)
                and proof["row"]["id"] == ids[0] and proof["block"]["height"] == 1,
                "audit.prove() works on the standby and ends at its digest", proof)

        doc = json.loads(q1(s, "SELECT audit.generate_report('phi_access', '{}')"))
        got = sorted((r["principal_id"], r["events"]) for r in doc["rows"])
        want = sorted((w, 2 * n) for w, n in PHI)
        R.check(doc["report"] == "phi_access" and doc["row_count"] == len(PHI) and got == want,
                "the phi_access report on the standby has the PHI reads per principal", (got, want))
        doc = json.loads(q1(s, "SELECT audit.generate_report('failed_authentication', '{}')"))
        got = [(r["principal_id"], r["failures"]) for r in doc["rows"]]
        R.check(got == [("mallory", 4)], "the failed_authentication report counts mallory's 4 failures", got)
        notices.take()
        doc = json.loads(q1(s, "SELECT audit.generate_report('integrity', '{}')"))
        row = doc["rows"][0] if doc["rows"] else {}
        R.check(doc["row_count"] == 1 and row.get("clean") is True and row.get("height") == d_standby["height"],
                "the integrity report on the standby is clean at the chain's height", doc)
        csv = q1(s, "SELECT audit.generate_report('phi_access', '{}', 'csv')")
        R.check(csv.count("\r\n") == 1 + len(PHI), "the csv format too (a header and %d rows)" % len(PHI), csv)
        st = q(s, "SELECT height, rows_sealed, unsealed_rows, seal_lag FROM audit.chain_status")
        R.check(len(st) == 1 and st[0][0] == d_standby["height"] and st[0][1] == len(ids) and st[0][2] == 0,
                "audit.chain_status reads on the standby: height %s, %d rows sealed, none unsealed"
                % (st[0][0] if st else None, len(ids)), st)

        h = {c: (st_, d) for c, st_, d in q(s, "SELECT component, status, detail FROM audit.health()")}
        R.check(all(h[c][0] == "healthy" for c in ("chain", "sealing", "partitions", "worker", "overall")),
                "audit.health() runs on the standby: chain, sealing, partitions, worker (hot standby) "
                "and overall healthy", h)

        # ---- 3. nothing runs on the standby
        info("3. no maintenance on the standby")
        R.check(audit_processes(s) == [], "no audit_db launcher or worker runs on the standby", audit_processes(s))
        R.check(q1(s, "SELECT audit.wake_launcher()") is False, "audit.wake_launcher() finds no launcher there")
        time.sleep(1.5)
        R.check(audit_processes(s) == [], "and none starts after it", audit_processes(s))
        R.check(audit_processes(p) != [], "(the primary's launcher and worker do run)", audit_processes(p))
        same, diff = same_as_primary(p, s)
        R.check(same, "the standby's audit tables equal the primary's at the same LSN (only replay wrote them)",
                diff)
        lines = log_lines(slog)
        R.check(background_lines(lines) == [], "the standby's log has no line of an audit_db process",
                "\n".join(background_lines(lines)[:10]))
        R.check(foreign_errors(lines) == [] and read_only_lines(lines) == [],
                "and no error at all (nothing about read-only transactions)",
                "\n".join((foreign_errors(lines) + read_only_lines(lines))[:10]))

        runs = q1(s, "SELECT count(*) || '/' || coalesce(max(run_id), 0) FROM audit.maintenance_run")
        notices.take()
        state = sqlstate_of(s, "CALL audit.run_maintenance()")
        said = notices.take()
        R.check(state is None and any("does nothing on a hot standby" in n for n in said),
                "CALL audit.run_maintenance() on the standby returns with its NOTICE", (state, said))
        R.check(q1(s, "SELECT count(*) || '/' || coalesce(max(run_id), 0) FROM audit.maintenance_run") == runs,
                "and records no run")
        for what, query in [("audit.seal()", "SELECT * FROM audit.seal()"),
                            ("audit.create_partitions()", "SELECT * FROM audit.create_partitions(1, '2091-01-01')"),
                            ("audit.create_month_partition()",
                             "SELECT * FROM audit.create_month_partition('2091-01-01')"),
                            ("audit.evaluate_alert_rules()", "SELECT * FROM audit.evaluate_alert_rules()"),
                            ("audit.cleanup_alerts()", "SELECT audit.cleanup_alerts(0)"),
                            ("audit.log_event()", "SELECT audit.log_event(action => 'x', status => 'success')")]:
            try:
                with s.transaction():
                    s.execute(query)
                err = None
            except pg.Error as e:
                err = e
            R.check(err is not None and err.sqlstate == "25006",
                    "%s on the standby fails with 25006 (%s)" % (what, err.diag.message_primary if err else "no error"),
                    err and "%s %s" % (err.sqlstate, err))
        same, diff = same_as_primary(p, s)
        R.check(same, "the standby's audit tables still equal the primary's", diff)
        lines = log_lines(slog)
        R.check(background_lines(lines) == [] and foreign_errors(lines) == [],
                "the standby's log still has nothing from an audit_db process",
                "\n".join((background_lines(lines) + foreign_errors(lines))[:10]))

        # ---- 4. failover
        info("4. failover: rows unsealed on the old primary, promotion")
        padmin.execute("ALTER SYSTEM SET audit_db.skip_databases = '%s'" % DB)
        padmin.execute("SELECT pg_reload_conf()")     # the launcher stops the worker for good
        away, waited = wait_for(lambda: q1(p, "SELECT audit.worker_pid()") is None, 15)
        R.check(away, "the primary's worker is kept away from %s (%.1f s)" % (DB, waited))
        unsealed = log_events(p)
        time.sleep(0.5)
        R.check(q1(p, "SELECT unsealed_rows FROM audit.chain_status") == len(unsealed),
                "%d rows committed on the primary stay unsealed" % len(unsealed))
        R.check(wait_replayed(p, s), "the standby replays them")
        R.check(q1(s, "SELECT unsealed_rows FROM audit.chain_status") == len(unsealed),
                "the standby sees them unsealed")
        max_run = q1(s, "SELECT coalesce(max(run_id), 0) FROM audit.maintenance_run")
        runs_before = q1(s, "SELECT count(*) FROM audit.audit_integrity_log")
        for c in (p, padmin):
            c.close()
        conns = [s]
        log_from = log_size(slog)
        stop(pdata)
        run([BINDIR + "/pg_ctl", "-D", sdata, "-w", "-t", "60", "promote"])
        promoted, waited = wait_for(lambda: q1(s, "SELECT NOT pg_is_in_recovery()"), 30, step=0.1)
        R.check(promoted, "the standby is promoted (%.1f s)" % waited)
        t0 = time.monotonic()
        up, waited = wait_for(lambda: {r[0] for r in audit_processes(s)} == {"audit_db launcher", "audit_db worker"},
                              20, step=0.1)
        R.check(up, "its audit_db launcher and worker start (%.1f s)" % waited, audit_processes(s))
        after = log_events(s)
        ok, waited = wait_for(lambda: sealed(s, unsealed + after), 15, step=0.1)
        R.check(ok, "the worker seals, without audit.seal(), the %d rows left unsealed by the old primary and the"
                    " %d logged after promotion (%.1f s)" % (len(unsealed), len(after), waited),
                q(s, "SELECT * FROM audit.chain_status"))
        R.check(q1(s, "SELECT unsealed_rows FROM audit.chain_status") == 0, "nothing is left unsealed")
        ran, waited = wait_for(lambda: q1(s, "SELECT count(*) FROM audit.maintenance_run WHERE run_id > %s"
                                             " AND via = 'worker' AND status = 'done'", (max_run,)) > 0, 20, step=0.1)
        R.check(ran, "the worker's maintenance run is recorded on the new primary (%.1f s after promotion)"
                % (time.monotonic() - t0),
                q(s, "SELECT run_id, via, status, errors FROM audit.maintenance_run WHERE run_id > %s", (max_run,)))
        problems = q(s, "SELECT * FROM audit.verify()")
        R.check(problems == [], "audit.verify() over the whole log is clean after promotion", problems)
        R.check(q1(s, "SELECT count(*) FROM audit.audit_integrity_log") == runs_before + 1
                and q1(s, "SELECT status FROM audit.audit_integrity_log ORDER BY started_at DESC LIMIT 1") == "clean",
                "and now recorded in audit.audit_integrity_log")
        vd = q(s, "SELECT ok FROM audit.verify_digest(%s)", (json.dumps(d_primary),))
        R.check(vd == [(True,)], "the digest taken before the failover still verifies", vd)
        R.check(q1(s, "SELECT count(*) FROM audit.error_log") == 0, "audit.error_log is empty",
                q(s, "SELECT source, message FROM audit.error_log"))
        lines = log_lines(slog, log_from)
        bad = [line for line in background_lines(lines) if re.search(r"\b(ERROR|FATAL|PANIC|WARNING):", line)]
        others = foreign_errors(lines, walreceiver=True)
        R.check(bad == [] and others == [], "the new primary's log has no error of an audit_db process, nor any"
                " other but the WAL receiver's when the primary stopped", "\n".join((bad + others)[:10]))
        info("%.1f s in all" % (time.monotonic() - started))
    except Exception as e:  # noqa: BLE001 - report, go on to cleanup
        R.check(False, "the test ran to its end", "%s: %s" % (type(e).__name__, e))
    finally:
        for c in conns:
            try:
                c.close()
            except Exception:  # noqa: BLE001
                pass
        if R.failed:
            dump_logs([os.path.join(pdir, "server.log"), slog])
        for d in (sdata, pdata):
            stop(d)
        shutil.rmtree(tmp, ignore_errors=True)
    return R.finish("replica")


if __name__ == "__main__":
    sys.exit(main())
