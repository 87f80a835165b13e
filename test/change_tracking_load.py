#!/usr/bin/env python3
"""test/change_tracking_load.py: change tracking (audit.track_table()) under
concurrent load and a crash: every committed row change has exactly one
event, and no rolled-back change has one.

Starts a cluster of its own (audit_db preloaded, fsync on, ports
54500..54599), runs pgbench -i -s 1 --foreign-keys (so foreign-key checks
run queries between the rows of one statement) and tracks its four tables (INSERT,
UPDATE, DELETE), a table without a primary key (ct_nopk, full rows, a
deferred unique constraint) and a list-partitioned table (ct_part: a
composite key, one partition with another column order and a dropped
column, a default partition, an AFTER trigger that rejects "poison" rows
after the change's event is written).

Part 1: 8 worker threads, one connection each, for CTL_SECONDS (20) seconds:
TPC-B-like transactions (3 updates and a history insert), multi-row INSERT,
UPDATE and DELETE statements (shared pgbench rows and each worker's own
rows), COPY FROM STDIN, savepoints (ROLLBACK TO, RELEASE, nested, an error
inside one), PL/pgSQL DO blocks whose EXCEPTION sub-block fails (division by
zero, or a poison row whose event was already written), a function with an
exception block called per row of a SELECT, single statements in autocommit
mode; about 10% of transactions end in ROLLBACK, some fail on an error
(poison row, duplicate key) and some at COMMIT (deferred unique
constraint); deadlocks between workers roll back too; now and then
audit.seal(). Every inserted or updated row gets a unique marker (in pgbench's
filler column, or ct_*.marker), and each worker records what it committed.
Asserted: each committed change has exactly one event (found by table,
operation and marker) with the right action, target_resource_type,
target_resource_id (the key; the SHA-256 row identity, recomputed here, for
the tables without a key), diff (old, new, changed; balances moved by the
delta), actor, transaction_id and principal; no event for a change that was
not committed, and no rolled-back marker anywhere in audit.audit_log's
details; the events of one statement share one correlation_id and events of
different statements do not; replaying every event in id order from a
snapshot taken before tracking reproduces each tracked table exactly (so no
change lacks its event, and no event lacks its change); after audit.seal(),
audit.verify() finds nothing; the server log has no leak WARNING (relcache
reference, buffer pin, resource owner ...) and no PANIC, TRAP or crashed
process.

Part 1's sessions commit asynchronously (nothing crashes there); part 2's
do not. Part 2: the same load (synchronous_commit = on) for CTL_CRASH_SECONDS (8)
seconds, one more transaction held open with changes, then SIGSTOP and
SIGKILL of the postmaster and all its children, and pg_ctl start (crash
recovery). Asserted: every transaction whose COMMIT returned has all its
events, exactly once; rolled-back and still-open transactions have none; a
transaction whose COMMIT was in flight has all or none; part 1's events are
intact; the replay reproduces every tracked table; new changes are tracked
after recovery; verify is clean after sealing; the server log as above.

Runs as root (or as the postgres user); needs pgbench and Debian's
python3-psycopg. Settings: CTL_SECONDS, CTL_CRASH_SECONDS, CTL_SEED.
Last line: "change_tracking_load: N passed, M failed".
"""
import collections
import datetime
import hashlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from decimal import Decimal

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
from clusterkit import BINDIR, as_postgres, log_tail, start_cluster, stop_cluster  # noqa: E402
from crashkit import alive, children, proc_stat, restart_command, signal_all  # noqa: E402
from testkit import Results, info, log_since, log_size, psycopg, q, q1, seal_all  # noqa: E402

pg = psycopg()
from psycopg.pq import TransactionStatus  # noqa: E402
from psycopg.types.json import Jsonb  # noqa: E402

LOAD_SECONDS = float(os.environ.get("CTL_SECONDS", "20"))
CRASH_SECONDS = float(os.environ.get("CTL_CRASH_SECONDS", "8"))
SEED = int(os.environ.get("CTL_SEED", "8113"))
WORKERS = 8
PORTS = (54500, 54599)
DB = "ct_load"
REGIONS = ("eu", "us", "ap")      # ct_part_eu, ct_part_us, the default partition
ACCOUNTS = 100000                 # pgbench -s 1
TELLERS = 10
PHASE_BASE = {"p1": 10000000, "p2": 20000000}   # keys of the workers' own rows
OWN_AID = 100000000                              # + PHASE_BASE ...: the workers' own accounts
SEAL_PROB = 0.03
MIN_COMMITS_BEFORE_KILL = 3

MARKER_RE = re.compile(r"p[12]w\d{2}s\d{6}(?:\.\d+)?")
COLUMNS = {
    "pgbench_accounts": ("aid", "bid", "abalance", "filler"),
    "pgbench_tellers": ("tid", "bid", "tbalance", "filler"),
    "pgbench_branches": ("bid", "bbalance", "filler"),
    "pgbench_history": ("tid", "bid", "aid", "delta", "mtime", "filler"),
    "ct_part": ("region", "k", "marker", "v", "amount", "flag", "payload"),
    "ct_nopk": ("w", "n", "marker", "v", "note"),
}
MARKER_COL = {t: ("filler" if t.startswith("pgbench_") else "marker") for t in COLUMNS}
HISTORY_FILLER = 22               # char(22): the row identity hashes the padded text
FULL_ROWS = {"ct_nopk"}
# Tables with a primary key: the key as target_resource_id shows it, in SQL; the snapshot taken
# before tracking and its key column (the workers' own tables start empty).
KEYED = {
    "pgbench_accounts": ("aid::text", "ct_snap_accounts", "aid"),
    "pgbench_tellers": ("tid::text", "ct_snap_tellers", "tid"),
    "pgbench_branches": ("bid::text", "ct_snap_branches", "bid"),
    "ct_part": ("jsonb_build_array(region, k::text)::text", None, None),
}
BAGS = ("pgbench_history", "ct_nopk")   # no primary key: compared as multisets of rows
TRACKED_ACTION_RE = r"^(pgbench_(accounts|tellers|branches|history)|ct_part|ct_nopk)\.(insert|update|delete)$"

SETUP = [
    "CREATE TABLE ct_snap_accounts AS SELECT * FROM pgbench_accounts",
    "CREATE TABLE ct_snap_tellers AS SELECT * FROM pgbench_tellers",
    "CREATE TABLE ct_snap_branches AS SELECT * FROM pgbench_branches",
    """CREATE TABLE ct_part (region text NOT NULL, k integer NOT NULL, marker text NOT NULL,
         v integer NOT NULL, amount numeric(12,2) NOT NULL, flag boolean, payload jsonb,
         PRIMARY KEY (region, k)) PARTITION BY LIST (region)""",
    "CREATE TABLE ct_part_eu PARTITION OF ct_part FOR VALUES IN ('eu')",
    """CREATE TABLE ct_part_us (junk integer, payload jsonb, flag boolean, amount numeric(12,2) NOT NULL,
         v integer NOT NULL, marker text NOT NULL, k integer NOT NULL, region text NOT NULL)""",
    "ALTER TABLE ct_part_us DROP COLUMN junk",
    "ALTER TABLE ct_part ATTACH PARTITION ct_part_us FOR VALUES IN ('us')",
    "CREATE TABLE ct_part_rest PARTITION OF ct_part DEFAULT",
    """CREATE TABLE ct_nopk (w integer NOT NULL, n integer NOT NULL, marker text NOT NULL, v integer,
         note text, UNIQUE (w, n) DEFERRABLE INITIALLY DEFERRED)""",
    # Fires after audit_db_changes (name order): the poison row's event is already written.
    """CREATE FUNCTION ct_guard() RETURNS trigger LANGUAGE plpgsql AS $$
       BEGIN
         IF NEW.v = -1 THEN
           RAISE EXCEPTION 'ct_guard: poison row %', NEW.k;
         END IF;
         RETURN NULL;
       END $$""",
    "CREATE TRIGGER zz_guard AFTER INSERT OR UPDATE ON ct_part FOR EACH ROW EXECUTE FUNCTION ct_guard()",
    # One row, in an exception block of its own; false when the row was a poison one.
    """CREATE FUNCTION ct_try(p_region text, p_k integer, p_marker text, p_fail boolean)
       RETURNS boolean LANGUAGE plpgsql AS $$
       BEGIN
         BEGIN
           INSERT INTO ct_part (region, k, marker, v, amount)
             VALUES (p_region, p_k, p_marker, CASE WHEN p_fail THEN -1 ELSE 1 END, 1.00);
           RETURN true;
         EXCEPTION WHEN raise_exception THEN
           RETURN false;
         END;
       END $$""",
    "SELECT audit.track_table('public.pgbench_accounts', operations => '{INSERT,UPDATE,DELETE}')",
    "SELECT audit.track_table('public.pgbench_tellers', operations => '{INSERT,UPDATE,DELETE}')",
    "SELECT audit.track_table('public.pgbench_branches', operations => '{INSERT,UPDATE,DELETE}')",
    "SELECT audit.track_table('public.pgbench_history', operations => '{INSERT,UPDATE,DELETE}')",
    "SELECT audit.track_table('public.ct_part', operations => '{INSERT,UPDATE,DELETE}')",
    "SELECT audit.track_table('public.ct_nopk', operations => '{INSERT,UPDATE,DELETE}', full_rows => true)",
]

