#!/usr/bin/python3
"""test/sqlsmith.py: random SQL from sqlsmith (Debian's package) against a
database with audit_db: no backend crash, no internal error in audit_db's C
code, the chain still verifies and every part of the extension still works.

On a cluster of its own (initdb as postgres into a temporary directory, a
free port, audit_db preloaded so that its worker runs alongside; stopped and
deleted at the end), so that its server log holds only what this test did.
The database has the extension with data in every part: events of two
organizations with presets, details and a pseudonymized and an erased
subject, sealed; organization roles and assignments; a tracked table under
tenant isolation; alert rules, a retention policy, a scheduled report.

sqlsmith runs twice, with fixed seeds and a bounded number of queries:
  1. as the superuser postgres: the most reach (every function, every table,
     the catalogs; anything it does is rolled back by sqlsmith itself);
  2. as smith_tenant, a LOGIN role that is no superuser: member of
     audit_db_writer, audit_db_auditor and audit_db_tenant_admin, mapped to
     organization acme only (an organization role with every permission,
     gdpr included), and allowed to change the tracked table; with
     --exclude-catalog, so that every query is about the audit tables and the
     tracked table, under row-level security and the C permission checks.
Asserted afterwards:
  - the postmaster is the one started (same PID, alive) and the server log
    written since the runs began has no crash: no process "terminated by
    signal" or by exception, no abnormal exit of a server process, no
    "terminating any other active server processes", no reinitialization,
    no PANIC;
  - no error with SQLSTATE XX000 (internal error) raised in audit_db's C
    code (LOCATION in one of src/*.c; log_error_verbosity = verbose); the
    internal errors raised elsewhere (PostgreSQL's own functions called with
    random OIDs, say) are counted and listed, not failed;
  - nothing sqlsmith did stayed (every statement is rolled back): the audit
    log rows and the chain are unchanged;
  - audit.verify() is clean, and the extension's functions still work:
    logging, sealing, verification, digests and proofs, the export, health
    and metrics, tenancy and permissions, change tracking, GDPR, retention,
    alerts, reports and maintenance.

A crash is reported with the whole statement that caused it, found in
sqlsmith's dump of its queries (--dump-all-queries) by the start of it that
the postmaster logged. The test ignores PGHOST and PGDATABASE (test/run's
cluster) and needs root or the postgres user, like test/run.

SQLSMITH_QUERIES (superuser, default 3000), SQLSMITH_TENANT_QUERIES (default
3000) and SQLSMITH_SEED (default 20261202; the tenant's run uses the next
one) change the run. The runs take about 50 s of processor time (reported;
sqlsmith and the server take turns, so about that long on an idle two-core
machine), the whole test about 70 s; a loaded machine stretches it (4 min
at a load of 8). SQLSMITH_KEEP=1 keeps the cluster's directory (server
log, sqlsmith's reports and queries) for a look afterwards.
"""
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "lib"))
from testkit import Results, info, psycopg, q, q1, seal_all, wait_worker_maintenance  # noqa: E402

pg = psycopg()
R = Results()

ROOT = os.path.dirname(HERE)
CLUSTER_SH = os.path.join(HERE, "lib", "cluster.sh")
SEED = int(os.environ.get("SQLSMITH_SEED", "20261202"))
SUPERUSER_QUERIES = int(os.environ.get("SQLSMITH_QUERIES", "3000"))
TENANT_QUERIES = int(os.environ.get("SQLSMITH_TENANT_QUERIES", "3000"))
DB = "smith"
TENANT = "smith_tenant"

SERVER_SETTINGS = [
    "shared_preload_libraries = 'audit_db'",
    "fsync = off", "synchronous_commit = off", "full_page_writes = off",
    # One record per message, with its SQLSTATE and the C function, file and
    # line that raised it (LOCATION), and the statement of each error.
    "log_line_prefix = '%m [%p] '",
    "log_error_verbosity = verbose",
    "log_min_error_statement = error",
    "restart_after_crash = on",
]

