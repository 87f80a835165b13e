-- retention: policies and their checks, what audit.retention_plan() decides,
-- maintenance removing exactly the expired rows (whole partitions dropped,
-- expired rows deleted elsewhere), the removals sealed so that verify stays
-- clean and still tells a retained-away row from a missing one, and who may
-- do what. A fixed as_of (not the clock) decides what expired.

\i sql/include/fresh_extension.sql

-- No policy: nothing ever expires, nothing is even summarised.
SELECT count(*) AS planned FROM audit.retention_plan('2100-01-01');

-- Policies and their checks.
\set VERBOSITY terse
INSERT INTO audit.audit_retention_policy (policy_name, retention_days) VALUES ('bad', 0);
\echo :LAST_ERROR_SQLSTATE
INSERT INTO audit.audit_retention_policy (policy_name, retention_days, delete_after_days) VALUES ('bad', 30, 29);
\echo :LAST_ERROR_SQLSTATE
INSERT INTO audit.audit_retention_policy (policy_name, retention_days, archive_after_days) VALUES ('bad', 30, 30);
\echo :LAST_ERROR_SQLSTATE
INSERT INTO audit.audit_retention_policy (policy_name, data_classification, retention_days) VALUES ('bad', 'SECRET', 30);
\echo :LAST_ERROR_SQLSTATE
INSERT INTO audit.audit_retention_policy (policy_name, retention_days) VALUES ('', 30);
\echo :LAST_ERROR_SQLSTATE
INSERT INTO audit.audit_retention_policy (policy_name, retention_days) VALUES (NULL, 30);
\echo :LAST_ERROR_SQLSTATE
\set VERBOSITY default

-- short: 30 days; long: 90 days, but its PHI rows 120 days; 'kept' has no
-- active policy (its row is inactive), 'nameless' none at all.
INSERT INTO audit.audit_retention_policy (policy_name, data_classification, retention_days, delete_after_days, description)
VALUES ('short', NULL, 30, NULL, 'thirty days'),
       ('long', NULL, 60, 90, 'sixty days at least, removed after ninety'),
       ('long', 'PHI', 120, NULL, 'PHI under the long policy: 120 days'),
       ('kept', NULL, 1, NULL, 'inactive');
UPDATE audit.audit_retention_policy SET active = false WHERE policy_name = 'kept';
\set VERBOSITY terse
INSERT INTO audit.audit_retention_policy (policy_name, data_classification, retention_days) VALUES ('long', 'PHI', 10);
\echo :LAST_ERROR_SQLSTATE
INSERT INTO audit.audit_retention_policy (policy_name, retention_days) VALUES ('short', 10);
\echo :LAST_ERROR_SQLSTATE
\set VERBOSITY default

-- January to June 2024, one row a day per (policy, classification), at noon;
-- rows of the last day before each cutoff land at 23:59:59.999999.
SELECT count(*) AS months FROM audit.create_partitions(6, '2024-01-01');
INSERT INTO audit.audit_log ("timestamp", action, status, retention_policy, data_classification)
SELECT d + interval '12 hours', 'read', 'success', p, c
FROM generate_series(timestamptz '2024-01-01', '2024-06-19', interval '1 day') d,
     (VALUES ('short', 'INTERNAL'), ('long', 'INTERNAL'), ('long', 'PHI'), ('kept', 'INTERNAL'),
             ('nameless', 'PUBLIC')) AS g(p, c);
-- As of 2024-06-20 (any time of day): cutoffs are 2024-05-21 (short),
-- 2024-03-22 (long), 2024-02-21 (long, PHI). Edge rows on both sides.
INSERT INTO audit.audit_log ("timestamp", action, status, retention_policy, data_classification)
VALUES ('2024-05-20 23:59:59.999999', 'edge', 'success', 'short', 'INTERNAL'),
       ('2024-05-21 00:00:00', 'edge', 'success', 'short', 'INTERNAL'),
       ('2024-03-21 23:59:59.999999', 'edge', 'success', 'long', 'INTERNAL'),
       ('2024-03-22 00:00:00', 'edge', 'success', 'long', 'INTERNAL'),
       ('2024-02-20 23:59:59.999999', 'edge', 'success', 'long', 'PHI'),
       ('2024-02-21 00:00:00', 'edge', 'success', 'long', 'PHI');
