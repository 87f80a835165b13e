#!/usr/bin/python3
"""test/tenancy_sessions.py: tenant isolation seen from several concurrent
sessions (what pg_regress, one session at a time, cannot show).

In the test database (PGDATABASE; the extension is re-created there), with
LOGIN roles made for the test (tenancy_test_*; dropped first if a previous
run left them, and at the end even on failure) and a superuser session T
(the libpq environment's user) that makes every change:
  1. cache invalidation across sessions: session S (a non-superuser mapped
     to org_a, holding 'top' -> 'mid' -> 'reader' there, 'reader' granting
     read on audit.audit_log) sees audit.session_has_permission(),
     audit.has_permission() and its org_a rows (and nothing else); T takes
     the permission away and commits (UPDATE of reader's permissions, DELETE
     of S's assignment, removal of the mid -> reader link) and S's very next
     statement sees false and no rows, then T gives it back and the next
     statement sees it again; each with S in autocommit and with S inside
     one open transaction (BEGIN; check; T revokes; check; T grants; check;
     COMMIT). The same for T revoking S's organization_access (S's
     current_organization() becomes NULL, its rows disappear,
     has_permission and set_organization for org_a are refused with 42501)
     and for T revoking a group role that carried the mapping from session
     M's role (REVOKE grp FROM m).
  2. a pooled application role (mapped to '*' with may_set_principal), two
     connections interleaved: BEGIN; set_organization(org, principal,
     local => true); audit.log_event(); read; COMMIT: each reads and writes
     only its own organization (rows land there, a write for the other is
     refused), and after COMMIT acts for none again (current_organization()
     NULL, reads return nothing, log_event refused). While a connection
     acts for org_a as alice inside a transaction, T takes may_set_principal
     away (its next statement acts as the role itself: no permission, no
     row), then revokes the '*' mapping (acts for none; set_organization
     refused). ROLLBACK undoes a session-level set_organization (back to
     none, or back to the previous one), and so does ROLLBACK TO SAVEPOINT
     for one made after the savepoint (session-level or local; RELEASE
     keeps it), like SET; DISCARD ALL clears one; local => true outside a
     transaction block warns and changes nothing.
  3. the extension's log: every change T made is in audit.audit_log, right
     after it, as exactly the expected '<table>.<insert|update|delete>'
     events (organization, target, principal, old/new details); a
     membership REVOKE (a catalog change) logs nothing there.
  4. concurrency of the inheritance cycle check: two sessions, each in an
     open transaction, add one edge each that together close a cycle (A
     inherits B / B inherits A, both roles existing; and a three-role cycle
     by two tenant administrators under row-level security): the second
     blocks (on the first's lock, seen in pg_stat_activity) until the first
     commits, then fails with 42P19, no deadlock, exactly one edge stays;
     when the first rolls back instead, the second succeeds. Lock order:
     one transaction updates role two_1 then two_2 (descriptions only),
     another updates two_2 in between: no deadlock, both commit (as
     without the extension).
  5. verification by confined tenant auditors: after events in org_a and
     org_b are sealed (audit.seal() as superuser), audit.verify() by the
     org_b auditor returns no row and its run is recorded in
     audit.audit_integrity_log (run_by, scope organization_id org_b, clean,
     rows_checked = org_b's rows); asking for org_a is refused (42501); the
     same for the org_a writer-auditor S; the superuser's verify() is clean.
Every wait is bounded (lock_timeout, statement_timeout, thread joins with
timeouts); nothing depends on timing otherwise. Runs in about 5 s.
Connects through the libpq environment (PGHOST, PGPORT, PGUSER, PGDATABASE)
as a superuser; the test roles connect the same way with their own names
(and a password set for the run). Needs Debian's python3-psycopg.
Last line: "tenancy_sessions: N passed, M failed"; exit status 1 if anything failed.
"""
import json
import os
import secrets
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
from testkit import Results, info, q, q1, seal_all, sqlstate_of, wait_for, psycopg as _load_psycopg  # noqa: E402

psycopg = _load_psycopg()
from psycopg import sql  # noqa: E402

NAME = "tenancy_sessions"
ORG_A = "org_a"
ORG_B = "org_b"
ORG_C = "org_c"
RES = "audit.audit_log"

S_ROLE = "tenancy_test_s"            # mapped to org_a; writer and auditor
GROUP_ROLE = "tenancy_test_grp"      # NOLOGIN, mapped to org_a
MEMBER_ROLE = "tenancy_test_m"       # member of GROUP_ROLE; auditor
POOL_ROLE = "tenancy_test_pool"      # mapped to '*' with may_set_principal; writer and auditor
AUDITOR_B = "tenancy_test_aud_b"     # mapped to org_b; auditor
ADMIN_C1 = "tenancy_test_admin1"     # mapped to org_c; tenant administrators
ADMIN_C2 = "tenancy_test_admin2"
LOGIN_ROLES = [S_ROLE, MEMBER_ROLE, POOL_ROLE, AUDITOR_B, ADMIN_C1, ADMIN_C2]
ALL_ROLES = LOGIN_ROLES + [GROUP_ROLE]
PASSWORD = "t" + secrets.token_hex(16)

READ_PERM = [{"resource": RES, "action": "read"}]
EVENTS_PER_ORG = 5
WAIT = 20.0                          # bound of every wait, seconds


# ---------------------------------------------------------------- helpers

def connect(user=None, **kw):
    args = dict(autocommit=True, application_name="tenancy-sessions-test",
                options="-c statement_timeout=60000 -c lock_timeout=30000")
    if user is not None:
        args.update(user=user, password=PASSWORD)
    args.update(kw)
    return psycopg.connect(**args)


def ident(name):
    return sql.Identifier(name)


