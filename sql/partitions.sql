-- partitions: monthly partitions created ahead, decided by their real bounds,
-- the default partition drained into them (verify stays clean), maintenance
-- runs and their record, and the error paths. The background worker may seal
-- or run maintenance at any moment: results are counted, not listed.

\i sql/include/fresh_extension.sql

-- CREATE EXTENSION made the current month and premake_months (6) ahead, and
-- none of them belongs to the extension (retention drops them, pg_dump dumps them).
SHOW audit_db.premake_months;
SELECT count(*) FILTER (WHERE NOT is_default) AS months, count(*) FILTER (WHERE is_default) AS defaults,
       min(range_from) = date_trunc('month', now(), 'UTC') AS starts_this_month,
       max(range_to) = date_trunc('month', now(), 'UTC') + interval '7 months' AS ends_after_six_more
FROM audit.partitions;
SELECT count(*) AS extension_member_partitions
FROM pg_depend d JOIN audit.partitions p ON d.objid = p.partition
WHERE d.classid = 'pg_class'::regclass AND d.deptype = 'e' AND NOT p.is_default;

-- create_partitions: one row per month, idempotent.
SELECT partition, range_from, range_to, created, rows_moved
FROM audit.create_partitions(2, '2040-01-15 10:00+00');
SELECT partition, created FROM audit.create_partitions(1, '2040-02-01 00:00+00');
SELECT count(*) AS months FROM audit.create_partitions(0, '2040-03-31 23:59:59.999999+00');

-- Bounds are UTC months whatever the session time zone.
SET TimeZone = 'Pacific/Auckland';
SELECT partition FROM audit.create_month_partition('2040-05-01 05:00+12');
SET TimeZone = 'UTC';
SELECT partition, range_from, range_to FROM audit.partitions WHERE partition = 'audit.audit_log_2040_04'::regclass;

-- A new partition's BRIN index has no summary for the range its inserts go to
-- (inserts into a summarised range would each rewrite the summary): after a
-- first row (rolled back: its page stays), the first summarize of range 0
-- finds it unsummarized and summarises it (1), a second finds nothing to do.
BEGIN;
INSERT INTO audit.audit_log ("timestamp", action, status) VALUES ('2040-04-10 12:00+00', 'brin_probe', 'success');
ROLLBACK;
SELECT brin_summarize_range(i.indexrelid::regclass, 0) AS first, brin_summarize_range(i.indexrelid::regclass, 0) AS again
FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_am a ON a.oid = c.relam
WHERE i.indrelid = 'audit.audit_log_2040_04'::regclass AND a.amname = 'brin';

-- Decisions come from relpartbound, not names: a renamed partition is still
-- the one for its month.
ALTER TABLE audit.audit_log_2040_02 RENAME TO misleading_1999_01;
SELECT partition, created FROM audit.create_month_partition('2040-02-10');
SELECT partition, range_from FROM audit.partitions WHERE partition::text LIKE '%misleading%';