LEAK_RE = re.compile(r"WARNING:.*(leak|not closed|still referenced|resource owner|buffer pin|refcount|"
                     r"was not released)", re.I)
CRASH_RE = re.compile(r"PANIC:|TRAP:|terminated by signal|was terminated by exception|segmentation fault|"
                      r"server process .* exited with exit code")


def sample(items, n=5):
    items = sorted(items, key=str)
    return "%s%s" % (items[:n], " ..." if len(items) > n else "")


def row_identity(texts):
    """target_resource_id of a row of a table without a primary key: 'row:' and the
    SHA-256 of each column's text, length-prefixed (4 bytes, big-endian), NULL as 0xff."""
    data = bytearray()
    for t in texts:
        if t is None:
            data.append(0xFF)
        else:
            b = t.encode()
            data += len(b).to_bytes(4, "big") + b
    return "row:" + hashlib.sha256(bytes(data)).hexdigest()


def nopk_key(r):
    return row_identity([str(r["w"]), str(r["n"]), r["marker"],
                         None if r["v"] is None else str(r["v"]), r["note"]])


def history_key(h):
    return row_identity([str(h["tid"]), str(h["bid"]), str(h["aid"]), str(h["delta"]), h["mtime"],
                         h["filler"].ljust(HISTORY_FILLER)])


def part_key(region, k):
    return json.dumps([region, str(k)])


def norm(table, col, v):
    """An event's value as the client wrote it: char(n) fillers without their padding."""
    if col == "filler" and table.startswith("pgbench_") and isinstance(v, str):
        return v.rstrip()
    return v


def jload(text):
    return json.loads(text, parse_float=Decimal)


def canon(row):
    return json.dumps(row, sort_keys=True, default=str)


class Change:
    """One row change a statement made: the event it must have."""
    __slots__ = ("table", "op", "marker", "stmt", "key", "new", "old", "changed", "delta")

    def __init__(self, table, op, marker, stmt, key, new=None, old=None, changed=None, delta=None):
        self.table, self.op, self.marker, self.stmt, self.key = table, op, marker, stmt, key
        self.new, self.old, self.changed, self.delta = new, old, changed, delta

    @property
    def ident(self):
        return (self.table, self.op, self.marker)


class Own:
    """A worker's own rows (only it changes them): ct_part, ct_nopk, pgbench_accounts."""

    def __init__(self, part=None, nopk=None, acc=None):
        self.part = part if part is not None else {}
        self.nopk = nopk if nopk is not None else {}
        self.acc = acc if acc is not None else {}

    def copy(self):
        return Own(dict(self.part), dict(self.nopk), dict(self.acc))


class Txn:
    def __init__(self, key, own):
        self.key = key
        self.own = own
        self.changes = []       # kept (not rolled back to a savepoint)
        self.fresh = []         # every marker this transaction tried to write
        self.xid = None
        self.pid = None
        self.app = None
        self.state = "open"     # open, commit_sent, committed, rolled_back

    def absent(self):
        """Markers that must appear nowhere if this transaction committed."""
        kept = {c.marker for c in self.changes if c.op != "delete"}
        return [m for m in self.fresh if m not in kept]


class Ctx:
    def __init__(self, phase, crash, seconds):
        self.phase, self.crash, self.seconds = phase, crash, seconds
        self.deadline = None
        self.start = None
        self.stop = threading.Event()
        self.killing = threading.Event()
        self.killed = threading.Event()
        self.hold_request = threading.Event()
        self.holding = threading.Event()


