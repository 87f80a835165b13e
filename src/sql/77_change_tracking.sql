-- Change auditing for any table (src/change_tracking.c): audit.track_table()
-- puts two triggers on a table (row-level AFTER INSERT/UPDATE/DELETE, and
-- statement-level AFTER TRUNCATE) that write one audit event per changed
-- row, with the diff, into audit.audit_log: the same chain, tenant
-- isolation and retention as every other event. DDL on a tracked table is
-- logged by event triggers; the tracking triggers cannot be dropped or
-- disabled except through audit.untrack_table(), and every switch on or off
-- is logged ('change_tracking.enable' / '.disable', reserved actions).
-- Only the extension's owner may call track_table() / untrack_table() until
-- it grants EXECUTE on them: that grant is what "allowed to" means.

CREATE TABLE audit.tracked_table (
  table_name          regclass    PRIMARY KEY,
  operations          text[]      NOT NULL,
  -- Columns by attribute number: they survive renames; added columns are
  -- tracked (not excluded, not hashed) unless named later.
  excluded_attnums    int2[]      NOT NULL DEFAULT '{}',
  hashed_attnums      int2[]      NOT NULL DEFAULT '{}',
  full_rows           boolean     NOT NULL DEFAULT false,
  data_classification audit.data_classification NOT NULL DEFAULT 'CONFIDENTIAL',
  retention_policy    varchar(50) NOT NULL DEFAULT 'standard',
  organization_attnum int2,                    -- the row's organization comes from this column ...
  organization_id     varchar(255),            -- ... or is this fixed value (else the session's)
  tracked_by          name        NOT NULL DEFAULT session_user,
  tracked_at          timestamptz NOT NULL DEFAULT now(),
  CONSTRAINT tracked_table_operations CHECK (operations <@ ARRAY['INSERT', 'UPDATE', 'DELETE', 'TRUNCATE']
                                             AND cardinality(operations) > 0),
  CONSTRAINT tracked_table_one_organization CHECK (organization_attnum IS NULL OR organization_id IS NULL)
);
COMMENT ON TABLE audit.tracked_table IS
  'Tables whose changes are audited (audit.track_table()); columns by attribute number';
SELECT pg_catalog.pg_extension_config_dump('audit.tracked_table', '');

CREATE FUNCTION audit.record_change() RETURNS trigger
LANGUAGE C
AS 'MODULE_PATHNAME', 'audit_record_change';
COMMENT ON FUNCTION audit.record_change() IS
  'Trigger of tracked tables: one audit event per changed row (and per TRUNCATE), with the diff';

-- Internal: log a change-tracking event (reserved action) as the extension's owner.
CREATE FUNCTION audit.record_tracking_event(action text, tbl text, details jsonb) RETURNS void
LANGUAGE C VOLATILE
AS 'MODULE_PATHNAME', 'audit_record_tracking_event_sql';

-- Attribute numbers of named columns of a table (42703 for an unknown one).
CREATE FUNCTION audit.column_attnums(tbl regclass, columns text[]) RETURNS int2[]
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  c text;
  n int2;
  result int2[] := '{}';
BEGIN
  FOREACH c IN ARRAY coalesce(columns, '{}') LOOP
    SELECT a.attnum INTO n FROM pg_attribute a
     WHERE a.attrelid = tbl AND a.attname = c AND a.attnum > 0 AND NOT a.attisdropped;
    IF NOT FOUND THEN
      RAISE EXCEPTION 'column % of % does not exist', quote_ident(c), tbl USING ERRCODE = '42703',
        HINT = 'Name columns as they are in the table (case-sensitive).';
    END IF;
    result := result || n;
  END LOOP;
  RETURN result;
END
$$;

CREATE FUNCTION audit.track_table(tbl regclass,
                                  operations text[] DEFAULT ARRAY['INSERT', 'UPDATE', 'DELETE', 'TRUNCATE'],
                                  exclude_columns text[] DEFAULT '{}', hash_columns text[] DEFAULT '{}',
                                  full_rows boolean DEFAULT false,
                                  data_classification text DEFAULT 'CONFIDENTIAL',
                                  retention_policy text DEFAULT 'standard',
                                  organization_column text DEFAULT NULL, organization_id text DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  ops text[] := ARRAY(SELECT DISTINCT upper(o) FROM unnest(operations) o ORDER BY 1);
  excluded int2[];
  hashed int2[];
  org_attnum int2;
  kind "char";
BEGIN
  IF tbl IS NULL THEN
    RAISE EXCEPTION 'a table is needed' USING ERRCODE = '22004', HINT = 'audit.track_table(''schema.table'').';
  END IF;
  SELECT c.relkind INTO kind FROM pg_class c WHERE c.oid = tbl;
  IF kind NOT IN ('r', 'p') THEN
    RAISE EXCEPTION '% is not a table', tbl USING ERRCODE = '42809',
      HINT = 'Views, foreign tables and materialized views cannot be tracked.';
  END IF;
  IF (SELECT c.relnamespace FROM pg_class c WHERE c.oid = tbl) = 'audit'::regnamespace THEN
    RAISE EXCEPTION 'the tables of audit_db cannot be tracked' USING ERRCODE = '0A000',
      HINT = 'Their changes are audited by the extension itself.';
  END IF;
  IF operations IS NULL OR cardinality(ops) = 0
     OR NOT ops <@ ARRAY['DELETE', 'INSERT', 'TRUNCATE', 'UPDATE'] THEN
    RAISE EXCEPTION 'operations must be some of INSERT, UPDATE, DELETE, TRUNCATE' USING ERRCODE = '22023',
      HINT = 'For example ARRAY[''INSERT'', ''UPDATE''].';
  END IF;
  IF data_classification IS NULL OR NOT audit.is_data_classification(data_classification) THEN
    RAISE EXCEPTION 'unknown data classification %', coalesce(quote_literal(data_classification), 'NULL')
      USING ERRCODE = '22023', HINT = 'One of: PUBLIC, INTERNAL, CONFIDENTIAL, PHI, FINANCIAL.';
  END IF;
  IF organization_column IS NOT NULL AND organization_id IS NOT NULL THEN
    RAISE EXCEPTION 'give organization_column or organization_id, not both' USING ERRCODE = '22023',
      HINT = 'organization_column: each row names its organization; organization_id: one for all rows.';
  END IF;
  excluded := audit.column_attnums(tbl, exclude_columns);
  hashed := audit.column_attnums(tbl, hash_columns);
  IF excluded && hashed THEN
    RAISE EXCEPTION 'a column cannot be both excluded and hashed' USING ERRCODE = '22023',
      HINT = 'Excluded columns are left out; hashed ones are stored as SHA-256.';
  END IF;
  IF organization_column IS NOT NULL THEN
    org_attnum := (audit.column_attnums(tbl, ARRAY[organization_column]))[1];
  END IF;

  INSERT INTO audit.tracked_table AS t (table_name, operations, excluded_attnums, hashed_attnums, full_rows,
                                        data_classification, retention_policy, organization_attnum, organization_id)
  VALUES (tbl, ops, excluded, hashed, coalesce(full_rows, false), data_classification,
          coalesce(retention_policy, 'standard'), org_attnum, track_table.organization_id)
  ON CONFLICT ON CONSTRAINT tracked_table_pkey DO UPDATE
     SET operations = EXCLUDED.operations, excluded_attnums = EXCLUDED.excluded_attnums,
         hashed_attnums = EXCLUDED.hashed_attnums, full_rows = EXCLUDED.full_rows,
         data_classification = EXCLUDED.data_classification, retention_policy = EXCLUDED.retention_policy,
         organization_attnum = EXCLUDED.organization_attnum, organization_id = EXCLUDED.organization_id,
         tracked_by = session_user, tracked_at = now();

  IF NOT EXISTS (SELECT FROM pg_trigger WHERE tgrelid = tbl AND tgname = 'audit_db_changes') THEN
    EXECUTE format('CREATE TRIGGER audit_db_changes AFTER INSERT OR UPDATE OR DELETE ON %s'
                   ' FOR EACH ROW EXECUTE FUNCTION audit.record_change()', tbl);
    EXECUTE format('CREATE TRIGGER audit_db_truncate AFTER TRUNCATE ON %s'
                   ' FOR EACH STATEMENT EXECUTE FUNCTION audit.record_change()', tbl);
    -- ALWAYS: session_replication_role = replica does not silence them.
    EXECUTE format('ALTER TABLE %s ENABLE ALWAYS TRIGGER audit_db_changes', tbl);
    EXECUTE format('ALTER TABLE %s ENABLE ALWAYS TRIGGER audit_db_truncate', tbl);
  END IF;
  PERFORM audit.record_tracking_event('change_tracking.enable', tbl::text,
            (SELECT jsonb_build_object('operations', t.operations,
                                       'excluded_columns', audit.column_names(t.table_name, t.excluded_attnums),
                                       'hashed_columns', audit.column_names(t.table_name, t.hashed_attnums),
                                       'full_rows', t.full_rows, 'data_classification', t.data_classification,
                                       'retention_policy', t.retention_policy)
               FROM audit.tracked_table t WHERE t.table_name = tbl));
END
$$;
COMMENT ON FUNCTION audit.track_table(regclass, text[], text[], text[], boolean, text, text, text, text) IS
  'Audit every change of a table: operations, excluded and hashed columns, full rows or diffs, classification, '
  'retention, organization (column or fixed); again to change the options';

CREATE FUNCTION audit.untrack_table(tbl regclass) RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  -- The registry row goes first: the event trigger lets the triggers go then.
  DELETE FROM audit.tracked_table t WHERE t.table_name = tbl;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'table % is not tracked', tbl USING ERRCODE = '55000', HINT = 'See audit.tracked_tables.';
  END IF;
  EXECUTE format('DROP TRIGGER IF EXISTS audit_db_changes ON %s', tbl);
  EXECUTE format('DROP TRIGGER IF EXISTS audit_db_truncate ON %s', tbl);
  PERFORM audit.record_tracking_event('change_tracking.disable', tbl::text, '{}');
END
$$;
COMMENT ON FUNCTION audit.untrack_table(regclass) IS 'Stop auditing a table''s changes (logged)';

-- Names of attribute numbers (dropped columns left out).
CREATE FUNCTION audit.column_names(tbl regclass, attnums int2[]) RETURNS text[]
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
  SELECT coalesce(array_agg(a.attname::text ORDER BY a.attnum), '{}')
    FROM pg_attribute a
   WHERE a.attrelid = tbl AND a.attnum = ANY (attnums) AND NOT a.attisdropped
$$;

CREATE VIEW audit.tracked_tables AS
SELECT t.table_name, t.operations,
       audit.column_names(t.table_name, t.excluded_attnums) AS excluded_columns,
       audit.column_names(t.table_name, t.hashed_attnums) AS hashed_columns,
       t.full_rows, t.data_classification, t.retention_policy,
       (audit.column_names(t.table_name, ARRAY[t.organization_attnum]))[1] AS organization_column,
       t.organization_id, t.tracked_by, t.tracked_at,
       EXISTS (SELECT FROM pg_trigger g WHERE g.tgrelid = t.table_name AND g.tgname = 'audit_db_changes'
                                          AND g.tgenabled = 'A') AS trigger_active
  FROM audit.tracked_table t;
COMMENT ON VIEW audit.tracked_tables IS 'Tracked tables with their options (column names as they are now)';

-- DDL on tracked tables ------------------------------------------------------------

-- ALTER TABLE (and the like) of a tracked table is logged as '<table>.ddl';
-- disabling a tracking trigger is refused.
CREATE FUNCTION audit.log_tracked_ddl() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  c record;
BEGIN
  IF to_regclass('audit.tracked_table') IS NULL THEN
    RETURN;
  END IF;
  -- (A table whose tracking was set up in this very transaction is being
  -- set up by audit.track_table(): its own ALTER TABLE is not logged.)
  FOR c IN SELECT DISTINCT d.objid::regclass AS tbl, d.command_tag,
                  t.xmin = pg_current_xact_id()::xid AS setting_up
             FROM pg_event_trigger_ddl_commands() d
             JOIN audit.tracked_table t ON t.table_name = d.objid
            WHERE d.classid = 'pg_class'::regclass LOOP
    -- 'D' disabled; 'R' fires only under session_replication_role = replica.
    IF EXISTS (SELECT FROM pg_trigger g WHERE g.tgrelid = c.tbl
                  AND g.tgname IN ('audit_db_changes', 'audit_db_truncate') AND g.tgenabled IN ('D', 'R')) THEN
      RAISE EXCEPTION 'the change tracking triggers of % cannot be disabled', c.tbl USING ERRCODE = '42501',
        HINT = 'Stop tracking with audit.untrack_table() (if you are allowed to); that is logged.';
    END IF;
    IF NOT c.setting_up THEN
      PERFORM audit.record_tracking_event('change_tracking.ddl', c.tbl::text,
                jsonb_build_object('command_tag', c.command_tag, 'statement', left(current_query(), 2000)));
    END IF;
  END LOOP;
END
$$;
CREATE EVENT TRIGGER audit_db_tracked_ddl ON ddl_command_end
  WHEN TAG IN ('ALTER TABLE', 'CREATE INDEX', 'ALTER INDEX', 'CREATE TRIGGER', 'COMMENT', 'GRANT', 'REVOKE')
  EXECUTE FUNCTION audit.log_tracked_ddl();

-- DROP TABLE of a tracked table is logged and forgets it; DROP TRIGGER of a
-- tracking trigger (without dropping the table) is refused.
CREATE FUNCTION audit.log_tracked_drop() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  d record;
BEGIN
  IF to_regclass('audit.tracked_table') IS NULL THEN
    RETURN;
  END IF;
  FOR d IN SELECT o.objid, o.object_identity FROM pg_event_trigger_dropped_objects() o
            WHERE o.classid = 'pg_class'::regclass AND o.objsubid = 0
              AND o.objid IN (SELECT t.table_name::oid FROM audit.tracked_table t) LOOP
    DELETE FROM audit.tracked_table t WHERE t.table_name::oid = d.objid;
    PERFORM audit.record_tracking_event('change_tracking.drop', d.object_identity,
              jsonb_build_object('statement', left(current_query(), 2000)));
  END LOOP;
  IF EXISTS (SELECT FROM pg_event_trigger_dropped_objects() o
              WHERE o.object_type = 'trigger'
                AND (o.address_names)[array_length(o.address_names, 1)] IN ('audit_db_changes', 'audit_db_truncate')
                AND EXISTS (SELECT FROM audit.tracked_table t
                             WHERE t.table_name = to_regclass(format('%I.%I', o.address_names[1], o.address_names[2])))) THEN
    RAISE EXCEPTION 'the change tracking triggers of a tracked table cannot be dropped' USING ERRCODE = '42501',
      HINT = 'Stop tracking with audit.untrack_table() (if you are allowed to); that is logged.';
  END IF;
END
$$;
CREATE EVENT TRIGGER audit_db_tracked_drop ON sql_drop
  EXECUTE FUNCTION audit.log_tracked_drop();
