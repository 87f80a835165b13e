#!/usr/bin/env python3
"""test/soak.py: a bounded soak test (part of issue 9): everything audit_db
does, at once, for a while, then an exact account of what is in the log.

Duration: AUDIT_DB_SOAK_SECONDS (default 60, so that test/run stays fast).
The full soak is AUDIT_DB_SOAK_SECONDS=1800 (30 minutes):

    PGDATABASE=t_soak AUDIT_DB_SOAK_SECONDS=1800 /usr/bin/python3 test/soak.py

Runs in the test database (PGDATABASE; it drops and recreates the extension
there: the whole-log counts need a log of its own) as a superuser through the
libpq environment (PGHOST, PGPORT, PGUSER), with audit_db preloaded (its
database worker seals). Needs Debian's python3-psycopg.

For the duration, each loop a thread with a connection of its own:

  writers (AUDIT_DB_SOAK_WRITERS, 4): transactions of 1 to 5 events through
      audit.log_event(), single-row and multi-row INSERT ... RETURNING id, in
      5 organizations and none; every event carries its writer and a per-
      writer sequence number in details. About 8% of transactions are rolled
      back, 10% roll back a savepoint holding 1 to 3 more events, 3% try an
      event with a bad status in a savepoint (refused with 23514: the one
      error a writer expects), 2% stay open 0.3 to 1.5 s. Most events are
      written now; about 2% in 1990-1999 and 0.5% 3 to 5 years ahead (no
      partition: they land in the default partition and maintenance moves
      them into a new one); about 1% under the retention policy soak_expire
      (30 days; in 1985-1986, months maintenance drops whole, and in the
      1990s, where it deletes rows) and 0.5% under soak_archive (archived
      after 30 days). Events name data subjects as a principal, a target, in
      a description, or as a value, key or nested string of details: 200
      stable subjects (soak_s0000 ...) and one erasure subject at a time
      (soak_x0000, then soak_x0001 ...: ~12% of the events of kept policy).
      Each writer records the id of every event it committed or rolled back.
  maintenance: CALL audit.run_maintenance() (what the worker runs), again
      and again, 0.5 s apart.
  reports: audit.generate_report() of every built-in template, json and csv,
      with and without criteria and organization, and audit.run_report() of
      a schedule of each (runner worker, due once a year, so only these
      calls run them); a json report must parse and count its rows, a csv
      one start with the template's columns, a stored execution must have
      succeeded, and the integrity report must be clean.
  gdpr: audit.pseudonymize() of stable subjects soak_s0000 ... soak_s0039
      (hash, token and encryption in turn; only a subject some event
      committed since its last pseudonymization names as is: with the token
      and encryption strategies a subject whose events all carry pseudonyms
      already is refused with P0002), audit.export_subject() (json,
      csv, xml; every event leaf_intact and not 'modified', and at least the
      events committed naming the subject before the call),
      audit.original_id() of a pseudonym (must give the subject back); and
      every AUDIT_DB_SOAK_ERASE_EVERY seconds (default SECONDS/3, between 20
      and 120) an erasure: the writers move on to the next erasure subject,
      the loop waits until each writer has ended its transactions naming the
      old one, and audit.erase_subject() erases it; halfway through each
      erasure subject's life it is pseudonymized (hash), exported and looked
      up first. rows_erased and rows_kept must be exactly the committed
      events naming it (kept: FINANCIAL, and the gdpr.* events naming it or
      its pseudonym). A redaction that meets a row maintenance moved or
      deleted under it fails with 40001 ("retry"): expected, retried.
  verify: audit.verify() in a loop: since_last => true (incremental) mostly,
      the whole log every 4th run, one organization and one time range in
      turn; every run must report nothing. A digest (audit.digest()) is
      taken after each run; a sample of them must still verify at the end.
  monitor: one long-lived connection: its backend pid,
      pg_postmaster_start_time(), audit.chain_status (seal lag), the audit_db
      worker's pid, every second.

Before the load, one event (soak.setup) is logged and sealed: until a first
block exists, audit.verify() reports a committed row whose event time is over
audit_db.unsealed_grace old as 'unsealed' even if it committed a moment ago
(backdated events, as the writers log), before the worker's first seal run.

Then the load stops and it asserts:
  - every loop ran without an error it did not expect (each loop's
    unexpected errors are shown); no loop hung;
  - the server did not crash: the monitor connection still answers with the
    same backend pid, pg_postmaster_start_time() is unchanged, and (when the
    server log is readable: AUDIT_DB_SOAK_SERVER_LOG, pg_current_logfile()
    or data_directory/../server.log) no crash line ("terminated by signal",
    PANIC, TRAP) in it since the start, and no ERROR from the test's
    backends or the database's worker other than the errors the loops
    expected; pg_stat_database.deadlocks did not grow;
  - every maintenance run ended 'done', or 'errors' with lock timeouts only
    (expected under load, the next run retries);
  - after maintenance catches up (default partition empty, retention plan
    all 'keep') and everything is sealed: no unsealed row, the rows ever
    sealed (chain_status.rows_sealed) = count(*) of the log + the rows that
    retention blocks removed or archived, audit.verify() over the whole log
    returns no row, and the digests taken during the load still verify;
  - the log holds exactly: every committed event of kept policy (by id, once,
    with its writer, sequence number, action and organization; erased ones
    with no details, others with theirs), no rolled-back event, nothing else
    but the extension's own events, counted by action prefix: gdpr.*
    (gdpr.pseudonymize, gdpr.export, gdpr.original_id, gdpr.erase, exactly
    the successful calls) and no other reserved prefix; the count per
    organization equals the committed events per organization; the events
    of soak_expire are gone, and the retention blocks account for exactly
    that many rows; the events of soak_archive are in archive_rows blocks,
    exactly, and the archive holds that many rows;
  - audit.redaction_request has one row per successful pseudonymization and
    erasure;
  - no erased subject, nor any of its pseudonyms, appears anywhere in any
    row of audit.audit_log.
Reports ("#" lines): each loop's throughput (operations and rows per second,
durations), seal lag, verify cost per kind, maintenance work.

Environment: AUDIT_DB_SOAK_SECONDS (60), AUDIT_DB_SOAK_WRITERS (4),
AUDIT_DB_SOAK_ERASE_EVERY (SECONDS/3, 20..120), AUDIT_DB_SOAK_SEED (9009),
AUDIT_DB_SOAK_SERVER_LOG. Last line: "soak: N passed, M failed"; exit status
1 if anything failed.
"""
import array
import collections
import csv
import datetime
import io
import json
import os
import random
import re
import sys
import threading
import time
import xml.etree.ElementTree as ET

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
from testkit import log_since, log_size, find_server_log as testkit_find_server_log, Results, info, q1, seal_all, wait_for, wait_worker_maintenance, psycopg as _load_psycopg  # noqa: E402

psycopg = _load_psycopg()
from psycopg.types.json import Jsonb  # noqa: E402

SECONDS = float(os.environ.get("AUDIT_DB_SOAK_SECONDS", "60"))
WRITERS = int(os.environ.get("AUDIT_DB_SOAK_WRITERS", "4"))
ERASE_EVERY = float(os.environ.get("AUDIT_DB_SOAK_ERASE_EVERY") or min(120.0, max(20.0, SECONDS / 3)))
SEED = int(os.environ.get("AUDIT_DB_SOAK_SEED", "9009"))
SERVER_LOG = os.environ.get("AUDIT_DB_SOAK_SERVER_LOG")

