#!/usr/bin/python3
"""test/retention.py: retention of audit rows (audit.audit_retention_policy,
audit.retention_plan(), the retention steps of audit.run_maintenance()), with
audit_db in shared_preload_libraries.

Runs in the test database (PGDATABASE; it recreates the extension there for
each part). The worker's own maintenance runs are switched off
(audit_db.maintenance_interval = 0, ALTER SYSTEM + reload) except in check 3,
and the setting is reset (ALTER SYSTEM RESET + reload) at the end even when a
check fails. It asserts:
  1. acceptance: partitions 2023-11 .. 2026-11 (audit.create_partitions), a
     log of rows over the 36 months before AS_OF (2026-12-01 13:45 UTC, fixed:
     cutoffs are whole UTC days before it) under the policies p30 (30 days),
     p365 (365), p365 for PHI (730, the classification's row wins),
     p2555 (2555), p60d90 (retention 60, delete_after 90), pinactive (10 days,
     inactive: kept), and a policy that does not exist (kept forever); several
     rows a day per policy at varied times, plus rows around every cutoff
     (1 us, 1 s, 1 h either side, and the clock time of AS_OF after it), all
     sealed. CALL audit.run_maintenance(AS_OF) until a run removes nothing
     (at most 3 runs); then, per (policy, classification): exactly the rows
     with "timestamp" >= cutoff remain (same ids) and the rows removed per
     policy (the runs' delete groups plus the rows of the dropped partitions)
     match; the runs' rows_removed add up; audit.verify() returns no row; the
     retention blocks' row_count add up to the rows removed, the
     retention_rows blocks list exactly the deleted ids, and the
     retention_partition blocks name exactly the dropped months; every
     partition whose rows all expired (and the empty 2023-11) is gone, every
     one with a surviving row remains; audit.retention_plan(AS_OF) shows only
     'keep'; one more run as of AS_OF removes nothing and summarises nothing.
  1c. late rows after that (sealed): an expired one in a surviving month is
     deleted; rows of months whose partitions were dropped land in the default
     partition, maintenance recreates those months: one whose rows all
     expired is dropped again (its retention_partition block counts the 2
     relocated rows), one holding a kept row stays; verify() stays clean and
     the plan shows only 'keep'.
  1b. (after 2) the same log and runs with TimeZone = 'America/New_York' in
     the CALLing session: exactly the same rows remain (cutoffs are whole UTC
     days; 2026-11-01, the p30 cutoff, is a DST change there), verify clean.
  2. retained vs missing: one surviving row deleted by hand (guard triggers
     off, restored after): audit.verify() reports exactly that row, 'missing'
     at its block, and none of the rows retention removed.
  3. the worker enforces retention by itself: in a fresh extension, with
     audit_db.maintenance_interval = 1 and the wall clock as now, a 45-day
     policy and rows on both sides of its cutoff (at least 2 days away), some
     in months with a partition, some in months without one (they land in
     the default partition): within 30 s, without any CALL, the expired rows
     are gone, the others remain, verify() is clean, and the worker's runs
     recorded the removals.
  4. metadata-only planning (a measurement, never failed on time): with
     policies of 30/365/2555 days, CALL audit.run_maintenance() is timed on an
     empty log and on a log of RT_BIG_ROWS sealed rows in the current month
     (reported with info); asserted only: the big runs summarised no
     partition that could not hold expired rows.
  5. error paths of the policy table: retention_days 0, delete_after_days <
     retention_days, archive_after_days >= the delete days, an unknown
     classification -> 23514; a duplicate (policy_name, classification) ->
     23505 (while the same name with another classification is accepted);
     as_of => 'infinity' -> 22023; a role that does not own the log (an
     audit_db_writer member, and audit_db_auditor) cannot INSERT a policy or
     CALL audit.run_maintenance (42501); audit_db_auditor can SELECT
     audit.audit_retention_policy and audit.retention_plan().
Each part is also a check "<part>: ran to the end" (an exception fails it).
Environment: RT_BIG_ROWS (default 1000000; the issue's figure is 10000000)
rows for check 4. Runs in about 20 s on 2 cores (2 min with 10000000). Connects through the libpq environment (PGHOST, PGPORT,
PGUSER, PGDATABASE) as a superuser; needs Debian's python3-psycopg.
Last line: "retention: N passed, M failed"; exit status 1 if anything failed.
"""
import calendar
import collections
import datetime
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
from testkit import Results, info, q, q1, seal_all, set_setting, sqlstate_of, trigger_states, wait_for, psycopg as _load_psycopg  # noqa: E402

psycopg = _load_psycopg()
from psycopg import sql  # noqa: E402

