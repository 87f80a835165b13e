#!/usr/bin/python3
"""test/clients.py: the client examples run against a real database.

examples/python/audit_client.py (Debian's python3-psycopg) and
examples/node/audit_client.js (Node.js with `pg` from npm, installed with
`npm ci` from the committed package-lock.json) each log three events for
their own subject, seal, verify, export the subject and read the failed
authentication report, and print one JSON document; this test checks it:
three increasing ids, a clean verification, a chain of at least one block,
an export of exactly the three events, and the report's row for the
subject's one failed login. In the test database (PGDATABASE; the extension
is re-created there), as the libpq environment's superuser.
"""
import json
import os
import shutil
import subprocess
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
from testkit import Results, info, psycopg  # noqa: E402

pg = psycopg()
R = Results()
ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def check(doc, subject):
    name = doc.get("client")
    ids = doc.get("logged_ids", [])
    R.check(len(ids) == 3 and ids == sorted(ids) and len(set(ids)) == 3,
            "%s: three events logged, ids increasing" % name, ids)
    R.check(doc.get("verify_problems") == 0 and doc.get("chain_height", 0) >= 1,
            "%s: sealed, and audit.verify() clean" % name, doc)
    R.check(doc.get("exported_rows") == 3 and doc.get("exported_actions") == ["login", "record.view"],
            "%s: the export holds exactly the subject's three events" % name, doc)
    R.check([subject, 1] in doc.get("report_rows", []),
            "%s: the failed authentication report has the subject's one failure" % name, doc.get("report_rows"))


def run(cmd, cwd):
    p = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300)
    if p.returncode != 0:
        raise RuntimeError("%s: %s %s" % (" ".join(cmd), p.stdout[-1000:], p.stderr[-1000:]))
    return p.stdout


def main():
    conn = pg.connect(autocommit=True)
    conn.execute("DROP EXTENSION IF EXISTS audit_db CASCADE")
    conn.execute("CREATE EXTENSION audit_db")
    conn.close()

    info("python")
    try:
        out = run(["/usr/bin/python3", "examples/python/audit_client.py"], ROOT)
        check(json.loads(out.strip().splitlines()[-1]), "py-alice")
    except Exception as e:  # noqa: BLE001
        R.check(False, "python: the example ran", str(e))

    info("node")
    node, npm = shutil.which("node"), shutil.which("npm")
    if not node or not npm:
        R.check(False, "node and npm are installed (tools/install-deps installs Debian's nodejs and npm)")
    else:
        try:
            work = os.path.join(ROOT, "examples", "node")
            if not os.path.isdir(os.path.join(work, "node_modules", "pg")):
                run([npm, "ci", "--no-audit", "--no-fund"], work)
            out = run([node, "audit_client.js"], work)
            check(json.loads(out.strip().splitlines()[-1]), "js-bob")
        except Exception as e:  # noqa: BLE001
            R.check(False, "node: the example ran", str(e))
    return R.finish("clients")


if __name__ == "__main__":
    sys.exit(main())
