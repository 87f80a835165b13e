-- Tenant isolation and organization roles (src/tenancy.c,
-- src/organization_roles.c; the model is in docs/tenancy.md).
--
-- A session acts for one organization at a time, taken from
-- audit.organization_access (database role -> organization), never from a
-- setting.  Isolated tables carry row-level-security policies comparing
-- their organization column with audit.current_organization() and asking
-- audit.session_has_permission(resource, 'read' | 'write').

-- Members of audit_db_all_organizations (05_roles.sql) have a policy of
-- their own that admits every row.

-- The organization context -------------------------------------------------

CREATE FUNCTION audit.current_organization() RETURNS text
LANGUAGE C STABLE PARALLEL RESTRICTED
AS 'MODULE_PATHNAME', 'audit_current_organization_sql';
COMMENT ON FUNCTION audit.current_organization() IS
  'The organization the session acts for (from audit.organization_access and audit.set_organization()); NULL: none';

CREATE FUNCTION audit.current_principal() RETURNS text
LANGUAGE C STABLE PARALLEL RESTRICTED
AS 'MODULE_PATHNAME', 'audit_current_principal_sql';
COMMENT ON FUNCTION audit.current_principal() IS
  'The principal whose organization roles apply: set by audit.set_organization(principal => ...), else the session role''s name';

CREATE FUNCTION audit.set_organization(organization text, principal text DEFAULT NULL,
                                       "local" boolean DEFAULT false) RETURNS text
LANGUAGE C VOLATILE PARALLEL UNSAFE
AS 'MODULE_PATHNAME', 'audit_set_organization_sql';
COMMENT ON FUNCTION audit.set_organization(text, text, boolean) IS
  'Act for one of the organizations the session''s role is mapped to (optionally as a principal; local: until the transaction ends)';

CREATE FUNCTION audit.reset_organization() RETURNS void
LANGUAGE C VOLATILE PARALLEL UNSAFE
AS 'MODULE_PATHNAME', 'audit_reset_organization_sql';
COMMENT ON FUNCTION audit.reset_organization() IS
  'Undo audit.set_organization(): back to what the role''s mapping gives by itself';

CREATE FUNCTION audit.available_organizations()
RETURNS TABLE (organization_id text, may_set_principal boolean, current boolean)
LANGUAGE C STABLE PARALLEL RESTRICTED
AS 'MODULE_PATHNAME', 'audit_available_organizations_sql';
COMMENT ON FUNCTION audit.available_organizations() IS
  'Organizations the session''s role may act for (''*'': any), and which one it acts for now';

-- Who may act for which organization: written only by the extension's owner.
CREATE TABLE audit.organization_access (
  database_role     regrole      NOT NULL,
  organization_id   varchar(255) COLLATE "C" NOT NULL CHECK (organization_id <> ''),
  may_set_principal boolean      NOT NULL DEFAULT false,
  granted_by        text         NOT NULL DEFAULT session_user,
  granted_at        timestamptz  NOT NULL DEFAULT now(),
  PRIMARY KEY (database_role, organization_id)
);
COMMENT ON TABLE audit.organization_access IS
  'Database roles (and their members) that may act for an organization; ''*'': any organization, one at a time';
COMMENT ON COLUMN audit.organization_access.may_set_principal IS
  'The role may name the principal it acts as (audit.set_organization(principal => ...)): pooled application roles';

CREATE FUNCTION audit.grant_organization_access(database_role regrole, organization text,
                                                may_set_principal boolean DEFAULT false)
RETURNS void
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
  INSERT INTO audit.organization_access AS a (database_role, organization_id, may_set_principal)
  VALUES (database_role, organization, may_set_principal)
  ON CONFLICT ON CONSTRAINT organization_access_pkey
  DO UPDATE SET may_set_principal = EXCLUDED.may_set_principal
  WHERE a.may_set_principal IS DISTINCT FROM EXCLUDED.may_set_principal;
