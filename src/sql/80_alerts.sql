-- Alerts: raised by hand, by callers through audit.raise_alert(), or by the
-- alert rules (rows of audit.alert_rules, evaluated by
-- audit.evaluate_alert_rules(): the background worker every
-- audit_db.alert_interval, or any caller allowed to). An open alert (not
-- resolved) with the same dedup_key is not raised twice: a rule that fires
-- again for the same cause bumps its occurrences and last_seen_at instead.
-- Tenant isolation applies (organization_id; NULL: a system alert, visible
-- to every-organization readers only).

CREATE DOMAIN audit.alert_severity AS text
  CONSTRAINT alert_severity_values CHECK (VALUE IN ('LOW', 'MEDIUM', 'HIGH', 'CRITICAL'));
CREATE DOMAIN audit.alert_type AS text
  CONSTRAINT alert_type_values CHECK (VALUE IN ('SECURITY', 'COMPLIANCE', 'PERFORMANCE', 'SYSTEM'));

CREATE TABLE audit.alert_rules (
  rule_id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  name              text   NOT NULL UNIQUE CHECK (name <> ''),
  -- failure_burst:          {"threshold": 5, "window_minutes": 10, "action": "login" (optional, LIKE pattern)}
  --                         more than threshold - 1 failures of one action by one principal in the window
  -- phi_outside_hours:      {"start_hour": 7, "end_hour": 19, "time_zone": "UTC", "window_minutes": 60}
  --                         PHI events whose local hour is outside [start_hour, end_hour)
  -- verification_failure:   {}  the last audit.verify() run found problems
  -- seal_lag:               {"max_seconds": 300}  audit.chain_status.seal_lag above it
  -- default_partition_rows: {"min_rows": 1}  rows waiting in the default partition
  -- maintenance_error:      {}  the last maintenance run failed
  rule_type         text   NOT NULL CHECK (rule_type IN ('failure_burst', 'phi_outside_hours',
                                                         'verification_failure', 'seal_lag',
                                                         'default_partition_rows', 'maintenance_error')),
  organization_id   varchar(255),               -- events of this organization only (NULL: all)
  params            jsonb  NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(params) = 'object'),
  severity          audit.alert_severity NOT NULL DEFAULT 'HIGH',
  alert_type        audit.alert_type     NOT NULL DEFAULT 'SECURITY',
  enabled           boolean NOT NULL DEFAULT true,
  description       text,
  last_evaluated_at timestamptz,
  created_at        timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE audit.alert_rules IS 'Alert rules evaluated in the database (rows, not code)';
SELECT pg_catalog.pg_extension_config_dump('audit.alert_rules', '');

CREATE TABLE audit.alerts (
  alert_id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  organization_id  varchar(255),
  severity         audit.alert_severity NOT NULL,
  alert_type       audit.alert_type     NOT NULL,
  title            text        NOT NULL CHECK (title <> ''),
  description      text,
  source           text        NOT NULL DEFAULT 'api',
  correlation_id   varchar(255),
  metadata         jsonb       NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(metadata) = 'object'),
  rule_id          bigint      REFERENCES audit.alert_rules ON DELETE SET NULL,
  dedup_key        text,
  occurrences      integer     NOT NULL DEFAULT 1,
  created_at       timestamptz NOT NULL DEFAULT now(),
  last_seen_at     timestamptz NOT NULL DEFAULT now(),
  acknowledged     boolean     NOT NULL DEFAULT false,
  acknowledged_by  text,
  acknowledged_at  timestamptz,
  resolved         boolean     NOT NULL DEFAULT false,
  resolved_by      text,
  resolved_at      timestamptz,
  resolution_notes text,
  CONSTRAINT alerts_acknowledged_when CHECK (acknowledged = (acknowledged_at IS NOT NULL)),
  CONSTRAINT alerts_resolved_when CHECK (resolved = (resolved_at IS NOT NULL))
);
-- One open alert per cause.
CREATE UNIQUE INDEX alerts_open_cause ON audit.alerts (dedup_key) WHERE NOT resolved AND dedup_key IS NOT NULL;
CREATE INDEX alerts_open_idx ON audit.alerts (organization_id, severity) WHERE NOT resolved;
CREATE INDEX alerts_created_idx ON audit.alerts (created_at);
COMMENT ON TABLE audit.alerts IS 'Alerts raised by rules or callers; one open alert per dedup_key';

