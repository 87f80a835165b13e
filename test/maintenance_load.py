#!/usr/bin/env python3
"""test/maintenance_load.py: audit_db maintenance running every second under the
32-client single-row insert benchmark (audit_db in shared_preload_libraries).

Acceptance item: "Maintenance under the 32-client insert benchmark, running
every second for 5 minutes: no insert fails, no deadlock, insert ratio to plain
stays >= 0.95, and the longest stall an insert sees because of maintenance is
reported (target < 100 ms)."  The 5 minutes are ML_SECONDS=300; the default
run (60 s a point) takes about 2.5 minutes (ML_BASELINE=1: 3.5).

Runs in the test database (PGDATABASE; it drops and recreates the extension
there) as a superuser through the libpq environment (PGHOST, PGPORT, PGUSER).
pgbench is $(pg_config --bindir)/pgbench. The workload is the shared reference
(../shared/bench/ beside the repository root: reference_schema.sql creates the
plain table ref.audit_log, insert.pgbench writes one event per transaction);
if it is missing, an identical copy kept in this file is used (a line says so).
As test/bench/run does: pgbench -n, simple query protocol, -j 2, a CHECKPOINT
before each point; the audit variant is insert.pgbench with ref.audit_log
changed to audit.audit_log.

Setup (sealed and verified clean before the load): policies ml_short (delete
after ML_SHORT_DAYS, default 32, so that the month the load writes into is
never a retention candidate, whatever the day of the month) and ml_archive
(archive after ML_SHORT_DAYS, keep 100 years); 24 monthly partitions 3 to 1
years back: every other month holds only ml_short rows (dropped whole), the
others also hold kept ('standard') and ml_archive rows (expired rows deleted,
ml_archive rows archived); rows of 6 older months without a partition sit in
the default partition (sealed there, so moving them records relocations).

Then ML_ROUNDS (default 1) rounds of: plain point (ML_CLIENTS=32 clients,
ML_SECONDS into ref.audit_log, worker maintenance at its default interval, so
none), then audit point (the same into audit.audit_log; one second in,
audit_db.maintenance_interval = 1 by ALTER SYSTEM + reload, and a side
connection feeds maintenance work every ML_FEED_EVERY (2) seconds: ml_short
and ml_archive rows into a month that has a partition with kept rows, and
ml_short rows into a month far back without a partition, which lands in the
default partition, is moved into a new partition, sealed, and that partition
dropped by retention). pgbench writes a per-transaction log (--log).

Asserts:
  0. setup: an audit_db worker serves the database; the setup rows are sealed
     and audit.verify() is clean before the load;
  1. every pgbench run exits 0, no client aborted, "number of failed
     transactions: 0", and the transactions it processed all appear in its
     per-transaction log with a latency (none failed or skipped);
  2. the side connection's inserts all succeeded;
  3. no deadlock: pg_stat_database.deadlocks did not grow, no maintenance run
     recorded one, and the server log (ML_SERVER_LOG, else pg_current_logfile(),
     else data_directory/../server.log as test/lib/cluster.sh writes it; skipped
     with a line when none is readable) has no "deadlock detected" from the load;
  4. the worker ran maintenance at least ML_SECONDS/2 times during each audit
     point, and runs after the point's first one dropped a partition, deleted
     expired rows and moved rows out of the default partition (the fed work is
     done during the load, not only the setup backlog);
  5. every maintenance run of the audit points ended 'done', or 'errors' with
     only lock timeouts (SQLSTATE 55P03, "canceling statement due to lock
     timeout"; expected under load, the next run retries; they are counted);
  6. after the load, at most 3 CALL audit.run_maintenance() leave nothing in
     the default partition and nothing but 'keep' in audit.retention_plan();
     everything seals and audit.verify() returns no row.
Reports ("#" lines, never failed on): tps plain and audit and their ratio
(target >= 0.95; ML_BASELINE=1 adds an audit point without maintenance, to
tell the cost of maintenance from the cost of the audit path); latency
p50/p99/max of each point (each client's first transaction, which includes its
connection warm-up, left out). The stall due to maintenance (target < 100 ms):
the one step that locks inserts out is a partition drop (ACCESS EXCLUSIVE on
audit.audit_log, held while its retention_partition block is sealed), so at
the sealed_at of every such block of the point it reports how long no insert
committed around it (all clients paused) and the longest insert in flight;
as upper bounds that include the CPU queueing of 32 clients on few cores, the
longest insert overlapping a maintenance run (per run, from maintenance_run
started_at/finished_at against pgbench's log timestamps; also without the
first run, which works off the setup backlog), latency percentiles of inserts
during runs and outside them, and the plain point's longest and p99.9 for
comparison. Also: the maintenance runs (count, duration, partitions created
and dropped, rows moved, removed, archived, lock timeouts), checkpoints during
a point, the CPU other processes on the machine used during each point (from
/proc: a busy machine makes the ratio meaningless) and the CPU of the
database's audit_db worker (sealing and maintenance), and the cost of one retention summary of the month the load wrote
(what every run would pay with a policy shorter than the day of the month).

Environment: ML_SECONDS (60; the acceptance figure is 300), ML_CLIENTS (32),
ML_JOBS (2), ML_ROUNDS (1), ML_FEED_EVERY (2 s), ML_SHORT_DAYS (32), ML_BASELINE,
ML_REF_DIR (../shared/bench beside the repository root), ML_SERVER_LOG,
ML_KEEP=1 keeps the scratch directory with the pgbench logs.
audit_db.maintenance_interval is reset (ALTER SYSTEM RESET + reload) at the end
even when a check fails, and the ref schema dropped. Needs Debian's
python3-psycopg. Last line: "maintenance_load: N passed, M failed"; exit
status 1 if anything failed.
"""
import bisect
import datetime
import glob
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
from testkit import log_since, log_size, find_server_log as testkit_find_server_log, Results, info, q1, seal_all, set_setting, wait_for, wait_worker_maintenance, psycopg as _load_psycopg  # noqa: E402

