-- Errors and configuration changes.
--
-- audit.error_log: errors of the extension's own jobs (the worker's seal,
-- maintenance, alert and report runs, written by the worker in a
-- transaction of their own; maintenance steps that failed, copied from
-- audit.maintenance_run) and of callers that report through
-- audit.report_error(). audit.error_aggregation groups them by a key
-- (source, SQLSTATE, message with numbers and quoted values blanked) with
-- count, first and last seen, and the trend of the last hour against the
-- hour before.
--
-- audit.config_change_event: every change of an audit_db setting (ALTER
-- SYSTEM, ALTER DATABASE / ROLE ... SET, seen by the utility hook of
-- src/audit_db.c) and of a policy row (retention policies, erasure
-- exemptions, alert rules, report templates and schedules): who, when, old,
-- new, and the reason given in audit_db.change_reason (SET LOCAL it first).
-- Each change carries the organization of the row it is about; tenants read
-- their own and those of no organization (src/sql/88_config_changes.sql).

CREATE TABLE audit.error_log (
  error_id        bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  occurred_at     timestamptz NOT NULL DEFAULT clock_timestamp(),
  source          text        NOT NULL CHECK (source <> ''),
  organization_id varchar(255),
  severity        text        NOT NULL DEFAULT 'ERROR' CHECK (severity IN ('WARNING', 'ERROR', 'FATAL')),
  sqlstate        char(5),
  message         text        NOT NULL CHECK (message <> ''),
  detail          text,
  context         jsonb       NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(context) = 'object'),
  reported_by     name        NOT NULL DEFAULT session_user,
  error_key       text        NOT NULL
);
CREATE INDEX error_log_key_idx ON audit.error_log (error_key, occurred_at);
CREATE INDEX error_log_time_idx ON audit.error_log (occurred_at);
COMMENT ON TABLE audit.error_log IS
  'Errors of audit_db''s own jobs and of callers reporting through audit.report_error()';