RUN = os.urandom(4).hex()
UTC = datetime.timezone.utc
ORGS = ["soak-org-%d" % i for i in range(5)] + [None]
ACTIONS = ["soak.login", "soak.read", "soak.update", "soak.export", "soak.auth.check"]
STATUSES = ["success", "success", "success", "attempt", "failure"]
CLASSES = ["INTERNAL", "INTERNAL", "PHI", "PHI", "PHI", "CONFIDENTIAL", "PUBLIC", "FINANCIAL"]
N_SUBJECTS = 200          # stable subjects soak_s0000 ...
N_PSEUDO = 40             # the ones the gdpr loop pseudonymizes
PLACES = ["principal", "principal", "target", "description", "details_value", "details_key", "details_nested"]
ENC_KEY = "soak test passphrase, long enough"

KIND_KEPT, KIND_EXPIRE, KIND_ARCHIVE = 0, 1, 2
P_OLD, P_EXPIRE, P_ARCHIVE, P_FUTURE = 0.02, 0.01, 0.005, 0.005
P_X, P_S = 0.12, 0.60     # a row names the erasure subject / a stable subject
ROLLBACK_PROB, SAVEPOINT_PROB, BAD_PROB, HOLD_PROB = 0.08, 0.10, 0.03, 0.02
MAINT_PAUSE, GDPR_PAUSE, REPORT_PAUSE, VERIFY_PAUSE = 0.5, 0.3, 0.2, 0.2
ERASE_RETRIES = 30
MAX_ERRORS_KEPT = 50

LOCK_TIMEOUT_RE = re.compile(r"lock timeout", re.I)
CRASH_RE = re.compile(r"terminated by signal|was terminated by exception|PANIC:|TRAP:|server process .* exited with "
                      r"exit code|all server processes terminated|database system was interrupted")
LOG_LINE_RE = re.compile(r"\[(\d+)\] (ERROR|FATAL|PANIC):  (.*)$")


def sname(i):
    return "soak_s%04d" % i


def xname(g):
    return "soak_x%04d" % g


def pct(values, p):
    if not values:
        return float("nan")
    v = sorted(values)
    return v[min(len(v) - 1, max(0, int(round(p / 100.0 * (len(v) - 1)))))]


def connect(name):
    return psycopg.connect(autocommit=True, application_name="soak-" + name)


# ---------------------------------------------------------------- shared state

class Ctx:
    def __init__(self):
        self.stop = threading.Event()
        self.t0 = None
        self.deadline = None
        self.xgen = 0                      # the erasure subject writers name now
        self.lock = threading.Lock()
        self.expected_messages = set()     # server-log ERROR messages a loop expected
        self.pids = set()                  # backend pids of every connection of the test
        self.gdpr_calls = collections.Counter()   # successful calls by gdpr.* action
        self.redactions = 0                # successful pseudonymize + erase calls
        self.erased = []                   # (generation, subject, [pseudonyms], rows_erased, rows_kept)
        self.writers = []

    def expect(self, e):
        msg = getattr(getattr(e, "diag", None), "message_primary", None) or str(e).splitlines()[0]
        with self.lock:
            self.expected_messages.add(msg)

    def committed_naming_subject(self, s):
        return sum(w.subject_rows[s] for w in self.writers)


class Loop(threading.Thread):
    """One loop: a connection of its own, iterations until the load stops;
    errors it does not expect are kept (and counted)."""

    def __init__(self, ctx, name, seed):
        super().__init__(name="soak-" + name, daemon=True)
        self.ctx = ctx
        self.lname = name
        self.rnd = random.Random(seed)
        self.conn = None
        self.pid = None
        self.ops = 0
        self.busy = 0.0
        self.errors = []
        self.n_errors = 0
        self.expected = collections.Counter()   # SQLSTATE -> count
        self.durations = collections.defaultdict(list)
        self.started = threading.Event()
        self.finished_at = None

    def unexpected(self, what):
        self.n_errors += 1
        if len(self.errors) < MAX_ERRORS_KEPT:
            self.errors.append("%.1f s: %s" % (time.monotonic() - (self.ctx.t0 or time.monotonic()), what))

    def expected_error(self, e):
        self.expected[e.sqlstate or type(e).__name__] += 1
        self.ctx.expect(e)

    def setup(self):
        pass

    def iteration(self):
        raise NotImplementedError

    def pause(self, seconds):
        self.ctx.stop.wait(seconds)

    def run(self):
        try:
            self.conn = connect(self.lname)
            self.pid = self.conn.info.backend_pid
            with self.ctx.lock:
                self.ctx.pids.add(self.pid)
            self.setup()
        except Exception as e:  # noqa: BLE001
            self.unexpected("setup: %s: %s" % (type(e).__name__, e))
            self.started.set()
            return
        self.started.set()
        while not self.ctx.stop.is_set():
            t = time.monotonic()
            try:
                self.iteration()
            except psycopg.Error as e:
                self.unexpected("%s [%s]: %s" % (type(e).__name__, e.sqlstate, str(e).strip()))
                if self.conn.closed or self.conn.broken:
                    self.unexpected("the connection is lost; the loop stops")
                    break
                try:
                    self.conn.execute("ROLLBACK")
                except psycopg.Error:
                    pass
            except Exception as e:  # noqa: BLE001 - a bug of the test or a wrong result
                self.unexpected("%s: %s" % (type(e).__name__, e))
            self.busy += time.monotonic() - t
        self.finished_at = time.monotonic()
        try:
            self.conn.close()
        except psycopg.Error:
            pass


# ---------------------------------------------------------------- writers

COLS = ('"timestamp", principal_id, organization_id, action, target_resource_type, target_resource_id, status,'
        ' outcome_description, data_classification, retention_policy, processing_latency, correlation_id, details')
ROW_PLACEHOLDER = "(coalesce(%s::timestamptz, now()), %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
INSERT_ONE = "INSERT INTO audit.audit_log (" + COLS + ") VALUES " + ROW_PLACEHOLDER + " RETURNING id"
LOG_EVENT = ("SELECT audit.log_event(event_time => %s, principal_id => %s, organization_id => %s, action => %s,"
             " target_resource_type => %s, target_resource_id => %s, status => %s, outcome_description => %s,"
             " data_classification => %s, retention_policy => %s, processing_latency => %s,"
             " correlation_id => %s, details => %s)")


class Row:
    __slots__ = ("seq", "orgi", "kind", "xgen", "fin", "subj", "acti", "params", "id")


