-- Tamper evidence: the sealed chain of blocks over audit rows (src/sealing.c,
-- src/verification.c, src/proofs.c; block format in docs/hash-format.md).
--
-- A sealer (the background worker, or audit.seal()) takes every committed
-- row whose transaction id lies below its snapshot's xmin and above the
-- previous seal's horizon, orders them by (transaction_id, id) within their
-- partition, and appends blocks: the rows' ids and leaf hashes, their Merkle
-- root, and a header hash that links to the previous block's header.

-- Sealing and verification find rows by transaction id (and proofs by id)
-- through one small BRIN index: rows arrive in roughly increasing order of
-- both, so each block range summarises a narrow interval.
CREATE INDEX audit_log_transaction_brin ON audit.audit_log
  USING brin (transaction_id, id) WITH (pages_per_range = 32);

CREATE TABLE audit.audit_chain_block (
  height         bigint      PRIMARY KEY CHECK (height > 0),
  -- 'rows': rows sealed; 'retention_rows': sealed rows removed by retention
  -- (their ids and leaves); 'retention_partition': a partition dropped by
  -- retention (no ids; row_count rows went with it).
  -- 'archive_rows': sealed rows moved into audit.archive_storage;
  -- 'retention_archive': archived rows that expired, removed from the archive.
  kind           text        NOT NULL CHECK (kind IN ('rows', 'retention_rows', 'retention_partition',
                                                      'archive_rows', 'retention_archive')),
  -- Bounds of the partition that holds the block's rows; both NULL for the
  -- default partition.
  partition_from timestamptz,
  partition_to   timestamptz,
  -- The seal run's transaction-id interval [xid_from, xid_to).
  xid_from       bigint      NOT NULL,
  xid_to         bigint      NOT NULL CHECK (xid_to >= xid_from),
  row_count      integer     NOT NULL CHECK (row_count > 0 OR (kind = 'retention_partition' AND row_count = 0)),
  -- Rows ever sealed, up to this block (retention blocks leave it as it was).
  rows_total     bigint      NOT NULL,
  -- Row ids and their leaf hashes (32 bytes each), in sealing order.
  row_ids        bigint[]    NOT NULL,
  leaves         bytea       NOT NULL,
  merkle_root    bytea       NOT NULL,
  sealed_at      timestamptz NOT NULL,
  prev_hash      bytea       NOT NULL,
  header_hash    bytea       NOT NULL
);
ALTER TABLE audit.audit_chain_block ALTER COLUMN row_ids SET STORAGE EXTERNAL;
ALTER TABLE audit.audit_chain_block ALTER COLUMN leaves SET STORAGE EXTERNAL;
CREATE INDEX audit_chain_block_partition_idx ON audit.audit_chain_block (partition_from, height);
CREATE INDEX audit_chain_block_xid_idx ON audit.audit_chain_block (xid_to);
COMMENT ON TABLE audit.audit_chain_block IS
  'Sealed blocks of the audit chain: leaf hashes of committed audit rows, Merkle root, linked header hashes';

-- The sealer's state: one row, locked by each seal run, so runs never overlap.
CREATE TABLE audit.audit_chain_state (
  singleton      boolean     PRIMARY KEY DEFAULT true CHECK (singleton),
  height         bigint      NOT NULL DEFAULT 0,
  head_hash      bytea       NOT NULL DEFAULT '\x0000000000000000000000000000000000000000000000000000000000000000',
  rows_total     bigint      NOT NULL DEFAULT 0,
  horizon_xid    bigint      NOT NULL DEFAULT 0,
  last_sealed_at timestamptz,
  -- Added to this cluster's 64-bit transaction ids to give audit_log.transaction_id:
  -- 0 unless the database was restored into a cluster whose ids lay behind (src/restore.c).
  xid_offset     bigint      NOT NULL DEFAULT 0 CHECK (xid_offset >= 0)
);
-- Under session_replication_role = replica (a restore), the dump brings the row.
INSERT INTO audit.audit_chain_state (singleton)
SELECT true WHERE current_setting('session_replication_role') <> 'replica';
COMMENT ON TABLE audit.audit_chain_state IS
  'Head of the audit chain, the transaction-id horizon below which every committed row is sealed, '
  'and the offset from this cluster''s transaction ids to the chain''s';

-- Blocks are append-only like the rows they seal (guards: src/sql/70_append_only.sql).

