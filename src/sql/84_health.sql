-- Health and performance of the audit system, readable from psql and from
-- a monitoring stack (audit.metrics_prometheus(); docs/postgres_exporter.yaml).

-- The database worker of this database, if one runs.
CREATE FUNCTION audit.worker_pid() RETURNS integer
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
  SELECT pid FROM pg_stat_activity
   WHERE backend_type = 'audit_db worker' AND datname = current_database()
   ORDER BY backend_start LIMIT 1
$$;

-- Where pg_cron is: installed here, preloaded for another database, or absent.
CREATE FUNCTION audit.pg_cron_location(OUT status text, OUT database text, OUT detail text)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  IF current_setting('shared_preload_libraries') !~ '(^|[ ,])pg_cron($|[ ,])' THEN
    status := 'absent';
    detail := 'pg_cron is not in shared_preload_libraries; the audit_db worker runs scheduled reports instead';
    RETURN;
  END IF;
  database := current_setting('cron.database_name', true);
  IF EXISTS (SELECT FROM pg_extension WHERE extname = 'pg_cron') THEN
    status := 'local';
    detail := 'pg_cron is installed in this database';
  ELSE
    status := 'remote';
    detail := format('pg_cron runs in database %s; jobs are created there through dblink', database);
  END IF;
END
$$;

-- SECURITY DEFINER: it counts rows of every organization and reads the
-- default partition, and tells only counts and states.
CREATE FUNCTION audit.health()
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
COMMENT ON FUNCTION audit.health() IS
  'healthy / degraded / unhealthy, overall and per component: chain, sealing, partitions, worker, pg_cron, alerts';

-- Statistics of the extension's tables and of audit_log's partitions.
CREATE VIEW audit.table_statistics AS
SELECT c.oid::regclass AS table_name,
       c.reltuples::bigint AS estimated_rows,
       pg_total_relation_size(c.oid) AS total_bytes,
       pg_size_pretty(pg_total_relation_size(c.oid)) AS total_size,
       s.seq_scan, s.idx_scan, s.n_tup_ins, s.n_tup_upd, s.n_tup_del, s.n_live_tup, s.n_dead_tup,
       s.last_vacuum, s.last_autovacuum, s.last_analyze, s.last_autoanalyze
  FROM pg_class c
  LEFT JOIN pg_stat_all_tables s ON s.relid = c.oid
 WHERE c.relnamespace = 'audit'::regnamespace AND c.relkind IN ('r', 'p');
COMMENT ON VIEW audit.table_statistics IS 'Size, rows, scans, writes and vacuum of every table of schema audit';

CREATE VIEW audit.partition_statistics AS
SELECT p.partition, p.range_from, p.range_to, p.is_default,
       c.reltuples::bigint AS estimated_rows,
       pg_total_relation_size(c.oid) AS total_bytes,
       pg_size_pretty(pg_total_relation_size(c.oid)) AS total_size,
       s.seq_scan, s.idx_scan, s.n_tup_ins, s.n_live_tup, s.n_dead_tup, s.last_autovacuum
  FROM audit.partition_bounds() p
  JOIN pg_class c ON c.oid = p.partition
  LEFT JOIN pg_stat_all_tables s ON s.relid = c.oid;
COMMENT ON VIEW audit.partition_statistics IS 'Each partition of audit.audit_log: bounds, rows, size, scans';

CREATE VIEW audit.index_usage AS
SELECT s.relid::regclass AS table_name, s.indexrelid::regclass AS index_name,
       s.idx_scan, s.idx_tup_read, s.idx_tup_fetch,
       pg_relation_size(s.indexrelid) AS index_bytes,
       pg_size_pretty(pg_relation_size(s.indexrelid)) AS index_size,
       i.indisunique AS is_unique, i.indisprimary AS is_primary
  FROM pg_stat_all_indexes s
  JOIN pg_index i ON i.indexrelid = s.indexrelid
 WHERE s.schemaname = 'audit';
COMMENT ON VIEW audit.index_usage IS 'Scans and size of every index on the tables of schema audit (partitions too)';

CREATE VIEW audit.unused_indexes AS
SELECT u.table_name, u.index_name, u.index_size, u.index_bytes
  FROM audit.index_usage u
 WHERE u.idx_scan = 0 AND NOT u.is_unique AND NOT u.is_primary;
COMMENT ON VIEW audit.unused_indexes IS
  'Indexes of schema audit never scanned since statistics were reset (unique and primary keys left out)';

-- The slowest statements that touch the audit tables, from
-- pg_stat_statements (in whatever schema it is installed); a notice and no
-- rows without it.
CREATE FUNCTION audit.slow_statements(max_rows integer DEFAULT 20)
RETURNS TABLE (query text, calls bigint, total_ms double precision, mean_ms double precision,
               max_ms double precision, rows bigint)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  nsp name;