class Writer(Loop):
    def __init__(self, ctx, wid):
        super().__init__(ctx, "writer-%d" % wid, SEED * 100 + wid)
        self.wid = wid
        self.seq = 0
        self.safe_gen = -1                 # every transaction begun before ctx.xgen reached this ended
        # committed rows, one entry each
        self.c_id = array.array("q")
        self.c_seq = array.array("q")
        self.c_org = array.array("b")
        self.c_kind = array.array("b")
        self.c_xgen = array.array("l")
        self.c_fin = array.array("b")
        self.c_act = array.array("b")
        self.rolled_back = array.array("q")
        self.ambiguous = array.array("q")  # COMMIT failed: fate unknown
        self.subject_rows = [0] * N_SUBJECTS        # committed kept-policy rows naming each stable subject
        self.xrows = collections.Counter()          # (generation, financial) -> committed rows naming it
        self.stats = collections.Counter()

    def old_ts(self, years):
        y = self.rnd.choice(years)
        m = self.rnd.randint(1, 12)
        d = self.rnd.randint(1, 28)
        return datetime.datetime(y, m, d, self.rnd.randint(0, 23), self.rnd.randint(0, 59), tzinfo=UTC)

    def make_row(self, g):
        rnd = self.rnd
        r = Row()
        r.id = None
        r.seq = self.seq
        self.seq += 1
        u = rnd.random()
        policy = "standard"
        ts = None
        r.kind = KIND_KEPT
        if u < P_OLD:
            ts = self.old_ts(range(1990, 2000))
            self.stats["rows_old"] += 1
        elif u < P_OLD + P_EXPIRE:
            r.kind = KIND_EXPIRE
            policy = "soak_expire"
            ts = self.old_ts((1985, 1986) if rnd.random() < 0.5 else range(1990, 2000))
        elif u < P_OLD + P_EXPIRE + P_ARCHIVE:
            r.kind = KIND_ARCHIVE
            policy = "soak_archive"
            ts = self.old_ts(range(1990, 2000))
        elif u < P_OLD + P_EXPIRE + P_ARCHIVE + P_FUTURE:
            ts = datetime.datetime.now(UTC) + datetime.timedelta(days=rnd.randint(3 * 366, 5 * 365))
            self.stats["rows_future"] += 1
        r.orgi = 5 if rnd.random() < 0.05 else rnd.randrange(5)
        r.acti = rnd.randrange(len(ACTIONS))
        cls = rnd.choice(CLASSES)
        r.fin = 1 if cls == "FINANCIAL" else 0
        r.xgen = -1
        r.subj = -1
        v = rnd.random()
        subj = None
        if r.kind == KIND_KEPT and v < P_X:
            r.xgen = g
            subj = xname(g)
        elif v < P_X + P_S:
            r.subj = rnd.randrange(N_SUBJECTS)
            subj = sname(r.subj)
        place = rnd.choice(PLACES) if subj else None
        details = {"run": RUN, "w": self.wid, "seq": r.seq, "n": rnd.randrange(1000)}
        if rnd.random() < 0.01:
            # Incompressible and over 2 kB: stored out of line (TOAST).
            details["note"] = "%x" % rnd.getrandbits(4 * rnd.randint(2500, 6000))
        elif rnd.random() < 0.5:
            details["note"] = "x" * rnd.randrange(0, 120)
        if place == "details_value":
            details["subject"] = subj
        elif place == "details_key":
            details[subj] = {"seen": True}
        elif place == "details_nested":
            details["who"] = {"list": ["someone", subj], "n": 2}
        r.params = (ts,
                    subj if place == "principal" else "svc-%d" % self.wid,
                    ORGS[r.orgi],
                    ACTIONS[r.acti],
                    "record",
                    subj if place == "target" else "doc-%d" % rnd.randrange(100000),
                    rnd.choice(STATUSES),
                    ("seen by %s, ok" % subj) if place == "description" else rnd.choice((None, "ok")),
                    cls,
                    policy,
                    rnd.randrange(0, 500),
                    "corr-%d" % rnd.randrange(10 ** 6),
                    Jsonb(details))
        return r

    def write(self, rows):
        how = self.rnd.choice(("log_event", "insert", "multi")) if len(rows) > 1 else \
            self.rnd.choice(("log_event", "insert"))
        self.stats["rows_" + how] += len(rows)
        if how == "multi":
            sql = ("INSERT INTO audit.audit_log (" + COLS + ") VALUES " + ", ".join([ROW_PLACEHOLDER] * len(rows))
                   + " RETURNING id, (details->>'seq')::bigint")
            got = dict((seq, rid) for rid, seq in
                       self.conn.execute(sql, [p for r in rows for p in r.params]).fetchall())
            for r in rows:
                r.id = got[r.seq]
        else:
            for r in rows:
                r.id = self.conn.execute(LOG_EVENT if how == "log_event" else INSERT_ONE, r.params).fetchone()[0]

    def record_committed(self, rows):
        for r in rows:
            self.c_id.append(r.id)
            self.c_seq.append(r.seq)
            self.c_org.append(r.orgi)
            self.c_kind.append(r.kind)
            self.c_xgen.append(r.xgen)
            self.c_fin.append(r.fin)
            self.c_act.append(r.acti)
            if r.kind == KIND_KEPT:
                if r.subj >= 0:
                    self.subject_rows[r.subj] += 1
                if r.xgen >= 0:
                    self.xrows[(r.xgen, r.fin)] += 1
        self.stats["rows_committed"] += len(rows)

    def iteration(self):
        """One transaction. A row dated in a month whose partition maintenance
        is attaching at that moment (moving its rows out of the default
        partition) is refused with 23514 "violates partition constraint"; as
        docs/operations.md tells writers of back-dated events, the client
        retries: the rows are counted as rolled back, and new ones follow."""
        try:
            self.one_transaction()
        except psycopg.errors.CheckViolation as e:
            if "violates partition constraint" not in str(e):
                raise
            self.expected_error(e)
            self.conn.execute("ROLLBACK")
            self.stats["retried_default_partition_drain"] += 1

    def one_transaction(self):
        ctx, rnd = self.ctx, self.rnd
        g = ctx.xgen
        self.safe_gen = g          # the previous transaction has ended
        rows = [self.make_row(g) for _ in range(rnd.randint(1, 5))]
        sp_rows = []
        t0 = time.monotonic()
        self.conn.execute("BEGIN")
        try:
            self.write(rows)
            if rnd.random() < SAVEPOINT_PROB:
                self.conn.execute("SAVEPOINT sp")
                sp_rows = [self.make_row(g) for _ in range(rnd.randint(1, 3))]
                self.write(sp_rows)
                self.conn.execute("ROLLBACK TO SAVEPOINT sp")
                self.stats["savepoint_rollbacks"] += 1
            if rnd.random() < BAD_PROB:
                self.conn.execute("SAVEPOINT bad")
                try:
                    self.conn.execute("SELECT audit.log_event(action => 'soak.bad', status => 'bogus',"
                                      " organization_id => 'soak-org-0', details => %s)",
                                      (Jsonb({"run": RUN, "w": self.wid, "bad": True}),))
                    self.unexpected("audit.log_event() accepted the status 'bogus'")
                except psycopg.errors.CheckViolation as e:
                    self.expected_error(e)
                self.conn.execute("ROLLBACK TO SAVEPOINT bad")
                self.stats["bad_events_refused"] += 1
            held = rnd.random() < HOLD_PROB
            if held:
                time.sleep(rnd.uniform(0.3, 1.5))
                self.stats["held"] += 1
            rollback = rnd.random() < ROLLBACK_PROB
            if rollback:
                self.conn.execute("ROLLBACK")
        except BaseException:
            # Never committed: the loop rolls the transaction back.
            self.rolled_back.extend(r.id for r in rows + sp_rows if r.id is not None)
            raise
        self.rolled_back.extend(r.id for r in sp_rows if r.id is not None)
        if rollback:
            self.rolled_back.extend(r.id for r in rows)
            self.stats["rollbacks"] += 1
        else:
            try:
                self.conn.execute("COMMIT")
            except BaseException:
                self.ambiguous.extend(r.id for r in rows)
                raise
            self.record_committed(rows)
            self.stats["commits"] += 1
            if not held:
                self.durations["txn"].append(time.monotonic() - t0)
        self.ops += 1


# ---------------------------------------------------------------- maintenance

class Maintenance(Loop):
    def __init__(self, ctx):
        super().__init__(ctx, "maintenance", SEED + 1)

    def iteration(self):
        t = time.monotonic()
        self.conn.execute("CALL audit.run_maintenance()")
        self.durations["run"].append(time.monotonic() - t)
        self.ops += 1
        self.pause(MAINT_PAUSE)


# ---------------------------------------------------------------- reports

TEMPLATES = ["phi_access", "failed_authentication", "integrity", "retention", "gdpr_requests"]
SCHEDULE = "0 0 1 1 *"     # once a year: only the loop's calls run it


