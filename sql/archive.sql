-- archive: rows of a policy with archive_after_days leave the log for
-- audit.archive_storage (pglz-compressed JSON lines) at that age, come back
-- byte-identical through audit.archive_restore() (counted), stay verifiable
-- (verify recomputes every archived row against its archive_rows block), and
-- expire from the archive at delete_after_days (a sealed retention_archive
-- block). A failing archive job lands in audit.archive_dlq_event.

\i sql/include/fresh_extension.sql

-- 'cold': kept in the log 30 days, in the archive until 100 days.
INSERT INTO audit.audit_retention_policy (policy_name, retention_days, archive_after_days, delete_after_days)
VALUES ('cold', 60, 30, 100);
SELECT count(*) AS months FROM audit.create_partitions(6, '2024-01-01');
INSERT INTO audit.audit_log ("timestamp", action, status, principal_id, organization_id, details,
                             retention_policy, data_classification, outcome_description, processing_latency)
SELECT d + interval '9 hours 30 minutes 0.123456 seconds', 'export', 'success', 'user-' || n, 'org-' || (n % 3),
       jsonb_build_object('n', n, 'note', 'çà "quoted" \ back', 'list', jsonb_build_array(1.50, null, true)),
       'cold', CASE WHEN n % 2 = 0 THEN 'PHI' ELSE 'INTERNAL' END,
       CASE WHEN n % 5 = 0 THEN NULL ELSE 'done ' || n END, n
FROM generate_series(timestamptz '2024-03-01', '2024-06-19', interval '1 day') WITH ORDINALITY AS g(d, n);
SELECT pg_temp.seal_all() AS sealed;
CREATE TEMP TABLE original AS SELECT * FROM audit.audit_log;

-- As of 2024-06-20: before 2024-03-12 expired (deleted), from then to
-- 2024-05-21 archived, the rest stays. The first run counts the partitions'
-- rows, then removes; the partitions it emptied are dropped by the next run.
CALL audit.run_maintenance('2024-06-20');
SELECT r->>'partition' AS partition, r->>'action' AS action, (r->>'rows')::int AS deleted,
       (r->>'archived')::int AS archived
FROM audit.maintenance_run m, jsonb_array_elements(m.actions->'retention') r
WHERE m.via = 'call' ORDER BY 1;
SELECT partition, action FROM audit.retention_plan('2024-06-20') WHERE action <> 'keep' ORDER BY 1;
CALL audit.run_maintenance('2024-06-20');
SELECT sum((actions->>'rows_removed')::int) AS removed, sum((actions->>'rows_archived')::int) AS archived
FROM audit.maintenance_run WHERE via = 'call';

SELECT count(*) AS entries, sum(row_count) AS rows, min(min_timestamp)::date AS oldest,
       max(max_timestamp)::date AS newest, bool_and(compression = 'pglz') AS pglz,
       sum(length(data)) < sum(raw_bytes) AS compressed, bool_and(retrieval_count = 0) AS never_read
FROM audit.archive_storage;
SELECT data_classification, count(*) AS entries, sum(row_count) AS rows
FROM audit.archive_storage GROUP BY 1 ORDER BY 1;
SELECT count(*) FILTER (WHERE "timestamp" < '2024-03-12') AS expired_left,
       count(*) FILTER (WHERE "timestamp" >= '2024-03-12' AND "timestamp" < '2024-05-21') AS archivable_left,
       count(*) FILTER (WHERE "timestamp" >= '2024-05-21') AS kept
FROM audit.audit_log;
SELECT kind, count(*) AS blocks, sum(row_count) AS rows FROM audit.audit_chain_block GROUP BY 1 ORDER BY 1;
SELECT * FROM audit.verify();

-- Restored rows are the archived rows, byte for byte (every hashed field and
-- the stored hash), with archived_at set; each restore is counted.
SELECT count(*) AS restored,
       count(*) FILTER (WHERE audit.export_row(r) = audit.export_row(ROW(o.*)::audit.audit_log)) AS identical,
       count(*) FILTER (WHERE audit.leaf_hash(r) = r.hash) AS hashes_recompute,
       bool_and(r.archived_at IS NOT NULL) AS archived_at_set
FROM audit.archive_storage a
CROSS JOIN LATERAL audit.archive_restore(a.archive_id) r
JOIN original o ON o.id = r.id;
SELECT (SELECT count(*) FROM original WHERE "timestamp" >= '2024-03-12' AND "timestamp" < '2024-05-21') AS archivable;
SELECT sum(retrieval_count) AS retrievals, bool_and(last_retrieved_at IS NOT NULL) AS stamped
FROM audit.archive_storage;
SELECT count(*) AS lines FROM audit.archive_lines((SELECT min(archive_id) FROM audit.archive_storage), false);
\set VERBOSITY terse
SELECT * FROM audit.archive_restore(-1);
\echo :LAST_ERROR_SQLSTATE
SELECT count(*) FROM audit.archive_lines(NULL);
-- The archive is append-only but for its retrieval counters.
UPDATE audit.archive_storage SET retention_policy = 'x';
\echo :LAST_ERROR_SQLSTATE
DELETE FROM audit.archive_storage;
\echo :LAST_ERROR_SQLSTATE
\set VERBOSITY default