class Worker(threading.Thread):
    def __init__(self, ctx, conninfo, wid):
        super().__init__(name="ctl-%s-w%d" % (ctx.phase, wid), daemon=True)
        self.ctx, self.conninfo, self.wid = ctx, conninfo, wid
        self.rnd = random.Random(SEED * 100 + wid + (50 if ctx.crash else 0))
        self.holder = ctx.crash and wid == 0
        self.seq = 0
        self.nid = 0
        self.own = Own()
        self.committed = []     # Txn
        self.rolled_back = []   # markers of transactions that rolled back
        self.lost = []          # Txn open when the server died
        self.ambiguous = []     # Txn whose COMMIT was in flight when the server died
        self.errors = []
        self.stats = collections.Counter()
        self.conn = None
        self.pid = None
        self.txn = None

    # -- helpers -----------------------------------------------------------
    def x(self, sql, params=None):
        return self.conn.execute(sql, params)

    def marker(self):
        self.seq += 1
        return "%sw%02ds%06d" % (self.ctx.phase, self.wid, self.seq)

    def new_id(self):
        self.nid += 1
        return PHASE_BASE[self.ctx.phase] + self.wid * 100000 + self.nid

    def delta(self):
        return self.rnd.choice((-1, 1)) * self.rnd.randint(1, 5000)

    def mtime(self):
        # An odd number of microseconds: ISO 8601 text without trailing zeros, as JSON writes it.
        return (datetime.datetime(2026, 1, 1) + datetime.timedelta(
            seconds=self.rnd.randrange(10 ** 7), microseconds=self.rnd.randrange(500000) * 2 + 1))

    def part_row(self, marker, v=None):
        rnd = self.rnd
        return {"region": rnd.choice(REGIONS), "k": self.new_id(), "marker": marker,
                "v": rnd.randint(0, 10 ** 6) if v is None else v,
                "amount": Decimal(rnd.randint(0, 10 ** 7)) / 100,
                "flag": rnd.choice((True, False, None)),
                "payload": rnd.choice((None, {"n": rnd.randint(0, 99), "tags": ["a", "b"][:rnd.randint(0, 2)]}))}

    def nopk_row(self, marker, n=None):
        rnd = self.rnd
        return {"w": self.wid, "n": self.new_id() if n is None else n, "marker": marker,
                "v": rnd.choice((None, rnd.randint(0, 1000))),
                "note": rnd.choice((None, "note %d" % rnd.randint(0, 999), "änderung 'x'\t%d" % rnd.randint(0, 9)))}

    def history_row(self, marker):
        rnd = self.rnd
        t = self.mtime()
        return {"tid": rnd.randint(1, TELLERS), "bid": 1, "aid": rnd.randint(1, ACCOUNTS), "delta": self.delta(),
                "mtime": t.isoformat(), "filler": marker}, t

    # -- ct_part -----------------------------------------------------------
    def part_insert(self, txn, n, returning=False, poison=False, via_copy=False):
        prefix = self.marker()
        rows = [self.part_row(prefix if n == 1 else "%s.%d" % (prefix, i)) for i in range(n)]
        if poison:
            rows[-1]["v"] = -1
        txn.fresh.extend(r["marker"] for r in rows)
        vals = [(r["region"], r["k"], r["marker"], r["v"], r["amount"], r["flag"],
                 None if r["payload"] is None else Jsonb(r["payload"])) for r in rows]
        if via_copy:
            with self.conn.cursor().copy("COPY ct_part (region, k, marker, v, amount, flag, payload) FROM STDIN") as cp:
                for v in vals:
                    cp.write_row(v)
            self.stats["copy_rows"] += n
        else:
            sql = ("INSERT INTO ct_part (region, k, marker, v, amount, flag, payload) VALUES "
                   + ", ".join(["(%s, %s, %s, %s, %s, %s, %s)"] * n))
            if returning:
                sql += " RETURNING pg_current_xact_id()::text::bigint"
            cur = self.x(sql, [a for v in vals for a in v])
            if returning:
                txn.xid = cur.fetchone()[0]
        for r in rows:
            txn.own.part[(r["region"], r["k"])] = r
            txn.changes.append(Change("ct_part", "insert", r["marker"], prefix, part_key(r["region"], r["k"]),
                                      new=dict(r)))
        self.stats["multi_row_statements"] += n > 1

    def part_duplicate(self, txn):
        """An INSERT that fails on the primary key (no event is written)."""
        prefix = self.marker()
        r = self.part_row(prefix)
        if txn.own.part:
            r["region"], r["k"] = self.rnd.choice(sorted(txn.own.part))
            txn.fresh.append(prefix)
            self.x("INSERT INTO ct_part (region, k, marker, v, amount) VALUES (%s, %s, %s, 1, 1)",
                   (r["region"], r["k"], prefix))
        else:
            txn.fresh.extend([prefix + ".0", prefix + ".1"])
            self.x("INSERT INTO ct_part (region, k, marker, v, amount) VALUES (%s, %s, %s, 1, 1), (%s, %s, %s, 1, 1)",
                   (r["region"], r["k"], prefix + ".0", r["region"], r["k"], prefix + ".1"))

    def part_update(self, txn, n):
        keys = self.rnd.sample(sorted(txn.own.part), min(n, len(txn.own.part)))
        prefix = self.marker()
        ms = {key: "%s.%d" % (prefix, key[1]) for key in keys}
        txn.fresh.extend(ms.values())
        cur = self.x("UPDATE ct_part SET v = v + 1, amount = amount + 0.25, marker = %s || '.' || k"
                     " WHERE (region, k) IN (SELECT * FROM unnest(%s::text[], %s::int[]))",
                     (prefix, [k[0] for k in keys], [k[1] for k in keys]))
        if cur.rowcount != len(keys):
            self.errors.append("%s: UPDATE ct_part changed %d rows, not %d" % (txn.key, cur.rowcount, len(keys)))
        for key in keys:
            old = txn.own.part[key]
            new = dict(old, v=old["v"] + 1, amount=old["amount"] + Decimal("0.25"), marker=ms[key])
            txn.own.part[key] = new
            cols = ("v", "amount", "marker")
            txn.changes.append(Change("ct_part", "update", ms[key], prefix, part_key(*key),
                                      old={c: old[c] for c in cols}, new={c: new[c] for c in cols},
                                      changed=set(cols)))
        self.stats["multi_row_statements"] += len(keys) > 1

    def part_update_payload(self, txn):
        key = self.rnd.choice(sorted(txn.own.part))
        old = txn.own.part[key]
        m = self.marker()
        txn.fresh.append(m)
        new = dict(old, flag=(not old["flag"]) if old["flag"] is not None else True,
                   payload={"m": m, "n": self.rnd.randint(0, 99), "nested": {"ok": True, "x": None}},
                   marker=m)
        self.x("UPDATE ct_part SET flag = %s, payload = %s, marker = %s WHERE region = %s AND k = %s",
               (new["flag"], Jsonb(new["payload"]), m, key[0], key[1]))
        txn.own.part[key] = new
        cols = ("flag", "payload", "marker")
        txn.changes.append(Change("ct_part", "update", m, m, part_key(*key), old={c: old[c] for c in cols},
                                  new={c: new[c] for c in cols}, changed=set(cols)))

    def part_delete(self, txn, n):
        keys = self.rnd.sample(sorted(txn.own.part), min(n, len(txn.own.part)))
        stmt = self.marker()
        cur = self.x("DELETE FROM ct_part WHERE (region, k) IN (SELECT * FROM unnest(%s::text[], %s::int[]))",
                     ([k[0] for k in keys], [k[1] for k in keys]))
        if cur.rowcount != len(keys):
            self.errors.append("%s: DELETE FROM ct_part removed %d rows, not %d" % (txn.key, cur.rowcount, len(keys)))
        for key in keys:
            old = txn.own.part.pop(key)
            txn.changes.append(Change("ct_part", "delete", old["marker"], stmt, part_key(*key), old=dict(old)))
        self.stats["multi_row_statements"] += len(keys) > 1

    # -- ct_nopk -----------------------------------------------------------
    def nopk_insert(self, txn, n, via_copy=False, dup_of=None):
        prefix = self.marker()
        rows = [self.nopk_row(prefix if n == 1 else "%s.%d" % (prefix, i), n=dup_of) for i in range(n)]
        txn.fresh.extend(r["marker"] for r in rows)
        vals = [(r["w"], r["n"], r["marker"], r["v"], r["note"]) for r in rows]
        if via_copy:
            with self.conn.cursor().copy("COPY ct_nopk (w, n, marker, v, note) FROM STDIN") as cp:
                for v in vals:
                    cp.write_row(v)
            self.stats["copy_rows"] += n
        else:
            self.x("INSERT INTO ct_nopk (w, n, marker, v, note) VALUES " + ", ".join(["(%s, %s, %s, %s, %s)"] * n),
                   [a for v in vals for a in v])
        for r in rows:
            txn.own.nopk[r["n"]] = r
            txn.changes.append(Change("ct_nopk", "insert", r["marker"], prefix, nopk_key(r), new=dict(r)))
        self.stats["multi_row_statements"] += n > 1

    def nopk_update(self, txn, n):
        ns = self.rnd.sample(sorted(txn.own.nopk), min(n, len(txn.own.nopk)))
        prefix = self.marker()
        ms = {i: "%s.%d" % (prefix, i) for i in ns}
        txn.fresh.extend(ms.values())
        set_note = self.rnd.random() < 0.5
        note = self.rnd.choice((None, "changed %d" % self.rnd.randint(0, 99)))
        sql = "UPDATE ct_nopk SET v = coalesce(v, 0) + 7, marker = %s || '.' || n"
        params = [prefix]
        if set_note:
            sql += ", note = %s"
            params.append(note)
        cur = self.x(sql + " WHERE w = %s AND n = ANY(%s)", params + [self.wid, ns])
        if cur.rowcount != len(ns):
            self.errors.append("%s: UPDATE ct_nopk changed %d rows, not %d" % (txn.key, cur.rowcount, len(ns)))
        for i in ns:
            old = txn.own.nopk[i]
            new = dict(old, v=(old["v"] or 0) + 7, marker=ms[i], note=note if set_note else old["note"])
            txn.own.nopk[i] = new
            txn.changes.append(Change("ct_nopk", "update", ms[i], prefix, nopk_key(old), old=dict(old), new=dict(new),
                                      changed={c for c in COLUMNS["ct_nopk"] if old[c] != new[c]}))
        self.stats["multi_row_statements"] += len(ns) > 1

    def nopk_delete(self, txn, n):
        ns = self.rnd.sample(sorted(txn.own.nopk), min(n, len(txn.own.nopk)))
        stmt = self.marker()
        cur = self.x("DELETE FROM ct_nopk WHERE w = %s AND n = ANY(%s)", (self.wid, ns))
        if cur.rowcount != len(ns):
            self.errors.append("%s: DELETE FROM ct_nopk removed %d rows, not %d" % (txn.key, cur.rowcount, len(ns)))
        for i in ns:
            old = txn.own.nopk.pop(i)
            txn.changes.append(Change("ct_nopk", "delete", old["marker"], stmt, nopk_key(old), old=dict(old)))
        self.stats["multi_row_statements"] += len(ns) > 1

    # -- pgbench tables ----------------------------------------------------
    def acc_update(self, txn, aid=None, delta=None):
        aid = aid or self.rnd.randint(1, ACCOUNTS)
        delta = delta or self.delta()
        m = self.marker()
        txn.fresh.append(m)
        self.x("UPDATE pgbench_accounts SET abalance = abalance + %s, filler = %s WHERE aid = %s", (delta, m, aid))
        txn.changes.append(Change("pgbench_accounts", "update", m, m, str(aid), new={"filler": m},
                                  changed={"abalance", "filler"}, delta=("abalance", delta)))

    def acc_update_many(self, txn, n, returning=False):
        aids = sorted(self.rnd.sample(range(1, ACCOUNTS + 1), n))
        prefix = self.marker()
        ms = {a: "%s.%d" % (prefix, a) for a in aids}
        txn.fresh.extend(ms.values())
        sql = ("UPDATE pgbench_accounts SET abalance = abalance + 1, filler = %s || '.' || aid"
               " WHERE aid = ANY(%s)")
        if returning:
            sql += " RETURNING pg_current_xact_id()::text::bigint"
        cur = self.x(sql, (prefix, aids))
        if returning:
            txn.xid = cur.fetchone()[0]
        if cur.rowcount != n:
            self.errors.append("%s: UPDATE pgbench_accounts changed %d rows, not %d" % (txn.key, cur.rowcount, n))
        for a in aids:
            txn.changes.append(Change("pgbench_accounts", "update", ms[a], prefix, str(a), new={"filler": ms[a]},
                                      changed={"abalance", "filler"}, delta=("abalance", 1)))
        self.stats["multi_row_statements"] += 1

    def acc_insert(self, txn, n):
        prefix = self.marker()
        rows = [{"aid": OWN_AID + self.new_id(), "bid": 1, "abalance": self.rnd.randint(-999, 999),
                 "filler": prefix if n == 1 else "%s.%d" % (prefix, i)} for i in range(n)]
        txn.fresh.extend(r["filler"] for r in rows)
        self.x("INSERT INTO pgbench_accounts (aid, bid, abalance, filler) VALUES "
               + ", ".join(["(%s, %s, %s, %s)"] * n),
               [r[c] for r in rows for c in ("aid", "bid", "abalance", "filler")])
        for r in rows:
            txn.own.acc[r["aid"]] = r
            txn.changes.append(Change("pgbench_accounts", "insert", r["filler"], prefix, str(r["aid"]), new=dict(r)))
        self.stats["multi_row_statements"] += n > 1

    def acc_delete(self, txn, n):
        aids = self.rnd.sample(sorted(txn.own.acc), min(n, len(txn.own.acc)))
        stmt = self.marker()
        cur = self.x("DELETE FROM pgbench_accounts WHERE aid = ANY(%s)", (aids,))
        if cur.rowcount != len(aids):
            self.errors.append("%s: DELETE FROM pgbench_accounts removed %d rows" % (txn.key, cur.rowcount))
        for a in aids:
            old = txn.own.acc.pop(a)
            txn.changes.append(Change("pgbench_accounts", "delete", old["filler"], stmt, str(a), old=dict(old)))

    def teller_update(self, txn, tid, delta):
        m = self.marker()
        txn.fresh.append(m)
        self.x("UPDATE pgbench_tellers SET tbalance = tbalance + %s, filler = %s WHERE tid = %s", (delta, m, tid))
        txn.changes.append(Change("pgbench_tellers", "update", m, m, str(tid), new={"filler": m},
                                  changed={"tbalance", "filler"}, delta=("tbalance", delta)))

    def branch_update(self, txn, bid, delta):
        m = self.marker()
        txn.fresh.append(m)
        self.x("UPDATE pgbench_branches SET bbalance = bbalance + %s, filler = %s WHERE bid = %s", (delta, m, bid))
        txn.changes.append(Change("pgbench_branches", "update", m, m, str(bid), new={"filler": m},
                                  changed={"bbalance", "filler"}, delta=("bbalance", delta)))

    def history_insert(self, txn, h=None, t=None):
        if h is None:
            h, t = self.history_row(self.marker())
        txn.fresh.append(h["filler"])
        self.x("INSERT INTO pgbench_history (tid, bid, aid, delta, mtime, filler) VALUES (%s, %s, %s, %s, %s, %s)",
               (h["tid"], h["bid"], h["aid"], h["delta"], t, h["filler"]))
        txn.changes.append(Change("pgbench_history", "insert", h["filler"], h["filler"], history_key(h), new=dict(h)))

    def history_copy(self, txn, n):
        prefix = self.marker()
        rows = [self.history_row("%s.%d" % (prefix, i)) for i in range(n)]
        txn.fresh.extend(h["filler"] for h, _ in rows)
        with self.conn.cursor().copy("COPY pgbench_history (tid, bid, aid, delta, mtime, filler) FROM STDIN") as cp:
            for h, t in rows:
                cp.write_row((h["tid"], h["bid"], h["aid"], h["delta"], t, h["filler"]))
        for h, _ in rows:
            txn.changes.append(Change("pgbench_history", "insert", h["filler"], prefix, history_key(h), new=dict(h)))
        self.stats["copy_rows"] += n
        self.stats["multi_row_statements"] += 1

    def tpcb(self, txn):
        aid, tid, delta = self.rnd.randint(1, ACCOUNTS), self.rnd.randint(1, TELLERS), self.delta()
        self.acc_update(txn, aid, delta)
        self.x("SELECT abalance FROM pgbench_accounts WHERE aid = %s", (aid,)).fetchone()
        self.teller_update(txn, tid, delta)
        self.branch_update(txn, 1, delta)
        h, t = self.history_row(self.marker())
        h.update(tid=tid, bid=1, aid=aid, delta=delta)
        self.history_insert(txn, h, t)

    # -- statement mixes ---------------------------------------------------
    def small_op(self, txn):
        """One statement changing one to three rows."""
        rnd = self.rnd
        own = txn.own
        ops = [lambda: self.part_insert(txn, rnd.randint(1, 3)),
               lambda: self.nopk_insert(txn, rnd.randint(1, 2)),
               lambda: self.acc_update(txn),
               lambda: self.history_insert(txn)]
        if own.part:
            ops += [lambda: self.part_update(txn, rnd.randint(1, 2)), lambda: self.part_update_payload(txn),
                    lambda: self.part_delete(txn, 1)]
        if own.nopk:
            ops += [lambda: self.nopk_update(txn, 1), lambda: self.nopk_delete(txn, 1)]
        rnd.choice(ops)()

    def multi_op(self, txn):
        """One statement changing several rows."""
        rnd = self.rnd
        own = txn.own
        ops = [lambda: self.part_insert(txn, rnd.randint(3, 8)),
               lambda: self.nopk_insert(txn, rnd.randint(3, 8)),
               lambda: self.acc_update_many(txn, rnd.randint(3, 10)),
               lambda: self.acc_insert(txn, rnd.randint(2, 4))]
        if len(own.part) >= 2:
            ops += [lambda: self.part_update(txn, rnd.randint(2, 6)), lambda: self.part_delete(txn, rnd.randint(2, 5))]
        if len(own.part) > 60:
            ops += [lambda: self.part_delete(txn, rnd.randint(4, 8))] * 3
        if len(own.nopk) >= 2:
            ops += [lambda: self.nopk_update(txn, rnd.randint(2, 5)), lambda: self.nopk_delete(txn, rnd.randint(2, 4))]
        if len(own.nopk) > 60:
            ops += [lambda: self.nopk_delete(txn, rnd.randint(4, 8))] * 3
        if own.acc:
            ops.append(lambda: self.acc_delete(txn, rnd.randint(1, 3)))
        rnd.choice(ops)()

    def copy_op(self, txn):
        rnd = self.rnd
        rnd.choice((lambda: self.part_insert(txn, rnd.randint(5, 40), via_copy=True),
                    lambda: self.history_copy(txn, rnd.randint(5, 30)),
                    lambda: self.nopk_insert(txn, rnd.randint(2, 20), via_copy=True)))()
        self.stats["copies"] += 1

    def savepoints(self, txn):
        rnd = self.rnd
        self.small_op(txn)
        self.x("SAVEPOINT s1")
        mark, saved = len(txn.changes), txn.own.copy()
        self.small_op(txn)
        how = rnd.choices(("rollback_to", "release", "error", "nested"), (40, 25, 20, 15))[0]
        self.stats["savepoint_" + how] += 1
        if how == "rollback_to":
            self.x("ROLLBACK TO SAVEPOINT s1")
            del txn.changes[mark:]
            txn.own = saved
        elif how == "release":
            self.x("RELEASE SAVEPOINT s1")
        elif how == "error":
            try:
                self.part_insert(txn, rnd.randint(1, 3), poison=True)
                self.errors.append("%s: a poison row was accepted" % txn.key)
            except pg.errors.RaiseException:
                pass
            self.x("ROLLBACK TO SAVEPOINT s1")
            del txn.changes[mark:]
            txn.own = saved
        else:
            self.x("SAVEPOINT s2")
            mark2, saved2 = len(txn.changes), txn.own.copy()
            self.multi_op(txn)
            self.x("ROLLBACK TO SAVEPOINT s2")
            del txn.changes[mark2:]
            txn.own = saved2
            self.small_op(txn)
            self.x("RELEASE SAVEPOINT s1")
        self.small_op(txn)

    def do_block(self, txn):
        """A DO block: statements kept, and an EXCEPTION sub-block that fails after changing rows."""
        rnd = self.rnd
        own = txn.own

        def lit(v):
            if v is None:
                return "NULL"
            if isinstance(v, bool):
                return "true" if v else "false"
            if isinstance(v, (int, Decimal)):
                return str(v)
            if isinstance(v, dict):
                return "'%s'::jsonb" % json.dumps(v).replace("'", "''")
            return "'%s'" % v.replace("'", "''")

        def part_values(r):
            return "(%s)" % ", ".join(lit(r[c]) for c in COLUMNS["ct_part"])

        def nopk_values(r):
            return "(%s)" % ", ".join(lit(r[c]) for c in COLUMNS["ct_nopk"])

        kept, body = [], []
        # kept: an insert
        m1 = self.marker()
        r1 = self.part_row(m1)
        body.append("INSERT INTO ct_part (region, k, marker, v, amount, flag, payload) VALUES %s;" % part_values(r1))
        kept.append(lambda: (own.part.__setitem__((r1["region"], r1["k"]), r1), txn.changes.append(
            Change("ct_part", "insert", m1, m1, part_key(r1["region"], r1["k"]), new=dict(r1)))))
        # rolled back: an update of an own row, inserts, and the failure
        failing = []
        if own.part:
            key = rnd.choice(sorted(own.part))
            m2 = self.marker()
            failing.append("UPDATE ct_part SET v = v + 1, marker = %s WHERE region = %s AND k = %d;"
                           % (lit(m2), lit(key[0]), key[1]))
        m3 = self.marker()
        failing.append("INSERT INTO ct_nopk (w, n, marker, v, note) VALUES %s;" % nopk_values(self.nopk_row(m3)))
        h4, t4 = self.history_row(self.marker())
        failing.append("INSERT INTO pgbench_history (tid, bid, aid, delta, mtime, filler) VALUES (%d, %d, %d, %d, '%s', %s);"
                       % (h4["tid"], h4["bid"], h4["aid"], h4["delta"], t4.isoformat(sep=" "), lit(h4["filler"])))
        if rnd.random() < 0.5:
            failing.append("PERFORM 1 / 0;")
        else:
            m5 = self.marker()
            failing.append("INSERT INTO ct_part (region, k, marker, v, amount, flag, payload) VALUES %s;"
                           % part_values(self.part_row(m5, v=-1)))
        body.append("BEGIN\n  %s\nEXCEPTION WHEN division_by_zero OR raise_exception THEN NULL;\nEND;"
                    % "\n  ".join(failing))
        # kept: an update of a shared account after the failed block
        aid, d6 = rnd.randint(1, ACCOUNTS), self.delta()
        m6 = self.marker()
        body.append("UPDATE pgbench_accounts SET abalance = abalance + %d, filler = %s WHERE aid = %d;"
                    % (d6, lit(m6), aid))
        kept.append(lambda: txn.changes.append(Change("pgbench_accounts", "update", m6, m6, str(aid), new={"filler": m6},
                                                      changed={"abalance", "filler"}, delta=("abalance", d6))))
        # kept: a sub-block that succeeds
        m7 = self.marker()
        r7 = self.nopk_row(m7)
        body.append("BEGIN\n  INSERT INTO ct_nopk (w, n, marker, v, note) VALUES %s;\n"
                    "EXCEPTION WHEN unique_violation THEN NULL;\nEND;" % nopk_values(r7))
        kept.append(lambda: (own.nopk.__setitem__(r7["n"], r7), txn.changes.append(
            Change("ct_nopk", "insert", m7, m7, nopk_key(r7), new=dict(r7)))))
        txn.fresh.extend(MARKER_RE.findall("\n".join(body)))
        self.x("DO $ct$\nBEGIN\n%s\nEND\n$ct$" % "\n".join(body))
        for f in kept:
            f()

    def try_calls(self, txn):
        """SELECT ct_try(...) per row: each call inserts in an exception block of its own."""
        rnd = self.rnd
        n = rnd.randint(2, 5)
        rows = []
        for _ in range(n):
            m = self.marker()
            rows.append((rnd.choice(REGIONS), self.new_id(), m, rnd.random() < 0.4))
        txn.fresh.extend(r[2] for r in rows)
        got = [g for (g,) in self.x(
            "SELECT ct_try(r, k, m, f) FROM unnest(%s::text[], %s::int[], %s::text[], %s::bool[])"
            " WITH ORDINALITY AS u(r, k, m, f, i) ORDER BY i",
            ([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows], [r[3] for r in rows])).fetchall()]
        if got != [not r[3] for r in rows]:
            self.errors.append("%s: ct_try() returned %s for fail flags %s" % (txn.key, got, [r[3] for r in rows]))
        for region, k, m, fail in rows:
            if fail:
                continue
            r = {"region": region, "k": k, "marker": m, "v": 1, "amount": Decimal("1.00"), "flag": None, "payload": None}
            txn.own.part[(region, k)] = r
            txn.changes.append(Change("ct_part", "insert", m, m, part_key(region, k), new=dict(r)))
        self.stats["try_failed_calls"] += sum(1 for r in rows if r[3])

    # -- transactions ------------------------------------------------------
    KINDS = (("tpcb", 34), ("multi", 22), ("copy", 10), ("savepoint", 12), ("do", 10), ("try", 5),
             ("autocommit", 7))

    def new_txn(self):
        txn = Txn("%s-w%d-t%d" % (self.ctx.phase, self.wid, self.stats["transactions"]), self.own.copy())
        txn.app, txn.pid = self.name, self.pid
        self.stats["transactions"] += 1
        self.txn = txn
        return txn

    def rolled(self, txn):
        txn.state = "rolled_back"
        self.rolled_back.extend(txn.fresh)

    def run_txn(self):
        rnd = self.rnd
        kind = rnd.choices([k for k, _ in self.KINDS], [w for _, w in self.KINDS])[0]
        self.stats["kind_" + kind] += 1
        txn = self.new_txn()
        if kind == "autocommit":
            txn.state = "commit_sent"          # the statement is its transaction
            if rnd.random() < 0.5:
                self.part_insert(txn, rnd.randint(2, 6), returning=True)
            else:
                self.acc_update_many(txn, rnd.randint(2, 6), returning=True)
            txn.state = "committed"
            self.committed.append(txn)
            self.own = txn.own
            return
        r = rnd.random()
        ending = ("rollback" if r < 0.10 else "error" if r < 0.13 else
                  "commit_error" if r < 0.15 and txn.own.nopk else "commit")
        self.x("BEGIN")
        if kind == "tpcb":
            self.tpcb(txn)
        elif kind == "multi":
            for _ in range(rnd.randint(1, 3)):
                self.multi_op(txn)
        elif kind == "copy":
            for _ in range(rnd.randint(1, 2)):
                self.copy_op(txn)
            if rnd.random() < 0.5:
                self.small_op(txn)
        elif kind == "savepoint":
            self.savepoints(txn)
        elif kind == "do":
            self.do_block(txn)
            if rnd.random() < 0.5:
                self.small_op(txn)
        else:
            self.try_calls(txn)
            if rnd.random() < 0.5:
                self.small_op(txn)
        if ending == "error":
            try:
                if rnd.random() < 0.5:
                    self.part_insert(txn, rnd.randint(2, 4), poison=True)
                else:
                    self.part_duplicate(txn)
                self.errors.append("%s: the failing statement did not fail" % txn.key)
            except (pg.errors.RaiseException, pg.errors.UniqueViolation):
                self.stats["error_rollbacks"] += 1
            self.x("ROLLBACK")
            self.rolled(txn)
            return
        if ending == "rollback":
            self.x("ROLLBACK")
            self.rolled(txn)
            self.stats["explicit_rollbacks"] += 1
            return
        if ending == "commit_error" and not txn.own.nopk:
            ending = "commit"           # the body deleted the rows a duplicate needs
        if ending == "commit_error":
            self.nopk_insert(txn, 1, dup_of=rnd.choice(sorted(txn.own.nopk)))
        txn.xid = q1(self.conn, "SELECT pg_current_xact_id()::text::bigint")
        txn.state = "commit_sent"
        if ending == "commit_error":
            try:
                self.x("COMMIT")
                self.errors.append("%s: COMMIT with a duplicate (w, n) in ct_nopk succeeded" % txn.key)
                txn.state = "committed"
                self.committed.append(txn)
                return
            except pg.errors.UniqueViolation:
                self.stats["commit_errors"] += 1
            self.rolled(txn)
            return
        cur = self.x("COMMIT")
        if cur.statusmessage != "COMMIT":
            txn.state = "rolled_back"
            raise RuntimeError("%s: COMMIT answered %r" % (txn.key, cur.statusmessage))
        txn.state = "committed"
        self.committed.append(txn)
        self.own = txn.own

    def hold_until_kill(self):
        """Part 2: a transaction with changes that is certainly open when the server dies."""
        txn = self.new_txn()
        self.x("BEGIN")
        self.part_insert(txn, 3)
        self.nopk_insert(txn, 2)
        self.acc_insert(txn, 1)
        self.history_insert(txn)
        self.ctx.holding.set()
        self.ctx.killed.wait(120)
        self.x("SELECT 1")          # fails: the server is gone
        self.x("ROLLBACK")          # only if the kill did not happen
        self.rolled(txn)

    def failed(self, e):
        """Account for the transaction an exception interrupted; True: go on."""
        txn, self.txn = self.txn, None
        killed = self.ctx.crash and self.ctx.killing.is_set()
        sqlstate = getattr(e, "sqlstate", None)
        if killed:
            if txn is not None and txn.state == "commit_sent":
                self.ambiguous.append(txn)
            elif txn is not None and txn.state == "open":
                self.lost.append(txn)
            return False
        if sqlstate in ("40P01", "40001"):
            self.stats["deadlock_rollbacks"] += 1
        else:
            self.errors.append("%s: %s: %s" % (txn.key if txn else "-", type(e).__name__, e))
        if txn is not None and txn.state in ("open", "commit_sent"):
            self.rolled(txn)
        if self.conn.closed or self.conn.broken:
            return False
        try:
            if self.conn.info.transaction_status != TransactionStatus.IDLE:
                self.x("ROLLBACK")
            return True
        except pg.Error:
            return False

    def run(self):
        ctx = self.ctx
        try:
            self.conn = pg.connect(self.conninfo, autocommit=True, application_name=self.name)
            self.x("SET synchronous_commit = %s" % ("on" if ctx.crash else "off"))
            self.pid = q1(self.conn, "SELECT pg_backend_pid()")
        except pg.Error as e:
            self.errors.append("connect: %s" % e)
            ctx.start.abort()
            return
        try:
            ctx.start.wait()
        except threading.BrokenBarrierError:
            return
        while not ctx.stop.is_set():
            if ctx.crash:
                if ctx.killing.is_set():
                    break
            elif time.monotonic() >= ctx.deadline:
                break
            self.txn = None
            try:
                if self.holder and ctx.hold_request.is_set() and not ctx.holding.is_set():
                    self.hold_until_kill()
                else:
                    self.run_txn()
                    self.txn = None
                    if self.rnd.random() < SEAL_PROB:
                        self.x("SELECT * FROM audit.seal()")
                        self.stats["seals"] += 1
            except (pg.Error, RuntimeError) as e:
                if not self.failed(e):
                    break
            except Exception as e:  # noqa: BLE001 - a bug of this script: report it, end the session
                self.errors.append("%s: %s\n%s" % (self.txn.key if self.txn else "-", e, traceback.format_exc()))
                break
        try:
            self.conn.close()       # also ends a transaction left open by an exception
        except pg.Error:
            pass


