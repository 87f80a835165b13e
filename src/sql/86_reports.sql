-- Compliance reports: templates (built-in kinds with default criteria),
-- schedules (cron expressions, run by pg_cron when it is loaded, else by the
-- audit_db worker) and executions (status, duration, rows, result document,
-- integrity digest, error). docs/operations.md#reports.

CREATE DOMAIN audit.report_format AS text
  CONSTRAINT report_format_values CHECK (VALUE IN ('json', 'csv'));

CREATE TABLE audit.report_templates (
  template_id      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  name             text   NOT NULL UNIQUE CHECK (name ~ '^[a-z0-9_]+$'),
  -- access:                who touched PHI (criteria: organization_id, from, to)
  -- failed_authentication: failed logins per principal (criteria: from, to, action_regex)
  -- integrity:             audit.verify() of the scope and the chain's digest
  -- retention:             rows per retention policy and classification, with the policy
  -- gdpr_requests:         the gdpr.* events (pseudonymizations, lookups, exports, erasures)
  report_type      text   NOT NULL CHECK (report_type IN ('access', 'failed_authentication', 'integrity',
                                                           'retention', 'gdpr_requests')),
  description      text,
  default_criteria jsonb  NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(default_criteria) = 'object'),
  default_format   audit.report_format NOT NULL DEFAULT 'json',
  built_in         boolean NOT NULL DEFAULT false,
  created_at       timestamptz NOT NULL DEFAULT now()
);
INSERT INTO audit.report_templates (name, report_type, description, default_criteria, built_in) VALUES
  ('phi_access', 'access', 'Who accessed PHI, per principal, in an organization and period', '{}', true),
  ('failed_authentication', 'failed_authentication', 'Failed authentications per principal in a period',
   '{"action_regex": "(^|[._])(login|logon|signin|sign_in|auth|authenticate)($|[._])"}', true),
  ('integrity', 'integrity', 'Verification of the audit chain and its current digest', '{}', true),
  ('retention', 'retention', 'Rows per retention policy and classification, with the policy in force', '{}', true),
  ('gdpr_requests', 'gdpr_requests', 'GDPR requests handled in a period', '{}', true);
COMMENT ON TABLE audit.report_templates IS 'Report templates: a built-in report kind with default criteria and format';
SELECT pg_catalog.pg_extension_config_dump('audit.report_templates', 'WHERE NOT built_in');

CREATE TABLE audit.scheduled_reports (
  schedule_id     bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  name            text   NOT NULL UNIQUE CHECK (name ~ '^[A-Za-z0-9_.-]+$'),
  template_id     bigint NOT NULL REFERENCES audit.report_templates,
  criteria        jsonb  NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(criteria) = 'object'),
  format          audit.report_format NOT NULL DEFAULT 'json',
  organization_id varchar(255),
  schedule        text   NOT NULL,              -- cron expression, or 'N seconds'
  runner          text   NOT NULL CHECK (runner IN ('pg_cron', 'worker')),
  cron_job_name   text,                         -- pg_cron's job (runner pg_cron)
  cron_database   text,                         -- the database pg_cron lives in
  delivery        jsonb  NOT NULL DEFAULT '{"method": "table"}' CHECK (jsonb_typeof(delivery) = 'object'),
  export_config   jsonb  NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(export_config) = 'object'),
  enabled         boolean NOT NULL DEFAULT true,
  created_by      name   NOT NULL DEFAULT session_user,
  created_at      timestamptz NOT NULL DEFAULT now(),
  last_run_at     timestamptz,
  next_run_at     timestamptz
);
COMMENT ON TABLE audit.scheduled_reports IS
  'Reports run on a schedule (pg_cron, or the audit_db worker when pg_cron is absent)';
SELECT pg_catalog.pg_extension_config_dump('audit.scheduled_reports', '');