SELECT pg_temp.seal_all() AS sealed;

CREATE TEMP TABLE before_retention AS
SELECT retention_policy, data_classification, count(*) AS total,
       count(*) FILTER (WHERE "timestamp" < CASE WHEN retention_policy = 'short' THEN timestamptz '2024-05-21'
                                                 WHEN retention_policy = 'long' AND data_classification = 'PHI'
                                                   THEN timestamptz '2024-02-21'
                                                 WHEN retention_policy = 'long' THEN timestamptz '2024-03-22'
                                            END) AS expired
FROM audit.audit_log GROUP BY 1, 2;
SELECT * FROM before_retention ORDER BY 1, 2;

-- Planning reads summaries only: before the first run, every partition that
-- may hold an expired row (it starts before the earliest cutoff) needs one.
SELECT partition, action FROM audit.retention_plan('2024-06-20 15:00+00') ORDER BY range_from;
SELECT partition, retention_verdict FROM audit.partitions WHERE range_from < '2024-07-01' ORDER BY range_from;

-- One maintenance run as of 2024-06-20: summaries counted, then the removals.
CALL audit.run_maintenance('2024-06-20 15:00+00');
SELECT status, errors, actions->'partitions_summarized' AS summarized, actions->'rows_removed' AS removed,
       jsonb_path_query_array(actions, '$.retention[*] ? (@.action == "drop").partition') AS dropped
FROM audit.maintenance_run WHERE via = 'call' ORDER BY run_id DESC LIMIT 1;
SELECT r->>'partition' AS partition, r->>'action' AS action, (r->>'rows')::int AS rows,
       (SELECT string_agg(format('%s/%s<%s:%s', g->>'retention_policy', g->>'data_classification',
                                 left(g->>'cutoff', 10), g->>'rows'), ' ' ORDER BY g->>'retention_policy', g->>'data_classification')
        FROM jsonb_array_elements(r->'groups') g) AS groups
FROM audit.maintenance_run m, jsonb_array_elements(m.actions->'retention') r
WHERE m.via = 'call' AND m.run_id = (SELECT max(run_id) FROM audit.maintenance_run WHERE via = 'call')
ORDER BY 1;

-- Exactly the expired rows are gone, per policy and classification.
SELECT b.retention_policy, b.data_classification, b.total, b.expired,
       coalesce(a.left_now, 0) AS left_now, b.total - b.expired = coalesce(a.left_now, 0) AS exact
FROM before_retention b
LEFT JOIN (SELECT retention_policy, data_classification, count(*) AS left_now
           FROM audit.audit_log GROUP BY 1, 2) a USING (retention_policy, data_classification)
ORDER BY 1, 2;
SELECT action, "timestamp", retention_policy, data_classification FROM audit.audit_log
WHERE action = 'edge' ORDER BY "timestamp";

-- Every January row under an active policy expired, but January also holds
-- 'kept' and 'nameless' rows (no active policy): no partition was dropped.
SELECT partition, range_from FROM audit.partitions WHERE range_from < '2024-07-01' ORDER BY range_from;

-- The removals are sealed: retention_rows blocks list the removed ids (and
-- leave rows_total alone); verify is clean. (Partitions, not blocks, are
-- counted: the worker may have sealed the two INSERTs in separate runs.)
SELECT kind, count(DISTINCT partition_from) AS partitions, sum(row_count) AS rows_listed,
       bool_and(xid_from = xid_to) AS empty_xid_interval
FROM audit.audit_chain_block GROUP BY kind ORDER BY kind;
SELECT (SELECT sum(expired) FROM before_retention)
       = (SELECT sum(row_count) FROM audit.audit_chain_block WHERE kind = 'retention_rows') AS listed_all_expired,
       (SELECT rows_total FROM audit.audit_chain_state)
       = (SELECT sum(row_count) FROM audit.audit_chain_block WHERE kind = 'rows') AS rows_total_counts_sealed;
SELECT * FROM audit.verify();
SELECT status, rows_checked FROM audit.audit_integrity_log ORDER BY run_id DESC LIMIT 1;

