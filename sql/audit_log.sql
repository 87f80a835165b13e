-- audit_log: writing events by INSERT, COPY and audit.log_event(); what the
-- stamping trigger sets; the validation and size errors, with SQLSTATEs.

-- The writer cannot choose id, hash, algorithm, transaction id, salt,
-- commitment or archived_at: the trigger overwrites them.
BEGIN;
INSERT INTO audit.audit_log (id, action, status, hash, hash_algorithm, transaction_id,
                             personal_data_salt, personal_data_commitment, archived_at)
VALUES (999999, 'forged', 'success', '\x00', NULL, 42, '\x01', '\x02', now())
RETURNING id <> 999999 AS id_assigned,
          octet_length(hash) AS hash_bytes,
          hash_algorithm,
          transaction_id = pg_current_xact_id()::text::bigint AS transaction_id_is_ours,
          octet_length(personal_data_salt) AS salt_bytes,
          personal_data_commitment IS NULL AS no_commitment,
          archived_at IS NULL AS not_archived;
COMMIT;
-- Another algorithm cannot even be named.
INSERT INTO audit.audit_log (action, status, hash_algorithm) VALUES ('forged', 'success', 'MD5');
\echo :LAST_ERROR_SQLSTATE

-- audit.last_event_id() reports the id of the session's last event.
INSERT INTO audit.audit_log (action, status) VALUES ('last_id', 'success');
SELECT audit.last_event_id() = (SELECT max(id) FROM audit.audit_log WHERE action = 'last_id') AS last_id_ok;

-- Defaults of a plain INSERT.
INSERT INTO audit.audit_log (action, status) VALUES ('defaults', 'attempt')
RETURNING "timestamp" = now() AS timestamp_now, data_classification, retention_policy,
          event_version, principal_id IS NULL AS no_principal;

-- Every row's stored hash equals the hash recomputed from its fields.
INSERT INTO audit.audit_log (action, status, principal_id, organization_id, details)
SELECT 'bulk', 'success', 'user-' || g, 'org-' || (g % 3),
       jsonb_build_object('n', g, 'tags', jsonb_build_array('a', 'b'))
FROM generate_series(1, 1000) g;
SELECT count(*) AS rows, count(DISTINCT id) AS distinct_ids,
       count(*) FILTER (WHERE hash = audit.leaf_hash(l)) AS hashes_ok,
       count(DISTINCT hash) AS distinct_hashes,
       count(DISTINCT personal_data_salt) AS distinct_salts,
       count(DISTINCT transaction_id) AS transactions
FROM audit.audit_log l WHERE action = 'bulk';

-- COPY goes through the same trigger.
COPY audit.audit_log (action, status, principal_id, details) FROM stdin;
copied	success	alice	{"ip": "10.1.1.1"}
copied	failure	\N	\N
\.
SELECT action, status, principal_id, details, hash = audit.leaf_hash(l) AS hash_ok
FROM audit.audit_log l WHERE action = 'copied' ORDER BY id;

-- Routing: this month to its partition, far past and far future to the default.
INSERT INTO audit.audit_log ("timestamp", action, status) VALUES
  (now(), 'routing_now', 'success'),
  ('1999-12-31 23:59:59.999999+00', 'routing_past', 'success'),
  ('2099-01-01 00:00:00+00', 'routing_future', 'success');
SELECT action, tableoid = audit.ensure_month_partition(now()) AS month_partition,
       tableoid::regclass = 'audit.audit_log_default'::regclass AS default_partition
FROM audit.audit_log WHERE action LIKE 'routing%' ORDER BY action;

-- NULL and empty strings are both accepted and kept apart.
INSERT INTO audit.audit_log (action, status, principal_id, target_resource_id, correlation_id)
VALUES ('empties', 'success', '', '', ''), ('empties', 'success', NULL, NULL, NULL);
SELECT principal_id IS NULL AS principal_null, principal_id = '' AS principal_empty,
       hash = audit.leaf_hash(l) AS hash_ok