def drop_roles(conn):
    """Drop the test roles (and what they own or were granted in this database) if they exist."""
    left = []
    for role in ALL_ROLES:
        if not q1(conn, "SELECT EXISTS (SELECT FROM pg_roles WHERE rolname = %s)", (role,)):
            continue
        if q1(conn, "SELECT to_regclass('audit.organization_access') IS NOT NULL"):
            conn.execute("DELETE FROM audit.organization_access WHERE database_role = %s::regrole", (role,))
        try:
            conn.execute(sql.SQL("DROP OWNED BY {}").format(ident(role)))
            conn.execute(sql.SQL("DROP ROLE {}").format(ident(role)))
        except psycopg.Error as e:
            left.append("%s: %s" % (role, e))
    return left


def fresh_extension(conn):
    conn.execute("DROP EXTENSION IF EXISTS audit_db CASCADE")
    conn.execute("CREATE EXTENSION audit_db")


def create_roles(conn):
    def create(role, login, member_of):
        conn.execute(sql.SQL("CREATE ROLE {} {}").format(
            ident(role), sql.SQL("LOGIN PASSWORD {}").format(sql.Literal(PASSWORD)) if login else sql.SQL("NOLOGIN")))
        for grp in member_of:
            conn.execute(sql.SQL("GRANT {} TO {}").format(ident(grp), ident(role)))
    create(S_ROLE, True, ["audit_db_writer", "audit_db_auditor"])
    create(GROUP_ROLE, False, [])
    create(MEMBER_ROLE, True, ["audit_db_auditor", GROUP_ROLE])
    create(POOL_ROLE, True, ["audit_db_writer", "audit_db_auditor"])
    create(AUDITOR_B, True, ["audit_db_auditor"])
    create(ADMIN_C1, True, ["audit_db_tenant_admin"])
    create(ADMIN_C2, True, ["audit_db_tenant_admin"])


def admin_events(conn, after_id):
    """The extension's administrative events (organization_*) logged after id after_id."""
    return q(conn, "SELECT action, organization_id, target_resource_id, principal_id, details"
                   " FROM audit.audit_log WHERE id > %s AND action LIKE 'organization%%' ORDER BY id", (after_id,))


def max_id(conn):
    return q1(conn, "SELECT coalesce(max(id), 0) FROM audit.audit_log")


class Admin:
    """Session T: the superuser that makes every change, and checks 3 (the log) for each."""

    def __init__(self, res, conn):
        self.res = res
        self.conn = conn
        self.user = q1(conn, "SELECT session_user")
        self.logged = []            # every (action, organization, target) checked

    def change(self, label, statement, params, expect):
        """Run statement (own transaction, committed on return); check that exactly the events
        expect = [(action, organization, target), ...] were logged for it."""
        before = max_id(self.conn)
        result = self.conn.execute(statement, params).fetchall() if statement.lstrip().upper().startswith(
            ("SELECT", "WITH")) else self.conn.execute(statement, params)
        self.check_logged(label, before, expect)
        return result

    def check_logged(self, label, before, expect):
        got = admin_events(self.conn, before)
        problems = []
        if [(g[0], g[1], g[2]) for g in got] != list(expect):
            problems.append("events %s, expected %s" % ([(g[0], g[1], g[2]) for g in got], list(expect)))
        for action, _org, _target, principal, details in got:
            op = action.rsplit(".", 1)[-1]
            keys = set((details or {}).keys())
            want = {"session_user", "current_user"} | ({"new"} if op == "insert" else {"old"} if op == "delete"
                                                       else {"old", "new"})
            same = op == "update" and details.get("old") == details.get("new")
            if principal != self.user or keys != want or details.get("session_user") != self.user or same:
                problems.append("%s: principal %r, details keys %s (want %s), session_user %r%s" % (
                    action, principal, sorted(keys), sorted(want), (details or {}).get("session_user"),
                    ", old = new" if same else ""))
        self.logged.extend(expect)
        self.res.check(not problems, "3: %s is logged as %s" % (
            label, ", ".join("%s (%s, %s)" % e for e in expect) or "nothing"), "\n".join(problems))


def probe(conn, org):
    """One statement: (current_organization, current_principal, session_has_permission(read),
    has_permission(read) for org when acting for it, visible rows, visible rows of other organizations)."""
    return tuple(conn.execute(
        "SELECT audit.current_organization(), audit.current_principal(),"
        " audit.session_has_permission(%(res)s, 'read'),"
        " CASE WHEN audit.current_organization() = %(org)s"
        "      THEN audit.has_permission(audit.current_principal(), %(org)s, %(res)s, 'read') END,"
        " (SELECT count(*) FROM audit.audit_log),"
        " (SELECT count(*) FROM audit.audit_log WHERE organization_id IS DISTINCT FROM %(org)s)",
        {"org": org, "res": RES}).fetchone())


def org_rows(t, org):
    return q1(t, "SELECT count(*) FROM audit.audit_log WHERE organization_id = %s", (org,))


def expect_on(t, role, org):
    return (org, role, True, True, org_rows(t, org), 0)


def expect_off(role, org_kept):
    """Without the permission: still acting for org_kept, but both checks false and no rows."""
    return (org_kept, role, False, False, 0, 0)


def check_probe(res, conn, t, what, expected):
    got = probe(conn, ORG_A)
    if callable(expected):
        expected = expected()
    return res.check(got == expected, what, "probe (org, principal, session_has_permission, has_permission, "
                                            "rows, other orgs' rows) = %s, expected %s" % (got, expected))


def log_events(conn, org, n, tag):
    for i in range(n):
        conn.execute("SELECT audit.log_event(action => %s, status => 'success', organization_id => %s,"
                     " target_resource_type => 'test', target_resource_id => %s)",
                     ("tenancy_test.%s" % tag, org, "%s-%d" % (tag, i)))


def in_xact(conn):
    return conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS


# ---------------------------------------------------------------- 1 + 3: invalidation

