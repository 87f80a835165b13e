-- tenancy: tenant isolation (issue 5). A session acts for one organization,
-- taken only from audit.organization_access; row-level-security policies
-- confine audit.audit_log (and any table audit.enable_tenant_isolation() is
-- run on) to that organization and to the principal's organization-role
-- permissions. Every way to another tenant's rows is tried and fails or
-- returns nothing. The tenants' sessions are played with SET SESSION
-- AUTHORIZATION, so that SET ROLE is checked as for a real login.

\i sql/include/fresh_extension.sql
\set VERBOSITY terse

-- The cast: tenant A's application (writes and reads org_a), tenant B's
-- auditor (reads org_b), a pooled application role that acts for any
-- organization and names the principal per request, tenant A's
-- administrator of organization roles, a platform auditor of every
-- organization, a BYPASSRLS role, and the owner of an application table.
CREATE ROLE regress_tn_a_writer LOGIN IN ROLE audit_db_writer, audit_db_auditor;
CREATE ROLE regress_tn_b_auditor LOGIN IN ROLE audit_db_auditor;
CREATE ROLE regress_tn_pool LOGIN IN ROLE audit_db_writer, audit_db_auditor;
CREATE ROLE regress_tn_a_admin LOGIN IN ROLE audit_db_tenant_admin;
CREATE ROLE regress_tn_platform LOGIN IN ROLE audit_db_auditor, audit_db_all_organizations;
CREATE ROLE regress_tn_bypass LOGIN BYPASSRLS IN ROLE audit_db_auditor;
CREATE ROLE regress_tn_clinic LOGIN;

-- Which database role acts for which organization: only the extension's
-- owner writes the mapping.
SELECT audit.grant_organization_access('regress_tn_a_writer', 'org_a');
SELECT audit.grant_organization_access('regress_tn_a_admin', 'org_a');
SELECT audit.grant_organization_access('regress_tn_b_auditor', 'org_b');
SELECT audit.grant_organization_access('regress_tn_pool', '*');
-- Granting again changes only the may_set_principal flag.
SELECT audit.grant_organization_access('regress_tn_pool', '*', may_set_principal => true);
SELECT database_role, organization_id, may_set_principal FROM audit.organization_access ORDER BY database_role::text, organization_id;

-- Organization roles and who holds them. Tenant A's application reads and
-- writes the log; tenant B's auditor only reads; alice (org_a) and bob
-- (org_b) are users of the pooled application; tenant A's administrator
-- manages org_a's roles ('audit.organization_role*' covers both tables).
INSERT INTO audit.organization_role (organization_id, role_name, permissions) VALUES
  ('org_a', 'log_writer', '[{"resource": "audit.audit_log", "action": "read"},
                            {"resource": "audit.audit_log", "action": "write"},
                            {"resource": "audit.audit_preset", "action": "read"}]'),
  ('org_a', 'support', '[{"resource": "audit.audit_log", "action": "read"}]'),
  ('org_a', 'role_admin', '[{"resource": "audit.organization_role*", "action": "*"}]'),
  ('org_b', 'log_reader', '[{"resource": "audit.audit_log", "action": "read"}]');
INSERT INTO audit.organization_role_assignment (organization_id, principal_id, role_name) VALUES
  ('org_a', 'regress_tn_a_writer', 'log_writer'),
  ('org_a', 'alice', 'support'),
  ('org_a', 'regress_tn_a_admin', 'role_admin'),
  ('org_b', 'regress_tn_b_auditor', 'log_reader'),
  ('org_b', 'bob', 'log_reader');

-- Events of both organizations and one of none.
INSERT INTO audit.audit_log (action, status, principal_id, organization_id) VALUES
  ('tn_login', 'success', 'u1', 'org_a'),
  ('tn_view', 'success', 'u1', 'org_a'),
  ('tn_export', 'success', 'u2', 'org_a'),
  ('tn_login', 'success', 'u3', 'org_b'),
  ('tn_delete', 'failure', 'u3', 'org_b'),
  ('tn_system', 'success', NULL, NULL);
SELECT min(id) AS a_id FROM audit.audit_log WHERE action = 'tn_login' AND organization_id = 'org_a' \gset
SELECT min(id) AS b_id FROM audit.audit_log WHERE action = 'tn_login' AND organization_id = 'org_b' \gset

-- Archived events of both organizations (March 2024, archived after 30 days).
INSERT INTO audit.audit_retention_policy (policy_name, retention_days, archive_after_days, delete_after_days)
VALUES ('tn_cold', 60, 30, 1000);
SELECT count(*) > 0 AS partitions FROM audit.create_partitions(2, '2024-03-01');
INSERT INTO audit.audit_log ("timestamp", action, status, principal_id, organization_id, retention_policy, details)
SELECT timestamptz '2024-03-01' + g * interval '1 day', 'tn_archived', 'success', 'patient-' || g,
       CASE WHEN g % 2 = 0 THEN 'org_a' ELSE 'org_b' END, 'tn_cold', jsonb_build_object('diagnosis', 'd' || g)
FROM generate_series(0, 9) g;
SELECT pg_temp.seal_all() AS sealed;
CALL audit.run_maintenance('2024-05-15');
CALL audit.run_maintenance('2024-05-15');
SELECT count(*) AS entries, sum(row_count) AS archived_rows FROM audit.archive_storage;
SELECT count(*) AS archived_left_in_log FROM audit.audit_log WHERE action = 'tn_archived';

-- Presets: NULL organization is shared (shared_null_rows), others are per organization.
INSERT INTO audit.audit_preset (name, organization_id) VALUES ('tn_shared', NULL), ('tn_a', 'org_a'), ('tn_b', 'org_b');

-- Alert rules and report schedules of both organizations and of none, and the
-- configuration changes that recorded them. Tenant A's writer may read them
-- (an organization role of their own); tenant B's auditor may not.
INSERT INTO audit.organization_role (organization_id, role_name, permissions) VALUES
  ('org_a', 'config_reader', '[{"resource": "audit.alert_rules", "action": "read"},
                               {"resource": "audit.scheduled_reports", "action": "read"},
                               {"resource": "audit.config_change_event", "action": "read"}]');
INSERT INTO audit.organization_role_assignment (organization_id, principal_id, role_name) VALUES
  ('org_a', 'regress_tn_a_writer', 'config_reader');