class Load:
    """WORKERS threads of one phase."""

    def __init__(self, conninfo, phase, crash, seconds):
        self.ctx = Ctx(phase, crash, seconds)

        def go():
            self.ctx.deadline = time.monotonic() + seconds
        self.ctx.start = threading.Barrier(WORKERS + 1, action=go)
        self.workers = [Worker(self.ctx, conninfo, w) for w in range(WORKERS)]

    def start(self):
        for w in self.workers:
            w.start()
        try:
            self.ctx.start.wait(60)
        except threading.BrokenBarrierError:
            pass
        self.t0 = time.monotonic()

    def join(self, limit):
        for w in self.workers:
            w.join(limit)
        self.ctx.stop.set()
        self.elapsed = time.monotonic() - self.t0
        return [w.name for w in self.workers if w.is_alive()]

    def all(self, attr):
        return [x for w in self.workers for x in getattr(w, attr)]

    def stats(self):
        out = collections.Counter()
        for w in self.workers:
            out.update(w.stats)
        return out


# -- what the database holds --------------------------------------------------

class Event:
    __slots__ = ("id", "table", "op", "type", "target", "corr", "principal", "classification", "status",
                 "xid", "d", "ident")


def tracked_events(conn):
    out = []
    for row in q(conn, "SELECT id, action, target_resource_type, target_resource_id, correlation_id, principal_id,"
                       " data_classification, status, transaction_id, details::text FROM audit.audit_log"
                       " WHERE action ~ %s ORDER BY id", (TRACKED_ACTION_RE,)):
        ev = Event()
        (ev.id, action, ev.type, ev.target, ev.corr, ev.principal, ev.classification, ev.status,
         ev.xid, details) = row
        ev.table, ev.op = action.rsplit(".", 1)
        ev.d = jload(details)
        side = ev.d.get("old" if ev.op == "delete" else "new") or {}
        ev.ident = (ev.table, ev.op, norm(ev.table, MARKER_COL[ev.table], side.get(MARKER_COL[ev.table])))
        out.append(ev)
    return out