def setup_roles(admin):
    """Organization roles, assignments and access for checks 1, 2, 4 and 5 (each change logged)."""
    a = admin
    ins_role = ("INSERT INTO audit.organization_role (organization_id, role_name, permissions, inherits)"
                " VALUES (%s, %s, %s, %s)")
    ins_asg = "INSERT INTO audit.organization_role_assignment (organization_id, principal_id, role_name) VALUES (%s, %s, %s)"
    a.change("creating org_a role reader", ins_role, (ORG_A, "reader", json.dumps(READ_PERM), []),
             [("organization_role.insert", ORG_A, "reader")])
    a.change("creating org_a role mid (inherits reader)", ins_role, (ORG_A, "mid", "[]", ["reader"]),
             [("organization_role.insert", ORG_A, "mid")])
    a.change("creating org_a role top (inherits mid)", ins_role, (ORG_A, "top", "[]", ["mid"]),
             [("organization_role.insert", ORG_A, "top")])
    for who in (S_ROLE, MEMBER_ROLE):
        a.change("assigning top to %s" % who, ins_asg, (ORG_A, who, "top"),
                 [("organization_role_assignment.insert", ORG_A, "%s:top" % who)])
    a.change("creating org_a role app (read+write)", ins_role,
             (ORG_A, "app", json.dumps([{"resource": RES, "action": "*"}]), []),
             [("organization_role.insert", ORG_A, "app")])
    a.change("assigning app to alice in org_a", ins_asg, (ORG_A, "alice", "app"),
             [("organization_role_assignment.insert", ORG_A, "alice:app")])
    a.change("creating org_b role app (read, write)", ins_role,
             (ORG_B, "app", json.dumps([{"resource": RES, "action": "read"}, {"resource": RES, "action": "write"}]), []),
             [("organization_role.insert", ORG_B, "app")])
    a.change("assigning app to bob in org_b", ins_asg, (ORG_B, "bob", "app"),
             [("organization_role_assignment.insert", ORG_B, "bob:app")])
    a.change("creating org_b role auditor (audit.* read)", ins_role,
             (ORG_B, "auditor", json.dumps([{"resource": "audit.*", "action": "read"}]), []),
             [("organization_role.insert", ORG_B, "auditor")])
    a.change("assigning auditor to %s in org_b" % AUDITOR_B, ins_asg, (ORG_B, AUDITOR_B, "auditor"),
             [("organization_role_assignment.insert", ORG_B, "%s:auditor" % AUDITOR_B)])
    a.change("creating org_c role admin", ins_role,
             (ORG_C, "admin", json.dumps([{"resource": "audit.organization_*", "action": "*"}]), []),
             [("organization_role.insert", ORG_C, "admin")])
    for who in (ADMIN_C1, ADMIN_C2):
        a.change("assigning admin to %s in org_c" % who, ins_asg, (ORG_C, who, "admin"),
                 [("organization_role_assignment.insert", ORG_C, "%s:admin" % who)])
    grant = "SELECT audit.grant_organization_access(%s::regrole, %s, %s)"
    for role, org, flag in ((S_ROLE, ORG_A, False), (GROUP_ROLE, ORG_A, False), (POOL_ROLE, "*", True),
                            (AUDITOR_B, ORG_B, False), (ADMIN_C1, ORG_C, False), (ADMIN_C2, ORG_C, False)):
        a.change("granting %s access to %s" % (role, org), grant, (role, org, flag),
                 [("organization_access.insert", None if org == "*" else org, role)])