psycopg = _load_psycopg()
from psycopg import sql  # noqa: E402

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SECONDS = int(os.environ.get("ML_SECONDS", "60"))
CLIENTS = int(os.environ.get("ML_CLIENTS", "32"))
JOBS = int(os.environ.get("ML_JOBS", "2"))
ROUNDS = int(os.environ.get("ML_ROUNDS", "1"))
FEED_EVERY = float(os.environ.get("ML_FEED_EVERY", "2"))
SHORT_DAYS = int(os.environ.get("ML_SHORT_DAYS", "32"))
REF_DIR = os.environ.get("ML_REF_DIR", os.path.join(REPO_ROOT, "..", "shared", "bench"))
SERVER_LOG = os.environ.get("ML_SERVER_LOG")
KEEP = os.environ.get("ML_KEEP") == "1"
BASELINE = os.environ.get("ML_BASELINE") == "1"
STALL_TARGET_MS = 100.0
RATIO_TARGET = 0.95

UTC = datetime.timezone.utc
OLD_MONTHS = 24          # partitions 36 .. 13 months back
ROWS_SHORT = 1000        # ml_short rows per old month
ROWS_KEPT = 200          # 'standard' and ml_archive rows per odd old month
DEFAULT_MONTHS = 6       # months 42 .. 37 back, no partition: rows in the default partition
FEED_MONTHS = 48         # months 120 .. 73 back, no partition: the feeder's drop path

# Used only when ../shared/bench is missing: copies of the reference files.
FALLBACK_SCHEMA = r"""
DROP SCHEMA IF EXISTS ref CASCADE;
CREATE SCHEMA ref;
CREATE TABLE ref.audit_log (
  id bigserial,
  "timestamp" timestamptz NOT NULL DEFAULT now(),
  principal_id varchar(255), organization_id varchar(255),
  action varchar(255) NOT NULL, target_resource_type varchar(255), target_resource_id varchar(255),
  status varchar(50) NOT NULL, outcome_description text,
  hash varchar(64), prev_hash varchar(64), hash_algorithm varchar(50) DEFAULT 'SHA-256',
  event_version varchar(20) DEFAULT '1.0', correlation_id varchar(255),
  data_classification varchar(20) DEFAULT 'INTERNAL', retention_policy varchar(50) DEFAULT 'standard',
  processing_latency integer, archived_at timestamptz, details jsonb
) PARTITION BY RANGE ("timestamp");
DO $$ DECLARE m date := date_trunc('month', now())::date - interval '1 month'; BEGIN
  FOR i IN 0..7 LOOP
    EXECUTE format('CREATE TABLE ref.audit_log_%s PARTITION OF ref.audit_log FOR VALUES FROM (%L) TO (%L)',
      to_char(m + make_interval(months=>i), 'YYYY_MM'), m + make_interval(months=>i), m + make_interval(months=>i+1));
  END LOOP; END $$;
CREATE INDEX ON ref.audit_log (organization_id, "timestamp");
CREATE INDEX ON ref.audit_log (principal_id, action);
CREATE INDEX ON ref.audit_log (correlation_id);
"""
FALLBACK_INSERT = (
    "\\set org random(1, 100)\n"
    "\\set p random(1, 10000)\n"
    "INSERT INTO ref.audit_log (\"timestamp\", principal_id, organization_id, action, target_resource_type, "
    "target_resource_id, status, correlation_id, data_classification, details) VALUES (now(), 'user-' || :p, "
    "'org-' || :org, 'patient_data_access', 'patient_record', 'patient-' || :p, 'success', md5(:p::text || :org), "
    "'PHI', jsonb_build_object('ip', '10.0.0.1', 'fields', jsonb_build_array('name', 'dob', 'medical_history'), "
    "'session', md5(:p::text)));\n")

LOCK_TIMEOUT_RE = re.compile(r"lock timeout", re.I)


# ---------------------------------------------------------------- helpers

def connect(**kw):
    args = dict(autocommit=True, application_name="maintenance-load-test")
    args.update(kw)
    return psycopg.connect(**args)


