-- chain: sealing, verification, digests and proofs of the audit chain, their
-- error paths and privileges. The background worker (audit_db preloaded) may
-- seal at any moment, with its own audit_db.seal_block_rows: everything below
-- holds whoever sealed (rows and partitions are counted, not blocks).

-- A fresh chain: the log is empty.
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS audit_db CASCADE;
CREATE EXTENSION audit_db;
RESET client_min_messages;
SET audit_db.seal_block_rows = 50;
SET TimeZone = 'UTC';

-- Sealing an empty log adds nothing.
SELECT blocks, rows_sealed, height FROM audit.seal();
SELECT height, rows_total, horizon_xid >= 0 AS has_horizon, last_sealed_at IS NULL AS never_sealed
FROM audit.audit_chain_state;
SELECT height, rows_sealed, unsealed_rows FROM audit.chain_status;
SELECT count(*) AS empty_problems FROM audit.verify();

\i sql/include/session_helpers.sql

-- 120 events in one transaction: 100 this month, 20 in March 2024.
SELECT audit.ensure_month_partition('2024-03-15') AS old_partition;
INSERT INTO audit.audit_log ("timestamp", action, status, principal_id, organization_id, details)
SELECT CASE WHEN g % 6 = 0 THEN timestamptz '2024-03-10 12:00+00' + g * interval '1 minute' ELSE now() END,
       'chain_' || g, 'success', 'user' || g % 7, 'org' || g % 3, jsonb_build_object('n', g)
FROM generate_series(1, 120) g;
SELECT pg_temp.seal_all() AS all_sealed;

-- Sealing again finds nothing new.
SELECT blocks, rows_sealed FROM audit.seal();

-- Every row is in exactly one block; blocks follow on.
SELECT count(DISTINCT partition_from) AS partitions, sum(row_count) AS rows_in_blocks,
       max(rows_total) AS rows_total, max(height) = count(*) AS heights_dense,
       bool_and(row_count = cardinality(row_ids) AND length(leaves) = 32 * row_count) AS sizes_agree,
       bool_and(kind = 'rows') AS kinds
FROM audit.audit_chain_block;
SELECT partition_from = date_trunc('month', now()) AS this_month,
       partition_from = '2024-03-01 00:00+00' AS march_2024, sum(row_count) AS rows
FROM audit.audit_chain_block GROUP BY 1, 2 ORDER BY 1, 2;
SELECT count(*) AS sealed_ids, count(DISTINCT s.id) AS distinct_ids, count(l.id) AS in_log
FROM (SELECT unnest(row_ids) AS id FROM audit.audit_chain_block) s
LEFT JOIN audit.audit_log l USING (id);
SELECT s.height = (SELECT max(height) FROM audit.audit_chain_block) AS state_names_last_block,
       s.head_hash = (SELECT header_hash FROM audit.audit_chain_block ORDER BY height DESC LIMIT 1) AS head_is_last_header,
       s.rows_total, s.last_sealed_at IS NOT NULL AS sealed
FROM audit.audit_chain_state s;
SELECT rows_sealed, unsealed_rows, seal_lag = interval '0' AS no_lag FROM audit.chain_status;

-- The status reads the unsealed rows through the BRIN index on transaction_id,
-- never by a sequential scan of the log (that would read every sealed row).
-- (The transaction's own scan counts: pending counts of earlier ones are
-- flushed first.)
SELECT pg_stat_force_next_flush();
BEGIN;
SELECT unsealed_rows FROM audit.chain_status;
SELECT coalesce(sum(t.seq_scan), 0) AS log_seq_scans, sum(t.idx_scan) > 0 AS log_index_scans
FROM pg_stat_xact_user_tables t JOIN pg_inherits i ON i.inhrelid = t.relid
WHERE i.inhparent = 'audit.audit_log'::regclass;
COMMIT;

-- Rows are sealed in (partition, transaction_id, id) order, with their stored hash as leaf.
SELECT bool_and(ok) AS leaves_are_row_hashes
FROM (SELECT substring(b.leaves FROM (u.o::int - 1) * 32 + 1 FOR 32) = l.hash AS ok
      FROM audit.audit_chain_block b, unnest(b.row_ids) WITH ORDINALITY AS u(id, o)
      JOIN audit.audit_log l ON l.id = u.id) s;
SELECT bool_and(ids = sorted) AS in_sealing_order
FROM (SELECT b.row_ids AS ids,
             (SELECT array_agg(l.id ORDER BY l.transaction_id, l.id) FROM audit.audit_log l
               WHERE l.id = ANY (b.row_ids)) AS sorted
      FROM audit.audit_chain_block b) s;

