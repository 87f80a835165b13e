#!/usr/bin/env python3
"""test/concurrency_crash.py: the insert path under concurrency and a crash.

Part 1, concurrency: 16 worker threads, one connection each, write events for
CC_SECONDS seconds (default 10; every worker also runs at least 20
transactions). A transaction writes 1 to 3 rows through plain INSERTs
(RETURNING, or followed by audit.last_event_id()), multi-row INSERTs and
audit.log_event(). Every row carries a unique client-side tag in details.
About 10% of transactions end in ROLLBACK, about 3% fail on a bad status
(SQLSTATE 23514) and are rolled back, some roll one row back to a SAVEPOINT
(others RELEASE it), and a few workers hold transactions open for 1 to 3 s
before committing. Meanwhile one more connection inserts 50,000 rows in one
INSERT ... SELECT. Afterwards it asserts: every tag whose COMMIT returned is
present exactly once, with the id the client was given; no rolled-back tag is
present, nor any tag the client did not commit; ids are unique; every hash
equals audit.leaf_hash(row); the rows of one transaction share one
transaction_id, equal to that transaction's pg_current_xact_id(), and rows of
different transactions do not; the 50,000 bulk rows are all there.

Part 2, crash: 8 threads write the same kind of load (with
synchronous_commit = on, so that a returned COMMIT promises durability) for
about 4 s; then the script freezes the postmaster and its children
(SIGSTOP), kills them all (SIGKILL), as a power loss would leave the cluster,
and starts the server again with pg_ctl as the data directory's owner, which
recovers from WAL. It asserts: every tag whose COMMIT returned before the kill
is present exactly once; the rows of transactions that had not sent COMMIT
(at least one is deliberately held open across the kill) are absent; a
transaction whose COMMIT was in flight is present whole or absent whole; the
rows of part 1 are intact; ids are unique, hashes valid; new events get ids and
transaction ids above every recovered one and are stamped correctly.
Part 2 needs to run on the server's machine as root (or as the owner of the
data directory); CC_SKIP_CRASH=1 skips it.

Connects through the libpq environment (PGHOST, PGPORT, PGUSER, PGDATABASE)
and creates the extension if it is missing. Needs Debian's python3-psycopg.
Other settings: CC_CRASH_SECONDS (default 4), CC_SEED (default 6105).
Last line: "concurrency_crash: N passed, M failed"; exit status 1 if anything
failed.
"""
import collections
import os
import random
import signal
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
from testkit import Results, info, psycopg as _load_psycopg  # noqa: E402
from crashkit import alive, children, proc_stat, restart_command, signal_all  # noqa: E402

psycopg = _load_psycopg()
from psycopg.types.json import Jsonb

LOAD_SECONDS = float(os.environ.get("CC_SECONDS", "10"))
CRASH_SECONDS = float(os.environ.get("CC_CRASH_SECONDS", "4"))
SEED = int(os.environ.get("CC_SEED", "6105"))
SKIP_CRASH = os.environ.get("CC_SKIP_CRASH", "") == "1"

WORKERS = 16
CRASH_WORKERS = 8
MIN_TXNS = 20             # per worker in part 1, whatever the clock says
CRASH_MIN_COMMITS = 5     # per worker in part 2 before the kill
BULK_ROWS = 50000
RUN = os.urandom(4).hex()  # scopes this run's rows in a reused database

STATUSES = ("attempt", "success", "failure")
INSERT_SQL = ("INSERT INTO audit.audit_log (action, status, principal_id, organization_id, details) "
              "VALUES (%s, %s, %s, %s, %s)")
LOG_EVENT_SQL = ("SELECT audit.log_event(action => %s, status => %s, principal_id => %s, "
                 "organization_id => %s, details => %s)")


def sample(items, n=5):
    items = sorted(items, key=str)
    return "%s%s" % (items[:n], " ..." if len(items) > n else "")


class Txn:
    """One client transaction: what it wrote and what became of it."""

    def __init__(self, key):
        self.key = key
        self.kept = []          # tags meant to survive if the transaction commits
        self.discarded = []     # tags rolled back to a savepoint (absent in any case)
        self.ids = {}           # tag -> id the server reported
        self.xid = None         # pg_current_xact_id() just before COMMIT
        self.state = "open"     # open, commit_sent, committed


