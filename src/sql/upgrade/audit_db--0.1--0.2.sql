-- audit_db 0.1 -> 0.2: dump and restore; health on a hot standby; auditors read the
-- tracked tables; the checks of audit.audit_log move from domains into its stamping trigger;
-- a repeated pseudonymization reuses the subject's token or encrypted pseudonym;
-- new partitions leave their BRIN tail range unsummarised; alert rules, report
-- schedules and configuration changes are tenant-isolated.
--
-- pg_dump now keeps every table and sequence whose rows are data (the default
-- partition, the event id sequence, GDPR keys, mappings and redactions,
-- alerts, error and configuration-change logs, report executions); a restore
-- runs under session_replication_role = replica and ends with
-- audit.finish_restore() (src/restore.c, docs/operations.md).

\echo Use "ALTER EXTENSION audit_db UPDATE TO '0.2'" to load this file. \quit

-- The chain's transaction ids may be offset from this cluster's (a restore
-- into a cluster whose ids lie behind).
ALTER TABLE audit.audit_chain_state
  ADD COLUMN xid_offset bigint NOT NULL DEFAULT 0 CHECK (xid_offset >= 0);
COMMENT ON TABLE audit.audit_chain_state IS
  'Head of the audit chain, the transaction-id horizon below which every committed row is sealed, '
  'and the offset from this cluster''s transaction ids to the chain''s';

CREATE OR REPLACE FUNCTION audit.chain_status_row(
  OUT height bigint, OUT head_hash bytea, OUT rows_sealed bigint, OUT last_sealed_at timestamptz,
  OUT horizon_xid bigint, OUT unsealed_rows bigint, OUT oldest_unsealed_xid bigint,
  OUT seal_lag interval, OUT holding_back_pid integer, OUT holding_back_xact_start timestamptz,
  OUT holding_back_state text, OUT holding_back_query text)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
-- The unsealed rows are read through the BRIN index on transaction_id, as the
-- sealer reads them: the planner cannot see the horizon, and a sequential
-- scan (and JIT compiling it) reads the whole log on every call.
SET enable_seqscan = off
SET jit = off
AS $$
  WITH st AS (SELECT * FROM audit.audit_chain_state),
  snap AS (SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint + st.xid_offset AS xmin FROM st),
  unsealed AS (
    SELECT count(*) AS n, min(l.transaction_id) AS oldest,
           count(*) FILTER (WHERE l.transaction_id < snap.xmin) AS sealable,
           min(l."timestamp") FILTER (WHERE l.transaction_id < snap.xmin) AS sealable_since
    FROM audit.audit_log l, st, snap WHERE l.transaction_id >= st.horizon_xid),
  blocker AS (
    SELECT a.pid, a.xact_start, a.state, a.query
    FROM pg_stat_activity a, unsealed u
    WHERE u.n > u.sealable AND a.backend_xid IS NOT NULL
    ORDER BY age(a.backend_xid) DESC
    LIMIT 1)
  SELECT st.height, st.head_hash, st.rows_total, st.last_sealed_at, st.horizon_xid,
         u.n, u.oldest,
         CASE WHEN u.sealable = 0 THEN interval '0'
              ELSE greatest(now() - greatest(st.last_sealed_at, u.sealable_since), interval '0') END,
         b.pid, b.xact_start, b.state, b.query
  FROM st CROSS JOIN unsealed u LEFT JOIN blocker b ON true
$$;

CREATE OR REPLACE FUNCTION audit.evaluate_alert_rules(only_rule text DEFAULT NULL)
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

-- Health on a hot standby: the worker runs on the primary.
CREATE OR REPLACE FUNCTION audit.health()
RETURNS TABLE (component text, status text, detail text)
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  v   record;
  s   record;
  c   record;
  n   bigint;
  grace interval := make_interval(secs => (SELECT setting::int FROM pg_settings WHERE name = 'audit_db.unsealed_grace'));
  preloaded boolean := current_setting('shared_preload_libraries') ~ '(^|[ ,])audit_db($|[ ,])';
  overall int := 0;
  results text[] := '{}';     -- rows of (component, status, detail)
