#!/usr/bin/python3
"""test/upgrade.py: ALTER EXTENSION audit_db UPDATE from every released
version (src/sql/released/audit_db--<version>.sql) to the current one.

For each released version V older than the default version:
  1. CREATE EXTENSION audit_db VERSION 'V' in the test's database (PGDATABASE)
     and fill it: events of several organizations, sealed, pseudonyms, an
     erasure, a tracked table with changes, a preset, a digest;
  2. ALTER EXTENSION audit_db UPDATE;
  3. check the data (every row and block still there, unchanged), the chain
     (audit.verify() clean, the digest from before still verifies) and the
     behaviour (new events logged and sealed, the tracked table still
     tracked, the same hash pseudonym, maintenance runs, dump support);
  4. compare the upgraded schema with a fresh CREATE EXTENSION of the default
     version in a second database: every member object of the extension
     (tables with columns, defaults and constraints, indexes, triggers and
     their enabled state, policies, views, functions with their bodies and
     settings, types, sequences), their privileges and comments, and the
     tables pg_dump keeps, must be the same. A change of src/sql/ without
     its upgrade script fails here.
Last line: "upgrade: N passed, M failed".
"""
import json
import os
import re
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
from testkit import Results, info, psycopg, q, q1, seal_all, wait_for  # noqa: E402

pg = psycopg()
R = Results()
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def default_version():
    with open(os.path.join(ROOT, "audit_db.control")) as f:
        return re.search(r"^default_version\s*=\s*'([^']+)'", f.read(), re.M).group(1)


def released_versions():
    names = os.listdir(os.path.join(ROOT, "src", "sql", "released"))
    return sorted(m.group(1) for m in (re.match(r"audit_db--([^-]+)\.sql$", n) for n in names) if m)


# What a member object is, in words that do not depend on OIDs or on the order
# of creation. One query per kind; rows are (kind, identity, definition).
SCHEMA_QUERIES = [
    # Every member object, by its identity.
    """SELECT 'member', i.type || ' ' || i.identity, ''
         FROM pg_depend d, pg_extension e, pg_identify_object(d.classid, d.objid, d.objsubid) i
        WHERE d.refclassid = 'pg_extension'::regclass AND d.refobjid = e.oid AND e.extname = 'audit_db'
          AND d.deptype = 'e'""",
    # Columns of the extension's tables, views and types, in order.
    """SELECT 'column', c.oid::regclass::text || '.' || a.attname,
              format('%s #%s %s notnull=%s default=%s ident=%s gen=%s', c.relkind, a.attnum,
                     format_type(a.atttypid, a.atttypmod), a.attnotnull,
                     pg_get_expr(ad.adbin, ad.adrelid), a.attidentity, a.attgenerated)
         FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
         LEFT JOIN pg_attrdef ad ON ad.adrelid = c.oid AND ad.adnum = a.attnum
        WHERE c.relnamespace = 'audit'::regnamespace AND c.relname !~ '^audit_log_[0-9]'""",
    """SELECT 'constraint', conrelid::regclass::text || '.' || conname || coalesce(contypid::regtype::text, ''),
              pg_get_constraintdef(oid)
         FROM pg_constraint WHERE connamespace = 'audit'::regnamespace
          AND conrelid::regclass::text !~ '^audit\\.audit_log_[0-9]'""",
    """SELECT 'index', indexrelid::regclass::text, pg_get_indexdef(indexrelid)
         FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
        WHERE c.relnamespace = 'audit'::regnamespace AND c.relname !~ '^audit_log_[0-9]'""",
    """SELECT 'trigger', tgrelid::regclass::text || '.' || tgname, pg_get_triggerdef(t.oid) || ' ' || tgenabled::text
         FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
        WHERE c.relnamespace = 'audit'::regnamespace AND c.relname !~ '^audit_log_[0-9]'
          AND NOT t.tgisinternal""",
    """SELECT 'policy', polrelid::regclass::text || '.' || polname,
              format('%s %s %s %s %s', polcmd, polpermissive, polroles::regrole[],
                     pg_get_expr(polqual, polrelid), pg_get_expr(polwithcheck, polrelid))
         FROM pg_policy p JOIN pg_class c ON c.oid = p.polrelid
        WHERE c.relnamespace = 'audit'::regnamespace""",
    """SELECT 'relation', c.oid::regclass::text,
              format('%s rls=%s force=%s acl=%s options=%s comment=%s', c.relkind, c.relrowsecurity,
                     c.relforcerowsecurity, c.relacl, c.reloptions, obj_description(c.oid, 'pg_class'))
         FROM pg_class c WHERE c.relnamespace = 'audit'::regnamespace AND c.relname !~ '^audit_log_[0-9]'
          AND c.relkind <> 'i'""",
    """SELECT 'view', c.oid::regclass::text, pg_get_viewdef(c.oid)
         FROM pg_class c WHERE c.relnamespace = 'audit'::regnamespace AND c.relkind IN ('v', 'm')""",
    """SELECT 'function', p.oid::regprocedure::text,
              pg_get_functiondef(p.oid) || ' acl=' || coalesce(p.proacl::text, '') ||
              ' comment=' || coalesce(obj_description(p.oid, 'pg_proc'), '')
         FROM pg_proc p WHERE p.pronamespace = 'audit'::regnamespace AND p.prokind <> 'a'""",
    """SELECT 'type', t.oid::regtype::text,
              format('%s %s %s comment=%s', t.typtype, t.typbasetype::regtype, t.typnotnull,
                     obj_description(t.oid, 'pg_type'))
         FROM pg_type t WHERE t.typnamespace = 'audit'::regnamespace AND t.typrelid = 0
          AND t.typelem = 0""",
    """SELECT 'sequence', s.seqrelid::regclass::text,
              format('%s %s %s %s', s.seqtypid::regtype, s.seqstart, s.seqincrement, s.seqcycle)
         FROM pg_sequence s JOIN pg_class c ON c.oid = s.seqrelid
        WHERE c.relnamespace = 'audit'::regnamespace""",
    """SELECT 'dumped', r.oid::regclass::text, coalesce(e.extcondition[r.n], '')
         FROM pg_extension e, unnest(e.extconfig) WITH ORDINALITY r(oid, n) WHERE e.extname = 'audit_db'""",
    """SELECT 'event trigger', evtname, format('%s %s %s', evtevent, evtenabled, evtfoid::regproc)
         FROM pg_event_trigger WHERE evtfoid::regproc::text LIKE 'audit.%'""",
    """SELECT 'schema', nspname, format('acl=%s comment=%s', nspacl, obj_description(oid, 'pg_namespace'))
         FROM pg_namespace WHERE nspname = 'audit'""",
]