CREATE TABLE audit.report_executions (
  execution_id     bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  schedule_id      bigint REFERENCES audit.scheduled_reports ON DELETE SET NULL,
  template_id      bigint REFERENCES audit.report_templates ON DELETE SET NULL,
  report_type      text   NOT NULL,
  criteria         jsonb  NOT NULL,
  format           audit.report_format NOT NULL,
  organization_id  varchar(255),
  triggered_by     text   NOT NULL,             -- pg_cron, worker, call
  run_by           name   NOT NULL DEFAULT session_user,
  started_at       timestamptz NOT NULL DEFAULT clock_timestamp(),
  finished_at      timestamptz,
  duration_ms      integer,
  status           text   NOT NULL CHECK (status IN ('running', 'succeeded', 'failed')),
  row_count        bigint,
  result           text,                        -- the document (json or csv)
  integrity_digest jsonb,                       -- sha256 of the result and the chain's digest when made
  error            text,
  error_sqlstate   char(5)
);
CREATE INDEX report_executions_schedule_idx ON audit.report_executions (schedule_id, started_at);
COMMENT ON TABLE audit.report_executions IS 'Each run of a report: status, duration, rows, result, digest, error';

-- Cron expressions -------------------------------------------------------------

-- The values a cron field allows: '*', 'n', 'a-b', lists, '/step'.
CREATE FUNCTION audit.cron_field(field text, lo integer, hi integer) RETURNS integer[]
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  part text;
  m text[];
  a int;
  b int;
  step int;
  result int[] := '{}';
BEGIN
  FOREACH part IN ARRAY string_to_array(field, ',') LOOP
    m := regexp_match(part, '^(\*|([0-9]+)(-([0-9]+))?)(/([0-9]+))?$');
    IF m IS NULL THEN
      RAISE EXCEPTION 'invalid cron field %', quote_literal(field) USING ERRCODE = '22023',
        HINT = 'Use *, n, a-b, lists (a,b) and steps (*/n); five fields: minute hour day month weekday.';
    END IF;
    IF m[1] = '*' THEN a := lo; b := hi; ELSE a := m[2]::int; b := coalesce(m[4]::int, CASE WHEN m[6] IS NULL THEN a ELSE hi END); END IF;
    step := coalesce(m[6]::int, 1);
    IF a < lo OR b > hi OR a > b OR step < 1 THEN
      RAISE EXCEPTION 'cron field % is out of range %-%', quote_literal(field), lo, hi USING ERRCODE = '22023',
        HINT = 'minute 0-59, hour 0-23, day 1-31, month 1-12, weekday 0-7 (0 and 7: Sunday).';
    END IF;
    result := result || ARRAY(SELECT generate_series(a, b, step));
  END LOOP;
  RETURN result;
END
$$;

-- The first time after `after` (UTC, whole minutes) that a cron expression
-- ('m h dom mon dow', as pg_cron reads it) or 'N seconds' names.
CREATE FUNCTION audit.cron_next(expr text, after timestamptz) RETURNS timestamptz
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  f text[];
  mins int[]; hours int[]; doms int[]; mons int[]; dows int[];
  dom_any boolean; dow_any boolean;
  t timestamp;
  day_ok boolean;
  secs text[];