SELECT kind, row_count FROM audit.audit_chain_block WHERE kind = 'retention_partition' ORDER BY height;

-- Tampering with an archive entry: a changed byte of its data, then an
-- entry deleted, are reported at their blocks.
SELECT min(archive_id) AS victim, min(block_height) AS victim_block FROM audit.archive_storage \gset
BEGIN;
ALTER TABLE audit.archive_storage DISABLE TRIGGER archive_storage_refuse_update;
UPDATE audit.archive_storage SET data = overlay(data PLACING '\x00'::bytea FROM 40 FOR 1) WHERE archive_id = :victim;
ALTER TABLE audit.archive_storage ENABLE ALWAYS TRIGGER archive_storage_refuse_update;
COMMIT;
SELECT block_height = :victim_block AS at_block, field, problem FROM audit.verify() LIMIT 3;
BEGIN;
ALTER TABLE audit.archive_storage DISABLE TRIGGER archive_storage_refuse_delete;
DELETE FROM audit.archive_storage WHERE archive_id = :victim;
ALTER TABLE audit.archive_storage ENABLE ALWAYS TRIGGER archive_storage_refuse_delete;
COMMIT;
SELECT block_height = :victim_block AS at_block, field, problem, detail FROM audit.verify();

-- Expiry: as of 2024-08-01 the entries whose rows are all before 2024-04-23
-- (100 days) leave the archive, sealed as retention_archive blocks; verify
-- tells them from the entry deleted above, which is still missing.
SELECT action, count(*) FROM audit.archive_plan('2024-08-01') GROUP BY 1 ORDER BY 1;
CALL audit.run_maintenance('2024-08-01');
SELECT actions->'archives_expired' AS expired, actions->'archived_rows_expired' AS rows_expired
FROM audit.maintenance_run WHERE via = 'call' ORDER BY run_id DESC LIMIT 1;
SELECT bool_and(max_timestamp >= '2024-04-23') AS only_younger_entries_left FROM audit.archive_storage;
SELECT kind, count(*) AS blocks FROM audit.audit_chain_block WHERE kind = 'retention_archive' GROUP BY 1;
SELECT block_height = :victim_block AS at_block, field, problem FROM audit.verify();

-- An entry's policy decides when it expires, so it must describe its rows:
-- a policy name changed behind audit_db's back is reported (rolled back).
BEGIN;
ALTER TABLE audit.archive_storage DISABLE TRIGGER archive_storage_refuse_update;
UPDATE audit.archive_storage SET retention_policy = 'kept_forever'
WHERE archive_id = (SELECT max(archive_id) FROM audit.archive_storage);
SELECT field, problem, count(*) FROM audit.verify() WHERE field = 'archive' GROUP BY 1, 2 ORDER BY 1, 2;
ROLLBACK;

-- A failing archive job is recorded with its reason and retried later.
SET client_min_messages = error;
SELECT count(*) AS months FROM audit.create_partitions(0, '2024-09-01');
INSERT INTO audit.audit_log ("timestamp", action, status, retention_policy)
SELECT timestamptz '2024-09-01' + g * interval '1 day', 'late', 'success', 'cold' FROM generate_series(0, 9) g;
SELECT pg_temp.seal_all() AS sealed;
ALTER FUNCTION audit.export_row(audit.audit_log) RENAME TO export_row_away;
CALL audit.run_maintenance('2024-10-20');
CALL audit.run_maintenance('2024-10-20');
ALTER FUNCTION audit.export_row_away(audit.audit_log) RENAME TO export_row;
SET client_min_messages = warning;
SELECT partition, retention_policy, data_classification, archive_cutoff::date, sqlstate, reason
FROM audit.archive_dlq_event ORDER BY dlq_id LIMIT 1;
SELECT status FROM audit.maintenance_run WHERE via = 'call' ORDER BY run_id DESC LIMIT 1;
CALL audit.run_maintenance('2024-10-20');
SELECT status, actions->'rows_archived' AS archived FROM audit.maintenance_run WHERE via = 'call' ORDER BY run_id DESC LIMIT 1;

-- Who may read the archive: the auditor (restores are counted), not the writer.
-- (An auditor of every organization; a tenant's auditor gets only its own
-- organization's rows: tenancy suite.)
CREATE ROLE regress_archive_auditor IN ROLE audit_db_auditor, audit_db_all_organizations;
SET ROLE regress_archive_auditor;
SELECT count(*) > 0 AS auditor_restores FROM audit.archive_restore((SELECT max(archive_id) FROM audit.archive_storage));
SELECT count(*) >= 0 AS auditor_reads_dlq FROM audit.archive_dlq_event;
RESET ROLE;
DROP ROLE regress_archive_auditor;
SET ROLE audit_db_writer;
\set VERBOSITY terse
SELECT count(*) FROM audit.archive_storage;
\echo :LAST_ERROR_SQLSTATE
SELECT count(*) FROM audit.archive_restore(1);
\echo :LAST_ERROR_SQLSTATE
\set VERBOSITY default
RESET ROLE;

DROP EXTENSION audit_db CASCADE;