INSERT INTO audit.alert_rules (name, rule_type, organization_id, params) VALUES
  ('tn_rule_a', 'failure_burst', 'org_a', '{"threshold": 5, "window_minutes": 10}'),
  ('tn_rule_b', 'failure_burst', 'org_b', '{"threshold": 5, "window_minutes": 10}'),
  ('tn_rule_shared', 'seal_lag', NULL, '{"max_seconds": 300}');
SELECT audit.schedule_report('tn_report_a', 'phi_access', '0 6 1 * *', organization_id => 'org_a', runner => 'worker') > 0 AS a,
       audit.schedule_report('tn_report_b', 'phi_access', '0 6 1 * *', organization_id => 'org_b', runner => 'worker') > 0 AS b,
       audit.schedule_report('tn_report_all', 'phi_access', '0 6 1 * *', runner => 'worker') > 0 AS shared;
UPDATE audit.alert_rules SET organization_id = 'org_a' WHERE name = 'tn_rule_b';   -- moved, then back:
UPDATE audit.alert_rules SET organization_id = 'org_b' WHERE name = 'tn_rule_b';   -- each change under the new owner
SELECT operation, organization_id, coalesce(new_value, old_value)->>'name' AS name
  FROM audit.config_change_event WHERE coalesce(new_value, old_value)->>'name' LIKE 'tn\_%' ORDER BY change_id;

-- Views over the log made by a superuser: one with the reader's rights
-- (security_invoker), one with its owner's (a superuser: no policy applies).
CREATE VIEW public.regress_tn_log_invoker WITH (security_invoker = true) AS
  SELECT id, action, organization_id FROM audit.audit_log;
CREATE VIEW public.regress_tn_log_definer AS
  SELECT id, action, organization_id FROM audit.audit_log;
GRANT SELECT ON public.regress_tn_log_invoker, public.regress_tn_log_definer TO regress_tn_a_writer;

-- A schema tenant A owns, for the search_path attack below.
CREATE SCHEMA regress_tn_evil AUTHORIZATION regress_tn_a_writer;

------------------------------------------------------------------------------
-- Tenant A: acts for org_a from the start (one mapping), as its own principal.
------------------------------------------------------------------------------
SET SESSION AUTHORIZATION regress_tn_a_writer;
SELECT audit.current_organization(), audit.current_principal();
SELECT * FROM audit.available_organizations();
SELECT action, organization_id, principal_id FROM audit.audit_log WHERE action LIKE 'tn\_%' ORDER BY id;
SELECT count(*) FILTER (WHERE organization_id IS DISTINCT FROM 'org_a') AS other_rows FROM audit.audit_log;
-- Shared presets and its own, not org_b's.
SELECT name FROM audit.audit_preset WHERE name LIKE 'tn\_%' ORDER BY name;
-- Alert rules, report schedules and configuration changes: its own and the
-- shared ones, not org_b's.
SELECT name, organization_id FROM audit.alert_rules WHERE name LIKE 'tn\_%' ORDER BY name;
SELECT name, organization_id FROM audit.scheduled_reports WHERE name LIKE 'tn\_%' ORDER BY name;
SELECT operation, organization_id, new_value->>'name' AS name
  FROM audit.config_change_event WHERE new_value->>'name' LIKE 'tn\_%' ORDER BY change_id;

-- Writing: for its own organization (log_event defaults to it), never for
-- another or for none; UPDATE and DELETE are not granted at all.
SELECT audit.log_event(action => 'tn_a_logged', status => 'success') > 0 AS logged;
INSERT INTO audit.audit_log (action, status, organization_id) VALUES ('tn_a_inserted', 'success', 'org_a');
INSERT INTO audit.audit_log (action, status, organization_id) VALUES ('tn_a_for_b', 'success', 'org_b');
\echo :LAST_ERROR_SQLSTATE
INSERT INTO audit.audit_log (action, status, organization_id) VALUES ('tn_a_for_none', 'success', NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT audit.log_event(action => 'tn_a_for_b', status => 'success', organization_id => 'org_b');
\echo :LAST_ERROR_SQLSTATE
UPDATE audit.audit_log SET action = 'x' WHERE organization_id = 'org_b';
\echo :LAST_ERROR_SQLSTATE
DELETE FROM audit.audit_log WHERE organization_id = 'org_b';
\echo :LAST_ERROR_SQLSTATE
-- The actions of audit_db's own events about roles, access and isolation
-- cannot be forged, not even in its own organization.
SELECT audit.log_event(action => 'organization_role_assignment.delete', status => 'success');
\echo :LAST_ERROR_SQLSTATE
INSERT INTO audit.audit_log (action, status, organization_id) VALUES ('tenant_isolation.disable', 'success', 'org_a');
\echo :LAST_ERROR_SQLSTATE
SELECT audit.log_event(action => 'organization_role_review', status => 'success') > 0 AS similar_name_logged;

-- COPY: the table form goes through the policies (PostgreSQL rewrites it to
-- a query on the partitioned parent only: no rows at all); a query gives its
-- own rows only; COPY FROM is refused on a table with row-level security.
COPY audit.audit_log TO STDOUT;
COPY (SELECT action, organization_id FROM audit.audit_log WHERE action LIKE 'tn\_%' ORDER BY id) TO STDOUT;
COPY audit.audit_log (action, status, organization_id) FROM STDIN;
tn_copied	success	org_b
\.
\echo :LAST_ERROR_SQLSTATE

-- Views: security_invoker applies the policies of the reader; a view with
-- its owner's rights (here a superuser's) does not: it shows every
-- organization, which is why tenant_isolation_status warns about it (below).
SELECT organization_id, count(*) FROM public.regress_tn_log_invoker WHERE action LIKE 'tn\_%' GROUP BY 1 ORDER BY 1;
SELECT organization_id, count(*) FROM public.regress_tn_log_definer WHERE action LIKE 'tn\_%' GROUP BY 1 ORDER BY 1;

-- Settings cannot move the session to another organization: there is no
-- setting to change, audit_db.* names are reserved, and row_security = off
-- makes a query error rather than skip the policies.
SELECT set_config('app.organization', 'org_b', false), set_config('app.current_organization', 'org_b', false);
SELECT audit.current_organization(), count(*) FILTER (WHERE organization_id = 'org_b') AS b_rows FROM audit.audit_log;
SELECT set_config('audit_db.organization', 'org_b', false);
\echo :LAST_ERROR_SQLSTATE
SET audit_db.organization = 'org_b';
\echo :LAST_ERROR_SQLSTATE
SET row_security = off;
SELECT count(*) FROM audit.audit_log;
\echo :LAST_ERROR_SQLSTATE
RESET row_security;