FROM audit.audit_log l WHERE action = 'empties' ORDER BY id;

-- Error paths. The stamping trigger checks every row, a plain INSERT as much
-- as audit.log_event(): check_violation (23514) with a hint.
\set VERBOSITY default
INSERT INTO audit.audit_log (action, status) VALUES ('bad', 'done');
\echo :LAST_ERROR_SQLSTATE
INSERT INTO audit.audit_log (action, status, data_classification) VALUES ('bad', 'success', 'SECRET');
\echo :LAST_ERROR_SQLSTATE
INSERT INTO audit.audit_log (action, status, data_classification) VALUES ('bad', 'success', 'phi');
\echo :LAST_ERROR_SQLSTATE
INSERT INTO audit.audit_log (action, status, processing_latency) VALUES ('bad', 'success', -1);
\echo :LAST_ERROR_SQLSTATE
INSERT INTO audit.audit_log (action, status) VALUES ('bad', '');
\echo :LAST_ERROR_SQLSTATE
-- One bad row refuses the whole statement: nothing of it is written.
INSERT INTO audit.audit_log (action, status, processing_latency)
  SELECT 'bad_batch', CASE WHEN g = 3 THEN 'maybe' ELSE 'success' END, g FROM generate_series(1, 5) g;
\echo :LAST_ERROR_SQLSTATE
SELECT count(*) AS bad_batch_rows FROM audit.audit_log WHERE action = 'bad_batch';
INSERT INTO audit.audit_log ("timestamp", action, status) VALUES ('infinity', 'bad', 'success');
\echo :LAST_ERROR_SQLSTATE
INSERT INTO audit.audit_log ("timestamp", action, status) VALUES ('294276-12-31 23:59:59+00', 'bad', 'success');
\echo :LAST_ERROR_SQLSTATE
INSERT INTO audit.audit_log ("timestamp", action, status) VALUES ('0001-12-31 23:59:59+00 BC', 'bad', 'success');
\echo :LAST_ERROR_SQLSTATE
-- The edges of the accepted range.
INSERT INTO audit.audit_log ("timestamp", action, status)
VALUES ('0001-01-01 00:00:00+00', 'edge', 'success'), ('9999-12-31 23:59:59.999999+00', 'edge', 'success');
SELECT count(*) AS edges, bool_and(hash = audit.leaf_hash(l)) AS hash_ok
FROM audit.audit_log l WHERE action = 'edge';
INSERT INTO audit.audit_log (action, status) VALUES (NULL, 'success');
\echo :LAST_ERROR_SQLSTATE
INSERT INTO audit.audit_log (action) VALUES ('no status');
\echo :LAST_ERROR_SQLSTATE
INSERT INTO audit.audit_log ("timestamp", action, status) VALUES (NULL, 'bad', 'success');
\echo :LAST_ERROR_SQLSTATE
-- Oversized input.
INSERT INTO audit.audit_log (action, status, principal_id) VALUES ('bad', 'success', repeat('x', 256));
\echo :LAST_ERROR_SQLSTATE
INSERT INTO audit.audit_log (action, status) VALUES (repeat('a', 256), 'success');
\echo :LAST_ERROR_SQLSTATE
INSERT INTO audit.audit_log (action, status, outcome_description) VALUES ('bad', 'success', repeat('d', 4001));
\echo :LAST_ERROR_SQLSTATE
SET audit_db.max_details_bytes = 1024;
INSERT INTO audit.audit_log (action, status, details)
VALUES ('bad', 'success', jsonb_build_object('blob', repeat('z', 2000)));
\echo :LAST_ERROR_SQLSTATE
INSERT INTO audit.audit_log (action, status, details)
VALUES ('fits', 'success', jsonb_build_object('blob', repeat('z', 900)));
RESET audit_db.max_details_bytes;
SET audit_db.max_details_bytes = 10;
\echo :LAST_ERROR_SQLSTATE
-- Nothing of the refused events was written; sequence gaps are harmless.
SELECT count(*) AS bad_rows FROM audit.audit_log WHERE action = 'bad' OR action LIKE 'aaaa%';
SELECT count(*) AS fits FROM audit.audit_log WHERE action = 'fits';