$$;
COMMENT ON FUNCTION audit.grant_organization_access(regrole, text, boolean) IS
  'Let a database role (and its members) act for an organization (''*'': any); logged';

CREATE FUNCTION audit.revoke_organization_access(database_role regrole, organization text)
RETURNS boolean
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
  WITH gone AS (
    DELETE FROM audit.organization_access a
     WHERE a.database_role = revoke_organization_access.database_role AND a.organization_id = organization
    RETURNING 1)
  SELECT EXISTS (SELECT FROM gone);
$$;
COMMENT ON FUNCTION audit.revoke_organization_access(regrole, text) IS
  'Take back an organization from a database role; true if it had it; logged';

-- Organization roles ---------------------------------------------------------

CREATE TABLE audit.organization_role (
  organization_id varchar(255) COLLATE "C" NOT NULL
                  CHECK (organization_id <> '' AND organization_id <> '*'),
  role_name       varchar(100) COLLATE "C" NOT NULL CHECK (role_name <> ''),
  description     text,
  -- [{"resource": "audit.audit_log", "action": "read"}, ...]; '*' and 'prefix*' match.
  permissions     jsonb        NOT NULL DEFAULT '[]',
  -- Names of roles of the same organization whose permissions this one adds.
  inherits        text[]       COLLATE "C" NOT NULL DEFAULT '{}',
  created_by      text         NOT NULL DEFAULT audit.current_principal(),
  created_at      timestamptz  NOT NULL DEFAULT now(),
  PRIMARY KEY (organization_id, role_name)
);
COMMENT ON TABLE audit.organization_role IS
  'Roles inside an organization: permissions ({resource, action} patterns) and inherited roles (no cycles)';

CREATE TABLE audit.organization_role_assignment (
  organization_id varchar(255) COLLATE "C" NOT NULL,
  principal_id    varchar(255) COLLATE "C" NOT NULL CHECK (principal_id <> ''),
  role_name       varchar(100) COLLATE "C" NOT NULL,
  granted_by      text         NOT NULL DEFAULT audit.current_principal(),
  granted_at      timestamptz  NOT NULL DEFAULT now(),
  PRIMARY KEY (organization_id, principal_id, role_name),
  FOREIGN KEY (organization_id, role_name) REFERENCES audit.organization_role
    ON UPDATE CASCADE ON DELETE RESTRICT
);
COMMENT ON TABLE audit.organization_role_assignment IS
  'Organization roles held by principals (application users, or database role names)';

CREATE FUNCTION audit.check_organization_role() RETURNS trigger
LANGUAGE C AS 'MODULE_PATHNAME', 'audit_check_organization_role';
CREATE FUNCTION audit.log_organization_change() RETURNS trigger
LANGUAGE C AS 'MODULE_PATHNAME', 'audit_log_organization_change';

-- The statement trigger serializes role changes before any row is locked;
-- the BEFORE row trigger checks each row's shape; the AFTER row trigger
-- checks inheritance once the whole statement is done.
CREATE TRIGGER organization_role_serialize
  BEFORE INSERT OR UPDATE OR DELETE ON audit.organization_role
  FOR EACH STATEMENT EXECUTE FUNCTION audit.check_organization_role();
CREATE TRIGGER organization_role_check
  BEFORE INSERT OR UPDATE ON audit.organization_role
  FOR EACH ROW EXECUTE FUNCTION audit.check_organization_role();
CREATE TRIGGER organization_role_check_inheritance
  AFTER INSERT OR UPDATE OR DELETE ON audit.organization_role
  FOR EACH ROW EXECUTE FUNCTION audit.check_organization_role();
CREATE TRIGGER organization_role_log AFTER INSERT OR UPDATE OR DELETE ON audit.organization_role
  FOR EACH ROW EXECUTE FUNCTION audit.log_organization_change();
CREATE TRIGGER organization_role_log_truncate AFTER TRUNCATE ON audit.organization_role
  FOR EACH STATEMENT EXECUTE FUNCTION audit.log_organization_change();