-- set_organization: only organizations of the mapping, no principal but its own.
SELECT audit.set_organization('org_b');
\echo :LAST_ERROR_SQLSTATE
SELECT audit.set_organization('org_a', principal => 'alice');
\echo :LAST_ERROR_SQLSTATE
SELECT audit.set_organization('*');
\echo :LAST_ERROR_SQLSTATE
SELECT audit.set_organization('');
\echo :LAST_ERROR_SQLSTATE
SELECT audit.set_organization(NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT audit.current_organization(), audit.current_principal();

-- SET ROLE: roles not granted are refused; a granted role without a mapping
-- acts for no organization and sees nothing.
SET ROLE regress_tn_b_auditor;
\echo :LAST_ERROR_SQLSTATE
SET ROLE audit_db_all_organizations;
\echo :LAST_ERROR_SQLSTATE
SET ROLE audit_db_auditor;
SELECT audit.current_organization(), count(*) AS visible FROM audit.audit_log;
RESET ROLE;

-- search_path: tenant A's own current_organization() and
-- session_has_permission() come first, yet the policies call audit.*.
CREATE FUNCTION regress_tn_evil.current_organization() RETURNS text LANGUAGE sql AS $$ SELECT 'org_b'::text $$;
CREATE FUNCTION regress_tn_evil.session_has_permission(text, text) RETURNS boolean LANGUAGE sql AS $$ SELECT true $$;
SET search_path = regress_tn_evil, audit, public;
SELECT current_organization() AS evil_org, session_has_permission('audit.audit_log', 'read') AS evil_check;
SELECT count(*) FILTER (WHERE organization_id = 'org_b') AS b_rows, count(*) FILTER (WHERE organization_id = 'org_a') > 0 AS a_rows
FROM audit_log;
-- Nor can it replace the extension's functions.
CREATE OR REPLACE FUNCTION audit.current_organization() RETURNS text LANGUAGE sql AS $$ SELECT 'org_b'::text $$;
\echo :LAST_ERROR_SQLSTATE
RESET search_path;

-- Partitions and the mapping are not granted to tenants.
SELECT count(*) FROM audit.audit_log_default;
\echo :LAST_ERROR_SQLSTATE
SELECT count(*) FROM audit.organization_access;
\echo :LAST_ERROR_SQLSTATE

-- The extension's functions: verify only its organization, prove only its
-- rows, export only its rows, inspect only its organization's permissions.
SELECT count(*) AS problems FROM audit.verify();
SELECT count(*) FROM audit.verify(organization_id => 'org_b');
\echo :LAST_ERROR_SQLSTATE
SELECT count(*) FROM audit.verify(since_last => true);
\echo :LAST_ERROR_SQLSTATE
SELECT audit.prove(:a_id)->'row'->>'organization_id' AS proved_org;
-- Another organization's event is as unknown as an id that does not exist
-- (the message would name the id, which varies: SQLSTATE only).
SELECT audit.prove(-1);
\echo :LAST_ERROR_SQLSTATE
\set VERBOSITY sqlstate
SELECT audit.prove(:b_id);
\set VERBOSITY terse
\echo :LAST_ERROR_SQLSTATE
SELECT count(*) FILTER (WHERE l::jsonb->>'type' = 'row' AND l::jsonb->>'organization_id' = 'org_a') > 0 AS own_rows,
       count(*) FILTER (WHERE l::jsonb->>'type' IN ('row', 'archived_row')
                          AND l::jsonb->>'organization_id' IS DISTINCT FROM 'org_a') AS other_rows,
       count(*) FILTER (WHERE l::jsonb->>'type' = 'archived_row') AS archived_rows,
       count(*) FILTER (WHERE l LIKE '%org\_b%') AS lines_naming_org_b
FROM audit.export_chain() l;
SELECT audit.has_permission('regress_tn_a_writer', 'org_a', 'audit.audit_log', 'write') AS own_check;
SELECT audit.has_permission('regress_tn_b_auditor', 'org_b', 'audit.audit_log', 'read');
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM audit.user_permissions() ORDER BY 1, 2;
SELECT * FROM audit.user_permissions(organization => 'org_b');
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM audit.user_permissions('bob', 'org_b');
\echo :LAST_ERROR_SQLSTATE
-- The archive: only org_a's archived rows, read or restored.
SELECT count(*) AS lines, count(*) FILTER (WHERE doc->>'organization_id' = 'org_a') AS own
FROM audit.archive_storage a, audit.archive_lines(a.archive_id, false) doc;
SELECT r.organization_id, count(*) FROM audit.archive_storage a, audit.archive_restore(a.archive_id) r GROUP BY 1;
-- The stored entries hold every organization's rows: their data column is
-- not granted, only the entries' metadata.
SELECT count(*) > 0 AS entries_listed FROM audit.archive_storage;
SELECT length(data) FROM audit.archive_storage;
\echo :LAST_ERROR_SQLSTATE
RESET SESSION AUTHORIZATION;

------------------------------------------------------------------------------
-- Tenant B's auditor: reads org_b, writes nothing.
------------------------------------------------------------------------------
SET SESSION AUTHORIZATION regress_tn_b_auditor;
SELECT audit.current_organization(), audit.current_principal();
SELECT action, organization_id FROM audit.audit_log WHERE action LIKE 'tn\_%' ORDER BY id;
SELECT name FROM audit.audit_preset WHERE name LIKE 'tn\_%' ORDER BY name;
-- No permission on rules, schedules or configuration changes: the shared ones only.
SELECT name, organization_id FROM audit.alert_rules WHERE name LIKE 'tn\_%' ORDER BY name;
SELECT name, organization_id FROM audit.scheduled_reports WHERE name LIKE 'tn\_%' ORDER BY name;
SELECT operation, organization_id, new_value->>'name' AS name
  FROM audit.config_change_event WHERE new_value->>'name' LIKE 'tn\_%' ORDER BY change_id;
INSERT INTO audit.audit_log (action, status, organization_id) VALUES ('tn_b_write', 'success', 'org_b');
\echo :LAST_ERROR_SQLSTATE
SELECT count(*) AS problems FROM audit.verify();
SELECT count(*) FROM audit.verify(organization_id => 'org_a');
\echo :LAST_ERROR_SQLSTATE
\set VERBOSITY sqlstate
SELECT audit.prove(:a_id);
\set VERBOSITY terse
\echo :LAST_ERROR_SQLSTATE
SELECT r.organization_id, count(*) FROM audit.archive_storage a, audit.archive_restore(a.archive_id) r GROUP BY 1;
SELECT * FROM audit.user_permissions() ORDER BY 1, 2;
SELECT * FROM audit.user_permissions(organization => 'org_a');
\echo :LAST_ERROR_SQLSTATE
-- Past verifications: only with 'read' on audit.audit_integrity_log, and
-- then only its own organization's runs.
SELECT count(*) AS runs_visible FROM audit.audit_integrity_log;
RESET SESSION AUTHORIZATION;
SELECT organization_id, count(*) AS runs FROM audit.audit_integrity_log GROUP BY 1 ORDER BY 1;
INSERT INTO audit.organization_role (organization_id, role_name, permissions)
VALUES ('org_b', 'run_reader', '[{"resource": "audit.audit_integrity_log", "action": "read"}]');
INSERT INTO audit.organization_role_assignment (organization_id, principal_id, role_name)
VALUES ('org_b', 'regress_tn_b_auditor', 'run_reader');
SET SESSION AUTHORIZATION regress_tn_b_auditor;
SELECT organization_id, count(*) AS runs, bool_and(run_by = 'regress_tn_b_auditor') AS own FROM audit.audit_integrity_log GROUP BY 1;
RESET SESSION AUTHORIZATION;

------------------------------------------------------------------------------
-- The pooled application role: acts for no organization until
-- set_organization(), then for the one named, as the principal named.
------------------------------------------------------------------------------
SET SESSION AUTHORIZATION regress_tn_pool;
SELECT audit.current_organization(), audit.current_principal();
SELECT * FROM audit.available_organizations();
SELECT count(*) AS visible FROM audit.audit_log;
SELECT audit.log_event(action => 'tn_pool_nowhere', status => 'success');
\echo :LAST_ERROR_SQLSTATE
SELECT count(*) FROM audit.verify();
\echo :LAST_ERROR_SQLSTATE
SELECT count(*) FROM audit.archive_lines((SELECT min(archive_id) FROM audit.archive_storage), false);
\echo :LAST_ERROR_SQLSTATE
SELECT audit.has_permission('alice', 'org_a', 'audit.audit_log', 'read');
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM audit.user_permissions();
\echo :LAST_ERROR_SQLSTATE

-- alice of org_a: reads org_a's rows (her role 'support'), writes nothing.
SELECT audit.set_organization('org_a', principal => 'alice');
SELECT audit.current_organization(), audit.current_principal();
SELECT action, organization_id FROM audit.audit_log WHERE action LIKE 'tn\_%' ORDER BY id;
SELECT audit.log_event(action => 'tn_alice_write', status => 'success');
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM audit.user_permissions() ORDER BY 1, 2;
-- A principal without roles in org_a sees nothing, archived rows included.
SELECT audit.set_organization('org_a', principal => 'nobody');
SELECT count(*) AS visible FROM audit.audit_log;
SELECT count(*) AS archived_visible FROM audit.archive_storage a, audit.archive_lines(a.archive_id, false);
-- bob of org_b: org_b's rows only; alice has no role in org_b.
SELECT audit.set_organization('org_b', principal => 'bob');
SELECT action, organization_id FROM audit.audit_log WHERE action LIKE 'tn\_%' ORDER BY id;
SELECT audit.set_organization('org_b', principal => 'alice');
SELECT count(*) AS visible FROM audit.audit_log;

-- Transactions: local => true ends with the transaction; ROLLBACK undoes a
-- set_organization(); local => true outside a transaction does nothing.
SELECT audit.set_organization('org_a', principal => 'alice');
BEGIN;
SELECT audit.set_organization('org_b', principal => 'bob', local => true);
SELECT audit.current_organization(), audit.current_principal(), count(*) FILTER (WHERE organization_id = 'org_b') > 0 AS b_rows
FROM audit.audit_log;
COMMIT;
SELECT audit.current_organization(), audit.current_principal();
BEGIN;
SELECT audit.set_organization('org_b', principal => 'bob');
ROLLBACK;
SELECT audit.current_organization(), audit.current_principal();
SELECT audit.set_organization('org_b', principal => 'bob', local => true);
SELECT audit.current_organization(), audit.current_principal();
-- Savepoints: rolling back to one undoes what was selected after it (as
-- for SET), also through a PL/pgSQL exception block; releasing keeps it.
BEGIN;
SELECT audit.set_organization('org_a', principal => 'alice');
SAVEPOINT s1;
SELECT audit.set_organization('org_b', principal => 'bob');
ROLLBACK TO SAVEPOINT s1;
SELECT audit.current_organization(), audit.current_principal();
SAVEPOINT s2;
SAVEPOINT s3;
SELECT audit.set_organization('org_b', principal => 'bob');
RELEASE SAVEPOINT s3;
ROLLBACK TO SAVEPOINT s2;
SELECT audit.current_organization(), audit.current_principal();
SAVEPOINT s4;
SELECT audit.set_organization('org_b', principal => 'bob');
RELEASE SAVEPOINT s4;
COMMIT;
SELECT audit.current_organization(), audit.current_principal();
DO $$
BEGIN
  PERFORM audit.set_organization('org_a', principal => 'alice');
  RAISE EXCEPTION 'undo';
EXCEPTION WHEN raise_exception THEN NULL;
END
$$;
SELECT audit.current_organization(), audit.current_principal();
-- reset_organization(): back to none.
SELECT audit.reset_organization();
SELECT audit.current_organization(), audit.current_principal(), count(*) AS visible FROM audit.audit_log;
RESET SESSION AUTHORIZATION;

------------------------------------------------------------------------------
-- Who sees every organization: superusers and BYPASSRLS roles skip the
-- policies; members of audit_db_all_organizations have a policy of their own.
------------------------------------------------------------------------------
SELECT organization_id, count(*) FROM audit.audit_log WHERE action LIKE 'tn\_%' GROUP BY 1 ORDER BY 1;
SET SESSION AUTHORIZATION regress_tn_bypass;
SELECT audit.current_organization(), organization_id, count(*) FROM audit.audit_log WHERE action LIKE 'tn\_%' GROUP BY 1, 2 ORDER BY 2;
RESET SESSION AUTHORIZATION;
SET SESSION AUTHORIZATION regress_tn_platform;
SELECT audit.current_organization(), organization_id, count(*) FROM audit.audit_log WHERE action LIKE 'tn\_%' GROUP BY 1, 2 ORDER BY 2;
SELECT audit.has_permission('bob', 'org_b', 'audit.audit_log', 'read') AS platform_inspects_b;
SELECT organization_id, count(*) FROM audit.alert_rules WHERE name LIKE 'tn\_%' GROUP BY 1 ORDER BY 1;
SELECT organization_id, count(*) FROM audit.config_change_event
 WHERE coalesce(new_value, old_value)->>'name' LIKE 'tn\_%' GROUP BY 1 ORDER BY 1;
RESET SESSION AUTHORIZATION;

------------------------------------------------------------------------------
-- Access revoked: the organization is gone at the next statement.
------------------------------------------------------------------------------
SELECT audit.revoke_organization_access('regress_tn_a_writer', 'org_a') AS revoked;
SELECT audit.revoke_organization_access('regress_tn_a_writer', 'org_a') AS revoked_again;
SET SESSION AUTHORIZATION regress_tn_a_writer;
SELECT audit.current_organization(), count(*) AS visible FROM audit.audit_log;
RESET SESSION AUTHORIZATION;
SELECT audit.grant_organization_access('regress_tn_a_writer', 'org_a');
SET SESSION AUTHORIZATION regress_tn_a_writer;
SELECT audit.current_organization(), count(*) > 0 AS visible FROM audit.audit_log;
RESET SESSION AUTHORIZATION;
-- A selection ends when its access is revoked; granting again does not revive it.
SET SESSION AUTHORIZATION regress_tn_pool;
SELECT audit.set_organization('org_b', principal => 'bob');
RESET SESSION AUTHORIZATION;
SELECT audit.revoke_organization_access('regress_tn_pool', '*') AS revoked;
SET SESSION AUTHORIZATION regress_tn_pool;
SELECT audit.current_organization(), audit.current_principal();
RESET SESSION AUTHORIZATION;
SELECT audit.grant_organization_access('regress_tn_pool', '*', may_set_principal => true);
SET SESSION AUTHORIZATION regress_tn_pool;
SELECT audit.current_organization(), audit.current_principal();
RESET SESSION AUTHORIZATION;

------------------------------------------------------------------------------
-- Organization roles, managed by tenant A's administrator (its own
-- organization only): inheritance, wildcards, and the checks on writes.
------------------------------------------------------------------------------
SET SESSION AUTHORIZATION regress_tn_a_admin;
SELECT organization_id, role_name FROM audit.organization_role ORDER BY 1, 2;
-- viewer <- editor <- manager: carol, a manager, gets all three.
-- (An inherited role must exist before the statement that names it.)
INSERT INTO audit.organization_role (organization_id, role_name, permissions)
VALUES ('org_a', 'viewer', '[{"resource": "audit.audit_log", "action": "read"}]');
INSERT INTO audit.organization_role (organization_id, role_name, permissions, inherits)
VALUES ('org_a', 'editor', '[{"resource": "public.patients", "action": "write"}]', '{viewer}');
INSERT INTO audit.organization_role (organization_id, role_name, permissions, inherits)
VALUES ('org_a', 'manager', '[{"resource": "audit.organization_role_assignment", "action": "read"}]', '{editor}');
INSERT INTO audit.organization_role (organization_id, role_name, permissions) VALUES
  ('org_a', 'log_auditor', '[{"resource": "audit.*", "action": "read"}]'),
  ('org_a', 'owner', '[{"resource": "*", "action": "*"}]');