UTC = datetime.timezone.utc
AS_OF = datetime.datetime(2026, 12, 1, 13, 45, tzinfo=UTC)
DAY = datetime.datetime(AS_OF.year, AS_OF.month, AS_OF.day, tzinfo=UTC)   # date_trunc('day', AS_OF, 'UTC')
FIRST_PARTITION = datetime.datetime(2023, 11, 1, tzinfo=UTC)               # create_partitions(36, this)
N_PARTITIONS = 37                                                           # 2023-11 .. 2026-11
SPAN_MONTHS = 36                                                            # rows: 2023-12 .. 2026-11
BIG_ROWS = int(os.environ.get("RT_BIG_ROWS", "1000000"))
ROLE_APP = "rt_retention_app"

# (policy_name, data_classification, retention_days, archive_after_days, delete_after_days, active)
POLICIES = [
    ("p30", None, 30, None, None, True),
    ("p365", None, 365, None, None, True),
    ("p365", "PHI", 730, None, None, True),
    ("p2555", None, 2555, None, None, True),
    ("p60d90", None, 60, None, 90, True),
    ("pinactive", None, 10, None, None, False),
]
# Every day, two rows of each of these (policy, classification) groups.
DAILY = [("p30", "INTERNAL"), ("p30", "PHI"), ("p365", "CONFIDENTIAL"), ("p365", "PHI")]
# Rows around each of these cutoffs: (policy, classification, days before DAY).
EDGES = [("p30", "INTERNAL", 30), ("p30", "PHI", 30), ("p365", "CONFIDENTIAL", 365),
         ("p365", "PHI", 730), ("p365", "PHI", 365), ("p60d90", "INTERNAL", 90), ("p60d90", "INTERNAL", 60)]
EDGE_OFFSETS = [datetime.timedelta(hours=-1), datetime.timedelta(seconds=-1), datetime.timedelta(microseconds=-1),
                datetime.timedelta(0), datetime.timedelta(microseconds=1), datetime.timedelta(seconds=1),
                datetime.timedelta(hours=1), datetime.timedelta(hours=13, minutes=44, seconds=59),
                datetime.timedelta(hours=13, minutes=45),
                datetime.timedelta(hours=23, minutes=59, seconds=59, microseconds=999999)]


# ---------------------------------------------------------------- helpers

def connect(**kw):
    args = dict(autocommit=True, application_name="retention-test")
    args.update(kw)
    return psycopg.connect(**args)


def fresh(conn):
    conn.execute("DROP EXTENSION IF EXISTS audit_db CASCADE")
    conn.execute("CREATE EXTENSION audit_db")


def unsealed(conn):
    return q1(conn, "SELECT count(*) FROM audit.audit_log WHERE transaction_id >="
                    " (SELECT horizon_xid FROM audit.audit_chain_state)")


def verify_rows(conn):
    return q(conn, "SELECT block_height, row_id, field, problem, detail FROM audit.verify()")


def add_policies(conn, policies):
    for name, cls, keep, archive, delete, active in policies:
        conn.execute("INSERT INTO audit.audit_retention_policy (policy_name, data_classification, retention_days,"
                     " archive_after_days, delete_after_days, active) VALUES (%s, %s, %s, %s, %s, %s)",
                     (name, cls, keep, archive, delete, active))


def insert_rows(conn, rows, tag):
    """Insert rows [(ts, policy, classification)] in one statement; their ids, in order."""
    tags = ["%s-%d" % (tag, i) for i in range(len(rows))]
    got = q(conn, "INSERT INTO audit.audit_log (\"timestamp\", action, status, data_classification,"
                  " retention_policy, correlation_id)"
                  " SELECT u.ts, 'rt.row', 'success', u.cls, u.pol, u.tag"
                  " FROM unnest(%s::timestamptz[], %s::text[], %s::text[], %s::text[]) AS u(ts, pol, cls, tag)"
                  " RETURNING correlation_id, id",
            ([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows], tags))
    by_tag = dict(got)
    return [by_tag[t] for t in tags]