BEGIN
  IF expr IS NULL THEN
    RAISE EXCEPTION 'a schedule is needed' USING ERRCODE = '22004', HINT = 'A cron expression such as ''0 6 * * 1''.';
  END IF;
  secs := regexp_match(btrim(expr), '^([0-9]+) seconds?$');
  IF secs IS NOT NULL THEN
    IF secs[1]::int NOT BETWEEN 1 AND 59 THEN
      RAISE EXCEPTION 'interval schedules take 1 to 59 seconds' USING ERRCODE = '22023',
        HINT = 'For longer periods use a cron expression.';
    END IF;
    RETURN after + make_interval(secs => secs[1]::int);
  END IF;
  f := regexp_split_to_array(btrim(expr), '\s+');
  IF array_length(f, 1) <> 5 THEN
    RAISE EXCEPTION 'invalid cron expression %', quote_literal(expr) USING ERRCODE = '22023',
      HINT = 'Five fields: minute hour day-of-month month day-of-week, e.g. ''*/5 * * * *''.';
  END IF;
  mins := audit.cron_field(f[1], 0, 59);
  hours := audit.cron_field(f[2], 0, 23);
  doms := audit.cron_field(f[3], 1, 31);
  mons := audit.cron_field(f[4], 1, 12);
  dows := ARRAY(SELECT DISTINCT d % 7 FROM unnest(audit.cron_field(f[5], 0, 7)) d);
  dom_any := f[3] = '*';
  dow_any := f[5] = '*';
  t := date_trunc('minute', after AT TIME ZONE 'UTC') + interval '1 minute';
  FOR i IN 1 .. 100000 LOOP
    IF NOT extract(month FROM t)::int = ANY (mons) THEN
      t := date_trunc('month', t) + interval '1 month';
      CONTINUE;
    END IF;
    day_ok := CASE WHEN dom_any AND dow_any THEN true
                   WHEN dom_any THEN extract(dow FROM t)::int = ANY (dows)
                   WHEN dow_any THEN extract(day FROM t)::int = ANY (doms)
                   ELSE extract(day FROM t)::int = ANY (doms) OR extract(dow FROM t)::int = ANY (dows) END;
    IF NOT day_ok THEN
      t := date_trunc('day', t) + interval '1 day';
      CONTINUE;
    END IF;
    IF NOT extract(hour FROM t)::int = ANY (hours) THEN
      t := date_trunc('hour', t) + interval '1 hour';
      CONTINUE;
    END IF;
    IF NOT extract(minute FROM t)::int = ANY (mins) THEN
      t := t + interval '1 minute';
      CONTINUE;
    END IF;
    RETURN t AT TIME ZONE 'UTC';
  END LOOP;
  RAISE EXCEPTION 'cron expression % never fires', quote_literal(expr) USING ERRCODE = '22023',
    HINT = 'Check day and month (e.g. 31 2 never exists).';
END
$$;
COMMENT ON FUNCTION audit.cron_next(text, timestamptz) IS
  'Next time (UTC) after a given one that a cron expression or ''N seconds'' schedule names';

-- Generating reports -------------------------------------------------------------

-- The rows of a report, as a JSON array of objects (keys in report order).
CREATE FUNCTION audit.report_rows(report_type text, criteria jsonb, organization text)
RETURNS json
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  t_from timestamptz := coalesce((criteria->>'from')::timestamptz, '-infinity');
  t_to   timestamptz := coalesce((criteria->>'to')::timestamptz, 'infinity');
  rows   json;
  v      record;
  d      jsonb;