INSERT INTO audit.organization_role_assignment (organization_id, principal_id, role_name) VALUES
  ('org_a', 'carol', 'manager'), ('org_a', 'dave', 'log_auditor'), ('org_a', 'erin', 'owner');
SELECT * FROM audit.user_permissions('carol') ORDER BY inherited_via;
-- The union of the three levels, and wildcards ('*' and 'audit.*').
SELECT p.principal, c.resource, c.action, audit.has_permission(p.principal, 'org_a', c.resource, c.action) AS allowed
FROM (VALUES ('carol'), ('dave'), ('erin'), ('nobody')) p(principal),
     (VALUES ('audit.audit_log', 'read'), ('audit.audit_log', 'write'), ('audit.audit_preset', 'read'),
             ('public.patients', 'write'), ('public.patients', 'read'),
             ('audit.organization_role_assignment', 'read')) c(resource, action)
ORDER BY 1, 2, 3;
-- A permission removed is gone at the next statement, and back when restored.
UPDATE audit.organization_role SET permissions = '[]' WHERE organization_id = 'org_a' AND role_name = 'viewer';
SELECT audit.has_permission('carol', 'org_a', 'audit.audit_log', 'read') AS carol_reads;
UPDATE audit.organization_role SET permissions = '[{"resource": "audit.audit_log", "action": "read"}]'
WHERE organization_id = 'org_a' AND role_name = 'viewer';
SELECT audit.has_permission('carol', 'org_a', 'audit.audit_log', 'read') AS carol_reads;