SETUP = r"""
CREATE ROLE smith_tenant LOGIN IN ROLE audit_db_writer, audit_db_auditor, audit_db_tenant_admin;
SELECT audit.grant_organization_access('smith_tenant', 'acme', may_set_principal => true);
INSERT INTO audit.organization_role (organization_id, role_name, permissions, inherits) VALUES
  ('acme', 'reader', '[{"resource": "audit.audit_log", "action": "read"}]', '{}'),
  ('acme', 'admin', '[{"resource": "*", "action": "*"}, {"resource": "gdpr", "action": "*"}]', '{reader}'),
  ('globex', 'reader', '[{"resource": "audit.audit_log", "action": "read"}]', '{}');
INSERT INTO audit.organization_role_assignment (organization_id, principal_id, role_name) VALUES
  ('acme', 'smith_tenant', 'admin'), ('acme', 'alice', 'reader'), ('globex', 'bob', 'reader');
INSERT INTO audit.audit_preset (name, action, data_classification, required_fields, default_values, validation_rules)
VALUES ('phi_access', 'patient_data_access', 'PHI', '{principal_id, target_resource_id}',
        '{"status": "success", "target_resource_type": "patient_record"}',
        '{"target_resource_id": {"pattern": "^patient-[0-9]+$"}}');
SELECT audit.log_event(action => (ARRAY['login', 'view', 'export', 'delete'])[1 + i % 4],
                       status => (ARRAY['success', 'failure', 'attempt'])[1 + i % 3],
                       principal_id => (ARRAY['alice', 'bob', 'carol', 'dave', 'erin'])[1 + i % 5],
                       organization_id => (ARRAY['acme', 'globex'])[1 + i % 2],
                       target_resource_type => 'document', target_resource_id => 'doc-' || i,
                       outcome_description => 'event ' || i || ' for ' || (ARRAY['alice', 'bob', 'carol'])[1 + i % 3],
                       correlation_id => 'req-' || (i / 3),
                       data_classification => (ARRAY['PUBLIC', 'INTERNAL', 'CONFIDENTIAL', 'PHI', 'FINANCIAL'])[1 + i % 5],
                       processing_latency => i,
                       details => jsonb_build_object('ip', '10.0.0.' || (i % 250), 'n', i, 'tags', jsonb_build_array('a', i)))
  FROM generate_series(1, 300) i;
SELECT audit.log_event(preset => 'phi_access', principal_id => 'dr-grey', organization_id => 'acme',
                       target_resource_id => 'patient-' || i) FROM generate_series(1, 20) i;
INSERT INTO audit.audit_log (principal_id, organization_id, action, status, data_classification, details)
VALUES ('bob', 'globex', 'export', 'success', 'CONFIDENTIAL', '{"rows": 12}');
CREATE TABLE public.patients (
  id         integer PRIMARY KEY,
  clinic     text NOT NULL,
  name       text,
  ssn        text,
  notes      text,
  active     boolean DEFAULT true,
  balance    numeric(10, 2),
  attributes jsonb
);
INSERT INTO public.patients
SELECT i, (ARRAY['acme', 'globex'])[1 + i % 2], 'patient ' || i, '123-45-' || lpad(i::text, 4, '0'), 'note ' || i,
       i % 3 <> 0, i * 1.5, jsonb_build_object('allergies', jsonb_build_array('nuts'))
  FROM generate_series(1, 40) i;
SELECT audit.track_table('public.patients', exclude_columns => '{notes}', hash_columns => '{ssn}',
                         data_classification => 'PHI', organization_column => 'clinic');
SELECT audit.enable_tenant_isolation('public.patients', 'clinic');
GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON public.patients TO smith_tenant;
UPDATE public.patients SET balance = balance + 1 WHERE id <= 10;
DELETE FROM public.patients WHERE id = 40;
INSERT INTO audit.alert_rules (name, rule_type, params, severity) VALUES
  ('login_burst', 'failure_burst', '{"threshold": 5, "window_minutes": 10, "action": "login"}', 'HIGH'),
  ('verify_failed', 'verification_failure', '{}', 'CRITICAL');
INSERT INTO audit.audit_retention_policy (policy_name, data_classification, retention_days, archive_after_days)
VALUES ('standard', NULL, 3650, 1800), ('standard', 'PHI', 3650, NULL);
SELECT audit.schedule_report('monthly_phi', 'phi_access', '0 6 1 * *', '{"from": "2026-01-01", "to": "2026-02-01"}');
SELECT audit.report_error('smith', 'a test error', '22000');
SELECT * FROM audit.pseudonymize('dave', strategy => 'hash', requested_by => 'DSR-1');
SELECT * FROM audit.erase_subject('erin', requested_by => 'DSR-2');
"""