class Ctx:
    """What the threads of one phase share."""

    def __init__(self, phase, crash):
        self.phase = phase
        self.crash = crash
        self.deadline = None
        self.start = threading.Barrier(1)   # replaced by the phase
        self.stop = threading.Event()        # safety: stop at the next transaction
        self.killing = threading.Event()     # crash: signals are about to be sent
        self.killed = threading.Event()      # crash: all server processes are dead
        self.hold_request = threading.Event()
        self.holding = threading.Event()


class Worker(threading.Thread):
    def __init__(self, ctx, wid, holder, kill_holder=False):
        super().__init__(name="%s-w%d" % (ctx.phase, wid), daemon=True)
        self.ctx, self.wid, self.holder, self.kill_holder = ctx, wid, holder, kill_holder
        self.rnd = random.Random(SEED * 1000 + wid + (500 if ctx.crash else 0))
        self.committed = []     # Txn
        self.rolled_back = []   # tags of transactions rolled back (explicitly or by error)
        self.uncommitted = []   # Txn open (COMMIT not sent) when the connection died
        self.ambiguous = []     # Txn whose COMMIT was in flight when the connection died
        self.errors = []        # unexpected
        self.stats = collections.Counter()
        self.conn = None

    # -- one row -----------------------------------------------------------
    def details(self, txn, tag):
        return Jsonb({"run": RUN, "phase": self.ctx.phase, "txn": txn.key, "tag": tag,
                      "worker": self.wid, "note": "x" * self.rnd.randrange(0, 200)})

    def args(self, txn, tag, status=None):
        return ("cc_" + self.rnd.choice(("login", "read", "export", "update")),
                status or self.rnd.choice(STATUSES), "principal-%d" % self.rnd.randrange(50),
                "org-%d" % (self.wid % 4), self.details(txn, tag))

    def insert_row(self, txn, tag):
        how = self.rnd.choice(("returning", "last_event_id", "log_event"))
        self.stats["rows_" + how] += 1
        if how == "returning":
            row = self.conn.execute(INSERT_SQL + " RETURNING id, transaction_id",
                                    self.args(txn, tag)).fetchone()
            txn.ids[tag] = row[0]
            self.check_xid_now(txn, row[1])
        elif how == "last_event_id":
            self.conn.execute(INSERT_SQL, self.args(txn, tag))
            txn.ids[tag] = self.conn.execute("SELECT audit.last_event_id()").fetchone()[0]
        else:
            txn.ids[tag] = self.conn.execute(LOG_EVENT_SQL, self.args(txn, tag)).fetchone()[0]

    def insert_rows_at_once(self, txn, tags):
        self.stats["rows_multi"] += len(tags)
        values = ", ".join(["(%s, %s, %s, %s, %s)"] * len(tags))
        params = [a for tag in tags for a in self.args(txn, tag)]
        sql = INSERT_SQL.split(" VALUES ")[0] + " VALUES " + values + \
            " RETURNING id, details->>'tag'"
        for rid, tag in self.conn.execute(sql, params).fetchall():
            txn.ids[tag] = rid

    def check_xid_now(self, txn, stamped):
        now = self.conn.execute("SELECT pg_current_xact_id()::text::bigint").fetchone()[0]
        if stamped != now:
            self.errors.append("%s: stamped transaction_id %s, pg_current_xact_id() %s"
                               % (txn.key, stamped, now))

    # -- one transaction ---------------------------------------------------
    def run_txn(self, t):
        rnd = self.rnd
        txn = Txn("%s-%s-w%d-t%d" % (RUN, self.ctx.phase, self.wid, t))
        nrows = rnd.randint(1, 3)
        r = rnd.random()
        ending = "rollback" if r < 0.10 else "error" if r < 0.13 else "commit"
        sp = None
        if rnd.random() < 0.15:
            sp = rnd.choice(("rollback_to", "release"))
            nrows = max(nrows, 2)
        multi = sp is None and nrows >= 2 and rnd.random() < 0.15
        hold = self.holder and rnd.random() < 0.10
        tags = ["%s-r%d" % (txn.key, i) for i in range(nrows)]
        self.current = txn

        self.conn.execute("BEGIN")
        if multi:
            self.insert_rows_at_once(txn, tags)
            txn.kept.extend(tags)
        else:
            for i, tag in enumerate(tags):
                if sp and i == nrows - 1:
                    self.conn.execute("SAVEPOINT cc")
                    self.insert_row(txn, tag)
                    if sp == "rollback_to":
                        self.conn.execute("ROLLBACK TO SAVEPOINT cc")
                        txn.discarded.append(tag)
                        self.stats["savepoint_rollbacks"] += 1
                        continue
                    self.conn.execute("RELEASE SAVEPOINT cc")
                    self.stats["savepoint_releases"] += 1
                else:
                    self.insert_row(txn, tag)
                txn.kept.append(tag)
        if ending == "error":
            bad = txn.key + "-bad"
            txn.discarded.append(bad)
            try:
                self.conn.execute(INSERT_SQL, self.args(txn, bad, status="bogus"))
                self.errors.append("%s: status 'bogus' was accepted" % txn.key)
            except psycopg.errors.CheckViolation:
                pass
            self.conn.execute("ROLLBACK")
            self.rolled_back.extend(txn.kept + txn.discarded)
            self.stats["error_rollbacks"] += 1
            return
        if hold:
            self.stats["held"] += 1
            time.sleep(rnd.uniform(1.0, 3.0))
        if ending == "rollback":
            self.conn.execute("ROLLBACK")
            self.rolled_back.extend(txn.kept + txn.discarded)
            self.stats["explicit_rollbacks"] += 1
            return
        txn.xid = self.conn.execute("SELECT pg_current_xact_id()::text::bigint").fetchone()[0]
        txn.state = "commit_sent"
        cur = self.conn.execute("COMMIT")
        if cur.statusmessage != "COMMIT":
            txn.state = "open"      # the server rolled it back
            raise RuntimeError("%s: COMMIT answered %r" % (txn.key, cur.statusmessage))
        txn.state = "committed"
        self.committed.append(txn)

    def run_held_until_kill(self, t):
        """Part 2: a transaction that is certainly open when the server dies."""
        txn = Txn("%s-%s-w%d-t%d" % (RUN, self.ctx.phase, self.wid, t))
        self.current = txn
        self.conn.execute("BEGIN")
        for i in range(2):
            tag = "%s-r%d" % (txn.key, i)
            self.insert_row(txn, tag)
            txn.kept.append(tag)
        self.ctx.holding.set()
        self.ctx.killed.wait(120)
        self.conn.execute("SELECT 1")     # fails: the server is gone
        self.conn.execute("ROLLBACK")     # only if the kill did not happen
        self.rolled_back.extend(txn.kept)

    # -- the loop ----------------------------------------------------------
    def run(self):
        ctx = self.ctx
        try:
            self.conn = psycopg.connect(autocommit=True, application_name=self.name)
            if ctx.crash:
                self.conn.execute("SET synchronous_commit = on")
        except psycopg.Error as e:
            self.errors.append("connect: %s" % e)
            ctx.start.abort()
            return
        try:
            ctx.start.wait()
        except threading.BrokenBarrierError:
            return
        t = 0
        while not ctx.stop.is_set():
            if ctx.crash:
                if ctx.killing.is_set():
                    break
            elif time.monotonic() >= ctx.deadline and t >= MIN_TXNS:
                break
            self.current = None
            try:
                if self.kill_holder and ctx.hold_request.is_set() and not ctx.holding.is_set():
                    self.run_held_until_kill(t)
                else:
                    self.run_txn(t)
            except (psycopg.Error, RuntimeError) as e:
                if not self.failed_txn(e):
                    break
            t += 1
        self.stats["transactions"] = t
        try:
            self.conn.close()
        except psycopg.Error:
            pass

    def failed_txn(self, e):
        """Account for the transaction an exception interrupted; True: go on."""
        txn = self.current
        expected = self.ctx.crash and self.ctx.killing.is_set()
        if not expected:
            self.errors.append("%s: %s: %s" % (txn.key if txn else "?", type(e).__name__, e))
        if txn is not None:
            if txn.state == "commit_sent":
                self.ambiguous.append(txn)
            elif expected:
                self.uncommitted.append(txn)
            else:
                self.rolled_back.extend(txn.kept + txn.discarded)
        if expected or self.conn.closed or self.conn.broken:
            return False
        try:
            self.conn.execute("ROLLBACK")
            return True
        except psycopg.Error:
            return False