-- Refused: a cycle, inheriting itself, inheriting an unknown role, deleting
-- or renaming an inherited role, deleting an assigned role, moving a role to
-- another organization, malformed permissions.
UPDATE audit.organization_role SET inherits = '{manager}' WHERE organization_id = 'org_a' AND role_name = 'viewer';
\echo :LAST_ERROR_SQLSTATE
UPDATE audit.organization_role SET inherits = '{viewer}' WHERE organization_id = 'org_a' AND role_name = 'viewer';
\echo :LAST_ERROR_SQLSTATE
INSERT INTO audit.organization_role (organization_id, role_name, inherits) VALUES ('org_a', 'ghostly', '{ghost}');
\echo :LAST_ERROR_SQLSTATE
DELETE FROM audit.organization_role WHERE organization_id = 'org_a' AND role_name = 'viewer';
\echo :LAST_ERROR_SQLSTATE
UPDATE audit.organization_role SET role_name = 'viewer2' WHERE organization_id = 'org_a' AND role_name = 'viewer';
\echo :LAST_ERROR_SQLSTATE
DELETE FROM audit.organization_role WHERE organization_id = 'org_a' AND role_name = 'manager';
\echo :LAST_ERROR_SQLSTATE
UPDATE audit.organization_role SET organization_id = 'org_b' WHERE organization_id = 'org_a' AND role_name = 'owner';
\echo :LAST_ERROR_SQLSTATE
INSERT INTO audit.organization_role (organization_id, role_name, permissions) VALUES ('org_a', 'bad', '{"resource": "x", "action": "y"}');
\echo :LAST_ERROR_SQLSTATE
INSERT INTO audit.organization_role (organization_id, role_name, permissions) VALUES ('org_a', 'bad', '[{"resource": "x"}]');
\echo :LAST_ERROR_SQLSTATE
INSERT INTO audit.organization_role (organization_id, role_name, permissions) VALUES ('org_a', 'bad', '[{"resource": "x", "action": ""}]');
\echo :LAST_ERROR_SQLSTATE
INSERT INTO audit.organization_role (organization_id, role_name, permissions) VALUES ('org_a', 'bad', '[{"resource": "x", "action": 1}]');
\echo :LAST_ERROR_SQLSTATE
INSERT INTO audit.organization_role (organization_id, role_name, permissions) VALUES ('org_a', 'bad', '[{"resource": "x", "action": "y", "when": "now"}]');
\echo :LAST_ERROR_SQLSTATE
INSERT INTO audit.organization_role (organization_id, role_name, permissions) VALUES ('org_a', 'bad', '["x"]');
\echo :LAST_ERROR_SQLSTATE
-- Inheritance is checked once the whole statement is done: two rows of one
-- statement cannot close a cycle, a role may inherit one inserted in the
-- same statement, and a rename cannot leave an inheritor dangling.
INSERT INTO audit.organization_role (organization_id, role_name) VALUES ('org_a', 'tn_x'), ('org_a', 'tn_y');
UPDATE audit.organization_role SET inherits = CASE role_name WHEN 'tn_x' THEN '{tn_y}'::text[] ELSE '{tn_x}'::text[] END
WHERE organization_id = 'org_a' AND role_name IN ('tn_x', 'tn_y');
\echo :LAST_ERROR_SQLSTATE
INSERT INTO audit.organization_role (organization_id, role_name, inherits)
VALUES ('org_a', 'tn_top', '{tn_base}'), ('org_a', 'tn_base', '{}');
UPDATE audit.organization_role SET role_name = CASE role_name WHEN 'tn_base' THEN 'tn_base2' ELSE role_name END,
       inherits = CASE role_name WHEN 'tn_top' THEN '{tn_base}'::text[] ELSE inherits END
