-- The extension's roles, all NOLOGIN (grant them to login roles):
--   audit_db_writer             may log events (INSERT, audit.log_event) and nothing else
--   audit_db_auditor            may read the audit trail and presets, verify, and write nothing
--   audit_db_tenant_admin       may manage organization roles and assignments (of its organization)
--   audit_db_privacy_officer    may pseudonymize, reverse pseudonyms, export and erase data
--                               subjects in every organization (src/sql/69_gdpr.sql)
--   audit_db_all_organizations  reads and writes every organization's rows (platform auditors,
--                               single-tenant deployments; a non-superuser owner of the
--                               extension's tables or audit_db.worker_role needs it too)
-- Their privileges are granted by 90_privileges.sql. The roles are
-- cluster-wide: created if missing. DROP EXTENSION leaves them (drop them by
-- hand once no database uses them).
DO $$
DECLARE
  r text;
BEGIN
  FOREACH r IN ARRAY ARRAY['audit_db_writer', 'audit_db_auditor', 'audit_db_tenant_admin',
                           'audit_db_all_organizations', 'audit_db_privacy_officer'] LOOP
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = r) THEN
      EXECUTE format('CREATE ROLE %I NOLOGIN', r);
    END IF;
  END LOOP;
END
$$;