CREATE TRIGGER organization_role_assignment_log AFTER INSERT OR UPDATE OR DELETE ON audit.organization_role_assignment
  FOR EACH ROW EXECUTE FUNCTION audit.log_organization_change();
CREATE TRIGGER organization_role_assignment_log_truncate AFTER TRUNCATE ON audit.organization_role_assignment
  FOR EACH STATEMENT EXECUTE FUNCTION audit.log_organization_change();
CREATE TRIGGER organization_access_log AFTER INSERT OR UPDATE OR DELETE ON audit.organization_access
  FOR EACH ROW EXECUTE FUNCTION audit.log_organization_change();
CREATE TRIGGER organization_access_log_truncate AFTER TRUNCATE ON audit.organization_access
  FOR EACH STATEMENT EXECUTE FUNCTION audit.log_organization_change();
-- ALWAYS: session_replication_role = replica must not skip the checks, the log or the invalidation.
ALTER TABLE audit.organization_role ENABLE ALWAYS TRIGGER organization_role_serialize;
ALTER TABLE audit.organization_role ENABLE ALWAYS TRIGGER organization_role_check;
ALTER TABLE audit.organization_role ENABLE ALWAYS TRIGGER organization_role_check_inheritance;
ALTER TABLE audit.organization_role ENABLE ALWAYS TRIGGER organization_role_log;
ALTER TABLE audit.organization_role ENABLE ALWAYS TRIGGER organization_role_log_truncate;
ALTER TABLE audit.organization_role_assignment ENABLE ALWAYS TRIGGER organization_role_assignment_log;
ALTER TABLE audit.organization_role_assignment ENABLE ALWAYS TRIGGER organization_role_assignment_log_truncate;
ALTER TABLE audit.organization_access ENABLE ALWAYS TRIGGER organization_access_log;
ALTER TABLE audit.organization_access ENABLE ALWAYS TRIGGER organization_access_log_truncate;

-- Permission checks ------------------------------------------------------------

CREATE FUNCTION audit.has_permission(principal text, organization text, resource text, action text)
RETURNS boolean
LANGUAGE C STABLE STRICT PARALLEL RESTRICTED
AS 'MODULE_PATHNAME', 'audit_has_permission_sql';
COMMENT ON FUNCTION audit.has_permission(text, text, text, text) IS
  'Whether the principal''s organization roles (with inheritance) allow action on resource; cached per backend';

CREATE FUNCTION audit.session_has_permission(resource text, action text) RETURNS boolean
LANGUAGE C STABLE STRICT PARALLEL RESTRICTED
AS 'MODULE_PATHNAME', 'audit_session_has_permission_sql';
COMMENT ON FUNCTION audit.session_has_permission(text, text) IS
  'audit.has_permission() for the session''s principal and organization (false when it acts for none); used by policies';

CREATE FUNCTION audit.user_permissions(principal text DEFAULT NULL, organization text DEFAULT NULL)
RETURNS TABLE (resource text, action text, role_name text, inherited_via text[])
LANGUAGE C STABLE PARALLEL RESTRICTED
AS 'MODULE_PATHNAME', 'audit_user_permissions_sql';
COMMENT ON FUNCTION audit.user_permissions(text, text) IS
  'Effective permissions of a principal in an organization (NULL: the session''s), with the role path each comes through';

-- Isolating tables -------------------------------------------------------------

CREATE TABLE audit.tenant_isolated_table (
  table_name          regclass    PRIMARY KEY,
  organization_column name        NOT NULL,
  resource            text        NOT NULL,
  shared_null_rows    boolean     NOT NULL,
  built_in            boolean     NOT NULL DEFAULT false,
  -- The tenant policies as created (audit.tenant_policy_definitions()), to
  -- tell when one was altered afterwards.
  policy_definitions  jsonb       NOT NULL DEFAULT '{}',
  enabled_by          text        NOT NULL,
  enabled_at          timestamptz NOT NULL
);
COMMENT ON TABLE audit.tenant_isolated_table IS
  'Tables audit.enable_tenant_isolation() put policies on (built_in: the extension''s own)';