BEGIN
  IF report_type = 'access' THEN
    SELECT coalesce(json_agg(json_build_object('principal_id', x.principal_id, 'organization_id', x.organization_id,
                                                 'events', x.n, 'first_access', x.first, 'last_access', x.last,
                                                 'actions', x.actions)
                              ORDER BY x.organization_id, x.principal_id), '[]'::json)
      INTO rows
      FROM (SELECT l.principal_id, l.organization_id, count(*) AS n, min(l."timestamp") AS first,
                   max(l."timestamp") AS last, string_agg(DISTINCT l.action, ',' ORDER BY l.action) AS actions
              FROM audit.audit_log l
             WHERE l.data_classification = 'PHI' AND l."timestamp" >= t_from AND l."timestamp" < t_to
               AND (organization IS NULL OR l.organization_id = organization)
             GROUP BY l.principal_id, l.organization_id) x;
  ELSIF report_type = 'failed_authentication' THEN
    SELECT coalesce(json_agg(json_build_object('principal_id', x.principal_id, 'organization_id', x.organization_id,
                                                 'failures', x.n, 'first_failure', x.first, 'last_failure', x.last,
                                                 'actions', x.actions)
                              ORDER BY x.n DESC, x.organization_id, x.principal_id), '[]'::json)
      INTO rows
      FROM (SELECT l.principal_id, l.organization_id, count(*) AS n, min(l."timestamp") AS first,
                   max(l."timestamp") AS last, string_agg(DISTINCT l.action, ',' ORDER BY l.action) AS actions
              FROM audit.audit_log l
             WHERE l.status = 'failure' AND l."timestamp" >= t_from AND l."timestamp" < t_to
               AND l.action ~* (criteria->>'action_regex')
               AND (organization IS NULL OR l.organization_id = organization)
             GROUP BY l.principal_id, l.organization_id) x;
  ELSIF report_type = 'integrity' THEN
    SELECT count(*) AS problems, min(p.problem || ': ' || p.detail) AS first_problem,
           json_agg(json_build_object('block_height', p.block_height, 'row_id', p.row_id, 'field', p.field,
                                      'problem', p.problem, 'detail', p.detail)) AS list
      INTO v FROM audit.verify(organization_id => organization) p;
    d := audit.digest();
    rows := json_build_array(json_build_object('clean', v.problems = 0, 'problems', v.problems,
                                               'first_problem', v.first_problem, 'height', d->'height',
                                               'header_hash', d->'header_hash', 'rows_total', d->'rows_total',
                                               'details', coalesce(v.list, '[]')));
  ELSIF report_type = 'retention' THEN
    SELECT coalesce(json_agg(json_build_object('retention_policy', x.retention_policy,
                                                 'data_classification', x.data_classification,
                                                 'rows', x.n, 'oldest', x.oldest, 'newest', x.newest,
                                                 'retention_days', p.retention_days,
                                                 'archive_after_days', p.archive_after_days,
                                                 'delete_after_days', coalesce(p.delete_after_days, p.retention_days),
                                                 'policy_active', coalesce(p.active, false))
                              ORDER BY x.retention_policy, x.data_classification), '[]'::json)
      INTO rows
      FROM (SELECT l.retention_policy, l.data_classification::text AS data_classification, count(*) AS n,
                   min(l."timestamp") AS oldest, max(l."timestamp") AS newest
              FROM audit.audit_log l
             WHERE (organization IS NULL OR l.organization_id = organization)
             GROUP BY 1, 2) x
      LEFT JOIN LATERAL (SELECT * FROM audit.audit_retention_policy p
                          WHERE p.policy_name = x.retention_policy
                            AND (p.data_classification IS NULL OR p.data_classification = x.data_classification)
                          ORDER BY p.data_classification NULLS LAST LIMIT 1) p ON true;
  ELSIF report_type = 'gdpr_requests' THEN
    SELECT coalesce(json_agg(json_build_object('event_id', l.id, 'timestamp', l."timestamp", 'action', l.action,
                                                 'organization_id', l.organization_id,
                                                 'performed_by', l.principal_id,
                                                 'requested_by', l.details->>'requested_by',
                                                 'request_id', (l.details->>'request_id')::bigint,
                                                 'rows_changed', (l.details->>'rows_changed')::bigint,
                                                 'rows_erased', (l.details->>'rows_erased')::bigint,
                                                 'rows_kept', (l.details->>'rows_kept')::bigint,
                                                 'format', l.details->>'format')
                              ORDER BY l."timestamp", l.id), '[]'::json)
      INTO rows
      FROM audit.audit_log l
     WHERE l.action LIKE 'gdpr.%' AND l."timestamp" >= t_from AND l."timestamp" < t_to
       AND (organization IS NULL OR l.organization_id = organization);
  ELSE
    RAISE EXCEPTION 'unknown report type %', coalesce(quote_literal(report_type), 'NULL') USING ERRCODE = '22023',
      HINT = 'One of: access, failed_authentication, integrity, retention, gdpr_requests.';
  END IF;
  RETURN rows;
