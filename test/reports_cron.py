#!/usr/bin/python3
"""test/reports_cron.py: reports scheduled through a real pg_cron that lives
in another database of the cluster.

Starts a throwaway cluster of its own (test/lib/cluster.sh, a free port)
with shared_preload_libraries = 'audit_db,pg_cron' (Debian's
postgresql-15-cron), cron.database_name = 'postgres' and
cron.use_background_workers = on; pg_cron is created in 'postgres', audit_db
and dblink in a second database 'audited'. Then, in 'audited':
  1. audit.pg_cron_location() says pg_cron is remote, in 'postgres';
  2. audit.schedule_report('phi_every_minute', 'phi_access', '* * * * *', ...)
     creates one named pg_cron job in 'postgres' (through dblink) whose
     command runs audit.run_report() in 'audited'; scheduling it again with
     another schedule replaces the job (still one, new schedule);
  3. pg_cron runs it on its own within two minutes: an execution row
     (triggered_by pg_cron, succeeded) whose result holds exactly the
     principals and counts computed here from the inserted events, and
     audit.health() reports pg_cron healthy;
  4. audit.unschedule_report() removes the job from cron.job, and no new
     execution appears in the next 70 s.
Skipped (reported as a failure) when the pg_cron package is not installed.
Runs in about 3 minutes (pg_cron schedules by the minute).
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
from testkit import Results, info, psycopg, q, q1, wait_for  # noqa: E402

pg = psycopg()
R = Results()
ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
PHI = [("dr_house", 3), ("nurse_joy", 1), ("dr_who", 2)]


def bash(script):
    return subprocess.run(["bash", "-c", "set -e; source test/lib/cluster.sh; " + script], cwd=ROOT,
                          capture_output=True, text=True)


def start_cluster(tmp):
    p = bash("port=$(free_port 54600 54699); cluster_start %s \"$port\" "
             "\"shared_preload_libraries = 'audit_db,pg_cron'\" \"cron.database_name = 'postgres'\" "
             "\"cron.use_background_workers = on\" \"max_worker_processes = 30\" "
             "\"fsync = off\" >/dev/null; echo \"$port\"" % tmp)
    if p.returncode != 0:
        raise RuntimeError("cluster did not start: %s %s" % (p.stdout, p.stderr))
    return int(p.stdout.strip().splitlines()[-1])


def main():
    if not os.path.exists("/usr/share/postgresql/15/extension/pg_cron.control"):
        R.check(False, "pg_cron is installed (package postgresql-15-cron; tools/install-deps installs it)")
        return R.finish("reports_cron")
    tmp = tempfile.mkdtemp(prefix="audit_db_cron.")
    os.chmod(tmp, 0o755)
    try:
        port = start_cluster(tmp)
        info("cluster on port %d (%s)" % (port, tmp))
        kw = dict(host=tmp, port=port, user="postgres", autocommit=True)
        cron = pg.connect(dbname="postgres", **kw)
        cron.execute("CREATE EXTENSION pg_cron")
        cron.execute("CREATE DATABASE audited")
        db = pg.connect(dbname="audited", **kw)
        db.execute("CREATE EXTENSION audit_db")
        db.execute("CREATE EXTENSION dblink")
        for who, n in PHI:
            db.execute("SELECT audit.log_event(action => 'record.view', status => 'success', principal_id => %s,"
                       " organization_id => 'clinic', data_classification => 'PHI') FROM generate_series(1, %s)",
                       (who, n))
        db.execute("SELECT audit.log_event(action => 'login', status => 'success', principal_id => 'dr_house')")

        info("1. where pg_cron is")
        loc = q(db, "SELECT status, database FROM audit.pg_cron_location()")[0]
        R.check(loc == ("remote", "postgres"), "pg_cron is found remote, in database postgres", loc)

        info("2. scheduling creates one named job there")
        sid = q1(db, "SELECT audit.schedule_report('phi_every_minute', 'phi_access', '0 3 * * *',"
                     " '{\"from\": \"2000-01-01\"}', organization_id => 'clinic')")
        sid2 = q1(db, "SELECT audit.schedule_report('phi_every_minute', 'phi_access', '* * * * *',"
                      " '{\"from\": \"2000-01-01\"}', organization_id => 'clinic')")
        jobs = q(cron, "SELECT jobname, schedule, database, command FROM cron.job")
        R.check(sid == sid2 and len(jobs) == 1 and jobs[0][0] == "audit_db:audited:phi_every_minute"
                and jobs[0][1] == "* * * * *" and jobs[0][2] == "audited"
                and "audit.run_report(%d" % sid in jobs[0][3],
                "one pg_cron job, named, in database audited, with the latest schedule, runs audit.run_report",
                jobs)
        row = q(db, "SELECT runner, cron_job_name, cron_database FROM audit.scheduled_reports")[0]
        R.check(row == ("pg_cron", "audit_db:audited:phi_every_minute", "postgres"),
                "the schedule records its runner and job", row)

        info("3. pg_cron runs it on its own")
        got, waited = wait_for(lambda: q1(db, "SELECT count(*) FROM audit.report_executions"
                                              " WHERE triggered_by = 'pg_cron'") > 0, 130, step=1.0)
        R.check(got, "an execution by pg_cron appears (after %.0f s)" % waited,
                q(cron, "SELECT status, return_message FROM cron.job_run_details ORDER BY runid DESC LIMIT 3"))
        if got:
            status, rows, result = q(db, "SELECT status, row_count, result FROM audit.report_executions"
                                         " WHERE triggered_by = 'pg_cron' ORDER BY execution_id LIMIT 1")[0]
            doc = json.loads(result)
            found = sorted((r["principal_id"], r["events"]) for r in doc["rows"])
            R.check(status == "succeeded" and rows == len(PHI) and found == sorted(PHI),
                    "it succeeded, and its rows are the PHI reads per principal logged here", (status, rows, found))
        R.check(q1(db, "SELECT status FROM audit.health() WHERE component = 'pg_cron'") == "healthy",
                "audit.health() reports pg_cron healthy")

        info("4. unscheduling stops it")
        db.execute("SELECT audit.unschedule_report('phi_every_minute')")
        R.check(q1(cron, "SELECT count(*) FROM cron.job") == 0, "the pg_cron job is gone")
        before = q1(db, "SELECT count(*) FROM audit.report_executions")
        time.sleep(70)
        after = q1(db, "SELECT count(*) FROM audit.report_executions")
        R.check(after == before, "no new execution in the next 70 s (%d before, %d after)" % (before, after))
        db.close()
        cron.close()
    except Exception as e:  # noqa: BLE001 - report, go on to cleanup
        R.check(False, "the test ran to its end", "%s: %s" % (type(e).__name__, e))
    finally:
        bash("cluster_stop %s" % tmp)
        shutil.rmtree(tmp, ignore_errors=True)
    return R.finish("reports_cron")


if __name__ == "__main__":
    sys.exit(main())
