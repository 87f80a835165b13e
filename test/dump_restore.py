#!/usr/bin/python3
"""test/dump_restore.py: pg_dump of a database using audit_db, restored with
pg_restore into a new cluster and into another database of the same cluster,
as docs/operations.md ("Backup and restore") says:

    pg_dump -Fc -f audit.dump sourcedb
    PGOPTIONS='-c session_replication_role=replica' pg_restore -d newdb audit.dump
    psql -d newdb -c 'SELECT audit.finish_restore()'

Starts two throwaway clusters of its own (test/lib/cluster.sh conventions,
audit_db preloaded); ignores the cluster of test/run. The source database gets
a bit of everything: events of several organizations (one in the default
partition), presets, a retention policy and an archive, an organization role,
a tracked table with changes, pseudonyms of each strategy, an erasure, an
alert, a report execution, an error and a configuration change; it is sealed,
a digest is kept, and then rows are logged that stay unsealed (the worker kept
away with audit_db.skip_databases). Its transaction ids are pushed ahead, so
the new cluster's ids lie behind the dumped ones (what audit.finish_restore()
must bridge).

Asserted, for each target:
  - pg_restore succeeds (exit 0, no error);
  - every table the extension dumps, the audit log and its partitions hold
    exactly the source's rows, and the sequences their values;
  - until audit.finish_restore(): nothing sealed or maintained by the worker,
    and audit.log_event(), audit.seal() and maintenance refused with 55000;
    finish_restore() refused for a non-superuser (42501) and while a
    pg_restore session is still connected (55006);
  - after it: audit.verify() is clean, the old digest verifies, the rows
    unsealed at dump time and new events are sealed by the worker, new ids
    follow the old ones, the hash pseudonyms and the mapping keys are the
    same (a token is looked up), the tracked table is still tracked, and a
    second finish_restore() is refused (55000).
Last line: "dump_restore: N passed, M failed".
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
from clusterkit import BINDIR, log_tail, start_cluster, stop_cluster  # noqa: E402
from testkit import Results, info, psycopg, q, q1, seal_all, sqlstate_of, wait_for  # noqa: E402

pg = psycopg()
R = Results()
SOURCE_DB = "audited"
ORGS = ["org-a", "org-b", "org-c"]


def start(path):
    return start_cluster(path, (54800, 54899), "shared_preload_libraries = 'audit_db'", "fsync = off",
                         "synchronous_commit = off")


def connect(path, port, dbname):
    return pg.connect(host=path, port=port, user="postgres", dbname=dbname, autocommit=True)


def fill(conn):
    """Give the source database a bit of everything the extension keeps."""
    conn.execute("CREATE EXTENSION audit_db")
    conn.execute("INSERT INTO audit.audit_preset (name, action, data_classification, required_fields) "
                 "VALUES ('phi_read', 'patient.read', 'PHI', '{principal_id}')")
    conn.execute("INSERT INTO audit.audit_retention_policy (policy_name, retention_days, archive_after_days) "
                 "VALUES ('short', 30, 1)")
    for i in range(60):
        org = ORGS[i % 3]
        conn.execute("SELECT audit.log_event(action => 'patient.read', status => 'success', "
                     "principal_id => %s, organization_id => %s, target_resource_type => 'patient', "
                     "target_resource_id => %s, data_classification => 'PHI', "
                     "details => jsonb_build_object('n', %s::int))",
                     ("user-%d" % (i % 7), org, "patient-%d" % i, i))
    conn.execute("SELECT audit.log_event(preset => 'phi_read', principal_id => 'dr-who', organization_id => 'org-a')")
    conn.execute("SELECT audit.log_event(action => 'ledger.close', status => 'success', principal_id => 'user-1', "
                 "organization_id => 'org-b', data_classification => 'FINANCIAL')")
    for i in range(5):
        conn.execute("SELECT audit.log_event(action => 'login', status => 'failure', principal_id => 'mallory', "
                     "organization_id => 'org-c', retention_policy => 'short')")
    # An event far ahead of every monthly partition: the default partition.
    conn.execute("SELECT audit.log_event(action => 'future.event', status => 'attempt', "
                 "event_time => now() + interval '20 years')")
    # Tenancy: a role of an organization.
    conn.execute("DO $$ BEGIN CREATE ROLE audit_restore_app NOLOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$")
    conn.execute("SELECT audit.grant_organization_access('audit_restore_app', 'org-a')")
    # Change tracking.
    conn.execute("CREATE TABLE public.patient (id int PRIMARY KEY, name text, org text)")
    conn.execute("SELECT audit.track_table('public.patient', organization_column => 'org')")
    conn.execute("INSERT INTO public.patient VALUES (1, 'Ann', 'org-a'), (2, 'Bob', 'org-b')")
    conn.execute("UPDATE public.patient SET name = 'Anne' WHERE id = 1")
    # GDPR: one pseudonym per strategy, an erasure.
    conn.execute("SELECT audit.pseudonymize('user-2', 'hash', requested_by => 'ticket-1')")
    conn.execute("SELECT audit.pseudonymize('user-3', 'token', requested_by => 'ticket-2')")
    conn.execute("SELECT audit.pseudonymize('user-4', 'encryption', requested_by => 'ticket-3', "
                 "encryption_key => 'correct horse battery staple')")
    conn.execute("SELECT audit.erase_subject('user-5', requested_by => 'ticket-4')")
    # Alerts, reports, errors, configuration changes.
    conn.execute("SELECT * FROM audit.evaluate_alert_rules()")
    conn.execute("SELECT audit.schedule_report('nightly-phi', 'phi_access', '0 3 * * *')")
    conn.execute("SELECT audit.run_report((SELECT schedule_id FROM audit.scheduled_reports "
                 "WHERE name = 'nightly-phi'))")
    conn.execute("SELECT audit.report_error('restore-test', 'a recorded error')")
    conn.execute("INSERT INTO audit.erasure_exemption (retention_policy, reason) VALUES ('short', 'test')")
    seal_all(conn)
    # Archive what the 'short' policy lets go after a day (maintenance as of two days ahead).
    conn.execute("CALL audit.run_maintenance(now() + interval '2 days')")
    seal_all(conn)


def burn_xids(conn, n):
    """Push the cluster's transaction ids ahead by n."""
    conn.execute("DO $$ BEGIN FOR i IN 1..%d LOOP PERFORM pg_current_xact_id(); COMMIT; END LOOP; END $$" % n)