END
$$;

-- The columns of each report kind, in order (the csv header).
CREATE FUNCTION audit.report_columns(report_type text) RETURNS text[]
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
  SELECT CASE report_type
    WHEN 'access' THEN ARRAY['principal_id', 'organization_id', 'events', 'first_access', 'last_access', 'actions']
    WHEN 'failed_authentication' THEN ARRAY['principal_id', 'organization_id', 'failures', 'first_failure',
                                            'last_failure', 'actions']
    WHEN 'integrity' THEN ARRAY['clean', 'problems', 'first_problem', 'height', 'header_hash', 'rows_total', 'details']
    WHEN 'retention' THEN ARRAY['retention_policy', 'data_classification', 'rows', 'oldest', 'newest', 'retention_days',
                                'archive_after_days', 'delete_after_days', 'policy_active']
    WHEN 'gdpr_requests' THEN ARRAY['event_id', 'timestamp', 'action', 'organization_id', 'performed_by',
                                    'requested_by', 'request_id', 'rows_changed', 'rows_erased', 'rows_kept', 'format']
  END
$$;

-- The template of a name, with the checks every entry point makes of its
-- criteria and format (42704 / 22023 otherwise).
CREATE FUNCTION audit.report_template(template text, criteria jsonb, format text) RETURNS audit.report_templates
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  t audit.report_templates;
BEGIN
  SELECT * INTO t FROM audit.report_templates x WHERE x.name = template;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'report template % does not exist', coalesce(quote_literal(template), 'NULL')
      USING ERRCODE = '42704', HINT = 'See audit.report_templates.';
  END IF;
  IF criteria IS NULL OR jsonb_typeof(criteria) <> 'object' THEN
    RAISE EXCEPTION 'report criteria must be a JSON object' USING ERRCODE = '22023', HINT = 'Pass ''{}'' for none.';
  END IF;
  IF format IS NOT NULL AND format NOT IN ('json', 'csv') THEN
    RAISE EXCEPTION 'unknown report format %', quote_literal(format) USING ERRCODE = '22023', HINT = 'json or csv.';
  END IF;
  RETURN t;
END
$$;

-- A report document: json ({report, type, criteria, organization,
-- generated_at, row_count, rows}) or csv (a header, then the rows; nested
-- values as JSON text).
CREATE FUNCTION audit.generate_report(template text, criteria jsonb DEFAULT '{}', format text DEFAULT NULL,
                                      organization_id text DEFAULT NULL)
RETURNS text
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  t    audit.report_templates;
  c    jsonb;
  fmt  text;
  rows json;
  cols text[];
BEGIN
  t := audit.report_template(template, criteria, format);
  fmt := coalesce(format, t.default_format);
  c := t.default_criteria || criteria;
  BEGIN
    PERFORM (c->>'from')::timestamptz, (c->>'to')::timestamptz;
  EXCEPTION WHEN others THEN
    RAISE EXCEPTION 'report criteria from/to must be timestamps' USING ERRCODE = '22007',
      HINT = 'For example {"from": "2026-01-01", "to": "2026-02-01"}.';
  END;
  rows := audit.report_rows(t.report_type, c, coalesce(organization_id, c->>'organization_id'));
  IF fmt = 'json' THEN
    RETURN json_build_object('report', t.name, 'type', t.report_type, 'criteria', c,
                             'organization', coalesce(organization_id, c->>'organization_id'),
                             'generated_at', now(), 'row_count', json_array_length(rows), 'rows', rows)::text;
  END IF;
  cols := audit.report_columns(t.report_type);
  RETURN (SELECT string_agg(line, E'\r\n' ORDER BY ord) || E'\r\n'
            FROM (SELECT 0::bigint AS ord, (SELECT string_agg('"' || k || '"', ',' ORDER BY i)
                                             FROM unnest(cols) WITH ORDINALITY AS x(k, i)) AS line
                  UNION ALL
                  SELECT e.ord, (SELECT string_agg(CASE WHEN json_typeof(e.doc -> k) IS NULL
                                                          OR json_typeof(e.doc -> k) = 'null' THEN ''
                                                     ELSE '"' || replace(CASE WHEN json_typeof(e.doc -> k) IN ('object', 'array')
                                                                              THEN (e.doc -> k)::text
                                                                              ELSE e.doc ->> k END, '"', '""') || '"'
                                                     END, ',' ORDER BY i)
                                   FROM unnest(cols) WITH ORDINALITY AS x(k, i))
                    FROM json_array_elements(rows) WITH ORDINALITY AS e(doc, ord)) lines
           WHERE line IS NOT NULL);