-- Error paths.
SELECT * FROM audit.create_partitions(-1);
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM audit.create_partitions(121);
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM audit.create_partitions(1, NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM audit.create_partitions(1, 'infinity');
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM audit.create_month_partition(NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM audit.create_month_partition('294276-12-15');
\echo :LAST_ERROR_SQLSTATE
-- A table under the month's name that is not its partition.
CREATE TABLE audit.audit_log_2041_01 (x int);
SELECT * FROM audit.create_month_partition('2041-01-15');
\echo :LAST_ERROR_SQLSTATE
DROP TABLE audit.audit_log_2041_01;
-- A partition that covers part of a month (not made by audit_db).
CREATE TABLE audit.half_month (LIKE audit.audit_log INCLUDING DEFAULTS);
ALTER TABLE audit.audit_log ATTACH PARTITION audit.half_month
  FOR VALUES FROM ('2042-06-15 00:00+00') TO ('2042-07-01 00:00+00');
SELECT * FROM audit.create_month_partition('2042-06-01');
\echo :LAST_ERROR_SQLSTATE
DROP TABLE audit.half_month;

-- Rows in the default partition: events of a month without a partition.
INSERT INTO audit.audit_log ("timestamp", action, status, principal_id)
SELECT timestamptz '2019-03-05 00:00+00' + g * interval '1 hour', 'old.event', 'success', 'user-' || g
FROM generate_series(1, 5) g;
INSERT INTO audit.audit_log ("timestamp", action, status)
VALUES ('2018-12-31 23:59:59.999999+00', 'older.event', 'failure');
SELECT tableoid::regclass AS partition, count(*) FROM audit.audit_log GROUP BY 1 ORDER BY 1;
SELECT pg_temp.seal_all() AS sealed;
SELECT partition, sealed_rows FROM audit.partitions WHERE is_default;

-- Maintenance as of a fixed time: premake from then, the default partition
-- drained (a WARNING per month), sealing caught up; recorded.
CALL audit.run_maintenance('2030-01-10 12:00+00');
SELECT tableoid::regclass AS partition, count(*) FROM audit.audit_log GROUP BY 1 ORDER BY 1;
SELECT via, status, as_of, actions->'partitions_created' AS created, actions->'default_rows' AS default_rows,
       actions->'rows_moved' AS moved, actions->'rows_relocated' AS relocated, errors
FROM audit.maintenance_run WHERE via = 'call' ORDER BY run_id DESC LIMIT 1;
SELECT partition_from, partition_to, row_count, cardinality(row_ids) AS ids FROM audit.audit_log_relocation;

-- The moved rows still verify against the default partition's blocks, also
-- after more rows arrive in their month.
SELECT count(*) AS problems FROM audit.verify();
INSERT INTO audit.audit_log ("timestamp", action, status) VALUES ('2019-03-21', 'later.event', 'success');
SELECT pg_temp.seal_all() AS sealed;
SELECT count(*) AS problems FROM audit.verify();
SELECT count(*) AS problems FROM audit.verify(since_last => true);

-- A relocated row altered behind the triggers' back is reported.
BEGIN;
ALTER TABLE audit.audit_log DISABLE TRIGGER audit_log_refuse_update;
UPDATE audit.audit_log SET action = 'forged' WHERE action = 'old.event' AND principal_id = 'user-3';
ALTER TABLE audit.audit_log ENABLE ALWAYS TRIGGER audit_log_refuse_update;
SELECT (row_id = (SELECT id FROM audit.audit_log WHERE action = 'forged')) AS that_row, problem, field
FROM audit.verify();
ROLLBACK;
-- The relocation record is append-only.
DELETE FROM audit.audit_log_relocation;
\echo :LAST_ERROR_SQLSTATE

-- Inside a transaction block maintenance runs atomically (no commits).
BEGIN;
CALL audit.run_maintenance('2030-01-10 12:00+00');
SELECT status, errors FROM audit.maintenance_run WHERE via = 'call' ORDER BY run_id DESC LIMIT 1;
COMMIT;

-- A failing step is recorded and the others still run: a stray table under
-- the name of a month to premake.
CREATE TABLE audit.audit_log_2050_03 (x int);
CALL audit.run_maintenance('2050-01-10 12:00+00');
SELECT status, actions->'partitions_created' AS created, errors
FROM audit.maintenance_run WHERE via = 'call' ORDER BY run_id DESC LIMIT 1;
DROP TABLE audit.audit_log_2050_03;

CALL audit.run_maintenance('infinity');
\echo :LAST_ERROR_SQLSTATE

-- History: a run a crash left 'running' becomes 'interrupted'; records older
-- than audit_db.maintenance_history_days (90) are removed by the next run, and
-- errors older than audit_db.error_log_days (90) leave audit.error_log.
INSERT INTO audit.maintenance_run (via, as_of, status, started_at)
VALUES ('worker', '2020-01-01', 'running', '2020-01-01'),
       ('call', '2026-01-01', 'running', now() - interval '1 day');
INSERT INTO audit.error_log (occurred_at, source, message, error_key)
VALUES (now() - interval '91 days', 'regress_history', 'old error', 'regress_history:old'),
       (now() - interval '89 days', 'regress_history', 'recent error', 'regress_history:recent');
SHOW audit_db.maintenance_history_days;
SHOW audit_db.error_log_days;
CALL audit.run_maintenance();
SELECT count(*) FILTER (WHERE started_at < '2021-01-01') AS old_records,
       count(*) FILTER (WHERE status = 'running') AS still_running,
       count(*) FILTER (WHERE status = 'interrupted') AS interrupted
FROM audit.maintenance_run;
SELECT message FROM audit.error_log WHERE source = 'regress_history' ORDER BY error_id;
-- 0 keeps errors for ever.
SET audit_db.error_log_days = 0;
INSERT INTO audit.error_log (occurred_at, source, message, error_key)
VALUES (now() - interval '10 years', 'regress_history', 'ancient error', 'regress_history:ancient');
CALL audit.run_maintenance();
SELECT message FROM audit.error_log WHERE source = 'regress_history' ORDER BY error_id;
RESET audit_db.error_log_days;

-- Only the owner of audit.audit_log runs maintenance or creates partitions;
-- the auditor reads what exists and what was done.
CREATE ROLE audit_partitions_auditor IN ROLE audit_db_auditor;
CREATE ROLE audit_partitions_other;
GRANT USAGE ON SCHEMA audit TO audit_partitions_other;
GRANT EXECUTE ON PROCEDURE audit.run_maintenance(timestamptz) TO audit_partitions_other;
SET ROLE audit_partitions_auditor;
SELECT count(*) > 0 AS sees_partitions FROM audit.partitions;
SELECT count(*) > 0 AS sees_runs FROM audit.maintenance_run;
CALL audit.run_maintenance();
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM audit.create_partitions(1);
\echo :LAST_ERROR_SQLSTATE
SET ROLE audit_partitions_other;
CALL audit.run_maintenance();
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;
REVOKE ALL ON SCHEMA audit FROM audit_partitions_other;
REVOKE ALL ON PROCEDURE audit.run_maintenance(timestamptz) FROM audit_partitions_other;
DROP ROLE audit_partitions_auditor, audit_partitions_other;

-- DROP EXTENSION takes the partitions with it.
DROP EXTENSION audit_db;
RESET client_min_messages;
SELECT count(*) AS leftover FROM pg_class WHERE relname LIKE 'audit_log%';
CREATE EXTENSION audit_db;
