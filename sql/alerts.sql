-- alerts: alerts raised by callers and by rules (rows, not code), one open
-- alert per cause, acknowledge / resolve / query / statistics / cleanup;
-- the error log and its aggregation; configuration changes with their
-- reason (issue 7). The rules here are created disabled, so that the
-- background worker (which evaluates enabled rules every
-- audit_db.alert_interval) leaves them to the suite, which evaluates them by
-- name.

\i sql/include/fresh_extension.sql
\set VERBOSITY terse


-- Raising by hand: validation, and one open alert per dedup_key.
SELECT pg_temp.error_of($$SELECT audit.raise_alert('URGENT', 'SECURITY', 'x')$$);
SELECT pg_temp.error_of($$SELECT audit.raise_alert('HIGH', 'NETWORK', 'x')$$);
SELECT pg_temp.error_of($$SELECT audit.raise_alert('HIGH', 'SECURITY', '')$$);
SELECT pg_temp.error_of($$SELECT audit.raise_alert('HIGH', 'SECURITY', 'x', metadata => '[1]')$$);
SELECT count(*) AS alerts FROM audit.alerts;
SELECT audit.raise_alert('MEDIUM', 'SYSTEM', 'disk filling', dedup_key => 'disk') AS first,
       audit.raise_alert('MEDIUM', 'SYSTEM', 'disk filling', dedup_key => 'disk', metadata => '{"pct": 91}') AS same;
SELECT title, occurrences, metadata FROM audit.alerts WHERE dedup_key = 'disk';
SELECT audit.raise_alert('LOW', 'COMPLIANCE', 'report late', organization_id => 'org_a') AS low;

-- Acknowledge, resolve (real booleans with who and when), then the same
-- key raises a new alert.
SELECT audit.acknowledge_alert(alert_id) AS acked, audit.acknowledge_alert(alert_id) AS acked_again
  FROM audit.alerts WHERE dedup_key = 'disk';
SELECT acknowledged, acknowledged_by IS NOT NULL AS by_whom, acknowledged_at IS NOT NULL AS when_known, resolved
  FROM audit.alerts WHERE dedup_key = 'disk';
SELECT audit.resolve_alert(alert_id, 'cleaned up') AS resolved, audit.resolve_alert(alert_id) AS resolved_again
  FROM audit.alerts WHERE dedup_key = 'disk';
SELECT resolved, resolution_notes, resolved_by IS NOT NULL AS by_whom FROM audit.alerts WHERE dedup_key = 'disk';
SELECT audit.raise_alert('MEDIUM', 'SYSTEM', 'disk filling again', dedup_key => 'disk') > 0 AS new_alert;
SELECT count(*) AS disk_alerts, count(*) FILTER (WHERE NOT resolved) AS open FROM audit.alerts WHERE dedup_key = 'disk';
SELECT pg_temp.error_of($$SELECT audit.resolve_alert(999999)$$);
SELECT pg_temp.error_of($$SELECT audit.acknowledge_alert(999999)$$);

-- Queries and statistics.
SELECT title, severity FROM audit.active_alerts() ORDER BY title;
SELECT title FROM audit.active_alerts('MEDIUM');
SELECT title FROM audit.query_alerts(status => 'resolved');
SELECT title FROM audit.query_alerts(organization_id => 'org_a', alert_type => 'COMPLIANCE');
SELECT pg_temp.error_of($$SELECT * FROM audit.query_alerts(status => 'closed')$$);
SELECT * FROM audit.alert_statistics();

-- Rules. A burst of failed logins by one principal fires once; while its
-- alert is open, more evaluations and more failures do not raise another
-- (the open one counts them); once resolved, it stays quiet until the cause
-- recurs (a new failure), then fires again.
INSERT INTO audit.alert_rules (name, rule_type, params, severity, enabled) VALUES
  ('login_burst', 'failure_burst', '{"threshold": 5, "window_minutes": 10, "action": "login"}', 'HIGH', false),
  ('phi_at_night', 'phi_outside_hours', '{"start_hour": 0, "end_hour": 0}', 'MEDIUM', false),
  ('verify_failed', 'verification_failure', '{}', 'CRITICAL', false),
  ('default_rows', 'default_partition_rows', '{"min_rows": 1}', 'LOW', false),
  ('maintenance_failed', 'maintenance_error', '{}', 'HIGH', false);