-- The aggregation key of an error: numbers and quoted values blanked, so
-- that "row 12 failed" and "row 13 failed" count together.
CREATE FUNCTION audit.error_key(source text, sqlstate text, message text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
  SELECT source || ' ' || coalesce(sqlstate, '-----') || ' ' ||
         regexp_replace(regexp_replace(message, '("[^"]*"|''[^'']*'')', '?', 'g'), '[0-9]+', '#', 'g')
$$;

CREATE FUNCTION audit.report_error(source text, message text, sqlstate text DEFAULT NULL, detail text DEFAULT NULL,
                                   context jsonb DEFAULT '{}', organization_id text DEFAULT NULL,
                                   severity text DEFAULT 'ERROR')
RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  id  bigint;
  org text := coalesce(report_error.organization_id, audit.current_organization());
BEGIN
  -- Runs as the owner (callers need no grant on the table); a session acting
  -- for an organization reports for that organization only.
  IF audit.current_organization() IS NOT NULL AND org <> audit.current_organization() THEN
    RAISE EXCEPTION 'permission denied to report errors for organization %', quote_literal(org)
      USING ERRCODE = '42501', HINT = format('The session acts for organization %L.', audit.current_organization());
  END IF;
  IF source IS NULL OR source = '' OR message IS NULL OR message = '' THEN
    RAISE EXCEPTION 'an error report needs a source and a message' USING ERRCODE = '22004',
      HINT = 'source names the component (e.g. ''billing-api''), message what failed.';
  END IF;
  IF sqlstate IS NOT NULL AND sqlstate !~ '^[0-9A-Z]{5}$' THEN
    RAISE EXCEPTION 'invalid SQLSTATE %', quote_literal(sqlstate) USING ERRCODE = '22023',
      HINT = 'Five digits or upper-case letters, or NULL.';
  END IF;
  IF severity IS NULL OR severity NOT IN ('WARNING', 'ERROR', 'FATAL') THEN
    RAISE EXCEPTION 'unknown error severity %', coalesce(quote_literal(severity), 'NULL') USING ERRCODE = '22023',
      HINT = 'One of: WARNING, ERROR, FATAL.';
  END IF;
  IF context IS NULL OR jsonb_typeof(context) <> 'object' THEN
    RAISE EXCEPTION 'error context must be a JSON object' USING ERRCODE = '22023', HINT = 'Pass ''{}'' for none.';
  END IF;
  INSERT INTO audit.error_log (source, organization_id, severity, sqlstate, message, detail, context, error_key)
  VALUES (source, org, severity, sqlstate, message, detail, context,
          audit.error_key(source, sqlstate, message))
  RETURNING error_id INTO id;
  RETURN id;
END
$$;
COMMENT ON FUNCTION audit.report_error(text, text, text, text, jsonb, text, text) IS
  'Record an error in audit.error_log (aggregated in audit.error_aggregation); returns its id';

CREATE VIEW audit.error_aggregation WITH (security_invoker = true) AS
SELECT e.error_key,
       min(e.source) AS source,
       min(e.sqlstate) AS sqlstate,
       (array_agg(e.message ORDER BY e.occurred_at DESC))[1] AS last_message,
       count(*) AS occurrences,
       min(e.occurred_at) AS first_seen,
       max(e.occurred_at) AS last_seen,
       count(*) FILTER (WHERE e.occurred_at >= now() - interval '1 hour') AS last_hour,
       count(*) FILTER (WHERE e.occurred_at >= now() - interval '2 hours'
                          AND e.occurred_at < now() - interval '1 hour') AS previous_hour,
       CASE WHEN count(*) FILTER (WHERE e.occurred_at >= now() - interval '1 hour')
                 > count(*) FILTER (WHERE e.occurred_at >= now() - interval '2 hours'
                                      AND e.occurred_at < now() - interval '1 hour') THEN 'rising'
            WHEN count(*) FILTER (WHERE e.occurred_at >= now() - interval '1 hour')
                 < count(*) FILTER (WHERE e.occurred_at >= now() - interval '2 hours'
                                      AND e.occurred_at < now() - interval '1 hour') THEN 'falling'
            ELSE 'steady' END AS trend
  FROM audit.error_log e
 GROUP BY e.error_key;
COMMENT ON VIEW audit.error_aggregation IS
  'Errors by key: count, first and last seen, the last hour against the hour before (rising, falling, steady)';

-- Maintenance steps that failed are errors of the extension's own jobs.
CREATE FUNCTION audit.log_maintenance_errors() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  INSERT INTO audit.error_log (source, message, context, error_key)
  SELECT 'maintenance', m, jsonb_build_object('run_id', NEW.run_id, 'via', NEW.via),
         audit.error_key('maintenance', NULL, m)
    FROM unnest(NEW.errors) AS m
   WHERE m IS NOT NULL AND m <> ''
     AND (TG_OP = 'INSERT' OR OLD.errors IS NULL OR NOT m = ANY (OLD.errors));
  RETURN NULL;
END
$$;
CREATE TRIGGER maintenance_run_errors
  AFTER INSERT OR UPDATE OF errors ON audit.maintenance_run
  FOR EACH ROW WHEN (NEW.errors IS NOT NULL) EXECUTE FUNCTION audit.log_maintenance_errors();

-- Configuration changes ---------------------------------------------------------------

CREATE TABLE audit.config_change_event (
  change_id  bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  changed_at timestamptz NOT NULL DEFAULT clock_timestamp(),
  changed_by name        NOT NULL DEFAULT session_user,
  -- 'setting' (name: the setting) or 'table' (name: the policy table)
  kind       text        NOT NULL CHECK (kind IN ('setting', 'table')),
  name       text        NOT NULL,
  operation  text        NOT NULL,        -- ALTER SYSTEM, ALTER DATABASE, ALTER ROLE; INSERT, UPDATE, DELETE
  scope      text,                        -- for settings: the database or role (ALTER DATABASE / ROLE)
  old_value  jsonb,
  new_value  jsonb,
  reason     text,
  -- the organization of the changed row (the new one, the old one for a
  -- DELETE); NULL for settings and rows of no organization
  organization_id varchar(255)
);
CREATE INDEX config_change_event_time_idx ON audit.config_change_event (changed_at);
COMMENT ON TABLE audit.config_change_event IS
  'Every change of an audit_db setting or policy row: who, when, old, new, reason (audit_db.change_reason)';

-- The reason given for the change in progress (SET LOCAL audit_db.change_reason = '...').
CREATE FUNCTION audit.change_reason() RETURNS text
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT nullif(current_setting('audit_db.change_reason', true), '') $$;

CREATE FUNCTION audit.log_config_change() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  -- Bookkeeping columns (when a rule or report last ran) are not configuration.
  IF TG_OP = 'UPDATE' AND to_jsonb(OLD) - '{last_run_at,next_run_at,last_evaluated_at}'::text[]
                          = to_jsonb(NEW) - '{last_run_at,next_run_at,last_evaluated_at}'::text[] THEN
    RETURN NULL;
  END IF;
  INSERT INTO audit.config_change_event (kind, name, operation, scope, old_value, new_value, reason,
                                         organization_id)
  VALUES ('table', TG_TABLE_SCHEMA || '.' || TG_TABLE_NAME, TG_OP, NULL,
          CASE WHEN TG_OP IN ('UPDATE', 'DELETE') THEN to_jsonb(OLD) END,
          CASE WHEN TG_OP IN ('INSERT', 'UPDATE') THEN to_jsonb(NEW) END,
          audit.change_reason(),
          CASE WHEN TG_OP = 'DELETE' THEN to_jsonb(OLD) ELSE to_jsonb(NEW) END ->> 'organization_id');
  RETURN NULL;
END
$$;

-- Called by the utility hook after ALTER SYSTEM / DATABASE / ROLE ... SET of
-- an audit_db.* setting.
CREATE FUNCTION audit.log_setting_change(setting text, operation text, scope text, old_value text,
                                         new_value text) RETURNS void
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
  INSERT INTO audit.config_change_event (kind, name, operation, scope, old_value, new_value, reason)
  VALUES ('setting', setting, operation, scope, to_jsonb(old_value), to_jsonb(new_value), audit.change_reason())
$$;

-- pg_dump keeps these (their rows are data, not part of the extension).
SELECT pg_catalog.pg_extension_config_dump('audit.error_log', '');
SELECT pg_catalog.pg_extension_config_dump('audit.error_log_error_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('audit.config_change_event', '');
SELECT pg_catalog.pg_extension_config_dump('audit.config_change_event_change_id_seq', '');