def month_start(now, back):
    """First day (UTC) of the month `back` months before the month of now."""
    m = now.year * 12 + (now.month - 1) - back
    return datetime.datetime(m // 12, m % 12 + 1, 1, tzinfo=UTC)


def pct(values, p):
    if not values:
        return float("nan")
    k = min(len(values) - 1, max(0, int(round(p / 100.0 * (len(values) - 1)))))
    return values[k]


def server_now(conn):
    return float(q1(conn, "SELECT extract(epoch FROM clock_timestamp())"))


def find_server_log(conn):
    """(path, how) of a readable server log, or (None, why not)."""
    return testkit_find_server_log(conn, SERVER_LOG, "ML_SERVER_LOG")


class CpuMeter:
    """CPU time used on this machine by other processes than this cluster,
    this script and its pgbench (other sessions' builds and servers), to
    tell a noisy measurement. Reads /proc; None when it cannot."""

    def __init__(self, conn):
        self.tick = os.sysconf("SC_CLK_TCK")
        try:
            self.postmaster = self._stat(q1(conn, "SELECT pg_backend_pid()"))[0]
            self.ok = self.postmaster > 1 and self._stat(self.postmaster) is not None
        except Exception:  # noqa: BLE001 - no /proc, another host: no figure
            self.ok = False

    @staticmethod
    def _stat(pid):
        """(ppid, utime + stime, cutime + cstime) in ticks, or None."""
        try:
            with open("/proc/%s/stat" % pid) as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            return None
        return int(fields[1]), int(fields[11]) + int(fields[12]), int(fields[13]) + int(fields[14])

    def sample(self):
        if not self.ok:
            return None
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        busy = v[0] + v[1] + v[2] + v[5] + v[6] + (v[7] if len(v) > 7 else 0)
        mine = 0
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            st = self._stat(name)
            if st is None:
                continue
            if int(name) == self.postmaster:
                mine += st[1] + st[2]        # exited children (backends) are reaped into cutime
            elif st[0] == self.postmaster:
                mine += st[1]
        t = os.times()
        me = (t.user + t.system + t.children_user + t.children_system) * self.tick
        return time.monotonic(), busy, mine + me

    def process(self, pid):
        """(monotonic time, CPU ticks) of one process, or None."""
        st = self._stat(pid) if self.ok and pid else None
        return None if st is None else (time.monotonic(), st[1])

    def cores(self, a, b):
        """Cores' worth of CPU one process used between process() samples a and b."""
        if a is None or b is None or b[0] <= a[0]:
            return None
        return (b[1] - a[1]) / self.tick / (b[0] - a[0])

    def foreign(self, a, b):
        """Cores' worth of CPU other processes used between samples a and b."""
        if a is None or b is None or b[0] <= a[0]:
            return None
        return max(0.0, ((b[1] - a[1]) - (b[2] - a[2])) / self.tick / (b[0] - a[0]))


# ---------------------------------------------------------------- workload

def load_reference(admin, work):
    """Create ref.audit_log; return (plain script, audit script) paths."""
    schema_file = os.path.join(REF_DIR, "reference_schema.sql")
    insert_file = os.path.join(REF_DIR, "insert.pgbench")
    if os.path.isfile(schema_file) and os.path.isfile(insert_file):
        with open(schema_file) as f:
            schema = f.read()
        with open(insert_file) as f:
            script = f.read()
        info("reference workload: %s" % os.path.realpath(REF_DIR))
    else:
        schema, script = FALLBACK_SCHEMA, FALLBACK_INSERT
        info("reference workload NOT found in %s: using this file's copy of reference_schema.sql and insert.pgbench"
             % REF_DIR)
    admin.execute("SET client_min_messages = warning")
    admin.execute(schema)
    admin.execute("RESET client_min_messages")
    if "ref.audit_log" not in script:
        raise RuntimeError("insert.pgbench does not write ref.audit_log")
    plain = os.path.join(work, "plain.pgbench")
    audit = os.path.join(work, "audit.pgbench")
    with open(plain, "w") as f:
        f.write(script)
    with open(audit, "w") as f:
        f.write(script.replace("ref.audit_log", "audit.audit_log"))
    return plain, audit


def insert_rows(conn, start, end, n, policy, classification="INTERNAL", action="ml.setup"):
    """n rows spread evenly over [start, end)."""
    conn.execute("INSERT INTO audit.audit_log (\"timestamp\", principal_id, organization_id, action, status,"
                 " data_classification, retention_policy, details)"
                 " SELECT %(s)s + (g - 0.5) * ((%(e)s::timestamptz - %(s)s::timestamptz) / %(n)s), 'user-' || g,"
                 " 'org-' || (g %% 7), %(a)s, 'success', %(c)s, %(p)s, jsonb_build_object('g', g)"
                 " FROM generate_series(1, %(n)s) g",
                 dict(s=start, e=end, n=n, p=policy, c=classification, a=action))


def setup(admin, res, now):
    admin.execute("SET client_min_messages = warning")
    admin.execute("DROP EXTENSION IF EXISTS audit_db CASCADE")
    admin.execute("RESET client_min_messages")
    admin.execute("CREATE EXTENSION audit_db")
    worker, secs = wait_for(lambda: q1(admin, "SELECT count(*) FROM pg_stat_activity WHERE backend_type ="
                                              " 'audit_db worker' AND datname = current_database()"), 30)
    if not res.check(worker, "setup: an audit_db worker serves this database (%.1f s)" % secs,
                     "audit_db must be in shared_preload_libraries"):
        raise RuntimeError("no audit_db worker: nothing to measure")
    wait_worker_maintenance(admin)
    admin.execute("INSERT INTO audit.audit_retention_policy (policy_name, retention_days, archive_after_days)"
                  " VALUES ('ml_short', %s, NULL), ('ml_archive', 36500, %s)", (SHORT_DAYS, SHORT_DAYS))
    first = month_start(now, 36)
    admin.execute("SELECT count(*) FROM audit.create_partitions(%s, %s)", (OLD_MONTHS - 1, first))
    for i in range(OLD_MONTHS):
        a, b = month_start(now, 36 - i), month_start(now, 35 - i)
        insert_rows(admin, a, b, ROWS_SHORT, "ml_short")
        if i % 2 == 1:
            insert_rows(admin, a, b, ROWS_KEPT, "standard")
            insert_rows(admin, a, b, ROWS_KEPT, "ml_archive", "CONFIDENTIAL")
    for i in range(DEFAULT_MONTHS):
        a, b = month_start(now, 42 - i), month_start(now, 41 - i)
        insert_rows(admin, a, b, 50, "ml_short")
        if i % 3 == 0:
            insert_rows(admin, a, b, 10, "standard")
    in_default = q1(admin, "SELECT count(*) FROM audit.audit_log_default")
    sealed = seal_all(admin)
    problems = q1(admin, "SELECT count(*) FROM audit.verify()")
    total = q1(admin, "SELECT count(*) FROM audit.audit_log")
    plan = dict(admin.execute("SELECT action, count(DISTINCT partition) FROM audit.retention_plan()"
                              " GROUP BY 1").fetchall())
    info("setup: %d rows (%d in the default partition), %d old partitions; retention plan now: %s"
         % (total, in_default, OLD_MONTHS, plan))
    res.check(sealed and problems == 0 and in_default == DEFAULT_MONTHS * 50 + 2 * 10,
              "setup: %d rows sealed, %d of them in the default partition, verify clean" % (total, in_default),
              "sealed=%s problems=%s in_default=%s" % (sealed, problems, in_default))


class Feeder(threading.Thread):
    """Every FEED_EVERY seconds: expired rows into a kept month (deleted /
    archived by retention) and into a month without a partition (moved out of
    the default partition, then its partition dropped)."""

    def __init__(self, now, cycle0):
        super().__init__(daemon=True)
        self.now = now
        self.cycle = cycle0
        self.stop = threading.Event()
        self.cycles = 0
        self.rows = 0
        self.errors = []

    def run(self):
        try:
            conn = connect(application_name="maintenance-load-feeder")
        except Exception as e:  # noqa: BLE001
            self.errors.append("connect: %s" % e)
            return
        with conn:
            while not self.stop.is_set():
                k = self.cycle
                self.cycle += 1
                kept = 36 - (2 * (k % (OLD_MONTHS // 2)) + 1)        # an odd old month: has kept rows
                feed = 120 - (k % FEED_MONTHS)                       # a month far back, no partition
                try:
                    a, b = month_start(self.now, kept), month_start(self.now, kept - 1)
                    insert_rows(conn, a, b, 3, "ml_short", action="ml.feed")
                    insert_rows(conn, a, b, 2, "ml_archive", "CONFIDENTIAL", action="ml.feed")
                    a, b = month_start(self.now, feed), month_start(self.now, feed - 1)
                    insert_rows(conn, a, b, 3, "ml_short", action="ml.feed")
                    self.rows += 8
                    self.cycles += 1
                except Exception as e:  # noqa: BLE001 - reported by a check
                    self.errors.append("%s: %s" % (getattr(e, "sqlstate", None) or type(e).__name__, e))
                self.stop.wait(FEED_EVERY)


# ---------------------------------------------------------------- pgbench

def run_pgbench(script, prefix):
    """Start pgbench for SECONDS; return (process, epoch start)."""
    cmd = [PGBENCH, "-n", "-c", str(CLIENTS), "-j", str(JOBS), "-T", str(SECONDS),
           "--log", "--log-prefix=" + prefix, "-f", script]
    t0 = time.time()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         cwd=os.path.dirname(prefix))
    return p, t0


def pgbench_summary(out):
    processed = re.search(r"number of transactions actually processed: (\d+)", out)
    failed = re.search(r"number of failed transactions: (\d+)", out)
    tps = re.search(r"^tps = ([0-9.]+) \(without initial connection time\)", out, re.M)
    return (int(processed.group(1)) if processed else None,
            int(failed.group(1)) if failed else None,
            float(tps.group(1)) if tps else None)


def read_txn_log(prefix):
    """Per-transaction log lines -> (list of (start, end, latency_ms)), bad lines count.
    Each client's first transaction (connection warm-up) is kept out of the list."""
    txns = []
    bad = 0
    lines = 0
    for path in glob.glob(prefix + ".*"):
        seen = set()
        with open(path) as f:
            for line in f:
                parts = line.split()
                if len(parts) < 6:
                    continue
                lines += 1
                if not parts[2].isdigit():
                    bad += 1          # "failed" or "skipped"
                    continue
                client = parts[0]
                lat = int(parts[2]) / 1e6
                end = int(parts[4]) + int(parts[5]) / 1e6
                if client not in seen:
                    seen.add(client)
                    continue
                txns.append((end - lat, end, lat * 1000.0))
    return txns, lines, bad


# ---------------------------------------------------------------- points

def snapshot(conn):
    conn.execute("SELECT pg_stat_clear_snapshot()")
    return dict(
        deadlocks=q1(conn, "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()"),
        checkpoints=q1(conn, "SELECT checkpoints_timed + checkpoints_req FROM pg_stat_bgwriter"))


def point(res, admin, variant, script, work, rnd, now, feed_cycle, meter):
    """One pgbench point; returns a dict of what it measured."""
    prefix = os.path.join(work, "%s-r%d" % (variant, rnd))
    admin.execute("CHECKPOINT")
    before = snapshot(admin)
    s0 = server_now(admin)
    worker_pid = q1(admin, "SELECT pid FROM pg_stat_activity WHERE backend_type = 'audit_db worker'"
                           " AND datname = current_database()")
    cpu0 = meter.sample()
    wcpu0 = meter.process(worker_pid)
    p, t0 = run_pgbench(script, prefix)
    feeder = None
    if variant == "audit":
        time.sleep(1.0)
        set_setting(admin, 'audit_db.maintenance_interval', "1s")
        feeder = Feeder(now, feed_cycle)
        feeder.start()
    try:
        out, _ = p.communicate(timeout=SECONDS + 120)
    finally:
        if feeder:
            feeder.stop.set()
        if variant == "audit":
            set_setting(admin, 'audit_db.maintenance_interval', None)
    t1 = time.time()
    cpu1 = meter.sample()
    wcpu1 = meter.process(worker_pid)
    s1 = server_now(admin)
    if feeder:
        feeder.join(30)
    time.sleep(1.5)     # let the backends' statistics reach pg_stat_database
    after = snapshot(admin)
    processed, failed, tps = pgbench_summary(out)
    txns, lines, bad = read_txn_log(prefix)
    aborted = [ln for ln in out.splitlines() if "aborted" in ln or "ERROR" in ln or "FATAL" in ln]
    res.check(p.returncode == 0 and not aborted and failed == 0 and processed is not None
              and processed == lines - bad and bad == 0,
              "%s round %d: pgbench exit 0, %s transactions, none failed, all in the transaction log"
              % (variant, rnd, processed),
              "exit=%s failed=%s processed=%s log lines=%d failed/skipped in log=%d\n%s"
              % (p.returncode, failed, processed, lines, bad, "\n".join((aborted or out.splitlines())[:20])))
    lats = sorted(t[2] for t in txns)
    m = dict(variant=variant, round=rnd, tps=tps or 0.0, txns=txns, lats=lats, t0=t0, t1=t1, s0=s0, s1=s1,
             deadlocks=(after["deadlocks"] or 0) - (before["deadlocks"] or 0),
             checkpoints=(after["checkpoints"] or 0) - (before["checkpoints"] or 0), feeder=feeder,
             foreign=meter.foreign(cpu0, cpu1), worker=meter.cores(wcpu0, wcpu1))
    info("%-5s round %d: %.1f tps, latency p50 %.1f ms, p99 %.1f ms, max %.1f ms (%d transactions)%s%s%s"
         % (variant, rnd, m["tps"], pct(lats, 50), pct(lats, 99), lats[-1] if lats else float("nan"), len(lats),
            "; %d checkpoint(s) during the point" % m["checkpoints"] if m["checkpoints"] else "",
            "; other processes on the machine used %.2f of %d cores" % (m["foreign"], os.cpu_count() or 0)
            if m["foreign"] is not None else "",
            "; the audit_db worker (sealing, maintenance) %.2f" % m["worker"] if m["worker"] is not None else ""))
    return m


def maintenance_runs(admin, s0, s1):
    """Worker runs started during [s0, s1] (server epoch seconds), finished ones waited for."""
    wait_for(lambda: q1(admin, "SELECT count(*) = 0 FROM audit.maintenance_run WHERE status = 'running'"), 60)
    rows = admin.execute(
        "SELECT run_id, extract(epoch FROM started_at)::float8, extract(epoch FROM finished_at)::float8,"
        " status, actions, errors FROM audit.maintenance_run"
        " WHERE via = 'worker' AND started_at >= to_timestamp(%s) AND started_at <= to_timestamp(%s)"
        " ORDER BY started_at", (s0, s1)).fetchall()
    runs = []
    for run_id, st, fin, status, actions, errors in rows:
        a = actions if isinstance(actions, dict) else (json.loads(actions) if actions else {})
        ret = a.get("retention") or []
        runs.append(dict(id=run_id, start=st, end=fin if fin is not None else s1, status=status, actions=a,
                         errors=list(errors or []),
                         drops=sum(1 for r in ret if r.get("action") == "drop"),
                         removed=sum(int(r.get("rows", 0)) for r in ret if r.get("action") == "remove"),
                         archived=int(a.get("rows_archived", 0) or 0),
                         moved=int(a.get("rows_moved", 0) or 0),
                         created=len(a.get("partitions_created") or [])))
    return runs


def describe_run(r):
    return ("run %d (%.0f ms): %d partition(s) created, %d row(s) moved from default, %d dropped, "
            "%d row(s) deleted, %d archived, %d summarised, %d row(s) sealed%s"
            % (r["id"], (r["end"] - r["start"]) * 1000, r["created"], r["moved"], r["drops"], r["removed"],
               r["archived"], int(r["actions"].get("partitions_summarized", 0) or 0),
               int(r["actions"].get("rows_sealed", 0) or 0),
               "; errors: %s" % distinct(r["errors"]) if r["errors"] else ""))


def distinct(errors):
    """Each distinct message once, with its count."""
    counts = {}
    for e in errors:
        counts[e] = counts.get(e, 0) + 1
    return "; ".join("%s (x%d)" % (e, n) if n > 1 else e for e, n in counts.items())


def overlapping(runs, starts, s, e):
    """The run overlapping [s, e], or None (runs never overlap each other: one at a time)."""
    i = bisect.bisect_right(starts, e) - 1
    return runs[i] if i >= 0 and runs[i]["end"] >= s else None


def stalls(txns, runs):
    """Latencies of the inserts overlapping a run and of the others, the
    longest one overlapping (with its run), and the longest pause of every
    client (gap between consecutive commits) overlapping a run, and outside."""
    starts = [r["start"] for r in runs]
    during, outside = [], []
    worst_in, worst_run = 0.0, None
    for s, e, lat in txns:
        r = overlapping(runs, starts, s, e)
        if r is None:
            outside.append(lat)
        else:
            during.append(lat)
            if lat > worst_in:
                worst_in, worst_run = lat, r
    ends = sorted(t[1] for t in txns)
    gap_in, gap_run, gap_out = 0.0, None, 0.0
    for a, b in zip(ends, ends[1:]):
        g = (b - a) * 1000.0
        r = overlapping(runs, starts, a, b)
        if r is not None and g > gap_in:
            gap_in, gap_run = g, r
        elif r is None and g > gap_out:
            gap_out = g
    during.sort()
    outside.sort()
    return dict(worst_in=worst_in, worst_run=worst_run, during=during, outside=outside,
                gap_in=gap_in, gap_run=gap_run, gap_out=gap_out)


def drop_stalls(txns, drops):
    """For each partition drop (the time its retention_partition block was
    sealed, while the drop holds ACCESS EXCLUSIVE on audit.audit_log): the
    longest insert in flight then, and the pause of every client around it."""
    by_start = sorted(txns)
    starts = [t[0] for t in by_start]
    ends = sorted(t[1] for t in txns)
    out = []
    for d in drops:
        i = bisect.bisect_right(starts, d)
        inflight = [t[2] for t in by_start[bisect.bisect_left(starts, d - 30.0):i] if t[1] >= d]
        j = bisect.bisect_left(ends, d)
        pause = (ends[j] - ends[j - 1]) * 1000.0 if 0 < j < len(ends) else float("nan")
        out.append((max(inflight) if inflight else 0.0, len(inflight), pause))
    return out


def longest_gap(txns):
    ends = sorted(t[1] for t in txns)
    return max(((b - a) * 1000.0 for a, b in zip(ends, ends[1:])), default=0.0)


def random_pauses(txns, n):
    """The pause of all clients (gap between commits) around n random instants
    of a point: what a drop's pause compares with. (median, max) in ms."""
    ends = sorted(t[1] for t in txns)
    if len(ends) < 2 or n == 0:
        return float("nan"), float("nan")
    rng = random.Random(1)
    out = []
    for _ in range(n):
        t = rng.uniform(ends[0], ends[-1])
        j = max(1, bisect.bisect_left(ends, t))
        out.append((ends[j] - ends[j - 1]) * 1000.0)
    return statistics.median(out), max(out)


def check_audit_point(res, admin, m, plain, log_path, log_offset):
    rnd = m["round"]
    runs = maintenance_runs(admin, m["s0"], m["s1"])
    m["runs"] = runs
    feeder = m["feeder"]
    res.check(feeder is not None and not feeder.errors and feeder.cycles > 0,
              "audit round %d: the side connection's %d inserts of maintenance work all succeeded (%d rows)"
              % (rnd, feeder.cycles * 3, feeder.rows), "\n".join(feeder.errors[:10]))

    # Deadlocks: three sources.
    run_deadlocks = [e for r in runs for e in r["errors"] if "deadlock" in e.lower()]
    if log_path:
        text = log_since(log_path, log_offset)
        log_deadlocks = [ln for ln in text.splitlines() if "deadlock detected" in ln]
        log_what = "%d in the server log" % len(log_deadlocks)
    else:
        log_deadlocks, log_what = [], "server log not checked"
    res.check(m["deadlocks"] == 0 and not run_deadlocks and not log_deadlocks,
              "audit round %d: no deadlock (pg_stat_database +%d, maintenance runs %d, %s)"
              % (rnd, m["deadlocks"], len(run_deadlocks), log_what),
              "\n".join(run_deadlocks[:5] + log_deadlocks[:10]))

    # The worker ran, and did the fed work during the load.
    need = max(1, SECONDS // 2)
    res.check(len(runs) >= need, "audit round %d: the worker ran maintenance %d times in %d s (at least %d)"
              % (rnd, len(runs), SECONDS, need))
    later = runs[1:]
    drops = sum(r["drops"] for r in later)
    removed = sum(r["removed"] for r in later)
    moved = sum(r["moved"] for r in later)
    archived = sum(r["archived"] for r in later)
    res.check(drops > 0 and removed > 0 and moved > 0,
              "audit round %d: after the first run, runs during the load dropped %d partition(s), deleted %d "
              "expired row(s), moved %d row(s) out of the default partition (archived %d)"
              % (rnd, drops, removed, moved, archived))

    # Run outcomes.
    lock_timeouts = [e for r in runs for e in r["errors"] if LOCK_TIMEOUT_RE.search(e)]
    other = [(r["id"], e) for r in runs for e in r["errors"] if not LOCK_TIMEOUT_RE.search(e)]
    bad_status = [(r["id"], r["status"]) for r in runs if r["status"] not in ("done", "errors")
                  or (r["status"] == "errors" and not r["errors"])]
    res.check(not other and not bad_status,
              "audit round %d: every maintenance run ended 'done' or with lock timeouts only "
              "(%d 'done', %d with errors, %d of them only lock timeouts)"
              % (rnd, sum(1 for r in runs if r["status"] == "done"), sum(1 for r in runs if r["status"] == "errors"),
                 sum(1 for r in runs if r["errors"] and all(LOCK_TIMEOUT_RE.search(e) for e in r["errors"]))),
              "\n".join(["runs %s: %s" % (sorted(set(i for i, e2 in other if e2 == e)), e)
                         for e in sorted(set(e for _, e in other))][:20]
                        + ["run %s status %s" % x for x in bad_status]))

    # Report.
    if runs:
        durs = sorted((r["end"] - r["start"]) * 1000 for r in runs)
        info("audit round %d: %d maintenance runs, duration p50 %.0f ms, max %.0f ms; in all %d partition(s) created, "
             "%d row(s) moved from default, %d dropped, %d row(s) deleted, %d archived; %d lock timeout(s) in %d run(s)"
             % (rnd, len(runs), pct(durs, 50), durs[-1], sum(r["created"] for r in runs),
                sum(r["moved"] for r in runs), sum(r["drops"] for r in runs), sum(r["removed"] for r in runs),
                sum(r["archived"] for r in runs), len(lock_timeouts),
                sum(1 for r in runs if any(LOCK_TIMEOUT_RE.search(e) for e in r["errors"]))))
        info("  first %s" % describe_run(runs[0]))
        longest = max(runs, key=lambda r: r["end"] - r["start"])
        if longest is not runs[0]:
            info("  longest %s" % describe_run(longest))
        for e in sorted(set(re.sub(r"\d+", "N", e) for e in lock_timeouts))[:5]:
            info("  lock timeout: %s" % e)
    st = stalls(m["txns"], runs)
    plain_max = plain["lats"][-1] if plain and plain["lats"] else float("nan")
    plain_gap = longest_gap(plain["txns"]) if plain else float("nan")
    m["stall"] = st["worst_in"]
    m["gap"] = st["gap_in"]
    d, o = st["during"], st["outside"]
    over = sum(1 for x in d if x > STALL_TARGET_MS)
    info("audit round %d: inserts overlapping a maintenance run: %d, p50 %.1f / p99 %.1f / p99.9 %.1f / max %.1f ms;"
         " the others: %d, p50 %.1f / p99 %.1f / p99.9 %.1f / max %.1f ms; plain: p99 %.1f / p99.9 %.1f / max %.1f ms"
         % (rnd, len(d), pct(d, 50), pct(d, 99), pct(d, 99.9), st["worst_in"], len(o), pct(o, 50), pct(o, 99),
            pct(o, 99.9), o[-1] if o else float("nan"), pct(plain["lats"], 99), pct(plain["lats"], 99.9), plain_max))
    info("audit round %d: %d insert(s) over %.0f ms during runs; longest pause of all clients at once (no commit): "
         "%.1f ms during a run, %.1f ms outside runs, %.1f ms in the plain point"
         % (rnd, over, STALL_TARGET_MS, st["gap_in"], st["gap_out"], plain_gap))
    if st["worst_run"]:
        info("  the longest insert during a run overlapped %s" % describe_run(st["worst_run"]))
    if st["gap_run"] and st["gap_run"] is not st["worst_run"]:
        info("  the longest pause overlapped %s" % describe_run(st["gap_run"]))
    drops = [r[0] for r in admin.execute(
        "SELECT extract(epoch FROM sealed_at)::float8 FROM audit.audit_chain_block WHERE kind = 'retention_partition'"
        " AND sealed_at BETWEEN to_timestamp(%s) AND to_timestamp(%s) ORDER BY sealed_at", (m["s0"], m["s1"]))]
    ds = drop_stalls(m["txns"], drops)
    m["drop_stall"] = max((x[0] for x in ds), default=0.0)
    m["drop_pause"] = max((x[2] for x in ds), default=0.0)
    m["drop_pause_median"] = statistics.median(x[2] for x in ds) if ds else 0.0
    m["drops"] = len(ds)
    if ds:
        info("audit round %d: at the %d partition drops (ACCESS EXCLUSIVE on audit.audit_log): longest insert in "
             "flight %.1f ms (median of the drops' longest %.1f ms, %.0f inserts in flight on average); pause of "
             "all clients around a drop: longest %.1f ms, median %.1f ms"
             % (rnd, len(ds), m["drop_stall"], statistics.median(x[0] for x in ds),
                statistics.mean(x[1] for x in ds), max(x[2] for x in ds), statistics.median(x[2] for x in ds)))
    if len(runs) > 1:
        st2 = stalls(m["txns"], runs[1:])
        info("audit round %d: without the first run (the setup backlog): longest insert during a run %.1f ms, "
             "longest pause of all clients %.1f ms" % (rnd, st2["worst_in"], st2["gap_in"]))
        if st2["worst_run"]:
            info("  that insert overlapped %s" % describe_run(st2["worst_run"]))
        m["stall_steady"] = st2["worst_in"]
    rmed, rmax = random_pauses(plain["txns"], max(len(ds), 200)) if plain else (float("nan"), float("nan"))
    m["random_pause"] = (rmed, rmax)
    info("audit round %d: stall due to maintenance: all clients paused at most %.1f ms at a partition drop "
         "(median %.1f ms; at random instants of the plain point: median %.1f ms, max %.1f ms): target < %.0f ms %s; "
         "upper bound with CPU queueing: longest insert during a run %.1f ms (plain point's longest %.1f ms)"
         % (rnd, m["drop_pause"], m["drop_pause_median"], rmed, rmax, STALL_TARGET_MS,
            "met" if m["drop_pause"] < STALL_TARGET_MS else "NOT met", st["worst_in"], plain_max))


# ---------------------------------------------------------------- main

PGBENCH = os.path.join(subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True,
                                      check=True).stdout.strip(), "pgbench")


def main():
    res = Results()
    info("maintenance_load: %d clients, -j %d, %d s a point, %d round(s), feed every %.1f s, ml_short %d days"
         % (CLIENTS, JOBS, SECONDS, ROUNDS, FEED_EVERY, SHORT_DAYS))
    if not os.access(PGBENCH, os.X_OK):
        res.check(False, "pgbench found at %s" % PGBENCH)
        return res.finish("maintenance_load")
    work = tempfile.mkdtemp(prefix="maintenance_load.")
    admin = connect()
    points = []
    try:
        now = datetime.datetime.now(UTC)
        plain_script, audit_script = load_reference(admin, work)
        setup(admin, res, now)
        meter = CpuMeter(admin)
        log_path, how = find_server_log(admin)
        if log_path:
            info("server log: %s (%s)" % (log_path, how))
        else:
            info("server log not checked for deadlocks: %s; pg_stat_database and the runs are" % how)
        feed_cycle = 0
        for rnd in range(1, ROUNDS + 1):
            plain = point(res, admin, "plain", plain_script, work, rnd, now, 0, meter)
            points.append(plain)
            if BASELINE:
                points.append(point(res, admin, "audit_no_maintenance", audit_script, work, rnd, now, 0, meter))
            offset = log_size(log_path) if log_path else 0
            audit = point(res, admin, "audit", audit_script, work, rnd, now, feed_cycle, meter)
            points.append(audit)
            feed_cycle = audit["feeder"].cycle
            check_audit_point(res, admin, audit, plain, log_path, offset)

        # After the load: maintenance catches up, everything seals, verify is clean.
        def caught_up():
            admin.execute("CALL audit.run_maintenance()")
            return q1(admin, "SELECT NOT EXISTS (SELECT FROM audit.audit_log_default)"
                             " AND NOT EXISTS (SELECT FROM audit.retention_plan() WHERE action <> 'keep')")
        ok = False
        for _ in range(3):
            ok = caught_up()
            if ok:
                break
        left = admin.execute("SELECT partition::text, action FROM audit.retention_plan() WHERE action <> 'keep'"
                             ).fetchall()
        res.check(ok, "after the load, CALL audit.run_maintenance() leaves the default partition empty and "
                      "nothing but 'keep' in the retention plan",
                  "default rows=%s plan=%s last errors=%s" % (
                      q1(admin, "SELECT count(*) FROM audit.audit_log_default"), left,
                      q1(admin, "SELECT errors FROM audit.maintenance_run ORDER BY run_id DESC LIMIT 1")))
        sealed = seal_all(admin)
        problems = admin.execute("SELECT block_height, row_id, field, problem, detail FROM audit.verify()"
                                 ).fetchall()
        total = q1(admin, "SELECT count(*) FROM audit.audit_log")
        res.check(sealed and not problems,
                  "after the load every row is sealed and audit.verify() reports nothing (%d rows)" % total,
                  "sealed=%s problems (first 10): %s" % (sealed, problems[:10]))

        # What a retention summary of the loaded month costs (every run pays it
        # when a policy is shorter than the day of the month).
        part = q1(admin, "SELECT partition::text FROM audit.partition_bounds()"
                         " WHERE range_from <= now() AND now() < range_to")
        if part:
            n = q1(admin, sql.SQL("SELECT count(*) FROM ONLY {}").format(sql.SQL(part)))
            t = time.monotonic()
            with admin.transaction():     # rolled back: leaves no summary behind
                admin.execute("SELECT audit.refresh_retention_summary(%s::regclass)", (part,))
                raise psycopg.Rollback()
            info("one retention summary of %s (%d rows, the month the load wrote): %.0f ms"
                 % (part, n, (time.monotonic() - t) * 1000))

        # Summary.
        plains = [p for p in points if p["variant"] == "plain"]
        audits = [p for p in points if p["variant"] == "audit"]
        if plains and audits:
            tp = statistics.median(p["tps"] for p in plains)
            ta = statistics.median(p["tps"] for p in audits)
            ratio = ta / tp if tp else float("nan")
            stall = max(p.get("stall", 0.0) for p in audits)
            steady = max(p.get("stall_steady", 0.0) for p in audits)
            gap = max(p.get("gap", 0.0) for p in audits)
            dstall = max(p.get("drop_stall", 0.0) for p in audits)
            base = [p for p in points if p["variant"] == "audit_no_maintenance"]
            if base:
                tb = statistics.median(p["tps"] for p in base)
                info("summary: audit without maintenance runs %.1f tps, ratio to plain %.3f" % (tb, tb / tp))
            info("summary: plain %.1f tps, audit with maintenance every second %.1f tps, ratio %.3f (target >= %.2f: %s)"
                 % (tp, ta, ratio, RATIO_TARGET, "met" if ratio >= RATIO_TARGET else "NOT met"))
            pmax = max(p["lats"][-1] for p in plains if p["lats"])
            p999 = max(pct(p["lats"], 99.9) for p in plains)
            dpause = max(p.get("drop_pause", 0.0) for p in audits)
            dmed = statistics.median(p.get("drop_pause_median", 0.0) for p in audits)
            ndrops = sum(p.get("drops", 0) for p in audits)
            rmed = statistics.median(p["random_pause"][0] for p in audits)
            rmax = max(p["random_pause"][1] for p in audits)
            info("summary: stall due to maintenance: at the %d partition drops (the one step that locks inserts out) "
                 "no insert committed for at most %.1f ms (median %.1f ms; random instants of the plain point: median "
                 "%.1f ms, max %.1f ms): target < %.0f ms %s"
                 % (ndrops, dpause, dmed, rmed, rmax, STALL_TARGET_MS,
                    "met" if dpause < STALL_TARGET_MS else "NOT met"))
            info("summary: upper bounds, CPU queueing included: longest insert in flight at a drop %.1f ms, "
                 "overlapping any run %.1f ms (%.1f ms without the first run, which works off the setup backlog); "
                 "plain point: longest %.1f ms, p99.9 %.1f ms; longest pause of all clients during a run %.1f ms; "
                 "target < %.0f ms %s"
                 % (dstall, stall, steady, pmax, p999, gap, STALL_TARGET_MS,
                    "met" if stall < STALL_TARGET_MS else "NOT met"))
            info("summary: maintenance runs per audit point: %s"
                 % ", ".join(str(len(p.get("runs", []))) for p in audits))
    except Exception as e:  # noqa: BLE001 - a failure, not a crash
        res.check(False, "the test ran to its end", "%s: %s" % (type(e).__name__, e))
    finally:
        try:
            set_setting(admin, 'audit_db.maintenance_interval', None)
            info("audit_db.maintenance_interval reset")
        except Exception as e:  # noqa: BLE001
            info("could not reset audit_db.maintenance_interval: %s" % e)
        try:
            admin.execute("SET client_min_messages = warning")
            admin.execute("DROP SCHEMA IF EXISTS ref CASCADE")
        except Exception as e:  # noqa: BLE001
            info("could not drop schema ref: %s" % e)
        admin.close()
        if KEEP:
            info("kept %s" % work)
        else:
            shutil.rmtree(work, ignore_errors=True)
    return res.finish("maintenance_load")


if __name__ == "__main__":
    sys.exit(main())