def field_problems(txn, c, ev):
    """How the event of change c differs from what it must be ([] if it does not)."""
    p = []
    d = ev.d
    full = c.table in FULL_ROWS

    def want(what, got, exp):
        if got != exp:
            p.append("%s: %r, want %r" % (what, got, exp))

    want("action", "%s.%s" % (ev.table, ev.op), "%s.%s" % (c.table, c.op))
    want("target_resource_type", ev.type, "public." + c.table)
    want("target_resource_id", ev.target, c.key)
    want("details.operation", d.get("operation"), c.op)
    want("details.table", d.get("table"), "public." + c.table)
    want("principal_id", ev.principal, "postgres")
    want("data_classification", ev.classification, "CONFIDENTIAL")
    want("status", ev.status, "success")
    want("transaction_id", ev.xid, txn.xid)
    actor = d.get("actor") or {}
    want("actor.transaction_id", actor.get("transaction_id"), str(txn.xid))
    want("actor.application_name", actor.get("application_name"), txn.app)
    want("actor.session_user", actor.get("session_user"), "postgres")
    want("actor.current_user", actor.get("current_user"), "postgres")
    m = re.fullmatch(r"stmt:(\d+)\.(\d+)\.(\d+)", ev.corr or "")
    if not m or int(m.group(1)) != txn.pid or int(m.group(2)) != txn.xid:
        p.append("correlation_id %r, want stmt:%s.%s.<command>" % (ev.corr, txn.pid, txn.xid))
    old, new = d.get("old"), d.get("new")
    for side, got, exp in (("old", old, c.old), ("new", new, c.new)):
        if exp is None:
            continue
        if not isinstance(got, dict):
            p.append("details.%s missing" % side)
            continue
        for col, v in exp.items():
            want("details.%s.%s" % (side, col), norm(c.table, col, got.get(col, "<absent>")), v)
        if c.op != "update" or full:
            want("details.%s columns" % side, sorted(got), sorted(COLUMNS[c.table]))
    if c.op == "insert":
        want("details.old", old, None)
    if c.op == "delete":
        want("details.new", new, None)
    if c.op == "update":
        want("details.changed", sorted(d.get("changed") or []), sorted(c.changed))
        if not full:
            want("details.old columns", sorted(old or {}), sorted(c.changed))
            want("details.new columns", sorted(new or {}), sorted(c.changed))
    if c.delta:
        col, delta = c.delta
        try:
            want("details.new.%s - details.old.%s" % (col, col), new[col] - old[col], delta)
        except (KeyError, TypeError):
            p.append("details: no %s in old and new" % col)
    return p


