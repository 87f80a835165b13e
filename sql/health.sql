-- health: audit.health() per component and overall, the statistics views,
-- slow statements, and the Prometheus text (issue 7). The states that need
-- a stopped worker or an old seal lag are in test/health.py; here, the
-- chain (never verified, clean, failed), partitions (rows in the default
-- partition) and alerts (HIGH, CRITICAL).

\i sql/include/fresh_extension.sql
\set VERBOSITY terse

SELECT component FROM audit.health();
SELECT status, detail FROM audit.health() WHERE component = 'chain';
SELECT audit.log_event(action => 'login', status => 'success', principal_id => 'a') > 0 AS logged;
SELECT pg_temp.seal_all() AS sealed;
SELECT count(*) AS problems FROM audit.verify();
SELECT component, status FROM audit.health() WHERE component IN ('chain', 'sealing', 'partitions', 'alerts');

-- Rows in the default partition: partitions degraded; overall at least degraded.
INSERT INTO audit.audit_log ("timestamp", action, status) VALUES ('2090-06-01', 'future', 'success');
SELECT status, detail FROM audit.health() WHERE component = 'partitions';
SELECT status <> 'healthy' AS not_healthy, detail ~ 'partitions' AS names_partitions
  FROM audit.health() WHERE component = 'overall';

-- Alerts: an open HIGH one degrades, a CRITICAL one makes it unhealthy.
SELECT audit.raise_alert('HIGH', 'SECURITY', 'suspicious') > 0 AS raised;
SELECT status, detail FROM audit.health() WHERE component = 'alerts';
SELECT audit.raise_alert('CRITICAL', 'SYSTEM', 'chain broken') > 0 AS raised;
SELECT status, detail FROM audit.health() WHERE component = 'alerts';
SELECT status FROM audit.health() WHERE component = 'overall';

-- A failed verification: chain unhealthy.
SELECT pg_temp.seal_all() AS sealed;
ALTER TABLE audit.audit_log DISABLE TRIGGER USER;
UPDATE audit.audit_log SET principal_id = 'b' WHERE principal_id = 'a';
ALTER TABLE audit.audit_log ENABLE TRIGGER USER;
SELECT count(*) AS problems FROM audit.verify();
SELECT status, detail ~ 'found 1 problems' AS says_so FROM audit.health() WHERE component = 'chain';

-- The Prometheus text: HELP and TYPE for each metric, one sample line each
-- (labels for alerts by severity and health by component).
SELECT count(*) FILTER (WHERE l ~ '^# HELP audit_db_') AS help_lines,
       count(*) FILTER (WHERE l ~ '^# TYPE audit_db_[a-z_]+ (gauge|counter)$') AS type_lines,
       count(*) FILTER (WHERE l ~ '^audit_db_[a-z_]+(\{[a-z]+="[A-Za-z_]+"\})? -?[0-9.e+-]+$') AS samples,
       count(*) FILTER (WHERE l !~ '^(# (HELP|TYPE) )?audit_db_' AND l <> '') AS other_lines
  FROM regexp_split_to_table(audit.metrics_prometheus(), E'\n') AS l;
SELECT l FROM regexp_split_to_table(audit.metrics_prometheus(), E'\n') AS l
 WHERE l ~ '^audit_db_(alerts_open|health\{component="(alerts|chain|overall|partitions)"|default_partition_rows|last_verification_problems)'
 ORDER BY l;

-- Statistics views.
SELECT count(*) > 10 AS tables, sum(total_bytes) > 0 AS sized
  FROM audit.table_statistics;
SELECT count(*) FILTER (WHERE is_default) AS default_partitions, count(*) FILTER (WHERE NOT is_default) >= 2 AS months
  FROM audit.partition_statistics;
SELECT count(*) > 0 AS indexes FROM audit.index_usage WHERE table_name::text LIKE 'audit.audit_log%';
SELECT count(*) >= 0 AS listed FROM audit.unused_indexes;
SET client_min_messages = notice;
SELECT count(*) FROM audit.slow_statements();
SET client_min_messages = warning;

-- Auditors may read it all.
CREATE ROLE regress_hl_auditor LOGIN IN ROLE audit_db_auditor;
SET SESSION AUTHORIZATION regress_hl_auditor;
SELECT count(*) = 7 AS components FROM audit.health();
SELECT length(audit.metrics_prometheus()) > 0 AS metrics;
SELECT count(*) > 0 AS tables FROM audit.table_statistics;
RESET SESSION AUTHORIZATION;
DROP OWNED BY regress_hl_auditor;
DROP ROLE regress_hl_auditor;