class Reports(Loop):
    def __init__(self, ctx):
        super().__init__(ctx, "reports", SEED + 2)
        self.schedules = {}
        self.columns = {}
        self.cycle = []

    def setup(self):
        for t in TEMPLATES:
            crit = {"from": "1980-01-01", "to": "2100-01-01"} if t != "integrity" else {}
            org = "soak-org-1" if t in ("phi_access", "retention") else None
            fmt = "csv" if t == "retention" else "json"
            self.schedules[t] = q1(self.conn, "SELECT audit.schedule_report(%s, %s, %s, %s, %s, %s, 'worker')",
                                   ("soak_" + t, t, SCHEDULE, Jsonb(crit), fmt, org))
            rtype = q1(self.conn, "SELECT report_type FROM audit.report_templates WHERE name = %s", (t,))
            self.columns[t] = q1(self.conn, "SELECT audit.report_columns(%s)", (rtype,))
        for t in TEMPLATES:
            self.cycle += [("generate", t, "json", {}, None),
                           ("generate", t, "csv", {}, None),
                           ("generate", t, "json", {"from": "1990-01-01", "to": "2100-01-01"}, "soak-org-2"),
                           ("run", t, None, None, None)]
        self.rnd.shuffle(self.cycle)

    def check_json(self, t, doc):
        d = json.loads(doc)
        if d.get("report") != t or d.get("row_count") != len(d.get("rows", [])):
            self.unexpected("report %s: json document %r... does not name it or count its rows" % (t, doc[:200]))
            return
        if t == "integrity":
            row = d["rows"][0]
            if not row.get("clean"):
                self.unexpected("integrity report not clean: %s problems, first: %s"
                                % (row.get("problems"), row.get("first_problem")))

    def check_csv(self, t, doc):
        lines = list(csv.reader(io.StringIO(doc)))
        if not lines or lines[0] != list(self.columns[t]):
            self.unexpected("report %s: csv header %r, want %r" % (t, lines[:1], self.columns[t]))
            return
        if t == "integrity" and (len(lines) < 2 or lines[1][0] != "true"):
            self.unexpected("integrity report (csv) not clean: %r" % (lines[1:2],))

    def iteration(self):
        what, t, fmt, crit, org = self.cycle[self.ops % len(self.cycle)]
        t0 = time.monotonic()
        if what == "generate":
            doc = q1(self.conn, "SELECT audit.generate_report(%s, %s, %s, %s)", (t, Jsonb(crit), fmt, org))
            (self.check_json if fmt == "json" else self.check_csv)(t, doc)
        else:
            ex = q1(self.conn, "SELECT audit.run_report(%s)", (self.schedules[t],))
            status, err, state, fmt, doc = self.conn.execute(
                "SELECT status, error, error_sqlstate, format, result FROM audit.report_executions"
                " WHERE execution_id = %s", (ex,)).fetchone()
            if status != "succeeded":
                self.unexpected("run_report(%s) of %s: %s [%s] %s" % (self.schedules[t], t, status, state, err))
            else:
                (self.check_json if fmt == "json" else self.check_csv)(t, doc)
        self.durations[t].append(time.monotonic() - t0)
        self.ops += 1
        self.pause(REPORT_PAUSE)


# ---------------------------------------------------------------- gdpr

class Gdpr(Loop):
    def __init__(self, ctx):
        super().__init__(ctx, "gdpr", SEED + 3)
        self.pseudonyms = []                       # (subject index, pseudonym, strategy)
        self.subject_events = collections.Counter()  # stable subject -> gdpr events naming it (or a pseudonym)
        self.x_events = collections.Counter()      # erasure generation -> gdpr events naming it
        self.x_pseudonyms = collections.defaultdict(list)
        self.pseudonymized_at = {}                 # stable subject -> committed rows naming it after the last call
        self.strategy_i = 0
        self.next_erase = None
        self.gen_started = None
        self.x_prepared = False
        self.retries = collections.Counter()

    def setup(self):
        self.gen_started = time.monotonic()
        self.next_erase = None

    def call(self, what, sql, params):
        """One GDPR call; a 40001 (a row moved or deleted under the redaction) is expected: None."""
        t = time.monotonic()
        try:
            rows = self.conn.execute(sql, params).fetchall()
        except psycopg.errors.SerializationFailure as e:
            self.expected_error(e)
            self.retries[what] += 1
            return None
        self.durations[what].append(time.monotonic() - t)
        return rows

    def pseudonymize(self, subject, strategy):
        key = ENC_KEY if strategy == "encryption" else None
        rows = self.call("pseudonymize", "SELECT * FROM audit.pseudonymize(%s, strategy => %s, requested_by => %s,"
                         " encryption_key => %s)", (subject, strategy, "DSR-soak-%d" % self.ops, key))
        if rows is None:
            return None
        self.ctx.gdpr_calls["gdpr.pseudonymize"] += 1
        self.ctx.redactions += 1
        return rows[0]

    def export(self, subject, fmt, lower):
        rows = self.call("export", "SELECT audit.export_subject(%s, format => %s)", (subject, fmt))
        if rows is None:
            return None
        self.ctx.gdpr_calls["gdpr.export"] += 1
        doc = rows[0][0]
        if fmt == "json":
            d = json.loads(doc)
            events = d["events"]
            n = d["rows"]
            bad = [e.get("id") for e in events if e.get("leaf_intact") is not True or e.get("chain_status") == "modified"]
            if n != len(events) or bad:
                self.unexpected("export of %s: rows %s, %d events, not intact or modified: %s"
                                % (subject, n, len(events), bad[:10]))
        elif fmt == "csv":
            lines = list(csv.reader(io.StringIO(doc)))
            n = len(lines) - 1
        else:
            n = len(ET.fromstring(doc).findall("event"))
        if n < lower:
            self.unexpected("export of %s holds %d events, but at least %d were committed naming it (or its "
                            "pseudonyms) before the call" % (subject, n, lower))
        return n

    def original_id(self, subject, pseudonym, strategy):
        got = q1(self.conn, "SELECT audit.original_id(%s, encryption_key => %s, reason => 'soak check')",
                 (pseudonym, ENC_KEY if strategy == "encryption" else None))
        self.ctx.gdpr_calls["gdpr.original_id"] += 1
        if got != subject:
            self.unexpected("original_id(%s) = %r, want %r" % (pseudonym, got, subject))

    def stable_op(self):
        rnd = self.rnd
        u = rnd.random()
        if u < 0.15 and self.pseudonyms:
            s, p, strategy = rnd.choice(self.pseudonyms)
            self.original_id(sname(s), p, strategy)
            self.subject_events[s] += 1
            return
        if u < 0.6:
            # A subject some committed row names as is: one committed since the
            # last pseudonymization of it returned (audit.pseudonymize() with
            # the token or encryption strategy refuses, P0002, a subject whose
            # rows all carry pseudonyms already).
            candidates = [s for s in range(N_PSEUDO)
                          if self.ctx.committed_naming_subject(s) > self.pseudonymized_at.get(s, 0)]
            if not candidates:
                return
            s = rnd.choice(candidates)
            strategy = ("hash", "token", "encryption")[self.strategy_i % 3]
            self.strategy_i += 1
            res = self.pseudonymize(sname(s), strategy)
            if res is not None:
                self.pseudonymized_at[s] = self.ctx.committed_naming_subject(s)
                self.subject_events[s] += 1
                self.pseudonyms.append((s, res[0], strategy))
            return
        s = rnd.randrange(N_SUBJECTS)
        lower = self.ctx.committed_naming_subject(s) + self.subject_events[s]
        fmt = rnd.choice(("json", "json", "json", "csv", "xml"))
        if self.export(sname(s), fmt, lower) is not None:
            self.subject_events[s] += 1

    def prepare_x(self):
        """Halfway through an erasure subject's life: pseudonymize, export and look it up."""
        g = self.ctx.xgen
        x = xname(g)
        if sum(w.xrows[(g, 0)] + w.xrows[(g, 1)] for w in self.ctx.writers) == 0:
            return
        res = self.pseudonymize(x, "hash")
        if res is None:
            return
        self.x_events[g] += 1
        self.x_pseudonyms[g].append(res[0])
        if self.export(x, "json", 0) is not None:
            self.x_events[g] += 1
        self.original_id(x, res[0], "hash")
        self.x_events[g] += 1
        self.x_prepared = True

    def erase(self):
        ctx = self.ctx
        g = ctx.xgen
        x = xname(g)
        ctx.xgen = g + 1
        self.gen_started = time.monotonic()
        self.x_prepared = False
        ok, waited = wait_for(lambda: all(w.safe_gen > g or not w.is_alive() for w in ctx.writers), 60, 0.01)
        self.durations["erase_handshake"].append(waited)
        if not ok:
            self.unexpected("writers did not end their transactions naming %s in 60 s" % x)
            return
        erased_want = sum(w.xrows[(g, 0)] for w in ctx.writers)
        kept_want = sum(w.xrows[(g, 1)] for w in ctx.writers) + self.x_events[g]
        if erased_want + kept_want == 0:
            return
        for attempt in range(ERASE_RETRIES):
            rows = self.call("erase", "SELECT * FROM audit.erase_subject(%s, requested_by => %s)",
                             (x, "DSR-soak-erase-%d" % g))
            if rows is not None:
                break
            time.sleep(0.2)
        else:
            self.unexpected("erase_subject(%s) failed with 40001 %d times in a row" % (x, ERASE_RETRIES))
            return
        ctx.gdpr_calls["gdpr.erase"] += 1
        ctx.redactions += 1
        erased, kept = rows[0]
        ctx.erased.append((g, x, list(self.x_pseudonyms[g]), erased, kept))
        if (erased, kept) != (erased_want, kept_want):
            self.unexpected("erase_subject(%s): rows_erased %d, rows_kept %d; committed naming it: %d to erase, "
                            "%d to keep (FINANCIAL and gdpr.* events)" % (x, erased, kept, erased_want, kept_want))

    def iteration(self):
        now = time.monotonic()
        if self.next_erase is None:
            self.next_erase = self.ctx.t0 + min(ERASE_EVERY, 0.4 * SECONDS)
        if now >= self.next_erase:
            self.erase()
            self.next_erase = time.monotonic() + ERASE_EVERY
        elif not self.x_prepared and now >= self.gen_started + min(ERASE_EVERY, 0.4 * SECONDS) / 2:
            self.prepare_x()
        else:
            self.stable_op()
        self.ops += 1
        self.pause(GDPR_PAUSE)