-- audit.log_event(): named arguments, documented defaults, returns the id.
BEGIN;
SELECT audit.log_event(action => 'login', principal_id => 'alice', organization_id => 'org-1',
                       details => '{"ip": "10.0.0.7", "mfa": true}') AS id \gset
SELECT id = :id AS same_id, action, status, principal_id, organization_id,
       data_classification, retention_policy, event_version, "timestamp" = now() AS at_now,
       details, hash = audit.leaf_hash(l) AS hash_ok
FROM audit.audit_log l WHERE id = :id;
COMMIT;

SELECT audit.log_event(action => 'report_download', status => 'failure',
                       principal_id => 'bob', organization_id => 'org-2',
                       target_resource_type => 'report', target_resource_id => 'r-9',
                       outcome_description => 'quota exceeded', correlation_id => 'req-123',
                       data_classification => 'FINANCIAL', retention_policy => 'sox',
                       processing_latency => 12, event_version => '2.1',
                       event_time => '2026-01-15 08:30:00+00') AS id \gset
SELECT action, status, target_resource_type, target_resource_id, outcome_description,
       correlation_id, data_classification, retention_policy, processing_latency,
       event_version, "timestamp", hash = audit.leaf_hash(l) AS hash_ok
FROM audit.audit_log l WHERE id = :id;

SELECT audit.log_event(status => 'success');
\echo :LAST_ERROR_SQLSTATE
SELECT audit.log_event(action => 'x', status => 'ok');
\echo :LAST_ERROR_SQLSTATE
SELECT audit.log_event(action => 'x', data_classification => 'TOP SECRET');
\echo :LAST_ERROR_SQLSTATE
SELECT audit.log_event(action => 'x', processing_latency => -5);
\echo :LAST_ERROR_SQLSTATE
SELECT audit.log_event(action => 'x', principal_id => repeat('p', 300));
\echo :LAST_ERROR_SQLSTATE

-- A failed event inside a transaction does not leave a partial row behind.
BEGIN;
SELECT audit.log_event(action => 'txn_ok') > 0 AS logged;
SAVEPOINT s;
SELECT audit.log_event(action => 'txn_bad', status => 'nope');
ROLLBACK TO SAVEPOINT s;
COMMIT;
SELECT action FROM audit.audit_log WHERE action LIKE 'txn_%' ORDER BY id;

-- The stamping trigger refuses to run anywhere else.
CREATE TABLE not_audit (id bigint, action text);
CREATE TRIGGER stamp BEFORE INSERT ON not_audit FOR EACH ROW EXECUTE FUNCTION audit.stamp_audit_row();
INSERT INTO not_audit VALUES (1, 'x');
\echo :LAST_ERROR_SQLSTATE
DROP TRIGGER stamp ON not_audit;
CREATE TRIGGER stamp AFTER INSERT ON not_audit FOR EACH ROW EXECUTE FUNCTION audit.stamp_audit_row();
INSERT INTO not_audit VALUES (1, 'x');
\echo :LAST_ERROR_SQLSTATE
DROP TABLE not_audit;

-- A refused row does not become the session's last event.
INSERT INTO audit.audit_log (action, status) VALUES ('last_ok', 'success');
SELECT audit.last_event_id() AS last_ok \gset
SET audit_db.max_details_bytes = 64;
INSERT INTO audit.audit_log (action, status, details) VALUES ('too_big', 'success', jsonb_build_object('k', repeat('x', 100)));
RESET audit_db.max_details_bytes;
SELECT audit.last_event_id() = :last_ok AS last_event_unchanged;