BEGIN
  grace := coalesce(grace, interval '60 seconds');
  -- chain: the last verification (of the whole log)
  SELECT * INTO v FROM audit.audit_integrity_log ORDER BY started_at DESC LIMIT 1;
  IF NOT FOUND THEN
    results := results || ARRAY[ARRAY['chain', 'degraded', 'never verified: run audit.verify()']];
  ELSIF v.problems > 0 THEN
    results := results || ARRAY[ARRAY['chain', 'unhealthy',
                                format('the last verification (%s) found %s problems: %s', v.started_at, v.problems,
                                       v.first_problem)]];
  ELSIF v.started_at < now() - interval '7 days' THEN
    results := results || ARRAY[ARRAY['chain', 'degraded', format('last verified %s, over 7 days ago', v.started_at)]];
  ELSE
    results := results || ARRAY[ARRAY['chain', 'healthy', format('verified clean %s', v.started_at)]];
  END IF;

  -- sealing: the seal lag against audit_db.unsealed_grace
  SELECT * INTO s FROM audit.chain_status_row();
  IF s.seal_lag > grace * 10 THEN
    results := results || ARRAY[ARRAY['sealing', 'unhealthy',
                                format('seal lag %s (%s rows unsealed)%s', s.seal_lag, s.unsealed_rows,
                                       CASE WHEN s.holding_back_pid IS NOT NULL
                                            THEN format('; held back by pid %s', s.holding_back_pid) ELSE '' END)]];
  ELSIF s.seal_lag > grace THEN
    results := results || ARRAY[ARRAY['sealing', 'degraded',
                                format('seal lag %s (%s rows unsealed)', s.seal_lag, s.unsealed_rows)]];
  ELSE
    results := results || ARRAY[ARRAY['sealing', 'healthy',
                                format('height %s, %s rows unsealed', s.height, s.unsealed_rows)]];
  END IF;

  -- partitions: the current month exists, enough made ahead, nothing in the default partition
  SELECT count(*) INTO n FROM audit.audit_log_default;
  IF NOT EXISTS (SELECT FROM audit.partition_bounds() p WHERE p.range_from <= now() AND p.range_to > now()) THEN
    results := results || ARRAY[ARRAY['partitions', 'unhealthy',
                                'no partition for the current month: events go to the default partition']];
  ELSIF n > 0 THEN
    results := results || ARRAY[ARRAY['partitions', 'degraded',
                                format('%s rows in the default partition; maintenance moves them', n)]];
  ELSE
    results := results || ARRAY[ARRAY['partitions', 'healthy',
                                format('%s monthly partitions', (SELECT count(*) FROM audit.partition_bounds() p
                                                                 WHERE NOT p.is_default))]];
  END IF;

  -- worker
  IF NOT preloaded THEN
    results := results || ARRAY[ARRAY['worker', 'degraded',
                                'audit_db is not in shared_preload_libraries: call audit.seal() and '
                                'CALL audit.run_maintenance() on a schedule']];
  ELSIF pg_is_in_recovery() THEN
    results := results || ARRAY[ARRAY['worker', 'healthy',
                                'hot standby: the primary''s worker seals and maintains; replay brings its work']];
  ELSIF audit.worker_pid() IS NULL THEN
    results := results || ARRAY[ARRAY['worker', 'unhealthy', 'no audit_db worker runs for this database']];
  ELSE
    results := results || ARRAY[ARRAY['worker', 'healthy', format('worker pid %s', audit.worker_pid())]];
  END IF;

  -- pg_cron: needed only for reports scheduled through it
  SELECT * INTO c FROM audit.pg_cron_location();
  SELECT count(*) INTO n FROM audit.scheduled_reports r WHERE r.enabled AND r.runner = 'pg_cron';
  IF c.status = 'absent' AND n > 0 THEN
    results := results || ARRAY[ARRAY['pg_cron', 'unhealthy',
                                format('%s reports are scheduled through pg_cron, which is not loaded', n)]];
  ELSIF EXISTS (SELECT FROM audit.scheduled_reports r
                 WHERE r.enabled AND r.next_run_at < now() - interval '10 minutes') THEN
    results := results || ARRAY[ARRAY['pg_cron', 'degraded', 'scheduled reports are overdue: '
                                || (SELECT string_agg(r.name, ', ' ORDER BY r.name) FROM audit.scheduled_reports r
                                     WHERE r.enabled AND r.next_run_at < now() - interval '10 minutes')]];
  ELSE
    results := results || ARRAY[ARRAY['pg_cron', 'healthy', c.detail]];
  END IF;

  -- alerts
  IF EXISTS (SELECT FROM audit.alerts a WHERE NOT a.resolved AND a.severity = 'CRITICAL') THEN
    results := results || ARRAY[ARRAY['alerts', 'unhealthy',
                                format('%s open CRITICAL alerts', (SELECT count(*) FROM audit.alerts a
                                                                   WHERE NOT a.resolved AND a.severity = 'CRITICAL'))]];
  ELSIF EXISTS (SELECT FROM audit.alerts a WHERE NOT a.resolved AND a.severity = 'HIGH') THEN
    results := results || ARRAY[ARRAY['alerts', 'degraded',
                                format('%s open HIGH alerts', (SELECT count(*) FROM audit.alerts a
                                                               WHERE NOT a.resolved AND a.severity = 'HIGH'))]];
  ELSE
    results := results || ARRAY[ARRAY['alerts', 'healthy',
                                format('%s open alerts', (SELECT count(*) FROM audit.alerts a WHERE NOT a.resolved))]];
  END IF;

  FOR i IN 1 .. array_length(results, 1) LOOP
    overall := greatest(overall, array_position(ARRAY['healthy', 'degraded', 'unhealthy'], results[i][2]) - 1);
  END LOOP;
  component := 'overall';
  status := (ARRAY['healthy', 'degraded', 'unhealthy'])[overall + 1];
  detail := (SELECT string_agg(results[i][1], ', ') FROM generate_subscripts(results, 1) i
              WHERE results[i][2] <> 'healthy');
  RETURN NEXT;
  FOR i IN 1 .. array_length(results, 1) LOOP
    component := results[i][1];
    status := results[i][2];
    detail := results[i][3];
    RETURN NEXT;
  END LOOP;