BEGIN
  SELECT n.nspname INTO nsp FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace
   WHERE e.extname = 'pg_stat_statements';
  IF NOT FOUND THEN
    RAISE NOTICE 'pg_stat_statements is not installed in this database: no statement statistics'
      USING HINT = 'Add pg_stat_statements to shared_preload_libraries, restart, then CREATE EXTENSION pg_stat_statements.';
    RETURN;
  END IF;
  RETURN QUERY EXECUTE format(
    'SELECT s.query, s.calls, s.total_exec_time, s.mean_exec_time, s.max_exec_time, s.rows'
    ' FROM %I.pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid'
    ' WHERE d.datname = current_database() AND s.query ~* ''\maudit\.'''
    ' ORDER BY s.mean_exec_time DESC LIMIT $1', nsp) USING max_rows;
END
$$;
COMMENT ON FUNCTION audit.slow_statements(integer) IS
  'Slowest statements touching schema audit, by mean time (needs pg_stat_statements)';

-- The figures in Prometheus' text exposition format.
CREATE FUNCTION audit.metrics_prometheus() RETURNS text
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  s   record;
  v   record;
  out text := '';
  h   record;
  a   record;
BEGIN
  SELECT * INTO s FROM audit.chain_status_row();
  out := out || E'# HELP audit_db_chain_height Blocks in the audit chain.\n# TYPE audit_db_chain_height gauge\n'
             || format(E'audit_db_chain_height %s\n', s.height)
             || E'# HELP audit_db_unsealed_rows Audit rows not sealed yet.\n# TYPE audit_db_unsealed_rows gauge\n'
             || format(E'audit_db_unsealed_rows %s\n', s.unsealed_rows)
             || E'# HELP audit_db_seal_lag_seconds Age of the oldest unsealed row.\n# TYPE audit_db_seal_lag_seconds gauge\n'
             || format(E'audit_db_seal_lag_seconds %s\n', coalesce(extract(epoch FROM s.seal_lag), 0))
             || E'# HELP audit_db_default_partition_rows Rows in the default partition.\n# TYPE audit_db_default_partition_rows gauge\n'
             || format(E'audit_db_default_partition_rows %s\n', (SELECT count(*) FROM audit.audit_log_default));
  SELECT * INTO v FROM audit.audit_integrity_log ORDER BY started_at DESC LIMIT 1;
  out := out || E'# HELP audit_db_last_verification_problems Problems found by the last audit.verify().\n'
             || E'# TYPE audit_db_last_verification_problems gauge\n'
             || format(E'audit_db_last_verification_problems %s\n', coalesce(v.problems, 0))
             || E'# HELP audit_db_last_verification_age_seconds Seconds since the last audit.verify() (-1: never).\n'
             || E'# TYPE audit_db_last_verification_age_seconds gauge\n'
             || format(E'audit_db_last_verification_age_seconds %s\n',
                       coalesce(extract(epoch FROM now() - v.finished_at), -1));
  out := out || E'# HELP audit_db_alerts_open Open alerts by severity.\n# TYPE audit_db_alerts_open gauge\n';
  FOR a IN SELECT sev, (SELECT count(*) FROM audit.alerts x WHERE NOT x.resolved AND x.severity = sev) AS n
             FROM unnest(ARRAY['LOW', 'MEDIUM', 'HIGH', 'CRITICAL']) sev LOOP
    out := out || format(E'audit_db_alerts_open{severity="%s"} %s\n', a.sev, a.n);
  END LOOP;
  out := out || E'# HELP audit_db_errors_last_hour Errors recorded in audit.error_log in the last hour.\n'
             || E'# TYPE audit_db_errors_last_hour gauge\n'
             || format(E'audit_db_errors_last_hour %s\n',
                       (SELECT count(*) FROM audit.error_log e WHERE e.occurred_at >= now() - interval '1 hour'))
             || E'# HELP audit_db_report_executions_failed_total Report executions that failed.\n'
             || E'# TYPE audit_db_report_executions_failed_total counter\n'
             || format(E'audit_db_report_executions_failed_total %s\n',
                       (SELECT count(*) FROM audit.report_executions x WHERE x.status = 'failed'));
  out := out || E'# HELP audit_db_health Health per component: 0 healthy, 1 degraded, 2 unhealthy.\n'
             || E'# TYPE audit_db_health gauge\n';
  FOR h IN SELECT * FROM audit.health() LOOP
    out := out || format(E'audit_db_health{component="%s"} %s\n', h.component,
                         array_position(ARRAY['healthy', 'degraded', 'unhealthy'], h.status) - 1);
  END LOOP;
  RETURN out;
END
$$;
COMMENT ON FUNCTION audit.metrics_prometheus() IS
  'Chain, sealing, partitions, verification, alerts, errors, reports and health in Prometheus text format';