-- Header hashes, links and Merkle roots recompute from the stored fields.
SELECT audit.block_header_hash(height, kind, partition_from, partition_to, xid_from, xid_to, row_count,
                               rows_total, merkle_root, sealed_at, prev_hash) = header_hash AS block1_header_ok,
       prev_hash = '\x0000000000000000000000000000000000000000000000000000000000000000'::bytea AS block1_prev_zero
FROM audit.audit_chain_block WHERE height = 1;
SELECT bool_and(audit.block_header_hash(height, kind, partition_from, partition_to, xid_from, xid_to, row_count,
                                        rows_total, merkle_root, sealed_at, prev_hash) = header_hash) AS headers_ok,
       bool_and(prev_hash = coalesce(prev_header, prev_hash)) AS links_ok
FROM (SELECT b.*, lag(header_hash) OVER (ORDER BY height) AS prev_header FROM audit.audit_chain_block b) s;
SELECT bool_and(audit.merkle_root(ARRAY(SELECT substring(leaves FROM i * 32 + 1 FOR 32)
                                        FROM generate_series(0, row_count - 1) i ORDER BY i)) = merkle_root)
       AS merkle_roots_ok
FROM audit.audit_chain_block;
-- Any header field enters the header hash.
SELECT bool_and(h <> header_hash) AS every_field_counts
FROM audit.audit_chain_block b, LATERAL (VALUES
  (audit.block_header_hash(height + 1, kind, partition_from, partition_to, xid_from, xid_to, row_count, rows_total, merkle_root, sealed_at, prev_hash)),
  (audit.block_header_hash(height, kind, partition_from - interval '1 month', partition_to, xid_from, xid_to, row_count, rows_total, merkle_root, sealed_at, prev_hash)),
  (audit.block_header_hash(height, kind, NULL, NULL, xid_from, xid_to, row_count, rows_total, merkle_root, sealed_at, prev_hash)),
  (audit.block_header_hash(height, kind, partition_from, partition_to, xid_from + 1, xid_to, row_count, rows_total, merkle_root, sealed_at, prev_hash)),
  (audit.block_header_hash(height, kind, partition_from, partition_to, xid_from, xid_to + 1, row_count, rows_total, merkle_root, sealed_at, prev_hash)),
  (audit.block_header_hash(height, kind, partition_from, partition_to, xid_from, xid_to, row_count + 1, rows_total, merkle_root, sealed_at, prev_hash)),
  (audit.block_header_hash(height, kind, partition_from, partition_to, xid_from, xid_to, row_count, rows_total + 1, merkle_root, sealed_at, prev_hash)),
  (audit.block_header_hash(height, kind, partition_from, partition_to, xid_from, xid_to, row_count, rows_total, sha256(merkle_root), sealed_at, prev_hash)),
  (audit.block_header_hash(height, kind, partition_from, partition_to, xid_from, xid_to, row_count, rows_total, merkle_root, sealed_at + interval '1 microsecond', prev_hash)),
  (audit.block_header_hash(height, kind, partition_from, partition_to, xid_from, xid_to, row_count, rows_total, merkle_root, sealed_at, sha256(prev_hash)))
) AS v(h);

-- An intact chain verifies clean, and the run is recorded.
SELECT * FROM audit.verify();
SELECT status, problems, first_problem, rows_checked, rows_unsealed,
       blocks_checked = (SELECT count(*) FROM audit.audit_chain_block) AS all_blocks,
       from_height, to_height = (SELECT max(height) FROM audit.audit_chain_block) AS to_last,
       head_hash = (SELECT head_hash FROM audit.audit_chain_state) AS head_recorded,
       scope, run_by = current_user AS run_by_me, finished_at >= started_at AS timed
FROM audit.audit_integrity_log ORDER BY run_id DESC LIMIT 1;
SELECT count(*) AS org1_problems FROM audit.verify(organization_id => 'org1');
SELECT count(*) AS march_problems FROM audit.verify(from_time => '2024-03-01', to_time => '2024-04-01');
SELECT count(*) AS since_last_problems FROM audit.verify(since_last => true);
SELECT scope, rows_checked, status FROM audit.audit_integrity_log ORDER BY run_id DESC LIMIT 3;