-- The summaries follow the removals (no partition needs counting again):
-- nothing more to do as of the same time.
SELECT action, count(*) FROM audit.retention_plan('2024-06-20 15:00+00') GROUP BY 1 ORDER BY 1;
CALL audit.run_maintenance('2024-06-20 15:00+00');
CALL audit.run_maintenance('2024-06-20 15:00+00');
SELECT actions->'rows_removed' AS removed FROM audit.maintenance_run WHERE via = 'call' ORDER BY run_id DESC LIMIT 1;

-- With 'kept' active again and a policy for 'nameless', every January row
-- has expired: January is dropped whole (its row count sealed), the others
-- lose their expired rows.
UPDATE audit.audit_retention_policy SET active = true WHERE policy_name = 'kept';
INSERT INTO audit.audit_retention_policy (policy_name, retention_days) VALUES ('nameless', 1);
CALL audit.run_maintenance('2024-06-20 15:00+00');
CALL audit.run_maintenance('2024-06-20 15:00+00');
SELECT r->>'partition' AS partition, r->>'action' AS action, (r->>'rows')::int AS rows
FROM audit.maintenance_run m, jsonb_array_elements(m.actions->'retention') r
WHERE m.via = 'call' AND m.run_id > (SELECT max(run_id) - 2 FROM audit.maintenance_run WHERE via = 'call')
  AND r->>'action' = 'drop'
ORDER BY 1;
SELECT partition, range_from FROM audit.partitions WHERE range_from < '2024-07-01' ORDER BY range_from;
SELECT kind, count(*) AS blocks, sum(row_count) AS rows_listed FROM audit.audit_chain_block
WHERE kind = 'retention_partition' GROUP BY kind;
SELECT * FROM audit.verify();

-- Retained away vs missing: a row deleted behind audit_db's back is
-- reported, the rows retention removed are not.
SELECT min(id) AS victim FROM audit.audit_log WHERE retention_policy = 'long' AND data_classification = 'INTERNAL' \gset
BEGIN;
ALTER TABLE audit.audit_log DISABLE TRIGGER audit_log_refuse_delete;
DELETE FROM audit.audit_log WHERE id = :victim;
ALTER TABLE audit.audit_log ENABLE ALWAYS TRIGGER audit_log_refuse_delete;
COMMIT;
SELECT block_height IS NOT NULL AS in_block, row_id = :victim AS the_victim, problem FROM audit.verify();

-- A forged retention block: its leaves no longer give its Merkle root.
BEGIN;
ALTER TABLE audit.audit_chain_block DISABLE TRIGGER audit_chain_block_refuse_update;
UPDATE audit.audit_chain_block SET leaves = overlay(leaves PLACING '\xff'::bytea FROM 1 FOR 1)
WHERE height = (SELECT min(height) FROM audit.audit_chain_block WHERE kind = 'retention_rows');
ALTER TABLE audit.audit_chain_block ENABLE ALWAYS TRIGGER audit_chain_block_refuse_update;
COMMIT;
SELECT field, problem FROM audit.verify() WHERE row_id IS NULL;

-- Who may do what: the auditor reads policies and plans, the writer
-- neither; only the owner changes policies or runs maintenance.
SET ROLE audit_db_auditor;
SELECT count(*) > 0 AS auditor_reads_policies FROM audit.audit_retention_policy;
SELECT count(*) >= 0 AS auditor_reads_plan FROM audit.retention_plan('2024-06-20');
\set VERBOSITY terse
INSERT INTO audit.audit_retention_policy (policy_name, retention_days) VALUES ('mine', 1);
\echo :LAST_ERROR_SQLSTATE
CALL audit.run_maintenance('2024-06-20');
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;
SET ROLE audit_db_writer;
SELECT count(*) FROM audit.audit_retention_policy;
\echo :LAST_ERROR_SQLSTATE
DELETE FROM audit.audit_retention_policy;
\echo :LAST_ERROR_SQLSTATE
SELECT audit.refresh_retention_summary('audit.audit_log_2024_06');
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;
SELECT audit.refresh_retention_summary('audit.audit_log_default');
\echo :LAST_ERROR_SQLSTATE
\set VERBOSITY default

DROP EXTENSION audit_db CASCADE;