def check_invalidation(res, t, admin):
    s = connect(S_ROLE)
    try:
        on = lambda: expect_on(t, S_ROLE, ORG_A)  # noqa: E731
        off = expect_off(S_ROLE, ORG_A)
        check_probe(res, s, t, "1: S (mapped to org_a only) acts for org_a, has read through top -> mid -> reader "
                               "and sees exactly org_a's %d rows" % org_rows(t, ORG_A), on)
        perms = q(s, "SELECT resource, action, role_name, inherited_via FROM audit.user_permissions()")
        res.check(perms == [(RES, "read", "reader", ["top", "mid", "reader"])],
                  "1: S's audit.user_permissions() shows read via {top,mid,reader}", "got %s" % perms)
        got = sqlstate_of(s, "SELECT audit.has_permission(%s, %s, %s, 'read')", (S_ROLE, ORG_B, RES))
        res.check(got == "42501", "1: S may not ask has_permission about org_b (42501)", "got %s" % got)

        revocations = [
            ("UPDATE of reader's permissions to []",
             ("UPDATE audit.organization_role SET permissions = '[]' WHERE organization_id = %s AND role_name = 'reader'",
              (ORG_A,), [("organization_role.update", ORG_A, "reader")]),
             ("UPDATE audit.organization_role SET permissions = %s WHERE organization_id = %s AND role_name = 'reader'",
              (json.dumps(READ_PERM), ORG_A), [("organization_role.update", ORG_A, "reader")])),
            ("DELETE of S's assignment",
             ("DELETE FROM audit.organization_role_assignment WHERE organization_id = %s AND principal_id = %s"
              " AND role_name = 'top'", (ORG_A, S_ROLE),
              [("organization_role_assignment.delete", ORG_A, "%s:top" % S_ROLE)]),
             ("INSERT INTO audit.organization_role_assignment (organization_id, principal_id, role_name)"
              " VALUES (%s, %s, 'top')", (ORG_A, S_ROLE),
              [("organization_role_assignment.insert", ORG_A, "%s:top" % S_ROLE)])),
            ("removal of the mid -> reader link",
             ("UPDATE audit.organization_role SET inherits = '{}' WHERE organization_id = %s AND role_name = 'mid'",
              (ORG_A,), [("organization_role.update", ORG_A, "mid")]),
             ("UPDATE audit.organization_role SET inherits = '{reader}' WHERE organization_id = %s AND role_name = 'mid'",
              (ORG_A,), [("organization_role.update", ORG_A, "mid")])),
        ]
        for mode in ("autocommit", "an open transaction"):
            for what, revoke, grant in revocations:
                tag = "1 (%s, S in %s)" % (what, mode)
                if mode != "autocommit":
                    s.execute("BEGIN")
                check_probe(res, s, t, "%s: before, S has read and sees its rows" % tag, on)
                admin.change(what, *revoke)
                if mode != "autocommit":
                    n = q1(s, "SELECT count(*) FROM audit.audit_log")
                    res.check(n == 0, "%s: T commits the revocation; S's next statement, a plain read of "
                                      "audit.audit_log, returns no row" % tag, "%s rows" % n)
                check_probe(res, s, t, "%s: T commits the revocation; S's next statement: session_has_permission "
                                       "and has_permission false, no row visible" % tag, off)
                n = q1(s, "SELECT count(*) FROM audit.user_permissions()")
                res.check(n == 0, "%s: audit.user_permissions() is empty" % tag, "%s rows" % n)
                admin.change("granting back after the " + what, *grant)
                check_probe(res, s, t, "%s: T grants it back; S's next statement sees it again" % tag, on)
                if mode != "autocommit":
                    res.check(in_xact(s), "%s: S was in one open transaction throughout" % tag,
                              "transaction status %s" % s.info.transaction_status)
                    s.execute("COMMIT")

        # Organization access.
        none = (None, S_ROLE, False, None, 0, 0)
        for mode in ("autocommit", "an open transaction"):
            tag = "1 (organization_access, S in %s)" % mode
            if mode != "autocommit":
                s.execute("BEGIN")
            check_probe(res, s, t, "%s: before, S acts for org_a" % tag, on)
            r = admin.change("revoke_organization_access(S, org_a)",
                             "SELECT audit.revoke_organization_access(%s::regrole, %s)", (S_ROLE, ORG_A),
                             [("organization_access.delete", ORG_A, S_ROLE)])
            res.check(r == [(True,)], "%s: revoke_organization_access returns true" % tag, "got %s" % r)
            check_probe(res, s, t, "%s: T revokes S's access; S's next statement: current_organization() NULL, "
                                   "no permission, no row" % tag, none)
            if mode == "autocommit":
                got = sqlstate_of(s, "SELECT audit.has_permission(%s, %s, %s, 'read')", (S_ROLE, ORG_A, RES))
                res.check(got == "42501", "%s: has_permission about org_a is refused now (42501)" % tag,
                          "got %s" % got)
                got = sqlstate_of(s, "SELECT audit.set_organization(%s)", (ORG_A,))
                res.check(got == "42501", "%s: set_organization(org_a) is refused (42501)" % tag, "got %s" % got)
                got = q(s, "SELECT * FROM audit.available_organizations()")
                res.check(got == [], "%s: available_organizations() is empty" % tag, "got %s" % got)
            admin.change("grant_organization_access(S, org_a)",
                         "SELECT audit.grant_organization_access(%s::regrole, %s)", (S_ROLE, ORG_A),
                         [("organization_access.insert", ORG_A, S_ROLE)])
            check_probe(res, s, t, "%s: T grants it back; S's next statement acts for org_a again" % tag, on)
            if mode != "autocommit":
                res.check(in_xact(s), "%s: S was in one open transaction throughout" % tag)
                s.execute("COMMIT")
    finally:
        s.close()

    # Group membership that carried the mapping.
    m = connect(MEMBER_ROLE)
    try:
        on_m = lambda: expect_on(t, MEMBER_ROLE, ORG_A)  # noqa: E731
        none_m = (None, MEMBER_ROLE, False, None, 0, 0)
        for mode in ("autocommit", "an open transaction"):
            tag = "1 (REVOKE %s FROM %s, M in %s)" % (GROUP_ROLE, MEMBER_ROLE, mode)
            if mode != "autocommit":
                m.execute("BEGIN")
            check_probe(res, m, t, "%s: before, M acts for org_a through the group's mapping" % tag, on_m)
            before = max_id(t)
            t.execute(sql.SQL("REVOKE {} FROM {}").format(ident(GROUP_ROLE), ident(MEMBER_ROLE)))
            check_probe(res, m, t, "%s: T revokes the membership; M's next statement: current_organization() NULL, "
                                   "no row" % tag, none_m)
            t.execute(sql.SQL("GRANT {} TO {}").format(ident(GROUP_ROLE), ident(MEMBER_ROLE)))
            admin.check_logged("REVOKE/GRANT of the group membership (a catalog change)", before, [])
            check_probe(res, m, t, "%s: T grants it back; M's next statement acts for org_a again" % tag, on_m)
            if mode != "autocommit":
                res.check(in_xact(m), "%s: M was in one open transaction throughout" % tag)
                m.execute("COMMIT")
    finally:
        m.close()


# ---------------------------------------------------------------- 2: pooled role