def check_events(res, conn, label, events, committed, absent, ambiguous):
    """The exact account: committed changes have one event each, nothing else has any."""
    phase = label
    by_ident = collections.defaultdict(list)
    for ev in events:
        by_ident[ev.ident].append(ev)
    expected, twice = {}, []
    for txn in committed:
        for c in txn.changes:
            if c.ident in expected:
                twice.append(c.ident)
            expected[c.ident] = (txn, c)
    maybe = {c.ident: (txn, c) for txn in ambiguous for c in txn.changes}

    # In-flight COMMITs: all of the transaction, or nothing of it.
    partial, landed = [], []
    for txn in ambiguous:
        n = sum(1 for c in txn.changes if by_ident.get(c.ident))
        if n and n != len(txn.changes):
            partial.append("%s: %d of %d" % (txn.key, n, len(txn.changes)))
        elif n:
            landed.append(txn)
            if txn.xid is None:         # an autocommit statement that never answered
                txn.xid = by_ident[txn.changes[0].ident][0].xid
        else:
            absent = absent + [c.marker for c in txn.changes if c.op != "delete"]
    if ambiguous:
        info("%s: %d transactions had COMMIT in flight at the kill; %d survived whole" % (label, len(ambiguous), len(landed)))
        res.check(not partial, "%s: each transaction whose COMMIT was in flight has all its events or none "
                  "(%d of %d have all)" % (label, len(landed), len(ambiguous)), sample(partial))
    for txn in landed:
        for c in txn.changes:
            expected[c.ident] = (txn, c)

    missing = [k for k in expected if not by_ident.get(k)]
    dups = [k for k, evs in by_ident.items() if len(evs) > 1]
    res.check(not missing and not dups and not twice,
              "%s: each of the %d committed row changes has exactly one event" % (label, len(expected)),
              "missing %d %s\nduplicated %d %s (%s)\nclient recorded twice: %s"
              % (len(missing), sample(missing), len(dups), sample(dups),
                 [(e.id, e.corr) for e in by_ident[dups[0]]] if dups else "", sample(twice)))
    mine = [k for k in by_ident if not isinstance(k[2], str) or not MARKER_RE.fullmatch(k[2]) or k[2].startswith(phase)]
    unexpected = [k for k in mine if k not in expected and k not in maybe]
    res.check(not unexpected, "%s: no event for a change that was not committed (%d events of this phase)"
              % (label, sum(len(by_ident[k]) for k in mine)),
              "%d unexpected: %s" % (len(unexpected), sample(unexpected)))

    # The markers of rolled-back work appear nowhere in audit.audit_log.
    found = set()
    for (text,) in q(conn, "SELECT details::text FROM audit.audit_log"):
        found.update(MARKER_RE.findall(text))
    absent = set(absent)
    leaked = found & absent
    res.check(not leaked, "%s: none of the %d markers of rolled-back changes (ROLLBACK, errors, savepoints, "
              "exception blocks, failed COMMITs%s) appears in audit.audit_log's details"
              % (label, len(absent), ", open at the kill" if ambiguous is not None and label == "p2" else ""),
              "%d present: %s" % (len(leaked), sample(leaked)))

    # Every field of every expected event.
    problems = []
    for ident, (txn, c) in expected.items():
        evs = by_ident.get(ident)
        if evs:
            for pr in field_problems(txn, c, evs[0]):
                problems.append("%s %s (event %d): %s" % (ident, txn.key, evs[0].id, pr))
    res.check(not problems, "%s: every event has the right action, target_resource_type and _id (key or row "
              "hash), diff (old, new, changed, balance deltas), actor, transaction, principal and correlation"
              % label, "%d problems, e.g.\n%s" % (len(problems), "\n".join(problems[:12])))

    # One correlation id per statement, one statement per correlation id.
    stmt_corr, corr_stmt = collections.defaultdict(set), collections.defaultdict(set)
    for ident, (txn, c) in expected.items():
        for ev in by_ident.get(ident, [])[:1]:
            stmt_corr[(txn.key, c.stmt)].add(ev.corr)
            corr_stmt[ev.corr].add((txn.key, c.stmt))
    split = {s: sorted(cs) for s, cs in stmt_corr.items() if len(cs) > 1}
    merged = {cid: sorted(ss) for cid, ss in corr_stmt.items() if len(ss) > 1}
    multi = collections.Counter((t.key, c.stmt) for t, c in expected.values())
    res.check(not split and not merged, "%s: the events of each of %d statements (%d of them multi-row, up to %d "
              "rows) share one correlation_id, and different statements have different ones"
              % (label, len(stmt_corr), sum(1 for n in multi.values() if n > 1), max(multi.values() or [0])),
              "split: %s\nmerged: %s" % (list(split.items())[:3], list(merged.items())[:3]))