-- The tenant policies of a table as they are now: name -> command,
-- roles and expressions.
CREATE FUNCTION audit.tenant_policy_definitions(tbl regclass) RETURNS jsonb
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
  SELECT coalesce(jsonb_object_agg(p.polname, jsonb_build_object(
           'command', p.polcmd, 'permissive', p.polpermissive,
           'roles', (SELECT jsonb_agg(CASE WHEN r = 0 THEN 'public' ELSE r::regrole::text END ORDER BY r)
                       FROM unnest(p.polroles) r),
           'using', pg_get_expr(p.polqual, p.polrelid),
           'check', pg_get_expr(p.polwithcheck, p.polrelid))), '{}')
    FROM pg_policy p
   WHERE p.polrelid = tbl
     AND p.polname IN ('audit_tenant_read', 'audit_tenant_insert', 'audit_tenant_update', 'audit_tenant_delete',
                       'audit_tenant_shared_read', 'audit_all_organizations');
$$;

-- A dropped table leaves the registry with it.
CREATE FUNCTION audit.forget_dropped_isolated_tables() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  IF to_regclass('audit.tenant_isolated_table') IS NULL THEN
    RETURN;                     -- the extension itself is being dropped
  END IF;
  DELETE FROM audit.tenant_isolated_table t
   USING pg_event_trigger_dropped_objects() d
   WHERE d.classid = 'pg_class'::regclass AND d.objsubid = 0 AND t.table_name::oid = d.objid;
END
$$;
CREATE EVENT TRIGGER audit_db_forget_dropped_tables ON sql_drop
  WHEN TAG IN ('DROP TABLE', 'DROP SCHEMA', 'DROP OWNED')
  EXECUTE FUNCTION audit.forget_dropped_isolated_tables();

CREATE FUNCTION audit.enable_tenant_isolation(tbl regclass, "column" text DEFAULT 'organization_id',
                                              resource text DEFAULT NULL,
                                              shared_null_rows boolean DEFAULT false)
RETURNS void
LANGUAGE C VOLATILE
SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'audit_enable_tenant_isolation_sql';
COMMENT ON FUNCTION audit.enable_tenant_isolation(regclass, text, text, boolean) IS
  'ENABLE and FORCE row-level security on a table with per-organization read and write policies; logged';

CREATE FUNCTION audit.disable_tenant_isolation(tbl regclass) RETURNS void
LANGUAGE C VOLATILE
SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'audit_disable_tenant_isolation_sql';
COMMENT ON FUNCTION audit.disable_tenant_isolation(regclass) IS
  'Drop a table''s tenant policies (and row-level security when no other policy is left); logged';