END
$$;
COMMENT ON FUNCTION audit.generate_report(text, jsonb, text, text) IS
  'A report of a template with criteria (merged over its defaults), as json or csv, without storing it';

-- Run a scheduled report now and store the execution; a failure is stored
-- (and logged in audit.error_log), not raised. Returns the execution id.
CREATE FUNCTION audit.run_report(schedule_id bigint, triggered_by text DEFAULT 'call') RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  s      audit.scheduled_reports;
  t      audit.report_templates;
  exec   bigint;
  doc    text;
  n      bigint;
  msg    text;
  state  text;
  began  timestamptz := clock_timestamp();
BEGIN
  SELECT * INTO s FROM audit.scheduled_reports x WHERE x.schedule_id = run_report.schedule_id;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'scheduled report % does not exist', schedule_id USING ERRCODE = 'P0002',
      HINT = 'See audit.scheduled_reports.';
  END IF;
  SELECT * INTO t FROM audit.report_templates x WHERE x.template_id = s.template_id;
  INSERT INTO audit.report_executions (schedule_id, template_id, report_type, criteria, format, organization_id,
                                       triggered_by, status, started_at)
  VALUES (s.schedule_id, t.template_id, t.report_type, t.default_criteria || s.criteria, s.format, s.organization_id,
          coalesce(triggered_by, 'call'), 'running', began)
  RETURNING execution_id INTO exec;
  BEGIN
    doc := audit.generate_report(t.name, s.criteria, s.format, s.organization_id);
    n := CASE WHEN s.format = 'json' THEN (doc::json->>'row_count')::bigint
              ELSE greatest(array_length(regexp_split_to_array(rtrim(doc, E'\r\n'), E'\r\n'), 1) - 1, 0) END;
    UPDATE audit.report_executions x
       SET status = 'succeeded', finished_at = clock_timestamp(),
           duration_ms = (extract(epoch FROM clock_timestamp() - began) * 1000)::int,
           row_count = n, result = doc,
           integrity_digest = jsonb_build_object('result_sha256', encode(sha256(convert_to(doc, 'UTF8')), 'hex'),
                                                 'chain', audit.digest())
     WHERE x.execution_id = exec;
  EXCEPTION WHEN others THEN
    GET STACKED DIAGNOSTICS msg = MESSAGE_TEXT, state = RETURNED_SQLSTATE;
    UPDATE audit.report_executions x
       SET status = 'failed', finished_at = clock_timestamp(),
           duration_ms = (extract(epoch FROM clock_timestamp() - began) * 1000)::int,
           error = msg, error_sqlstate = state
     WHERE x.execution_id = exec;
    PERFORM audit.report_error('report', msg, state, NULL,
                               jsonb_build_object('schedule_id', s.schedule_id, 'execution_id', exec),
                               s.organization_id);
  END;
  UPDATE audit.scheduled_reports x SET last_run_at = began, next_run_at = audit.cron_next(x.schedule, began)
   WHERE x.schedule_id = s.schedule_id;
  RETURN exec;
END
$$;
COMMENT ON FUNCTION audit.run_report(bigint, text) IS
  'Run a scheduled report now; stores and returns its execution (a failure is stored, not raised)';