def month_add(t, n):
    m = t.year * 12 + (t.month - 1) + n
    return datetime.datetime(m // 12, m % 12 + 1, 1, tzinfo=UTC)


def month_of(t):
    return datetime.datetime(t.year, t.month, 1, tzinfo=UTC)


def policy_days(policies, name, cls):
    """Delete days governing (name, cls) among the active policies, or None (kept for ever)."""
    exact = [p for p in policies if p[5] and p[0] == name and p[1] == cls]
    generic = [p for p in policies if p[5] and p[0] == name and p[1] is None]
    p = (exact or generic or [None])[0]
    if p is None:
        return None
    return p[4] if p[4] is not None else p[2]


def expired(policies, day, ts, name, cls):
    days = policy_days(policies, name, cls)
    return days is not None and ts < day - datetime.timedelta(days=days)


def acceptance_rows():
    """The rows of check 1: [(ts, policy, classification)]."""
    rows = []
    n = 0
    for mi in range(SPAN_MONTHS):
        m = month_add(FIRST_PARTITION, 1 + mi)
        for d in range(1, calendar.monthrange(m.year, m.month)[1] + 1):
            base = m.replace(day=d)
            n += 1
            for k, (pol, cls) in enumerate(DAILY):
                for j in range(2):
                    off = datetime.timedelta(seconds=(n * 7919 + k * 3607 + j * 43201) % 86400,
                                             microseconds=(n * 31 + k * 17 + j * 7) % 1000000)
                    rows.append((base + off, pol, cls))
            noon = base + datetime.timedelta(hours=12, minutes=n % 60)
            if mi % 4 == 0:
                rows.append((noon, "p2555", "FINANCIAL"))
            if mi % 4 == 2:
                rows.append((noon, "nosuch", "INTERNAL"))
            if mi == 5:
                rows.append((noon, "pinactive", "PUBLIC"))
            if (m.year, m.month) >= (2026, 7):
                rows.append((noon, "p60d90", "INTERNAL"))
    for pol, cls, days in EDGES:
        cut = DAY - datetime.timedelta(days=days)
        for off in EDGE_OFFSETS:
            rows.append((cut + off, pol, cls))
    return rows


def tamper(conn, *statements):
    """Run statements with the log's guard triggers off, in one transaction; restore them."""
    states = trigger_states(conn)
    with conn.transaction():
        conn.execute("ALTER TABLE audit.audit_log DISABLE TRIGGER USER")
        for s in statements:
            conn.execute(s[0], s[1]) if isinstance(s, tuple) else conn.execute(s)
        for rel, name, enabled, _parent in states:
            how = {"A": "ENABLE ALWAYS", "O": "ENABLE", "R": "ENABLE REPLICA", "D": "DISABLE"}[enabled]
            conn.execute('ALTER TABLE %s %s TRIGGER "%s"' % (rel, how, name))
    after = trigger_states(conn)
    if after != states:
        raise RuntimeError("trigger states not restored: %s" % after)


def last_call_run(conn):
    return conn.execute("SELECT run_id, status, actions, errors FROM audit.maintenance_run"
                        " WHERE via = 'call' ORDER BY run_id DESC LIMIT 1").fetchone()


# ---------------------------------------------------------------- checks

def load_acceptance(res, conn, label):
    """A fresh extension with the policies, partitions and rows of check 1, all sealed.
    Returns (rows, rid_of {row index: id}, by_month {month: [row index]}, months)."""
    fresh(conn)
    add_policies(conn, POLICIES)
    made = q1(conn, "SELECT count(*) FROM audit.create_partitions(%s, %s)", (N_PARTITIONS - 1, FIRST_PARTITION))
    months = [month_add(FIRST_PARTITION, i) for i in range(N_PARTITIONS)]
    have = {r[0] for r in q(conn, "SELECT range_from FROM audit.partition_bounds() WHERE NOT is_default")}
    res.check(all(m in have for m in months),
              "%s: audit.create_partitions(%d, '2023-11-01') made the partitions 2023-11 .. 2026-11"
              % (label, N_PARTITIONS - 1),
              "missing: %s (rows: %s)" % ([str(m.date()) for m in months if m not in have], made))
    rows = acceptance_rows()
    rid_of = {}
    by_month = collections.defaultdict(list)
    for i, r in enumerate(rows):
        by_month[month_of(r[0])].append(i)
    for m in sorted(by_month):         # one transaction per month
        got = insert_rows(conn, [rows[i] for i in by_month[m]], "m%s" % m.strftime("%Y%m"))
        rid_of.update(zip(by_month[m], got))
    info("inserted %d rows over %d months (%s .. %s)" % (len(rows), len(by_month), min(by_month).date(),
                                                          max(by_month).date()))
    sealed = seal_all(conn)
    res.check(sealed, "%s: every row is sealed before maintenance" % label, "unsealed: %s" % unsealed(conn))
    return rows, rid_of, by_month, months


def run_until_quiet(conn, as_of):
    """CALL audit.run_maintenance(as_of) until a run removes nothing, at most 3 runs; the runs."""
    runs = []
    for _ in range(3):
        conn.execute("CALL audit.run_maintenance(%s)", (as_of,))
        run = last_call_run(conn)
        runs.append(run)
        a = run[2] or {}
        info("run %s: status %s, partitions_summarized %s, rows_removed %s, %d retention actions%s" % (
            run[0], run[1], a.get("partitions_summarized"), a.get("rows_removed"), len(a.get("retention", [])),
            ("; errors: %s" % run[3]) if run[3] else ""))
        if run[1] == "done" and a.get("rows_removed") == 0:
            break
    return runs


def check_acceptance(res, conn):
    """Checks 1 and 2."""
    rows, rid_of, by_month, months = load_acceptance(res, conn, "1")

    # Expectations, from what was inserted.
    exp_gone = {rid_of[i] for i, r in enumerate(rows) if expired(POLICIES, DAY, r[0], r[1], r[2])}
    exp_kept = {rid_of[i] for i in range(len(rows))} - exp_gone
    group_of = {rid_of[i]: (r[1], r[2]) for i, r in enumerate(rows)}
    month_of_id = {rid_of[i]: month_of(r[0]) for i, r in enumerate(rows)}
    ts_of = {rid_of[i]: r[0] for i, r in enumerate(rows)}
    earliest_cut = DAY - datetime.timedelta(days=min(policy_days(POLICIES, p[0], p[1]) for p in POLICIES if p[5]))
    exp_dropped = {m for m in months if m < earliest_cut
                   and all(rid_of[i] in exp_gone for i in by_month.get(m, []))}
    exp_survive_months = {month_of_id[rid] for rid in exp_kept}
    info("expected: %d rows removed, %d kept; partitions dropped: %s" % (
        len(exp_gone), len(exp_kept), ", ".join(m.strftime("%Y-%m") for m in sorted(exp_dropped))))

    runs = run_until_quiet(conn, AS_OF)
    last = runs[-1]
    res.check(last[1] == "done" and last[2].get("rows_removed") == 0,
              "1: maintenance as of %s reaches a run that removes nothing within 3 runs (%d runs)"
              % (AS_OF.isoformat(), len(runs)),
              "last run: status %s actions %s errors %s" % last[1:])

    present = {r[0] for r in q(conn, "SELECT id FROM audit.audit_log WHERE action = 'rt.row'")}
    groups = sorted(set(group_of.values()), key=lambda g: (g[0], g[1]))
    for g in groups:
        g_ids = {rid for rid, gg in group_of.items() if gg == g}
        kept_exp = g_ids & exp_kept
        kept_got = g_ids & present
        days = policy_days(POLICIES, g[0], g[1])
        res.check(kept_got == kept_exp,
                  "1: %s/%s (%s): exactly the %d rows at or after the cutoff remain (%d removed)"
                  % (g[0], g[1], "%d days" % days if days else "kept for ever", len(kept_exp),
                     len(g_ids) - len(kept_exp)),
                  "remaining %d, expected %d; wrongly removed %d (e.g. %s); wrongly kept %d (e.g. %s)" % (
                      len(kept_got), len(kept_exp), len(kept_exp - kept_got),
                      [(i, ts_of[i].isoformat()) for i in sorted(kept_exp - kept_got)[:5]],
                      len(kept_got - kept_exp),
                      [(i, ts_of[i].isoformat()) for i in sorted(kept_got - kept_exp)[:5]]))

    # Removed per policy, as the runs report it: delete groups + rows of dropped partitions.
    actions = [e for run in runs for e in (run[2] or {}).get("retention", [])]
    dropped_reported = set()
    removed_reported = collections.Counter()
    for e in actions:
        if e["action"] == "drop":
            dropped_reported.add(q1(conn, "SELECT %s::timestamptz", (e["range_from"],)))
        else:
            for g in e.get("groups", []):
                removed_reported[g["retention_policy"]] += g["rows"]
    for rid in exp_gone | exp_kept:
        if month_of_id[rid] in dropped_reported:
            removed_reported[group_of[rid][0]] += 1
    removed_expected = collections.Counter(group_of[rid][0] for rid in exp_gone)
    for pol in sorted({g[0] for g in groups}):
        res.check(removed_reported[pol] == removed_expected[pol],
                  "1: policy %s: the runs report %d rows removed (delete groups + dropped partitions)"
                  % (pol, removed_expected[pol]), "reported %d" % removed_reported[pol])
    total_reported = sum((run[2] or {}).get("rows_removed", 0) for run in runs)
    res.check(total_reported == len(exp_gone),
              "1: the runs' rows_removed add up to the %d expired rows" % len(exp_gone),
              "sum of rows_removed: %d" % total_reported)

    problems = verify_rows(conn)
    res.check(not problems, "1: audit.verify() returns no row after retention",
              "\n".join(str(p) for p in problems[:10]))

    blocks = q(conn, "SELECT kind, count(*), coalesce(sum(row_count), 0) FROM audit.audit_chain_block"
                     " WHERE kind LIKE 'retention%' GROUP BY kind ORDER BY kind")
    bsum = sum(b[2] for b in blocks)
    res.check(blocks and bsum == len(exp_gone),
              "1: the chain's retention blocks' row_count add up to the %d rows removed" % len(exp_gone),
              "blocks (kind, count, rows): %s" % blocks)
    deleted_ids = {r[0] for r in q(conn, "SELECT unnest(row_ids) FROM audit.audit_chain_block"
                                         " WHERE kind = 'retention_rows'")}
    exp_deleted = {rid for rid in exp_gone if month_of_id[rid] not in exp_dropped}
    res.check(deleted_ids == exp_deleted,
              "1: the retention_rows blocks list exactly the %d rows deleted from surviving partitions"
              % len(exp_deleted),
              "listed %d; not listed %s; listed but not expected %s" % (
                  len(deleted_ids), sorted(exp_deleted - deleted_ids)[:5], sorted(deleted_ids - exp_deleted)[:5]))
    dropped_blocks = {r[0] for r in q(conn, "SELECT partition_from FROM audit.audit_chain_block"
                                            " WHERE kind = 'retention_partition'")}
    res.check(dropped_blocks == exp_dropped,
              "1: the retention_partition blocks name exactly the %d dropped months" % len(exp_dropped),
              "blocks: %s; expected %s" % (sorted(str(m.date()) for m in dropped_blocks),
                                          sorted(str(m.date()) for m in exp_dropped)))

    have = {r[0] for r in q(conn, "SELECT range_from FROM audit.partition_bounds() WHERE NOT is_default")}
    still = sorted(m for m in exp_dropped if m in have)
    gone = sorted(m for m in exp_survive_months if m not in have)
    res.check(not still and not gone,
              "1: the %d fully expired partitions are dropped, the %d with surviving rows remain"
              % (len(exp_dropped), len(exp_survive_months)),
              "not dropped: %s; wrongly gone: %s" % ([str(m.date()) for m in still], [str(m.date()) for m in gone]))

    plan = q(conn, "SELECT action, count(*) FROM audit.retention_plan(%s) GROUP BY 1 ORDER BY 1", (AS_OF,))
    res.check([p[0] for p in plan] == ["keep"], "1: audit.retention_plan(as_of) now shows only 'keep'",
              "plan actions: %s" % plan)

    conn.execute("CALL audit.run_maintenance(%s)", (AS_OF,))
    again = last_call_run(conn)
    a = again[2] or {}
    count_after = q1(conn, "SELECT count(*) FROM audit.audit_log WHERE action = 'rt.row'")
    res.check(again[1] == "done" and a.get("rows_removed") == 0 and not a.get("retention")
              and a.get("partitions_summarized") == 0 and count_after == len(exp_kept),
              "1: another run as of the same time removes nothing and summarises nothing",
              "status %s actions %s errors %s; rows %d (expected %d)" % (again[1], a, again[3], count_after,
                                                                          len(exp_kept)))

    # 1c. Late rows: into a surviving partition, and into months whose partitions were dropped.
    late = [(datetime.datetime(2025, 6, 10, 8, tzinfo=UTC), "p30", "INTERNAL"),       # surviving month, expired
            (datetime.datetime(2024, 1, 20, 8, tzinfo=UTC), "p30", "INTERNAL"),       # dropped month, expired
            (datetime.datetime(2024, 1, 21, 9, tzinfo=UTC), "p365", "PHI"),           # dropped month, expired
            (datetime.datetime(2024, 3, 5, 10, tzinfo=UTC), "nosuch", "PUBLIC"),      # dropped month, kept
            (datetime.datetime(2024, 3, 6, 11, tzinfo=UTC), "p30", "INTERNAL")]       # dropped month, expired
    late_ids = insert_rows(conn, late, "late")
    late_gone = {rid for rid, r in zip(late_ids, late) if expired(POLICIES, DAY, r[0], r[1], r[2])}
    late_kept = set(late_ids) - late_gone
    in_default = q1(conn, "SELECT count(*) FROM audit.audit_log_default")
    sealed = seal_all(conn)
    drops_before = q1(conn, "SELECT count(*) FROM audit.audit_chain_block WHERE kind = 'retention_partition'")
    runs_late = run_until_quiet(conn, AS_OF)
    present = {r[0] for r in q(conn, "SELECT id FROM audit.audit_log WHERE id = ANY(%s)", (late_ids,))}
    have = {r[0] for r in q(conn, "SELECT range_from FROM audit.partition_bounds() WHERE NOT is_default")}
    jan, mar = datetime.datetime(2024, 1, 1, tzinfo=UTC), datetime.datetime(2024, 3, 1, tzinfo=UTC)
    new_drops = q(conn, "SELECT partition_from, row_count FROM audit.audit_chain_block"
                        " WHERE kind = 'retention_partition' ORDER BY height OFFSET %s", (drops_before,))
    res.check(sealed and not (present & late_gone) and late_kept <= present and jan not in have and mar in have
              and [(r[0], r[1]) for r in new_drops] == [(jan, 2)],
              "1c: late rows (%d in the default partition) after retention: the %d expired ones are removed "
              "(2024-01 recreated and dropped again, its block counting its 2 relocated rows), the kept one "
              "stays in a recreated 2024-03" % (in_default, len(late_gone)),
              "sealed %s; still present %s; wrongly gone %s; 2024-01 exists %s; 2024-03 exists %s; new "
              "retention_partition blocks %s; runs %s" % (
                  sealed, sorted(present & late_gone), sorted(late_kept - present), jan in have, mar in have,
                  new_drops, [(r[1], r[2], r[3]) for r in runs_late]))
    problems = verify_rows(conn)
    res.check(not problems, "1c: audit.verify() returns no row after the late rows' retention",
              "\n".join(str(p) for p in problems[:10]))
    plan = q(conn, "SELECT action, count(*) FROM audit.retention_plan(%s) GROUP BY 1 ORDER BY 1", (AS_OF,))
    res.check([p[0] for p in plan] == ["keep"], "1c: audit.retention_plan(as_of) shows only 'keep' again",
              "plan actions: %s" % plan)
    exp_gone |= late_gone

    # 2. Retained vs missing.
    victim_rid = None
    for rid in sorted(exp_kept):
        m = month_of_id[rid]
        if group_of[rid] == ("p365", "CONFIDENTIAL") and m not in exp_dropped and m < earliest_cut \
                and any(month_of_id[x] == m for x in exp_deleted):
            victim_rid = rid
            break
    if not res.check(victim_rid is not None, "2: a surviving p365/CONFIDENTIAL row in a partition that lost rows"):
        return
    height = q1(conn, "SELECT height FROM audit.audit_chain_block WHERE kind = 'rows' AND %s = ANY(row_ids)",
                (victim_rid,))
    tamper(conn, ("DELETE FROM audit.audit_log WHERE id = %s", (victim_rid,)))
    problems = verify_rows(conn)
    bad_removed = [p for p in problems if p[1] in exp_gone]
    res.check(len(problems) == 1 and problems[0][1] == victim_rid and problems[0][3] == "missing"
              and problems[0][0] == height and not bad_removed,
              "2: a surviving row deleted by hand (id %s, %s, block %s) is the one problem: 'missing'; "
              "none of the %d rows retention removed is reported" % (
                  victim_rid, month_of_id[victim_rid].strftime("%Y-%m"), height, len(exp_gone)),
              "verify: %s" % "\n".join(str(p) for p in problems[:10]))


def check_timezone(res, conn, tz):
    """Check 1b: the session's TimeZone does not move the cutoffs (whole UTC days)."""
    rows, rid_of, _by_month, _months = load_acceptance(res, conn, "1b")
    conn.execute(sql.SQL("SET TimeZone = {}").format(sql.Literal(tz)))
    try:
        run_until_quiet(conn, AS_OF)
        present = {r[0] for r in q(conn, "SELECT id FROM audit.audit_log WHERE action = 'rt.row'")}
        wrong = collections.defaultdict(list)
        for i, r in enumerate(rows):
            if (rid_of[i] in present) == expired(POLICIES, DAY, r[0], r[1], r[2]):
                wrong[(r[1], r[2])].append("%s %s" % ("kept" if rid_of[i] in present else "removed",
                                                      r[0].isoformat()))
        res.check(not wrong, "1b: with TimeZone = '%s' in the CALLing session, exactly the same rows remain "
                             "(cutoffs are whole UTC days)" % tz,
                  "\n".join("%s/%s: %d wrong, e.g. %s" % (g[0], g[1], len(w), w[:4]) for g, w in sorted(wrong.items())))
        problems = verify_rows(conn)
        res.check(not problems, "1b: audit.verify() returns no row", "\n".join(str(p) for p in problems[:10]))
    finally:
        conn.execute("RESET TimeZone")


def check_worker(res, conn):
    """Check 3: the worker removes expired rows by itself."""
    fresh(conn)
    now = q1(conn, "SELECT now()")
    day = datetime.datetime(now.astimezone(UTC).year, now.astimezone(UTC).month, now.astimezone(UTC).day,
                            tzinfo=UTC)
    days = 45
    pols = [("pw", None, days, None, None, True)]
    add_policies(conn, pols)
    cut = day - datetime.timedelta(days=days)
    # Partitions from 120 days back; rows of 200 and 300 days back land in the default partition.
    conn.execute("SELECT count(*) FROM audit.create_partitions(5, %s)", (day - datetime.timedelta(days=120),))
    H = datetime.timedelta(hours=1)
    D = datetime.timedelta(days=1)
    rows = [(cut - 2 * D, "pw", "INTERNAL"), (cut - 2 * D - 6 * H, "pw", "PHI"), (cut - 20 * D, "pw", "INTERNAL"),
            (cut + 2 * D, "pw", "INTERNAL"), (day - D, "pw", "PHI"), (day - 50 * D, "other", "INTERNAL"),
            (day - 200 * D, "pw", "INTERNAL"), (day - 200 * D + H, "other", "INTERNAL"),
            (day - 300 * D, "pw", "INTERNAL"), (day - 300 * D + H, "pw", "CONFIDENTIAL")]
    ids = insert_rows(conn, rows, "w")
    gone = {rid for rid, r in zip(ids, rows) if expired(pols, day, r[0], r[1], r[2])}
    kept = set(ids) - gone
    in_default = q1(conn, "SELECT count(*) FROM audit.audit_log_default")
    info("worker check: now %s, cutoff %s; %d rows (%d expired, %d in the default partition)" % (
        now.isoformat(), cut.date(), len(rows), len(gone), in_default))
    calls_before = q1(conn, "SELECT count(*) FROM audit.maintenance_run WHERE via = 'call'")
    worker_before = q1(conn, "SELECT count(*) FROM audit.maintenance_run WHERE via = 'worker'")
    res.check(worker_before == 0, "3: with maintenance_interval = 0 the worker ran no maintenance yet",
              "worker runs: %s" % worker_before)
    try:
        set_setting(conn, 'audit_db.maintenance_interval', "1", settle=1.0)

        def done():
            present = {r[0] for r in q(conn, "SELECT id FROM audit.audit_log WHERE id = ANY(%s)", (ids,))}
            if present & gone or kept - present or unsealed(conn):
                return False
            return not verify_rows(conn)
        ok, secs = wait_for(done, 30, 0.5)
        present = {r[0] for r in q(conn, "SELECT id FROM audit.audit_log WHERE id = ANY(%s)", (ids,))}
        problems = verify_rows(conn)
        res.check(ok, "3: with maintenance_interval = 1 the worker removed the %d expired rows by itself, "
                      "kept the %d others, verify clean (%.1f s)" % (len(gone), len(kept), secs),
                  "still present: %s; wrongly gone: %s; unsealed %s; verify: %s; last worker runs: %s" % (
                      sorted(present & gone), sorted(kept - present), unsealed(conn), problems[:5],
                      q(conn, "SELECT run_id, status, actions, errors FROM audit.maintenance_run"
                              " WHERE via = 'worker' ORDER BY run_id DESC LIMIT 3")))
        by_worker = q1(conn, "SELECT coalesce(sum((actions->>'rows_removed')::bigint), 0)"
                             " FROM audit.maintenance_run WHERE via = 'worker'")
        calls = q1(conn, "SELECT count(*) FROM audit.maintenance_run WHERE via = 'call'")
        res.check(by_worker == len(gone) and calls == calls_before,
                  "3: the worker's runs recorded the %d removals (no CALL run)" % len(gone),
                  "worker rows_removed %s, call runs %s" % (by_worker, calls - calls_before))
        blocks = q(conn, "SELECT kind, partition_from, row_count FROM audit.audit_chain_block"
                         " WHERE kind LIKE 'retention%' ORDER BY height")
        res.check(sum(b[2] for b in blocks) == len(gone),
                  "3: the retention blocks' row_count add up to the %d rows removed (%s)" % (
                      len(gone), ", ".join("%s %s: %d" % (b[0], b[1].date(), b[2]) for b in blocks)),
                  "blocks: %s" % blocks)
    finally:
        set_setting(conn, 'audit_db.maintenance_interval', "0", settle=1.0)


def time_call(conn):
    t0 = time.monotonic()
    conn.execute("CALL audit.run_maintenance()")
    secs = time.monotonic() - t0
    return secs, last_call_run(conn)


def check_big(res, conn):
    """Check 4: planning reads metadata (timings only reported)."""
    fresh(conn)
    add_policies(conn, [("p30", None, 30, None, None, True), ("p365", None, 365, None, None, True),
                        ("p2555", None, 2555, None, None, True)])
    empty = [time_call(conn) for _ in range(3)]
    chunk = 1000000
    t0 = time.monotonic()
    left = BIG_ROWS
    while left > 0:
        n = min(chunk, left)
        conn.execute("INSERT INTO audit.audit_log (\"timestamp\", action, status, retention_policy,"
                     " data_classification)"
                     " SELECT date_trunc('month', now(), 'UTC')"
                     "        + (g %% greatest(extract(epoch FROM now()"
                     "                                 - date_trunc('month', now(), 'UTC'))::bigint, 1))"
                     "          * interval '1 second',"
                     "        'rt.big', 'success', (ARRAY['p30', 'p365', 'p2555'])[1 + g %% 3],"
                     "        (ARRAY['INTERNAL', 'PHI', 'FINANCIAL', 'PUBLIC'])[1 + g %% 4]"
                     " FROM generate_series(1, %s) g", (n,))
        left -= n
    t_insert = time.monotonic() - t0
    t0 = time.monotonic()
    sealed = seal_all(conn, limit=max(120, BIG_ROWS / 20000))
    t_seal = time.monotonic() - t0
    info("big log: %d rows in the current month inserted in %.1f s, sealed %sin %.1f s" % (
        BIG_ROWS, t_insert, "" if sealed else "(NOT all) ", t_seal))
    big = [time_call(conn) for _ in range(3)]
    info("CALL audit.run_maintenance() on an empty log: %s s (median %.3f s)" % (
        ", ".join("%.3f" % s for s, _ in empty), statistics.median(s for s, _ in empty)))
    info("CALL audit.run_maintenance() on %d rows: %s s (median %.3f s); rows_removed %s" % (
        BIG_ROWS, ", ".join("%.3f" % s for s, _ in big), statistics.median(s for s, _ in big),
        [r[2].get("rows_removed") for _, r in big]))
    now = q1(conn, "SELECT now()")
    earliest_cut = q1(conn, "SELECT date_trunc('day', %s::timestamptz, 'UTC') - interval '30 days'", (now,))
    summarized = [r[2].get("partitions_summarized") for _, r in big]
    summaries = q(conn, "SELECT partition_oid::regclass::text, range_from FROM audit.retention_summary")
    late = [s for s in summaries if s[1] >= earliest_cut]
    res.check(all(n == 0 for n in summarized) or (summaries and not late),
              "4: the runs on %d rows summarised no partition that could not hold expired rows "
              "(partitions_summarized %s)" % (BIG_ROWS, summarized),
              "summaries starting at or after the earliest cutoff %s: %s" % (earliest_cut, late or summaries))


def check_errors(res, conn):
    """Check 5: the policy table's constraints and who may do what."""
    fresh(conn)
    ins = ("INSERT INTO audit.audit_retention_policy (policy_name, data_classification, retention_days,"
           " archive_after_days, delete_after_days) VALUES (%s, %s, %s, %s, %s)")
    cases = [
        ("retention_days 0", ("e0", None, 0, None, None), "23514"),
        ("delete_after_days < retention_days", ("e1", None, 30, None, 29), "23514"),
        ("archive_after_days = retention_days (no delete days)", ("e2", None, 30, 30, None), "23514"),
        ("archive_after_days > delete_after_days", ("e3", None, 30, 100, 90), "23514"),
        ("an unknown classification", ("e4", "SECRET", 30, None, None), "23514"),
        ("valid: retention 30, archive 10, delete 60", ("ok1", None, 30, 10, 60), None),
        ("valid: p/NULL", ("dup", None, 30, None, None), None),
        ("valid: p/PHI beside p/NULL", ("dup", "PHI", 60, None, None), None),
        ("a duplicate (p, NULL)", ("dup", None, 90, None, None), "23505"),
        ("a duplicate (p, PHI)", ("dup", "PHI", 90, None, None), "23505"),
    ]
    for what, args, want in cases:
        got = sqlstate_of(conn, ins, args)
        res.check(got == want, "5: %s -> %s" % (what, want or "accepted"), "got %s" % got)
    got = sqlstate_of(conn, "UPDATE audit.audit_retention_policy SET delete_after_days = 10"
                            " WHERE policy_name = 'ok1'")
    res.check(got == "23514", "5: UPDATE to delete_after_days < retention_days -> 23514", "got %s" % got)
    got = sqlstate_of(conn, "CALL audit.run_maintenance('infinity')")
    res.check(got == "22023", "5: CALL audit.run_maintenance('infinity') -> 22023", "got %s" % got)

    conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(ROLE_APP)))
    conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN IN ROLE audit_db_writer").format(sql.Identifier(ROLE_APP)))
    try:
        for role in (ROLE_APP, "audit_db_auditor"):
            other = connect()
            other.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(role)))
            got = sqlstate_of(other, ins, ("x", None, 30, None, None))
            res.check(got == "42501", "5: %s cannot INSERT a policy (42501)" % role, "got %s" % got)
            got = sqlstate_of(other, "UPDATE audit.audit_retention_policy SET retention_days = 1")
            res.check(got == "42501", "5: %s cannot UPDATE the policies (42501)" % role, "got %s" % got)
            got = sqlstate_of(other, "CALL audit.run_maintenance()")
            res.check(got == "42501", "5: %s cannot CALL audit.run_maintenance (42501)" % role, "got %s" % got)
            if role == "audit_db_auditor":
                try:
                    n = q1(other, "SELECT count(*) FROM audit.audit_retention_policy")
                    plan = q(other, "SELECT * FROM audit.retention_plan()")
                    plan2 = q(other, "SELECT * FROM audit.retention_plan(%s)", (AS_OF,))
                    ok, detail = n == 3, "policies seen: %s; plan rows %d / %d" % (n, len(plan), len(plan2))
                except psycopg.Error as e:
                    ok, detail = False, "%s: %s" % (e.sqlstate, e)
                res.check(ok, "5: audit_db_auditor can SELECT audit.audit_retention_policy and "
                              "audit.retention_plan()", detail)
            other.close()
    finally:
        conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(ROLE_APP)))


def main():
    res = Results()
    conn = connect()
    preload = q1(conn, "SHOW shared_preload_libraries")
    if not res.check("audit_db" in [p.strip() for p in preload.split(",")],
                     "audit_db is in shared_preload_libraries", "it is %r" % preload):
        return res.finish("retention")
    try:
        set_setting(conn, 'audit_db.maintenance_interval', "0", settle=1.0)     # no maintenance run but ours (the worker's use the wall clock)
        for name, fn in (("1-2", check_acceptance), ("1b", lambda r, c: check_timezone(r, c, "America/New_York")),
                         ("3", check_worker), ("4", check_big), ("5", check_errors)):
            t0 = time.monotonic()
            res.run("%s: ran to the end" % name, lambda: (fn(res, conn), (True, None))[1])
            info("check %s took %.1f s" % (name, time.monotonic() - t0))
    finally:
        set_setting(conn, 'audit_db.maintenance_interval', None, settle=1.0)
        info("audit_db.maintenance_interval reset")
        conn.close()
    return res.finish("retention")


if __name__ == "__main__":
    sys.exit(main())