-- What could let a role past a table's policies.
CREATE FUNCTION audit.tenant_isolation_warnings(tbl regclass) RETURNS text[]
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
  WITH c AS (SELECT * FROM pg_class WHERE oid = tbl),
  reg AS (SELECT * FROM audit.tenant_isolated_table WHERE table_name = tbl),
  -- Login roles, and the roles each can act as (SET ROLE included).
  reach AS (SELECT l.rolname AS login, r.oid, r.rolname, r.rolsuper, r.rolbypassrls
              FROM pg_roles l JOIN pg_roles r ON pg_has_role(l.oid, r.oid, 'MEMBER')
             WHERE l.rolcanlogin),
  w(o, w) AS (
    SELECT 1, 'row-level security is disabled' FROM c WHERE NOT relrowsecurity
    UNION ALL
    SELECT 2, format('row-level security is not forced: the owner %I bypasses the policies', pg_get_userbyid(relowner))
      FROM c WHERE NOT relforcerowsecurity
    UNION ALL
    SELECT 3, format('policy %s is missing', n)
      FROM unnest(ARRAY['audit_tenant_read', 'audit_tenant_insert', 'audit_tenant_update', 'audit_tenant_delete',
                        'audit_all_organizations']) n
     WHERE NOT EXISTS (SELECT FROM pg_policy p WHERE p.polrelid = tbl AND p.polname = n)
    UNION ALL
    SELECT 3, format('policy %s was changed after audit.enable_tenant_isolation()', d.key)
      FROM reg, jsonb_each(reg.policy_definitions) d
     WHERE audit.tenant_policy_definitions(tbl) ? d.key
       AND audit.tenant_policy_definitions(tbl) -> d.key IS DISTINCT FROM d.value
    UNION ALL
    SELECT 3, format('policy %I is not audit_db''s: a permissive policy adds to what the tenant policies allow', p.polname)
      FROM pg_policy p
     WHERE p.polrelid = tbl AND p.polpermissive
       AND p.polname NOT IN ('audit_tenant_read', 'audit_tenant_insert', 'audit_tenant_update', 'audit_tenant_delete',
                             'audit_tenant_shared_read', 'audit_all_organizations')
    UNION ALL
    SELECT 3, format('column %I has a nondeterministic collation: organizations match case- or accent-insensitively',
                     a.attname)
      FROM reg JOIN pg_attribute a ON a.attrelid = tbl AND a.attname = reg.organization_column
      JOIN pg_collation co ON co.oid = a.attcollation
     WHERE NOT co.collisdeterministic
    UNION ALL
    SELECT DISTINCT 4, CASE WHEN x.login = x.rolname
                            THEN format('login role %I owns the table: connected as it, an application can switch the policies off',
                                        x.login)
                            ELSE format('login role %I has the owner''s rights (member of %I): connected as it, an application can switch the policies off',
                                        x.login, x.rolname) END
      FROM c, reach x WHERE x.oid = c.relowner AND NOT x.rolsuper
       AND NOT EXISTS (SELECT FROM pg_roles s WHERE s.rolname = x.login AND s.rolsuper)
    UNION ALL
    SELECT DISTINCT 5, CASE WHEN x.login = x.rolname
                            THEN format('role %I bypasses row-level security (%s)', x.rolname,
                                        CASE WHEN x.rolsuper THEN 'SUPERUSER' ELSE 'BYPASSRLS' END)
                            ELSE format('login role %I can SET ROLE to %I, which bypasses row-level security (%s)',
                                        x.login, x.rolname, CASE WHEN x.rolsuper THEN 'SUPERUSER' ELSE 'BYPASSRLS' END) END
      FROM reach x
     WHERE (x.rolsuper OR x.rolbypassrls)
       AND NOT EXISTS (SELECT FROM pg_roles s WHERE s.rolname = x.login AND s.rolsuper AND x.login <> x.rolname)
    UNION ALL
    SELECT DISTINCT 6, format('login role %I reads every organization (member of audit_db_all_organizations)', x.login)
      FROM reach x
     WHERE x.rolname = 'audit_db_all_organizations'
       AND NOT EXISTS (SELECT FROM pg_roles s WHERE s.rolname = x.login AND s.rolsuper)
    UNION ALL
    SELECT DISTINCT 7, format('role %I may TRUNCATE the table, which skips row-level security', g.rolname)
      FROM c, aclexplode(c.relacl) a JOIN pg_roles g ON g.oid = a.grantee
     WHERE a.privilege_type = 'TRUNCATE' AND a.grantee <> c.relowner
    UNION ALL
    SELECT DISTINCT 7, format('%s %s has privileges of its own but no tenant policies: reading it directly skips them',
                              CASE ch.relispartition WHEN true THEN 'partition' ELSE 'child table' END, ch.oid::regclass)
      FROM pg_inherits i JOIN pg_class ch ON ch.oid = i.inhrelid, aclexplode(ch.relacl) a
     WHERE i.inhparent = tbl AND a.grantee <> ch.relowner
       AND NOT EXISTS (SELECT FROM pg_policy p WHERE p.polrelid = ch.oid AND p.polname = 'audit_tenant_read')
    UNION ALL
    SELECT DISTINCT 8, CASE v.relkind
             WHEN 'm' THEN format('materialized view %s holds a copy of the rows without their policies', v.oid::regclass)
             ELSE format('view %s reads the table with its owner''s rights (security_invoker is off)', v.oid::regclass) END
      FROM pg_depend d
      JOIN pg_rewrite rw ON rw.oid = d.objid
      JOIN pg_class v ON v.oid = rw.ev_class
     WHERE d.classid = 'pg_rewrite'::regclass AND d.refclassid = 'pg_class'::regclass AND d.refobjid = tbl
       AND v.oid <> tbl
       AND (v.relkind = 'm' OR NOT EXISTS (SELECT FROM pg_options_to_table(v.reloptions)
                                           WHERE option_name = 'security_invoker'
                                             AND lower(option_value) IN ('true', 'on', '1', 'yes')))
    UNION ALL
    SELECT 9, format('function %s is SECURITY DEFINER and owned by %I, who bypasses the policies',
                     p.oid::regprocedure, o.rolname)
      FROM c, pg_proc p JOIN pg_roles o ON o.oid = p.proowner
     WHERE p.prosecdef
       AND p.pronamespace NOT IN ('pg_catalog'::regnamespace, 'information_schema'::regnamespace)
       AND (o.rolsuper OR o.rolbypassrls OR (p.proowner = c.relowner AND NOT c.relforcerowsecurity))
       AND NOT EXISTS (SELECT FROM pg_depend e JOIN pg_extension x ON x.oid = e.refobjid
                        WHERE e.classid = 'pg_proc'::regclass AND e.objid = p.oid AND e.deptype = 'e'
                          AND x.extname = 'audit_db')
  )
  SELECT coalesce(array_agg(w ORDER BY o, w), '{}') FROM w;