def merged(workers):
    out = collections.Counter()
    for w in workers:
        out.update(w.stats)
    return out


def phase_rows(conn, phase):
    """This run's rows of one phase: (txn, tag, id, transaction_id, hash ok)."""
    return conn.execute(
        "SELECT details->>'txn', details->>'tag', id, transaction_id,"
        "       audit.leaf_hash(l) = l.hash AND l.hash_algorithm = 'SHA-256'"
        "       AND length(l.hash) = 32"
        " FROM audit.audit_log l WHERE details->>'run' = %s AND details->>'phase' = %s",
        (RUN, phase)).fetchall()


def check_table(res, conn, label):
    n, ids, bad = conn.execute(
        "SELECT count(*), count(DISTINCT id),"
        "       count(*) FILTER (WHERE audit.leaf_hash(l) IS DISTINCT FROM l.hash)"
        " FROM audit.audit_log l").fetchone()
    res.check(n == ids, "%s: all %d ids in audit.audit_log are unique" % (label, n),
              "%d rows, %d distinct ids" % (n, ids))
    res.check(bad == 0, "%s: every row's hash equals audit.leaf_hash(row)" % label,
              "%d of %d rows differ" % (bad, n))


def verify_phase(res, conn, phase, committed, absent, ambiguous):
    """committed: Txn list; absent: tags that must not exist; ambiguous: Txn list."""
    rows = phase_rows(conn, phase)
    count = collections.Counter(r[1] for r in rows)
    by_tag = {r[1]: r for r in rows}
    want = {tag: txn for txn in committed for tag in txn.kept}

    missing = [t for t in want if count[t] == 0]
    dups = [t for t, c in count.items() if c > 1]
    res.check(not missing and not dups,
              "%s: each of the %d committed rows is present exactly once" % (phase, len(want)),
              "missing %d %s; duplicated %d %s" % (len(missing), sample(missing),
                                                   len(dups), sample(dups)))
    present = [t for t in absent if count[t]]
    res.check(not present, "%s: none of the %d rolled-back or uncommitted rows is present"
              % (phase, len(absent)), "present: %d %s" % (len(present), sample(present)))
    check_ambiguous = ambiguous is not None
    ambiguous = ambiguous or []
    maybe = {tag for txn in ambiguous for tag in txn.kept}
    unknown = [t for t in count if t not in want and t not in maybe]
    res.check(not unknown, "%s: no row carries a tag the client did not commit" % phase,
              "%d such rows %s" % (len(unknown), sample(unknown)))

    wrong_id = [t for txn in committed for t, i in txn.ids.items()
                if t in want and t in by_tag and by_tag[t][2] != i]
    res.check(not wrong_id, "%s: each row has the id its writer was given (RETURNING, "
              "last_event_id(), log_event())" % phase,
              "%d differ %s" % (len(wrong_id), sample(wrong_id)))

    bad_hash = [r[1] for r in rows if not r[4]]
    res.check(not bad_hash, "%s: all %d rows have a valid SHA-256 leaf hash" % (phase, len(rows)),
              "%d bad %s" % (len(bad_hash), sample(bad_hash)))

    xids_of = collections.defaultdict(set)
    txns_of = collections.defaultdict(set)
    for r in rows:
        xids_of[r[0]].add(r[3])
        txns_of[r[3]].add(r[0])
    wrong_xid = [txn.key for txn in committed
                 if txn.kept and xids_of.get(txn.key) != {txn.xid}]
    res.check(not wrong_xid, "%s: the rows of each committed transaction share its "
              "transaction_id (= pg_current_xact_id())" % phase,
              "%d transactions differ, e.g. %s" % (len(wrong_xid), [
                  (k, sorted(xids_of.get(k, ()))) for k in sorted(wrong_xid)[:3]]))
    shared = {x: k for x, k in txns_of.items() if len(k) > 1}
    res.check(not shared, "%s: rows of different transactions have different transaction_ids "
              "(%d transaction_ids)" % (phase, len(txns_of)),
              "%d shared, e.g. %s" % (len(shared), list(shared.items())[:3]))

    partial = []
    landed = 0
    for txn in ambiguous:
        n = sum(1 for t in txn.kept if count[t])
        if n:
            landed += 1
        if n not in (0, len(txn.kept)):
            partial.append(txn.key)
    if check_ambiguous:
        res.check(not partial, "%s: each of the %d transactions with COMMIT in flight is "
                  "present whole or absent whole (%d present)" % (phase, len(ambiguous), landed),
                  "partial: %s" % sample(partial))
    return rows, landed


