#!/usr/bin/python3
"""examples/python/audit_client.py: audit_db from Python (Debian's python3-psycopg).

Logs events, seals and verifies the chain, exports one data subject and reads
a report, using only SQL. Connects through the libpq environment (PGHOST,
PGPORT, PGUSER, PGDATABASE) to a database with the extension, as a role that
may log (audit_db_writer), read and verify (audit_db_auditor) and export
(audit_db_privacy_officer), e.g. the extension's owner.

Prints one JSON document with what it did, so that scripts (and
test/clients.py) can check it.
"""
import json
import sys

import psycopg


def main():
    with psycopg.connect(autocommit=True) as conn:
        ids = []
        for action, status in (("login", "success"), ("record.view", "success"), ("login", "failure")):
            ids.append(conn.execute(
                "SELECT audit.log_event(action => %s, status => %s, principal_id => %s,"
                " organization_id => %s, details => %s::jsonb)",
                (action, status, "py-alice", "py-clinic", json.dumps({"client": "python"}))).fetchone()[0])
        conn.execute("SELECT * FROM audit.seal()")
        problems = conn.execute("SELECT count(*) FROM audit.verify()").fetchone()[0]
        digest = conn.execute("SELECT audit.digest()").fetchone()[0]
        export = json.loads(conn.execute("SELECT audit.export_subject(%s)", ("py-alice",)).fetchone()[0])
        report = json.loads(conn.execute(
            "SELECT audit.generate_report('failed_authentication', %s::jsonb)",
            (json.dumps({"from": "2000-01-01"}),)).fetchone()[0])
        print(json.dumps({
            "client": "python",
            "logged_ids": ids,
            "verify_problems": problems,
            "chain_height": digest["height"],
            "exported_rows": export["rows"],
            "exported_actions": sorted({e["action"] for e in export["events"]}),
            "report_rows": [[r["principal_id"], r["failures"]] for r in report["rows"]],
        }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