-- The worker's share: run the reports it schedules that are due.
CREATE FUNCTION audit.run_due_reports() RETURNS integer
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  s bigint;
  n integer := 0;
BEGIN
  FOR s IN SELECT x.schedule_id FROM audit.scheduled_reports x
            WHERE x.enabled AND x.runner = 'worker' AND x.next_run_at <= now()
            ORDER BY x.next_run_at LOOP
    PERFORM audit.run_report(s, 'worker');
    n := n + 1;
  END LOOP;
  RETURN n;
END
$$;
COMMENT ON FUNCTION audit.run_due_reports() IS 'Run the worker-scheduled reports that are due (the worker calls it)';

-- pg_cron ------------------------------------------------------------------------

-- Run one statement against pg_cron (a SELECT of one column): here, or in
-- its database through dblink.
CREATE FUNCTION audit.pg_cron_exec(statement text) RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  c    record;
  nsp  name;
  conn text;
BEGIN
  SELECT * INTO c FROM audit.pg_cron_location();
  IF c.status = 'absent' THEN
    RAISE EXCEPTION 'pg_cron is not loaded' USING ERRCODE = '0A000',
      HINT = 'Add pg_cron to shared_preload_libraries (package postgresql-15-cron), or schedule with runner => ''worker''.';
  ELSIF c.status = 'local' THEN
    EXECUTE statement;
    RETURN;
  END IF;
  SELECT n.nspname INTO nsp FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace WHERE e.extname = 'dblink';
  IF NOT FOUND THEN
    RAISE EXCEPTION 'pg_cron runs in database %, and dblink is not installed here', c.database USING ERRCODE = '0A000',
      HINT = 'CREATE EXTENSION dblink in this database, or schedule with runner => ''worker''.';
  END IF;
  conn := format('dbname=%s port=%s', quote_literal(c.database), current_setting('port'));
  IF current_setting('unix_socket_directories') <> '' THEN
    conn := conn || format(' host=%s', quote_literal(split_part(current_setting('unix_socket_directories'), ',', 1)));
  END IF;
  -- dblink() rather than dblink_exec(): the statements return a row (one column).
  EXECUTE format('SELECT count(*) FROM %I.dblink($1, $2) AS t(result text)', nsp) USING conn, statement;
END
$$;