CREATE TABLE audit.audit_integrity_log (
  run_id          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  started_at      timestamptz NOT NULL,
  finished_at     timestamptz NOT NULL,
  run_by          text        NOT NULL,
  scope           jsonb       NOT NULL,
  from_height     bigint      NOT NULL,
  to_height       bigint      NOT NULL,
  head_hash       bytea,
  blocks_checked  bigint      NOT NULL,
  rows_checked    bigint      NOT NULL,
  rows_unsealed   bigint      NOT NULL,
  problems        bigint      NOT NULL,
  first_problem   text,
  status          text        NOT NULL CHECK (status IN ('clean', 'problems')),
  -- The organization a run was confined to (NULL: every organization's
  -- rows); tenant isolation (75_tenancy.sql) shows tenants their own runs.
  organization_id text        GENERATED ALWAYS AS (scope ->> 'organization_id') STORED
);
COMMENT ON TABLE audit.audit_integrity_log IS
  'One row per audit.verify() run on the primary: scope, what was checked, and the outcome';

SELECT pg_catalog.pg_extension_config_dump('audit.audit_chain_block', '');
SELECT pg_catalog.pg_extension_config_dump('audit.audit_chain_state', '');
SELECT pg_catalog.pg_extension_config_dump('audit.audit_integrity_log', '');
SELECT pg_catalog.pg_extension_config_dump('audit.audit_integrity_log_run_id_seq', '');

CREATE FUNCTION audit.seal() RETURNS TABLE (blocks integer, rows_sealed bigint, height bigint)
LANGUAGE C VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'audit_seal_sql';
COMMENT ON FUNCTION audit.seal() IS
  'Seal every committed, not yet sealed audit row whose transaction has finished; returns what was added';

CREATE FUNCTION audit.verify(
  from_time       timestamptz DEFAULT NULL,
  to_time         timestamptz DEFAULT NULL,
  organization_id text        DEFAULT NULL,
  since_last      boolean     DEFAULT false,
  max_problems    integer     DEFAULT 1000,
  progress_every  integer     DEFAULT 0
) RETURNS TABLE (block_height bigint, row_id bigint, field text, problem text, detail text)
LANGUAGE C VOLATILE
SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'audit_verify_sql';
COMMENT ON FUNCTION audit.verify(timestamptz, timestamptz, text, boolean, integer, integer) IS
  'Recompute every leaf, Merkle root and header link; one row per problem found (none: the log is intact)';

CREATE FUNCTION audit.verification_progress()
RETURNS TABLE (pid integer, started_at timestamptz, phase text, blocks_done bigint, blocks_total bigint,
               rows_done bigint, problems bigint)
LANGUAGE C VOLATILE
AS 'MODULE_PATHNAME', 'audit_verification_progress_sql';
CREATE VIEW audit.verification_in_progress AS SELECT * FROM audit.verification_progress();
COMMENT ON VIEW audit.verification_in_progress IS
  'audit.verify() runs in progress in this cluster (needs audit_db in shared_preload_libraries)';

-- The export format of one row: every field the leaf hash covers, in a form
-- that reproduces the hashed bytes exactly (docs/hash-format.md, "Export").
CREATE FUNCTION audit.export_row(r audit.audit_log) RETURNS jsonb
LANGUAGE sql STABLE STRICT PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
  SELECT jsonb_build_object(
    'type', 'row',
    'id', r.id,
    'transaction_id', r.transaction_id,
    'timestamp_us', ((extract(epoch FROM r."timestamp") * 1000000)::numeric)::bigint,
    'principal_id', r.principal_id,
    'organization_id', r.organization_id,
    'action', r.action,
    'target_resource_type', r.target_resource_type,
    'target_resource_id', r.target_resource_id,
    'status', r.status,
    'outcome_description', r.outcome_description,
    'event_version', r.event_version,
    'correlation_id', r.correlation_id,
    'data_classification', r.data_classification,
    'retention_policy', r.retention_policy,
    'processing_latency', r.processing_latency,
    'details', r.details::text,
    'personal_data_salt', encode(r.personal_data_salt, 'hex'),
    'personal_data_commitment', encode(r.personal_data_commitment, 'hex'),
    'hash', encode(r.hash, 'hex'))
$$;
COMMENT ON FUNCTION audit.export_row(audit.audit_log) IS
  'One audit row in the chain export format (JSON), enough to recompute its leaf hash offline';