# -- part 1 -----------------------------------------------------------------

def bulk_insert(ctx, out, delay):
    try:
        with psycopg.connect(autocommit=True, application_name="cc-bulk") as conn:
            ctx.start.wait()
            time.sleep(delay)
            txn = Txn("%s-p1-bulk" % RUN)
            t0 = time.monotonic()
            conn.execute("BEGIN")
            n = conn.execute(
                "INSERT INTO audit.audit_log (action, status, principal_id, organization_id, details)"
                " SELECT 'cc_bulk', 'success', 'bulk-' || g, 'org-bulk',"
                "        jsonb_build_object('run', %s::text, 'phase', 'p1', 'txn', %s::text,"
                "                           'tag', %s::text || '-' || g)"
                " FROM generate_series(1, %s) g",
                (RUN, txn.key, txn.key, BULK_ROWS)).rowcount
            txn.kept = ["%s-%d" % (txn.key, g) for g in range(1, BULK_ROWS + 1)]
            txn.xid = conn.execute("SELECT pg_current_xact_id()::text::bigint").fetchone()[0]
            txn.state = "commit_sent"
            conn.execute("COMMIT")
            txn.state = "committed"
            out.update(txn=txn, rowcount=n, seconds=time.monotonic() - t0, started=delay)
    except (psycopg.Error, threading.BrokenBarrierError) as e:
        out["error"] = "%s: %s" % (type(e).__name__, e)
        ctx.start.abort()