def check_pooled(res, t, admin):
    p1 = connect(POOL_ROLE, prepare_threshold=None)
    p2 = connect(POOL_ROLE, prepare_threshold=None)
    try:
        state = "SELECT audit.current_organization(), audit.current_principal()"
        for i, p in enumerate((p1, p2), 1):
            got = q(p, state)[0]
            res.check(got == (None, POOL_ROLE), "2: pooled connection %d acts for no organization at first" % i,
                      "got %s" % (got,))
        ids = {ORG_A: [], ORG_B: []}
        seen = {ORG_A: [], ORG_B: []}
        sessions = ((p1, ORG_A, "alice"), (p2, ORG_B, "bob"))
        for p, org, user in sessions:
            p.execute("BEGIN")
            got = q1(p, "SELECT audit.set_organization(%s, principal => %s, local => true)", (org, user))
            res.check(got == org, "2: %s: BEGIN; set_organization(%s, principal => %s, local => true)" % (org, org, user),
                      "returned %s" % got)
        for rnd in range(3):
            for p, org, user in sessions:
                ids[org].append(q1(p, "SELECT audit.log_event(action => 'tenancy_test.pooled', status => 'success',"
                                      " target_resource_type => 'round', target_resource_id => %s)", (str(rnd),)))
            for p, org, user in sessions:
                st = q(p, state)[0]
                rows = q(p, "SELECT id, organization_id FROM audit.audit_log")
                seen[org].append((st, rows))
        for p, org, user in sessions:
            other = ORG_B if org == ORG_A else ORG_A
            ok = all(st == (org, user) and {r[1] for r in rows} == {org} and set(ids[org][:k + 1]) <= {r[0] for r in rows}
                     and not set(ids[other]) & {r[0] for r in rows} for k, (st, rows) in enumerate(seen[org]))
            res.check(ok, "2: %s: interleaved with the other connection, each statement acts for %s as %s, reads "
                          "only %s rows (its own new ones included, none of the other's)" % (org, org, user, org),
                      "\n".join("%s: %d rows, orgs %s" % (st, len(rows), sorted({str(r[1]) for r in rows}))
                                for st, rows in seen[org]))
        # A write for the other organization is refused (inside a savepoint, the transaction goes on).
        for p, org, user in sessions:
            other = ORG_B if org == ORG_A else ORG_A
            got = sqlstate_of(p, "SELECT audit.log_event(action => 'tenancy_test.pooled', status => 'success',"
                                 " organization_id => %s)", (other,))
            res.check(got == "42501", "2: %s: log_event(organization_id => %s) is refused (42501)" % (org, other),
                      "got %s" % got)
        p1.execute("COMMIT")
        got = (q(p1, state)[0], q1(p1, "SELECT count(*) FROM audit.audit_log"))
        res.check(got == ((None, POOL_ROLE), 0), "2: org_a: after COMMIT the connection acts for none and reads "
                                                 "nothing", "got %s" % (got,))
        st, rows = q(p2, state)[0], q(p2, "SELECT organization_id, count(*) FROM audit.audit_log GROUP BY 1")
        res.check(in_xact(p2) and st == (ORG_B, "bob") and [r[0] for r in rows] == [ORG_B],
                  "2: org_b: the other connection's COMMIT does not change it: still org_b as bob",
                  "state %s, rows %s" % (st, rows))
        p2.execute("COMMIT")
        got = (q(p2, state)[0], q1(p2, "SELECT count(*) FROM audit.audit_log"))
        res.check(got == ((None, POOL_ROLE), 0), "2: org_b: after COMMIT the connection acts for none and reads "
                                                 "nothing", "got %s" % (got,))
        got = sqlstate_of(p1, "SELECT audit.log_event(action => 'tenancy_test.pooled', status => 'success')")
        res.check(got == "42501", "2: acting for none, log_event is refused (42501)", "got %s" % got)
        landed = {org: q(t, "SELECT organization_id, count(*) FROM audit.audit_log WHERE id = ANY(%s) GROUP BY 1",
                         (ids[org],)) for org in ids}
        res.check(landed == {ORG_A: [(ORG_A, 3)], ORG_B: [(ORG_B, 3)]},
                  "2: the superuser sees the 3 + 3 events committed, each in its connection's organization",
                  "got %s" % landed)

        # T changes the pooled role's mapping while a connection acts for org_a as alice (open transaction).
        pstate = ("SELECT audit.current_organization(), audit.current_principal(),"
                  " audit.session_has_permission(%s, 'read'), (SELECT count(*) FROM audit.audit_log)")
        tag = "2 (T changes the mapping, the pooled connection in an open transaction)"
        p1.execute("BEGIN")
        p1.execute("SELECT audit.set_organization(%s, principal => 'alice', local => true)", (ORG_A,))
        want = (ORG_A, "alice", True, org_rows(t, ORG_A))
        got = q(p1, pstate, (RES,))[0]
        res.check(got == want, "%s: acting for org_a as alice, reading org_a's rows" % tag, "got %s, expected %s" % (
            got, want))
        admin.change("grant_organization_access(pool, '*', may_set_principal => false)",
                     "SELECT audit.grant_organization_access(%s::regrole, '*', false)", (POOL_ROLE,),
                     [("organization_access.update", None, POOL_ROLE)])
        got = q(p1, pstate, (RES,))[0]
        res.check(got == (ORG_A, POOL_ROLE, False, 0),
                  "%s: T takes may_set_principal away; the next statement acts as the role itself, not alice: "
                  "no permission, no row" % tag, "got %s" % (got,))
        admin.change("revoke_organization_access(pool, '*')",
                     "SELECT audit.revoke_organization_access(%s::regrole, '*')", (POOL_ROLE,),
                     [("organization_access.delete", None, POOL_ROLE)])
        got = q(p1, pstate, (RES,))[0]
        res.check(got == (None, POOL_ROLE, False, 0),
                  "%s: T revokes the '*' mapping; the next statement acts for no organization" % tag,
                  "got %s" % (got,))
        got = sqlstate_of(p1, "SELECT audit.set_organization(%s, principal => 'alice', local => true)", (ORG_A,))
        res.check(got == "42501", "%s: set_organization(org_a) is refused now (42501)" % tag, "got %s" % got)
        p1.execute("ROLLBACK")
        admin.change("grant_organization_access(pool, '*', may_set_principal => true)",
                     "SELECT audit.grant_organization_access(%s::regrole, '*', true)", (POOL_ROLE,),
                     [("organization_access.insert", None, POOL_ROLE)])
        got = q(p1, pstate, (RES,))[0]
        res.check(got == (None, POOL_ROLE, False, 0), "%s: granted back after ROLLBACK: acts for none until it "
                                                      "selects again" % tag, "got %s" % (got,))

        # Savepoints: a rolled-back subtransaction undoes its selection, as it undoes a SET.
        p1.execute("BEGIN")
        p1.execute("SELECT audit.set_organization(%s, principal => 'alice')", (ORG_A,))
        p1.execute("SAVEPOINT sp")
        p1.execute("SELECT audit.set_organization(%s, principal => 'bob')", (ORG_B,))
        during = q(p1, state)[0]
        p1.execute("ROLLBACK TO SAVEPOINT sp")
        after = q(p1, state)[0]
        p1.execute("COMMIT")
        committed = q(p1, state)[0]
        res.check(during == (ORG_B, "bob") and after == (ORG_A, "alice") and committed == (ORG_A, "alice"),
                  "2: BEGIN; set_organization(org_a, alice); SAVEPOINT; set_organization(org_b, bob); ROLLBACK TO "
                  "SAVEPOINT: back to org_a as alice, and so after COMMIT (like SET)",
                  "inside the savepoint %s, after ROLLBACK TO %s, after COMMIT %s" % (during, after, committed))
        p1.execute("SELECT audit.reset_organization()")
        p1.execute("BEGIN")
        p1.execute("SELECT audit.set_organization(%s, principal => 'alice', local => true)", (ORG_A,))
        p1.execute("SAVEPOINT sp")
        p1.execute("SELECT audit.set_organization(%s, principal => 'bob', local => true)", (ORG_B,))
        p1.execute("ROLLBACK TO SAVEPOINT sp")
        after = q(p1, state)[0]
        p1.execute("SAVEPOINT sp2")
        p1.execute("SELECT audit.set_organization(%s, principal => 'bob', local => true)", (ORG_B,))
        p1.execute("RELEASE SAVEPOINT sp2")
        released = q(p1, state)[0]
        p1.execute("COMMIT")
        committed = q(p1, state)[0]
        res.check(after == (ORG_A, "alice") and released == (ORG_B, "bob") and committed == (None, POOL_ROLE),
                  "2: local selections: ROLLBACK TO SAVEPOINT undoes the one made after it (back to org_a), "
                  "RELEASE keeps it (org_b), COMMIT ends it (none)",
                  "after ROLLBACK TO %s, after RELEASE %s, after COMMIT %s" % (after, released, committed))
        p1.execute("SELECT audit.reset_organization()")

        # ROLLBACK undoes a session-level selection.
        p1.execute("BEGIN")
        p1.execute("SELECT audit.set_organization(%s, principal => 'alice')", (ORG_A,))
        during = q(p1, state)[0]
        p1.execute("ROLLBACK")
        after = (q(p1, state)[0], q1(p1, "SELECT count(*) FROM audit.audit_log"))
        res.check(during == (ORG_A, "alice") and after == ((None, POOL_ROLE), 0),
                  "2: BEGIN; set_organization(org_a) (session-level); ROLLBACK: acts for none again",
                  "during %s, after %s" % (during, after))
        p1.execute("SELECT audit.set_organization(%s, principal => 'alice')", (ORG_A,))
        p1.execute("BEGIN")
        p1.execute("SELECT audit.set_organization(%s, principal => 'bob')", (ORG_B,))
        during = q(p1, state)[0]
        p1.execute("ROLLBACK")
        after = q(p1, state)[0]
        n = q1(p1, "SELECT count(*) FROM audit.audit_log WHERE organization_id = %s", (ORG_A,))
        res.check(during == (ORG_B, "bob") and after == (ORG_A, "alice") and n == org_rows(t, ORG_A),
                  "2: set_organization(org_a) outside, then BEGIN; set_organization(org_b); ROLLBACK: back to org_a "
                  "as alice, reading org_a's rows", "during %s, after %s, rows %s" % (during, after, n))
        with p1.cursor() as cur:
            cur.execute("DISCARD ALL")
        after = (q(p1, state)[0], q1(p1, "SELECT count(*) FROM audit.audit_log"))
        res.check(after == ((None, POOL_ROLE), 0), "2: DISCARD ALL clears the selection", "got %s" % (after,))
        notices = []
        p2.add_notice_handler(lambda d: notices.append((d.severity_nonlocalized, d.message_primary)))
        got = q1(p2, "SELECT audit.set_organization(%s, local => true)", (ORG_A,))
        after = q(p2, state)[0]
        res.check(got is None and after == (None, POOL_ROLE) and any(n[0] == "WARNING" for n in notices),
                  "2: set_organization(local => true) outside a transaction block: WARNING, NULL, no effect",
                  "returned %s, state %s, notices %s" % (got, after, notices))
    finally:
        p1.close()
        p2.close()


