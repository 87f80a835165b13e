-- privileges: nothing is granted to PUBLIC; audit_db_writer can only log
-- events; audit_db_auditor can only read; settings are superuser-only.

-- No PUBLIC access to any table, sequence or function of the extension.
SELECT count(*) FILTER (WHERE has_table_privilege('public', c.oid, 'SELECT,INSERT,UPDATE,DELETE,TRUNCATE')) AS public_tables
FROM pg_class c WHERE c.relnamespace = 'audit'::regnamespace AND c.relkind IN ('r', 'p', 'v');
-- Only the pure predicates that the domains' CHECK constraints call.
SELECT p.oid::regprocedure AS public_function
FROM pg_proc p WHERE p.pronamespace = 'audit'::regnamespace
  AND has_function_privilege('public', p.oid, 'EXECUTE')
ORDER BY p.proname;
SELECT has_schema_privilege('public', 'audit', 'USAGE') AS public_schema_usage;

-- A single-tenant deployment: both roles see every organization (the tenancy
-- suite covers roles confined to one).
CREATE ROLE regress_app LOGIN IN ROLE audit_db_writer, audit_db_all_organizations;
CREATE ROLE regress_auditor LOGIN IN ROLE audit_db_auditor, audit_db_all_organizations;
CREATE ROLE regress_nobody LOGIN;

\set VERBOSITY default
-- The writer logs events, by function or INSERT, and gets the id back.
SET ROLE regress_app;
SELECT audit.log_event(action => 'priv_write', principal_id => 'app') > 0 AS logged;
INSERT INTO audit.audit_log (action, status) VALUES ('priv_insert', 'success');
SELECT audit.last_event_id() > 0 AS got_id;
-- ... and nothing else: it cannot read the log, not even ids or counts.
SELECT count(*) FROM audit.audit_log;
\echo :LAST_ERROR_SQLSTATE
SELECT id FROM audit.audit_log LIMIT 1;
\echo :LAST_ERROR_SQLSTATE
INSERT INTO audit.audit_log (action, status) VALUES ('priv_returning', 'success') RETURNING id;
\echo :LAST_ERROR_SQLSTATE
UPDATE audit.audit_log SET action = 'x';
\echo :LAST_ERROR_SQLSTATE
DELETE FROM audit.audit_log;
\echo :LAST_ERROR_SQLSTATE
TRUNCATE audit.audit_log;
\echo :LAST_ERROR_SQLSTATE
INSERT INTO audit.audit_preset (name) VALUES ('mine');
\echo :LAST_ERROR_SQLSTATE
SET audit_db.max_details_bytes = 100000000;
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;

-- The auditor reads and recomputes, and writes nothing.
SET ROLE regress_auditor;
SELECT count(*) > 0 AS can_read, bool_and(hash = audit.leaf_hash(l)) AS hashes_ok
FROM audit.audit_log l WHERE action LIKE 'priv_%';
SELECT count(*) >= 0 AS can_read_presets FROM audit.audit_preset;
INSERT INTO audit.audit_log (action, status) VALUES ('priv_auditor', 'success');
\echo :LAST_ERROR_SQLSTATE
SELECT audit.log_event(action => 'priv_auditor');
\echo :LAST_ERROR_SQLSTATE
DELETE FROM audit.audit_preset;
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;

-- Anyone else cannot even see the schema.
SET ROLE regress_nobody;
SELECT count(*) FROM audit.audit_log;
\echo :LAST_ERROR_SQLSTATE
SELECT audit.log_event(action => 'priv_nobody');
\echo :LAST_ERROR_SQLSTATE
-- Only the extension's owner may drop it; audit_db's DROP EXTENSION hook
-- (which locks the chain head first for the owner) leaves others the usual error.
DROP EXTENSION audit_db;
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;

SELECT action FROM audit.audit_log WHERE action LIKE 'priv_%' ORDER BY id;

DROP ROLE regress_app, regress_auditor, regress_nobody;