-- The digest: the chain head as a self-describing document.
SELECT array_agg(k ORDER BY k) AS digest_keys FROM jsonb_object_keys(audit.digest()) k;
SELECT d->>'format' AS format, d->>'algorithm' AS algorithm, d->>'database' = current_database() AS this_db,
       (d->>'height')::bigint = (SELECT max(height) FROM audit.audit_chain_block) AS height_ok,
       d->>'header_hash' ~ '^[0-9a-f]{64}$' AS hex_hash,
       decode(d->>'header_hash', 'hex') = (SELECT head_hash FROM audit.audit_chain_state) AS head_ok,
       (d->>'rows_total')::bigint AS rows_total,
       (d->>'sealed_at')::timestamptz = (SELECT last_sealed_at FROM audit.audit_chain_state) AS sealed_at_ok
FROM audit.digest() d;
SELECT ok, digest_height = current_height AS same_height, detail FROM audit.verify_digest(audit.digest());
-- A digest of an earlier height (built from block 1) is extended by the chain.
SELECT ok, digest_height, current_height = (SELECT max(height) FROM audit.audit_chain_block) AS current_ok
FROM audit.verify_digest((SELECT jsonb_build_object('format', 'audit_db.digest.v1', 'algorithm', 'SHA-256',
  'height', height, 'header_hash', encode(header_hash, 'hex'), 'rows_total', rows_total)
  FROM audit.audit_chain_block WHERE height = 1));
-- The height-0 digest of an empty chain is extended by any chain.
SELECT ok FROM audit.verify_digest('{"format": "audit_db.digest.v1", "algorithm": "SHA-256", "height": 0,
  "header_hash": "0000000000000000000000000000000000000000000000000000000000000000"}');
-- A digest this chain does not extend.
-- (Block heights depend on who sealed: the worker may use other block sizes.)
SELECT ok, regexp_replace(detail, 'block [0-9]+', 'block N') AS detail
FROM audit.verify_digest(jsonb_set(audit.digest(), '{header_hash}', to_jsonb(repeat('ab', 32))));
SELECT ok FROM audit.verify_digest(jsonb_set(audit.digest(), '{height}', to_jsonb((audit.digest()->>'height')::bigint + 5)));
SELECT ok, regexp_replace(detail, 'block [0-9]+', 'block N') AS detail
FROM audit.verify_digest(jsonb_set(audit.digest(), '{rows_total}', '7'));

-- Proofs: inclusion of one sealed event, checked here with RFC 6962 path
-- verification (RFC 9162, 2.1.3.2) against the block's Merkle root.
CREATE FUNCTION pg_temp.path_root(leaf bytea, idx bigint, size bigint, path jsonb) RETURNS bytea
LANGUAGE plpgsql AS $$
DECLARE
  fn bigint := idx;
  sn bigint := size - 1;
  r bytea := leaf;
  p bytea;
BEGIN
  FOR i IN 0 .. jsonb_array_length(path) - 1 LOOP
    p := decode(path->>i, 'hex');
    IF sn = 0 THEN RETURN NULL; END IF;
    IF fn % 2 = 1 OR fn = sn THEN
      r := sha256('\x01'::bytea || p || r);
      IF fn % 2 = 0 THEN
        WHILE fn % 2 = 0 AND fn <> 0 LOOP fn := fn / 2; sn := sn / 2; END LOOP;
      END IF;
    ELSE
      r := sha256('\x01'::bytea || r || p);
    END IF;
    fn := fn / 2;
    sn := sn / 2;
  END LOOP;
  RETURN CASE WHEN sn = 0 THEN r END;
END
$$;
SELECT min(id) AS first_id FROM audit.audit_log WHERE "timestamp" >= date_trunc('month', now()) \gset
SELECT max(id) AS last_id FROM audit.audit_log WHERE "timestamp" >= date_trunc('month', now()) \gset
SELECT array_agg(k ORDER BY k) AS proof_keys FROM jsonb_object_keys(audit.prove(:first_id)) k;
SELECT p->>'format' AS format, p->>'algorithm' AS algorithm,
       (p->>'leaf_index')::int AS leaf_index,
       (p->>'tree_size')::int = b.row_count AS tree_size_ok,
       jsonb_array_length(p->'audit_path') = ceil(log(2, b.row_count))::int AS path_length_ok,
       p->'row' = audit.export_row(l) AS row_ok,
       p->'block' = audit.export_header(b) AS block_ok,
       jsonb_array_length(p->'later_headers') = (SELECT count(*) FROM audit.audit_chain_block x WHERE x.height > b.height) AS later_ok,
       p->'digest'->>'header_hash' = encode((SELECT head_hash FROM audit.audit_chain_state), 'hex') AS digest_ok,
       pg_temp.path_root(l.hash, (p->>'leaf_index')::int, (p->>'tree_size')::int, p->'audit_path') = b.merkle_root AS path_verifies