CREATE FUNCTION audit.schedule_report(name text, template text, schedule text, criteria jsonb DEFAULT '{}',
                                      format text DEFAULT NULL, organization_id text DEFAULT NULL,
                                      runner text DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  t     audit.report_templates;
  c     record;
  r     text := runner;
  job   text;
  id    bigint;
BEGIN
  IF name IS NULL OR name !~ '^[A-Za-z0-9_.-]+$' THEN
    RAISE EXCEPTION 'invalid report schedule name %', coalesce(quote_literal(name), 'NULL') USING ERRCODE = '22023',
      HINT = 'Letters, digits, _ . and -.';
  END IF;
  t := audit.report_template(template, criteria, format);
  PERFORM audit.cron_next(schedule, now());          -- validates the expression
  SELECT * INTO c FROM audit.pg_cron_location();
  IF r IS NULL THEN
    r := CASE WHEN c.status = 'absent' THEN 'worker' ELSE 'pg_cron' END;
    IF r = 'worker' THEN
      RAISE NOTICE 'pg_cron is not loaded: the audit_db worker runs report %', name
        USING HINT = 'The worker needs audit_db in shared_preload_libraries.';
    END IF;
  ELSIF r NOT IN ('pg_cron', 'worker') THEN
    RAISE EXCEPTION 'unknown report runner %', quote_literal(r) USING ERRCODE = '22023', HINT = 'pg_cron or worker.';
  ELSIF r = 'pg_cron' AND c.status = 'absent' THEN
    RAISE EXCEPTION 'pg_cron is not loaded' USING ERRCODE = '0A000',
      HINT = 'Add pg_cron to shared_preload_libraries, or pass runner => ''worker'' (the audit_db worker runs it).';
  END IF;

  INSERT INTO audit.scheduled_reports AS s (name, template_id, criteria, format, organization_id, schedule, runner,
                                            next_run_at)
  VALUES (schedule_report.name, t.template_id, criteria, coalesce(format, t.default_format),
          schedule_report.organization_id, schedule, r, audit.cron_next(schedule, now()))
  ON CONFLICT ON CONSTRAINT scheduled_reports_name_key DO UPDATE
     SET template_id = EXCLUDED.template_id, criteria = EXCLUDED.criteria, format = EXCLUDED.format,
         organization_id = EXCLUDED.organization_id, schedule = EXCLUDED.schedule, runner = EXCLUDED.runner,
         next_run_at = EXCLUDED.next_run_at, enabled = true
  RETURNING s.schedule_id INTO id;

  job := format('audit_db:%s:%s', current_database(), name);
  IF r = 'pg_cron' THEN
    -- Named jobs: scheduling the same report again replaces its job.
    PERFORM audit.pg_cron_exec(format('SELECT cron.schedule_in_database(%L, %L, %L, %L)', job, schedule,
                                      format('SELECT audit.run_report(%s, ''pg_cron'')', id), current_database()));
    UPDATE audit.scheduled_reports x SET cron_job_name = job, cron_database = coalesce(c.database, current_database())
     WHERE x.schedule_id = id;
  ELSE
    PERFORM audit.unschedule_cron_job(id);
  END IF;
  RETURN id;
END
$$;
COMMENT ON FUNCTION audit.schedule_report(text, text, text, jsonb, text, text, text) IS
  'Schedule a report (idempotent by name): a named pg_cron job, in pg_cron''s database if need be, '
  'or the audit_db worker when pg_cron is absent; returns its id';

-- Remove a schedule's pg_cron job, if it has one.
CREATE FUNCTION audit.unschedule_cron_job(schedule_id bigint) RETURNS boolean
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  job text;
BEGIN
  SELECT x.cron_job_name INTO job FROM audit.scheduled_reports x WHERE x.schedule_id = unschedule_cron_job.schedule_id;
  IF job IS NULL THEN
    RETURN false;
  END IF;
  IF (SELECT status FROM audit.pg_cron_location()) <> 'absent' THEN
    PERFORM audit.pg_cron_exec(format('SELECT cron.unschedule(jobid) FROM cron.job WHERE jobname = %L', job));
  END IF;
  UPDATE audit.scheduled_reports x SET cron_job_name = NULL, cron_database = NULL
   WHERE x.schedule_id = unschedule_cron_job.schedule_id;
  RETURN true;
END
$$;

CREATE FUNCTION audit.unschedule_report(name text) RETURNS boolean
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  id bigint;
BEGIN
  SELECT x.schedule_id INTO id FROM audit.scheduled_reports x WHERE x.name = unschedule_report.name;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'scheduled report % does not exist', coalesce(quote_literal(name), 'NULL') USING ERRCODE = 'P0002',
      HINT = 'See audit.scheduled_reports.';
  END IF;
  PERFORM audit.unschedule_cron_job(id);
  UPDATE audit.scheduled_reports x SET enabled = false, next_run_at = NULL WHERE x.schedule_id = id;
  RETURN true;
END
$$;
COMMENT ON FUNCTION audit.unschedule_report(text) IS
  'Stop a scheduled report: its pg_cron job is removed and it is disabled (its executions stay)';

-- pg_dump keeps these (their rows are data, not part of the extension).
SELECT pg_catalog.pg_extension_config_dump('audit.report_executions', '');
SELECT pg_catalog.pg_extension_config_dump('audit.report_executions_execution_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('audit.report_templates_template_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('audit.scheduled_reports_schedule_id_seq', '');
