-- reports: the built-in report templates on a fixed data set, each checked
-- against counts worked out by hand (below); cron expressions; schedules
-- run by the worker when pg_cron is not loaded (test/reports_cron.py runs
-- them through a real pg_cron); executions with status, rows, result,
-- digest, and failures stored rather than raised (issue 7).

\i sql/include/fresh_extension.sql
\set VERBOSITY terse


SELECT count(*) > 0 AS created FROM audit.create_partitions(1, '2025-03-01');
INSERT INTO audit.audit_retention_policy (policy_name, data_classification, retention_days, archive_after_days)
VALUES ('standard', 'PHI', 2190, 365), ('standard', NULL, 365, NULL);
-- March 2025, organizations clinic_a and clinic_b:
--   PHI reads: dr_house 3 (clinic_a: 2025-03-03, 03-10 record.view, 03-12 record.export),
--              nurse_joy 1 (clinic_a: 03-05), dr_who 2 (clinic_b: 03-07, 03-08);
--              one PHI read on 2025-04-02 (outside the period);
--   logins: mallory fails 3 times (clinic_a, 03-01 x2 and 03-02), alice fails once and
--           succeeds once (clinic_b), a failed 'export' by bob is not an authentication;
--   INTERNAL other events: 2.
INSERT INTO audit.audit_log ("timestamp", organization_id, principal_id, action, status, data_classification) VALUES
  ('2025-03-03 09:00+00', 'clinic_a', 'dr_house',  'record.view',   'success', 'PHI'),
  ('2025-03-10 10:00+00', 'clinic_a', 'dr_house',  'record.view',   'success', 'PHI'),
  ('2025-03-12 11:00+00', 'clinic_a', 'dr_house',  'record.export', 'success', 'PHI'),
  ('2025-03-05 12:00+00', 'clinic_a', 'nurse_joy', 'record.view',   'success', 'PHI'),
  ('2025-03-07 13:00+00', 'clinic_b', 'dr_who',    'record.view',   'success', 'PHI'),
  ('2025-03-08 14:00+00', 'clinic_b', 'dr_who',    'record.view',   'success', 'PHI'),
  ('2025-03-01 08:00+00', 'clinic_a', 'mallory',   'user.login',    'failure', 'INTERNAL'),
  ('2025-03-01 08:01+00', 'clinic_a', 'mallory',   'user.login',    'failure', 'INTERNAL'),
  ('2025-03-02 08:00+00', 'clinic_a', 'mallory',   'user.login',    'failure', 'INTERNAL'),
  ('2025-03-04 08:00+00', 'clinic_b', 'alice',     'auth',          'failure', 'INTERNAL'),
  ('2025-03-04 08:05+00', 'clinic_b', 'alice',     'auth',          'success', 'INTERNAL'),
  ('2025-03-06 08:00+00', 'clinic_a', 'bob',       'report.export', 'failure', 'INTERNAL'),
  ('2025-03-09 08:00+00', 'clinic_a', 'carol',     'settings.view', 'success', 'INTERNAL');
INSERT INTO audit.audit_log ("timestamp", organization_id, principal_id, action, status, data_classification)
VALUES ('2026-12-01 00:00+00', 'clinic_a', 'dr_house', 'record.view', 'success', 'PHI');
SELECT pg_temp.seal_all() AS sealed;

SELECT name, report_type, built_in FROM audit.report_templates ORDER BY template_id;

-- Access to PHI, clinic_a, March: dr_house 3 (view, export), nurse_joy 1.
SELECT r->>'principal_id' AS principal, r->>'events' AS events, r->>'first_access' AS first_access,
       r->>'last_access' AS last_access, r->>'actions' AS actions
  FROM json_array_elements((audit.generate_report('phi_access', '{"from": "2025-03-01", "to": "2025-04-01"}',
                                                  organization_id => 'clinic_a')::json)->'rows') r;