WHERE organization_id = 'org_a' AND role_name IN ('tn_top', 'tn_base');
\echo :LAST_ERROR_SQLSTATE
SELECT role_name, inherits FROM audit.organization_role WHERE role_name LIKE 'tn\_%' ORDER BY 1;
DELETE FROM audit.organization_role WHERE organization_id = 'org_a' AND role_name LIKE 'tn\_%';

-- Org_b's roles: invisible, and out of reach for writing.
SELECT count(*) AS org_b_roles FROM audit.organization_role WHERE organization_id = 'org_b';
INSERT INTO audit.organization_role (organization_id, role_name) VALUES ('org_b', 'planted');
\echo :LAST_ERROR_SQLSTATE
-- The policy refuses such rows before any inheritance check could tell
-- whether org_b has a role of that name.
INSERT INTO audit.organization_role (organization_id, role_name, inherits) VALUES ('org_b', 'probe', '{log_reader}');
\echo :LAST_ERROR_SQLSTATE
INSERT INTO audit.organization_role (organization_id, role_name, inherits) VALUES ('org_b', 'probe', '{no_such_role}');
\echo :LAST_ERROR_SQLSTATE
INSERT INTO audit.organization_role_assignment (organization_id, principal_id, role_name) VALUES ('org_b', 'mallory', 'log_reader');
\echo :LAST_ERROR_SQLSTATE
WITH u AS (UPDATE audit.organization_role SET permissions = '[{"resource": "*", "action": "*"}]'
           WHERE organization_id = 'org_b' RETURNING 1)
SELECT count(*) AS updated FROM u;
WITH d AS (DELETE FROM audit.organization_role_assignment WHERE organization_id = 'org_b' RETURNING 1)
SELECT count(*) AS deleted FROM d;
-- Assignments of its own organization come and go.
DELETE FROM audit.organization_role_assignment WHERE organization_id = 'org_a' AND principal_id = 'erin';
RESET SESSION AUTHORIZATION;
SELECT r.role_name, r.permissions, array_agg(a.principal_id ORDER BY a.principal_id) AS principals
FROM audit.organization_role r JOIN audit.organization_role_assignment a USING (organization_id, role_name)
WHERE organization_id = 'org_b' GROUP BY 1, 2 ORDER BY 1;

-- The superuser's view of the same refusals (no policy in the way).
INSERT INTO audit.organization_role (organization_id, role_name, inherits) VALUES ('org_b', 'probe', '{log_reader}');
UPDATE audit.organization_role SET inherits = '{probe}' WHERE organization_id = 'org_b' AND role_name = 'log_reader';
\echo :LAST_ERROR_SQLSTATE
DELETE FROM audit.organization_role WHERE organization_id = 'org_b' AND role_name = 'probe';

------------------------------------------------------------------------------
-- Isolating an application table: public.patients, owned by a non-superuser.
------------------------------------------------------------------------------
CREATE TABLE public.patients (id integer PRIMARY KEY, organization_id text, name text);
INSERT INTO public.patients VALUES (1, 'org_a', 'Ann'), (2, 'org_a', 'Abe'), (3, 'org_b', 'Bea'), (4, NULL, 'Nobody');
ALTER TABLE public.patients OWNER TO regress_tn_clinic;
CREATE VIEW public.patients_named AS SELECT id, name FROM public.patients;
ALTER VIEW public.patients_named OWNER TO regress_tn_clinic;
GRANT USAGE ON SCHEMA audit TO regress_tn_clinic;
GRANT EXECUTE ON FUNCTION audit.enable_tenant_isolation(regclass, text, text, boolean),
                          audit.disable_tenant_isolation(regclass)
      TO regress_tn_clinic, regress_tn_a_writer;
-- A clinician role for tenant A's application, in org_a.
INSERT INTO audit.organization_role (organization_id, role_name, permissions)
VALUES ('org_a', 'clinician', '[{"resource": "public.patients", "action": "*"}]');