-- Raise an alert, or, when an open alert has the same dedup_key, count one
-- more occurrence of it. Returns the alert's id.
CREATE FUNCTION audit.raise_alert(severity text, alert_type text, title text, description text DEFAULT NULL,
                                  organization_id text DEFAULT NULL, source text DEFAULT 'api',
                                  correlation_id text DEFAULT NULL, metadata jsonb DEFAULT '{}',
                                  dedup_key text DEFAULT NULL, rule_id bigint DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
  id bigint;
BEGIN
  IF raise_alert.title IS NULL OR raise_alert.title = '' THEN
    RAISE EXCEPTION 'an alert needs a title' USING ERRCODE = '22004', HINT = 'Say in a few words what happened.';
  END IF;
  IF raise_alert.severity IS NULL OR raise_alert.severity NOT IN ('LOW', 'MEDIUM', 'HIGH', 'CRITICAL') THEN
    RAISE EXCEPTION 'unknown alert severity %', coalesce(quote_literal(raise_alert.severity), 'NULL') USING ERRCODE = '22023',
      HINT = 'One of: LOW, MEDIUM, HIGH, CRITICAL.';
  END IF;
  IF raise_alert.alert_type IS NULL OR raise_alert.alert_type NOT IN ('SECURITY', 'COMPLIANCE', 'PERFORMANCE', 'SYSTEM') THEN
    RAISE EXCEPTION 'unknown alert type %', coalesce(quote_literal(raise_alert.alert_type), 'NULL') USING ERRCODE = '22023',
      HINT = 'One of: SECURITY, COMPLIANCE, PERFORMANCE, SYSTEM.';
  END IF;
  IF raise_alert.metadata IS NULL OR jsonb_typeof(raise_alert.metadata) <> 'object' THEN
    RAISE EXCEPTION 'alert metadata must be a JSON object' USING ERRCODE = '22023', HINT = 'Pass ''{}'' for none.';
  END IF;
  IF raise_alert.dedup_key IS NOT NULL THEN
    UPDATE audit.alerts a SET occurrences = a.occurrences + 1, last_seen_at = now(),
                              metadata = a.metadata || raise_alert.metadata
     WHERE a.dedup_key = raise_alert.dedup_key AND NOT a.resolved
    RETURNING a.alert_id INTO id;
    IF FOUND THEN
      RETURN id;
    END IF;
  END IF;
  INSERT INTO audit.alerts AS a (organization_id, severity, alert_type, title, description, source, correlation_id,
                                 metadata, dedup_key, rule_id)
  VALUES (raise_alert.organization_id, raise_alert.severity, raise_alert.alert_type, raise_alert.title,
          raise_alert.description, coalesce(raise_alert.source, 'api'), raise_alert.correlation_id,
          raise_alert.metadata, raise_alert.dedup_key, raise_alert.rule_id)
  ON CONFLICT (dedup_key) WHERE NOT resolved AND dedup_key IS NOT NULL
  DO UPDATE SET occurrences = a.occurrences + 1, last_seen_at = now()
  RETURNING a.alert_id INTO id;
  RETURN id;
END
$$;
COMMENT ON FUNCTION audit.raise_alert(text, text, text, text, text, text, text, jsonb, text, bigint) IS
  'Raise an alert (or count one more occurrence of the open alert with the same dedup_key); returns its id';

-- Who acts on an alert: the principal the session acts as.
CREATE FUNCTION audit.alert_actor() RETURNS text
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT coalesce(audit.current_principal(), session_user::text) $$;

-- True for an alert the caller can see; P0002 otherwise.
CREATE FUNCTION audit.alert_exists(alert_id bigint) RETURNS boolean
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  IF NOT EXISTS (SELECT FROM audit.alerts a WHERE a.alert_id = alert_exists.alert_id) THEN
    RAISE EXCEPTION 'alert % does not exist', alert_id USING ERRCODE = 'P0002',
      HINT = 'See audit.active_alerts() for the open alerts you can see.';
  END IF;
  RETURN true;
END
$$;

CREATE FUNCTION audit.acknowledge_alert(alert_id bigint) RETURNS boolean
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  UPDATE audit.alerts a SET acknowledged = true, acknowledged_by = audit.alert_actor(), acknowledged_at = now()
   WHERE a.alert_id = acknowledge_alert.alert_id AND NOT a.acknowledged;
  RETURN FOUND OR NOT audit.alert_exists(alert_id);       -- false: acknowledged before
END
$$;
COMMENT ON FUNCTION audit.acknowledge_alert(bigint) IS 'Acknowledge an alert; false if it was acknowledged before';

CREATE FUNCTION audit.resolve_alert(alert_id bigint, resolution_notes text DEFAULT NULL) RETURNS boolean
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  UPDATE audit.alerts a
     SET resolved = true, resolved_by = audit.alert_actor(), resolved_at = now(),
         resolution_notes = resolve_alert.resolution_notes,
         acknowledged = true, acknowledged_by = coalesce(a.acknowledged_by, audit.alert_actor()),
         acknowledged_at = coalesce(a.acknowledged_at, now())
   WHERE a.alert_id = resolve_alert.alert_id AND NOT a.resolved;
  RETURN FOUND OR NOT audit.alert_exists(alert_id);       -- false: resolved before
END
$$;
COMMENT ON FUNCTION audit.resolve_alert(bigint, text) IS 'Resolve an alert (acknowledging it too); false if resolved before';

CREATE FUNCTION audit.active_alerts(min_severity text DEFAULT 'LOW')
RETURNS SETOF audit.alerts
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
  SELECT * FROM audit.alerts a
   WHERE NOT a.resolved
     AND array_position(ARRAY['LOW', 'MEDIUM', 'HIGH', 'CRITICAL'], a.severity::text)
         >= coalesce(array_position(ARRAY['LOW', 'MEDIUM', 'HIGH', 'CRITICAL'], min_severity), 1)
   ORDER BY array_position(ARRAY['LOW', 'MEDIUM', 'HIGH', 'CRITICAL'], a.severity::text) DESC, a.created_at
$$;
COMMENT ON FUNCTION audit.active_alerts(text) IS 'Open (unresolved) alerts at or above a severity, most severe first';

CREATE FUNCTION audit.query_alerts(severity text DEFAULT NULL, alert_type text DEFAULT NULL,
                                   status text DEFAULT NULL, organization_id text DEFAULT NULL,
                                   since timestamptz DEFAULT NULL, until timestamptz DEFAULT NULL,
                                   max_rows integer DEFAULT 1000)
RETURNS SETOF audit.alerts
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  IF status IS NOT NULL AND status NOT IN ('open', 'acknowledged', 'resolved') THEN
    RAISE EXCEPTION 'unknown alert status %', quote_literal(status) USING ERRCODE = '22023',
      HINT = 'One of: open (not acknowledged), acknowledged (not resolved), resolved.';
  END IF;
  IF max_rows IS NULL OR max_rows < 1 THEN
    RAISE EXCEPTION 'max_rows must be positive' USING ERRCODE = '22023', HINT = 'The default is 1000.';
  END IF;
  RETURN QUERY
  SELECT * FROM audit.alerts a
   WHERE (query_alerts.severity IS NULL OR a.severity = query_alerts.severity)
     AND (query_alerts.alert_type IS NULL OR a.alert_type = query_alerts.alert_type)
     AND (query_alerts.organization_id IS NULL OR a.organization_id = query_alerts.organization_id)
     AND (since IS NULL OR a.created_at >= since)
     AND (until IS NULL OR a.created_at < until)
     AND (status IS NULL
          OR (status = 'open' AND NOT a.acknowledged AND NOT a.resolved)
          OR (status = 'acknowledged' AND a.acknowledged AND NOT a.resolved)
          OR (status = 'resolved' AND a.resolved))
   ORDER BY a.created_at DESC, a.alert_id DESC
   LIMIT max_rows;
END
$$;
COMMENT ON FUNCTION audit.query_alerts(text, text, text, text, timestamptz, timestamptz, integer) IS
  'Alerts filtered by severity, type, status (open, acknowledged, resolved), organization and creation time';

CREATE FUNCTION audit.alert_statistics(since timestamptz DEFAULT NULL)
RETURNS TABLE (dimension text, value text, total bigint, open bigint, acknowledged bigint, resolved bigint)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
  WITH a AS (SELECT * FROM audit.alerts a WHERE since IS NULL OR a.created_at >= since)
  SELECT d.dimension, d.value, count(*),
         count(*) FILTER (WHERE NOT a.acknowledged AND NOT a.resolved),
         count(*) FILTER (WHERE a.acknowledged AND NOT a.resolved),
         count(*) FILTER (WHERE a.resolved)
    FROM a, LATERAL (VALUES ('severity', a.severity::text), ('type', a.alert_type::text),
                            ('status', CASE WHEN a.resolved THEN 'resolved'
                                            WHEN a.acknowledged THEN 'acknowledged' ELSE 'open' END),
                            ('all', 'all')) AS d(dimension, value)
   GROUP BY d.dimension, d.value
   ORDER BY d.dimension, d.value
$$;
COMMENT ON FUNCTION audit.alert_statistics(timestamptz) IS
  'Alert counts by severity, type and status (and in all), with how many are open, acknowledged, resolved';

CREATE FUNCTION audit.cleanup_alerts(older_than_days integer DEFAULT 90) RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  n bigint;
BEGIN
  IF older_than_days IS NULL OR older_than_days < 0 THEN
    RAISE EXCEPTION 'older_than_days must be 0 or more' USING ERRCODE = '22023',
      HINT = 'Resolved alerts resolved longer ago than this many days are deleted.';
  END IF;
  DELETE FROM audit.alerts a WHERE a.resolved AND a.resolved_at < now() - make_interval(days => older_than_days);
  GET DIAGNOSTICS n = ROW_COUNT;
  RETURN n;
END
$$;
COMMENT ON FUNCTION audit.cleanup_alerts(integer) IS 'Delete alerts resolved more than N days ago; returns how many';

-- Rule evaluation ---------------------------------------------------------------

-- Where the audit_log rows of the last minutes start: transaction ids noted
-- at each evaluation let the rules read recent rows through the BRIN index
-- on (transaction_id, id), never the whole log.
CREATE TABLE audit.alert_clock (
  noted_at timestamptz PRIMARY KEY,
  next_xid bigint      NOT NULL
);
COMMENT ON TABLE audit.alert_clock IS
  'Internal: the next transaction id at past rule evaluations (bounds the rows a time window can hold)';

-- The lowest transaction id a row of the last `window` can have: rows are
-- stamped with their inserting transaction, which began before they were
-- written. Events written with an older event time are still found, through
-- their transaction; events back-dated further than the window are not.
CREATE FUNCTION audit.alert_window_xid(window_length interval) RETURNS bigint
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
  SELECT coalesce((SELECT c.next_xid FROM audit.alert_clock c
                    WHERE c.noted_at <= now() - window_length - interval '1 minute'
                    ORDER BY c.noted_at DESC LIMIT 1), 0)
$$;

-- One rule's findings: a dedup key per cause, with its title, description,
-- organization and metadata.
CREATE FUNCTION audit.alert_rule_findings(r audit.alert_rules)
RETURNS TABLE (cause text, organization_id text, title text, description text, metadata jsonb)
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
SET enable_seqscan = off
AS $$
DECLARE
  p jsonb := r.params;
  win interval;
BEGIN
  IF r.rule_type = 'failure_burst' THEN
    win := make_interval(mins => coalesce((p->>'window_minutes')::int, 10));
    RETURN QUERY
    SELECT format('%s|%s|%s', l.organization_id, l.principal_id, l.action), l.organization_id::text,
           format('%s failures of %s by %s', count(*), l.action, l.principal_id),
           format('%s failed %s events by principal %s within %s (threshold %s)', count(*), l.action,
                  l.principal_id, win, coalesce((p->>'threshold')::int, 5)),
           jsonb_build_object('principal_id', l.principal_id, 'action', l.action, 'failures', count(*),
                              'first', min(l."timestamp"), 'last', max(l."timestamp"),
                              'evidence', max(l.id)::text)
      FROM audit.audit_log l
     WHERE l.transaction_id >= audit.alert_window_xid(win)
       AND l."timestamp" >= now() - win
       AND l.status = 'failure'
       AND (r.organization_id IS NULL OR l.organization_id = r.organization_id)
       AND (p->>'action' IS NULL OR l.action LIKE p->>'action')
     GROUP BY l.organization_id, l.principal_id, l.action
    HAVING count(*) >= coalesce((p->>'threshold')::int, 5);
  ELSIF r.rule_type = 'phi_outside_hours' THEN
    win := make_interval(mins => coalesce((p->>'window_minutes')::int, 60));
    RETURN QUERY
    SELECT format('%s|%s', l.organization_id, l.principal_id), l.organization_id::text,
           format('PHI accessed outside hours by %s', l.principal_id),
           format('%s PHI events by %s outside %s:00-%s:00 (%s)', count(*), l.principal_id,
                  coalesce((p->>'start_hour')::int, 7), coalesce((p->>'end_hour')::int, 19),
                  coalesce(p->>'time_zone', 'UTC')),
           jsonb_build_object('principal_id', l.principal_id, 'events', count(*),
                              'ids', jsonb_agg(l.id ORDER BY l.id), 'evidence', max(l.id)::text)
      FROM audit.audit_log l
     WHERE l.transaction_id >= audit.alert_window_xid(win)
       AND l."timestamp" >= now() - win
       AND l.data_classification = 'PHI'
       AND (r.organization_id IS NULL OR l.organization_id = r.organization_id)
       AND NOT (extract(hour FROM l."timestamp" AT TIME ZONE coalesce(p->>'time_zone', 'UTC'))
                  >= coalesce((p->>'start_hour')::int, 7)
                AND extract(hour FROM l."timestamp" AT TIME ZONE coalesce(p->>'time_zone', 'UTC'))
                  < coalesce((p->>'end_hour')::int, 19))
     GROUP BY l.organization_id, l.principal_id;
  ELSIF r.rule_type = 'verification_failure' THEN
    RETURN QUERY
    SELECT 'verification', NULL::text, 'audit.verify() found problems',
           format('verification run %s at %s found %s problems: %s', v.run_id, v.started_at, v.problems,
                  v.first_problem),
           jsonb_build_object('run_id', v.run_id, 'problems', v.problems, 'evidence', v.run_id::text)
      FROM (SELECT * FROM audit.audit_integrity_log ORDER BY started_at DESC LIMIT 1) v
     WHERE v.problems > 0;
  ELSIF r.rule_type = 'seal_lag' THEN
    RETURN QUERY
    SELECT 'seal_lag', NULL::text, 'audit rows are not being sealed',
           format('seal lag %s (threshold %s s); %s rows unsealed; held back by pid %s',
                  s.seal_lag, coalesce((p->>'max_seconds')::int, 300), s.unsealed_rows, s.holding_back_pid),
           jsonb_build_object('seal_lag_seconds', extract(epoch FROM s.seal_lag), 'unsealed_rows', s.unsealed_rows,
                              'evidence', s.oldest_unsealed_xid::text)
      FROM audit.chain_status_row() s
     WHERE s.seal_lag > make_interval(secs => coalesce((p->>'max_seconds')::int, 300));
  ELSIF r.rule_type = 'default_partition_rows' THEN
    RETURN QUERY
    SELECT 'default_partition', NULL::text, 'audit rows in the default partition',
           format('%s rows lie outside every monthly partition; maintenance moves them once their month exists', d.n),
           jsonb_build_object('rows', d.n, 'evidence', d.first_id::text)
      FROM (SELECT count(*) AS n, min(id) AS first_id FROM audit.audit_log_default) d
     WHERE d.n >= coalesce((p->>'min_rows')::int, 1);
  ELSIF r.rule_type = 'maintenance_error' THEN
    RETURN QUERY
    SELECT 'maintenance', NULL::text, 'audit_db maintenance failed',
           format('maintenance run %s (%s) at %s: %s', m.run_id, m.via, m.started_at,
                  array_to_string(m.errors, '; ')),
           jsonb_build_object('run_id', m.run_id, 'errors', to_jsonb(m.errors), 'evidence', m.run_id::text)
      FROM (SELECT * FROM audit.maintenance_run WHERE status <> 'running' ORDER BY started_at DESC LIMIT 1) m
     WHERE m.status IN ('errors', 'interrupted');
  END IF;
END
$$;

-- Evaluate every enabled rule once (or only the named one, enabled or not:
-- to try a rule before enabling it): a finding whose cause has an open alert
-- updates it (one more occurrence, when the evidence is new); one whose
-- cause's last alert was resolved with the same evidence is not raised
-- again; anything else raises an alert. Returns per rule the alerts raised
-- and the open ones it still sees.
CREATE FUNCTION audit.evaluate_alert_rules(only_rule text DEFAULT NULL)
RETURNS TABLE (rule_name text, raised integer, still_open integer)
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  r   audit.alert_rules;
  f   record;
  key text;
  evidence text;
  open_alert audit.alerts;
BEGIN
  INSERT INTO audit.alert_clock (noted_at, next_xid)
  VALUES (now(), pg_snapshot_xmax(pg_current_snapshot())::text::bigint
                + coalesce((SELECT s.xid_offset FROM audit.audit_chain_state s), 0))
  ON CONFLICT (noted_at) DO NOTHING;
  DELETE FROM audit.alert_clock WHERE noted_at < now() - interval '2 days';

  IF only_rule IS NOT NULL AND NOT EXISTS (SELECT FROM audit.alert_rules x WHERE x.name = only_rule) THEN
    RAISE EXCEPTION 'alert rule % does not exist', quote_literal(only_rule) USING ERRCODE = 'P0002',
      HINT = 'See audit.alert_rules.';
  END IF;
  FOR r IN SELECT * FROM audit.alert_rules x
            WHERE (only_rule IS NULL AND x.enabled) OR x.name = only_rule ORDER BY x.rule_id LOOP
    rule_name := r.name;
    raised := 0;
    still_open := 0;
    FOR f IN SELECT * FROM audit.alert_rule_findings(r) LOOP
      key := format('rule:%s:%s', r.rule_id, f.cause);
      evidence := f.metadata->>'evidence';
      SELECT * INTO open_alert FROM audit.alerts a WHERE a.dedup_key = key AND NOT a.resolved FOR UPDATE;
      IF FOUND THEN
        still_open := still_open + 1;
        IF open_alert.metadata->>'evidence' IS DISTINCT FROM evidence THEN
          UPDATE audit.alerts a SET occurrences = a.occurrences + 1, last_seen_at = now(),
                                    metadata = f.metadata, description = f.description
           WHERE a.alert_id = open_alert.alert_id;
        END IF;
        CONTINUE;
      END IF;
      IF EXISTS (SELECT FROM audit.alerts a
                  WHERE a.dedup_key = key AND a.resolved AND a.metadata->>'evidence' IS NOT DISTINCT FROM evidence) THEN
        CONTINUE;     -- resolved, and nothing new happened since
      END IF;
      PERFORM audit.raise_alert(r.severity, r.alert_type, f.title, f.description, f.organization_id,
                                'rule:' || r.name, NULL, f.metadata, key, r.rule_id);
      raised := raised + 1;
    END LOOP;
    UPDATE audit.alert_rules x SET last_evaluated_at = now() WHERE x.rule_id = r.rule_id;
    RETURN NEXT;
  END LOOP;
END
$$;
COMMENT ON FUNCTION audit.evaluate_alert_rules(text) IS
  'Evaluate the enabled alert rules once (the worker does every audit_db.alert_interval); alerts raised per rule';

-- pg_dump keeps these (their rows are data, not part of the extension).
SELECT pg_catalog.pg_extension_config_dump('audit.alerts', '');
SELECT pg_catalog.pg_extension_config_dump('audit.alerts_alert_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('audit.alert_rules_rule_id_seq', '');