$$;
COMMENT ON FUNCTION audit.tenant_isolation_warnings(regclass) IS
  'Ways a role could get past the tenant policies of a table: RLS off or not forced, owners that log in, bypassing roles, views, SECURITY DEFINER functions';

CREATE VIEW audit.tenant_isolation_status AS
SELECT t.table_name,
       t.organization_column,
       t.resource,
       t.shared_null_rows,
       coalesce(c.relrowsecurity, false) AS rls_enabled,
       coalesce(c.relforcerowsecurity, false) AS rls_forced,
       ARRAY(SELECT p.polname::text FROM pg_catalog.pg_policy p WHERE p.polrelid = t.table_name ORDER BY 1) AS policies,
       CASE WHEN c.oid IS NULL THEN ARRAY['the table no longer exists']
            ELSE audit.tenant_isolation_warnings(t.table_name) END AS warnings,
       t.built_in,
       t.enabled_by,
       t.enabled_at
  FROM audit.tenant_isolated_table t
  LEFT JOIN pg_catalog.pg_class c ON c.oid = t.table_name;
COMMENT ON VIEW audit.tenant_isolation_status IS
  'Tables under tenant isolation, their policies, and warnings about ways around them';

-- The extension's own tables are isolated from the start.
SELECT audit.enable_tenant_isolation('audit.audit_log');
SELECT audit.enable_tenant_isolation('audit.audit_preset', shared_null_rows => true);
SELECT audit.enable_tenant_isolation('audit.organization_role');
SELECT audit.enable_tenant_isolation('audit.organization_role_assignment');
SELECT audit.enable_tenant_isolation('audit.audit_integrity_log');
SELECT audit.enable_tenant_isolation('audit.redaction_request');
SELECT audit.enable_tenant_isolation('audit.redacted_row');

SELECT pg_catalog.pg_extension_config_dump('audit.organization_access', '');
SELECT pg_catalog.pg_extension_config_dump('audit.organization_role', '');
SELECT pg_catalog.pg_extension_config_dump('audit.organization_role_assignment', '');
SELECT pg_catalog.pg_extension_config_dump('audit.tenant_isolated_table', 'WHERE NOT built_in');