SET SESSION AUTHORIZATION regress_tn_clinic;
GRANT SELECT, INSERT ON public.patients TO regress_tn_a_writer, regress_tn_b_auditor, regress_tn_pool;
RESET SESSION AUTHORIZATION;
-- Before isolation, every tenant reads every row.
SET SESSION AUTHORIZATION regress_tn_b_auditor;
SELECT count(*) AS visible FROM public.patients;
RESET SESSION AUTHORIZATION;
-- Only the owner may isolate it; the column must exist; views are not tables.
SET SESSION AUTHORIZATION regress_tn_a_writer;
SELECT audit.enable_tenant_isolation('public.patients');
\echo :LAST_ERROR_SQLSTATE
RESET SESSION AUTHORIZATION;
SET SESSION AUTHORIZATION regress_tn_clinic;
SELECT audit.enable_tenant_isolation('public.patients', "column" => 'org');
\echo :LAST_ERROR_SQLSTATE
SELECT audit.enable_tenant_isolation('public.patients_named');
\echo :LAST_ERROR_SQLSTATE
SELECT audit.enable_tenant_isolation('public.patients', "column" => NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT audit.enable_tenant_isolation('public.patients');
-- FORCE: the owner is under the policies too, and acts for no organization.
SELECT count(*) AS owner_sees FROM public.patients;
RESET SESSION AUTHORIZATION;
SELECT relrowsecurity, relforcerowsecurity FROM pg_class WHERE oid = 'public.patients'::regclass;
SELECT polname, polcmd,
       ARRAY(SELECT CASE r WHEN 0 THEN 'public' ELSE r::regrole::text END FROM unnest(polroles) r) AS roles,
       coalesce(pg_get_expr(polqual, polrelid), pg_get_expr(polwithcheck, polrelid)) AS expr
FROM pg_policy WHERE polrelid = 'public.patients'::regclass ORDER BY 1;
-- The registry and its warnings: the owner can log in, the view has its
-- owner's rights, and the roles that get past every policy (the cluster's
-- own superusers left out).
SELECT table_name, organization_column, resource, shared_null_rows, rls_enabled, rls_forced, built_in, enabled_by
FROM audit.tenant_isolation_status WHERE table_name = 'public.patients'::regclass;
SELECT unnest(policies) AS policy FROM audit.tenant_isolation_status WHERE table_name = 'public.patients'::regclass;
SELECT table_name, w.warning
FROM audit.tenant_isolation_status, unnest(warnings) WITH ORDINALITY AS w(warning, n)
WHERE w.warning NOT LIKE 'role %' OR w.warning LIKE 'role regress\_tn\_%'
ORDER BY table_name::text, w.n;

-- Tenant A reads and writes only org_a's patients, and only with its
-- 'clinician' role; tenant B, without a permission on public.patients, nothing.
SET SESSION AUTHORIZATION regress_tn_a_writer;
SELECT * FROM public.patients ORDER BY id;
RESET SESSION AUTHORIZATION;
INSERT INTO audit.organization_role_assignment (organization_id, principal_id, role_name)
VALUES ('org_a', 'regress_tn_a_writer', 'clinician');
SET SESSION AUTHORIZATION regress_tn_a_writer;
SELECT * FROM public.patients ORDER BY id;
COPY public.patients TO STDOUT;
INSERT INTO public.patients VALUES (5, 'org_a', 'Ada');
INSERT INTO public.patients VALUES (6, 'org_b', 'Bob');
\echo :LAST_ERROR_SQLSTATE
COPY public.patients FROM STDIN;
7	org_b	Bill
\.
\echo :LAST_ERROR_SQLSTATE
SELECT audit.disable_tenant_isolation('public.patients');
\echo :LAST_ERROR_SQLSTATE
RESET SESSION AUTHORIZATION;
SET SESSION AUTHORIZATION regress_tn_b_auditor;
SELECT count(*) AS visible FROM public.patients;
RESET SESSION AUTHORIZATION;
-- The pooled role as bob of org_b, once bob may read patients.
INSERT INTO audit.organization_role (organization_id, role_name, permissions)
VALUES ('org_b', 'patient_reader', '[{"resource": "public.*", "action": "read"}]');
INSERT INTO audit.organization_role_assignment (organization_id, principal_id, role_name)
VALUES ('org_b', 'bob', 'patient_reader');
SET SESSION AUTHORIZATION regress_tn_pool;
SELECT count(*) AS visible FROM public.patients;
SELECT audit.set_organization('org_b', principal => 'bob');
SELECT * FROM public.patients ORDER BY id;
SELECT audit.reset_organization();
RESET SESSION AUTHORIZATION;
SELECT * FROM public.patients ORDER BY id;

-- A uuid organization column compares as text.
CREATE TABLE public.devices (id integer PRIMARY KEY, tenant uuid, label text);
INSERT INTO public.devices VALUES (1, '00000000-0000-0000-0000-0000000000aa', 'pump'),
  (2, '00000000-0000-0000-0000-0000000000aa', 'monitor'), (3, '00000000-0000-0000-0000-0000000000bb', 'scanner');
ALTER TABLE public.devices OWNER TO regress_tn_clinic;
INSERT INTO audit.organization_role (organization_id, role_name, permissions)
VALUES ('00000000-0000-0000-0000-0000000000aa', 'device_reader', '[{"resource": "clinic.*", "action": "read"}]');
INSERT INTO audit.organization_role_assignment (organization_id, principal_id, role_name)
VALUES ('00000000-0000-0000-0000-0000000000aa', 'alice', 'device_reader');
SET SESSION AUTHORIZATION regress_tn_clinic;
GRANT SELECT ON public.devices TO regress_tn_pool;
SELECT audit.enable_tenant_isolation('public.devices', "column" => 'tenant', resource => 'clinic.devices');
RESET SESSION AUTHORIZATION;
SELECT pg_get_expr(polqual, polrelid) AS using_expr FROM pg_policy
WHERE polrelid = 'public.devices'::regclass AND polname = 'audit_tenant_read';
SET SESSION AUTHORIZATION regress_tn_pool;
SELECT audit.set_organization('00000000-0000-0000-0000-0000000000aa', principal => 'alice');
SELECT * FROM public.devices ORDER BY id;
SELECT audit.set_organization('00000000-0000-0000-0000-0000000000bb', principal => 'alice');
SELECT count(*) AS visible FROM public.devices;
SELECT audit.reset_organization();
RESET SESSION AUTHORIZATION;