SELECT pg_temp.error_of($$INSERT INTO audit.alert_rules (name, rule_type) VALUES ('bad', 'telepathy')$$);
SELECT pg_temp.error_of($$SELECT * FROM audit.evaluate_alert_rules('no_such_rule')$$);
SELECT audit.log_event(action => 'login', status => 'failure', principal_id => 'mallory', organization_id => 'org_a')
  FROM generate_series(1, 4);
SELECT audit.log_event(action => 'login', status => 'failure', principal_id => 'alice', organization_id => 'org_a');
SELECT * FROM audit.evaluate_alert_rules('login_burst');       -- 4 failures: below the threshold
SELECT audit.log_event(action => 'login', status => 'failure', principal_id => 'mallory', organization_id => 'org_a');
SELECT * FROM audit.evaluate_alert_rules('login_burst');       -- 5: fires
SELECT * FROM audit.evaluate_alert_rules('login_burst');       -- same cause: not again
SELECT audit.log_event(action => 'login', status => 'failure', principal_id => 'mallory', organization_id => 'org_a');
SELECT * FROM audit.evaluate_alert_rules('login_burst');       -- a sixth: counted on the open alert
SELECT organization_id, severity, alert_type, title, source, occurrences, metadata->>'failures' AS failures
  FROM audit.alerts WHERE rule_id IS NOT NULL;
SELECT audit.resolve_alert(alert_id, 'account locked') FROM audit.alerts WHERE rule_id IS NOT NULL AND NOT resolved;
SELECT * FROM audit.evaluate_alert_rules('login_burst');       -- resolved, nothing new: quiet
SELECT audit.log_event(action => 'login', status => 'failure', principal_id => 'mallory', organization_id => 'org_a');
SELECT * FROM audit.evaluate_alert_rules('login_burst');       -- recurs: fires again
SELECT count(*) AS burst_alerts, count(*) FILTER (WHERE resolved) AS resolved, count(*) FILTER (WHERE NOT resolved) AS open
  FROM audit.alerts WHERE source = 'rule:login_burst';
SELECT * FROM audit.alert_statistics() WHERE dimension IN ('all', 'severity');

-- PHI outside hours (an empty window: every PHI event is outside it).
SELECT audit.log_event(action => 'record.view', status => 'success', principal_id => 'night_nurse',
                       organization_id => 'org_b', data_classification => 'PHI');
SELECT * FROM audit.evaluate_alert_rules('phi_at_night');
SELECT organization_id, title FROM audit.alerts WHERE source = 'rule:phi_at_night';

-- Rows in the default partition; a failed verification; a failed maintenance run.
SELECT * FROM audit.evaluate_alert_rules('default_rows');
INSERT INTO audit.audit_log ("timestamp", action, status) VALUES ('2090-01-01', 'future', 'success');
SELECT * FROM audit.evaluate_alert_rules('default_rows');
SELECT title, description FROM audit.alerts WHERE source = 'rule:default_rows';
SELECT pg_temp.seal_all() AS sealed;
SELECT * FROM audit.evaluate_alert_rules('verify_failed');
SELECT count(*) AS problems FROM audit.verify();
ALTER TABLE audit.audit_log DISABLE TRIGGER USER;
UPDATE audit.audit_log SET principal_id = 'eve' WHERE principal_id = 'alice';
ALTER TABLE audit.audit_log ENABLE TRIGGER USER;
SELECT count(*) AS problems FROM audit.verify();
SELECT * FROM audit.evaluate_alert_rules('verify_failed');
SELECT severity, title FROM audit.alerts WHERE source = 'rule:verify_failed';
INSERT INTO audit.maintenance_run (via, as_of, status, finished_at, errors)
VALUES ('call', now(), 'errors', now(), ARRAY['partitions: lock timeout on audit.audit_log']);
SELECT * FROM audit.evaluate_alert_rules('maintenance_failed');
SELECT title, description ~ 'lock timeout' AS says_why FROM audit.alerts WHERE source = 'rule:maintenance_failed';