def dumped_tables(conn):
    """Every table and sequence whose rows pg_dump keeps (the extension's
    configuration tables, with the condition that selects the rows dumped),
    and the audit log's partitions."""
    rels = q(conn, "SELECT c.relname, c.relkind, coalesce(e.extcondition[r.n], '') "
                   "FROM pg_extension e, unnest(e.extconfig) WITH ORDINALITY r(oid, n) "
                   "JOIN pg_class c ON c.oid = r.oid WHERE e.extname = 'audit_db' ORDER BY 1")
    parts = q(conn, "SELECT c.relname, c.relkind, '' FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                    "WHERE i.inhparent = 'audit.audit_log'::regclass ORDER BY 1")
    return sorted(set(rels) | set(parts))


def contents(conn, rel, kind, condition):
    if kind == "S":
        return q(conn, "SELECT last_value, is_called FROM audit.%s" % rel)
    return sorted(tuple(str(v) for v in r) for r in q(conn, "SELECT * FROM audit.%s %s" % (rel, condition)))


def restore(src_path, src_port, dump, tgt_path, tgt_port, dbname):
    with connect(tgt_path, tgt_port, "postgres") as c:
        c.execute("DROP DATABASE IF EXISTS %s" % dbname)
        c.execute("CREATE DATABASE %s" % dbname)
        c.execute("DO $$ BEGIN CREATE ROLE audit_restore_app NOLOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$")
    env = dict(os.environ, PGOPTIONS="-c session_replication_role=replica")
    p = subprocess.run([BINDIR + "/pg_restore", "-h", tgt_path, "-p", str(tgt_port), "-U", "postgres",
                        "-d", dbname, dump], capture_output=True, text=True, env=env)
    return p


def check_target(label, src, digest, expected, tgt_path, tgt_port, dbname, dump, pseudonyms):
    p = restore(None, None, dump, tgt_path, tgt_port, dbname)
    errors = [line for line in p.stderr.splitlines() if "error" in line.lower()]
    R.check(p.returncode == 0 and not errors, "%s: pg_restore exits 0 without errors" % label,
            p.stderr[-3000:])
    conn = connect(tgt_path, tgt_port, dbname)
    try:
        # Same rows everywhere, before anything else can happen.
        time.sleep(1.5)     # the worker, if it wrongly acted, would have by now
        tables = dumped_tables(conn)
        R.check([t for t in tables] == [t for t in expected["tables"]],
                "%s: the same dumped tables and partitions" % label,
                "source %s\ntarget %s" % (expected["tables"], tables))
        diffs = [rel for rel, kind, cond in tables if contents(conn, rel, kind, cond) != expected["contents"].get(rel)]
        R.check(not diffs, "%s: every dumped table, partition and sequence holds the source's rows" % label,
                "differ: %s" % diffs)
        R.check(q1(conn, "SELECT count(*) FROM audit.audit_log") == expected["rows"],
                "%s: audit_log has the source's %d rows" % (label, expected["rows"]))

        # Pending: nothing moves, nothing is logged.
        R.check(q1(conn, "SELECT count(*) FROM audit.restore_pending") == 1, "%s: the restore is pending" % label)
        R.check(sqlstate_of(conn, "SELECT audit.log_event(action => 'x', status => 'success')") == "55000",
                "%s: log_event before finish_restore: 55000" % label)
        R.check(sqlstate_of(conn, "SELECT audit.seal()") == "55000", "%s: seal before finish_restore: 55000" % label)
        R.check(sqlstate_of(conn, "CALL audit.run_maintenance()") == "55000",
                "%s: maintenance before finish_restore: 55000" % label)
        conn.execute("DO $$ BEGIN CREATE ROLE audit_restore_nobody LOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$")
        conn.execute("GRANT USAGE ON SCHEMA audit TO audit_restore_nobody")
        conn.execute("GRANT EXECUTE ON FUNCTION audit.finish_restore() TO audit_restore_nobody")
        with pg.connect(host=tgt_path, port=tgt_port, user="audit_restore_nobody", dbname=dbname,
                        autocommit=True) as nobody:
            R.check(sqlstate_of(nobody, "SELECT audit.finish_restore()") == "42501",
                    "%s: finish_restore by a non-superuser: 42501" % label)
        with pg.connect(host=tgt_path, port=tgt_port, user="postgres", dbname=dbname, autocommit=True,
                        application_name="pg_restore"):
            R.check(sqlstate_of(conn, "SELECT audit.finish_restore()") == "55006",
                    "%s: finish_restore while pg_restore is connected: 55006" % label)
        # The server ends that backend a moment after the client closed it.
        wait_for(lambda: q1(conn, "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                                  " AND application_name = 'pg_restore'") == 0, 10, 0.05)
        R.check(q1(conn, "SELECT count(*) FROM audit.audit_chain_block") == expected["blocks"],
                "%s: the worker sealed nothing while pending" % label)

        summary = q1(conn, "SELECT audit.finish_restore()")
        info("%s: finish_restore() = %s" % (label, json.dumps(summary)))
        R.check(summary["rows"] == expected["rows"] and summary["unsealed_rows"] == expected["unsealed"],
                "%s: finish_restore counts the rows and the unsealed ones" % label, summary)
        R.check(sqlstate_of(conn, "SELECT audit.finish_restore()") == "55000",
                "%s: a second finish_restore: 55000" % label)

        # The rows unsealed at dump time, the restore event and new ones get sealed by the worker.
        new_id = q1(conn, "SELECT audit.log_event(action => 'after.restore', status => 'success', "
                          "organization_id => 'org-a')")
        R.check(new_id > expected["max_id"], "%s: new ids follow the old ones (%d > %d)"
                % (label, new_id, expected["max_id"]))
        conn.execute("UPDATE public.patient SET name = 'Bobby' WHERE id = 2")
        R.check(q1(conn, "SELECT count(*) FROM audit.audit_log WHERE action = 'patient.update' "
                         "AND target_resource_id = '2'") == 1, "%s: the tracked table is still tracked" % label)
        done, waited = wait_for(lambda: q1(conn, "SELECT unsealed_rows = 0 FROM audit.chain_status"), 20)
        R.check(done, "%s: the worker sealed every row (%.1f s)" % (label, waited),
                q(conn, "SELECT * FROM audit.chain_status"))
        problems = q(conn, "SELECT * FROM audit.verify()")
        R.check(problems == [], "%s: audit.verify() is clean" % label, problems)
        R.check(q1(conn, "SELECT bool_and(ok) FROM audit.verify_digest(%s::jsonb)", (json.dumps(digest),)) is True,
                "%s: the digest taken before the dump verifies" % label,
                q(conn, "SELECT * FROM audit.verify_digest(%s::jsonb)", (json.dumps(digest),)))
        # Keys: the same hash pseudonym; the token and the encrypted pseudonym are looked up.
        again = q1(conn, "SELECT (audit.pseudonymize('user-2', 'hash', requested_by => 'ticket-9')).pseudonym")
        R.check(again == pseudonyms["hash"], "%s: the hash strategy gives the same pseudonym" % label,
                "%s vs %s" % (again, pseudonyms["hash"]))
        R.check(q1(conn, "SELECT audit.original_id(%s, reason => 'restore test')", (pseudonyms["token"],)) == "user-3",
                "%s: a token made before the dump is looked up" % label)
        R.check(q1(conn, "SELECT audit.original_id(%s, encryption_key => 'correct horse battery staple', "
                         "reason => 'restore test')", (pseudonyms["encryption"],)) == "user-4",
                "%s: an encrypted pseudonym made before the dump is decrypted" % label)
        seal_all(conn)
        problems = q(conn, "SELECT * FROM audit.verify()")
        R.check(problems == [], "%s: audit.verify() is clean at the end" % label, problems)
    finally:
        conn.close()


def main():
    tmp = tempfile.mkdtemp(prefix="audit_db_dump.")
    os.chmod(tmp, 0o755)
    src_path, tgt_path = os.path.join(tmp, "source"), os.path.join(tmp, "target")
    dump = os.path.join(tmp, "audit.dump")
    started = time.monotonic()
    try:
        src_port = start(src_path)
        tgt_port = start(tgt_path)
        with connect(src_path, src_port, "postgres") as c:
            c.execute("CREATE DATABASE %s" % SOURCE_DB)
            burn_xids(c, 3000)
        src = connect(src_path, src_port, SOURCE_DB)
        fill(src)
        R.check(q1(src, "SELECT count(*) FROM audit.archive_storage") > 0, "source: an archive was made",
                q(src, "SELECT * FROM audit.maintenance_run"))
        digest = q1(src, "SELECT audit.digest()")
        pseudonyms = {s: q1(src, "SELECT pseudonym FROM audit.pseudonym_mapping WHERE strategy = %s "
                                 "ORDER BY created_at LIMIT 1", (s,)) for s in ("hash", "token", "encryption")}
        # Rows that stay unsealed at dump time: keep the worker away first.
        src.execute("ALTER SYSTEM SET audit_db.skip_databases = '%s'" % SOURCE_DB)
        src.execute("SELECT pg_reload_conf()")
        wait_for(lambda: q1(src, "SELECT count(*) = 0 FROM pg_stat_activity WHERE backend_type = 'audit_db worker' "
                                 "AND datname = current_database()"), 10)
        for i in range(4):
            src.execute("SELECT audit.log_event(action => 'late.event', status => 'success', organization_id => 'org-b')")
        unsealed = q1(src, "SELECT unsealed_rows FROM audit.chain_status")
        R.check(unsealed == 4, "source: 4 rows unsealed at dump time", unsealed)
        problems = q(src, "SELECT * FROM audit.verify()")
        R.check(problems == [], "source: audit.verify() is clean", problems)
        expected = {"tables": dumped_tables(src), "rows": q1(src, "SELECT count(*) FROM audit.audit_log"),
                    "max_id": q1(src, "SELECT max(id) FROM audit.audit_log"),
                    "blocks": q1(src, "SELECT count(*) FROM audit.audit_chain_block"), "unsealed": unsealed}
        expected["contents"] = {rel: contents(src, rel, kind, cond) for rel, kind, cond in expected["tables"]}
        info("source: %d rows, %d blocks, %d tables and sequences dumped"
             % (expected["rows"], expected["blocks"], len(expected["tables"])))

        p = subprocess.run([BINDIR + "/pg_dump", "-h", src_path, "-p", str(src_port), "-U", "postgres",
                            "-Fc", "-f", dump, SOURCE_DB], capture_output=True, text=True)
        R.check(p.returncode == 0, "pg_dump succeeds", p.stderr)
        os.chmod(dump, 0o644)

        check_target("new cluster", src, digest, expected, tgt_path, tgt_port, "restored", dump, pseudonyms)
        check_target("same cluster", src, digest, expected, src_path, src_port, "restored", dump, pseudonyms)
        src.execute("ALTER SYSTEM RESET audit_db.skip_databases")
        src.execute("SELECT pg_reload_conf()")
        src.close()
    except Exception as e:  # noqa: BLE001 - report, then clean up
        R.check(False, "the test ran to the end", "%s: %s" % (type(e).__name__, e))
        for path in (src_path, tgt_path):
            info("--- end of the server log in %s" % path)
            for line in log_tail(path):
                info(line)
    finally:
        stop_cluster(src_path)
        stop_cluster(tgt_path)
        shutil.rmtree(tmp, ignore_errors=True)
    info("ran in %.1f s" % (time.monotonic() - started))
    return R.finish("dump_restore")


if __name__ == "__main__":
    sys.exit(main())