-- A char(n) organization column compares as char(n) (its index serves the
-- policy); a permissive policy that is not audit_db's is warned about.
CREATE TABLE public.wards (id integer PRIMARY KEY, organization_id char(8), name text);
INSERT INTO public.wards VALUES (1, 'org_a', 'north'), (2, 'org_b', 'south');
ALTER TABLE public.wards OWNER TO regress_tn_clinic;
SET SESSION AUTHORIZATION regress_tn_clinic;
GRANT SELECT ON public.wards TO regress_tn_pool;
SELECT audit.enable_tenant_isolation('public.wards', resource => 'clinic.wards');
CREATE POLICY wards_open ON public.wards FOR SELECT USING (name = 'south');
RESET SESSION AUTHORIZATION;
SELECT pg_get_expr(polqual, polrelid) AS using_expr FROM pg_policy
WHERE polrelid = 'public.wards'::regclass AND polname = 'audit_tenant_read';
SELECT w FROM audit.tenant_isolation_status, unnest(warnings) w
WHERE table_name = 'public.wards'::regclass AND w LIKE 'policy%';
INSERT INTO audit.organization_role (organization_id, role_name, permissions)
VALUES ('org_a', 'ward_reader', '[{"resource": "clinic.wards", "action": "read"}]');
INSERT INTO audit.organization_role_assignment (organization_id, principal_id, role_name)
VALUES ('org_a', 'alice', 'ward_reader');
SET SESSION AUTHORIZATION regress_tn_pool;
SELECT audit.set_organization('org_a', principal => 'alice');
SELECT id, name FROM public.wards ORDER BY id;
SELECT audit.reset_organization();
RESET SESSION AUTHORIZATION;
DROP TABLE public.wards;

-- More ways around the policies that the status view reports: a policy
-- altered after enabling, TRUNCATE granted, a partition with privileges of
-- its own, a login role that can SET ROLE to a BYPASSRLS role.
CREATE TABLE public.visits (id integer, organization_id text, at date) PARTITION BY RANGE (at);
CREATE TABLE public.visits_2024 PARTITION OF public.visits FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
SELECT audit.enable_tenant_isolation('public.visits');
ALTER POLICY audit_tenant_read ON public.visits USING (true);
GRANT TRUNCATE ON public.visits TO regress_tn_pool;
GRANT SELECT ON public.visits_2024 TO regress_tn_pool;
CREATE ROLE regress_tn_hidden_bypass NOLOGIN BYPASSRLS;
GRANT regress_tn_hidden_bypass TO regress_tn_pool;
SELECT w FROM audit.tenant_isolation_status, unnest(warnings) w
WHERE table_name = 'public.visits'::regclass AND (w LIKE '%regress_tn_pool%' OR w LIKE 'policy%' OR w LIKE 'partition%')
ORDER BY 1;
DROP TABLE public.visits;
DROP ROLE regress_tn_hidden_bypass;
SELECT count(*) AS registry_rows_left FROM audit.tenant_isolated_table WHERE table_name::text LIKE '%visits%';
-- A column with a nondeterministic collation would match organizations
-- case-insensitively: refused.
CREATE COLLATION regress_tn_ci (provider = icu, locale = 'und-u-ks-level2', deterministic = false);
CREATE TABLE public.ci_notes (id integer, organization_id text COLLATE regress_tn_ci);
SELECT audit.enable_tenant_isolation('public.ci_notes');
\echo :LAST_ERROR_SQLSTATE
DROP TABLE public.ci_notes;
DROP COLLATION regress_tn_ci;

-- Disabling drops the policies and row-level security (no other policy is
-- left), and the registry entry: the table is back to plain privileges.
SET SESSION AUTHORIZATION regress_tn_clinic;
SELECT audit.disable_tenant_isolation('public.patients');
RESET SESSION AUTHORIZATION;
SELECT relrowsecurity, relforcerowsecurity,
       (SELECT count(*) FROM pg_policy WHERE polrelid = 'public.patients'::regclass) AS policies
FROM pg_class WHERE oid = 'public.patients'::regclass;
SELECT table_name FROM audit.tenant_isolation_status WHERE NOT built_in ORDER BY table_name::text;
SET SESSION AUTHORIZATION regress_tn_b_auditor;
SELECT count(*) AS visible FROM public.patients;
RESET SESSION AUTHORIZATION;

------------------------------------------------------------------------------
-- DISCARD ALL (a pooler handing the connection on) forgets set_organization().
------------------------------------------------------------------------------
SET SESSION AUTHORIZATION regress_tn_pool;
SELECT audit.set_organization('org_a', principal => 'alice');
RESET SESSION AUTHORIZATION;
SET SESSION AUTHORIZATION regress_tn_pool;
SELECT audit.current_organization(), audit.current_principal();
DISCARD ALL;
SET client_min_messages = warning;
SET TimeZone = 'UTC';
SET SESSION AUTHORIZATION regress_tn_pool;
SELECT audit.current_organization(), audit.current_principal();
RESET SESSION AUTHORIZATION;

------------------------------------------------------------------------------
-- Every change of access, roles, assignments and isolation is in the log,
-- for its organization (NULL: '*' or a table), by the principal who made it.
------------------------------------------------------------------------------
SELECT action, organization_id,
       CASE WHEN principal_id = session_user THEN '(superuser)' ELSE principal_id END AS principal_id,
       target_resource_type, target_resource_id
FROM audit.audit_log
WHERE action LIKE 'organization\_%' OR action LIKE 'tenant\_isolation.%'
ORDER BY id;
-- Details carry the old and new rows.
SELECT details->'old'->>'may_set_principal' AS old_flag, details->'new'->>'may_set_principal' AS new_flag
FROM audit.audit_log WHERE action = 'organization_access.update';
SELECT details->'new'->>'permissions' AS new_permissions, details->'old'->>'permissions' AS old_permissions
FROM audit.audit_log WHERE action = 'organization_role.update' ORDER BY id LIMIT 1;

-- Cleanup.
SET SESSION AUTHORIZATION regress_tn_clinic;
SELECT audit.disable_tenant_isolation('public.devices');
RESET SESSION AUTHORIZATION;
DROP VIEW public.regress_tn_log_invoker, public.regress_tn_log_definer, public.patients_named;
DROP TABLE public.patients, public.devices;
DROP SCHEMA regress_tn_evil CASCADE;
REVOKE ALL ON SCHEMA audit FROM regress_tn_clinic;
REVOKE ALL ON FUNCTION audit.enable_tenant_isolation(regclass, text, text, boolean),
                       audit.disable_tenant_isolation(regclass)
       FROM regress_tn_clinic, regress_tn_a_writer;
DELETE FROM audit.organization_access;
DROP ROLE regress_tn_a_writer, regress_tn_b_auditor, regress_tn_pool, regress_tn_a_admin,
          regress_tn_platform, regress_tn_bypass, regress_tn_clinic;