FROM audit.audit_log l, audit.prove(l.id) p, audit.audit_chain_block b
WHERE l.id = :first_id AND b.height = (p->'block'->>'height')::bigint;
-- Every sealed event's proof verifies; its leaf index is its position in the block.
SELECT count(*) AS proofs, bool_and(pg_temp.path_root(l.hash, (p->>'leaf_index')::int, (p->>'tree_size')::int,
                                                      p->'audit_path') = b.merkle_root) AS all_verify,
       bool_and((p->>'leaf_index')::int = array_position(b.row_ids, l.id) - 1) AS indexes_ok,
       bool_and(p->'later_headers'->-1 IS NULL OR (p->'later_headers'->-1->>'height')::bigint = (p->'digest'->>'height')::bigint) AS chains_to_digest
FROM audit.audit_log l, audit.prove(l.id) p, audit.audit_chain_block b
WHERE b.height = (p->'block'->>'height')::bigint;
-- merkle_path agrees with the proof.
SELECT (SELECT coalesce(jsonb_agg(encode(x, 'hex') ORDER BY o), '[]')
        FROM unnest(audit.merkle_path(b.leaves, array_position(b.row_ids, :last_id::bigint) - 1)) WITH ORDINALITY u(x, o))
       = audit.prove(:last_id)->'audit_path' AS merkle_path_ok
FROM audit.audit_chain_block b WHERE :last_id = ANY (b.row_ids);

\set VERBOSITY terse
-- Blocks are append-only, also for a superuser and under replica mode.
UPDATE audit.audit_chain_block SET sealed_at = now() WHERE height = 1;
\echo :LAST_ERROR_SQLSTATE
DELETE FROM audit.audit_chain_block WHERE height = 1;
\echo :LAST_ERROR_SQLSTATE
TRUNCATE audit.audit_chain_block;
\echo :LAST_ERROR_SQLSTATE
SET session_replication_role = replica;
UPDATE audit.audit_chain_block SET sealed_at = now() WHERE height = 1;
\echo :LAST_ERROR_SQLSTATE
DELETE FROM audit.audit_chain_block WHERE height = 1;
\echo :LAST_ERROR_SQLSTATE
RESET session_replication_role;
SELECT tgname, tgenabled FROM pg_trigger WHERE tgrelid = 'audit.audit_chain_block'::regclass ORDER BY 1;

-- Error paths.
SELECT * FROM audit.verify(from_time => '2026-02-01', to_time => '2026-01-01');
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM audit.verify(from_time => '2026-01-01', to_time => '2026-01-01');
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM audit.verify(max_problems => -1);
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM audit.verify(progress_every => -1);
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM audit.verify(since_last => true, organization_id => 'org1');
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM audit.verify(since_last => true, from_time => '2026-01-01');
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM audit.verify_digest('{"garbage": true}');
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM audit.verify_digest('[1, 2]');
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM audit.verify_digest(audit.digest() - 'height');
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM audit.verify_digest(jsonb_set(audit.digest(), '{header_hash}', '"XYZ"'));
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM audit.verify_digest(jsonb_set(audit.digest(), '{format}', '"audit_db.digest.v2"'));
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM audit.verify_digest(NULL);
SELECT audit.prove(-1);
\echo :LAST_ERROR_SQLSTATE
SELECT audit.prove(NULL) AS null_proof;
-- An event of the current transaction cannot be sealed yet.
BEGIN;
SELECT audit.log_event(action => 'chain_unsealed') > 0 AS logged;
\set VERBOSITY sqlstate
SELECT audit.prove(audit.last_event_id());
\set VERBOSITY terse
ROLLBACK;
SELECT audit.merkle_path(sha256('a') || sha256('b') || sha256('c'), 3);
\echo :LAST_ERROR_SQLSTATE
SELECT audit.merkle_path(sha256('a') || sha256('b') || sha256('c'), -1);
\echo :LAST_ERROR_SQLSTATE
SELECT audit.merkle_path('\x0102'::bytea, 0);
\echo :LAST_ERROR_SQLSTATE
SELECT audit.merkle_path(''::bytea, 0);
\echo :LAST_ERROR_SQLSTATE
SELECT cardinality(audit.merkle_path(sha256('x'), 0)) AS single_leaf_path;
SELECT audit.merkle_root(ARRAY['\x01'::bytea]);
\echo :LAST_ERROR_SQLSTATE
SELECT audit.block_header_hash(NULL, kind, partition_from, partition_to, xid_from, xid_to, row_count, rows_total,
                               merkle_root, sealed_at, prev_hash) FROM audit.audit_chain_block WHERE height = 1;