# ---------------------------------------------------------------- 4: cycle check

class Runner(threading.Thread):
    """Runs one statement on its own connection; result in .error (None: it succeeded)."""

    def __init__(self, conn, statement, params):
        super().__init__(daemon=True)
        self.conn, self.statement, self.params = conn, statement, params
        self.error = None
        self.done = False

    def run(self):
        try:
            self.conn.execute(self.statement, self.params)
        except psycopg.Error as e:
            self.error = e
        self.done = True


def cycle_race(res, t, tag, org, c1, c2, edge1, edge2, first_commits):
    """c1 and c2 each BEGIN; c1 adds edge1; c2 adds edge2 (must block); c1 commits (or rolls back).
    With first_commits, c2 must fail with 42P19; otherwise it must succeed. Returns (c2's error)."""
    upd = "UPDATE audit.organization_role SET inherits = %s WHERE organization_id = %s AND role_name = %s"
    c1.execute("BEGIN")
    c2.execute("BEGIN")
    # Both sessions have a statement in their transaction before the race.
    c1.execute("SELECT audit.current_organization()")
    c2.execute("SELECT audit.current_organization()")
    c1.execute(upd, (edge1[1], org, edge1[0]))
    pid1, pid2 = c1.info.backend_pid, c2.info.backend_pid
    runner = Runner(c2, upd, (edge2[1], org, edge2[0]))
    runner.start()
    blocked, secs = wait_for(lambda: runner.done or q1(
        t, "SELECT wait_event_type = 'Lock' AND %s = ANY(pg_blocking_pids(pid)) FROM pg_stat_activity WHERE pid = %s",
        (pid1, pid2)), WAIT, 0.02)
    wait = q(t, "SELECT wait_event_type, wait_event FROM pg_stat_activity WHERE pid = %s", (pid2,))
    res.check(bool(blocked) and not runner.done,
              "4 (%s): the second session's edge waits for the first's transaction (%s)" % (tag, wait),
              "done %s, error %s, wait %s after %.1f s" % (runner.done, runner.error, wait, secs))
    c1.execute("COMMIT" if first_commits else "ROLLBACK")
    runner.join(WAIT)
    finished = not runner.is_alive()
    err = runner.error
    if first_commits:
        ok = finished and err is not None and err.sqlstate == "42P19" and "cycle" in str(err)
        res.check(ok, "4 (%s): after the first commits, the second fails with 42P19 (%s)" % (
            tag, str(err).splitlines()[0] if err else None),
            "finished %s, error %s %s" % (finished, err.sqlstate if err else None, err))
    else:
        ok = finished and err is None
        res.check(ok, "4 (%s): after the first rolls back, the second's edge is accepted" % tag,
                  "finished %s, error %s %s" % (finished, err.sqlstate if err else None, err))
    if finished:
        c2.execute("ROLLBACK" if err is not None else "COMMIT")
    return err


