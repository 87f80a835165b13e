#!/usr/bin/python3
"""test/docs_reference.py: the two reference pages name everything the
extension defines.

In the test database (PGDATABASE, empty; the extension is created there), on a
cluster with audit_db preloaded, as a superuser:
  1. every audit_db.* setting in pg_settings appears in docs/configuration.md;
     so does every setting src/*.c defines (DefineCustom*Variable), which also
     covers settings hidden from pg_settings (GUC_NO_SHOW_ALL, such as
     audit_db.pseudonym_encryption_key);
  2. every function, procedure, table and view in schema audit that is a
     member of the extension (pg_depend, deptype 'e', on its pg_extension row)
     appears by name, as audit.<name>, in docs/sql-reference.md; partitions of
     audit.audit_log (audit_log_YYYY_MM, which are data, not members, and the
     default partition) are excepted;
  3. so do the extension's domains (audit.<name>) and event triggers (<name>).
A name counts only as a whole word: audit.seal does not count for
audit.seal_interval. Each check prints the names it misses.
Last line: "docs_reference: N passed, M failed"; exit status 1 if anything failed.
"""
import os
import re
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
from testkit import Results, info, psycopg, q  # noqa: E402

pg = psycopg()
R = Results()

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGURATION = os.path.join(ROOT, "docs", "configuration.md")
SQL_REFERENCE = os.path.join(ROOT, "docs", "sql-reference.md")

# Partitions of audit.audit_log, excepted: monthly ones and the default one.
PARTITION = re.compile(r"^audit_log_([0-9]{4}_[0-9]{2}|default)$")


def read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def mentioned(text, name):
    """Whether name occurs in text as a whole word (not followed or preceded by an identifier character)."""
    return re.search(r"(?<![A-Za-z0-9_.])" + re.escape(name) + r"(?![A-Za-z0-9_])", text) is not None


def check_all(what, names, text, page, form):
    """One check: every name, written as form % name, is in text; lists the missing ones."""
    names = sorted(set(names))
    missing = [n for n in names if not mentioned(text, form % n)]
    R.check(not missing, "%s: all %d in %s" % (what, len(names), page),
            "missing from %s:\n%s" % (page, "\n".join("  " + form % n for n in missing)) if missing else None)
    return missing


def settings_in_source():
    """Names of the settings defined in src/*.c (DefineCustom<Type>Variable("audit_db.x", ...))."""
    found = set()
    src = os.path.join(ROOT, "src")
    for name in sorted(os.listdir(src)):
        if name.endswith(".c"):
            found.update(re.findall(r'DefineCustom[A-Za-z]+Variable\(\s*"(audit_db\.[a-z0-9_]+)"',
                                    read(os.path.join(src, name))))
    return found


MEMBERS = """
SELECT 'function', p.proname::text, p.prokind::text
  FROM pg_depend d JOIN pg_proc p ON p.oid = d.objid
 WHERE d.classid = 'pg_proc'::regclass AND d.refclassid = 'pg_extension'::regclass
   AND d.refobjid = (SELECT oid FROM pg_extension WHERE extname = 'audit_db') AND d.deptype = 'e'
   AND p.pronamespace = 'audit'::regnamespace
UNION ALL
SELECT 'relation', c.relname::text, c.relkind::text
  FROM pg_depend d JOIN pg_class c ON c.oid = d.objid
 WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_extension'::regclass
   AND d.refobjid = (SELECT oid FROM pg_extension WHERE extname = 'audit_db') AND d.deptype = 'e'
   AND c.relnamespace = 'audit'::regnamespace
UNION ALL
SELECT 'type', t.typname::text, t.typtype::text
  FROM pg_depend d JOIN pg_type t ON t.oid = d.objid
 WHERE d.classid = 'pg_type'::regclass AND d.refclassid = 'pg_extension'::regclass
   AND d.refobjid = (SELECT oid FROM pg_extension WHERE extname = 'audit_db') AND d.deptype = 'e'
   AND t.typnamespace = 'audit'::regnamespace
UNION ALL
SELECT 'event trigger', e.evtname::text, ''
  FROM pg_depend d JOIN pg_event_trigger e ON e.oid = d.objid
 WHERE d.classid = 'pg_event_trigger'::regclass AND d.refclassid = 'pg_extension'::regclass
   AND d.refobjid = (SELECT oid FROM pg_extension WHERE extname = 'audit_db') AND d.deptype = 'e'
"""


def main():
    configuration = read(CONFIGURATION)
    reference = read(SQL_REFERENCE)
    conn = pg.connect(autocommit=True)
    try:
        conn.execute("DROP EXTENSION IF EXISTS audit_db CASCADE")
        conn.execute("CREATE EXTENSION audit_db")

        info("1. settings -> docs/configuration.md")
        live = [r[0] for r in q(conn, "SELECT name FROM pg_settings WHERE name LIKE 'audit_db.%'")]
        R.check(len(live) > 0, "pg_settings lists audit_db settings (%d): the library is loaded" % len(live))
        check_all("audit_db settings in pg_settings", live, configuration, "docs/configuration.md", "%s")
        defined = settings_in_source()
        R.check(set(live) <= defined, "every setting in pg_settings is defined in src/*.c",
                "not found in src/*.c: %s" % ", ".join(sorted(set(live) - defined)))
        check_all("audit_db settings defined in src/*.c", defined, configuration, "docs/configuration.md", "%s")

        info("2. members of the extension in schema audit -> docs/sql-reference.md")
        members = q(conn, MEMBERS)
        functions = [n for k, n, kind in members if k == "function" and kind in ("f", "w", "a")]
        procedures = [n for k, n, kind in members if k == "function" and kind == "p"]
        tables = [n for k, n, kind in members if k == "relation" and kind in ("r", "p", "f")
                  and not PARTITION.match(n)]
        views = [n for k, n, kind in members if k == "relation" and kind in ("v", "m")]
        domains = [n for k, n, kind in members if k == "type" and kind == "d"]
        event_triggers = [n for k, n, _ in members if k == "event trigger"]
        R.check(len(functions) > 100 and procedures and len(tables) > 20 and len(views) > 5,
                "the extension's members were found (%d functions, %d procedures, %d tables, %d views)"
                % (len(functions), len(procedures), len(tables), len(views)))
        check_all("functions", functions, reference, "docs/sql-reference.md", "audit.%s")
        check_all("procedures", procedures, reference, "docs/sql-reference.md", "audit.%s")
        check_all("tables", tables, reference, "docs/sql-reference.md", "audit.%s")
        check_all("views", views, reference, "docs/sql-reference.md", "audit.%s")

        info("3. domains and event triggers -> docs/sql-reference.md")
        check_all("domains", domains, reference, "docs/sql-reference.md", "audit.%s")
        check_all("event triggers", event_triggers, reference, "docs/sql-reference.md", "%s")
    except Exception as e:  # noqa: BLE001 - report, go on to cleanup
        R.check(False, "the test ran to its end", "%s: %s" % (type(e).__name__, e))
    finally:
        try:
            conn.execute("DROP EXTENSION IF EXISTS audit_db CASCADE")
        finally:
            conn.close()
    return R.finish("docs_reference")


if __name__ == "__main__":
    sys.exit(main())