\echo :LAST_ERROR_SQLSTATE
SELECT audit.block_header_hash(height, kind, partition_from, partition_to, xid_from, xid_to, row_count, rows_total,
                               NULL, sealed_at, prev_hash) FROM audit.audit_chain_block WHERE height = 1;
\echo :LAST_ERROR_SQLSTATE
SELECT audit.block_header_hash(height, kind, partition_from, partition_to, xid_from, xid_to, row_count, rows_total,
                               '\x00'::bytea, sealed_at, prev_hash) FROM audit.audit_chain_block WHERE height = 1;
\echo :LAST_ERROR_SQLSTATE
SELECT audit.block_header_hash(height, kind, 'infinity', partition_to, xid_from, xid_to, row_count, rows_total,
                               merkle_root, sealed_at, prev_hash) FROM audit.audit_chain_block WHERE height = 1;
\echo :LAST_ERROR_SQLSTATE
\set VERBOSITY default

-- Privileges: the writer may seal and nothing of the chain else; the auditor
-- may read, verify, digest and prove, and write nothing.
-- (Single-tenant roles: they see every organization; see the tenancy suite.)
CREATE ROLE regress_chain_writer LOGIN IN ROLE audit_db_writer, audit_db_all_organizations;
CREATE ROLE regress_chain_auditor LOGIN IN ROLE audit_db_auditor, audit_db_all_organizations;
\set VERBOSITY terse
SET ROLE regress_chain_writer;
SELECT audit.log_event(action => 'chain_writer') > 0 AS logged;
SELECT height >= 1 AS sealed FROM audit.seal();
SELECT count(*) FROM audit.verify();
\echo :LAST_ERROR_SQLSTATE
SELECT count(*) FROM audit.audit_chain_block;
\echo :LAST_ERROR_SQLSTATE
SELECT count(*) FROM audit.audit_chain_state;
\echo :LAST_ERROR_SQLSTATE
SELECT audit.digest();
\echo :LAST_ERROR_SQLSTATE
SELECT audit.prove(1);
\echo :LAST_ERROR_SQLSTATE
SELECT count(*) FROM audit.audit_integrity_log;
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;
SELECT pg_temp.seal_all() AS all_sealed;

SET ROLE regress_chain_auditor;
SELECT count(*) AS auditor_problems FROM audit.verify();
SELECT count(*) > 0 AS reads_blocks FROM audit.audit_chain_block;
SELECT height > 0 AS reads_state FROM audit.audit_chain_state;
SELECT count(*) > 0 AS reads_runs FROM audit.audit_integrity_log;
SELECT ok AS auditor_digest_ok FROM audit.verify_digest(audit.digest());
SELECT audit.prove(:first_id)->>'leaf_index' AS auditor_leaf_index;
SELECT count(*) > 0 AS exports FROM audit.export_chain();
SELECT height >= 1 AS auditor_may_seal FROM audit.seal();
INSERT INTO audit.audit_chain_block SELECT * FROM audit.audit_chain_block WHERE height = 1;
\echo :LAST_ERROR_SQLSTATE
UPDATE audit.audit_chain_block SET sealed_at = now() WHERE height = 1;
\echo :LAST_ERROR_SQLSTATE
DELETE FROM audit.audit_chain_block WHERE height = 1;
\echo :LAST_ERROR_SQLSTATE
UPDATE audit.audit_chain_state SET height = 0;
\echo :LAST_ERROR_SQLSTATE
INSERT INTO audit.audit_integrity_log (started_at, finished_at, run_by, scope, from_height, to_height,
  blocks_checked, rows_checked, rows_unsealed, problems, status)
VALUES (now(), now(), 'me', '{}', 1, 1, 0, 0, 0, 0, 'clean');
\echo :LAST_ERROR_SQLSTATE
DELETE FROM audit.audit_integrity_log;
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;
\set VERBOSITY default
-- The auditor's run was recorded (as the table owner), under the auditor's name.
SELECT run_by, status FROM audit.audit_integrity_log WHERE run_by = 'regress_chain_auditor';

DROP ROLE regress_chain_writer, regress_chain_auditor;