-- Both clinics: dr_who too.
SELECT (audit.generate_report('phi_access', '{"from": "2025-03-01", "to": "2025-04-01"}')::json)->>'row_count' AS principals;
-- Failed authentications in March: mallory 3, alice 1; bob's failed export is not one.
SELECT audit.generate_report('failed_authentication', '{"from": "2025-03-01", "to": "2025-04-01"}', 'csv');
-- Retention: rows per policy and classification with the policy in force
-- (PHI: its own row; INTERNAL: the policy's row for every classification).
SELECT r->>'retention_policy' AS policy, r->>'data_classification' AS class, r->>'rows' AS rows,
       r->>'retention_days' AS retention_days, r->>'archive_after_days' AS archive_after_days,
       r->>'delete_after_days' AS delete_after_days
  FROM json_array_elements((audit.generate_report('retention')::json)->'rows') r;
-- Integrity: verify clean, and the digest's height is the chain's.
SELECT r->>'clean' AS clean, r->>'problems' AS problems,
       (r->>'height')::bigint = (SELECT height FROM audit.audit_chain_state) AS digest_height
  FROM json_array_elements((audit.generate_report('integrity')::json)->'rows') r;
-- GDPR requests: one pseudonymization, one export.
SELECT count(*) FROM audit.pseudonymize('mallory', 'token', 'DSR-7');
SELECT length(audit.export_subject('alice')) > 0 AS exported;
SELECT r->>'action' AS action, r->>'performed_by' AS performed_by, r->>'requested_by' AS requested_by,
       r->>'rows_changed' AS rows_changed, r->>'format' AS format
  FROM json_array_elements((audit.generate_report('gdpr_requests', '{"from": "2026-01-01"}')::json)->'rows') r;

-- Errors.
SELECT pg_temp.error_of($$SELECT audit.generate_report('no_such_template')$$);
SELECT pg_temp.error_of($$SELECT audit.generate_report('phi_access', format => 'pdf')$$);
SELECT pg_temp.error_of($$SELECT audit.generate_report('phi_access', '{"from": "last tuesday"}')$$);
SELECT pg_temp.error_of($$SELECT audit.generate_report('phi_access', '[]')$$);

-- Cron expressions (UTC).
SELECT audit.cron_next('*/15 * * * *', '2026-03-01 10:07:30+00') AS every_15_min,
       audit.cron_next('0 6 * * 1', '2026-03-01 10:07:30+00') AS monday_6am,
       audit.cron_next('30 2 1 * *', '2026-03-01 10:07:30+00') AS first_of_month,
       audit.cron_next('0 0 29 2 *', '2026-03-01 00:00+00') AS next_feb_29,
       audit.cron_next('0 9 1-7 * 1', '2026-03-01 10:00+00') AS dom_or_dow,
       audit.cron_next('30 seconds', '2026-03-01 10:00+00') AS seconds;
SELECT pg_temp.error_of($$SELECT audit.cron_next('61 * * * *', now())$$);
SELECT pg_temp.error_of($$SELECT audit.cron_next('* * *', now())$$);
SELECT pg_temp.error_of($$SELECT audit.cron_next('0 0 30 2 *', now())$$);
SELECT pg_temp.error_of($$SELECT audit.cron_next('90 seconds', now())$$);

-- Scheduling without pg_cron: the worker runs it (a notice says so);
-- asking for pg_cron is refused. Scheduling the same name again updates it.
SET client_min_messages = notice;
SELECT audit.schedule_report('monthly_phi', 'phi_access', '0 6 1 * *',
                             '{"from": "2025-03-01", "to": "2025-04-01"}', organization_id => 'clinic_a') AS id;
SET client_min_messages = warning;
SELECT pg_temp.error_of($$SELECT audit.schedule_report('cron_phi', 'phi_access', '0 6 1 * *', runner => 'pg_cron')$$);
SELECT pg_temp.error_of($$SELECT audit.schedule_report('bad name!', 'phi_access', '0 6 1 * *')$$);
SELECT pg_temp.error_of($$SELECT audit.schedule_report('x', 'phi_access', 'every day')$$);
SELECT audit.schedule_report('monthly_phi', 'phi_access', '0 7 1 * *',
                             '{"from": "2025-03-01", "to": "2025-04-01"}', 'csv', 'clinic_a') AS same_id;
SELECT name, runner, schedule, format, organization_id, cron_job_name, next_run_at > now() AS next_run_later
  FROM audit.scheduled_reports;

-- Running it stores an execution with the document, its row count and digest.
SELECT audit.run_report(schedule_id) AS execution FROM audit.scheduled_reports WHERE name = 'monthly_phi';
SELECT status, triggered_by, row_count, format, duration_ms >= 0 AS timed,
       integrity_digest->>'result_sha256' = encode(sha256(convert_to(result, 'UTF8')), 'hex') AS digest_matches,
       (integrity_digest->'chain'->>'height')::bigint > 0 AS chain_digest, error
  FROM audit.report_executions;
SELECT result FROM audit.report_executions;
-- Due reports run by the worker's function; a failing report is stored as
-- failed (and logged), not raised.
-- (In one transaction: the background worker, which also runs due reports,
-- cannot see the report due before the suite runs it.)
BEGIN;
UPDATE audit.scheduled_reports SET next_run_at = now() - interval '1 minute';
SELECT audit.run_due_reports() AS ran;
COMMIT;
SELECT audit.schedule_report('broken', 'failed_authentication', '0 * * * *', '{"action_regex": "("}') > 0 AS scheduled;
SELECT audit.run_report(schedule_id) > 0 AS ran FROM audit.scheduled_reports WHERE name = 'broken';
SELECT status, error_sqlstate, error IS NOT NULL AS has_error, result IS NULL AS no_result
  FROM audit.report_executions WHERE schedule_id = (SELECT schedule_id FROM audit.scheduled_reports WHERE name = 'broken');
SELECT source, sqlstate FROM audit.error_log WHERE source = 'report';
SELECT pg_temp.error_of($$SELECT audit.run_report(99999)$$);

-- Unscheduling disables it; its executions stay.
SELECT audit.unschedule_report('monthly_phi');
SELECT name, enabled, next_run_at FROM audit.scheduled_reports WHERE name = 'monthly_phi';
SELECT count(*) AS executions FROM audit.report_executions;
BEGIN;
UPDATE audit.scheduled_reports SET next_run_at = now() - interval '1 minute' WHERE name = 'monthly_phi';
SELECT audit.run_due_reports() AS ran_after_unschedule;
COMMIT;
SELECT pg_temp.error_of($$SELECT audit.unschedule_report('nope')$$);