CRASH_PATTERNS = [
    re.compile(p) for p in (
        r"terminated by signal",
        r"terminated by exception",
        r"server process \(PID \d+\) (was terminated|exited with exit code)",
        r"terminating any other active server processes",
        r"all server processes terminated; reinitializing",
        r"database system was interrupted",
        r"\bPANIC:",
    )
]
# A log record: "<date> <time> <zone> [pid] LEVEL:  text"; lines without the
# prefix continue the record above (a statement's own newlines).
RECORD = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+ \S+ \[(\d+)\] ([A-Z]+):  (.*)$")
LOCATION = re.compile(r"^(\S+), (\S+\.c):(\d+)$")


def as_postgres():
    return ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []


def cluster(func, *args):
    """Run a function of test/lib/cluster.sh; its output."""
    r = subprocess.run(["bash", "-c", 'source "$0" && "$@"', CLUSTER_SH, func] + list(args),
                       capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        raise RuntimeError("%s failed: %s%s" % (func, r.stdout, r.stderr))
    return r.stdout.strip()


def audit_c_functions():
    """{(file, function)} of audit_db's C sources: where an error of ours is raised."""
    found = set()
    src = os.path.join(ROOT, "src")
    for name in sorted(os.listdir(src)):
        if name.endswith(".c"):
            with open(os.path.join(src, name), encoding="utf-8", errors="replace") as f:
                for m in re.finditer(r"^(?:static\s+)?[A-Za-z_][\w \t\*]*?\b([A-Za-z_]\w*)\s*\(", f.read(), re.M):
                    found.add((name, m.group(1)))
    return found


def read_log(path, offset):
    """The log records written from offset on: [(pid, level, text)], continuation lines joined."""
    records = []
    with open(path, encoding="utf-8", errors="replace") as f:
        f.seek(offset)
        for line in f:
            line = line.rstrip("\n")
            m = RECORD.match(line)
            if m:
                records.append([m.group(1), m.group(2), m.group(3)])
            elif records:  # the server puts a tab before each continuation line
                records[-1][2] += "\n" + (line[1:] if line.startswith("\t") else line)
    return records


def crashes_in(records):
    """The records that tell of a crash."""
    return [(pid, level, text) for pid, level, text in records
            if any(p.search("%s:  %s" % (level, text.split("\n", 1)[0])) for p in CRASH_PATTERNS)]


def crash_report(records, tmp):
    """The crash records, and the whole statement of each crashed process, found in
    sqlsmith's dump of its queries by the start the postmaster logged."""
    lines = ["%s %s: %s" % (pid, level, text.split("\n", 1)[0][:300]) for pid, level, text in crashes_in(records)]
    dumps = [os.path.join(tmp, n) for n in sorted(os.listdir(tmp)) if n.startswith("queries-")]
    for i, (pid, level, text) in enumerate(records):
        if level == "DETAIL" and text.startswith("Failed process was running: ") and i > 0 \
                and "terminated by" in records[i - 1][2]:
            start = text[len("Failed process was running: "):]
            lines.append("-- the statement of %s" % records[i - 1][2].split("\n", 1)[0][:120])
            found = None
            for dump in dumps:
                with open(dump, encoding="utf-8", errors="replace") as f:
                    queries = f.read()
                at = queries.find(start[:1000])
                if at >= 0:
                    end = queries.find(";\n", at)
                    found = "%s (%s):\n%s;" % (os.path.basename(dump), "sqlsmith's dump", queries[at:end if end >= 0 else None])
                    break
            lines.append(found[:20000] if found else start)
    return "\n".join(lines[:200])


def internal_errors(records):
    """[(message, location or None, statement)] of every error with SQLSTATE XX000."""
    found = []
    last = {}
    for pid, level, text in records:
        if level in ("ERROR", "FATAL") and text.startswith("XX000: "):
            last[pid] = [text[len("XX000: "):], None, None]
            found.append(last[pid])
        elif level in ("ERROR", "FATAL", "WARNING", "LOG", "NOTICE", "DEBUG"):
            last.pop(pid, None)
        elif pid in last:
            if level == "LOCATION" and last[pid][1] is None:
                last[pid][1] = text
            elif level == "STATEMENT" and last[pid][2] is None:
                last[pid][2] = text
    return found


def run_sqlsmith(tmp, port, user, queries, seed, extra, label):
    """Run sqlsmith; (exit status, seconds, its report)."""
    target = "host=%s port=%d dbname=%s user=%s" % (tmp, port, DB, user)
    cmd = ["sqlsmith", "--target=" + target, "--seed=%d" % seed, "--max-queries=%d" % queries, "--verbose"] + extra
    report = os.path.join(tmp, "sqlsmith-%s.log" % label)
    start = time.monotonic()
    with open(report, "w") as err, open(os.path.join(tmp, "queries-%s.sql" % label), "w") as out:
        status = subprocess.run(cmd + ["--dump-all-queries"], stdout=out, stderr=err, timeout=900).returncode
    seconds = time.monotonic() - start
    with open(report, encoding="utf-8", errors="replace") as f:
        text = f.read()
    return status, seconds, text


def server_cpu(postmaster):
    """Processor seconds used by the postmaster's processes that have ended (sqlsmith's backends)."""
    try:
        with open("/proc/%d/stat" % postmaster) as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:  # gone: the checks below say so
        return 0.0
    return (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")


def children_cpu():
    """Processor seconds used by this script's children that have ended (sqlsmith)."""
    import resource
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def summary(report):
    """The error rate and the most frequent errors of a sqlsmith --verbose report."""
    rate = re.findall(r"error rate: ([0-9.]+)", report)
    return rate[-1] if rate else "?"


def state(conn):
    """What sqlsmith must not have changed: the audit rows, the chain, the registries."""
    tables = ["audit.audit_log", "audit.audit_chain_block", "audit.pseudonym_mapping", "audit.tracked_table",
              "audit.organization_access", "audit.organization_role", "audit.organization_role_assignment",
              "audit.audit_preset", "audit.redacted_row", "public.patients"]
    return {t: q1(conn, "SELECT count(*) || ':' || md5(coalesce(string_agg(x::text, '|' ORDER BY x::text), ''))"
                        " FROM %s x" % t) for t in tables}


# What must still work afterwards: (what, statement, check of its first column's first value).
AFTER_SUPERUSER = [
    ("audit.log_event() logs an event", "SELECT audit.log_event(action => 'after', status => 'success',"
     " principal_id => 'alice', organization_id => 'acme', details => '{\"k\": 1}')", lambda v: v > 0),
    ("a plain INSERT is stamped and hashed", "WITH i AS (INSERT INTO audit.audit_log (action, status, organization_id)"
     " VALUES ('after_insert', 'success', 'globex') RETURNING hash) SELECT length(hash) FROM i", lambda v: v == 32),
    ("audit.last_event_id()", "SELECT audit.last_event_id()", lambda v: v > 0),
    ("a preset still validates", "SELECT audit.log_event(preset => 'phi_access', principal_id => 'dr-who',"
     " target_resource_id => 'patient-7', organization_id => 'acme')", lambda v: v > 0),
    ("the append-only guard still refuses an UPDATE",
     "SELECT pg_temp.sqlstate_of('UPDATE audit.audit_log SET action = ''x''')", lambda v: v == "42501"),
    ("change tracking logs an UPDATE of the tracked table",
     "WITH u AS (UPDATE public.patients SET balance = balance + 1 WHERE id = 1 RETURNING 1) SELECT count(*) FROM u",
     lambda v: v == 1),
    ("every row's hash recomputes (audit.leaf_hash)",
     "SELECT count(*) FROM audit.audit_log l WHERE audit.leaf_hash(l) IS DISTINCT FROM l.hash", lambda v: v == 0),
    ("audit.merkle_root()", "SELECT length(audit.merkle_root(ARRAY[sha256('a'), sha256('b')]))", lambda v: v == 32),
    ("audit.seal() seals", "SELECT sum(rows_sealed) FROM audit.seal()", lambda v: v is not None),
    ("audit.digest() and audit.verify_digest()",
     "SELECT bool_and(ok) FROM audit.verify_digest(audit.digest())", lambda v: v is True),
    ("audit.prove()", "SELECT audit.prove((SELECT min(id) FROM audit.audit_log)) IS NOT NULL", lambda v: v is True),
    ("audit.export_chain()", "SELECT count(*) FROM audit.export_chain()", lambda v: v > 0),
    ("audit.chain_status", "SELECT height FROM audit.chain_status", lambda v: v > 0),
    ("audit.health()", "SELECT count(*) FROM audit.health()", lambda v: v > 0),
    ("audit.metrics_prometheus()", "SELECT audit.metrics_prometheus() LIKE '%audit_db_health%'", lambda v: v is True),
    ("audit.has_permission() (inherited)",
     "SELECT audit.has_permission('smith_tenant', 'acme', 'audit.audit_log', 'read')", lambda v: v is True),
    ("audit.user_permissions()", "SELECT count(*) FROM audit.user_permissions('smith_tenant', 'acme')",
     lambda v: v > 0),
    ("audit.tenant_isolation_status", "SELECT count(*) FROM audit.tenant_isolation_status", lambda v: v >= 1),
    ("audit.export_subject()", "SELECT audit.export_subject('alice', format => 'json') IS NOT NULL",
     lambda v: v is True),
    ("audit.pseudonymize()", "SELECT rows_affected FROM audit.pseudonymize('carol', requested_by => 'DSR-3')",
     lambda v: v > 0),
    ("audit.erase_subject()", "SELECT rows_erased + rows_kept FROM audit.erase_subject('bob', requested_by => 'DSR-4')",
     lambda v: v > 0),
    ("audit.retention_plan()", "SELECT count(*) FROM audit.retention_plan()", lambda v: v >= 0),
    ("audit.partitions", "SELECT count(*) FROM audit.partitions", lambda v: v > 1),
    ("audit.evaluate_alert_rules()", "SELECT count(*) FROM audit.evaluate_alert_rules()", lambda v: v == 2),
    ("audit.generate_report()", "SELECT audit.generate_report('phi_access') IS NOT NULL", lambda v: v is True),
    ("audit.run_maintenance()", "CALL audit.run_maintenance()", None),
    ("audit.seal() again, everything sealed", "SELECT sum(rows_sealed) FROM audit.seal()", lambda v: v is not None),
]

AFTER_TENANT = [
    ("the tenant acts for acme", "SELECT audit.current_organization()", lambda v: v == "acme"),
    ("the tenant logs an event", "SELECT audit.log_event(action => 'tenant_after', status => 'success')",
     lambda v: v > 0),
    ("the tenant reads only acme's rows",
     "SELECT count(*) FILTER (WHERE organization_id IS DISTINCT FROM 'acme') FROM audit.audit_log",
     lambda v: v == 0),
    ("the tenant sees only acme's patients",
     "SELECT count(*) FILTER (WHERE clinic <> 'acme') FROM public.patients", lambda v: v == 0),
    ("the tenant's tracked change is logged",
     "WITH u AS (UPDATE public.patients SET balance = balance + 1 WHERE id = 2 RETURNING 1) SELECT count(*) FROM u",
     lambda v: v == 1),
    ("audit.session_has_permission()", "SELECT audit.session_has_permission('audit.audit_log', 'read')",
     lambda v: v is True),
    ("audit.set_organization() with a principal", "SELECT audit.set_organization('acme', principal => 'alice')",
     lambda v: v == "acme"),
    ("audit.verify() as the tenant's auditor role", "SELECT count(*) FROM audit.verify(organization_id => 'acme')",
     lambda v: v == 0),
]


def works(conn, statement, check):
    """Run one statement of AFTER_*; (whether its value passes the check, what it was)."""
    if statement.startswith("CALL"):
        conn.execute(statement)
        return True, None
    value = q1(conn, statement)
    return check(value), "got %r" % (value,)


def main():
    if shutil.which("sqlsmith") is None:
        R.check(False, "sqlsmith is installed (tools/install-deps installs Debian's package)")
        return R.finish("sqlsmith")
    tmp = tempfile.mkdtemp(prefix="audit_db_sqlsmith.")
    port = None
    conn = None
    try:
        port = int(cluster("free_port", "54600", "54699"))
        cluster("cluster_start", tmp, str(port), *SERVER_SETTINGS)
        log = os.path.join(tmp, "server.log")
        info("cluster on port %d (%s)" % (port, tmp))
        admin = pg.connect(host=tmp, port=port, user="postgres", dbname="postgres", autocommit=True)
        admin.execute("CREATE DATABASE %s" % DB)
        admin.close()

        conn = pg.connect(host=tmp, port=port, user="postgres", dbname=DB, autocommit=True)
        conn.execute("CREATE EXTENSION audit_db")
        wait_worker_maintenance(conn)
        conn.execute(SETUP)
        R.check(seal_all(conn), "setup: events of two organizations, a tracked table, GDPR requests; all sealed")
        R.check(q1(conn, "SELECT count(*) FROM audit.verify()") == 0, "audit.verify() is clean before sqlsmith")
        before = state(conn)
        digest = q1(conn, "SELECT audit.digest()::text")
        with open(os.path.join(tmp, "data", "postmaster.pid")) as f:
            postmaster = int(f.readline())
        offset = os.path.getsize(log)

        cpu_before = server_cpu(postmaster), children_cpu()
        for label, user, queries, seed, extra in (
                ("superuser", "postgres", SUPERUSER_QUERIES, SEED, []),
                ("tenant", TENANT, TENANT_QUERIES, SEED + 1, ["--exclude-catalog"])):
            if queries <= 0:
                continue
            status, seconds, report = run_sqlsmith(tmp, port, user, queries, seed, extra, label)
            R.check(status == 0, "sqlsmith as %s (%s): %d queries, seed %d, in %.0f s, error rate %s"
                    % (user, label, queries, seed, seconds, summary(report)),
                    "exit status %d; its last output:\n%s" % (status, report[-3000:]))

        # The processor time the runs took (the server's processes, sqlsmith):
        # about their time on an idle machine, where the two alternate.
        info("processor time of the runs: server %.0f s, sqlsmith %.0f s"
             % (server_cpu(postmaster) - cpu_before[0], children_cpu() - cpu_before[1]))
        checked = os.path.getsize(log)
        records = read_log(log, offset)
        alive = True
        try:
            os.kill(postmaster, 0)
        except OSError:
            alive = False
        with open(os.path.join(tmp, "data", "postmaster.pid")) as f:
            same = int(f.readline()) == postmaster
        R.check(alive and same, "the postmaster (PID %d) is still up" % postmaster)
        R.check(not crashes_in(records), "no backend crash in the server log (%d records since sqlsmith started)"
                % len(records), crash_report(records, tmp))

        ours = audit_c_functions()
        xx = internal_errors(records)
        mine, theirs = [], {}
        for message, location, statement in xx:
            m = LOCATION.match(location or "")
            if m and (m.group(2), m.group(1)) in ours:
                mine.append((message, location, statement))
            else:
                key = "%s (%s)" % (message.split("\n")[0][:120], location)
                theirs[key] = theirs.get(key, 0) + 1
        R.check(not mine, "no internal error (XX000) raised in audit_db's C code (%d XX000 elsewhere)"
                % sum(theirs.values()),
                "\n".join("%s\n  at %s\n  in: %s" % (msg, loc, (stmt or "")[:2000]) for msg, loc, stmt in mine[:5]))
        for key, n in sorted(theirs.items(), key=lambda kv: -kv[1])[:15]:
            info("XX000 outside audit_db, %dx: %s" % (n, key))

        conn.close()
        conn = pg.connect(host=tmp, port=port, user="postgres", dbname=DB, autocommit=True)
        # The worker may seal or run maintenance meanwhile; neither changes rows.
        after = state(conn)
        changed = {t: (before[t], after[t]) for t in before if before[t] != after[t]}
        R.check(not changed, "nothing sqlsmith did stayed: audit rows, chain and registries unchanged", changed)
        R.check(q1(conn, "SELECT bool_and(ok) FROM audit.verify_digest(%s::jsonb)", (digest,)) is True,
                "the digest taken before sqlsmith still verifies")
        problems = q(conn, "SELECT * FROM audit.verify()")
        R.check(not problems, "audit.verify() is clean after sqlsmith", "\n".join(map(str, problems[:10])))

        conn.execute("CREATE FUNCTION pg_temp.sqlstate_of(statement text) RETURNS text LANGUAGE plpgsql AS $$"
                     " BEGIN EXECUTE statement; RETURN NULL; EXCEPTION WHEN OTHERS THEN RETURN SQLSTATE; END $$")
        for what, statement, ok in AFTER_SUPERUSER:
            R.run("afterwards, as superuser: " + what, lambda s=statement, c=ok: works(conn, s, c))
        tenant = pg.connect(host=tmp, port=port, user=TENANT, dbname=DB, autocommit=True)
        for what, statement, ok in AFTER_TENANT:
            R.run("afterwards, as %s: %s" % (TENANT, what), lambda s=statement, c=ok: works(tenant, s, c))
        tenant.close()
        R.check(seal_all(conn), "everything logged afterwards is sealed")
        problems = q(conn, "SELECT * FROM audit.verify()")
        R.check(not problems, "audit.verify() is clean at the end", "\n".join(map(str, problems[:10])))
        late = read_log(log, checked)
        R.check(not crashes_in(late), "no crash in the server log afterwards either", crash_report(late, tmp))
    except Exception as e:  # noqa: BLE001 - report, go on to cleanup
        R.check(False, "the test ran to its end", "%s: %s" % (type(e).__name__, e))
    finally:
        if conn is not None:
            try:
                conn.close()
            except Exception:  # noqa: BLE001
                pass
        if port is not None:
            try:
                cluster("cluster_stop", tmp)
            except Exception as e:  # noqa: BLE001
                info("could not stop the cluster: %s" % e)
        if os.environ.get("SQLSMITH_KEEP"):
            info("kept %s" % tmp)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return R.finish("sqlsmith")


if __name__ == "__main__":
    sys.exit(main())