def part1(res, conn):
    ctx = Ctx("p1", crash=False)

    def go():
        ctx.deadline = time.monotonic() + LOAD_SECONDS
    ctx.start = threading.Barrier(WORKERS + 2, action=go)
    workers = [Worker(ctx, w, holder=w < 3) for w in range(WORKERS)]
    bulk = {}
    bulk_thread = threading.Thread(target=bulk_insert, args=(ctx, bulk, LOAD_SECONDS / 4),
                                   daemon=True)
    for w in workers:
        w.start()
    bulk_thread.start()
    try:
        ctx.start.wait(60)
    except threading.BrokenBarrierError:
        pass
    t0 = time.monotonic()
    for w in workers:
        w.join(LOAD_SECONDS + 120)
    bulk_thread.join(120)
    ctx.stop.set()
    elapsed = time.monotonic() - t0

    hung = [w.name for w in workers if w.is_alive()] + (["bulk"] if bulk_thread.is_alive() else [])
    errors = [e for w in workers for e in w.errors]
    res.check(not hung and not errors, "p1: %d workers ran without unexpected errors" % WORKERS,
              "hung: %s; errors (%d): %s" % (hung, len(errors), "\n#   ".join(errors[:10])))

    committed = [t for w in workers for t in w.committed]
    rolled_back = [t for w in workers for t in w.rolled_back]
    discarded = [t for txn in committed for t in txn.discarded]
    ambiguous = [t for w in workers for t in w.ambiguous]
    st = merged(workers)
    info("p1: %.1f s, %d transactions: %d committed (%d rows), %d rolled back "
         "(%d explicit, %d on error; %d rows), %d savepoint rollbacks, %d releases, "
         "%d held open, %d multi-row inserts' rows; rows by RETURNING %d, last_event_id %d, "
         "log_event %d"
         % (elapsed, st["transactions"], len(committed), sum(len(t.kept) for t in committed),
            st["explicit_rollbacks"] + st["error_rollbacks"], st["explicit_rollbacks"],
            st["error_rollbacks"], len(rolled_back), st["savepoint_rollbacks"],
            st["savepoint_releases"], st["held"], st["rows_multi"], st["rows_returning"],
            st["rows_last_event_id"], st["rows_log_event"]))
    res.check(all(st[k] > 0 for k in ("explicit_rollbacks", "error_rollbacks",
                                      "savepoint_rollbacks", "savepoint_releases", "held",
                                      "rows_multi", "rows_returning", "rows_last_event_id",
                                      "rows_log_event")),
              "p1: the load exercised every kind of transaction and insert", str(dict(st)))

    res.check("txn" in bulk and bulk.get("rowcount") == BULK_ROWS,
              "p1: the bulk INSERT ... SELECT of %d rows committed" % BULK_ROWS, str(bulk))
    if "txn" in bulk:
        info("p1: bulk insert started at %.1f s, took %.2f s"
             % (bulk["started"], bulk["seconds"]))
        committed.append(bulk["txn"])

    rows, _ = verify_phase(res, conn, "p1", committed, rolled_back + discarded,
                           ambiguous or None)
    if "txn" in bulk:
        b = [r for r in rows if r[0] == bulk["txn"].key]
        ok = (len(b) == BULK_ROWS and len({r[1] for r in b}) == BULK_ROWS and all(r[4] for r in b)
              and {r[3] for r in b} == {bulk["txn"].xid})
        res.check(ok, "p1: all %d bulk rows are present, distinct, hashed, in one transaction"
                  % BULK_ROWS, "%d rows" % len(b))
    check_table(res, conn, "p1")
    return len(rows)