def schema_of(conn):
    rows = set()
    for query in SCHEMA_QUERIES:
        for kind, ident, definition in q(conn, query):
            rows.add((kind, ident, definition or ""))
    return rows


def fill(conn):
    conn.execute("INSERT INTO audit.audit_preset (name, action, data_classification, required_fields) "
                 "VALUES ('phi_read', 'patient.read', 'PHI', '{principal_id}')")
    for i in range(30):
        conn.execute("SELECT audit.log_event(action => 'patient.read', status => 'success', "
                     "principal_id => %s, organization_id => %s, target_resource_id => %s, "
                     "data_classification => 'PHI')",
                     ("user-%d" % (i % 5), "org-%d" % (i % 3), "patient-%d" % i))
    conn.execute("SELECT audit.log_event(preset => 'phi_read', principal_id => 'dr-who', organization_id => 'org-1')")
    conn.execute("DROP TABLE IF EXISTS public.upgrade_patient")
    conn.execute("CREATE TABLE public.upgrade_patient (id int PRIMARY KEY, name text)")
    conn.execute("SELECT audit.track_table('public.upgrade_patient')")
    conn.execute("INSERT INTO public.upgrade_patient VALUES (1, 'Ann'), (2, 'Bob')")
    conn.execute("UPDATE public.upgrade_patient SET name = 'Anne' WHERE id = 1")
    conn.execute("SELECT audit.pseudonymize('user-1', 'hash', requested_by => 'ticket-1')")
    conn.execute("SELECT audit.pseudonymize('user-2', 'token', requested_by => 'ticket-2')")
    conn.execute("SELECT audit.erase_subject('user-3', requested_by => 'ticket-3')")
    seal_all(conn)


def table_rows(conn, table, order):
    return q(conn, "SELECT * FROM %s ORDER BY %s" % (table, order))