END
$$;

-- Rows that are data, kept by pg_dump.
SELECT pg_catalog.pg_extension_config_dump('audit.audit_log_default', '');
SELECT pg_catalog.pg_extension_config_dump('audit.audit_log_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('audit.retention_summary', '');
SELECT pg_catalog.pg_extension_config_dump('audit.pseudonym_secret', '');
SELECT pg_catalog.pg_extension_config_dump('audit.erasure_exemption', '');
SELECT pg_catalog.pg_extension_config_dump('audit.pseudonym_mapping', '');
SELECT pg_catalog.pg_extension_config_dump('audit.redaction_request', '');
SELECT pg_catalog.pg_extension_config_dump('audit.redaction_request_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('audit.redacted_row', '');
SELECT pg_catalog.pg_extension_config_dump('audit.alerts', '');
SELECT pg_catalog.pg_extension_config_dump('audit.alerts_alert_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('audit.alert_rules_rule_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('audit.error_log', '');
SELECT pg_catalog.pg_extension_config_dump('audit.error_log_error_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('audit.config_change_event', '');
SELECT pg_catalog.pg_extension_config_dump('audit.config_change_event_change_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('audit.report_executions', '');
SELECT pg_catalog.pg_extension_config_dump('audit.report_executions_execution_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('audit.report_templates_template_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('audit.scheduled_reports_schedule_id_seq', '');

-- Dump and restore (src/restore.c; docs/operations.md, "Backup and restore").
--
-- pg_restore of a database using audit_db runs with
-- session_replication_role = replica. CREATE EXTENSION then creates the
-- structure only (the dump brings the partitions, the chain state, the keys
-- and every row) and marks the restore as pending here: until a superuser runs
-- audit.finish_restore(), nothing seals, maintains or logs. Not dumped.
CREATE TABLE audit.restore_pending (
  singleton  boolean     PRIMARY KEY DEFAULT true CHECK (singleton),
  begun_at   timestamptz NOT NULL DEFAULT now(),
  begun_by   name        NOT NULL DEFAULT session_user
);
COMMENT ON TABLE audit.restore_pending IS
  'One row while a restore of this database is not finished (see audit.finish_restore())';
INSERT INTO audit.restore_pending (singleton)
SELECT true WHERE current_setting('session_replication_role') = 'replica';

CREATE FUNCTION audit.finish_restore() RETURNS jsonb
LANGUAGE C VOLATILE
SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'audit_finish_restore_sql';
COMMENT ON FUNCTION audit.finish_restore() IS
  'End a restore (superuser): keep the chain''s transaction ids increasing in this cluster, let sealing, '
  'maintenance and logging resume; records an audit_db.restore event and returns a summary';

REVOKE ALL ON audit.restore_pending FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION audit.finish_restore() FROM PUBLIC;
GRANT SELECT ON audit.restore_pending TO audit_db_auditor;

-- Auditors see which tables are tracked.
GRANT SELECT ON audit.tracked_table, audit.tracked_tables TO audit_db_auditor;

-- The checks of audit.audit_log run in its stamping trigger (C) instead of
-- domains: a domain adds a coercion to the plan of every INSERT. The types
-- are the domains' base types, so no row is rewritten; the domains stay for
-- the other tables that use them.
ALTER TABLE audit.audit_log
  ALTER COLUMN status TYPE varchar(16),
  ALTER COLUMN hash_algorithm TYPE varchar(50),
  ALTER COLUMN data_classification TYPE varchar(20),
  ALTER COLUMN processing_latency TYPE integer;

-- Pseudonymizing a subject again with the token or encryption strategy
-- reuses its pseudonym instead of failing with P0002 (or, for rows logged
-- since, giving the same subject a second pseudonym).
CREATE OR REPLACE FUNCTION audit.pseudonymize(principal_id text, strategy text DEFAULT 'hash', requested_by text DEFAULT NULL,
                                   encryption_key text DEFAULT NULL, organization text DEFAULT NULL)
RETURNS TABLE (pseudonym text, rows_affected bigint)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  scope    text := audit.gdpr_authorize('pseudonymize');
  org      text := audit.gdpr_organization(scope, organization);
  map_scope text := coalesce(org, '*');
  secret   audit.pseudonym_secret;
  p        text;
  enc      bytea;
  lookup   bytea;
  existed  boolean;
  archived bigint;
  req      bigint;
  res      record;
  root     bytea;
BEGIN
  PERFORM audit.gdpr_check_subject(principal_id, requested_by, true);
  IF strategy IS NULL OR strategy NOT IN ('hash', 'token', 'encryption') THEN
    RAISE EXCEPTION 'unknown pseudonymization strategy %', coalesce(quote_literal(strategy), 'NULL')
      USING ERRCODE = '22023', HINT = 'One of: hash, token, encryption.';
  END IF;
  IF strategy <> 'encryption' AND encryption_key IS NOT NULL THEN
    RAISE EXCEPTION 'encryption_key applies to the encryption strategy only' USING ERRCODE = '22023',
      HINT = 'Leave encryption_key NULL for the hash and token strategies.';
  END IF;
  -- One redaction at a time: rows are rewritten from one consistent view.
  LOCK TABLE audit.redaction_request IN SHARE ROW EXCLUSIVE MODE;
  SELECT * INTO STRICT secret FROM audit.pseudonym_secret;

  IF EXISTS (SELECT FROM audit.pseudonym_mapping m
              WHERE m.pseudonym = pseudonymize.principal_id AND m.organization_scope IN (map_scope, '*')) THEN
    RAISE EXCEPTION 'principal_id % is already a pseudonym', quote_literal(principal_id) USING ERRCODE = '22023',
      HINT = 'Pseudonymize the original id; audit.original_id() reverses a pseudonym.';
  END IF;

  lookup := audit.gdpr_hmac(secret.hmac_key, 'audit_db.lookup.v1', map_scope, principal_id);
  -- A subject pseudonymized before with this strategy keeps that pseudonym:
  -- rows logged since get the same one, and a repeated request is a no-op
  -- (token and encryption pseudonyms are random: a new one would split the
  -- subject in two).
  SELECT m.pseudonym INTO p FROM audit.pseudonym_mapping m
   WHERE m.original_lookup = lookup AND m.organization_scope = map_scope
     AND m.strategy = pseudonymize.strategy
   ORDER BY m.created_at, m.pseudonym LIMIT 1;
  existed := p IS NOT NULL;
  IF existed THEN
    NULL;
  ELSIF strategy = 'hash' THEN
    p := 'ph_' || encode(substr(audit.gdpr_hmac(secret.hmac_key, 'audit_db.pseudonym.v1', map_scope, principal_id),
                                1, 16), 'hex');
    enc := audit.gdpr_encrypt(secret.mapping_key, principal_id);
  ELSIF strategy = 'token' THEN
    p := 'pt_' || encode(audit.gdpr_random_bytes(16), 'hex');
    enc := audit.gdpr_encrypt(secret.mapping_key, principal_id);
  ELSE
    enc := audit.gdpr_encrypt(audit.gdpr_encryption_key(encryption_key), principal_id);
    p := 'pe_' || translate(encode(enc, 'base64'), E'+/=\n', '-_');
    IF length(p) > 255 THEN
      RAISE EXCEPTION 'principal_id is too long for the encryption strategy (% bytes)', octet_length(principal_id)
        USING ERRCODE = '22001',
        HINT = 'Its pseudonym would not fit audit_log.principal_id (255); use the hash or token strategy.';
    END IF;
  END IF;

  IF NOT existed THEN
    INSERT INTO audit.pseudonym_mapping AS m (organization_scope, pseudonym, strategy, original_encrypted,
                                              original_lookup, requested_by, created_by)
    VALUES (map_scope, p, strategy, enc, lookup, requested_by, session_user)
    ON CONFLICT ON CONSTRAINT pseudonym_mapping_pkey DO NOTHING;
    existed := NOT FOUND;
  END IF;

  req := nextval('audit.redaction_request_id_seq');
  SELECT * INTO STRICT res
    FROM audit.redact_subject_rows(req, ARRAY[principal_id], p, org, false, false);
  archived := audit.warn_archived_subject_rows(ARRAY[principal_id], org);
  IF res.rows_changed = 0 AND NOT existed AND archived = 0 THEN
    RAISE EXCEPTION 'no audit row mentions principal %', quote_literal(principal_id) USING ERRCODE = 'P0002',
      HINT = CASE WHEN org IS NULL THEN 'Check the id: it is matched exactly (case-sensitive), as a whole token.'
                  ELSE format('Only organization %L''s rows were searched.', org) END;
  END IF;

  SELECT audit.merkle_root(coalesce(array_agg(d.fields_digest ORDER BY d.audit_log_id), '{}'))
    INTO root FROM audit.redacted_row d WHERE d.request_id = req;
  INSERT INTO audit.redaction_request (request_id, kind, organization_id, strategy, requested_by, performed_by,
                                       rows_changed, attestation_root)
  VALUES (req, 'pseudonymize', org, strategy, requested_by, session_user, res.rows_changed, root);
  PERFORM audit.record_gdpr_event('gdpr.pseudonymize', org, 'pseudonym', p,
            jsonb_build_object('request_id', req, 'strategy', strategy, 'requested_by', requested_by,
                               'rows_changed', res.rows_changed, 'attestation_root', encode(root, 'hex')));
  RETURN QUERY SELECT p, res.rows_changed;
END
$$;

-- New partitions leave the BRIN range their inserts go to unsummarised
-- (src/partition_manager.c); do the same for the empty ones made by 0.1
-- (premade months), whose first inserts would otherwise each rewrite it.
DO $$
DECLARE
  r record;
BEGIN
  FOR r IN SELECT i.indexrelid
             FROM pg_inherits h
             JOIN pg_index i ON i.indrelid = h.inhrelid
             JOIN pg_class c ON c.oid = i.indexrelid
             JOIN pg_am a ON a.oid = c.relam
            WHERE h.inhparent = 'audit.audit_log'::regclass AND a.amname = 'brin'
              AND pg_relation_size(h.inhrelid) = 0
  LOOP
    PERFORM brin_desummarize_range(r.indexrelid::regclass, 0);
  END LOOP;
END
$$;

-- Alert rules, report schedules and the record of configuration changes are
-- tenant-isolated: a tenant reads its own rows and those of no organization.
-- A configuration change now carries the organization of the row it is about.
ALTER TABLE audit.config_change_event ADD COLUMN organization_id varchar(255);
UPDATE audit.config_change_event
   SET organization_id = coalesce(new_value, old_value) ->> 'organization_id'
 WHERE kind = 'table';
CREATE OR REPLACE FUNCTION audit.log_config_change() RETURNS trigger
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
SELECT audit.enable_tenant_isolation('audit.alert_rules', shared_null_rows => true);
SELECT audit.enable_tenant_isolation('audit.scheduled_reports', shared_null_rows => true);
SELECT audit.enable_tenant_isolation('audit.config_change_event', shared_null_rows => true);