# -- part 2 -----------------------------------------------------------------


def server_facts(conn):
    datadir = conn.execute("SHOW data_directory").fetchone()[0]
    started, backend = conn.execute(
        "SELECT pg_postmaster_start_time(), pg_backend_pid()").fetchone()
    with open(os.path.join(datadir, "postmaster.pid")) as f:
        lines = f.read().split("\n")
    return datadir, started, backend, int(lines[0]), lines


def lock_files(datadir, pidfile_lines):
    """postmaster.pid and the socket lock files a postmaster wrote."""
    files = [os.path.join(datadir, "postmaster.pid")]
    if len(pidfile_lines) > 4 and pidfile_lines[4].strip():
        sockdir, port = pidfile_lines[4].strip(), pidfile_lines[3].strip()
        files.append(os.path.join(sockdir, ".s.PGSQL.%s.lock" % port))
    return files


def start_server(cmd, datadir, pid, pidfile_lines):
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        # The server ignores lock files naming a PID that no longer exists;
        # one naming a zombie that nobody has reaped yet looks alive to it.
        # If it refused, remove the lock files of the killed (dead) postmaster
        # and try once more.
        removed = []
        for path in lock_files(datadir, pidfile_lines):
            try:
                with open(path) as f:
                    owner = int(f.readline())
                if owner == pid and not alive(owner):
                    os.unlink(path)
                    removed.append(path)
            except (OSError, ValueError):
                pass
        if removed:
            info("pg_ctl failed; removed stale lock files %s (PID %d) and retrying"
                 % (removed, pid))
            r = subprocess.run(cmd, capture_output=True, text=True)
    return r