def check_cycles(res, t, admin):
    ins_role = ("INSERT INTO audit.organization_role (organization_id, role_name, permissions, inherits)"
                " VALUES (%s, %s, '[]', %s)")
    for name, inh in (("cyc_a", []), ("cyc_b", []), ("cyc_x", []), ("cyc_z", []), ("cyc_y", ["cyc_z"]),
                      ("cyc_p", []), ("cyc_q", []), ("two_1", []), ("two_2", [])):
        admin.change("creating org_c role %s" % name, ins_role, (ORG_C, name, inh),
                     [("organization_role.insert", ORG_C, name)])
    inherits = lambda: dict(q(t, "SELECT role_name::text, inherits::text[] FROM audit.organization_role"  # noqa: E731
                                 " WHERE organization_id = %s AND role_name LIKE 'cyc%%'", (ORG_C,)))

    # Superusers: A inherits B against B inherits A.
    c1, c2 = connect(), connect()
    try:
        before = max_id(t)
        err = cycle_race(res, t, "superusers, a -> b against b -> a", ORG_C, c1, c2,
                         ("cyc_a", ["cyc_b"]), ("cyc_b", ["cyc_a"]), True)
        got = inherits()
        res.check(got["cyc_a"] == ["cyc_b"] and got["cyc_b"] == [],
                  "4 (superusers): exactly one edge stays: cyc_a inherits cyc_b, cyc_b inherits nothing",
                  "inherits %s" % got)
        admin.check_logged("the race (only the edge that committed)", before,
                           [("organization_role.update", ORG_C, "cyc_a")])
        res.check(err is None or err.sqlstate != "40P01", "4 (superusers): no deadlock")
    finally:
        c1.close()
        c2.close()

    # Tenant administrators of org_c, under row-level security: x -> y (y -> z exists) against z -> x.
    c1, c2 = connect(ADMIN_C1), connect(ADMIN_C2)
    try:
        st = [q(c, "SELECT audit.current_organization(), audit.session_has_permission('audit.organization_role',"
                   " 'write')")[0] for c in (c1, c2)]
        res.check(st == [(ORG_C, True)] * 2, "4: the two tenant administrators act for org_c with write on "
                                             "audit.organization_role", "got %s" % st)
        before = max_id(t)
        cycle_race(res, t, "tenant administrators, x -> y (y -> z) against z -> x", ORG_C, c1, c2,
                   ("cyc_x", ["cyc_y"]), ("cyc_z", ["cyc_x"]), True)
        got = inherits()
        res.check(got["cyc_x"] == ["cyc_y"] and got["cyc_y"] == ["cyc_z"] and got["cyc_z"] == [],
                  "4 (tenant administrators): only x -> y was added", "inherits %s" % got)
        evs = admin_events(t, before)
        res.check([(e[0], e[1], e[2], e[3]) for e in evs] == [("organization_role.update", ORG_C, "cyc_x", ADMIN_C1)],
                  "3: the administrator's committed edge is logged with its principal (%s), the refused one is not"
                  % ADMIN_C1, "events %s" % [(e[0], e[1], e[2], e[3]) for e in evs])

        # The first rolls back: the second's edge is accepted.
        before = max_id(t)
        cycle_race(res, t, "tenant administrators, p -> q rolled back, then q -> p", ORG_C, c1, c2,
                   ("cyc_p", ["cyc_q"]), ("cyc_q", ["cyc_p"]), False)
        got = inherits()
        res.check(got["cyc_p"] == [] and got["cyc_q"] == ["cyc_p"],
                  "4 (rollback): only q -> p stays", "inherits %s" % got)
        evs = admin_events(t, before)
        res.check([(e[0], e[1], e[2], e[3]) for e in evs] == [("organization_role.update", ORG_C, "cyc_q", ADMIN_C2)],
                  "3: only the committed edge (q -> p, by %s) is logged" % ADMIN_C2,
                  "events %s" % [(e[0], e[1], e[2], e[3]) for e in evs])
    finally:
        c1.close()
        c2.close()

    # Lock order: the first transaction changes two roles, the second one of them (descriptions only).
    c1, c2 = connect(), connect()
    try:
        desc = "UPDATE audit.organization_role SET description = %s WHERE organization_id = %s AND role_name = %s"
        c1.execute("BEGIN")
        c2.execute("BEGIN")
        c1.execute(desc, ("by c1", ORG_C, "two_1"))
        second = Runner(c2, desc, ("by c2", ORG_C, "two_2"))
        second.start()
        waiting, _ = wait_for(lambda: second.done or q1(
            t, "SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = %s", (c2.info.backend_pid,)),
            WAIT, 0.02)
        first = Runner(c1, desc, ("by c1", ORG_C, "two_2"))
        first.start()
        # Commit each side as soon as its update is done (whichever order a correct lock design gives).
        committed = set()
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline and not (first.done and second.done):
            for c, r in ((c1, first), (c2, second)):
                if r.done and r.error is None and c not in committed:
                    c.execute("COMMIT")
                    committed.add(c)
            time.sleep(0.01)
        for c, r in ((c1, first), (c2, second)):
            r.join(WAIT)
            if not r.is_alive() and r.error is None and c not in committed:
                c.execute("COMMIT")
                committed.add(c)
        errors = [(n, r.error.sqlstate if r.error else None, str(r.error).splitlines()[0] if r.error else None)
                  for n, r in (("first", first), ("second", second))]
        ok = not first.is_alive() and not second.is_alive() and first.error is None and second.error is None
        res.check(ok, "4 (lock order): BEGIN; update role two_1 / BEGIN; update role two_2 / update role two_2 in the "
                      "first: no deadlock, both commit, as without the extension",
                  "second waited %s; alive %s/%s; errors %s" % (waiting, first.is_alive(), second.is_alive(), errors))
        got = dict(q(t, "SELECT role_name::text, description FROM audit.organization_role WHERE organization_id = %s"
                        " AND role_name LIKE 'two%%'", (ORG_C,)))
        res.check(got.get("two_1") == "by c1" and got.get("two_2") in ("by c1", "by c2"),
                  "4 (lock order): both updates are there (%s)" % got)
        for c, r in ((c1, first), (c2, second)):
            if not r.is_alive() and c.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                c.execute("ROLLBACK" if r.error is not None or
                          c.info.transaction_status == psycopg.pq.TransactionStatus.INERROR else "COMMIT")
    finally:
        c1.close()
        c2.close()