def replay_check(res, conn, label, events):
    """Replaying every event in id order from the snapshot reproduces each tracked table."""
    problems = []
    state = {}                       # (table, key) -> row (None: deleted)
    bags = {t: collections.Counter() for t in BAGS}
    touched = collections.defaultdict(set)
    for ev in events:
        if ev.table in KEYED:
            touched[ev.table].add(ev.target)
    for table, (keysql, snap, _) in KEYED.items():
        if snap and touched[table]:
            for key, row in q(conn, "SELECT %s, to_jsonb(s)::text FROM %s s WHERE %s = ANY(%%s)" % (keysql, snap, keysql),
                              (sorted(touched[table]),)):
                state[(table, key)] = jload(row)
    for ev in events:
        d = ev.d
        old, new = d.get("old"), d.get("new")
        where = "event %d (%s.%s %s)" % (ev.id, ev.table, ev.op, ev.target)
        if ev.table in BAGS:
            bag = bags[ev.table]
            if ev.op in ("update", "delete"):
                if bag[canon(old)] <= 0:
                    problems.append("%s: its old row is not in the table" % where)
                bag[canon(old)] -= 1
            if ev.op in ("insert", "update"):
                bag[canon(new)] += 1
            if ev.op == "update" and sorted(d.get("changed") or []) != sorted(c for c in new if new[c] != old.get(c)):
                problems.append("%s: changed %s, but old and new differ in %s" % (where, d.get("changed"),
                                sorted(c for c in new if new[c] != old.get(c))))
            continue
        key = (ev.table, ev.target)
        cur = state.get(key)
        if ev.op == "insert":
            if cur is not None:
                problems.append("%s: inserts a key that exists" % where)
            state[key] = new
        elif cur is None:
            problems.append("%s: %s a row that does not exist" % (where, ev.op))
        elif ev.op == "delete":
            if cur != old:
                problems.append("%s: old %s, but the row was %s" % (where, old, cur))
            state[key] = None
        else:
            changed = d.get("changed") or []
            if sorted(changed) != sorted(old) or sorted(changed) != sorted(new) or not changed:
                problems.append("%s: changed %s, old %s, new %s" % (where, changed, sorted(old), sorted(new)))
            cur = dict(cur)
            for c in changed:
                if cur.get(c) != old.get(c) or old.get(c) == new.get(c):
                    problems.append("%s: %s was %r, old says %r, new %r" % (where, c, cur.get(c), old.get(c), new.get(c)))
                cur[c] = new.get(c)
            state[key] = cur
    # The tables now.
    for table, (keysql, snap, col) in KEYED.items():
        if snap:
            differ = {k for (k,) in q(conn, "SELECT coalesce(t.{c}, s.{c})::text FROM {t} t FULL JOIN {s} s"
                                            " ON s.{c} = t.{c} WHERE t.{c} IS NULL OR s.{c} IS NULL"
                                            " OR to_jsonb(t) <> to_jsonb(s)".format(c=col, t=table, s=snap))}
            stray = differ - touched[table]
            if stray:
                problems.append("%s: %d rows differ from the snapshot without an event: %s"
                                % (table, len(stray), sample(stray)))
            actual = dict(q(conn, "SELECT %s, to_jsonb(t)::text FROM %s t WHERE %s = ANY(%%s)" % (keysql, table, keysql),
                            (sorted(touched[table]),)))
        else:
            actual = dict(q(conn, "SELECT %s, to_jsonb(t)::text FROM %s t" % (keysql, table)))
            stray = set(actual) - touched[table]
            if stray:
                problems.append("%s: %d rows without any event: %s" % (table, len(stray), sample(stray)))
        for key in touched[table]:
            want = state.get((table, key))
            got = jload(actual[key]) if key in actual else None
            if want != got:
                problems.append("%s %s: the events say %s, the table holds %s" % (table, key, want, got))
    for table, bag in bags.items():
        actual = collections.Counter(canon(jload(r)) for (r,) in q(conn, "SELECT to_jsonb(t)::text FROM %s t" % table))
        want = +bag
        if actual != want:
            problems.append("%s: %d rows only in the table, %d only in the events, e.g. %s / %s"
                            % (table, sum((actual - want).values()), sum((want - actual).values()),
                               sample(list((actual - want).keys()), 1), sample(list((want - actual).keys()), 1)))
    n_keys = sum(len(v) for v in touched.values())
    res.check(not problems, "%s: replaying the %d events in id order from the snapshot reproduces the six tracked "
              "tables exactly (%d keyed rows, %d and %d rows of the tables without a key)"
              % (label, len(events), n_keys, sum(bags["pgbench_history"].values()), sum(bags["ct_nopk"].values())),
              "%d problems, e.g.\n%s" % (len(problems), "\n".join(problems[:12])))


def check_xid_columns(res, conn, label):
    bad = q1(conn, "SELECT count(*) FROM audit.audit_log WHERE action ~ %s AND"
                   " (transaction_id IS DISTINCT FROM (details->'actor'->>'transaction_id')::bigint"
                   "  OR split_part(correlation_id, '.', 2)::bigint IS DISTINCT FROM transaction_id)",
             (TRACKED_ACTION_RE,))
    res.check(bad == 0, "%s: every change event's transaction_id equals its details' actor.transaction_id "
              "and its correlation_id's" % label, "%d differ" % bad)


def check_sealed(res, conn, label):
    t0 = time.monotonic()
    sealed = seal_all(conn)
    status = q(conn, "SELECT unsealed_rows, height, holding_back_pid, holding_back_state, holding_back_query"
                     " FROM audit.chain_status")
    problems = q(conn, "SELECT * FROM audit.verify()")
    res.check(sealed and not problems, "%s: after audit.seal() every row is sealed (%.1f s) and "
              "SELECT count(*) FROM audit.verify() is 0" % (label, time.monotonic() - t0),
              "sealed: %s; chain_status (unsealed, height, holding pid, state, query): %s; %d problems: %s"
              % (sealed, status, len(problems), problems[:5]))


def check_server_log(res, label, log, offset):
    text = log_since(log, offset)
    lines = text.splitlines()
    leaks = [l for l in lines if LEAK_RE.search(l)]
    crashes = [l for l in lines if CRASH_RE.search(l)]
    warnings = [l for l in lines if "WARNING:" in l and l not in leaks]
    if warnings:
        info("%s: other WARNING lines in the server log: %d, e.g. %s" % (label, len(warnings), warnings[:3]))
    res.check(not leaks and not crashes and not warnings,
              "%s: the server log (%d lines) has no WARNING (no leaked relcache reference, buffer pin or resource "
              "owner) and no PANIC, TRAP or crashed process" % (label, len(lines)),
              "\n".join((leaks + crashes + warnings)[:12]))


def report_load(label, load, txns_committed):
    st = load.stats()
    info("%s: %.1f s, %d transactions: %d committed (%d row changes), %d explicit ROLLBACKs, %d failed on an "
         "error, %d at COMMIT, %d deadlock rollbacks; savepoints %s; %d COPY statements (%d rows), %d multi-row "
         "statements, %d failed ct_try() calls; %d audit.seal() calls"
         % (label, load.elapsed, st["transactions"], len(txns_committed),
            sum(len(t.changes) for t in txns_committed), st["explicit_rollbacks"], st["error_rollbacks"],
            st["commit_errors"], st["deadlock_rollbacks"],
            {k[10:]: v for k, v in st.items() if k.startswith("savepoint_")}, st["copies"], st["copy_rows"],
            st["multi_row_statements"], st["try_failed_calls"], st["seals"]))
    info("%s: transactions by kind: %s" % (label, {k[5:]: v for k, v in sorted(st.items()) if k.startswith("kind_")}))
    return st


# -- the crash -----------------------------------------------------------------