def connect_retry(seconds=60):
    deadline = time.monotonic() + seconds
    while True:
        try:
            return psycopg.connect(autocommit=True)
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def part2(res, conn, p1_rows):
    # Where is the server, and is it ours to kill?
    try:
        datadir, started, backend, pid, pidfile_lines = server_facts(conn)
    except (OSError, ValueError, psycopg.Error) as e:
        res.check(False, "p2: found the postmaster PID (postmaster.pid in data_directory)",
                  "%s; run on the server's machine, or set CC_SKIP_CRASH=1" % e)
        return conn
    st = proc_stat(backend)
    comm = ""
    try:
        with open("/proc/%d/comm" % pid) as f:
            comm = f.read().strip()
    except OSError:
        pass
    ours = st is not None and st[1] == pid and comm in ("postgres", "postmaster")
    res.check(ours, "p2: postmaster PID %d (from %s/postmaster.pid) is the parent of our backend"
              % (pid, datadir), "backend %d: %s, comm %r" % (backend, st, comm))
    if not ours:
        return conn
    if os.geteuid() not in (0, os.stat(datadir).st_uid):
        res.check(False, "p2: may signal and restart the server",
                  "run as root or as the data directory's owner, or set CC_SKIP_CRASH=1")
        return conn
    cmd, log = restart_command(datadir, pid)
    max_id, max_xid = conn.execute(
        "SELECT max(id), max(transaction_id) FROM audit.audit_log").fetchone()
    p1_sum = conn.execute("SELECT count(*), sum(id), sum(transaction_id) FROM audit.audit_log"
                          " WHERE details->>'run' = %s AND details->>'phase' = 'p1'",
                          (RUN,)).fetchone()
    try:
        log_offset = os.path.getsize(log)
    except OSError:
        log_offset = None
    info("p2: postmaster %d, data directory %s, started %s; restart: %s"
         % (pid, datadir, started, " ".join(cmd)))

    # Load, then kill.
    ctx = Ctx("p2", crash=True)
    ctx.start = threading.Barrier(CRASH_WORKERS + 1)
    workers = [Worker(ctx, w, holder=w < 2, kill_holder=w == 0) for w in range(CRASH_WORKERS)]
    for w in workers:
        w.start()
    try:
        ctx.start.wait(60)
    except threading.BrokenBarrierError:
        pass
    t0 = time.monotonic()
    limit = t0 + CRASH_SECONDS + 60
    while time.monotonic() < limit and any(w.is_alive() for w in workers):
        if (time.monotonic() >= t0 + CRASH_SECONDS
                and all(len(w.committed) >= CRASH_MIN_COMMITS for w in workers)):
            break
        time.sleep(0.05)
    ctx.hold_request.set()
    held = ctx.holding.wait(30)
    time.sleep(0.2)
    ctx.killing.set()
    kids = []
    if held and alive(pid):
        os.kill(pid, signal.SIGSTOP)     # freeze: no new children from here on
        kids = children(pid)
        signal_all(kids, signal.SIGSTOP)  # the whole server stops at one instant
        os.kill(pid, signal.SIGKILL)
        signal_all(kids, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(alive(p) for p in [pid] + kids):
        time.sleep(0.05)
    killed_at = time.monotonic() - t0
    gone = not any(alive(p) for p in [pid] + kids)
    ctx.killed.set()
    for w in workers:
        w.join(60)
    ctx.stop.set()
    res.check(held and gone, "p2: after %.1f s of load, SIGKILL took down the postmaster and "
              "its %d children while a transaction was open" % (killed_at, len(kids)),
              "holder ready: %s; still alive: %s" % (held, [p for p in [pid] + kids if alive(p)]))
    try:
        conn.close()
    except psycopg.Error:
        pass
    if not gone:
        return connect_retry(5)

    # Restart: crash recovery from WAL. Give PID 1 a moment to reap the dead.
    t1 = time.monotonic()
    while time.monotonic() < t1 + 10 and any(proc_stat(p) for p in [pid] + kids):
        time.sleep(0.05)
    r = start_server(cmd, datadir, pid, pidfile_lines)
    res.check(r.returncode == 0, "p2: pg_ctl start brought the server back (%.1f s)"
              % (time.monotonic() - t1), (r.stdout + r.stderr).strip().replace("\n", "\n#   "))
    if log_offset is not None:
        try:
            with open(log, errors="replace") as f:
                f.seek(log_offset)
                for line in f:
                    if any(k in line for k in ("not properly shut down", "redo ", "ready to accept")):
                        info("server: " + line.rstrip())
        except OSError:
            pass
    if r.returncode != 0:
        return None
    conn = connect_retry()
    started2, in_recovery = conn.execute(
        "SELECT pg_postmaster_start_time(), pg_is_in_recovery()").fetchone()
    res.check(started2 > started and not in_recovery,
              "p2: a new postmaster runs, out of recovery", "%s, %s" % (started2, in_recovery))

    hung = [w.name for w in workers if w.is_alive()]
    errors = [e for w in workers for e in w.errors]
    res.check(not hung and not errors, "p2: %d workers ended without unexpected errors"
              % CRASH_WORKERS, "hung: %s; errors: %s" % (hung, "\n#   ".join(errors[:10])))
    committed = [t for w in workers for t in w.committed]
    rolled_back = [t for w in workers for t in w.rolled_back]
    discarded = [t for txn in committed for t in txn.discarded]
    uncommitted = [t for w in workers for t in w.uncommitted]
    unc_tags = [tag for txn in uncommitted for tag in txn.kept + txn.discarded]
    ambiguous = [t for w in workers for t in w.ambiguous]
    st = merged(workers)
    info("p2: %d transactions: %d committed (%d rows), %d rolled back (%d rows), "
         "%d open at the kill (%d rows), %d with COMMIT in flight (ambiguous)"
         % (st["transactions"], len(committed), sum(len(t.kept) for t in committed),
            st["explicit_rollbacks"] + st["error_rollbacks"], len(rolled_back),
            len(uncommitted), len(unc_tags), len(ambiguous)))
    res.check(any(t.kept for t in uncommitted),
              "p2: at least one transaction with rows was open at the kill",
              "%d open" % len(uncommitted))

    _, landed = verify_phase(res, conn, "p2", committed,
                             rolled_back + discarded + unc_tags, ambiguous)
    info("p2: %d of %d ambiguous transactions survived" % (landed, len(ambiguous)))
    after = conn.execute("SELECT count(*), sum(id), sum(transaction_id) FROM audit.audit_log"
                         " WHERE details->>'run' = %s AND details->>'phase' = 'p1'",
                         (RUN,)).fetchone()
    res.check(after == p1_sum and after[0] == p1_rows,
              "p2: the %d rows of part 1 are intact after recovery" % p1_rows,
              "before %s, after %s" % (p1_sum, after))
    check_table(res, conn, "p2")

    # The extension still works, and does not reuse ids or transaction ids.
    rec_id, rec_xid = conn.execute(
        "SELECT max(id), max(transaction_id) FROM audit.audit_log").fetchone()
    try:
        conn.execute("BEGIN")
        tag = "%s-p3" % RUN
        d = Jsonb({"run": RUN, "phase": "p3", "txn": tag, "tag": tag + "-r0"})
        id1 = conn.execute(LOG_EVENT_SQL, ("cc_after", "success", "p", "o", d)).fetchone()[0]
        d = Jsonb({"run": RUN, "phase": "p3", "txn": tag, "tag": tag + "-r1"})
        id2, xid2 = conn.execute(INSERT_SQL + " RETURNING id, transaction_id",
                                 ("cc_after", "success", "p", "o", d)).fetchone()
        xid = conn.execute("SELECT pg_current_xact_id()::text::bigint").fetchone()[0]
        conn.execute("COMMIT")
        rows = conn.execute("SELECT id, transaction_id, audit.leaf_hash(l) = l.hash"
                            " FROM audit.audit_log l WHERE details->>'run' = %s"
                            " AND details->>'phase' = 'p3' ORDER BY id", (RUN,)).fetchall()
        ok = (rows == [(id1, xid, True), (id2, xid, True)] and xid2 == xid
              and id1 > rec_id and id1 > max_id and xid > rec_xid and xid > max_xid)
        res.check(ok, "p2: after recovery new events are stamped, with an id above every "
                  "recovered id and a transaction_id above every recovered one",
                  "new %s (xid %s); recovered max id %s, max transaction_id %s"
                  % (rows, xid, rec_id, rec_xid))
    except psycopg.Error as e:
        res.check(False, "p2: after recovery new events are stamped", str(e))
    return conn


def main():
    res = Results()
    conn = psycopg.connect(autocommit=True)
    conn.execute("CREATE EXTENSION IF NOT EXISTS audit_db")
    info("run %s, seed %d, %d workers for %.0f s" % (RUN, SEED, WORKERS, LOAD_SECONDS))
    p1_rows = part1(res, conn)
    if SKIP_CRASH:
        info("CC_SKIP_CRASH=1: part 2 (crash) skipped")
    else:
        conn = part2(res, conn, p1_rows)
    if conn is not None:
        conn.close()
    return res.finish("concurrency_crash")


if __name__ == "__main__":
    sys.exit(main())