# ---------------------------------------------------------------- 5: confined verification

def check_verify(res, t):
    log_events(t, ORG_B, 2, "late")
    log_events(t, ORG_A, 2, "late")
    sealed = seal_all(t)
    res.check(sealed, "5: audit.seal() as superuser sealed every committed row")
    for role, org, other in ((AUDITOR_B, ORG_B, ORG_A), (S_ROLE, ORG_A, ORG_B)):
        c = connect(role)
        try:
            before = q1(t, "SELECT coalesce(max(run_id), 0) FROM audit.audit_integrity_log")
            n_org = org_rows(t, org)
            st = q1(c, "SELECT audit.current_organization()")
            problems = q(c, "SELECT block_height, row_id, field, problem, detail FROM audit.verify()")
            res.check(st == org and not problems,
                      "5: audit.verify() by %s (confined to %s) returns no problem" % (role, org),
                      "acting for %s; problems: %s" % (st, problems[:10]))
            runs = q(t, "SELECT run_by, scope->>'organization_id', status, problems, rows_checked"
                        " FROM audit.audit_integrity_log WHERE run_id > %s ORDER BY run_id", (before,))
            res.check(runs == [(role, org, "clean", 0, n_org)],
                      "5: its run is recorded: run_by %s, organization %s, clean, rows_checked = its %d rows"
                      % (role, org, n_org), "runs %s" % runs)
            got = sqlstate_of(c, "SELECT count(*) FROM audit.verify(organization_id => %s)", (other,))
            res.check(got == "42501", "5: %s may not verify %s (42501)" % (role, other), "got %s" % got)
        finally:
            c.close()
    problems = q(t, "SELECT block_height, row_id, field, problem, detail FROM audit.verify()")
    res.check(not problems, "5: the superuser's audit.verify() is clean", "problems: %s" % problems[:10])


# ---------------------------------------------------------------- main

def main():
    res = Results()
    t = connect()
    is_super = q1(t, "SELECT rolsuper FROM pg_roles WHERE rolname = session_user")
    if not res.check(is_super, "the libpq environment's user is a superuser"):
        return res.finish(NAME)
    t0 = time.monotonic()
    try:
        left = drop_roles(t)
        if not res.check(not left, "roles left by an earlier run dropped", "\n".join(left)):
            return res.finish(NAME)
        fresh_extension(t)
        create_roles(t)
        admin = Admin(res, t)
        setup_roles(admin)
        log_events(t, ORG_A, EVENTS_PER_ORG, "a")
        log_events(t, ORG_B, EVENTS_PER_ORG, "b")
        for name, fn in (("1", lambda: check_invalidation(res, t, admin)), ("2", lambda: check_pooled(res, t, admin)),
                         ("4", lambda: check_cycles(res, t, admin)), ("5", lambda: check_verify(res, t))):
            t1 = time.monotonic()
            res.run("%s: ran to the end" % name, lambda: (fn(), (True, None))[1])
            info("check %s took %.1f s" % (name, time.monotonic() - t1))
        kinds = sorted({e[0] for e in admin.logged})
        res.check({"organization_role.insert", "organization_role.update", "organization_role_assignment.insert",
                   "organization_role_assignment.delete", "organization_access.insert",
                   "organization_access.delete"} <= set(kinds),
                  "3: the changes checked cover %s" % ", ".join(kinds))
    except Exception as e:  # noqa: BLE001 - report, clean up
        res.check(False, "the test ran to its end", "%s: %s" % (type(e).__name__, e))
    finally:
        try:
            if t.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                t.execute("ROLLBACK")
            left = drop_roles(t)
            res.check(not left, "the test roles are dropped", "\n".join(left))
        finally:
            t.close()
        info("took %.1f s" % (time.monotonic() - t0))
    return res.finish(NAME)


if __name__ == "__main__":
    sys.exit(main())