-- Cleanup of old resolved alerts.
UPDATE audit.alerts SET resolved_at = now() - interval '100 days' WHERE resolved;
SELECT audit.cleanup_alerts(90) AS deleted, (SELECT count(*) FROM audit.alerts WHERE resolved) AS resolved_left;
SELECT pg_temp.error_of($$SELECT audit.cleanup_alerts(-1)$$);

-- Errors: reported by callers and by the extension's jobs (a failed
-- maintenance run above), aggregated by key with numbers blanked.
SELECT pg_temp.error_of($$SELECT audit.report_error('', 'x')$$);
SELECT pg_temp.error_of($$SELECT audit.report_error('api', 'x', sqlstate => 'bad')$$);
SELECT pg_temp.error_of($$SELECT audit.report_error('api', 'x', severity => 'PANIC')$$);
SELECT audit.report_error('billing-api', 'invoice 17 failed', 'XX000') > 0 AS reported,
       audit.report_error('billing-api', 'invoice 18 failed', 'XX000') > 0 AS reported,
       audit.report_error('billing-api', 'timeout after 30 s', '57014') > 0 AS reported;
SELECT error_key, source, sqlstate, last_message, occurrences, last_hour, previous_hour, trend
  FROM audit.error_aggregation ORDER BY error_key;

-- Configuration changes: policy rows (with the reason given) and settings.
BEGIN;
SET LOCAL audit_db.change_reason = 'CHG-1042 tighter retention';
INSERT INTO audit.audit_retention_policy (policy_name, retention_days) VALUES ('short', 30);
UPDATE audit.audit_retention_policy SET retention_days = 45 WHERE policy_name = 'short';
COMMIT;
DELETE FROM audit.audit_retention_policy WHERE policy_name = 'short';
UPDATE audit.alert_rules SET severity = 'CRITICAL' WHERE name = 'login_burst';
ALTER SYSTEM SET audit_db.alert_interval = '5min';
ALTER SYSTEM RESET audit_db.alert_interval;
SELECT kind, name, operation, old_value->>'retention_days' AS old_days, new_value->>'retention_days' AS new_days,
       reason, changed_by = session_user AS by_me
  FROM audit.config_change_event WHERE name = 'audit.audit_retention_policy' ORDER BY change_id;
SELECT name, operation, old_value->>'severity' AS old, new_value->>'severity' AS new
  FROM audit.config_change_event WHERE name = 'audit.alert_rules' AND operation = 'UPDATE';
SELECT kind, name, operation, new_value FROM audit.config_change_event WHERE kind = 'setting' ORDER BY change_id;
-- The five rules created and the one update; rule evaluations (last_evaluated_at) are not changes.
SELECT count(*) AS rule_changes FROM audit.config_change_event WHERE name = 'audit.alert_rules';

-- Writers raise alerts and report errors; they cannot resolve alerts.
CREATE ROLE regress_al_app LOGIN IN ROLE audit_db_writer, audit_db_all_organizations;
SET SESSION AUTHORIZATION regress_al_app;
SELECT audit.raise_alert('LOW', 'SECURITY', 'from the app') > 0 AS raised;
SELECT audit.report_error('app', 'failed') > 0 AS reported;
SELECT pg_temp.error_of($$SELECT audit.resolve_alert(1)$$);
SELECT pg_temp.error_of($$SELECT * FROM audit.evaluate_alert_rules()$$);
RESET SESSION AUTHORIZATION;
DROP OWNED BY regress_al_app;
DROP ROLE regress_al_app;