# ---------------------------------------------------------------- verify

class Verify(Loop):
    def __init__(self, ctx):
        super().__init__(ctx, "verify", SEED + 4)
        self.digests = []
        self.n_digests = 0

    def iteration(self):
        i = self.ops
        if i % 4 == 0:
            kind, sql, params = "whole", "SELECT * FROM audit.verify()", None
        elif i % 8 == 2:
            org = ORGS[(i // 8) % 5]
            kind, sql, params = "organization", "SELECT * FROM audit.verify(organization_id => %s)", (org,)
        elif i % 8 == 6:
            now = datetime.datetime.now(UTC)
            kind, sql, params = ("time_range", "SELECT * FROM audit.verify(from_time => %s, to_time => %s)",
                                 (now - datetime.timedelta(days=40), now + datetime.timedelta(days=1)))
        else:
            kind, sql, params = "since_last", "SELECT * FROM audit.verify(since_last => true)", None
        t = time.monotonic()
        problems = self.conn.execute(sql, params).fetchall()
        self.durations[kind].append(time.monotonic() - t)
        if problems:
            self.unexpected("verify (%s) reported %d problem(s): %s" % (kind, len(problems), problems[:5]))
        d = q1(self.conn, "SELECT audit.digest()")
        self.n_digests += 1
        if len(self.digests) < 10 or self.n_digests % 10 == 0:
            self.digests.append(d)
        self.ops += 1
        self.pause(VERIFY_PAUSE)


# ---------------------------------------------------------------- monitor

class Monitor(threading.Thread):
    def __init__(self, ctx, conn):
        super().__init__(name="soak-monitor", daemon=True)
        self.ctx = ctx
        self.conn = conn
        self.pid = conn.info.backend_pid
        self.start_time = q1(conn, "SELECT pg_postmaster_start_time()")
        self.worker_pids = set()
        self.samples = 0
        self.max_lag = 0.0
        self.max_unsealed = 0
        self.errors = []
        self.lag_holder = None

    def sample(self):
        pid, started, lag, unsealed, holder = self.conn.execute(
            "SELECT pg_backend_pid(), pg_postmaster_start_time(), extract(epoch FROM s.seal_lag)::float8,"
            " s.unsealed_rows, s.holding_back_query FROM audit.chain_status s").fetchone()
        for (w,) in self.conn.execute("SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
                                      " AND backend_type LIKE 'audit_db%%'").fetchall():
            self.worker_pids.add(w)
        if pid != self.pid:
            self.errors.append("monitor backend pid %s, was %s" % (pid, self.pid))
        if started != self.start_time:
            self.errors.append("pg_postmaster_start_time() %s, was %s" % (started, self.start_time))
        if lag and lag > self.max_lag:
            self.max_lag = lag
            self.lag_holder = holder
        self.max_unsealed = max(self.max_unsealed, unsealed or 0)
        self.samples += 1

    def run(self):
        while not self.ctx.stop.is_set():
            try:
                self.sample()
            except psycopg.Error as e:
                self.errors.append("%s: %s" % (type(e).__name__, e))
                if self.conn.broken or self.conn.closed:
                    return
            self.ctx.stop.wait(1.0)


# ---------------------------------------------------------------- server log

def find_server_log(conn):
    """(path, how) of a readable server log, or (None, why not)."""
    return testkit_find_server_log(conn, SERVER_LOG, "AUDIT_DB_SOAK_SERVER_LOG")


# ---------------------------------------------------------------- setup

def setup(res, admin):
    admin.execute("SET client_min_messages = warning")
    admin.execute("DROP EXTENSION IF EXISTS audit_db CASCADE")
    admin.execute("RESET client_min_messages")
    admin.execute("CREATE EXTENSION audit_db")
    worker, secs = wait_for(lambda: q1(admin, "SELECT count(*) FROM pg_stat_activity WHERE backend_type ="
                                              " 'audit_db worker' AND datname = current_database()"), 30)
    if not res.check(bool(worker), "setup: an audit_db worker serves this database (%.1f s)" % secs,
                     "audit_db must be in shared_preload_libraries"):
        raise RuntimeError("no audit_db worker")
    wait_worker_maintenance(admin)
    admin.execute("INSERT INTO audit.audit_retention_policy (policy_name, retention_days, archive_after_days)"
                  " VALUES ('soak_expire', 30, NULL), ('soak_archive', 36500, 30)")
    # One sealed block before the load (see the 'unsealed' note in the docstring).
    rid = q1(admin, "SELECT audit.log_event(action => 'soak.setup', status => 'success', details => %s)",
             (Jsonb({"run": RUN, "w": -1, "seq": 0}),))
    res.check(seal_all(admin), "setup: the first event is sealed")
    return rid


# ---------------------------------------------------------------- checks after the load

def check_loops(res, loops, hung):
    for lp in loops:
        exp = ", ".join("%s x%d" % kv for kv in sorted(lp.expected.items())) or "none"
        res.check(lp.n_errors == 0 and lp.name not in hung,
                  "%s: %d operations, no unexpected error (expected errors: %s)" % (lp.lname, lp.ops, exp),
                  "%s%d unexpected error(s):\n%s" % ("the loop hung\n" if lp.name in hung else "",
                                                     lp.n_errors, "\n".join(lp.errors)))


def check_maintenance_runs(res, admin, since):
    runs = admin.execute("SELECT run_id, via, status, errors, extract(epoch FROM finished_at - started_at)::float8,"
                         " actions FROM audit.maintenance_run WHERE started_at >= %s ORDER BY run_id",
                         (since,)).fetchall()
    bad = []
    timeouts = 0
    for rid, via, status, errors, dur, actions in runs:
        errs = [e for e in (errors or []) if e]
        lt = [e for e in errs if LOCK_TIMEOUT_RE.search(e)]
        timeouts += len(lt)
        if status == "done" and not errs:
            continue
        if status == "errors" and errs and len(lt) == len(errs):
            continue
        bad.append("run %s (%s): %s %s" % (rid, via, status, errs))
    res.check(runs and not bad, "maintenance: %d runs during the soak ended 'done' or with lock timeouts only "
              "(%d lock timeouts)" % (len(runs), timeouts), "\n".join(bad[:20]))
    return runs, timeouts


def catch_up(res, admin):
    """After the load: maintenance until the default partition is empty and retention has nothing left to do."""
    left = None
    for i in range(12):
        admin.execute("CALL audit.run_maintenance()")
        seal_all(admin)
        left = admin.execute("SELECT (SELECT count(*) FROM audit.audit_log_default),"
                             " (SELECT count(*) FROM audit.retention_plan() WHERE action <> 'keep')").fetchone()
        if left == (0, 0):
            break
    res.check(left == (0, 0), "after the load, maintenance empties the default partition and leaves nothing but "
              "'keep' in the retention plan (%d runs)" % (i + 1),
              "default rows %s, plan rows not 'keep' %s: %s" % (
                  left[0], left[1], admin.execute("SELECT partition::text, action FROM audit.retention_plan()"
                                                  " WHERE action <> 'keep'").fetchall()[:10]))


def load_expected(admin, ctx):
    admin.execute("CREATE TEMP TABLE soak_expected (id bigint, w int, seq bigint, org text, action text,"
                  " kind int, erased boolean)")
    admin.execute("CREATE TEMP TABLE soak_rolled_back (id bigint)")
    admin.execute("CREATE TEMP TABLE soak_ambiguous (id bigint)")
    erased_gens = {g for g, _, _, _, _ in ctx.erased}
    with admin.cursor() as cur:
        with cur.copy("COPY soak_expected FROM STDIN") as cp:
            cp.write_row((ctx.setup_id, -1, 0, None, "soak.setup", KIND_KEPT, False))
            for w in ctx.writers:
                for i in range(len(w.c_id)):
                    xg = w.c_xgen[i]
                    cp.write_row((w.c_id[i], w.wid, w.c_seq[i], ORGS[w.c_org[i]], ACTIONS[w.c_act[i]],
                                  w.c_kind[i], xg in erased_gens and not w.c_fin[i]))
        with cur.copy("COPY soak_rolled_back FROM STDIN") as cp:
            for w in ctx.writers:
                for rid in w.rolled_back:
                    cp.write_row((rid,))
        with cur.copy("COPY soak_ambiguous FROM STDIN") as cp:
            for w in ctx.writers:
                for rid in w.ambiguous:
                    cp.write_row((rid,))
    admin.execute("CREATE INDEX ON soak_expected (id)")
    admin.execute("ANALYZE soak_expected")
    admin.execute("ANALYZE soak_rolled_back")


def sample_ids(rows):
    ids = [r[0] for r in rows]
    return "%s%s" % (ids[:10], " ..." if len(ids) > 10 else "")


def check_log(res, admin, ctx):
    load_expected(admin, ctx)
    committed = q1(admin, "SELECT count(*) FROM soak_expected")
    by_kind = dict(admin.execute("SELECT kind, count(*) FROM soak_expected GROUP BY kind").fetchall())
    kept_n = by_kind.get(KIND_KEPT, 0)
    expire_n = by_kind.get(KIND_EXPIRE, 0)
    archive_n = by_kind.get(KIND_ARCHIVE, 0)
    total = q1(admin, "SELECT count(*) FROM audit.audit_log")
    ambiguous = q1(admin, "SELECT count(*) FROM soak_ambiguous")

    # The extension's own events, by action prefix.
    prefixes = dict(admin.execute(
        "SELECT CASE WHEN action LIKE 'soak.%%' THEN 'soak.' ELSE action END, count(*) FROM audit.audit_log"
        " GROUP BY 1").fetchall())
    own = {k: v for k, v in prefixes.items() if k != "soak."}
    gdpr_want = dict(ctx.gdpr_calls)
    info("the log: %d rows: %d events of the writers, extension events by action: %s"
         % (total, prefixes.get("soak.", 0), own or "none"))
    res.check(own == gdpr_want, "the extension's own events are exactly the successful GDPR calls, by action "
              "(%s)" % ", ".join("%s %d" % kv for kv in sorted(gdpr_want.items())),
              "in the log: %s; calls: %s" % (own, gdpr_want))
    res.check(total == kept_n + sum(gdpr_want.values()) and ambiguous == 0,
              "count(*) of audit.audit_log = %d = %d committed events of kept policy + %d gdpr.* events "
              "(%d committed in all; %d soak_expire events expired, %d soak_archive events archived)"
              % (total, kept_n, sum(gdpr_want.values()), committed, expire_n, archive_n),
              "count(*) %d; committed kept %d; gdpr %d; transactions whose COMMIT failed: %d"
              % (total, kept_n, sum(gdpr_want.values()), ambiguous))

    missing = admin.execute("SELECT e.id FROM soak_expected e WHERE e.kind = 0 AND NOT EXISTS"
                            " (SELECT FROM audit.audit_log l WHERE l.id = e.id) ORDER BY 1").fetchall()
    dups = admin.execute("SELECT id FROM audit.audit_log GROUP BY id HAVING count(*) > 1 ORDER BY 1").fetchall()
    extra = admin.execute("SELECT l.id FROM audit.audit_log l WHERE l.action NOT LIKE 'gdpr.%%' AND NOT EXISTS"
                          " (SELECT FROM soak_expected e WHERE e.id = l.id AND e.kind = 0) ORDER BY 1").fetchall()
    res.check(not missing and not dups and not extra,
              "every committed event of kept policy is in the log once, by id (%d), and no other writer event is"
              % kept_n, "missing %d %s; duplicated ids %d %s; rows no writer committed %d %s"
              % (len(missing), sample_ids(missing), len(dups), sample_ids(dups), len(extra), sample_ids(extra)))

    wrong = admin.execute(
        "SELECT e.id, e.w, e.seq, e.org, e.action, e.erased, l.organization_id, l.action, l.details->>'w',"
        " l.details->>'seq', l.details IS NULL"
        " FROM soak_expected e JOIN audit.audit_log l ON l.id = e.id"
        " WHERE l.organization_id IS DISTINCT FROM e.org OR l.action IS DISTINCT FROM e.action"
        "    OR (e.erased AND (l.details IS NOT NULL OR l.outcome_description IS NOT NULL))"
        "    OR (NOT e.erased AND ((l.details->>'w')::int IS DISTINCT FROM e.w"
        "                          OR (l.details->>'seq')::bigint IS DISTINCT FROM e.seq))"
        " ORDER BY 1 LIMIT 20").fetchall()
    erased_rows = q1(admin, "SELECT count(*) FROM soak_expected WHERE erased")
    res.check(not wrong, "every event holds its writer's organization and action; the %d events erasure erased have "
              "no details nor description, every other one its writer and sequence number" % erased_rows,
              "\n".join(str(w) for w in wrong))

    back = admin.execute("SELECT r.id FROM soak_rolled_back r JOIN audit.audit_log l USING (id) ORDER BY 1").fetchall()
    nback = q1(admin, "SELECT count(*) FROM soak_rolled_back")
    res.check(not back, "none of the %d events rolled back (whole transactions and savepoints) is in the log" % nback,
              "present: %d %s" % (len(back), sample_ids(back)))

    per_org_log = dict(admin.execute("SELECT organization_id, count(*) FROM audit.audit_log"
                                     " WHERE action NOT LIKE 'gdpr.%%' GROUP BY 1").fetchall())
    per_org_want = dict(admin.execute("SELECT org, count(*) FROM soak_expected WHERE kind = 0 GROUP BY 1").fetchall())
    res.check(per_org_log == per_org_want, "events per organization = committed per organization (%s)"
              % ", ".join("%s %d" % (k or "none", v) for k, v in sorted(per_org_want.items(), key=lambda kv: str(kv[0]))),
              "log %s; committed %s" % (per_org_log, per_org_want))

    # Retention: soak_expire rows gone, and accounted for by retention blocks; soak_archive rows archived.
    present_expire = q1(admin, "SELECT count(*) FROM soak_expected e JOIN audit.audit_log l USING (id)"
                               " WHERE e.kind <> 0")
    removed = dict(admin.execute("SELECT kind, coalesce(sum(row_count), 0) FROM audit.audit_chain_block"
                                 " WHERE kind LIKE 'retention%%' OR kind LIKE 'archive%%' GROUP BY kind").fetchall())
    archived_ids = admin.execute(
        "SELECT count(*), count(*) FILTER (WHERE e.kind = 2) FROM audit.audit_chain_block b"
        " CROSS JOIN LATERAL unnest(b.row_ids) u(id) LEFT JOIN soak_expected e ON e.id = u.id"
        " WHERE b.kind = 'archive_rows'").fetchone()
    archive_rows = q1(admin, "SELECT coalesce(sum(row_count), 0) FROM audit.archive_storage")
    retained = removed.get("retention_rows", 0) + removed.get("retention_partition", 0)
    res.check(present_expire == 0 and retained == expire_n and archived_ids == (archive_n, archive_n)
              and archive_rows == archive_n,
              "retention: the %d soak_expire events are gone and retention blocks account for exactly them "
              "(%d in retention_rows, %d in dropped partitions); the %d soak_archive events are exactly the "
              "archive_rows blocks' ids and the archive holds them"
              % (expire_n, removed.get("retention_rows", 0), removed.get("retention_partition", 0), archive_n),
              "still in the log %d; retention blocks %s; archive_rows ids %s; archive_storage rows %s"
              % (present_expire, removed, archived_ids, archive_rows))

    nreq = q1(admin, "SELECT count(*) FROM audit.redaction_request")
    res.check(nreq == ctx.redactions, "audit.redaction_request holds one row per successful pseudonymization and "
              "erasure (%d)" % ctx.redactions, "%d rows" % nreq)

    terms = [t for _, x, ps, _, _ in ctx.erased for t in [x] + ps]
    if terms:
        found = admin.execute("SELECT l.id, l.action FROM audit.audit_log l WHERE l::text LIKE ANY (%s) LIMIT 10",
                              (["%" + t + "%" for t in terms],)).fetchall()
        res.check(not found, "no erased subject (%s) nor its pseudonyms appear anywhere in audit.audit_log"
                  % ", ".join(x for _, x, _, _, _ in ctx.erased), "rows: %s" % found)
    res.check(len(ctx.erased) >= 1, "at least one subject was erased during the load (%d)" % len(ctx.erased))


# ---------------------------------------------------------------- main

def main():
    res = Results()
    ctx = Ctx()
    info("soak: %.0f s, %d writers, an erasure every %.0f s, run %s" % (SECONDS, WRITERS, ERASE_EVERY, RUN))
    admin = connect("admin")
    mon_conn = None
    loops = []
    try:
        ctx.setup_id = setup(res, admin)
        log_path, how = find_server_log(admin)
        offset = log_size(log_path) if log_path else 0
        info("server log: %s (%s)" % (log_path, how) if log_path else "server log not checked: %s" % how)
        deadlocks0 = q1(admin, "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()")
        since = q1(admin, "SELECT clock_timestamp()")
        mon_conn = connect("monitor")
        ctx.pids.add(admin.info.backend_pid)
        ctx.pids.add(mon_conn.info.backend_pid)
        monitor = Monitor(ctx, mon_conn)

        ctx.writers = [Writer(ctx, i) for i in range(WRITERS)]
        maint, reports, gdpr, verify = Maintenance(ctx), Reports(ctx), Gdpr(ctx), Verify(ctx)
        loops = ctx.writers + [maint, reports, gdpr, verify]
        ctx.t0 = time.monotonic()
        ctx.deadline = ctx.t0 + SECONDS
        for lp in loops:
            lp.start()
        for lp in loops:
            lp.started.wait(60)
        monitor.start()
        info("load started: %d loops" % len(loops))
        last_note = time.monotonic()
        while time.monotonic() < ctx.deadline:
            time.sleep(min(1.0, max(0.0, ctx.deadline - time.monotonic())))
            if time.monotonic() - last_note >= max(60.0, SECONDS / 10):
                last_note = time.monotonic()
                info("%.0f s: %d events committed, %d maintenance runs, %d reports, %d gdpr calls, %d verify runs, "
                     "%d erasures, max seal lag %.1f s"
                     % (last_note - ctx.t0, sum(w.stats["rows_committed"] for w in ctx.writers), maint.ops,
                        reports.ops, gdpr.ops, verify.ops, len(ctx.erased), monitor.max_lag))
        ctx.stop.set()
        t_stop = time.monotonic()
        for lp in loops + [monitor]:
            lp.join(max(1.0, 300 - (time.monotonic() - t_stop)))
        hung = {lp.name for lp in loops + [monitor] if lp.is_alive()}
        info("load stopped after %.1f s; loops joined in %.1f s" % (t_stop - ctx.t0, time.monotonic() - t_stop))
        elapsed = t_stop - ctx.t0

        check_loops(res, loops, hung)

        # The server did not crash.
        still = None
        try:
            still = mon_conn.execute("SELECT pg_backend_pid(), pg_postmaster_start_time()").fetchone()
        except psycopg.Error as e:
            monitor.errors.append("after the load: %s" % e)
        res.check(still == (monitor.pid, monitor.start_time) and not monitor.errors,
                  "the server did not crash: the monitor connection (pid %d) still answers, and "
                  "pg_postmaster_start_time() is unchanged (%d samples)" % (monitor.pid, monitor.samples),
                  "now %s, at start %s; %s" % (still, (monitor.pid, monitor.start_time), monitor.errors[:10]))
        deadlocks = q1(admin, "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()")
        res.check(deadlocks == deadlocks0, "no deadlock in this database (pg_stat_database.deadlocks %d -> %d)"
                  % (deadlocks0, deadlocks))

        runs, timeouts = check_maintenance_runs(res, admin, since)
        catch_up(res, admin)
        sealed = seal_all(admin)
        st = admin.execute("SELECT unsealed_rows, rows_sealed, height FROM audit.chain_status").fetchone()
        total = q1(admin, "SELECT count(*) FROM audit.audit_log")
        gone = q1(admin, "SELECT coalesce(sum(row_count), 0) FROM audit.audit_chain_block"
                         " WHERE kind IN ('retention_rows', 'retention_partition', 'archive_rows')")
        res.check(sealed and st[0] == 0 and st[1] == total + gone,
                  "after the load everything is sealed: no unsealed row, and the rows ever sealed (%d, %d blocks) "
                  "= count(*) of the log (%d) + the rows retention removed or archived (%d)"
                  % (st[1], st[2], total, gone),
                  "sealed=%s chain_status (unsealed, rows_sealed, height) %s; count(*) %d" % (sealed, st, total))
        t = time.monotonic()
        problems = admin.execute("SELECT block_height, row_id, field, problem, detail FROM audit.verify()").fetchall()
        res.check(not problems, "audit.verify() over the whole log reports nothing (%d rows, %.1f s)"
                  % (total, time.monotonic() - t), "\n".join(str(p) for p in problems[:20]))
        bad_digests = []
        for d in verify.digests:
            r = admin.execute("SELECT ok, detail FROM audit.verify_digest(%s)", (Jsonb(d),)).fetchone()
            if not r[0]:
                bad_digests.append("%s: %s" % (d.get("height"), r[1]))
        res.check(verify.digests and not bad_digests, "the %d digests taken during the load still verify"
                  % len(verify.digests), "\n".join(bad_digests[:10]))

        check_log(res, admin, ctx)

        # The server log: crashes, and errors of the test's backends and the worker.
        if log_path:
            text = log_since(log_path, offset)
            crash = [ln for ln in text.splitlines() if CRASH_RE.search(ln)]
            res.check(not crash, "the server log has no crash line since the start", "\n".join(crash[:10]))
            ours = ctx.pids | monitor.worker_pids
            unexpected = collections.Counter()
            expected_n = 0
            for ln in text.splitlines():
                m = LOG_LINE_RE.search(ln)
                if not m or int(m.group(1)) not in ours:
                    continue
                msg = m.group(3)
                if msg in ctx.expected_messages:
                    expected_n += 1
                else:
                    unexpected["[%s] %s: %s" % ("worker" if int(m.group(1)) in monitor.worker_pids else "test",
                                               m.group(2), msg)] += 1
            res.check(not unexpected, "the server log has no ERROR from the test's %d backends or the database's "
                      "worker but the %d the loops expected" % (len(ctx.pids), expected_n),
                      "\n".join("%dx %s" % (n, k) for k, n in unexpected.most_common(20)))
            dl = [ln for ln in text.splitlines() if "deadlock detected" in ln
                  and (m := re.search(r"\[(\d+)\]", ln)) and int(m.group(1)) in ours]
            res.check(not dl, "the server log has no deadlock of the test's backends or worker", "\n".join(dl[:10]))

        # Throughput (informational).
        info("throughput over %.0f s:" % elapsed)
        st_all = collections.Counter()
        txn = []
        for w in ctx.writers:
            st_all.update(w.stats)
            txn += w.durations["txn"]
        info("  writers: %d commits (%.1f/s), %d events committed (%.1f/s; log_event %d, INSERT %d, multi-row %d "
             "written), %d rollbacks, %d savepoint rollbacks, %d bad events refused, %d held open; transaction "
             "latency (not held) p50 %.1f ms, p99 %.1f ms, max %.1f ms"
             % (st_all["commits"], st_all["commits"] / elapsed, st_all["rows_committed"],
                st_all["rows_committed"] / elapsed, st_all["rows_log_event"], st_all["rows_insert"],
                st_all["rows_multi"], st_all["rollbacks"], st_all["savepoint_rollbacks"],
                st_all["bad_events_refused"], st_all["held"], pct(txn, 50) * 1000, pct(txn, 99) * 1000,
                max(txn or [0]) * 1000))
        info("  writers: %d transactions refused with 23514 while maintenance attached their month's partition "
             "(the known default-partition drain race; retried by the client)"
             % st_all["retried_default_partition_drain"])
        md = maint.durations["run"]
        acts = collections.Counter()
        for r in runs:
            for k, v in (r[5] or {}).items() if isinstance(r[5], dict) else []:
                if isinstance(v, (int, float)):
                    acts[k] += v
        info("  maintenance: %d CALLs (%.2f/s), duration p50 %.0f ms, max %.0f ms; %d runs recorded, %d lock "
             "timeouts; actions: %s"
             % (maint.ops, maint.ops / elapsed, pct(md, 50) * 1000, max(md or [0]) * 1000, len(runs), timeouts,
                ", ".join("%s %s" % kv for kv in sorted(acts.items())) or "-"))
        info("  reports: %d (%.2f/s); p50 / max per template: %s"
             % (reports.ops, reports.ops / elapsed,
                ", ".join("%s %.0f/%.0f ms" % (t, pct(v, 50) * 1000, max(v) * 1000)
                          for t, v in sorted(reports.durations.items()))))
        info("  gdpr: %d operations (%.2f/s): %s; retries after 40001: %s; erasures: %s"
             % (gdpr.ops, gdpr.ops / elapsed,
                ", ".join("%s %d (p50 %.0f ms, max %.0f ms)" % (k, len(v), pct(v, 50) * 1000, max(v) * 1000)
                          for k, v in sorted(gdpr.durations.items())),
                dict(gdpr.retries) or "none",
                "; ".join("%s: %d erased, %d kept" % (x, e, k) for _, x, _, e, k in ctx.erased)))
        info("  verify: %d runs (%.2f/s): %s"
             % (verify.ops, verify.ops / elapsed,
                ", ".join("%s %d (p50 %.0f ms, max %.0f ms)" % (k, len(v), pct(v, 50) * 1000, max(v) * 1000)
                          for k, v in sorted(verify.durations.items()))))
        vl = admin.execute("SELECT CASE WHEN (scope->>'since_last')::boolean THEN 'since_last'"
                           " WHEN scope ? 'organization_id' THEN 'organization'"
                           " WHEN scope ? 'from_time' THEN 'time_range' ELSE 'whole' END,"
                           " count(*), avg(rows_checked)::bigint,"
                           " sum(rows_checked) / nullif(sum(extract(epoch FROM finished_at - started_at)), 0)"
                           " FROM audit.audit_integrity_log WHERE started_at >= %s GROUP BY 1 ORDER BY 1",
                           (since,)).fetchall()
        info("  verify runs recorded: %s" % ", ".join("%s %d (avg %d rows, %.0f rows/s)" % (k, n, r or 0, s or 0)
                                                      for k, n, r, s in vl))
        info("  sealing: max seal lag %.1f s (%s), max unsealed rows %d"
             % (monitor.max_lag, (monitor.lag_holder or "-")[:80], monitor.max_unsealed))
    except Exception as e:  # noqa: BLE001 - a failure, not a crash of the test
        import traceback
        res.check(False, "the test ran to its end", "%s: %s\n%s" % (type(e).__name__, e, traceback.format_exc()))
    finally:
        ctx.stop.set()
        for c in (mon_conn, admin):
            try:
                if c is not None:
                    c.close()
            except Exception:  # noqa: BLE001
                pass
    return res.finish("soak")


if __name__ == "__main__":
    sys.exit(main())