def upgrade_from(conn, fresh_schema, version, target):
    conn.execute("DROP EXTENSION IF EXISTS audit_db CASCADE")
    conn.execute("CREATE EXTENSION audit_db VERSION '%s'" % version)
    R.check(q1(conn, "SELECT extversion FROM pg_extension WHERE extname = 'audit_db'") == version,
            "%s: created at version %s" % (version, version))
    fill(conn)
    before = {
        "log": table_rows(conn, "audit.audit_log", "id"),
        "blocks": table_rows(conn, "audit.audit_chain_block", "height"),
        "mapping": table_rows(conn, "audit.pseudonym_mapping", "pseudonym"),
        "redacted": table_rows(conn, "audit.redacted_row", "1, 2"),
    }
    digest = q1(conn, "SELECT audit.digest()")
    hash_pseudonym = q1(conn, "SELECT pseudonym FROM audit.pseudonym_mapping WHERE strategy = 'hash'")
    R.check(q(conn, "SELECT * FROM audit.verify()") == [], "%s: verify clean before the update" % version)

    conn.execute("ALTER EXTENSION audit_db UPDATE")
    R.check(q1(conn, "SELECT extversion FROM pg_extension WHERE extname = 'audit_db'") == target,
            "%s: ALTER EXTENSION UPDATE reaches %s" % (version, target))

    # Data.
    R.check(table_rows(conn, "audit.audit_log", "id") == before["log"], "%s -> %s: every audit row unchanged"
            % (version, target))
    R.check(table_rows(conn, "audit.audit_chain_block", "height") == before["blocks"],
            "%s -> %s: every block unchanged" % (version, target))
    R.check(table_rows(conn, "audit.pseudonym_mapping", "pseudonym") == before["mapping"] and
            table_rows(conn, "audit.redacted_row", "1, 2") == before["redacted"],
            "%s -> %s: pseudonym mappings and redactions unchanged" % (version, target))
    # Chain.
    problems = q(conn, "SELECT * FROM audit.verify()")
    R.check(problems == [], "%s -> %s: audit.verify() clean after the update" % (version, target), problems)
    R.check(q1(conn, "SELECT bool_and(ok) FROM audit.verify_digest(%s::jsonb)", (json.dumps(digest),)) is True,
            "%s -> %s: the digest taken before the update verifies" % (version, target))
    # Behaviour.
    new_id = q1(conn, "SELECT audit.log_event(action => 'after.update', status => 'success', organization_id => 'org-1')")
    R.check(new_id > before["log"][-1][0], "%s -> %s: new events are logged after the old ones" % (version, target))
    conn.execute("UPDATE public.upgrade_patient SET name = 'Bobby' WHERE id = 2")
    R.check(q1(conn, "SELECT count(*) FROM audit.audit_log WHERE action = 'upgrade_patient.update' "
                     "AND target_resource_id = '2'") == 1,
            "%s -> %s: the tracked table is still tracked" % (version, target),
            q(conn, "SELECT action, target_resource_id FROM audit.audit_log WHERE id > %s", (new_id,)))
    R.check(q1(conn, "SELECT (audit.pseudonymize('user-1', 'hash', requested_by => 'ticket-9')).pseudonym")
            == hash_pseudonym, "%s -> %s: the same hash pseudonym (keys kept)" % (version, target))
    conn.execute("CALL audit.run_maintenance()")
    # This CALL's run: the worker may start one of its own meanwhile.
    R.check(q1(conn, "SELECT status FROM audit.maintenance_run WHERE via = 'call' ORDER BY run_id DESC LIMIT 1")
            == "done", "%s -> %s: maintenance runs" % (version, target),
            q(conn, "SELECT run_id, via, status, errors FROM audit.maintenance_run ORDER BY run_id DESC LIMIT 3"))
    R.check(seal_all(conn) and q(conn, "SELECT * FROM audit.verify()") == [],
            "%s -> %s: new rows sealed, verify clean" % (version, target))
    R.check(q1(conn, "SELECT count(*) FROM pg_extension e, unnest(e.extconfig) r(oid) "
                     "WHERE e.extname = 'audit_db' AND r.oid = 'audit.audit_log_id_seq'::regclass") == 1,
            "%s -> %s: pg_dump keeps the event id sequence" % (version, target))

    # Schema: the same as a fresh install.
    upgraded = schema_of(conn)
    missing = sorted(fresh_schema - upgraded)
    extra = sorted(upgraded - fresh_schema)
    R.check(not missing and not extra,
            "%s -> %s: the upgraded schema equals a fresh CREATE EXTENSION (%d objects and properties)"
            % (version, target, len(fresh_schema)),
            "only in the fresh install:\n  %s\nonly in the upgraded one:\n  %s"
            % ("\n  ".join(map(str, missing[:30])), "\n  ".join(map(str, extra[:30]))))


def main():
    target = default_version()
    versions = [v for v in released_versions() if v != target]
    dbname = os.environ.get("PGDATABASE")
    fresh_db = (dbname or "audit_db_upgrade") + "_fresh"
    conn = pg.connect(autocommit=True)
    admin = pg.connect(autocommit=True, dbname="postgres")
    try:
        admin.execute("DROP DATABASE IF EXISTS %s" % fresh_db)
        admin.execute("CREATE DATABASE %s" % fresh_db)
        with pg.connect(autocommit=True, dbname=fresh_db) as fresh:
            fresh.execute("CREATE EXTENSION audit_db")
            fresh_schema = schema_of(fresh)
        R.check(len(fresh_schema) > 500, "a fresh install describes itself (%d objects and properties)"
                % len(fresh_schema))
        R.check(versions != [], "there is a released version to update from (%s)" % ", ".join(versions))
        for version in versions:
            info("updating from %s to %s" % (version, target))
            upgrade_from(conn, fresh_schema, version, target)
        conn.execute("DROP EXTENSION IF EXISTS audit_db CASCADE")
    finally:
        conn.close()
        admin.execute("DROP DATABASE IF EXISTS %s WITH (FORCE)" % fresh_db)
        admin.close()
    return R.finish("upgrade")


if __name__ == "__main__":
    sys.exit(main())