CREATE FUNCTION audit.export_block(b audit.audit_chain_block) RETURNS jsonb
LANGUAGE sql STABLE STRICT PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
  SELECT jsonb_build_object(
    'type', 'block',
    'height', b.height,
    'kind', b.kind,
    'partition_from_us', ((extract(epoch FROM b.partition_from) * 1000000)::numeric)::bigint,
    'partition_to_us', ((extract(epoch FROM b.partition_to) * 1000000)::numeric)::bigint,
    'xid_from', b.xid_from,
    'xid_to', b.xid_to,
    'row_count', b.row_count,
    'rows_total', b.rows_total,
    'row_ids', to_jsonb(b.row_ids),
    'leaves', encode(b.leaves, 'hex'),
    'merkle_root', encode(b.merkle_root, 'hex'),
    'sealed_at_us', ((extract(epoch FROM b.sealed_at) * 1000000)::numeric)::bigint,
    'prev_hash', encode(b.prev_hash, 'hex'),
    'header_hash', encode(b.header_hash, 'hex'))
$$;
COMMENT ON FUNCTION audit.export_block(audit.audit_chain_block) IS
  'One chain block in the chain export format (JSON)';

-- audit.export_chain(): JSON lines for tools/audit_db_verify: every block in
-- height order, then every relocation (audit.audit_log_relocation, sealed rows
-- moved out of the default partition) in relocation_id order, then every
-- archive entry (audit.archive_storage) in archive_id order, each followed by
-- its rows as stored (type "archived_row"), then every row in id order.
-- PL/pgSQL, so that the body may name audit.audit_log_relocation,
-- audit.archive_storage and audit.archive_lines(), which 60_partition_manager.sql
-- and 67_archive.sql create later; its single query reads one snapshot (a
-- STABLE function takes no snapshot of its own). audit.archive_lines(id, false)
-- reads an entry without counting a retrieval. It reads through SPI of its
-- own (with a snapshot of its own under READ COMMITTED); an entry's data
-- never change, so it returns the rows of the entry the query sees, unless
-- the entry expired meanwhile: then the export fails ("no archive entry")
-- rather than leave it out, and is to be taken again (or in a REPEATABLE
-- READ transaction, where every snapshot is the transaction's).
CREATE FUNCTION audit.export_chain() RETURNS SETOF text
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  RETURN QUERY
  SELECT line FROM (
    SELECT 1 AS part, b.height AS k, 0::bigint AS sub, audit.export_block(b)::text AS line
    FROM audit.audit_chain_block b
    UNION ALL
    SELECT 2, m.relocation_id, 0, jsonb_build_object(
             'type', 'relocation',
             'relocation_id', m.relocation_id,
             'partition_from_us', ((extract(epoch FROM m.partition_from) * 1000000)::numeric)::bigint,
             'partition_to_us', ((extract(epoch FROM m.partition_to) * 1000000)::numeric)::bigint,
             'relocated_at_us', ((extract(epoch FROM m.relocated_at) * 1000000)::numeric)::bigint,
             'chain_height', m.chain_height,
             'row_ids', to_jsonb(m.row_ids))::text
    FROM audit.audit_log_relocation m
    UNION ALL
    SELECT 3, a.archive_id, 0, jsonb_build_object(
             'type', 'archive',
             'archive_id', a.archive_id,
             'block_height', a.block_height,
             'row_count', a.row_count,
             'merkle_root', encode(a.merkle_root, 'hex'),
             'retention_policy', a.retention_policy,
             'data_classification', a.data_classification)::text
    FROM audit.archive_storage a
    UNION ALL
    -- The stored document (audit.export_row format) with its type renamed
    -- and the entry it belongs to, in the order the entry holds the rows.
    SELECT 3, a.archive_id, l.n,
           (l.doc || jsonb_build_object('type', 'archived_row', 'archive_id', a.archive_id))::text
    FROM audit.archive_storage a
    CROSS JOIN LATERAL audit.archive_lines(a.archive_id, false) WITH ORDINALITY AS l(doc, n)
    UNION ALL
    SELECT 4, r.id, 0, audit.export_row(r)::text FROM audit.audit_log r
    UNION ALL
    -- What GDPR redactions attest for the personal fields of redacted rows
    -- (src/redaction.c); the requests' events, among the rows, seal the
    -- Merkle root of each request's digests.
    SELECT 5, d.request_id, d.audit_log_id, jsonb_build_object(
             'type', 'redaction',
             'request_id', d.request_id,
             'row_id', d.audit_log_id,
             'fields_digest', encode(d.fields_digest, 'hex'))::text
    FROM audit.redacted_row d
  ) lines
  ORDER BY part, k, sub;
END
$$;
COMMENT ON FUNCTION audit.export_chain() IS
  'The whole chain and log as JSON lines (blocks, relocations, archive entries with their rows, rows, then '
  'redaction attestations) '
  'for the offline verifier tools/audit_db_verify';

-- Format helpers (src/hashing.c): the header hash of a block from its fields,
-- and the RFC 6962 audit path of one leaf.
CREATE FUNCTION audit.block_header_hash(height bigint, kind text, partition_from timestamptz,
  partition_to timestamptz, xid_from bigint, xid_to bigint, row_count bigint, rows_total bigint,
  merkle_root bytea, sealed_at timestamptz, prev_hash bytea) RETURNS bytea
LANGUAGE C IMMUTABLE PARALLEL SAFE
AS 'MODULE_PATHNAME', 'audit_block_header_hash_sql';
COMMENT ON FUNCTION audit.block_header_hash(bigint, text, timestamptz, timestamptz, bigint, bigint, bigint, bigint, bytea, timestamptz, bytea) IS
  'SHA-256 header hash of a chain block from its fields (docs/hash-format.md, "Blocks")';

CREATE FUNCTION audit.merkle_path(leaves bytea, leaf_index integer) RETURNS bytea[]
LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE
AS 'MODULE_PATHNAME', 'audit_merkle_path_sql';
COMMENT ON FUNCTION audit.merkle_path(bytea, integer) IS
  'RFC 6962 audit path (lowest sibling first) of leaf leaf_index among concatenated 32-byte leaves';

-- A block's header alone, as proofs carry it.
CREATE FUNCTION audit.export_header(b audit.audit_chain_block) RETURNS jsonb
LANGUAGE sql STABLE STRICT PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT audit.export_block(b) - 'row_ids' - 'leaves' - 'type' $$;

CREATE FUNCTION audit.digest() RETURNS jsonb
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
  SELECT jsonb_build_object(
    'format', 'audit_db.digest.v1',
    'algorithm', 'SHA-256',
    'database', current_database(),
    'height', s.height,
    'header_hash', encode(s.head_hash, 'hex'),
    'rows_total', s.rows_total,
    'sealed_at', s.last_sealed_at,
    'created_at', statement_timestamp())
  FROM audit.audit_chain_state s
$$;
COMMENT ON FUNCTION audit.digest() IS
  'The chain head as a self-describing JSON document, to be kept outside the database';

CREATE FUNCTION audit.verify_digest(digest jsonb)
RETURNS TABLE (ok boolean, digest_height bigint, current_height bigint, detail text)
LANGUAGE plpgsql STABLE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  d_height bigint;
  d_hash   bytea;
  d_rows   bigint;
  cur      bigint;
  prev     bytea;
  expect   bigint;
  b        audit.audit_chain_block;
BEGIN
  IF digest->>'format' IS DISTINCT FROM 'audit_db.digest.v1' OR digest->>'algorithm' IS DISTINCT FROM 'SHA-256'
     OR jsonb_typeof(digest->'height') IS DISTINCT FROM 'number'
     OR digest->>'header_hash' !~ '^[0-9a-f]{64}$' THEN
    RAISE EXCEPTION 'not an audit_db digest'
      USING ERRCODE = 'invalid_parameter_value',
            HINT = 'Pass the JSON document audit.digest() returned, unchanged.';
  END IF;
  d_height := (digest->>'height')::bigint;
  d_hash := decode(digest->>'header_hash', 'hex');
  d_rows := (digest->>'rows_total')::bigint;
  SELECT s.height INTO cur FROM audit.audit_chain_state s;
  digest_height := d_height;
  current_height := cur;

  IF coalesce((SELECT max(height) FROM audit.audit_chain_block), 0) < d_height OR cur < d_height THEN
    ok := false;
    detail := format('the chain ends at height %s, before the digest''s height %s: blocks were removed',
                     coalesce((SELECT max(height) FROM audit.audit_chain_block), 0), d_height);
    RETURN NEXT; RETURN;
  END IF;

  IF d_height = 0 THEN
    prev := '\x0000000000000000000000000000000000000000000000000000000000000000'::bytea;
  ELSE
    SELECT * INTO b FROM audit.audit_chain_block WHERE height = d_height;
    IF b.header_hash IS DISTINCT FROM d_hash
       OR audit.block_header_hash(b.height, b.kind, b.partition_from, b.partition_to, b.xid_from, b.xid_to,
                                  b.row_count, b.rows_total, b.merkle_root, b.sealed_at, b.prev_hash) <> d_hash THEN
      ok := false;
      detail := format('block %s is not the block the digest names: the history up to it was rewritten', d_height);
      RETURN NEXT; RETURN;
    END IF;
    IF d_rows IS NOT NULL AND b.rows_total <> d_rows THEN
      ok := false;
      detail := format('block %s counts %s rows, the digest %s', d_height, b.rows_total, d_rows);
      RETURN NEXT; RETURN;
    END IF;
    prev := d_hash;
  END IF;

  expect := d_height + 1;
  FOR b IN SELECT * FROM audit.audit_chain_block WHERE height > d_height ORDER BY height LOOP
    IF b.height <> expect OR b.prev_hash <> prev
       OR audit.block_header_hash(b.height, b.kind, b.partition_from, b.partition_to, b.xid_from, b.xid_to,
                                  b.row_count, b.rows_total, b.merkle_root, b.sealed_at, b.prev_hash) <> b.header_hash THEN
      ok := false;
      detail := format('the chain breaks at block %s after the digest', expect);
      RETURN NEXT; RETURN;
    END IF;
    prev := b.header_hash;
    expect := expect + 1;
  END LOOP;

  IF expect - 1 <> cur THEN
    ok := false;
    detail := format('the chain state names height %s but the blocks end at %s', cur, expect - 1);
    RETURN NEXT; RETURN;
  END IF;
  ok := true;
  detail := format('the chain extends the digest by %s blocks', cur - d_height);
  RETURN NEXT;
END
$$;
COMMENT ON FUNCTION audit.verify_digest(jsonb) IS
  'Prove that the current chain extends the chain described by an earlier audit.digest()';

CREATE FUNCTION audit.prove(event_id bigint) RETURNS jsonb
LANGUAGE plpgsql STABLE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  r    audit.audit_log;
  b    audit.audit_chain_block;
  pos  integer;
  run_end bigint;
BEGIN
  SELECT * INTO r FROM audit.audit_log l WHERE l.id = event_id;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'no audit event with id %', event_id
      USING ERRCODE = 'no_data_found',
            HINT = 'The event may have been removed by retention, or the id is wrong.';
  END IF;
  SELECT min(xid_to) INTO run_end FROM audit.audit_chain_block WHERE kind = 'rows' AND xid_to > r.transaction_id;
  SELECT * INTO b FROM audit.audit_chain_block
   WHERE kind = 'rows' AND xid_to = run_end AND xid_from <= r.transaction_id AND event_id = ANY (row_ids)
   ORDER BY height LIMIT 1;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'audit event % is not sealed yet', event_id
      USING ERRCODE = 'object_not_in_prerequisite_state',
            HINT = 'Rows are sealed once their transaction and all older ones have ended; call audit.seal() or wait for the worker.';
  END IF;
  pos := array_position(b.row_ids, event_id) - 1;
  RETURN jsonb_build_object(
    'format', 'audit_db.proof.v1',
    'algorithm', 'SHA-256',
    'row', audit.export_row(r),
    'leaf_index', pos,
    'tree_size', b.row_count,
    'audit_path', (SELECT coalesce(jsonb_agg(encode(p, 'hex') ORDER BY o), '[]'::jsonb)
                     FROM unnest(audit.merkle_path(b.leaves, pos)) WITH ORDINALITY AS u(p, o)),
    'block', audit.export_header(b),
    'later_headers', (SELECT coalesce(jsonb_agg(audit.export_header(x) ORDER BY x.height), '[]'::jsonb)
                        FROM audit.audit_chain_block x WHERE x.height > b.height),
    'digest', audit.digest());
END
$$;
COMMENT ON FUNCTION audit.prove(bigint) IS
  'Inclusion proof of one sealed event: its fields, Merkle path, block header and header chain to a digest';

-- Status of sealing: how far the chain reaches and what holds it back.
CREATE FUNCTION audit.chain_status_row(
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
CREATE VIEW audit.chain_status AS SELECT * FROM audit.chain_status_row();
COMMENT ON VIEW audit.chain_status IS
  'Chain height and head, rows sealed and waiting, seal lag, and the oldest open transaction holding sealing back';

-- Wake the background launcher (when audit_db is preloaded) so this
-- database gets its sealing worker now rather than at the launcher's next scan.
CREATE FUNCTION audit.wake_launcher() RETURNS boolean
LANGUAGE C VOLATILE
AS 'MODULE_PATHNAME', 'audit_wake_launcher_sql';
COMMENT ON FUNCTION audit.wake_launcher() IS
  'Ask the audit_db launcher to start this database''s sealing worker now (false without the preload)';