def kill_server(datadir):
    """SIGSTOP the postmaster and its children, then SIGKILL them all: (pid, children, all dead)."""
    with open(os.path.join(datadir, "postmaster.pid")) as f:
        pid = int(f.readline())
    kids = []
    if alive(pid):
        os.kill(pid, signal.SIGSTOP)          # no new children from here on
        kids = children(pid)
        signal_all(kids, signal.SIGSTOP)      # the whole server stops at one instant
        os.kill(pid, signal.SIGKILL)
        signal_all(kids, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(alive(p) for p in [pid] + kids):
        time.sleep(0.05)
    return pid, kids, not any(alive(p) for p in [pid] + kids)


def start_again(cmd, datadir, pid, kids):
    """pg_ctl start after the kill (crash recovery); the CompletedProcess."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(proc_stat(p) for p in [pid] + kids):
        time.sleep(0.05)      # let the dead be reaped
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        # A lock file naming the killed postmaster, still an unreaped zombie, stops pg_ctl: ours to remove.
        lock = os.path.join(datadir, "postmaster.pid")
        try:
            with open(lock) as f:
                if int(f.readline()) == pid and not alive(pid):
                    os.unlink(lock)
                    info("pg_ctl failed; removed the killed postmaster's postmaster.pid and retrying")
                    r = subprocess.run(cmd, capture_output=True, text=True)
        except (OSError, ValueError):
            pass
    return r


def connect_retry(conninfo, seconds=60):
    deadline = time.monotonic() + seconds
    while True:
        try:
            return pg.connect(conninfo, autocommit=True, application_name="ctl-check")
        except pg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


# -- the parts -------------------------------------------------------------------

def setup(res, path, port, conninfo):
    with pg.connect(host=path, port=port, user="postgres", dbname="postgres", autocommit=True) as c:
        c.execute("CREATE DATABASE " + DB)
    conn = pg.connect(conninfo, autocommit=True, application_name="ctl-check")
    conn.execute("CREATE EXTENSION audit_db")
    try:
        bindir = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        bindir = BINDIR
    t0 = time.monotonic()
    r = subprocess.run(as_postgres([os.path.join(bindir, "pgbench"), "-i", "-s", "1", "--foreign-keys", "-q", "-h", path,
                                    "-p", str(port), "-U", "postgres", DB]), capture_output=True, text=True)
    res.check(r.returncode == 0, "pgbench -i -s 1 --foreign-keys (%.1f s)" % (time.monotonic() - t0), r.stdout + r.stderr)
    for sql in SETUP:
        conn.execute(sql)
    tracked = q1(conn, "SELECT count(*) FROM audit.tracked_tables")
    res.check(tracked == 6, "the four pgbench tables, ct_nopk (no primary key) and ct_part (partitioned) are "
              "tracked", "%s tracked" % tracked)
    return conn


def part1(res, conn, conninfo, log):
    offset = log_size(log)
    load = Load(conninfo, "p1", False, LOAD_SECONDS)
    load.start()
    hung = load.join(LOAD_SECONDS + 120)
    errors = load.all("errors")
    res.check(not hung and not errors, "p1: %d workers ran %.0f s without unexpected errors" % (WORKERS, LOAD_SECONDS),
              "hung: %s; %d errors:\n%s" % (hung, len(errors), "\n".join(errors[:10])))
    committed = load.all("committed")
    st = report_load("p1", load, committed)
    kinds = ["kind_" + k for k, _ in Worker.KINDS] + ["explicit_rollbacks", "error_rollbacks", "commit_errors",
                                                     "savepoint_rollback_to", "savepoint_release",
                                                     "savepoint_error", "savepoint_nested", "copies",
                                                     "try_failed_calls", "seals"]
    res.check(all(st[k] > 0 for k in kinds), "p1: the load ran every kind of transaction and ending",
              "none of: %s" % [k for k in kinds if not st[k]])
    absent = load.all("rolled_back") + [m for t in committed for m in t.absent()]
    events = tracked_events(conn)
    check_events(res, conn, "p1", events, committed, absent, [])
    check_xid_columns(res, conn, "p1")
    replay_check(res, conn, "p1", events)
    check_sealed(res, conn, "p1")
    check_server_log(res, "p1", log, offset)


def part2(res, conn, conninfo, log):
    datadir = q1(conn, "SHOW data_directory")
    with open(os.path.join(datadir, "postmaster.pid")) as f:
        pid = int(f.readline())
    cmd, _ = restart_command(datadir, pid)
    offset = log_size(log)
    before = q(conn, "SELECT count(*), sum(id), max(id) FROM audit.audit_log")[0]
    load = Load(conninfo, "p2", True, CRASH_SECONDS)
    load.start()
    limit = load.t0 + CRASH_SECONDS + 60
    while time.monotonic() < limit and any(w.is_alive() for w in load.workers):
        if (time.monotonic() >= load.t0 + CRASH_SECONDS
                and all(len(w.committed) >= MIN_COMMITS_BEFORE_KILL for w in load.workers)):
            break
        time.sleep(0.05)
    load.ctx.hold_request.set()
    held = load.ctx.holding.wait(30)
    time.sleep(0.3)
    load.ctx.killing.set()
    conn.close()
    pid, kids, gone = kill_server(datadir)
    load.ctx.killed.set()
    hung = load.join(60)
    res.check(held and gone, "p2: after %.1f s of load, SIGKILL took down the postmaster and its %d children "
              "while a transaction with changes was open" % (load.elapsed, len(kids)),
              "holder ready: %s; still alive: %s" % (held, [p for p in [pid] + kids if alive(p)]))
    if not gone:
        return None
    t1 = time.monotonic()
    r = start_again(cmd, datadir, pid, kids)
    res.check(r.returncode == 0, "p2: pg_ctl start recovered the server (%.1f s)" % (time.monotonic() - t1),
              (r.stdout + r.stderr).strip())
    if r.returncode != 0:
        return None
    conn = connect_retry(conninfo)
    res.check(not q1(conn, "SELECT pg_is_in_recovery()"), "p2: the server is out of recovery")

    errors = load.all("errors")
    res.check(not hung and not errors, "p2: the load ended at the kill without unexpected errors",
              "hung: %s; %d errors:\n%s" % (hung, len(errors), "\n".join(errors[:10])))
    committed, lost, ambiguous = load.all("committed"), load.all("lost"), load.all("ambiguous")
    report_load("p2", load, committed)
    info("p2: at the kill %d transactions were open (%d row changes), %d had COMMIT in flight"
         % (len(lost), sum(len(t.changes) for t in lost), len(ambiguous)))
    res.check(any(t.changes for t in lost), "p2: at least one transaction with changes was open at the kill",
              "%d open" % len(lost))
    after = q(conn, "SELECT count(*), sum(id) FROM audit.audit_log WHERE id <= %s", (before[2],))[0]
    res.check(tuple(after) == tuple(before[:2]), "p2: the %d events written before part 2 are intact" % before[0],
              "before %s, after %s" % (before, after))
    absent = (load.all("rolled_back") + [m for t in committed for m in t.absent()]
              + [m for t in lost for m in t.fresh] + [m for t in ambiguous for m in t.absent()])
    events = tracked_events(conn)
    check_events(res, conn, "p2", events, committed, absent, ambiguous)
    check_xid_columns(res, conn, "p2")
    replay_check(res, conn, "p2", events)

    # Tracking works after recovery: a statement, a COPY.
    with pg.connect(conninfo, autocommit=True, application_name="ctl-after") as c:
        c.execute("INSERT INTO ct_part (region, k, marker, v, amount) VALUES ('eu', 1, 'after-1', 1, 1), "
                  "('us', 1, 'after-1', 1, 1)")
        with c.cursor().copy("COPY ct_nopk (w, n, marker) FROM STDIN") as cp:
            cp.write_row((99, 1, "after-2"))
            cp.write_row((99, 2, "after-2"))
    got = q(conn, "SELECT action, count(*), count(DISTINCT correlation_id) FROM audit.audit_log"
                  " WHERE details->'new'->>'marker' IN ('after-1', 'after-2') GROUP BY 1 ORDER BY 1")
    res.check(got == [("ct_nopk.insert", 2, 1), ("ct_part.insert", 2, 1)],
              "p2: after recovery an INSERT and a COPY into tracked tables have their events", got)
    check_sealed(res, conn, "p2")
    check_server_log(res, "p2", log, offset)
    return conn


def main():
    res = Results()
    started = time.monotonic()
    tmp = tempfile.mkdtemp(prefix="audit_db_ct_load.")
    os.chmod(tmp, 0o755)
    path = os.path.join(tmp, "cluster")
    conn = None
    try:
        port = start_cluster(path, PORTS, "shared_preload_libraries = 'audit_db'", "fsync = on",
                             "synchronous_commit = on", "max_connections = 50")
        conninfo = "host=%s port=%d user=postgres dbname=%s" % (path, port, DB)
        log = os.path.join(path, "server.log")
        info("cluster on port %d (%s), seed %d" % (port, path, SEED))
        conn = setup(res, path, port, conninfo)
        part1(res, conn, conninfo, log)
        conn = part2(res, conn, conninfo, log)
    except Exception as e:  # noqa: BLE001 - report, then clean up
        res.check(False, "the test ran to the end", "%s: %s\n%s" % (type(e).__name__, e, traceback.format_exc()))
        for line in log_tail(path, 25):
            info(line)
    finally:
        if conn is not None:
            try:
                conn.close()
            except pg.Error:
                pass
        stop_cluster(path)
        shutil.rmtree(tmp, ignore_errors=True)
    info("ran in %.1f s" % (time.monotonic() - started))
    return res.finish("change_tracking_load")


if __name__ == "__main__":
    sys.exit(main())
