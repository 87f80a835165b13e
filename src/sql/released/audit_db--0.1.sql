-- audit_db 0.1 as released: frozen, never edited (CREATE EXTENSION audit_db VERSION '0.1',
-- then ALTER EXTENSION audit_db UPDATE). Later versions: src/sql/ and src/sql/upgrade/.
-- audit_db install script, generated from src/sql/*.sql (one file per concern,
-- concatenated in name order by the Makefile). Edit those files, not the result.

\echo Use "CREATE EXTENSION audit_db" to load this file. \quit
-- The extension's roles, all NOLOGIN (grant them to login roles):
--   audit_db_writer             may log events (INSERT, audit.log_event) and nothing else
--   audit_db_auditor            may read the audit trail and presets, verify, and write nothing
--   audit_db_tenant_admin       may manage organization roles and assignments (of its organization)
--   audit_db_privacy_officer    may pseudonymize, reverse pseudonyms, export and erase data
--                               subjects in every organization (src/sql/69_gdpr.sql)
--   audit_db_all_organizations  reads and writes every organization's rows (platform auditors,
--                               single-tenant deployments; a non-superuser owner of the
--                               extension's tables or audit_db.worker_role needs it too)
-- Their privileges are granted by 90_privileges.sql. The roles are
-- cluster-wide: created if missing. DROP EXTENSION leaves them (drop them by
-- hand once no database uses them).
DO $$
DECLARE
  r text;
BEGIN
  FOREACH r IN ARRAY ARRAY['audit_db_writer', 'audit_db_auditor', 'audit_db_tenant_admin',
                           'audit_db_all_organizations', 'audit_db_privacy_officer'] LOOP
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = r) THEN
      EXECUTE format('CREATE ROLE %I NOLOGIN', r);
    END IF;
  END LOOP;
END
$$;
-- Predicates of the enumerated values (src/vocabulary.c), used by the CHECK
-- constraints of the domains in 20_audit_log.sql.
CREATE FUNCTION audit.is_event_status(text) RETURNS boolean
LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE AS 'MODULE_PATHNAME', 'audit_is_event_status';
COMMENT ON FUNCTION audit.is_event_status(text) IS 'True for attempt, success and failure';
CREATE FUNCTION audit.is_data_classification(text) RETURNS boolean
LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE AS 'MODULE_PATHNAME', 'audit_is_data_classification';
COMMENT ON FUNCTION audit.is_data_classification(text) IS
  'True for PUBLIC, INTERNAL, CONFIDENTIAL, PHI and FINANCIAL';
CREATE FUNCTION audit.is_hash_algorithm(text) RETURNS boolean
LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE AS 'MODULE_PATHNAME', 'audit_is_hash_algorithm';
COMMENT ON FUNCTION audit.is_hash_algorithm(text) IS 'True for SHA-256, the algorithm of hash format v1';

-- Row functions implemented in C (src/row_stamping.c, src/immutability.c,
-- src/hashing.c). Trigger functions are not meant to be called directly.

CREATE FUNCTION audit.stamp_audit_row() RETURNS trigger
LANGUAGE C AS 'MODULE_PATHNAME', 'audit_stamp_row';
COMMENT ON FUNCTION audit.stamp_audit_row() IS
  'BEFORE INSERT trigger of audit.audit_log: validates the event and sets id, transaction_id, salt and SHA-256 leaf hash';

CREATE FUNCTION audit.refuse_audit_change() RETURNS trigger
LANGUAGE C AS 'MODULE_PATHNAME', 'audit_refuse_change';
COMMENT ON FUNCTION audit.refuse_audit_change() IS
  'BEFORE UPDATE/DELETE/TRUNCATE trigger of audit.audit_log: the log is append-only';
-- The audit log: one row per event, range-partitioned by month on "timestamp".

-- Enumerated values are domains whose CHECK calls the C predicates of
-- src/vocabulary.c (one list of values for SQL and C). A domain's check is
-- planned once per backend, where a table CHECK constraint is re-read and
-- re-planned by every single-row INSERT (measured: test/bench).
CREATE DOMAIN audit.event_status AS varchar(16)
  CONSTRAINT event_status_values CHECK (audit.is_event_status(VALUE));
COMMENT ON DOMAIN audit.event_status IS 'Outcome of an audit event: attempt, success or failure';
CREATE DOMAIN audit.data_classification AS varchar(20)
  CONSTRAINT data_classification_values CHECK (audit.is_data_classification(VALUE));
COMMENT ON DOMAIN audit.data_classification IS
  'Data classification: PUBLIC, INTERNAL, CONFIDENTIAL, PHI or FINANCIAL';
CREATE DOMAIN audit.hash_algorithm AS varchar(50)
  CONSTRAINT hash_algorithm_values CHECK (audit.is_hash_algorithm(VALUE));
COMMENT ON DOMAIN audit.hash_algorithm IS 'Hash algorithm of an audit row: SHA-256 (hash format v1)';
CREATE DOMAIN audit.duration_ms AS integer
  CONSTRAINT duration_ms_not_negative CHECK (VALUE >= 0);
COMMENT ON DOMAIN audit.duration_ms IS 'A duration in milliseconds, not negative';

CREATE SEQUENCE audit.audit_log_id_seq AS bigint;

CREATE TABLE audit.audit_log (
  -- Set by audit_db (the stamping trigger overwrites whatever the writer passes):
  id                       bigint       NOT NULL,
  -- The event:
  "timestamp"              timestamptz  NOT NULL DEFAULT now(),
  principal_id             varchar(255),
  organization_id          varchar(255),
  action                   varchar(255) NOT NULL,
  target_resource_type     varchar(255),
  target_resource_id       varchar(255),
  status                   audit.event_status NOT NULL,
  outcome_description      varchar(4000),
  hash                     bytea        NOT NULL,
  hash_algorithm           audit.hash_algorithm NOT NULL DEFAULT 'SHA-256',
  event_version            varchar(20)  NOT NULL DEFAULT '1.0',
  correlation_id           varchar(255),
  data_classification      audit.data_classification NOT NULL DEFAULT 'INTERNAL',
  retention_policy         varchar(50)  NOT NULL DEFAULT 'standard',
  processing_latency       audit.duration_ms,
  archived_at              timestamptz,
  details                  jsonb,
  -- What the hash chain needs (set by audit_db):
  transaction_id           bigint       NOT NULL,
  personal_data_salt       bytea,
  personal_data_commitment bytea
  -- No table CHECK constraints: the enumerated columns are domains (above),
  -- the event time range is enforced by the stamping trigger, and hash, salt
  -- and commitment are produced by it.
) PARTITION BY RANGE ("timestamp");

ALTER SEQUENCE audit.audit_log_id_seq OWNED BY audit.audit_log.id;

COMMENT ON TABLE audit.audit_log IS
  'Append-only audit events; each row carries a SHA-256 leaf hash (docs/hash-format.md)';
COMMENT ON COLUMN audit.audit_log.id IS 'Event id, from audit.audit_log_id_seq; assigned by audit_db';
COMMENT ON COLUMN audit.audit_log."timestamp" IS 'When the event happened (defaults to the transaction start)';
COMMENT ON COLUMN audit.audit_log.status IS 'attempt, success or failure';
COMMENT ON COLUMN audit.audit_log.hash IS 'SHA-256 leaf hash of the row (hash format v1); assigned by audit_db';
COMMENT ON COLUMN audit.audit_log.data_classification IS 'PUBLIC, INTERNAL, CONFIDENTIAL, PHI or FINANCIAL';
COMMENT ON COLUMN audit.audit_log.processing_latency IS 'Milliseconds the audited operation took; not negative';
COMMENT ON COLUMN audit.audit_log.transaction_id IS
  '64-bit id of the inserting top-level transaction (epoch << 32 | xid); orders rows for sealing';
COMMENT ON COLUMN audit.audit_log.personal_data_salt IS
  'Random salt of the commitment to the personal fields; destroyed when the row is redacted';
COMMENT ON COLUMN audit.audit_log.personal_data_commitment IS
  'Commitment to the personal fields, kept only for redacted rows (whose salt is gone)';

-- Access patterns: an organization's events over time; a principal's actions;
-- all events of one request or workflow.
CREATE INDEX audit_log_organization_time_idx ON audit.audit_log (organization_id, "timestamp");
CREATE INDEX audit_log_principal_action_idx ON audit.audit_log (principal_id, action);
CREATE INDEX audit_log_correlation_idx ON audit.audit_log (correlation_id);

CREATE TRIGGER audit_log_stamp
  BEFORE INSERT ON audit.audit_log
  FOR EACH ROW EXECUTE FUNCTION audit.stamp_audit_row();
CREATE TRIGGER audit_log_refuse_update
  BEFORE UPDATE ON audit.audit_log
  FOR EACH ROW EXECUTE FUNCTION audit.refuse_audit_change();
CREATE TRIGGER audit_log_refuse_delete
  BEFORE DELETE ON audit.audit_log
  FOR EACH ROW EXECUTE FUNCTION audit.refuse_audit_change();
CREATE TRIGGER audit_log_refuse_truncate
  BEFORE TRUNCATE ON audit.audit_log
  FOR EACH STATEMENT EXECUTE FUNCTION audit.refuse_audit_change();
-- ALWAYS: session_replication_role = replica must not switch them off.
ALTER TABLE audit.audit_log ENABLE ALWAYS TRIGGER audit_log_stamp;
ALTER TABLE audit.audit_log ENABLE ALWAYS TRIGGER audit_log_refuse_update;
ALTER TABLE audit.audit_log ENABLE ALWAYS TRIGGER audit_log_refuse_delete;
ALTER TABLE audit.audit_log ENABLE ALWAYS TRIGGER audit_log_refuse_truncate;

-- The default partition catches events outside every monthly partition.
CREATE TABLE audit.audit_log_default PARTITION OF audit.audit_log DEFAULT;
CREATE TRIGGER audit_log_refuse_truncate BEFORE TRUNCATE ON audit.audit_log_default
  FOR EACH STATEMENT EXECUTE FUNCTION audit.refuse_audit_change();
ALTER TABLE audit.audit_log_default ENABLE ALWAYS TRIGGER audit_log_refuse_truncate;

-- The monthly partitions are created by src/sql/60_partition_manager.sql.
-- Event presets: named templates of fixed values, defaults, required fields and
-- validation rules, applied by audit.log_event(preset => ...). See src/event_api.c.

CREATE TABLE audit.audit_preset (
  preset_id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  name                varchar(100) NOT NULL,
  organization_id     varchar(255),
  action              varchar(255),
  data_classification audit.data_classification,
  required_fields     text[]       NOT NULL DEFAULT '{}',
  default_values      jsonb        NOT NULL DEFAULT '{}',
  validation_rules    jsonb        NOT NULL DEFAULT '{}',
  description         text,
  created_at          timestamptz  NOT NULL DEFAULT now(),
  updated_at          timestamptz  NOT NULL DEFAULT now(),
  CONSTRAINT audit_preset_name_organization_key UNIQUE NULLS NOT DISTINCT (name, organization_id),
  CONSTRAINT audit_preset_name_check CHECK (name <> '')
);
COMMENT ON TABLE audit.audit_preset IS
  'Event templates for audit.log_event(preset => name): fixed values, defaults, required fields, rules';
COMMENT ON COLUMN audit.audit_preset.organization_id IS
  'NULL: a preset for every organization; else used only for events of that organization';
COMMENT ON COLUMN audit.audit_preset.required_fields IS
  'Fields (or details.<key>) an event must have after defaults';
COMMENT ON COLUMN audit.audit_preset.default_values IS
  'Field -> value for fields the event leaves NULL; "details" is merged under the event''s details';
COMMENT ON COLUMN audit.audit_preset.validation_rules IS
  'Field (or details.<key>) -> {"pattern", "min_length", "max_length", "enum", "min", "max"}';

CREATE FUNCTION audit.check_audit_preset() RETURNS trigger
LANGUAGE C AS 'MODULE_PATHNAME', 'audit_check_preset';

CREATE FUNCTION audit.touch_audit_preset() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  NEW.updated_at := now();
  RETURN NEW;
END
$$;

CREATE TRIGGER audit_preset_check
  BEFORE INSERT OR UPDATE ON audit.audit_preset
  FOR EACH ROW EXECUTE FUNCTION audit.check_audit_preset();
CREATE TRIGGER audit_preset_touch
  BEFORE UPDATE ON audit.audit_preset
  FOR EACH ROW EXECUTE FUNCTION audit.touch_audit_preset();

-- ALWAYS: presets written under session_replication_role = replica are checked too.
ALTER TABLE audit.audit_preset ENABLE ALWAYS TRIGGER audit_preset_check;

SELECT pg_catalog.pg_extension_config_dump('audit.audit_preset', '');
SELECT pg_catalog.pg_extension_config_dump('audit.audit_preset_preset_id_seq', '');
-- Writing events: audit.log_event() (src/event_api.c) and row-hash functions
-- (src/hashing.c).

CREATE FUNCTION audit.log_event(
  action               text        DEFAULT NULL,
  status               text        DEFAULT NULL,
  principal_id         text        DEFAULT NULL,
  organization_id      text        DEFAULT NULL,
  target_resource_type text        DEFAULT NULL,
  target_resource_id   text        DEFAULT NULL,
  outcome_description  text        DEFAULT NULL,
  correlation_id       text        DEFAULT NULL,
  data_classification  text        DEFAULT NULL,
  retention_policy     text        DEFAULT NULL,
  processing_latency   integer     DEFAULT NULL,
  details              jsonb       DEFAULT NULL,
  event_version        text        DEFAULT NULL,
  event_time           timestamptz DEFAULT NULL,
  preset               text        DEFAULT NULL
) RETURNS bigint
LANGUAGE C VOLATILE CALLED ON NULL INPUT
AS 'MODULE_PATHNAME', 'audit_log_event';
COMMENT ON FUNCTION audit.log_event(text, text, text, text, text, text, text, text, text, text, integer, jsonb, text, timestamptz, text) IS
  'Log one audit event (named arguments; NULL means default) and return its id';

CREATE FUNCTION audit.leaf_hash(audit.audit_log) RETURNS bytea
LANGUAGE C STABLE STRICT PARALLEL SAFE
AS 'MODULE_PATHNAME', 'audit_leaf_hash_sql';
COMMENT ON FUNCTION audit.leaf_hash(audit.audit_log) IS
  'Recompute a row''s SHA-256 leaf hash from its fields (hash format v1)';

CREATE FUNCTION audit.leaf_encoding(audit.audit_log) RETURNS bytea
LANGUAGE C STABLE STRICT PARALLEL SAFE
AS 'MODULE_PATHNAME', 'audit_leaf_encoding_sql';
COMMENT ON FUNCTION audit.leaf_encoding(audit.audit_log) IS
  'The exact bytes hashed into a row''s leaf (hash format v1)';

CREATE FUNCTION audit.commitment_encoding(audit.audit_log) RETURNS bytea
LANGUAGE C STABLE STRICT PARALLEL SAFE
AS 'MODULE_PATHNAME', 'audit_commitment_encoding_sql';
COMMENT ON FUNCTION audit.commitment_encoding(audit.audit_log) IS
  'The exact bytes hashed into a row''s personal-data commitment; NULL once redacted';

CREATE FUNCTION audit.last_event_id() RETURNS bigint
LANGUAGE C VOLATILE
AS 'MODULE_PATHNAME', 'audit_last_event_id';
COMMENT ON FUNCTION audit.last_event_id() IS
  'Id of the last audit event this session wrote (like lastval()), NULL before the first';

CREATE FUNCTION audit.merkle_root(leaves bytea[]) RETURNS bytea
LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE
AS 'MODULE_PATHNAME', 'audit_merkle_root_sql';
COMMENT ON FUNCTION audit.merkle_root(bytea[]) IS
  'RFC 6962 Merkle tree root over 32-byte leaf hashes, in array order';
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
  last_sealed_at timestamptz
);
INSERT INTO audit.audit_chain_state DEFAULT VALUES;
COMMENT ON TABLE audit.audit_chain_state IS
  'Head of the audit chain and the transaction-id horizon below which every committed row is sealed';

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
AS $$
  WITH st AS (SELECT * FROM audit.audit_chain_state),
  snap AS (SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint AS xmin),
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
-- Partition management and maintenance (src/partition_manager.c,
-- src/maintenance.c): monthly partitions of audit.audit_log created ahead,
-- the default partition drained into them, and the record of maintenance runs.

-- Sealed rows moved out of the default partition into their month's
-- partition. Their blocks still name the default partition; audit.verify()
-- looks for them here. Written only by the partition manager.
CREATE TABLE audit.audit_log_relocation (
  relocation_id  bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  relocated_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
  -- Height of the chain when the rows moved: blocks above it came later
  -- (a partition dropped by retention after the move took these rows along).
  chain_height   bigint      NOT NULL CHECK (chain_height >= 0),
  partition_from timestamptz NOT NULL,
  partition_to   timestamptz NOT NULL CHECK (partition_to > partition_from),
  row_count      integer     NOT NULL CHECK (row_count > 0),
  row_ids        bigint[]    NOT NULL,
  -- Range of the rows' transaction ids: finds them through the BRIN index.
  transaction_id_min bigint  NOT NULL,
  transaction_id_max bigint  NOT NULL
);
COMMENT ON TABLE audit.audit_log_relocation IS
  'Sealed audit rows moved from the default partition into their month''s partition (for audit.verify)';
-- Append-only: guards in src/sql/70_append_only.sql.
SELECT pg_catalog.pg_extension_config_dump('audit.audit_log_relocation', '');
SELECT pg_catalog.pg_extension_config_dump('audit.audit_log_relocation_relocation_id_seq', '');

CREATE FUNCTION audit.create_month_partition(
  at             timestamptz,
  OUT partition  regclass,
  OUT range_from timestamptz,
  OUT range_to   timestamptz,
  OUT created    boolean,
  OUT rows_moved bigint)
LANGUAGE C VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'audit_create_month_partition_sql';
COMMENT ON FUNCTION audit.create_month_partition(timestamptz) IS
  'The partition of the UTC month holding "at": created if missing (attached, never blocking other months), '
  'with that month''s rows moved out of the default partition';

CREATE FUNCTION audit.ensure_month_partition(at timestamptz) RETURNS regclass
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT partition FROM audit.create_month_partition(at) $$;
COMMENT ON FUNCTION audit.ensure_month_partition(timestamptz) IS
  'Create (if missing) and return the monthly partition of audit.audit_log holding the given time';

CREATE FUNCTION audit.create_partitions(
  months_ahead integer     DEFAULT NULL,
  from_time    timestamptz DEFAULT now())
RETURNS TABLE (partition regclass, range_from timestamptz, range_to timestamptz, created boolean,
               rows_moved bigint)
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  months integer := coalesce(months_ahead, current_setting('audit_db.premake_months')::integer);
  at     timestamptz := from_time;
BEGIN
  IF from_time IS NULL OR NOT isfinite(from_time) THEN
    RAISE EXCEPTION 'create_partitions needs a finite from_time, got %', coalesce(from_time::text, 'NULL')
      USING ERRCODE = 'invalid_parameter_value', HINT = 'Leave it out for now().';
  END IF;
  IF months < 0 OR months > 120 THEN
    RAISE EXCEPTION 'months_ahead must be between 0 and 120, got %', months
      USING ERRCODE = 'invalid_parameter_value',
            HINT = 'Partitions further ahead are created by later maintenance runs.';
  END IF;
  FOR i IN 0..months LOOP
    SELECT * INTO partition, range_from, range_to, created, rows_moved FROM audit.create_month_partition(at);
    RETURN NEXT;
    at := range_to;
  END LOOP;
END
$$;
COMMENT ON FUNCTION audit.create_partitions(integer, timestamptz) IS
  'Create the monthly partitions of audit.audit_log from the month of from_time to months_ahead months later '
  '(default audit_db.premake_months); one row per month';

CREATE FUNCTION audit.partition_bounds()
RETURNS TABLE (partition regclass, range_from timestamptz, range_to timestamptz, is_default boolean)
LANGUAGE C STABLE
SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'audit_partition_bounds_sql';
COMMENT ON FUNCTION audit.partition_bounds() IS
  'Every partition of audit.audit_log with the bounds of its relpartbound, in order';

-- The view audit.partitions (bounds, size, sealed state, retention verdict)
-- is in 65_retention.sql.

CREATE TABLE audit.maintenance_run (
  run_id      bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  started_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
  finished_at timestamptz,
  run_by      name        NOT NULL DEFAULT session_user,
  via         text        NOT NULL CHECK (via IN ('worker', 'call')),
  as_of       timestamptz NOT NULL,
  -- 'interrupted': the run never finished (the server or the worker stopped).
  status      text        NOT NULL CHECK (status IN ('running', 'done', 'errors', 'interrupted')),
  actions     jsonb,
  errors      text[]
);
COMMENT ON TABLE audit.maintenance_run IS
  'One row per audit_db maintenance run: when, by whom, what it did (actions) and what failed (errors)';
SELECT pg_catalog.pg_extension_config_dump('audit.maintenance_run', '');
SELECT pg_catalog.pg_extension_config_dump('audit.maintenance_run_run_id_seq', '');

CREATE PROCEDURE audit.run_maintenance(as_of timestamptz DEFAULT NULL)
LANGUAGE C
AS 'MODULE_PATHNAME', 'audit_run_maintenance_sql';
COMMENT ON PROCEDURE audit.run_maintenance(timestamptz) IS
  'One maintenance run (premake partitions, drain the default partition, catch up sealing) as of as_of '
  '(default now); commits step by step when CALLed outside a transaction block';

-- The current month and audit_db.premake_months months ahead exist from the start.
SELECT count(*) FROM audit.create_partitions();
-- Retention (src/retention.c, the "retention" steps of maintenance): rows are
-- kept as long as the policy they name says, then removed, and every removal
-- is sealed into the chain so that audit.verify() can tell rows retained away
-- from rows gone missing.
--
-- A row follows the policy named by its retention_policy column; a policy
-- row for the row's data_classification wins over the policy's row for every
-- classification (data_classification NULL). A row whose policy has no
-- active row is never removed. A row is removed once its "timestamp" lies
-- before the day (UTC) that is delete_after_days (default: retention_days)
-- before the maintenance run's as_of. Partitions whose rows have all expired
-- are dropped whole (metadata only); in a partition that still holds younger
-- rows or rows of longer policies, only the expired rows are deleted.

CREATE TABLE audit.audit_retention_policy (
  policy_name         varchar(50) NOT NULL CHECK (policy_name <> ''),
  -- NULL: every classification without a row of its own under this name.
  data_classification audit.data_classification,
  -- Rows are kept at least this many days ...
  retention_days      integer     NOT NULL CHECK (retention_days BETWEEN 1 AND 365000),
  -- ... archived into audit.archive_storage after this many (NULL: never) ...
  archive_after_days  integer     CHECK (archive_after_days >= 0),
  -- ... and removed after this many (NULL: after retention_days).
  delete_after_days   integer,
  active              boolean     NOT NULL DEFAULT true,
  description         text,
  created_at          timestamptz NOT NULL DEFAULT now(),
  CONSTRAINT delete_not_before_retention
    CHECK (delete_after_days IS NULL OR delete_after_days BETWEEN retention_days AND 365000),
  CONSTRAINT archive_before_delete
    CHECK (archive_after_days IS NULL OR archive_after_days < coalesce(delete_after_days, retention_days))
);
CREATE UNIQUE INDEX audit_retention_policy_key
  ON audit.audit_retention_policy (policy_name, (coalesce(data_classification::text, '')));
COMMENT ON TABLE audit.audit_retention_policy IS
  'How long audit rows are kept, by their retention_policy (and optionally data_classification); '
  'no active policy: kept for ever';
SELECT pg_catalog.pg_extension_config_dump('audit.audit_retention_policy', '');

-- What each partition holds, per (retention_policy, data_classification):
-- counted from the partition's sealed rows once, when the partition first
-- may hold expired rows; afterwards only the rows sealed since are added (a
-- transaction-id range scan through the BRIN index), and retention subtracts
-- what it removes. Planning retention reads only this (metadata).
CREATE TABLE audit.retention_summary (
  partition_oid     oid         PRIMARY KEY,
  range_from        timestamptz NOT NULL,
  range_to          timestamptz NOT NULL,
  -- Chain height and sealed horizon when summarised: every row sealed up to
  -- that height (every committed row below that transaction id) is counted.
  summarized_height bigint      NOT NULL,
  summarized_xid    bigint      NOT NULL,
  summarized_at     timestamptz NOT NULL DEFAULT clock_timestamp(),
  -- [{"retention_policy", "data_classification", "rows", "min", "max"}]
  groups            jsonb       NOT NULL
);
COMMENT ON TABLE audit.retention_summary IS
  'Per partition of audit.audit_log: sealed rows per retention policy and classification, with their time span '
  '(a cache for planning retention; rebuilt when stale)';

-- The policy that governs a (retention_policy, data_classification) group,
-- as of one maintenance run: its delete days, archive days and the cutoff
-- (rows before it have expired).
CREATE FUNCTION audit.retention_plan(as_of timestamptz DEFAULT now())
RETURNS TABLE (partition regclass, range_from timestamptz, range_to timestamptz,
               retention_policy text, data_classification text, policy_classification text,
               delete_after_days integer, cutoff timestamptz, archive_after_days integer,
               archive_cutoff timestamptz, row_count bigint,
               min_timestamp timestamptz, max_timestamp timestamptz, action text)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
-- Days are whole UTC days, whatever the session's TimeZone (daylight saving
-- would otherwise move a cutoff by an hour).
SET TimeZone = 'UTC'
AS $$
  WITH pol AS (
    SELECT p.policy_name, p.data_classification::text AS classification,
           coalesce(p.delete_after_days, p.retention_days) AS days, p.archive_after_days AS adays
    FROM audit.audit_retention_policy p WHERE p.active),
  day AS (SELECT date_trunc('day', as_of, 'UTC') AS d),
  -- Partitions that may hold an expired (or archivable) row: they start
  -- before the earliest cutoff of any active policy.
  -- A partition is dropped only when it lies wholly before that earliest
  -- cutoff, so the current and premade months are never dropped (premake
  -- would only create them again).
  cand AS (
    SELECT b.partition, b.range_from, b.range_to,
           b.range_to <= day.d - make_interval(days => (SELECT min(least(days, adays)) FROM pol)) AS droppable
    FROM audit.partition_bounds() b, day
    WHERE NOT b.is_default AND b.range_from IS NOT NULL AND b.range_to IS NOT NULL
      AND b.range_from < day.d - make_interval(days => (SELECT min(least(days, adays)) FROM pol))),
  fresh AS (
    SELECT c.*, s.groups,
           s.partition_oid IS NOT NULL AND NOT EXISTS (
             SELECT FROM audit.audit_chain_block k
             WHERE k.partition_from = c.range_from AND k.partition_to = c.range_to
               AND k.height > s.summarized_height AND k.kind = 'rows') AS summarized
    FROM cand c LEFT JOIN audit.retention_summary s ON s.partition_oid = c.partition::oid),
  grp AS (
    SELECT f.partition, f.range_from, f.range_to, f.droppable, g.*,
           m.days, m.adays, m.classification AS policy_classification
    FROM fresh f
    CROSS JOIN jsonb_to_recordset(f.groups) AS g(retention_policy text, data_classification text, "rows" bigint,
                                                 "min" timestamptz, "max" timestamptz)
    LEFT JOIN LATERAL (
      SELECT pl.days, pl.adays, pl.classification FROM pol pl
      WHERE pl.policy_name = g.retention_policy
        AND (pl.classification = g.data_classification OR pl.classification IS NULL)
      ORDER BY pl.classification IS NULL LIMIT 1) m ON true
    WHERE f.summarized),
  judged AS (
    SELECT grp.*, day.d - make_interval(days => grp.days) AS cut,
           day.d - make_interval(days => grp.adays) AS acut
    FROM grp, day),
  verdict AS (
    SELECT j.partition, bool_and(j.droppable AND j.days IS NOT NULL AND j."max" < j.cut) AS all_expired
    FROM judged j GROUP BY j.partition)
  SELECT j.partition, j.range_from, j.range_to, j.retention_policy, j.data_classification,
         j.policy_classification, j.days, j.cut, j.adays, j.acut, j."rows", j."min", j."max",
         CASE WHEN v.all_expired THEN 'drop'
              WHEN j.days IS NULL THEN 'keep'
              WHEN j."min" < j.cut AND j.acut > j.cut AND j."max" >= j.cut THEN 'archive+delete'
              WHEN j."min" < j.cut THEN 'delete'
              WHEN j."min" < j.acut THEN 'archive'
              ELSE 'keep' END
  FROM judged j JOIN verdict v USING (partition)
  UNION ALL
  -- Candidates with no (or a stale) summary: to be summarised first.
  SELECT f.partition, f.range_from, f.range_to, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
         'summarize'
  FROM fresh f WHERE NOT f.summarized
  UNION ALL
  -- Summarised partitions without a sealed row: nothing to keep.
  SELECT f.partition, f.range_from, f.range_to, NULL, NULL, NULL, NULL, NULL, NULL, NULL, 0, NULL, NULL, 'drop'
  FROM fresh f WHERE f.summarized AND f.droppable AND jsonb_array_length(f.groups) = 0
  ORDER BY 2, 4, 5
$$;
COMMENT ON FUNCTION audit.retention_plan(timestamptz) IS
  'What retention would do as of a time: per partition and (policy, classification) group, keep / '
  'delete (rows before cutoff) / archive (rows from cutoff to archive_cutoff move to audit.archive_storage) / '
  'archive+delete / drop (every row expired) / summarize (summary missing or stale)';

-- Summarise one partition's sealed rows (called by maintenance): the first
-- time all of them, later only those sealed since, merged in.
CREATE FUNCTION audit.refresh_retention_summary(part regclass) RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  b record;
  h bigint;
  horizon bigint;
  since bigint := 0;
  prior jsonb := '[]';
  g jsonb;
BEGIN
  SELECT * INTO b FROM audit.partition_bounds() pb WHERE pb.partition = part AND NOT pb.is_default;
  IF NOT FOUND OR b.range_from IS NULL OR b.range_to IS NULL THEN
    RAISE EXCEPTION '% is not a monthly partition of audit.audit_log', part
      USING ERRCODE = 'invalid_parameter_value', HINT = 'See audit.partitions.';
  END IF;
  SELECT s.height, s.horizon_xid INTO h, horizon FROM audit.audit_chain_state s;
  SELECT s.summarized_xid, s.groups INTO since, prior FROM audit.retention_summary s WHERE s.partition_oid = part;
  IF NOT FOUND THEN
    since := 0;
    prior := '[]';
  END IF;
  -- Rows of transactions in [since, horizon): sealed since the last count.
  EXECUTE format('SELECT coalesce(jsonb_agg(jsonb_build_object(''retention_policy'', retention_policy,'
                 ' ''data_classification'', data_classification, ''rows'', n, ''min'', lo, ''max'', hi)), ''[]'')'
                 ' FROM (SELECT retention_policy, data_classification::text AS data_classification,'
                 ' count(*) AS n, min("timestamp") AS lo, max("timestamp") AS hi'
                 ' FROM ONLY %s WHERE transaction_id >= $2 AND transaction_id < $1 GROUP BY 1, 2) g', part)
    INTO g USING horizon, since;
  SELECT coalesce(jsonb_agg(jsonb_build_object('retention_policy', x.p, 'data_classification', x.c,
                                               'rows', x.n, 'min', x.lo, 'max', x.hi) ORDER BY x.p, x.c), '[]')
    INTO g
  FROM (SELECT r.retention_policy AS p, r.data_classification AS c, sum(r."rows") AS n,
               min(r."min") AS lo, max(r."max") AS hi
        FROM jsonb_to_recordset(prior || g) AS r(retention_policy text, data_classification text, "rows" bigint,
                                                "min" timestamptz, "max" timestamptz)
        GROUP BY 1, 2) x;
  INSERT INTO audit.retention_summary AS s (partition_oid, range_from, range_to, summarized_height,
                                            summarized_xid, groups)
  VALUES (part, b.range_from, b.range_to, h, horizon, g)
  ON CONFLICT (partition_oid) DO UPDATE
    SET range_from = excluded.range_from, range_to = excluded.range_to,
        summarized_height = excluded.summarized_height, summarized_xid = excluded.summarized_xid,
        summarized_at = clock_timestamp(), groups = excluded.groups;
  -- Summaries of partitions that are gone.
  DELETE FROM audit.retention_summary s
  WHERE NOT EXISTS (SELECT FROM audit.partition_bounds() pb WHERE pb.partition::oid = s.partition_oid);
END
$$;
COMMENT ON FUNCTION audit.refresh_retention_summary(regclass) IS
  'Count one partition''s sealed rows per retention policy and classification into audit.retention_summary '
  '(all of them the first time, then only those sealed since)';

-- Retention removed `removed` rows of one group of a partition, keeping none
-- older than kept_from: subtract them from the summary (called by maintenance).
CREATE FUNCTION audit.retention_summary_removed(part regclass, policy text, classification text,
                                                removed bigint, kept_from timestamptz) RETURNS void
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
  UPDATE audit.retention_summary s SET groups = (
    SELECT coalesce(jsonb_agg(jsonb_build_object('retention_policy', x.retention_policy,
                                                 'data_classification', x.data_classification,
                                                 'rows', x.n, 'min', x.lo, 'max', x."max")
                              ORDER BY x.retention_policy, x.data_classification), '[]')
    FROM (SELECT r.retention_policy, r.data_classification, r."max",
                 CASE WHEN r.retention_policy = policy AND r.data_classification = classification
                      THEN r."rows" - removed ELSE r."rows" END AS n,
                 CASE WHEN r.retention_policy = policy AND r.data_classification = classification
                      THEN greatest(r."min", kept_from) ELSE r."min" END AS lo
          FROM jsonb_to_recordset(s.groups) AS r(retention_policy text, data_classification text, "rows" bigint,
                                                 "min" timestamptz, "max" timestamptz)) x
    WHERE x.n > 0)
  WHERE s.partition_oid = part
$$;
COMMENT ON FUNCTION audit.retention_summary_removed(regclass, text, text, bigint, timestamptz) IS
  'Subtract rows retention removed from one (policy, classification) group of a partition''s summary';

CREATE VIEW audit.partitions AS
SELECT b.partition,
       b.range_from,
       b.range_to,
       b.is_default,
       CASE WHEN c.reltuples >= 0 THEN c.reltuples::bigint END AS estimated_rows,
       pg_catalog.pg_total_relation_size(b.partition) AS total_bytes,
       coalesce(s.blocks, 0) AS sealed_blocks,
       coalesce(s.rows_sealed, 0) AS sealed_rows,
       s.last_sealed_at,
       CASE WHEN b.is_default THEN NULL ELSE coalesce(v.verdict, 'keep') END AS retention_verdict
FROM audit.partition_bounds() b
JOIN pg_catalog.pg_class c ON c.oid = b.partition
LEFT JOIN (
  SELECT p.partition,
         CASE WHEN bool_or(p.action = 'summarize') THEN 'not summarized yet'
              WHEN bool_or(p.action = 'drop') THEN 'drop: every row expired'
              WHEN bool_or(p.action = 'archive+delete') THEN 'archive and delete rows'
              WHEN bool_or(p.action = 'delete') THEN 'delete expired rows'
              WHEN bool_or(p.action = 'archive') THEN 'archive rows'
              ELSE 'keep' END AS verdict
  FROM audit.retention_plan(now()) p GROUP BY p.partition
) v ON v.partition = b.partition
LEFT JOIN LATERAL (
  SELECT count(*) AS blocks, sum(k.row_count) AS rows_sealed, max(k.sealed_at) AS last_sealed_at
  FROM audit.audit_chain_block k
  WHERE k.kind = 'rows'
    AND k.partition_from IS NOT DISTINCT FROM b.range_from
    AND k.partition_to IS NOT DISTINCT FROM b.range_to
) s ON true;
COMMENT ON VIEW audit.partitions IS
  'Partitions of audit.audit_log: real bounds, estimated rows, size, what of them is sealed, and what '
  'retention would do with them now';
-- Archival (src/archive.c): rows whose policy says archive_after_days leave
-- the log for audit.archive_storage once that age is reached, compressed
-- with PostgreSQL's pglz, and stay there until delete_after_days. Each move
-- is sealed as an "archive_rows" block (ids and leaves of the rows moved),
-- each expiry from the archive as a "retention_archive" block, so
-- audit.verify() checks archived rows against the chain (they recompute to
-- the sealed leaves) and tells an expired archive from a missing one.

CREATE TABLE audit.archive_storage (
  archive_id          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  -- The archive_rows block that sealed the move (same ids, leaves, root).
  block_height        bigint      NOT NULL UNIQUE,
  partition_from      timestamptz NOT NULL,
  partition_to        timestamptz NOT NULL,
  retention_policy    varchar(50) NOT NULL,
  data_classification varchar(20) NOT NULL,
  row_count           integer     NOT NULL CHECK (row_count > 0),
  first_id            bigint      NOT NULL,
  last_id             bigint      NOT NULL,
  min_timestamp       timestamptz NOT NULL,
  max_timestamp       timestamptz NOT NULL,
  -- RFC 6962 root of the rows' leaf hashes in id order.
  merkle_root         bytea       NOT NULL,
  -- The rows as JSON lines in id order, each audit.export_row(row)
  -- (docs/hash-format.md, "Export"), compressed.
  format              text        NOT NULL DEFAULT 'audit_db.archive.v1' CHECK (format = 'audit_db.archive.v1'),
  compression         text        NOT NULL CHECK (compression IN ('pglz', 'none')),
  raw_bytes           bigint      NOT NULL,
  data                bytea       NOT NULL,
  archived_at         timestamptz NOT NULL DEFAULT clock_timestamp(),
  retrieval_count     bigint      NOT NULL DEFAULT 0,
  last_retrieved_at   timestamptz
);
-- Compressed already: stored out of line as it is.
ALTER TABLE audit.archive_storage ALTER COLUMN data SET STORAGE EXTERNAL;
CREATE INDEX archive_storage_expiry_idx ON audit.archive_storage (retention_policy, data_classification, max_timestamp);
COMMENT ON TABLE audit.archive_storage IS
  'Audit rows moved out of audit.audit_log by retention (archive_after_days), compressed, until they expire';
SELECT pg_catalog.pg_extension_config_dump('audit.archive_storage', '');
SELECT pg_catalog.pg_extension_config_dump('audit.archive_storage_archive_id_seq', '');

-- Archive jobs that failed, with the reason (retried by later maintenance runs).
CREATE TABLE audit.archive_dlq_event (
  dlq_id              bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  failed_at           timestamptz NOT NULL DEFAULT clock_timestamp(),
  maintenance_run_id  bigint,
  partition           text        NOT NULL,
  retention_policy    text,
  data_classification text,
  archive_cutoff      timestamptz,
  sqlstate            text,
  reason              text        NOT NULL
);
COMMENT ON TABLE audit.archive_dlq_event IS
  'Archive jobs of maintenance that failed, and why; the next maintenance run tries again';
SELECT pg_catalog.pg_extension_config_dump('audit.archive_dlq_event', '');
SELECT pg_catalog.pg_extension_config_dump('audit.archive_dlq_event_dlq_id_seq', '');

-- The archived rows of one entry, as the JSON lines they were stored as
-- (count_retrieval: count this as a retrieval).
CREATE FUNCTION audit.archive_lines(archive_id bigint, count_retrieval boolean DEFAULT true)
RETURNS SETOF jsonb
LANGUAGE C VOLATILE STRICT
SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'audit_archive_lines_sql';
COMMENT ON FUNCTION audit.archive_lines(bigint, boolean) IS
  'The rows of one archive entry as stored: one JSON document (audit.export_row format) per row, in id order';

-- One row of the export format back as an audit.audit_log row; archived_at
-- says when it was archived.
CREATE FUNCTION audit.row_from_export(r jsonb, archived_at timestamptz DEFAULT NULL) RETURNS audit.audit_log
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
  SELECT ROW((r->>'id')::bigint,
             timestamptz 'epoch' + ((r->>'timestamp_us') || ' microseconds')::interval,
             r->>'principal_id', r->>'organization_id', r->>'action', r->>'target_resource_type',
             r->>'target_resource_id', r->>'status', r->>'outcome_description',
             decode(r->>'hash', 'hex'), 'SHA-256', r->>'event_version', r->>'correlation_id',
             r->>'data_classification', r->>'retention_policy', (r->>'processing_latency')::integer,
             archived_at, (r->>'details')::jsonb, (r->>'transaction_id')::bigint,
             decode(r->>'personal_data_salt', 'hex'), decode(r->>'personal_data_commitment', 'hex'))::audit.audit_log
$$;
COMMENT ON FUNCTION audit.row_from_export(jsonb, timestamptz) IS
  'An audit row from its export format (audit.export_row), e.g. to read archived rows';

CREATE FUNCTION audit.archive_restore(archive_id bigint) RETURNS SETOF audit.audit_log
LANGUAGE sql VOLATILE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
  SELECT audit.row_from_export(l, (SELECT a.archived_at FROM audit.archive_storage a
                                   WHERE a.archive_id = archive_restore.archive_id))
  FROM audit.archive_lines(archive_restore.archive_id, true) l
$$;
COMMENT ON FUNCTION audit.archive_restore(bigint) IS
  'The archived rows of one archive entry, as audit.audit_log rows (archived_at set); counts a retrieval';

-- What expires from the archive as of a time (the same policy rules as for
-- rows in the log: delete_after_days of the entry's policy and classification).
CREATE FUNCTION audit.archive_plan(as_of timestamptz DEFAULT now())
RETURNS TABLE (archive_id bigint, retention_policy text, data_classification text,
               cutoff timestamptz, max_timestamp timestamptz, action text)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
-- Days are whole UTC days, whatever the session's TimeZone (daylight saving
-- would otherwise move a cutoff by an hour).
SET TimeZone = 'UTC'
AS $$
  SELECT a.archive_id, a.retention_policy, a.data_classification,
         date_trunc('day', as_of, 'UTC') - make_interval(days => m.days) AS cutoff, a.max_timestamp,
         CASE WHEN a.max_timestamp < date_trunc('day', as_of, 'UTC') - make_interval(days => m.days)
              THEN 'expire' ELSE 'keep' END
  FROM audit.archive_storage a
  LEFT JOIN LATERAL (
    SELECT coalesce(p.delete_after_days, p.retention_days) AS days
    FROM audit.audit_retention_policy p
    WHERE p.active AND p.policy_name = a.retention_policy
      AND (p.data_classification::text = a.data_classification OR p.data_classification IS NULL)
    ORDER BY p.data_classification IS NULL LIMIT 1) m ON true
  ORDER BY a.archive_id
$$;
COMMENT ON FUNCTION audit.archive_plan(timestamptz) IS
  'Per archive entry: the cutoff of its policy and whether it expires (removed for good) as of a time';

-- Append-only but for the retrieval counters (set by audit.archive_lines):
-- guards in src/sql/70_append_only.sql.
-- GDPR: pseudonyms of data subjects, reverse lookup, subject export and
-- erasure that keep the chain verifiable (src/pseudonyms.c,
-- src/redaction.c; docs/gdpr.md).
--
-- Who: members of audit_db_privacy_officer (and superusers) in every
-- organization; otherwise a session acting for an organization whose
-- organization roles grant resource 'gdpr', action 'pseudonymize',
-- 'reverse_lookup', 'export' or 'erase', in that organization only.
-- Every request is recorded in audit.audit_log under a reserved 'gdpr.'
-- action (kept under retention policy 'gdpr_record').

-- Internal C helpers (only the extension's owner may call them) ---------------

CREATE FUNCTION audit.gdpr_authorize(operation text) RETURNS text
LANGUAGE C VOLATILE
AS 'MODULE_PATHNAME', 'audit_gdpr_authorize_sql';
COMMENT ON FUNCTION audit.gdpr_authorize(text) IS
  'Where the calling session may run a GDPR operation: ''*'' (every organization) or its organization; 42501 otherwise';

CREATE FUNCTION audit.gdpr_hmac(key bytea, domain text, scope text, value text) RETURNS bytea
LANGUAGE C IMMUTABLE STRICT
AS 'MODULE_PATHNAME', 'audit_gdpr_hmac_sql';
COMMENT ON FUNCTION audit.gdpr_hmac(bytea, text, text, text) IS
  'HMAC-SHA-256 under a 32-byte key of the length-prefixed fields domain, scope, value';

CREATE FUNCTION audit.gdpr_encrypt(key bytea, plaintext text) RETURNS bytea
LANGUAGE C VOLATILE STRICT
AS 'MODULE_PATHNAME', 'audit_gdpr_encrypt_sql';
COMMENT ON FUNCTION audit.gdpr_encrypt(bytea, text) IS
  'AES-256-GCM with a random nonce: 0x01 || nonce || ciphertext || tag';

CREATE FUNCTION audit.gdpr_decrypt(key bytea, ciphertext bytea) RETURNS text
LANGUAGE C IMMUTABLE STRICT
AS 'MODULE_PATHNAME', 'audit_gdpr_decrypt_sql';
COMMENT ON FUNCTION audit.gdpr_decrypt(bytea, bytea) IS
  'Plaintext of audit.gdpr_encrypt(); 22023 when the key is wrong or the ciphertext altered';

CREATE FUNCTION audit.gdpr_encryption_key(passphrase text) RETURNS bytea
LANGUAGE C STABLE
AS 'MODULE_PATHNAME', 'audit_gdpr_encryption_key_sql';
COMMENT ON FUNCTION audit.gdpr_encryption_key(text) IS
  'AES key of the encryption strategy: PBKDF2-HMAC-SHA-256 of the passphrase (NULL: audit_db.pseudonym_encryption_key)';

CREATE FUNCTION audit.gdpr_random_bytes(n integer) RETURNS bytea
LANGUAGE C VOLATILE STRICT
AS 'MODULE_PATHNAME', 'audit_gdpr_random_bytes_sql';
COMMENT ON FUNCTION audit.gdpr_random_bytes(integer) IS 'n bytes from the server''s strong random source';

CREATE FUNCTION audit.mentions_subject(r audit.audit_log, terms text[]) RETURNS boolean
LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE
AS 'MODULE_PATHNAME', 'audit_mentions_subject_sql';
COMMENT ON FUNCTION audit.mentions_subject(audit.audit_log, text[]) IS
  'Whether one of the identifiers occurs as a whole token in the row''s principal_id, target_resource_id, '
  'outcome_description or details (keys and strings)';

CREATE FUNCTION audit.redacted_fields_digest(r audit.audit_log) RETURNS bytea
LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE
AS 'MODULE_PATHNAME', 'audit_redacted_fields_digest_sql';
COMMENT ON FUNCTION audit.redacted_fields_digest(audit.audit_log) IS
  'SHA-256 over the row''s id and personal fields as they are: what a redaction record attests (docs/hash-format.md)';

CREATE FUNCTION audit.redact_subject_rows(request_id bigint, terms text[], replacement text, organization text,
                                          erase boolean, keep_exempt boolean,
                                          OUT rows_changed bigint, OUT rows_erased bigint, OUT rows_kept bigint)
LANGUAGE C VOLATILE
AS 'MODULE_PATHNAME', 'audit_redact_subject_rows_sql';
COMMENT ON FUNCTION audit.redact_subject_rows(bigint, text[], text, text, boolean, boolean) IS
  'Internal: rewrite the rows mentioning the identifiers, keeping their leaves, and attest the new fields';

-- Rows about or by a subject: a sequential scan (of one organization's rows
-- when given), filtered cheaply by substring, then exactly by whole token.
CREATE FUNCTION audit.subject_rows(terms text[], organization text)
RETURNS TABLE (partition oid, row_location tid, r audit.audit_log)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
  SELECT a.tableoid, a.ctid, a
    FROM audit.audit_log a
   WHERE (organization IS NULL OR a.organization_id = organization)
     AND EXISTS (SELECT FROM unnest(terms) AS t(term)
                  WHERE strpos(a.principal_id, t.term) > 0
                     OR strpos(a.target_resource_id, t.term) > 0
                     OR strpos(a.outcome_description, t.term) > 0
                     OR strpos(a.details::text, substr(to_jsonb(t.term)::text, 2,
                                                      length(to_jsonb(t.term)::text) - 2)) > 0)
     AND audit.mentions_subject(a, terms)
$$;
COMMENT ON FUNCTION audit.subject_rows(text[], text) IS
  'Internal: location and content of every audit row mentioning one of the identifiers (of one organization)';

-- Rows about or by a subject that retention moved into the archive (every
-- entry decompressed and read).
CREATE FUNCTION audit.archived_subject_rows(terms text[], organization text)
RETURNS TABLE (archive_id bigint, r audit.audit_log)
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
  SELECT a.archive_id, audit.row_from_export(l.doc, a.archived_at)
    FROM audit.archive_storage a
   CROSS JOIN LATERAL audit.archive_lines(a.archive_id, false) AS l(doc)
   WHERE (organization IS NULL OR l.doc->>'organization_id' = organization)
     AND audit.mentions_subject(audit.row_from_export(l.doc), terms)
$$;
COMMENT ON FUNCTION audit.archived_subject_rows(text[], text) IS
  'Internal: the archived rows mentioning one of the identifiers (of one organization), with their entry';

-- Archive entries cannot be rewritten: say how many of the subject's rows
-- they hold, which a redaction leaves as they are.
CREATE FUNCTION audit.warn_archived_subject_rows(terms text[], organization text) RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  n bigint;
  entries bigint;
BEGIN
  SELECT count(*), count(DISTINCT x.archive_id) INTO n, entries
    FROM audit.archived_subject_rows(terms, organization) x;
  IF n > 0 THEN
    RAISE WARNING '% archived rows of the subject (in % archive entries) were left as they are', n, entries
      USING HINT = 'Archive entries are immutable and leave with their retention policy '
                   '(audit.archive_plan()); docs/gdpr.md says what to do.';
  END IF;
  RETURN n;
END
$$;

CREATE FUNCTION audit.record_gdpr_event(action text, organization text, target_type text, target_id text,
                                        details jsonb) RETURNS void
LANGUAGE C VOLATILE
AS 'MODULE_PATHNAME', 'audit_record_gdpr_event_sql';
COMMENT ON FUNCTION audit.record_gdpr_event(text, text, text, text, jsonb) IS
  'Internal: log a GDPR request under its reserved gdpr. action and retention policy gdpr_record';

-- Keys -----------------------------------------------------------------------

-- The HMAC key of the hash strategy and lookup digests, and the AES key of
-- the mapping's encrypted originals (hash and token strategies): 32 random
-- bytes each, made at CREATE EXTENSION. Nobody but the extension's owner
-- (and superusers) can read them: no grant, and only the SECURITY DEFINER
-- GDPR functions use them. The encryption strategy's key is never stored:
-- it is passed in, or read from the superuser-only setting
-- audit_db.pseudonym_encryption_key.
CREATE TABLE audit.pseudonym_secret (
  singleton   boolean     PRIMARY KEY DEFAULT true CHECK (singleton),
  hmac_key    bytea       NOT NULL CHECK (length(hmac_key) = 32),
  mapping_key bytea       NOT NULL CHECK (length(mapping_key) = 32),
  created_at  timestamptz NOT NULL DEFAULT now()
);
INSERT INTO audit.pseudonym_secret (hmac_key, mapping_key)
VALUES (audit.gdpr_random_bytes(32), audit.gdpr_random_bytes(32));
COMMENT ON TABLE audit.pseudonym_secret IS
  'Keys of the hash strategy, lookup digests and encrypted originals (owner only; docs/gdpr.md)';

-- Mapping ---------------------------------------------------------------------

CREATE TABLE audit.pseudonym_mapping (
  -- '*': made by a privacy officer for every organization; else the organization.
  organization_scope varchar(255) NOT NULL,
  pseudonym          varchar(255) NOT NULL,
  strategy           text         NOT NULL CHECK (strategy IN ('hash', 'token', 'encryption')),
  -- AES-256-GCM of the original id (mapping key; the caller's key for 'encryption').
  original_encrypted bytea        NOT NULL,
  -- HMAC of the original id: finds a subject's pseudonyms without decrypting.
  original_lookup    bytea        NOT NULL,
  requested_by       text         NOT NULL,
  created_by         name         NOT NULL,
  created_at         timestamptz  NOT NULL DEFAULT now(),
  PRIMARY KEY (organization_scope, pseudonym)
);
CREATE INDEX pseudonym_mapping_lookup_idx ON audit.pseudonym_mapping (original_lookup);
COMMENT ON TABLE audit.pseudonym_mapping IS
  'Pseudonyms of data subjects, with their originals encrypted (owner only; read through audit.original_id())';

-- Redaction records ---------------------------------------------------------------

CREATE SEQUENCE audit.redaction_request_id_seq AS bigint;

-- One row per pseudonymization or erasure (append-only). It never names the
-- subject: its sealed event in audit.audit_log carries the same counts and
-- the attestation root.
CREATE TABLE audit.redaction_request (
  request_id       bigint       PRIMARY KEY,
  kind             text         NOT NULL CHECK (kind IN ('pseudonymize', 'erase')),
  organization_id  varchar(255),               -- NULL: every organization
  strategy         text,                       -- pseudonymize: hash, token or encryption
  keep_compliance  boolean,                    -- erase
  requested_by     text         NOT NULL,
  performed_by     name         NOT NULL,
  requested_at     timestamptz  NOT NULL DEFAULT now(),
  rows_changed     bigint       NOT NULL,
  rows_erased      bigint       NOT NULL DEFAULT 0,
  rows_kept        bigint       NOT NULL DEFAULT 0,
  mappings_removed integer      NOT NULL DEFAULT 0,
  attestation_root bytea        NOT NULL
);
ALTER SEQUENCE audit.redaction_request_id_seq OWNED BY audit.redaction_request.request_id;
COMMENT ON TABLE audit.redaction_request IS
  'Pseudonymizations and erasures done (never the subject''s identity), with the root of their attestations';

-- Per redacted row and request: the digest of the personal fields it left.
CREATE TABLE audit.redacted_row (
  audit_log_id  bigint      NOT NULL,
  log_timestamp timestamptz NOT NULL,
  organization_id varchar(255),             -- the row's (tenant isolation)
  request_id    bigint      NOT NULL
    REFERENCES audit.redaction_request DEFERRABLE INITIALLY DEFERRED,
  fields_digest bytea       NOT NULL CHECK (length(fields_digest) = 32),
  PRIMARY KEY (audit_log_id, request_id)
);
CREATE INDEX redacted_row_request_idx ON audit.redacted_row (request_id);
COMMENT ON TABLE audit.redacted_row IS
  'Attestation of each redacted audit row: digest of its personal fields after each request (docs/hash-format.md)';

-- Rows that erasure keeps (pseudonymized) for legal reasons.
CREATE TABLE audit.erasure_exemption (
  data_classification audit.data_classification,   -- NULL: any
  retention_policy    varchar(50),                  -- NULL: any
  reason              text NOT NULL CHECK (reason <> ''),
  CONSTRAINT erasure_exemption_names_something
    CHECK (data_classification IS NOT NULL OR retention_policy IS NOT NULL),
  CONSTRAINT erasure_exemption_unique UNIQUE NULLS NOT DISTINCT (data_classification, retention_policy)
);
INSERT INTO audit.erasure_exemption (data_classification, reason)
VALUES ('FINANCIAL', 'Financial records are kept for the statutory period of bookkeeping and tax law');
COMMENT ON TABLE audit.erasure_exemption IS
  'Classifications and retention policies whose rows audit.erase_subject(keep_compliance => true) keeps, pseudonymized';

-- Requests ----------------------------------------------------------------------

-- The effective organization of a request: the caller's scope narrowed by
-- the organization argument (NULL result: every organization).
CREATE FUNCTION audit.gdpr_organization(scope text, organization text) RETURNS text
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  IF organization = '' THEN
    RAISE EXCEPTION 'organization must not be empty' USING ERRCODE = '22023',
      HINT = 'Pass NULL for every organization you may act for.';
  END IF;
  IF scope = '*' THEN
    RETURN organization;
  END IF;
  IF organization IS NOT NULL AND organization <> scope THEN
    RAISE EXCEPTION 'permission denied for organization "%"', organization USING ERRCODE = '42501',
      HINT = format('The session acts for organization %L only.', scope);
  END IF;
  RETURN scope;
END
$$;

-- Checks shared by the entry points: a non-empty subject id and requester.
CREATE FUNCTION audit.gdpr_check_subject(principal_id text, requested_by text, needs_requester boolean)
RETURNS void
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  IF principal_id IS NULL OR principal_id = '' THEN
    RAISE EXCEPTION 'principal_id must not be NULL or empty' USING ERRCODE = '22004',
      HINT = 'Pass the data subject''s principal id as it appears in the audit log.';
  END IF;
  IF length(principal_id) > 255 THEN
    RAISE EXCEPTION 'principal_id is longer than 255 characters' USING ERRCODE = '22001',
      HINT = 'audit_log.principal_id holds at most 255 characters; no row can name this subject.';
  END IF;
  IF needs_requester AND (requested_by IS NULL OR btrim(requested_by) = '') THEN
    RAISE EXCEPTION 'requested_by must name who asked for this' USING ERRCODE = '22004',
      HINT = 'For example the data subject''s request or ticket reference.';
  END IF;
END
$$;

-- The subject's identifiers: the id itself and every pseudonym it has in
-- the mapping (of the organization, or of every organization).
CREATE FUNCTION audit.subject_identifiers(principal_id text, organization text) RETURNS text[]
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
  SELECT array_prepend(principal_id, coalesce(array_agg(m.pseudonym::text ORDER BY m.pseudonym), '{}'))
    FROM audit.pseudonym_mapping m, audit.pseudonym_secret s
   WHERE (organization IS NULL OR m.organization_scope IN (organization, '*'))
     AND m.original_lookup = audit.gdpr_hmac(s.hmac_key, 'audit_db.lookup.v1', m.organization_scope, principal_id)
$$;

CREATE FUNCTION audit.pseudonymize(principal_id text, strategy text DEFAULT 'hash', requested_by text DEFAULT NULL,
                                   encryption_key text DEFAULT NULL, organization text DEFAULT NULL)
RETURNS TABLE (pseudonym text, rows_affected bigint)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  scope    text := audit.gdpr_authorize('pseudonymize');
  org      text := audit.gdpr_organization(scope, organization);
  map_scope text := coalesce(org, '*');
  secret   audit.pseudonym_secret;
  p        text;
  enc      bytea;
  lookup   bytea;
  existed  boolean;
  archived bigint;
  req      bigint;
  res      record;
  root     bytea;
BEGIN
  PERFORM audit.gdpr_check_subject(principal_id, requested_by, true);
  IF strategy IS NULL OR strategy NOT IN ('hash', 'token', 'encryption') THEN
    RAISE EXCEPTION 'unknown pseudonymization strategy %', coalesce(quote_literal(strategy), 'NULL')
      USING ERRCODE = '22023', HINT = 'One of: hash, token, encryption.';
  END IF;
  IF strategy <> 'encryption' AND encryption_key IS NOT NULL THEN
    RAISE EXCEPTION 'encryption_key applies to the encryption strategy only' USING ERRCODE = '22023',
      HINT = 'Leave encryption_key NULL for the hash and token strategies.';
  END IF;
  -- One redaction at a time: rows are rewritten from one consistent view.
  LOCK TABLE audit.redaction_request IN SHARE ROW EXCLUSIVE MODE;
  SELECT * INTO STRICT secret FROM audit.pseudonym_secret;

  IF EXISTS (SELECT FROM audit.pseudonym_mapping m
              WHERE m.pseudonym = pseudonymize.principal_id AND m.organization_scope IN (map_scope, '*')) THEN
    RAISE EXCEPTION 'principal_id % is already a pseudonym', quote_literal(principal_id) USING ERRCODE = '22023',
      HINT = 'Pseudonymize the original id; audit.original_id() reverses a pseudonym.';
  END IF;

  lookup := audit.gdpr_hmac(secret.hmac_key, 'audit_db.lookup.v1', map_scope, principal_id);
  IF strategy = 'hash' THEN
    p := 'ph_' || encode(substr(audit.gdpr_hmac(secret.hmac_key, 'audit_db.pseudonym.v1', map_scope, principal_id),
                                1, 16), 'hex');
    enc := audit.gdpr_encrypt(secret.mapping_key, principal_id);
  ELSIF strategy = 'token' THEN
    p := 'pt_' || encode(audit.gdpr_random_bytes(16), 'hex');
    enc := audit.gdpr_encrypt(secret.mapping_key, principal_id);
  ELSE
    enc := audit.gdpr_encrypt(audit.gdpr_encryption_key(encryption_key), principal_id);
    p := 'pe_' || translate(encode(enc, 'base64'), E'+/=\n', '-_');
    IF length(p) > 255 THEN
      RAISE EXCEPTION 'principal_id is too long for the encryption strategy (% bytes)', octet_length(principal_id)
        USING ERRCODE = '22001',
        HINT = 'Its pseudonym would not fit audit_log.principal_id (255); use the hash or token strategy.';
    END IF;
  END IF;

  INSERT INTO audit.pseudonym_mapping AS m (organization_scope, pseudonym, strategy, original_encrypted,
                                            original_lookup, requested_by, created_by)
  VALUES (map_scope, p, strategy, enc, lookup, requested_by, session_user)
  ON CONFLICT ON CONSTRAINT pseudonym_mapping_pkey DO NOTHING;
  existed := NOT FOUND;

  req := nextval('audit.redaction_request_id_seq');
  SELECT * INTO STRICT res
    FROM audit.redact_subject_rows(req, ARRAY[principal_id], p, org, false, false);
  archived := audit.warn_archived_subject_rows(ARRAY[principal_id], org);
  IF res.rows_changed = 0 AND NOT existed AND archived = 0 THEN
    RAISE EXCEPTION 'no audit row mentions principal %', quote_literal(principal_id) USING ERRCODE = 'P0002',
      HINT = CASE WHEN org IS NULL THEN 'Check the id: it is matched exactly (case-sensitive), as a whole token.'
                  ELSE format('Only organization %L''s rows were searched.', org) END;
  END IF;

  SELECT audit.merkle_root(coalesce(array_agg(d.fields_digest ORDER BY d.audit_log_id), '{}'))
    INTO root FROM audit.redacted_row d WHERE d.request_id = req;
  INSERT INTO audit.redaction_request (request_id, kind, organization_id, strategy, requested_by, performed_by,
                                       rows_changed, attestation_root)
  VALUES (req, 'pseudonymize', org, strategy, requested_by, session_user, res.rows_changed, root);
  PERFORM audit.record_gdpr_event('gdpr.pseudonymize', org, 'pseudonym', p,
            jsonb_build_object('request_id', req, 'strategy', strategy, 'requested_by', requested_by,
                               'rows_changed', res.rows_changed, 'attestation_root', encode(root, 'hex')));
  RETURN QUERY SELECT p, res.rows_changed;
END
$$;
COMMENT ON FUNCTION audit.pseudonymize(text, text, text, text, text) IS
  'Replace a data subject''s id in every audit row mentioning it by a pseudonym (hash, token or encryption); '
  'returns the pseudonym and the rows changed';

CREATE FUNCTION audit.original_id(pseudonym text, encryption_key text DEFAULT NULL, reason text DEFAULT NULL)
RETURNS text
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  scope    text := audit.gdpr_authorize('reverse_lookup');
  m        audit.pseudonym_mapping;
  original text;
BEGIN
  IF pseudonym IS NULL OR pseudonym = '' THEN
    RAISE EXCEPTION 'pseudonym must not be NULL or empty' USING ERRCODE = '22004',
      HINT = 'Pass a pseudonym returned by audit.pseudonymize().';
  END IF;
  SELECT * INTO m FROM audit.pseudonym_mapping p
   WHERE p.pseudonym = original_id.pseudonym AND (scope = '*' OR p.organization_scope = scope)
   ORDER BY p.organization_scope = '*' LIMIT 1;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'unknown pseudonym %', quote_literal(pseudonym) USING ERRCODE = 'P0002',
      HINT = 'It was never made, its subject was erased, or it belongs to another organization.';
  END IF;
  IF m.strategy = 'encryption' THEN
    original := audit.gdpr_decrypt(audit.gdpr_encryption_key(encryption_key), m.original_encrypted);
  ELSE
    IF encryption_key IS NOT NULL THEN
      RAISE EXCEPTION 'encryption_key applies to the encryption strategy only' USING ERRCODE = '22023',
        HINT = format('Pseudonym %s was made with the %s strategy; leave encryption_key NULL.', pseudonym, m.strategy);
    END IF;
    original := audit.gdpr_decrypt((SELECT s.mapping_key FROM audit.pseudonym_secret s), m.original_encrypted);
  END IF;
  PERFORM audit.record_gdpr_event('gdpr.original_id',
            CASE WHEN m.organization_scope = '*' THEN NULL ELSE m.organization_scope END,
            'pseudonym', pseudonym,
            jsonb_build_object('strategy', m.strategy, 'reason', reason));
  RETURN original;
END
$$;
COMMENT ON FUNCTION audit.original_id(text, text, text) IS
  'The original id behind a pseudonym (authorized roles only; every lookup is logged as gdpr.original_id)';

-- One subject's rows, each with its chain status, as json, csv or xml.
CREATE FUNCTION audit.export_subject(principal_id text, organization text DEFAULT NULL, format text DEFAULT 'json')
RETURNS text
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  scope  text := audit.gdpr_authorize('export');
  org    text := audit.gdpr_organization(scope, organization);
  terms  text[];
  events jsonb;
  doc    text;
  n      bigint;
  cols   constant text[] := ARRAY['id', 'timestamp', 'principal_id', 'organization_id', 'action',
                                  'target_resource_type', 'target_resource_id', 'status', 'outcome_description',
                                  'data_classification', 'retention_policy', 'correlation_id', 'event_version',
                                  'processing_latency', 'details', 'hash', 'chain_status', 'sealed',
                                  'leaf_intact', 'redacted'];
BEGIN
  PERFORM audit.gdpr_check_subject(principal_id, NULL, false);
  IF format IS NULL OR format NOT IN ('json', 'csv', 'xml') THEN
    RAISE EXCEPTION 'unknown export format %', coalesce(quote_literal(format), 'NULL') USING ERRCODE = '22023',
      HINT = 'One of: json, csv, xml.';
  END IF;
  terms := audit.subject_identifiers(principal_id, org);

  SELECT coalesce(jsonb_agg(x.doc ORDER BY x.ts, x.id), '[]'), count(*) INTO events, n
    FROM (
  SELECT jsonb_build_object(
           'id', (s.r).id, 'timestamp', (s.r)."timestamp", 'principal_id', (s.r).principal_id,
           'organization_id', (s.r).organization_id, 'action', (s.r).action,
           'target_resource_type', (s.r).target_resource_type, 'target_resource_id', (s.r).target_resource_id,
           'status', (s.r).status, 'outcome_description', (s.r).outcome_description,
           'data_classification', (s.r).data_classification, 'retention_policy', (s.r).retention_policy,
           'correlation_id', (s.r).correlation_id, 'event_version', (s.r).event_version,
           'processing_latency', (s.r).processing_latency, 'details', (s.r).details,
           'hash', encode((s.r).hash, 'hex'),
           'chain_status', CASE WHEN NOT v.intact THEN 'modified' WHEN s.archived THEN 'archived'
                                WHEN v.sealed THEN 'sealed' ELSE 'unsealed' END,
           'sealed', v.sealed, 'leaf_intact', v.intact, 'redacted', (s.r).personal_data_salt IS NULL) AS doc,
         (s.r)."timestamp" AS ts, (s.r).id AS id
    FROM (SELECT l.r, false AS archived FROM audit.subject_rows(terms, org) l
          UNION ALL
          SELECT x.r, true FROM audit.archived_subject_rows(terms, org) x) s
    CROSS JOIN LATERAL (
      SELECT (s.r).transaction_id < st.horizon_xid AS sealed,
             audit.leaf_hash(s.r) = (s.r).hash
             AND ((s.r).personal_data_salt IS NOT NULL
                  OR audit.redacted_fields_digest(s.r) IS NOT DISTINCT FROM
                     (SELECT d.fields_digest FROM audit.redacted_row d WHERE d.audit_log_id = (s.r).id
                       ORDER BY d.request_id DESC LIMIT 1)) AS intact
        FROM audit.audit_chain_state st) v) x;

  IF format = 'json' THEN
    SELECT jsonb_pretty(jsonb_build_object(
             'subject', principal_id, 'organization', org, 'exported_at', now(), 'rows', n,
             'events', events))
      INTO doc;
  ELSIF format = 'csv' THEN
    -- RFC 4180: every field quoted, quotes doubled, CRLF line ends.
    SELECT string_agg(line, E'\r\n' ORDER BY ord) || E'\r\n' INTO doc
      FROM (SELECT 0::bigint AS ord,
                   (SELECT string_agg('"' || c || '"', ',' ORDER BY i) FROM unnest(cols) WITH ORDINALITY AS x(c, i)) AS line
            UNION ALL
            SELECT e.ord,
                   (SELECT string_agg(CASE WHEN e.doc -> c IS NULL OR jsonb_typeof(e.doc -> c) = 'null' THEN ''
                                           ELSE '"' || replace(CASE WHEN jsonb_typeof(e.doc -> c) IN ('object', 'array')
                                                                    THEN (e.doc -> c)::text ELSE e.doc ->> c END,
                                                               '"', '""') || '"' END,
                                      ',' ORDER BY i)
                      FROM unnest(cols) WITH ORDINALITY AS x(c, i))
              FROM jsonb_array_elements(events) WITH ORDINALITY AS e(doc, ord)) lines;
  ELSE
    SELECT xmlserialize(DOCUMENT xmlroot(
             xmlelement(name "subject_export",
                        xmlattributes(principal_id AS "subject", org AS "organization", now() AS "exported_at",
                                      n AS "rows"),
                        xmlagg(xmlelement(name "event",
                                          (SELECT xmlagg(xmlelement(name "field", xmlattributes(c AS "name"),
                                                                    CASE WHEN jsonb_typeof(e.doc -> c) IN ('object', 'array')
                                                                         THEN (e.doc -> c)::text ELSE e.doc ->> c END)
                                                         ORDER BY i)
                                             FROM unnest(cols) WITH ORDINALITY AS x(c, i)
                                            WHERE jsonb_typeof(e.doc -> c) IS DISTINCT FROM 'null'))
                               ORDER BY e.ord)),
             version '1.0', standalone yes) AS text)
      INTO doc FROM jsonb_array_elements(events) WITH ORDINALITY AS e(doc, ord);
  END IF;

  PERFORM audit.record_gdpr_event('gdpr.export', org, 'principal', principal_id,
            jsonb_build_object('format', format, 'rows', n));
  RETURN doc;
END
$$;
COMMENT ON FUNCTION audit.export_subject(text, text, text) IS
  'Every audit row about or by a data subject (also through its pseudonyms), with chain status, as json, csv or xml';

CREATE FUNCTION audit.erase_subject(principal_id text, requested_by text, keep_compliance boolean DEFAULT true,
                                    organization text DEFAULT NULL)
RETURNS TABLE (rows_erased bigint, rows_kept bigint)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  scope   text := audit.gdpr_authorize('erase');
  org     text := audit.gdpr_organization(scope, organization);
  terms   text[];
  token   text;
  req     bigint;
  res     record;
  removed integer;
  archived bigint;
  root    bytea;
BEGIN
  PERFORM audit.gdpr_check_subject(principal_id, requested_by, true);
  IF keep_compliance IS NULL THEN
    RAISE EXCEPTION 'keep_compliance must not be NULL' USING ERRCODE = '22004',
      HINT = 'true keeps rows audit.erasure_exemption names (pseudonymized); false erases them too.';
  END IF;
  LOCK TABLE audit.redaction_request IN SHARE ROW EXCLUSIVE MODE;
  terms := audit.subject_identifiers(principal_id, org);
  -- An erased subject is named by a random token that nothing maps back.
  token := 'erased_' || encode(audit.gdpr_random_bytes(16), 'hex');
  req := nextval('audit.redaction_request_id_seq');
  SELECT * INTO STRICT res
    FROM audit.redact_subject_rows(req, terms, token, org, true, keep_compliance);
  archived := audit.warn_archived_subject_rows(terms, org);

  DELETE FROM audit.pseudonym_mapping m
   WHERE m.pseudonym = ANY (terms[2:])
     AND (org IS NULL OR m.organization_scope = org);
  GET DIAGNOSTICS removed = ROW_COUNT;
  IF res.rows_changed = 0 AND removed = 0 AND archived = 0 THEN
    RAISE EXCEPTION 'no audit row or pseudonym mentions principal %', quote_literal(principal_id)
      USING ERRCODE = 'P0002',
      HINT = CASE WHEN org IS NULL THEN 'Check the id: it is matched exactly (case-sensitive), as a whole token.'
                  ELSE format('Only organization %L''s rows were searched.', org) END;
  END IF;

  SELECT audit.merkle_root(coalesce(array_agg(d.fields_digest ORDER BY d.audit_log_id), '{}'))
    INTO root FROM audit.redacted_row d WHERE d.request_id = req;
  INSERT INTO audit.redaction_request (request_id, kind, organization_id, keep_compliance, requested_by,
                                       performed_by, rows_changed, rows_erased, rows_kept, mappings_removed,
                                       attestation_root)
  VALUES (req, 'erase', org, keep_compliance, requested_by, session_user, res.rows_changed, res.rows_erased,
          res.rows_kept, removed, root);
  PERFORM audit.record_gdpr_event('gdpr.erase', org, 'erased_subject', token,
            jsonb_build_object('request_id', req, 'requested_by', requested_by, 'keep_compliance', keep_compliance,
                               'rows_erased', res.rows_erased, 'rows_kept', res.rows_kept,
                               'mappings_removed', removed, 'archived_rows_left', archived,
                               'attestation_root', encode(root, 'hex')));
  RAISE NOTICE 'erased % and pseudonymized % audit rows of the subject', res.rows_erased, res.rows_kept
    USING HINT = 'Old row versions stay on disk until VACUUM audit.audit_log; WAL, backups and replicas '
                 'keep them longer (docs/gdpr.md).';
  RETURN QUERY SELECT res.rows_erased, res.rows_kept;
END
$$;
COMMENT ON FUNCTION audit.erase_subject(text, text, boolean, text) IS
  'Erase a data subject''s personal data from the audit log (rows audit.erasure_exemption names are kept, '
  'pseudonymized, unless keep_compliance is false); returns the rows erased and kept';
-- Append-only guards for the extension's record tables: UPDATE, DELETE and
-- TRUNCATE are refused by audit.refuse_audit_change() (src/immutability.c),
-- for every role, also under session_replication_role = replica (ALWAYS).
-- Triggers are named <table>_refuse_<operation>. audit.audit_log has its own
-- guards in 20_audit_log.sql (its partitions need them too).
DO $$
DECLARE
  tbl text;
  op  text;
BEGIN
  FOREACH tbl IN ARRAY ARRAY['audit_chain_block', 'audit_log_relocation', 'archive_storage',
                                 'redaction_request', 'redacted_row'] LOOP
    FOREACH op IN ARRAY ARRAY['update', 'delete', 'truncate'] LOOP
      EXECUTE format('CREATE TRIGGER %I BEFORE %s ON audit.%I FOR EACH %s EXECUTE FUNCTION audit.refuse_audit_change()',
                     tbl || '_refuse_' || op, upper(op), tbl,
                     CASE op WHEN 'truncate' THEN 'STATEMENT' ELSE 'ROW' END);
      EXECUTE format('ALTER TABLE audit.%I ENABLE ALWAYS TRIGGER %I', tbl, tbl || '_refuse_' || op);
    END LOOP;
  END LOOP;
END
$$;
-- Tenant isolation and organization roles (src/tenancy.c,
-- src/organization_roles.c; the model is in docs/tenancy.md).
--
-- A session acts for one organization at a time, taken from
-- audit.organization_access (database role -> organization), never from a
-- setting.  Isolated tables carry row-level-security policies comparing
-- their organization column with audit.current_organization() and asking
-- audit.session_has_permission(resource, 'read' | 'write').

-- Members of audit_db_all_organizations (05_roles.sql) have a policy of
-- their own that admits every row.

-- The organization context -------------------------------------------------

CREATE FUNCTION audit.current_organization() RETURNS text
LANGUAGE C STABLE PARALLEL RESTRICTED
AS 'MODULE_PATHNAME', 'audit_current_organization_sql';
COMMENT ON FUNCTION audit.current_organization() IS
  'The organization the session acts for (from audit.organization_access and audit.set_organization()); NULL: none';

CREATE FUNCTION audit.current_principal() RETURNS text
LANGUAGE C STABLE PARALLEL RESTRICTED
AS 'MODULE_PATHNAME', 'audit_current_principal_sql';
COMMENT ON FUNCTION audit.current_principal() IS
  'The principal whose organization roles apply: set by audit.set_organization(principal => ...), else the session role''s name';

CREATE FUNCTION audit.set_organization(organization text, principal text DEFAULT NULL,
                                       "local" boolean DEFAULT false) RETURNS text
LANGUAGE C VOLATILE PARALLEL UNSAFE
AS 'MODULE_PATHNAME', 'audit_set_organization_sql';
COMMENT ON FUNCTION audit.set_organization(text, text, boolean) IS
  'Act for one of the organizations the session''s role is mapped to (optionally as a principal; local: until the transaction ends)';

CREATE FUNCTION audit.reset_organization() RETURNS void
LANGUAGE C VOLATILE PARALLEL UNSAFE
AS 'MODULE_PATHNAME', 'audit_reset_organization_sql';
COMMENT ON FUNCTION audit.reset_organization() IS
  'Undo audit.set_organization(): back to what the role''s mapping gives by itself';

CREATE FUNCTION audit.available_organizations()
RETURNS TABLE (organization_id text, may_set_principal boolean, current boolean)
LANGUAGE C STABLE PARALLEL RESTRICTED
AS 'MODULE_PATHNAME', 'audit_available_organizations_sql';
COMMENT ON FUNCTION audit.available_organizations() IS
  'Organizations the session''s role may act for (''*'': any), and which one it acts for now';

-- Who may act for which organization: written only by the extension's owner.
CREATE TABLE audit.organization_access (
  database_role     regrole      NOT NULL,
  organization_id   varchar(255) COLLATE "C" NOT NULL CHECK (organization_id <> ''),
  may_set_principal boolean      NOT NULL DEFAULT false,
  granted_by        text         NOT NULL DEFAULT session_user,
  granted_at        timestamptz  NOT NULL DEFAULT now(),
  PRIMARY KEY (database_role, organization_id)
);
COMMENT ON TABLE audit.organization_access IS
  'Database roles (and their members) that may act for an organization; ''*'': any organization, one at a time';
COMMENT ON COLUMN audit.organization_access.may_set_principal IS
  'The role may name the principal it acts as (audit.set_organization(principal => ...)): pooled application roles';

CREATE FUNCTION audit.grant_organization_access(database_role regrole, organization text,
                                                may_set_principal boolean DEFAULT false)
RETURNS void
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
  INSERT INTO audit.organization_access AS a (database_role, organization_id, may_set_principal)
  VALUES (database_role, organization, may_set_principal)
  ON CONFLICT ON CONSTRAINT organization_access_pkey
  DO UPDATE SET may_set_principal = EXCLUDED.may_set_principal
  WHERE a.may_set_principal IS DISTINCT FROM EXCLUDED.may_set_principal;
$$;
COMMENT ON FUNCTION audit.grant_organization_access(regrole, text, boolean) IS
  'Let a database role (and its members) act for an organization (''*'': any); logged';

CREATE FUNCTION audit.revoke_organization_access(database_role regrole, organization text)
RETURNS boolean
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
  WITH gone AS (
    DELETE FROM audit.organization_access a
     WHERE a.database_role = revoke_organization_access.database_role AND a.organization_id = organization
    RETURNING 1)
  SELECT EXISTS (SELECT FROM gone);
$$;
COMMENT ON FUNCTION audit.revoke_organization_access(regrole, text) IS
  'Take back an organization from a database role; true if it had it; logged';

-- Organization roles ---------------------------------------------------------

CREATE TABLE audit.organization_role (
  organization_id varchar(255) COLLATE "C" NOT NULL
                  CHECK (organization_id <> '' AND organization_id <> '*'),
  role_name       varchar(100) COLLATE "C" NOT NULL CHECK (role_name <> ''),
  description     text,
  -- [{"resource": "audit.audit_log", "action": "read"}, ...]; '*' and 'prefix*' match.
  permissions     jsonb        NOT NULL DEFAULT '[]',
  -- Names of roles of the same organization whose permissions this one adds.
  inherits        text[]       COLLATE "C" NOT NULL DEFAULT '{}',
  created_by      text         NOT NULL DEFAULT audit.current_principal(),
  created_at      timestamptz  NOT NULL DEFAULT now(),
  PRIMARY KEY (organization_id, role_name)
);
COMMENT ON TABLE audit.organization_role IS
  'Roles inside an organization: permissions ({resource, action} patterns) and inherited roles (no cycles)';

CREATE TABLE audit.organization_role_assignment (
  organization_id varchar(255) COLLATE "C" NOT NULL,
  principal_id    varchar(255) COLLATE "C" NOT NULL CHECK (principal_id <> ''),
  role_name       varchar(100) COLLATE "C" NOT NULL,
  granted_by      text         NOT NULL DEFAULT audit.current_principal(),
  granted_at      timestamptz  NOT NULL DEFAULT now(),
  PRIMARY KEY (organization_id, principal_id, role_name),
  FOREIGN KEY (organization_id, role_name) REFERENCES audit.organization_role
    ON UPDATE CASCADE ON DELETE RESTRICT
);
COMMENT ON TABLE audit.organization_role_assignment IS
  'Organization roles held by principals (application users, or database role names)';

CREATE FUNCTION audit.check_organization_role() RETURNS trigger
LANGUAGE C AS 'MODULE_PATHNAME', 'audit_check_organization_role';
CREATE FUNCTION audit.log_organization_change() RETURNS trigger
LANGUAGE C AS 'MODULE_PATHNAME', 'audit_log_organization_change';

-- The statement trigger serializes role changes before any row is locked;
-- the BEFORE row trigger checks each row's shape; the AFTER row trigger
-- checks inheritance once the whole statement is done.
CREATE TRIGGER organization_role_serialize
  BEFORE INSERT OR UPDATE OR DELETE ON audit.organization_role
  FOR EACH STATEMENT EXECUTE FUNCTION audit.check_organization_role();
CREATE TRIGGER organization_role_check
  BEFORE INSERT OR UPDATE ON audit.organization_role
  FOR EACH ROW EXECUTE FUNCTION audit.check_organization_role();
CREATE TRIGGER organization_role_check_inheritance
  AFTER INSERT OR UPDATE OR DELETE ON audit.organization_role
  FOR EACH ROW EXECUTE FUNCTION audit.check_organization_role();
CREATE TRIGGER organization_role_log AFTER INSERT OR UPDATE OR DELETE ON audit.organization_role
  FOR EACH ROW EXECUTE FUNCTION audit.log_organization_change();
CREATE TRIGGER organization_role_log_truncate AFTER TRUNCATE ON audit.organization_role
  FOR EACH STATEMENT EXECUTE FUNCTION audit.log_organization_change();
CREATE TRIGGER organization_role_assignment_log AFTER INSERT OR UPDATE OR DELETE ON audit.organization_role_assignment
  FOR EACH ROW EXECUTE FUNCTION audit.log_organization_change();
CREATE TRIGGER organization_role_assignment_log_truncate AFTER TRUNCATE ON audit.organization_role_assignment
  FOR EACH STATEMENT EXECUTE FUNCTION audit.log_organization_change();
CREATE TRIGGER organization_access_log AFTER INSERT OR UPDATE OR DELETE ON audit.organization_access
  FOR EACH ROW EXECUTE FUNCTION audit.log_organization_change();
CREATE TRIGGER organization_access_log_truncate AFTER TRUNCATE ON audit.organization_access
  FOR EACH STATEMENT EXECUTE FUNCTION audit.log_organization_change();
-- ALWAYS: session_replication_role = replica must not skip the checks, the log or the invalidation.
ALTER TABLE audit.organization_role ENABLE ALWAYS TRIGGER organization_role_serialize;
ALTER TABLE audit.organization_role ENABLE ALWAYS TRIGGER organization_role_check;
ALTER TABLE audit.organization_role ENABLE ALWAYS TRIGGER organization_role_check_inheritance;
ALTER TABLE audit.organization_role ENABLE ALWAYS TRIGGER organization_role_log;
ALTER TABLE audit.organization_role ENABLE ALWAYS TRIGGER organization_role_log_truncate;
ALTER TABLE audit.organization_role_assignment ENABLE ALWAYS TRIGGER organization_role_assignment_log;
ALTER TABLE audit.organization_role_assignment ENABLE ALWAYS TRIGGER organization_role_assignment_log_truncate;
ALTER TABLE audit.organization_access ENABLE ALWAYS TRIGGER organization_access_log;
ALTER TABLE audit.organization_access ENABLE ALWAYS TRIGGER organization_access_log_truncate;

-- Permission checks ------------------------------------------------------------

CREATE FUNCTION audit.has_permission(principal text, organization text, resource text, action text)
RETURNS boolean
LANGUAGE C STABLE STRICT PARALLEL RESTRICTED
AS 'MODULE_PATHNAME', 'audit_has_permission_sql';
COMMENT ON FUNCTION audit.has_permission(text, text, text, text) IS
  'Whether the principal''s organization roles (with inheritance) allow action on resource; cached per backend';

CREATE FUNCTION audit.session_has_permission(resource text, action text) RETURNS boolean
LANGUAGE C STABLE STRICT PARALLEL RESTRICTED
AS 'MODULE_PATHNAME', 'audit_session_has_permission_sql';
COMMENT ON FUNCTION audit.session_has_permission(text, text) IS
  'audit.has_permission() for the session''s principal and organization (false when it acts for none); used by policies';

CREATE FUNCTION audit.user_permissions(principal text DEFAULT NULL, organization text DEFAULT NULL)
RETURNS TABLE (resource text, action text, role_name text, inherited_via text[])
LANGUAGE C STABLE PARALLEL RESTRICTED
AS 'MODULE_PATHNAME', 'audit_user_permissions_sql';
COMMENT ON FUNCTION audit.user_permissions(text, text) IS
  'Effective permissions of a principal in an organization (NULL: the session''s), with the role path each comes through';

-- Isolating tables -------------------------------------------------------------

CREATE TABLE audit.tenant_isolated_table (
  table_name          regclass    PRIMARY KEY,
  organization_column name        NOT NULL,
  resource            text        NOT NULL,
  shared_null_rows    boolean     NOT NULL,
  built_in            boolean     NOT NULL DEFAULT false,
  -- The tenant policies as created (audit.tenant_policy_definitions()), to
  -- tell when one was altered afterwards.
  policy_definitions  jsonb       NOT NULL DEFAULT '{}',
  enabled_by          text        NOT NULL,
  enabled_at          timestamptz NOT NULL
);
COMMENT ON TABLE audit.tenant_isolated_table IS
  'Tables audit.enable_tenant_isolation() put policies on (built_in: the extension''s own)';

-- The tenant policies of a table as they are now: name -> command,
-- roles and expressions.
CREATE FUNCTION audit.tenant_policy_definitions(tbl regclass) RETURNS jsonb
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
  SELECT coalesce(jsonb_object_agg(p.polname, jsonb_build_object(
           'command', p.polcmd, 'permissive', p.polpermissive,
           'roles', (SELECT jsonb_agg(CASE WHEN r = 0 THEN 'public' ELSE r::regrole::text END ORDER BY r)
                       FROM unnest(p.polroles) r),
           'using', pg_get_expr(p.polqual, p.polrelid),
           'check', pg_get_expr(p.polwithcheck, p.polrelid))), '{}')
    FROM pg_policy p
   WHERE p.polrelid = tbl
     AND p.polname IN ('audit_tenant_read', 'audit_tenant_insert', 'audit_tenant_update', 'audit_tenant_delete',
                       'audit_tenant_shared_read', 'audit_all_organizations');
$$;

-- A dropped table leaves the registry with it.
CREATE FUNCTION audit.forget_dropped_isolated_tables() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  IF to_regclass('audit.tenant_isolated_table') IS NULL THEN
    RETURN;                     -- the extension itself is being dropped
  END IF;
  DELETE FROM audit.tenant_isolated_table t
   USING pg_event_trigger_dropped_objects() d
   WHERE d.classid = 'pg_class'::regclass AND d.objsubid = 0 AND t.table_name::oid = d.objid;
END
$$;
CREATE EVENT TRIGGER audit_db_forget_dropped_tables ON sql_drop
  WHEN TAG IN ('DROP TABLE', 'DROP SCHEMA', 'DROP OWNED')
  EXECUTE FUNCTION audit.forget_dropped_isolated_tables();

CREATE FUNCTION audit.enable_tenant_isolation(tbl regclass, "column" text DEFAULT 'organization_id',
                                              resource text DEFAULT NULL,
                                              shared_null_rows boolean DEFAULT false)
RETURNS void
LANGUAGE C VOLATILE
SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'audit_enable_tenant_isolation_sql';
COMMENT ON FUNCTION audit.enable_tenant_isolation(regclass, text, text, boolean) IS
  'ENABLE and FORCE row-level security on a table with per-organization read and write policies; logged';

CREATE FUNCTION audit.disable_tenant_isolation(tbl regclass) RETURNS void
LANGUAGE C VOLATILE
SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'audit_disable_tenant_isolation_sql';
COMMENT ON FUNCTION audit.disable_tenant_isolation(regclass) IS
  'Drop a table''s tenant policies (and row-level security when no other policy is left); logged';

-- What could let a role past a table's policies.
CREATE FUNCTION audit.tenant_isolation_warnings(tbl regclass) RETURNS text[]
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
  WITH c AS (SELECT * FROM pg_class WHERE oid = tbl),
  reg AS (SELECT * FROM audit.tenant_isolated_table WHERE table_name = tbl),
  -- Login roles, and the roles each can act as (SET ROLE included).
  reach AS (SELECT l.rolname AS login, r.oid, r.rolname, r.rolsuper, r.rolbypassrls
              FROM pg_roles l JOIN pg_roles r ON pg_has_role(l.oid, r.oid, 'MEMBER')
             WHERE l.rolcanlogin),
  w(o, w) AS (
    SELECT 1, 'row-level security is disabled' FROM c WHERE NOT relrowsecurity
    UNION ALL
    SELECT 2, format('row-level security is not forced: the owner %I bypasses the policies', pg_get_userbyid(relowner))
      FROM c WHERE NOT relforcerowsecurity
    UNION ALL
    SELECT 3, format('policy %s is missing', n)
      FROM unnest(ARRAY['audit_tenant_read', 'audit_tenant_insert', 'audit_tenant_update', 'audit_tenant_delete',
                        'audit_all_organizations']) n
     WHERE NOT EXISTS (SELECT FROM pg_policy p WHERE p.polrelid = tbl AND p.polname = n)
    UNION ALL
    SELECT 3, format('policy %s was changed after audit.enable_tenant_isolation()', d.key)
      FROM reg, jsonb_each(reg.policy_definitions) d
     WHERE audit.tenant_policy_definitions(tbl) ? d.key
       AND audit.tenant_policy_definitions(tbl) -> d.key IS DISTINCT FROM d.value
    UNION ALL
    SELECT 3, format('policy %I is not audit_db''s: a permissive policy adds to what the tenant policies allow', p.polname)
      FROM pg_policy p
     WHERE p.polrelid = tbl AND p.polpermissive
       AND p.polname NOT IN ('audit_tenant_read', 'audit_tenant_insert', 'audit_tenant_update', 'audit_tenant_delete',
                             'audit_tenant_shared_read', 'audit_all_organizations')
    UNION ALL
    SELECT 3, format('column %I has a nondeterministic collation: organizations match case- or accent-insensitively',
                     a.attname)
      FROM reg JOIN pg_attribute a ON a.attrelid = tbl AND a.attname = reg.organization_column
      JOIN pg_collation co ON co.oid = a.attcollation
     WHERE NOT co.collisdeterministic
    UNION ALL
    SELECT DISTINCT 4, CASE WHEN x.login = x.rolname
                            THEN format('login role %I owns the table: connected as it, an application can switch the policies off',
                                        x.login)
                            ELSE format('login role %I has the owner''s rights (member of %I): connected as it, an application can switch the policies off',
                                        x.login, x.rolname) END
      FROM c, reach x WHERE x.oid = c.relowner AND NOT x.rolsuper
       AND NOT EXISTS (SELECT FROM pg_roles s WHERE s.rolname = x.login AND s.rolsuper)
    UNION ALL
    SELECT DISTINCT 5, CASE WHEN x.login = x.rolname
                            THEN format('role %I bypasses row-level security (%s)', x.rolname,
                                        CASE WHEN x.rolsuper THEN 'SUPERUSER' ELSE 'BYPASSRLS' END)
                            ELSE format('login role %I can SET ROLE to %I, which bypasses row-level security (%s)',
                                        x.login, x.rolname, CASE WHEN x.rolsuper THEN 'SUPERUSER' ELSE 'BYPASSRLS' END) END
      FROM reach x
     WHERE (x.rolsuper OR x.rolbypassrls)
       AND NOT EXISTS (SELECT FROM pg_roles s WHERE s.rolname = x.login AND s.rolsuper AND x.login <> x.rolname)
    UNION ALL
    SELECT DISTINCT 6, format('login role %I reads every organization (member of audit_db_all_organizations)', x.login)
      FROM reach x
     WHERE x.rolname = 'audit_db_all_organizations'
       AND NOT EXISTS (SELECT FROM pg_roles s WHERE s.rolname = x.login AND s.rolsuper)
    UNION ALL
    SELECT DISTINCT 7, format('role %I may TRUNCATE the table, which skips row-level security', g.rolname)
      FROM c, aclexplode(c.relacl) a JOIN pg_roles g ON g.oid = a.grantee
     WHERE a.privilege_type = 'TRUNCATE' AND a.grantee <> c.relowner
    UNION ALL
    SELECT DISTINCT 7, format('%s %s has privileges of its own but no tenant policies: reading it directly skips them',
                              CASE ch.relispartition WHEN true THEN 'partition' ELSE 'child table' END, ch.oid::regclass)
      FROM pg_inherits i JOIN pg_class ch ON ch.oid = i.inhrelid, aclexplode(ch.relacl) a
     WHERE i.inhparent = tbl AND a.grantee <> ch.relowner
       AND NOT EXISTS (SELECT FROM pg_policy p WHERE p.polrelid = ch.oid AND p.polname = 'audit_tenant_read')
    UNION ALL
    SELECT DISTINCT 8, CASE v.relkind
             WHEN 'm' THEN format('materialized view %s holds a copy of the rows without their policies', v.oid::regclass)
             ELSE format('view %s reads the table with its owner''s rights (security_invoker is off)', v.oid::regclass) END
      FROM pg_depend d
      JOIN pg_rewrite rw ON rw.oid = d.objid
      JOIN pg_class v ON v.oid = rw.ev_class
     WHERE d.classid = 'pg_rewrite'::regclass AND d.refclassid = 'pg_class'::regclass AND d.refobjid = tbl
       AND v.oid <> tbl
       AND (v.relkind = 'm' OR NOT EXISTS (SELECT FROM pg_options_to_table(v.reloptions)
                                           WHERE option_name = 'security_invoker'
                                             AND lower(option_value) IN ('true', 'on', '1', 'yes')))
    UNION ALL
    SELECT 9, format('function %s is SECURITY DEFINER and owned by %I, who bypasses the policies',
                     p.oid::regprocedure, o.rolname)
      FROM c, pg_proc p JOIN pg_roles o ON o.oid = p.proowner
     WHERE p.prosecdef
       AND p.pronamespace NOT IN ('pg_catalog'::regnamespace, 'information_schema'::regnamespace)
       AND (o.rolsuper OR o.rolbypassrls OR (p.proowner = c.relowner AND NOT c.relforcerowsecurity))
       AND NOT EXISTS (SELECT FROM pg_depend e JOIN pg_extension x ON x.oid = e.refobjid
                        WHERE e.classid = 'pg_proc'::regclass AND e.objid = p.oid AND e.deptype = 'e'
                          AND x.extname = 'audit_db')
  )
  SELECT coalesce(array_agg(w ORDER BY o, w), '{}') FROM w;
$$;
COMMENT ON FUNCTION audit.tenant_isolation_warnings(regclass) IS
  'Ways a role could get past the tenant policies of a table: RLS off or not forced, owners that log in, bypassing roles, views, SECURITY DEFINER functions';

CREATE VIEW audit.tenant_isolation_status AS
SELECT t.table_name,
       t.organization_column,
       t.resource,
       t.shared_null_rows,
       coalesce(c.relrowsecurity, false) AS rls_enabled,
       coalesce(c.relforcerowsecurity, false) AS rls_forced,
       ARRAY(SELECT p.polname::text FROM pg_catalog.pg_policy p WHERE p.polrelid = t.table_name ORDER BY 1) AS policies,
       CASE WHEN c.oid IS NULL THEN ARRAY['the table no longer exists']
            ELSE audit.tenant_isolation_warnings(t.table_name) END AS warnings,
       t.built_in,
       t.enabled_by,
       t.enabled_at
  FROM audit.tenant_isolated_table t
  LEFT JOIN pg_catalog.pg_class c ON c.oid = t.table_name;
COMMENT ON VIEW audit.tenant_isolation_status IS
  'Tables under tenant isolation, their policies, and warnings about ways around them';

-- The extension's own tables are isolated from the start.
SELECT audit.enable_tenant_isolation('audit.audit_log');
SELECT audit.enable_tenant_isolation('audit.audit_preset', shared_null_rows => true);
SELECT audit.enable_tenant_isolation('audit.organization_role');
SELECT audit.enable_tenant_isolation('audit.organization_role_assignment');
SELECT audit.enable_tenant_isolation('audit.audit_integrity_log');
SELECT audit.enable_tenant_isolation('audit.redaction_request');
SELECT audit.enable_tenant_isolation('audit.redacted_row');

SELECT pg_catalog.pg_extension_config_dump('audit.organization_access', '');
SELECT pg_catalog.pg_extension_config_dump('audit.organization_role', '');
SELECT pg_catalog.pg_extension_config_dump('audit.organization_role_assignment', '');
SELECT pg_catalog.pg_extension_config_dump('audit.tenant_isolated_table', 'WHERE NOT built_in');
-- Change auditing for any table (src/change_tracking.c): audit.track_table()
-- puts two triggers on a table (row-level AFTER INSERT/UPDATE/DELETE, and
-- statement-level AFTER TRUNCATE) that write one audit event per changed
-- row, with the diff, into audit.audit_log: the same chain, tenant
-- isolation and retention as every other event. DDL on a tracked table is
-- logged by event triggers; the tracking triggers cannot be dropped or
-- disabled except through audit.untrack_table(), and every switch on or off
-- is logged ('change_tracking.enable' / '.disable', reserved actions).
-- Only the extension's owner may call track_table() / untrack_table() until
-- it grants EXECUTE on them: that grant is what "allowed to" means.

CREATE TABLE audit.tracked_table (
  table_name          regclass    PRIMARY KEY,
  operations          text[]      NOT NULL,
  -- Columns by attribute number: they survive renames; added columns are
  -- tracked (not excluded, not hashed) unless named later.
  excluded_attnums    int2[]      NOT NULL DEFAULT '{}',
  hashed_attnums      int2[]      NOT NULL DEFAULT '{}',
  full_rows           boolean     NOT NULL DEFAULT false,
  data_classification audit.data_classification NOT NULL DEFAULT 'CONFIDENTIAL',
  retention_policy    varchar(50) NOT NULL DEFAULT 'standard',
  organization_attnum int2,                    -- the row's organization comes from this column ...
  organization_id     varchar(255),            -- ... or is this fixed value (else the session's)
  tracked_by          name        NOT NULL DEFAULT session_user,
  tracked_at          timestamptz NOT NULL DEFAULT now(),
  CONSTRAINT tracked_table_operations CHECK (operations <@ ARRAY['INSERT', 'UPDATE', 'DELETE', 'TRUNCATE']
                                             AND cardinality(operations) > 0),
  CONSTRAINT tracked_table_one_organization CHECK (organization_attnum IS NULL OR organization_id IS NULL)
);
COMMENT ON TABLE audit.tracked_table IS
  'Tables whose changes are audited (audit.track_table()); columns by attribute number';
SELECT pg_catalog.pg_extension_config_dump('audit.tracked_table', '');

CREATE FUNCTION audit.record_change() RETURNS trigger
LANGUAGE C
AS 'MODULE_PATHNAME', 'audit_record_change';
COMMENT ON FUNCTION audit.record_change() IS
  'Trigger of tracked tables: one audit event per changed row (and per TRUNCATE), with the diff';

-- Internal: log a change-tracking event (reserved action) as the extension's owner.
CREATE FUNCTION audit.record_tracking_event(action text, tbl text, details jsonb) RETURNS void
LANGUAGE C VOLATILE
AS 'MODULE_PATHNAME', 'audit_record_tracking_event_sql';

-- Attribute numbers of named columns of a table (42703 for an unknown one).
CREATE FUNCTION audit.column_attnums(tbl regclass, columns text[]) RETURNS int2[]
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  c text;
  n int2;
  result int2[] := '{}';
BEGIN
  FOREACH c IN ARRAY coalesce(columns, '{}') LOOP
    SELECT a.attnum INTO n FROM pg_attribute a
     WHERE a.attrelid = tbl AND a.attname = c AND a.attnum > 0 AND NOT a.attisdropped;
    IF NOT FOUND THEN
      RAISE EXCEPTION 'column % of % does not exist', quote_ident(c), tbl USING ERRCODE = '42703',
        HINT = 'Name columns as they are in the table (case-sensitive).';
    END IF;
    result := result || n;
  END LOOP;
  RETURN result;
END
$$;

CREATE FUNCTION audit.track_table(tbl regclass,
                                  operations text[] DEFAULT ARRAY['INSERT', 'UPDATE', 'DELETE', 'TRUNCATE'],
                                  exclude_columns text[] DEFAULT '{}', hash_columns text[] DEFAULT '{}',
                                  full_rows boolean DEFAULT false,
                                  data_classification text DEFAULT 'CONFIDENTIAL',
                                  retention_policy text DEFAULT 'standard',
                                  organization_column text DEFAULT NULL, organization_id text DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  ops text[] := ARRAY(SELECT DISTINCT upper(o) FROM unnest(operations) o ORDER BY 1);
  excluded int2[];
  hashed int2[];
  org_attnum int2;
  kind "char";
BEGIN
  IF tbl IS NULL THEN
    RAISE EXCEPTION 'a table is needed' USING ERRCODE = '22004', HINT = 'audit.track_table(''schema.table'').';
  END IF;
  SELECT c.relkind INTO kind FROM pg_class c WHERE c.oid = tbl;
  IF kind NOT IN ('r', 'p') THEN
    RAISE EXCEPTION '% is not a table', tbl USING ERRCODE = '42809',
      HINT = 'Views, foreign tables and materialized views cannot be tracked.';
  END IF;
  IF (SELECT c.relnamespace FROM pg_class c WHERE c.oid = tbl) = 'audit'::regnamespace THEN
    RAISE EXCEPTION 'the tables of audit_db cannot be tracked' USING ERRCODE = '0A000',
      HINT = 'Their changes are audited by the extension itself.';
  END IF;
  IF operations IS NULL OR cardinality(ops) = 0
     OR NOT ops <@ ARRAY['DELETE', 'INSERT', 'TRUNCATE', 'UPDATE'] THEN
    RAISE EXCEPTION 'operations must be some of INSERT, UPDATE, DELETE, TRUNCATE' USING ERRCODE = '22023',
      HINT = 'For example ARRAY[''INSERT'', ''UPDATE''].';
  END IF;
  IF data_classification IS NULL OR NOT audit.is_data_classification(data_classification) THEN
    RAISE EXCEPTION 'unknown data classification %', coalesce(quote_literal(data_classification), 'NULL')
      USING ERRCODE = '22023', HINT = 'One of: PUBLIC, INTERNAL, CONFIDENTIAL, PHI, FINANCIAL.';
  END IF;
  IF organization_column IS NOT NULL AND organization_id IS NOT NULL THEN
    RAISE EXCEPTION 'give organization_column or organization_id, not both' USING ERRCODE = '22023',
      HINT = 'organization_column: each row names its organization; organization_id: one for all rows.';
  END IF;
  excluded := audit.column_attnums(tbl, exclude_columns);
  hashed := audit.column_attnums(tbl, hash_columns);
  IF excluded && hashed THEN
    RAISE EXCEPTION 'a column cannot be both excluded and hashed' USING ERRCODE = '22023',
      HINT = 'Excluded columns are left out; hashed ones are stored as SHA-256.';
  END IF;
  IF organization_column IS NOT NULL THEN
    org_attnum := (audit.column_attnums(tbl, ARRAY[organization_column]))[1];
  END IF;

  INSERT INTO audit.tracked_table AS t (table_name, operations, excluded_attnums, hashed_attnums, full_rows,
                                        data_classification, retention_policy, organization_attnum, organization_id)
  VALUES (tbl, ops, excluded, hashed, coalesce(full_rows, false), data_classification,
          coalesce(retention_policy, 'standard'), org_attnum, track_table.organization_id)
  ON CONFLICT ON CONSTRAINT tracked_table_pkey DO UPDATE
     SET operations = EXCLUDED.operations, excluded_attnums = EXCLUDED.excluded_attnums,
         hashed_attnums = EXCLUDED.hashed_attnums, full_rows = EXCLUDED.full_rows,
         data_classification = EXCLUDED.data_classification, retention_policy = EXCLUDED.retention_policy,
         organization_attnum = EXCLUDED.organization_attnum, organization_id = EXCLUDED.organization_id,
         tracked_by = session_user, tracked_at = now();

  IF NOT EXISTS (SELECT FROM pg_trigger WHERE tgrelid = tbl AND tgname = 'audit_db_changes') THEN
    EXECUTE format('CREATE TRIGGER audit_db_changes AFTER INSERT OR UPDATE OR DELETE ON %s'
                   ' FOR EACH ROW EXECUTE FUNCTION audit.record_change()', tbl);
    EXECUTE format('CREATE TRIGGER audit_db_truncate AFTER TRUNCATE ON %s'
                   ' FOR EACH STATEMENT EXECUTE FUNCTION audit.record_change()', tbl);
    -- ALWAYS: session_replication_role = replica does not silence them.
    EXECUTE format('ALTER TABLE %s ENABLE ALWAYS TRIGGER audit_db_changes', tbl);
    EXECUTE format('ALTER TABLE %s ENABLE ALWAYS TRIGGER audit_db_truncate', tbl);
  END IF;
  PERFORM audit.record_tracking_event('change_tracking.enable', tbl::text,
            (SELECT jsonb_build_object('operations', t.operations,
                                       'excluded_columns', audit.column_names(t.table_name, t.excluded_attnums),
                                       'hashed_columns', audit.column_names(t.table_name, t.hashed_attnums),
                                       'full_rows', t.full_rows, 'data_classification', t.data_classification,
                                       'retention_policy', t.retention_policy)
               FROM audit.tracked_table t WHERE t.table_name = tbl));
END
$$;
COMMENT ON FUNCTION audit.track_table(regclass, text[], text[], text[], boolean, text, text, text, text) IS
  'Audit every change of a table: operations, excluded and hashed columns, full rows or diffs, classification, '
  'retention, organization (column or fixed); again to change the options';

CREATE FUNCTION audit.untrack_table(tbl regclass) RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  -- The registry row goes first: the event trigger lets the triggers go then.
  DELETE FROM audit.tracked_table t WHERE t.table_name = tbl;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'table % is not tracked', tbl USING ERRCODE = '55000', HINT = 'See audit.tracked_tables.';
  END IF;
  EXECUTE format('DROP TRIGGER IF EXISTS audit_db_changes ON %s', tbl);
  EXECUTE format('DROP TRIGGER IF EXISTS audit_db_truncate ON %s', tbl);
  PERFORM audit.record_tracking_event('change_tracking.disable', tbl::text, '{}');
END
$$;
COMMENT ON FUNCTION audit.untrack_table(regclass) IS 'Stop auditing a table''s changes (logged)';

-- Names of attribute numbers (dropped columns left out).
CREATE FUNCTION audit.column_names(tbl regclass, attnums int2[]) RETURNS text[]
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
  SELECT coalesce(array_agg(a.attname::text ORDER BY a.attnum), '{}')
    FROM pg_attribute a
   WHERE a.attrelid = tbl AND a.attnum = ANY (attnums) AND NOT a.attisdropped
$$;

CREATE VIEW audit.tracked_tables AS
SELECT t.table_name, t.operations,
       audit.column_names(t.table_name, t.excluded_attnums) AS excluded_columns,
       audit.column_names(t.table_name, t.hashed_attnums) AS hashed_columns,
       t.full_rows, t.data_classification, t.retention_policy,
       (audit.column_names(t.table_name, ARRAY[t.organization_attnum]))[1] AS organization_column,
       t.organization_id, t.tracked_by, t.tracked_at,
       EXISTS (SELECT FROM pg_trigger g WHERE g.tgrelid = t.table_name AND g.tgname = 'audit_db_changes'
                                          AND g.tgenabled = 'A') AS trigger_active
  FROM audit.tracked_table t;
COMMENT ON VIEW audit.tracked_tables IS 'Tracked tables with their options (column names as they are now)';

-- DDL on tracked tables ------------------------------------------------------------

-- ALTER TABLE (and the like) of a tracked table is logged as '<table>.ddl';
-- disabling a tracking trigger is refused.
CREATE FUNCTION audit.log_tracked_ddl() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  c record;
BEGIN
  IF to_regclass('audit.tracked_table') IS NULL THEN
    RETURN;
  END IF;
  -- (A table whose tracking was set up in this very transaction is being
  -- set up by audit.track_table(): its own ALTER TABLE is not logged.)
  FOR c IN SELECT DISTINCT d.objid::regclass AS tbl, d.command_tag,
                  t.xmin = pg_current_xact_id()::xid AS setting_up
             FROM pg_event_trigger_ddl_commands() d
             JOIN audit.tracked_table t ON t.table_name = d.objid
            WHERE d.classid = 'pg_class'::regclass LOOP
    -- 'D' disabled; 'R' fires only under session_replication_role = replica.
    IF EXISTS (SELECT FROM pg_trigger g WHERE g.tgrelid = c.tbl
                  AND g.tgname IN ('audit_db_changes', 'audit_db_truncate') AND g.tgenabled IN ('D', 'R')) THEN
      RAISE EXCEPTION 'the change tracking triggers of % cannot be disabled', c.tbl USING ERRCODE = '42501',
        HINT = 'Stop tracking with audit.untrack_table() (if you are allowed to); that is logged.';
    END IF;
    IF NOT c.setting_up THEN
      PERFORM audit.record_tracking_event('change_tracking.ddl', c.tbl::text,
                jsonb_build_object('command_tag', c.command_tag, 'statement', left(current_query(), 2000)));
    END IF;
  END LOOP;
END
$$;
CREATE EVENT TRIGGER audit_db_tracked_ddl ON ddl_command_end
  WHEN TAG IN ('ALTER TABLE', 'CREATE INDEX', 'ALTER INDEX', 'CREATE TRIGGER', 'COMMENT', 'GRANT', 'REVOKE')
  EXECUTE FUNCTION audit.log_tracked_ddl();

-- DROP TABLE of a tracked table is logged and forgets it; DROP TRIGGER of a
-- tracking trigger (without dropping the table) is refused.
CREATE FUNCTION audit.log_tracked_drop() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  d record;
BEGIN
  IF to_regclass('audit.tracked_table') IS NULL THEN
    RETURN;
  END IF;
  FOR d IN SELECT o.objid, o.object_identity FROM pg_event_trigger_dropped_objects() o
            WHERE o.classid = 'pg_class'::regclass AND o.objsubid = 0
              AND o.objid IN (SELECT t.table_name::oid FROM audit.tracked_table t) LOOP
    DELETE FROM audit.tracked_table t WHERE t.table_name::oid = d.objid;
    PERFORM audit.record_tracking_event('change_tracking.drop', d.object_identity,
              jsonb_build_object('statement', left(current_query(), 2000)));
  END LOOP;
  IF EXISTS (SELECT FROM pg_event_trigger_dropped_objects() o
              WHERE o.object_type = 'trigger'
                AND (o.address_names)[array_length(o.address_names, 1)] IN ('audit_db_changes', 'audit_db_truncate')
                AND EXISTS (SELECT FROM audit.tracked_table t
                             WHERE t.table_name = to_regclass(format('%I.%I', o.address_names[1], o.address_names[2])))) THEN
    RAISE EXCEPTION 'the change tracking triggers of a tracked table cannot be dropped' USING ERRCODE = '42501',
      HINT = 'Stop tracking with audit.untrack_table() (if you are allowed to); that is logged.';
  END IF;
END
$$;
CREATE EVENT TRIGGER audit_db_tracked_drop ON sql_drop
  EXECUTE FUNCTION audit.log_tracked_drop();
-- Alerts: raised by hand, by callers through audit.raise_alert(), or by the
-- alert rules (rows of audit.alert_rules, evaluated by
-- audit.evaluate_alert_rules(): the background worker every
-- audit_db.alert_interval, or any caller allowed to). An open alert (not
-- resolved) with the same dedup_key is not raised twice: a rule that fires
-- again for the same cause bumps its occurrences and last_seen_at instead.
-- Tenant isolation applies (organization_id; NULL: a system alert, visible
-- to every-organization readers only).

CREATE DOMAIN audit.alert_severity AS text
  CONSTRAINT alert_severity_values CHECK (VALUE IN ('LOW', 'MEDIUM', 'HIGH', 'CRITICAL'));
CREATE DOMAIN audit.alert_type AS text
  CONSTRAINT alert_type_values CHECK (VALUE IN ('SECURITY', 'COMPLIANCE', 'PERFORMANCE', 'SYSTEM'));

CREATE TABLE audit.alert_rules (
  rule_id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  name              text   NOT NULL UNIQUE CHECK (name <> ''),
  -- failure_burst:          {"threshold": 5, "window_minutes": 10, "action": "login" (optional, LIKE pattern)}
  --                         more than threshold - 1 failures of one action by one principal in the window
  -- phi_outside_hours:      {"start_hour": 7, "end_hour": 19, "time_zone": "UTC", "window_minutes": 60}
  --                         PHI events whose local hour is outside [start_hour, end_hour)
  -- verification_failure:   {}  the last audit.verify() run found problems
  -- seal_lag:               {"max_seconds": 300}  audit.chain_status.seal_lag above it
  -- default_partition_rows: {"min_rows": 1}  rows waiting in the default partition
  -- maintenance_error:      {}  the last maintenance run failed
  rule_type         text   NOT NULL CHECK (rule_type IN ('failure_burst', 'phi_outside_hours',
                                                         'verification_failure', 'seal_lag',
                                                         'default_partition_rows', 'maintenance_error')),
  organization_id   varchar(255),               -- events of this organization only (NULL: all)
  params            jsonb  NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(params) = 'object'),
  severity          audit.alert_severity NOT NULL DEFAULT 'HIGH',
  alert_type        audit.alert_type     NOT NULL DEFAULT 'SECURITY',
  enabled           boolean NOT NULL DEFAULT true,
  description       text,
  last_evaluated_at timestamptz,
  created_at        timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE audit.alert_rules IS 'Alert rules evaluated in the database (rows, not code)';
SELECT pg_catalog.pg_extension_config_dump('audit.alert_rules', '');

CREATE TABLE audit.alerts (
  alert_id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  organization_id  varchar(255),
  severity         audit.alert_severity NOT NULL,
  alert_type       audit.alert_type     NOT NULL,
  title            text        NOT NULL CHECK (title <> ''),
  description      text,
  source           text        NOT NULL DEFAULT 'api',
  correlation_id   varchar(255),
  metadata         jsonb       NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(metadata) = 'object'),
  rule_id          bigint      REFERENCES audit.alert_rules ON DELETE SET NULL,
  dedup_key        text,
  occurrences      integer     NOT NULL DEFAULT 1,
  created_at       timestamptz NOT NULL DEFAULT now(),
  last_seen_at     timestamptz NOT NULL DEFAULT now(),
  acknowledged     boolean     NOT NULL DEFAULT false,
  acknowledged_by  text,
  acknowledged_at  timestamptz,
  resolved         boolean     NOT NULL DEFAULT false,
  resolved_by      text,
  resolved_at      timestamptz,
  resolution_notes text,
  CONSTRAINT alerts_acknowledged_when CHECK (acknowledged = (acknowledged_at IS NOT NULL)),
  CONSTRAINT alerts_resolved_when CHECK (resolved = (resolved_at IS NOT NULL))
);
-- One open alert per cause.
CREATE UNIQUE INDEX alerts_open_cause ON audit.alerts (dedup_key) WHERE NOT resolved AND dedup_key IS NOT NULL;
CREATE INDEX alerts_open_idx ON audit.alerts (organization_id, severity) WHERE NOT resolved;
CREATE INDEX alerts_created_idx ON audit.alerts (created_at);
COMMENT ON TABLE audit.alerts IS 'Alerts raised by rules or callers; one open alert per dedup_key';

-- Raise an alert, or, when an open alert has the same dedup_key, count one
-- more occurrence of it. Returns the alert's id.
CREATE FUNCTION audit.raise_alert(severity text, alert_type text, title text, description text DEFAULT NULL,
                                  organization_id text DEFAULT NULL, source text DEFAULT 'api',
                                  correlation_id text DEFAULT NULL, metadata jsonb DEFAULT '{}',
                                  dedup_key text DEFAULT NULL, rule_id bigint DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
  id bigint;
BEGIN
  IF raise_alert.title IS NULL OR raise_alert.title = '' THEN
    RAISE EXCEPTION 'an alert needs a title' USING ERRCODE = '22004', HINT = 'Say in a few words what happened.';
  END IF;
  IF raise_alert.severity IS NULL OR raise_alert.severity NOT IN ('LOW', 'MEDIUM', 'HIGH', 'CRITICAL') THEN
    RAISE EXCEPTION 'unknown alert severity %', coalesce(quote_literal(raise_alert.severity), 'NULL') USING ERRCODE = '22023',
      HINT = 'One of: LOW, MEDIUM, HIGH, CRITICAL.';
  END IF;
  IF raise_alert.alert_type IS NULL OR raise_alert.alert_type NOT IN ('SECURITY', 'COMPLIANCE', 'PERFORMANCE', 'SYSTEM') THEN
    RAISE EXCEPTION 'unknown alert type %', coalesce(quote_literal(raise_alert.alert_type), 'NULL') USING ERRCODE = '22023',
      HINT = 'One of: SECURITY, COMPLIANCE, PERFORMANCE, SYSTEM.';
  END IF;
  IF raise_alert.metadata IS NULL OR jsonb_typeof(raise_alert.metadata) <> 'object' THEN
    RAISE EXCEPTION 'alert metadata must be a JSON object' USING ERRCODE = '22023', HINT = 'Pass ''{}'' for none.';
  END IF;
  IF raise_alert.dedup_key IS NOT NULL THEN
    UPDATE audit.alerts a SET occurrences = a.occurrences + 1, last_seen_at = now(),
                              metadata = a.metadata || raise_alert.metadata
     WHERE a.dedup_key = raise_alert.dedup_key AND NOT a.resolved
    RETURNING a.alert_id INTO id;
    IF FOUND THEN
      RETURN id;
    END IF;
  END IF;
  INSERT INTO audit.alerts AS a (organization_id, severity, alert_type, title, description, source, correlation_id,
                                 metadata, dedup_key, rule_id)
  VALUES (raise_alert.organization_id, raise_alert.severity, raise_alert.alert_type, raise_alert.title,
          raise_alert.description, coalesce(raise_alert.source, 'api'), raise_alert.correlation_id,
          raise_alert.metadata, raise_alert.dedup_key, raise_alert.rule_id)
  ON CONFLICT (dedup_key) WHERE NOT resolved AND dedup_key IS NOT NULL
  DO UPDATE SET occurrences = a.occurrences + 1, last_seen_at = now()
  RETURNING a.alert_id INTO id;
  RETURN id;
END
$$;
COMMENT ON FUNCTION audit.raise_alert(text, text, text, text, text, text, text, jsonb, text, bigint) IS
  'Raise an alert (or count one more occurrence of the open alert with the same dedup_key); returns its id';

-- Who acts on an alert: the principal the session acts as.
CREATE FUNCTION audit.alert_actor() RETURNS text
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT coalesce(audit.current_principal(), session_user::text) $$;

-- True for an alert the caller can see; P0002 otherwise.
CREATE FUNCTION audit.alert_exists(alert_id bigint) RETURNS boolean
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  IF NOT EXISTS (SELECT FROM audit.alerts a WHERE a.alert_id = alert_exists.alert_id) THEN
    RAISE EXCEPTION 'alert % does not exist', alert_id USING ERRCODE = 'P0002',
      HINT = 'See audit.active_alerts() for the open alerts you can see.';
  END IF;
  RETURN true;
END
$$;

CREATE FUNCTION audit.acknowledge_alert(alert_id bigint) RETURNS boolean
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  UPDATE audit.alerts a SET acknowledged = true, acknowledged_by = audit.alert_actor(), acknowledged_at = now()
   WHERE a.alert_id = acknowledge_alert.alert_id AND NOT a.acknowledged;
  RETURN FOUND OR NOT audit.alert_exists(alert_id);       -- false: acknowledged before
END
$$;
COMMENT ON FUNCTION audit.acknowledge_alert(bigint) IS 'Acknowledge an alert; false if it was acknowledged before';

CREATE FUNCTION audit.resolve_alert(alert_id bigint, resolution_notes text DEFAULT NULL) RETURNS boolean
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  UPDATE audit.alerts a
     SET resolved = true, resolved_by = audit.alert_actor(), resolved_at = now(),
         resolution_notes = resolve_alert.resolution_notes,
         acknowledged = true, acknowledged_by = coalesce(a.acknowledged_by, audit.alert_actor()),
         acknowledged_at = coalesce(a.acknowledged_at, now())
   WHERE a.alert_id = resolve_alert.alert_id AND NOT a.resolved;
  RETURN FOUND OR NOT audit.alert_exists(alert_id);       -- false: resolved before
END
$$;
COMMENT ON FUNCTION audit.resolve_alert(bigint, text) IS 'Resolve an alert (acknowledging it too); false if resolved before';

CREATE FUNCTION audit.active_alerts(min_severity text DEFAULT 'LOW')
RETURNS SETOF audit.alerts
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
  SELECT * FROM audit.alerts a
   WHERE NOT a.resolved
     AND array_position(ARRAY['LOW', 'MEDIUM', 'HIGH', 'CRITICAL'], a.severity::text)
         >= coalesce(array_position(ARRAY['LOW', 'MEDIUM', 'HIGH', 'CRITICAL'], min_severity), 1)
   ORDER BY array_position(ARRAY['LOW', 'MEDIUM', 'HIGH', 'CRITICAL'], a.severity::text) DESC, a.created_at
$$;
COMMENT ON FUNCTION audit.active_alerts(text) IS 'Open (unresolved) alerts at or above a severity, most severe first';

CREATE FUNCTION audit.query_alerts(severity text DEFAULT NULL, alert_type text DEFAULT NULL,
                                   status text DEFAULT NULL, organization_id text DEFAULT NULL,
                                   since timestamptz DEFAULT NULL, until timestamptz DEFAULT NULL,
                                   max_rows integer DEFAULT 1000)
RETURNS SETOF audit.alerts
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  IF status IS NOT NULL AND status NOT IN ('open', 'acknowledged', 'resolved') THEN
    RAISE EXCEPTION 'unknown alert status %', quote_literal(status) USING ERRCODE = '22023',
      HINT = 'One of: open (not acknowledged), acknowledged (not resolved), resolved.';
  END IF;
  IF max_rows IS NULL OR max_rows < 1 THEN
    RAISE EXCEPTION 'max_rows must be positive' USING ERRCODE = '22023', HINT = 'The default is 1000.';
  END IF;
  RETURN QUERY
  SELECT * FROM audit.alerts a
   WHERE (query_alerts.severity IS NULL OR a.severity = query_alerts.severity)
     AND (query_alerts.alert_type IS NULL OR a.alert_type = query_alerts.alert_type)
     AND (query_alerts.organization_id IS NULL OR a.organization_id = query_alerts.organization_id)
     AND (since IS NULL OR a.created_at >= since)
     AND (until IS NULL OR a.created_at < until)
     AND (status IS NULL
          OR (status = 'open' AND NOT a.acknowledged AND NOT a.resolved)
          OR (status = 'acknowledged' AND a.acknowledged AND NOT a.resolved)
          OR (status = 'resolved' AND a.resolved))
   ORDER BY a.created_at DESC, a.alert_id DESC
   LIMIT max_rows;
END
$$;
COMMENT ON FUNCTION audit.query_alerts(text, text, text, text, timestamptz, timestamptz, integer) IS
  'Alerts filtered by severity, type, status (open, acknowledged, resolved), organization and creation time';

CREATE FUNCTION audit.alert_statistics(since timestamptz DEFAULT NULL)
RETURNS TABLE (dimension text, value text, total bigint, open bigint, acknowledged bigint, resolved bigint)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
  WITH a AS (SELECT * FROM audit.alerts a WHERE since IS NULL OR a.created_at >= since)
  SELECT d.dimension, d.value, count(*),
         count(*) FILTER (WHERE NOT a.acknowledged AND NOT a.resolved),
         count(*) FILTER (WHERE a.acknowledged AND NOT a.resolved),
         count(*) FILTER (WHERE a.resolved)
    FROM a, LATERAL (VALUES ('severity', a.severity::text), ('type', a.alert_type::text),
                            ('status', CASE WHEN a.resolved THEN 'resolved'
                                            WHEN a.acknowledged THEN 'acknowledged' ELSE 'open' END),
                            ('all', 'all')) AS d(dimension, value)
   GROUP BY d.dimension, d.value
   ORDER BY d.dimension, d.value
$$;
COMMENT ON FUNCTION audit.alert_statistics(timestamptz) IS
  'Alert counts by severity, type and status (and in all), with how many are open, acknowledged, resolved';

CREATE FUNCTION audit.cleanup_alerts(older_than_days integer DEFAULT 90) RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  n bigint;
BEGIN
  IF older_than_days IS NULL OR older_than_days < 0 THEN
    RAISE EXCEPTION 'older_than_days must be 0 or more' USING ERRCODE = '22023',
      HINT = 'Resolved alerts resolved longer ago than this many days are deleted.';
  END IF;
  DELETE FROM audit.alerts a WHERE a.resolved AND a.resolved_at < now() - make_interval(days => older_than_days);
  GET DIAGNOSTICS n = ROW_COUNT;
  RETURN n;
END
$$;
COMMENT ON FUNCTION audit.cleanup_alerts(integer) IS 'Delete alerts resolved more than N days ago; returns how many';

-- Rule evaluation ---------------------------------------------------------------

-- Where the audit_log rows of the last minutes start: transaction ids noted
-- at each evaluation let the rules read recent rows through the BRIN index
-- on (transaction_id, id), never the whole log.
CREATE TABLE audit.alert_clock (
  noted_at timestamptz PRIMARY KEY,
  next_xid bigint      NOT NULL
);
COMMENT ON TABLE audit.alert_clock IS
  'Internal: the next transaction id at past rule evaluations (bounds the rows a time window can hold)';

-- The lowest transaction id a row of the last `window` can have: rows are
-- stamped with their inserting transaction, which began before they were
-- written. Events written with an older event time are still found, through
-- their transaction; events back-dated further than the window are not.
CREATE FUNCTION audit.alert_window_xid(window_length interval) RETURNS bigint
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
  SELECT coalesce((SELECT c.next_xid FROM audit.alert_clock c
                    WHERE c.noted_at <= now() - window_length - interval '1 minute'
                    ORDER BY c.noted_at DESC LIMIT 1), 0)
$$;

-- One rule's findings: a dedup key per cause, with its title, description,
-- organization and metadata.
CREATE FUNCTION audit.alert_rule_findings(r audit.alert_rules)
RETURNS TABLE (cause text, organization_id text, title text, description text, metadata jsonb)
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
SET enable_seqscan = off
AS $$
DECLARE
  p jsonb := r.params;
  win interval;
BEGIN
  IF r.rule_type = 'failure_burst' THEN
    win := make_interval(mins => coalesce((p->>'window_minutes')::int, 10));
    RETURN QUERY
    SELECT format('%s|%s|%s', l.organization_id, l.principal_id, l.action), l.organization_id::text,
           format('%s failures of %s by %s', count(*), l.action, l.principal_id),
           format('%s failed %s events by principal %s within %s (threshold %s)', count(*), l.action,
                  l.principal_id, win, coalesce((p->>'threshold')::int, 5)),
           jsonb_build_object('principal_id', l.principal_id, 'action', l.action, 'failures', count(*),
                              'first', min(l."timestamp"), 'last', max(l."timestamp"),
                              'evidence', max(l.id)::text)
      FROM audit.audit_log l
     WHERE l.transaction_id >= audit.alert_window_xid(win)
       AND l."timestamp" >= now() - win
       AND l.status = 'failure'
       AND (r.organization_id IS NULL OR l.organization_id = r.organization_id)
       AND (p->>'action' IS NULL OR l.action LIKE p->>'action')
     GROUP BY l.organization_id, l.principal_id, l.action
    HAVING count(*) >= coalesce((p->>'threshold')::int, 5);
  ELSIF r.rule_type = 'phi_outside_hours' THEN
    win := make_interval(mins => coalesce((p->>'window_minutes')::int, 60));
    RETURN QUERY
    SELECT format('%s|%s', l.organization_id, l.principal_id), l.organization_id::text,
           format('PHI accessed outside hours by %s', l.principal_id),
           format('%s PHI events by %s outside %s:00-%s:00 (%s)', count(*), l.principal_id,
                  coalesce((p->>'start_hour')::int, 7), coalesce((p->>'end_hour')::int, 19),
                  coalesce(p->>'time_zone', 'UTC')),
           jsonb_build_object('principal_id', l.principal_id, 'events', count(*),
                              'ids', jsonb_agg(l.id ORDER BY l.id), 'evidence', max(l.id)::text)
      FROM audit.audit_log l
     WHERE l.transaction_id >= audit.alert_window_xid(win)
       AND l."timestamp" >= now() - win
       AND l.data_classification = 'PHI'
       AND (r.organization_id IS NULL OR l.organization_id = r.organization_id)
       AND NOT (extract(hour FROM l."timestamp" AT TIME ZONE coalesce(p->>'time_zone', 'UTC'))
                  >= coalesce((p->>'start_hour')::int, 7)
                AND extract(hour FROM l."timestamp" AT TIME ZONE coalesce(p->>'time_zone', 'UTC'))
                  < coalesce((p->>'end_hour')::int, 19))
     GROUP BY l.organization_id, l.principal_id;
  ELSIF r.rule_type = 'verification_failure' THEN
    RETURN QUERY
    SELECT 'verification', NULL::text, 'audit.verify() found problems',
           format('verification run %s at %s found %s problems: %s', v.run_id, v.started_at, v.problems,
                  v.first_problem),
           jsonb_build_object('run_id', v.run_id, 'problems', v.problems, 'evidence', v.run_id::text)
      FROM (SELECT * FROM audit.audit_integrity_log ORDER BY started_at DESC LIMIT 1) v
     WHERE v.problems > 0;
  ELSIF r.rule_type = 'seal_lag' THEN
    RETURN QUERY
    SELECT 'seal_lag', NULL::text, 'audit rows are not being sealed',
           format('seal lag %s (threshold %s s); %s rows unsealed; held back by pid %s',
                  s.seal_lag, coalesce((p->>'max_seconds')::int, 300), s.unsealed_rows, s.holding_back_pid),
           jsonb_build_object('seal_lag_seconds', extract(epoch FROM s.seal_lag), 'unsealed_rows', s.unsealed_rows,
                              'evidence', s.oldest_unsealed_xid::text)
      FROM audit.chain_status_row() s
     WHERE s.seal_lag > make_interval(secs => coalesce((p->>'max_seconds')::int, 300));
  ELSIF r.rule_type = 'default_partition_rows' THEN
    RETURN QUERY
    SELECT 'default_partition', NULL::text, 'audit rows in the default partition',
           format('%s rows lie outside every monthly partition; maintenance moves them once their month exists', d.n),
           jsonb_build_object('rows', d.n, 'evidence', d.first_id::text)
      FROM (SELECT count(*) AS n, min(id) AS first_id FROM audit.audit_log_default) d
     WHERE d.n >= coalesce((p->>'min_rows')::int, 1);
  ELSIF r.rule_type = 'maintenance_error' THEN
    RETURN QUERY
    SELECT 'maintenance', NULL::text, 'audit_db maintenance failed',
           format('maintenance run %s (%s) at %s: %s', m.run_id, m.via, m.started_at,
                  array_to_string(m.errors, '; ')),
           jsonb_build_object('run_id', m.run_id, 'errors', to_jsonb(m.errors), 'evidence', m.run_id::text)
      FROM (SELECT * FROM audit.maintenance_run WHERE status <> 'running' ORDER BY started_at DESC LIMIT 1) m
     WHERE m.status IN ('errors', 'interrupted');
  END IF;
END
$$;

-- Evaluate every enabled rule once (or only the named one, enabled or not:
-- to try a rule before enabling it): a finding whose cause has an open alert
-- updates it (one more occurrence, when the evidence is new); one whose
-- cause's last alert was resolved with the same evidence is not raised
-- again; anything else raises an alert. Returns per rule the alerts raised
-- and the open ones it still sees.
CREATE FUNCTION audit.evaluate_alert_rules(only_rule text DEFAULT NULL)
RETURNS TABLE (rule_name text, raised integer, still_open integer)
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  r   audit.alert_rules;
  f   record;
  key text;
  evidence text;
  open_alert audit.alerts;
BEGIN
  INSERT INTO audit.alert_clock (noted_at, next_xid)
  VALUES (now(), pg_snapshot_xmax(pg_current_snapshot())::text::bigint)
  ON CONFLICT (noted_at) DO NOTHING;
  DELETE FROM audit.alert_clock WHERE noted_at < now() - interval '2 days';

  IF only_rule IS NOT NULL AND NOT EXISTS (SELECT FROM audit.alert_rules x WHERE x.name = only_rule) THEN
    RAISE EXCEPTION 'alert rule % does not exist', quote_literal(only_rule) USING ERRCODE = 'P0002',
      HINT = 'See audit.alert_rules.';
  END IF;
  FOR r IN SELECT * FROM audit.alert_rules x
            WHERE (only_rule IS NULL AND x.enabled) OR x.name = only_rule ORDER BY x.rule_id LOOP
    rule_name := r.name;
    raised := 0;
    still_open := 0;
    FOR f IN SELECT * FROM audit.alert_rule_findings(r) LOOP
      key := format('rule:%s:%s', r.rule_id, f.cause);
      evidence := f.metadata->>'evidence';
      SELECT * INTO open_alert FROM audit.alerts a WHERE a.dedup_key = key AND NOT a.resolved FOR UPDATE;
      IF FOUND THEN
        still_open := still_open + 1;
        IF open_alert.metadata->>'evidence' IS DISTINCT FROM evidence THEN
          UPDATE audit.alerts a SET occurrences = a.occurrences + 1, last_seen_at = now(),
                                    metadata = f.metadata, description = f.description
           WHERE a.alert_id = open_alert.alert_id;
        END IF;
        CONTINUE;
      END IF;
      IF EXISTS (SELECT FROM audit.alerts a
                  WHERE a.dedup_key = key AND a.resolved AND a.metadata->>'evidence' IS NOT DISTINCT FROM evidence) THEN
        CONTINUE;     -- resolved, and nothing new happened since
      END IF;
      PERFORM audit.raise_alert(r.severity, r.alert_type, f.title, f.description, f.organization_id,
                                'rule:' || r.name, NULL, f.metadata, key, r.rule_id);
      raised := raised + 1;
    END LOOP;
    UPDATE audit.alert_rules x SET last_evaluated_at = now() WHERE x.rule_id = r.rule_id;
    RETURN NEXT;
  END LOOP;
END
$$;
COMMENT ON FUNCTION audit.evaluate_alert_rules(text) IS
  'Evaluate the enabled alert rules once (the worker does every audit_db.alert_interval); alerts raised per rule';
-- Errors and configuration changes.
--
-- audit.error_log: errors of the extension's own jobs (the worker's seal,
-- maintenance, alert and report runs, written by the worker in a
-- transaction of their own; maintenance steps that failed, copied from
-- audit.maintenance_run) and of callers that report through
-- audit.report_error(). audit.error_aggregation groups them by a key
-- (source, SQLSTATE, message with numbers and quoted values blanked) with
-- count, first and last seen, and the trend of the last hour against the
-- hour before.
--
-- audit.config_change_event: every change of an audit_db setting (ALTER
-- SYSTEM, ALTER DATABASE / ROLE ... SET, seen by the utility hook of
-- src/audit_db.c) and of a policy row (retention policies, erasure
-- exemptions, alert rules, report templates and schedules): who, when, old,
-- new, and the reason given in audit_db.change_reason (SET LOCAL it first).

CREATE TABLE audit.error_log (
  error_id        bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  occurred_at     timestamptz NOT NULL DEFAULT clock_timestamp(),
  source          text        NOT NULL CHECK (source <> ''),
  organization_id varchar(255),
  severity        text        NOT NULL DEFAULT 'ERROR' CHECK (severity IN ('WARNING', 'ERROR', 'FATAL')),
  sqlstate        char(5),
  message         text        NOT NULL CHECK (message <> ''),
  detail          text,
  context         jsonb       NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(context) = 'object'),
  reported_by     name        NOT NULL DEFAULT session_user,
  error_key       text        NOT NULL
);
CREATE INDEX error_log_key_idx ON audit.error_log (error_key, occurred_at);
CREATE INDEX error_log_time_idx ON audit.error_log (occurred_at);
COMMENT ON TABLE audit.error_log IS
  'Errors of audit_db''s own jobs and of callers reporting through audit.report_error()';

-- The aggregation key of an error: numbers and quoted values blanked, so
-- that "row 12 failed" and "row 13 failed" count together.
CREATE FUNCTION audit.error_key(source text, sqlstate text, message text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
  SELECT source || ' ' || coalesce(sqlstate, '-----') || ' ' ||
         regexp_replace(regexp_replace(message, '("[^"]*"|''[^'']*'')', '?', 'g'), '[0-9]+', '#', 'g')
$$;

CREATE FUNCTION audit.report_error(source text, message text, sqlstate text DEFAULT NULL, detail text DEFAULT NULL,
                                   context jsonb DEFAULT '{}', organization_id text DEFAULT NULL,
                                   severity text DEFAULT 'ERROR')
RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  id  bigint;
  org text := coalesce(report_error.organization_id, audit.current_organization());
BEGIN
  -- Runs as the owner (callers need no grant on the table); a session acting
  -- for an organization reports for that organization only.
  IF audit.current_organization() IS NOT NULL AND org <> audit.current_organization() THEN
    RAISE EXCEPTION 'permission denied to report errors for organization %', quote_literal(org)
      USING ERRCODE = '42501', HINT = format('The session acts for organization %L.', audit.current_organization());
  END IF;
  IF source IS NULL OR source = '' OR message IS NULL OR message = '' THEN
    RAISE EXCEPTION 'an error report needs a source and a message' USING ERRCODE = '22004',
      HINT = 'source names the component (e.g. ''billing-api''), message what failed.';
  END IF;
  IF sqlstate IS NOT NULL AND sqlstate !~ '^[0-9A-Z]{5}$' THEN
    RAISE EXCEPTION 'invalid SQLSTATE %', quote_literal(sqlstate) USING ERRCODE = '22023',
      HINT = 'Five digits or upper-case letters, or NULL.';
  END IF;
  IF severity IS NULL OR severity NOT IN ('WARNING', 'ERROR', 'FATAL') THEN
    RAISE EXCEPTION 'unknown error severity %', coalesce(quote_literal(severity), 'NULL') USING ERRCODE = '22023',
      HINT = 'One of: WARNING, ERROR, FATAL.';
  END IF;
  IF context IS NULL OR jsonb_typeof(context) <> 'object' THEN
    RAISE EXCEPTION 'error context must be a JSON object' USING ERRCODE = '22023', HINT = 'Pass ''{}'' for none.';
  END IF;
  INSERT INTO audit.error_log (source, organization_id, severity, sqlstate, message, detail, context, error_key)
  VALUES (source, org, severity, sqlstate, message, detail, context,
          audit.error_key(source, sqlstate, message))
  RETURNING error_id INTO id;
  RETURN id;
END
$$;
COMMENT ON FUNCTION audit.report_error(text, text, text, text, jsonb, text, text) IS
  'Record an error in audit.error_log (aggregated in audit.error_aggregation); returns its id';

CREATE VIEW audit.error_aggregation WITH (security_invoker = true) AS
SELECT e.error_key,
       min(e.source) AS source,
       min(e.sqlstate) AS sqlstate,
       (array_agg(e.message ORDER BY e.occurred_at DESC))[1] AS last_message,
       count(*) AS occurrences,
       min(e.occurred_at) AS first_seen,
       max(e.occurred_at) AS last_seen,
       count(*) FILTER (WHERE e.occurred_at >= now() - interval '1 hour') AS last_hour,
       count(*) FILTER (WHERE e.occurred_at >= now() - interval '2 hours'
                          AND e.occurred_at < now() - interval '1 hour') AS previous_hour,
       CASE WHEN count(*) FILTER (WHERE e.occurred_at >= now() - interval '1 hour')
                 > count(*) FILTER (WHERE e.occurred_at >= now() - interval '2 hours'
                                      AND e.occurred_at < now() - interval '1 hour') THEN 'rising'
            WHEN count(*) FILTER (WHERE e.occurred_at >= now() - interval '1 hour')
                 < count(*) FILTER (WHERE e.occurred_at >= now() - interval '2 hours'
                                      AND e.occurred_at < now() - interval '1 hour') THEN 'falling'
            ELSE 'steady' END AS trend
  FROM audit.error_log e
 GROUP BY e.error_key;
COMMENT ON VIEW audit.error_aggregation IS
  'Errors by key: count, first and last seen, the last hour against the hour before (rising, falling, steady)';

-- Maintenance steps that failed are errors of the extension's own jobs.
CREATE FUNCTION audit.log_maintenance_errors() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  INSERT INTO audit.error_log (source, message, context, error_key)
  SELECT 'maintenance', m, jsonb_build_object('run_id', NEW.run_id, 'via', NEW.via),
         audit.error_key('maintenance', NULL, m)
    FROM unnest(NEW.errors) AS m
   WHERE m IS NOT NULL AND m <> ''
     AND (TG_OP = 'INSERT' OR OLD.errors IS NULL OR NOT m = ANY (OLD.errors));
  RETURN NULL;
END
$$;
CREATE TRIGGER maintenance_run_errors
  AFTER INSERT OR UPDATE OF errors ON audit.maintenance_run
  FOR EACH ROW WHEN (NEW.errors IS NOT NULL) EXECUTE FUNCTION audit.log_maintenance_errors();

-- Configuration changes ---------------------------------------------------------------

CREATE TABLE audit.config_change_event (
  change_id  bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  changed_at timestamptz NOT NULL DEFAULT clock_timestamp(),
  changed_by name        NOT NULL DEFAULT session_user,
  -- 'setting' (name: the setting) or 'table' (name: the policy table)
  kind       text        NOT NULL CHECK (kind IN ('setting', 'table')),
  name       text        NOT NULL,
  operation  text        NOT NULL,        -- ALTER SYSTEM, ALTER DATABASE, ALTER ROLE; INSERT, UPDATE, DELETE
  scope      text,                        -- for settings: the database or role (ALTER DATABASE / ROLE)
  old_value  jsonb,
  new_value  jsonb,
  reason     text
);
CREATE INDEX config_change_event_time_idx ON audit.config_change_event (changed_at);
COMMENT ON TABLE audit.config_change_event IS
  'Every change of an audit_db setting or policy row: who, when, old, new, reason (audit_db.change_reason)';

-- The reason given for the change in progress (SET LOCAL audit_db.change_reason = '...').
CREATE FUNCTION audit.change_reason() RETURNS text
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT nullif(current_setting('audit_db.change_reason', true), '') $$;

CREATE FUNCTION audit.log_config_change() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  -- Bookkeeping columns (when a rule or report last ran) are not configuration.
  IF TG_OP = 'UPDATE' AND to_jsonb(OLD) - '{last_run_at,next_run_at,last_evaluated_at}'::text[]
                          = to_jsonb(NEW) - '{last_run_at,next_run_at,last_evaluated_at}'::text[] THEN
    RETURN NULL;
  END IF;
  INSERT INTO audit.config_change_event (kind, name, operation, scope, old_value, new_value, reason)
  VALUES ('table', TG_TABLE_SCHEMA || '.' || TG_TABLE_NAME, TG_OP, NULL,
          CASE WHEN TG_OP IN ('UPDATE', 'DELETE') THEN to_jsonb(OLD) END,
          CASE WHEN TG_OP IN ('INSERT', 'UPDATE') THEN to_jsonb(NEW) END,
          audit.change_reason());
  RETURN NULL;
END
$$;

-- Called by the utility hook after ALTER SYSTEM / DATABASE / ROLE ... SET of
-- an audit_db.* setting.
CREATE FUNCTION audit.log_setting_change(setting text, operation text, scope text, old_value text,
                                         new_value text) RETURNS void
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
  INSERT INTO audit.config_change_event (kind, name, operation, scope, old_value, new_value, reason)
  VALUES ('setting', setting, operation, scope, to_jsonb(old_value), to_jsonb(new_value), audit.change_reason())
$$;
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
-- Compliance reports: templates (built-in kinds with default criteria),
-- schedules (cron expressions, run by pg_cron when it is loaded, else by the
-- audit_db worker) and executions (status, duration, rows, result document,
-- integrity digest, error). docs/operations.md#reports.

CREATE DOMAIN audit.report_format AS text
  CONSTRAINT report_format_values CHECK (VALUE IN ('json', 'csv'));

CREATE TABLE audit.report_templates (
  template_id      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  name             text   NOT NULL UNIQUE CHECK (name ~ '^[a-z0-9_]+$'),
  -- access:                who touched PHI (criteria: organization_id, from, to)
  -- failed_authentication: failed logins per principal (criteria: from, to, action_regex)
  -- integrity:             audit.verify() of the scope and the chain's digest
  -- retention:             rows per retention policy and classification, with the policy
  -- gdpr_requests:         the gdpr.* events (pseudonymizations, lookups, exports, erasures)
  report_type      text   NOT NULL CHECK (report_type IN ('access', 'failed_authentication', 'integrity',
                                                           'retention', 'gdpr_requests')),
  description      text,
  default_criteria jsonb  NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(default_criteria) = 'object'),
  default_format   audit.report_format NOT NULL DEFAULT 'json',
  built_in         boolean NOT NULL DEFAULT false,
  created_at       timestamptz NOT NULL DEFAULT now()
);
INSERT INTO audit.report_templates (name, report_type, description, default_criteria, built_in) VALUES
  ('phi_access', 'access', 'Who accessed PHI, per principal, in an organization and period', '{}', true),
  ('failed_authentication', 'failed_authentication', 'Failed authentications per principal in a period',
   '{"action_regex": "(^|[._])(login|logon|signin|sign_in|auth|authenticate)($|[._])"}', true),
  ('integrity', 'integrity', 'Verification of the audit chain and its current digest', '{}', true),
  ('retention', 'retention', 'Rows per retention policy and classification, with the policy in force', '{}', true),
  ('gdpr_requests', 'gdpr_requests', 'GDPR requests handled in a period', '{}', true);
COMMENT ON TABLE audit.report_templates IS 'Report templates: a built-in report kind with default criteria and format';
SELECT pg_catalog.pg_extension_config_dump('audit.report_templates', 'WHERE NOT built_in');

CREATE TABLE audit.scheduled_reports (
  schedule_id     bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  name            text   NOT NULL UNIQUE CHECK (name ~ '^[A-Za-z0-9_.-]+$'),
  template_id     bigint NOT NULL REFERENCES audit.report_templates,
  criteria        jsonb  NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(criteria) = 'object'),
  format          audit.report_format NOT NULL DEFAULT 'json',
  organization_id varchar(255),
  schedule        text   NOT NULL,              -- cron expression, or 'N seconds'
  runner          text   NOT NULL CHECK (runner IN ('pg_cron', 'worker')),
  cron_job_name   text,                         -- pg_cron's job (runner pg_cron)
  cron_database   text,                         -- the database pg_cron lives in
  delivery        jsonb  NOT NULL DEFAULT '{"method": "table"}' CHECK (jsonb_typeof(delivery) = 'object'),
  export_config   jsonb  NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(export_config) = 'object'),
  enabled         boolean NOT NULL DEFAULT true,
  created_by      name   NOT NULL DEFAULT session_user,
  created_at      timestamptz NOT NULL DEFAULT now(),
  last_run_at     timestamptz,
  next_run_at     timestamptz
);
COMMENT ON TABLE audit.scheduled_reports IS
  'Reports run on a schedule (pg_cron, or the audit_db worker when pg_cron is absent)';
SELECT pg_catalog.pg_extension_config_dump('audit.scheduled_reports', '');

CREATE TABLE audit.report_executions (
  execution_id     bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  schedule_id      bigint REFERENCES audit.scheduled_reports ON DELETE SET NULL,
  template_id      bigint REFERENCES audit.report_templates ON DELETE SET NULL,
  report_type      text   NOT NULL,
  criteria         jsonb  NOT NULL,
  format           audit.report_format NOT NULL,
  organization_id  varchar(255),
  triggered_by     text   NOT NULL,             -- pg_cron, worker, call
  run_by           name   NOT NULL DEFAULT session_user,
  started_at       timestamptz NOT NULL DEFAULT clock_timestamp(),
  finished_at      timestamptz,
  duration_ms      integer,
  status           text   NOT NULL CHECK (status IN ('running', 'succeeded', 'failed')),
  row_count        bigint,
  result           text,                        -- the document (json or csv)
  integrity_digest jsonb,                       -- sha256 of the result and the chain's digest when made
  error            text,
  error_sqlstate   char(5)
);
CREATE INDEX report_executions_schedule_idx ON audit.report_executions (schedule_id, started_at);
COMMENT ON TABLE audit.report_executions IS 'Each run of a report: status, duration, rows, result, digest, error';

-- Cron expressions -------------------------------------------------------------

-- The values a cron field allows: '*', 'n', 'a-b', lists, '/step'.
CREATE FUNCTION audit.cron_field(field text, lo integer, hi integer) RETURNS integer[]
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  part text;
  m text[];
  a int;
  b int;
  step int;
  result int[] := '{}';
BEGIN
  FOREACH part IN ARRAY string_to_array(field, ',') LOOP
    m := regexp_match(part, '^(\*|([0-9]+)(-([0-9]+))?)(/([0-9]+))?$');
    IF m IS NULL THEN
      RAISE EXCEPTION 'invalid cron field %', quote_literal(field) USING ERRCODE = '22023',
        HINT = 'Use *, n, a-b, lists (a,b) and steps (*/n); five fields: minute hour day month weekday.';
    END IF;
    IF m[1] = '*' THEN a := lo; b := hi; ELSE a := m[2]::int; b := coalesce(m[4]::int, CASE WHEN m[6] IS NULL THEN a ELSE hi END); END IF;
    step := coalesce(m[6]::int, 1);
    IF a < lo OR b > hi OR a > b OR step < 1 THEN
      RAISE EXCEPTION 'cron field % is out of range %-%', quote_literal(field), lo, hi USING ERRCODE = '22023',
        HINT = 'minute 0-59, hour 0-23, day 1-31, month 1-12, weekday 0-7 (0 and 7: Sunday).';
    END IF;
    result := result || ARRAY(SELECT generate_series(a, b, step));
  END LOOP;
  RETURN result;
END
$$;

-- The first time after `after` (UTC, whole minutes) that a cron expression
-- ('m h dom mon dow', as pg_cron reads it) or 'N seconds' names.
CREATE FUNCTION audit.cron_next(expr text, after timestamptz) RETURNS timestamptz
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  f text[];
  mins int[]; hours int[]; doms int[]; mons int[]; dows int[];
  dom_any boolean; dow_any boolean;
  t timestamp;
  day_ok boolean;
  secs text[];
BEGIN
  IF expr IS NULL THEN
    RAISE EXCEPTION 'a schedule is needed' USING ERRCODE = '22004', HINT = 'A cron expression such as ''0 6 * * 1''.';
  END IF;
  secs := regexp_match(btrim(expr), '^([0-9]+) seconds?$');
  IF secs IS NOT NULL THEN
    IF secs[1]::int NOT BETWEEN 1 AND 59 THEN
      RAISE EXCEPTION 'interval schedules take 1 to 59 seconds' USING ERRCODE = '22023',
        HINT = 'For longer periods use a cron expression.';
    END IF;
    RETURN after + make_interval(secs => secs[1]::int);
  END IF;
  f := regexp_split_to_array(btrim(expr), '\s+');
  IF array_length(f, 1) <> 5 THEN
    RAISE EXCEPTION 'invalid cron expression %', quote_literal(expr) USING ERRCODE = '22023',
      HINT = 'Five fields: minute hour day-of-month month day-of-week, e.g. ''*/5 * * * *''.';
  END IF;
  mins := audit.cron_field(f[1], 0, 59);
  hours := audit.cron_field(f[2], 0, 23);
  doms := audit.cron_field(f[3], 1, 31);
  mons := audit.cron_field(f[4], 1, 12);
  dows := ARRAY(SELECT DISTINCT d % 7 FROM unnest(audit.cron_field(f[5], 0, 7)) d);
  dom_any := f[3] = '*';
  dow_any := f[5] = '*';
  t := date_trunc('minute', after AT TIME ZONE 'UTC') + interval '1 minute';
  FOR i IN 1 .. 100000 LOOP
    IF NOT extract(month FROM t)::int = ANY (mons) THEN
      t := date_trunc('month', t) + interval '1 month';
      CONTINUE;
    END IF;
    day_ok := CASE WHEN dom_any AND dow_any THEN true
                   WHEN dom_any THEN extract(dow FROM t)::int = ANY (dows)
                   WHEN dow_any THEN extract(day FROM t)::int = ANY (doms)
                   ELSE extract(day FROM t)::int = ANY (doms) OR extract(dow FROM t)::int = ANY (dows) END;
    IF NOT day_ok THEN
      t := date_trunc('day', t) + interval '1 day';
      CONTINUE;
    END IF;
    IF NOT extract(hour FROM t)::int = ANY (hours) THEN
      t := date_trunc('hour', t) + interval '1 hour';
      CONTINUE;
    END IF;
    IF NOT extract(minute FROM t)::int = ANY (mins) THEN
      t := t + interval '1 minute';
      CONTINUE;
    END IF;
    RETURN t AT TIME ZONE 'UTC';
  END LOOP;
  RAISE EXCEPTION 'cron expression % never fires', quote_literal(expr) USING ERRCODE = '22023',
    HINT = 'Check day and month (e.g. 31 2 never exists).';
END
$$;
COMMENT ON FUNCTION audit.cron_next(text, timestamptz) IS
  'Next time (UTC) after a given one that a cron expression or ''N seconds'' schedule names';

-- Generating reports -------------------------------------------------------------

-- The rows of a report, as a JSON array of objects (keys in report order).
CREATE FUNCTION audit.report_rows(report_type text, criteria jsonb, organization text)
RETURNS json
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  t_from timestamptz := coalesce((criteria->>'from')::timestamptz, '-infinity');
  t_to   timestamptz := coalesce((criteria->>'to')::timestamptz, 'infinity');
  rows   json;
  v      record;
  d      jsonb;
BEGIN
  IF report_type = 'access' THEN
    SELECT coalesce(json_agg(json_build_object('principal_id', x.principal_id, 'organization_id', x.organization_id,
                                                 'events', x.n, 'first_access', x.first, 'last_access', x.last,
                                                 'actions', x.actions)
                              ORDER BY x.organization_id, x.principal_id), '[]'::json)
      INTO rows
      FROM (SELECT l.principal_id, l.organization_id, count(*) AS n, min(l."timestamp") AS first,
                   max(l."timestamp") AS last, string_agg(DISTINCT l.action, ',' ORDER BY l.action) AS actions
              FROM audit.audit_log l
             WHERE l.data_classification = 'PHI' AND l."timestamp" >= t_from AND l."timestamp" < t_to
               AND (organization IS NULL OR l.organization_id = organization)
             GROUP BY l.principal_id, l.organization_id) x;
  ELSIF report_type = 'failed_authentication' THEN
    SELECT coalesce(json_agg(json_build_object('principal_id', x.principal_id, 'organization_id', x.organization_id,
                                                 'failures', x.n, 'first_failure', x.first, 'last_failure', x.last,
                                                 'actions', x.actions)
                              ORDER BY x.n DESC, x.organization_id, x.principal_id), '[]'::json)
      INTO rows
      FROM (SELECT l.principal_id, l.organization_id, count(*) AS n, min(l."timestamp") AS first,
                   max(l."timestamp") AS last, string_agg(DISTINCT l.action, ',' ORDER BY l.action) AS actions
              FROM audit.audit_log l
             WHERE l.status = 'failure' AND l."timestamp" >= t_from AND l."timestamp" < t_to
               AND l.action ~* (criteria->>'action_regex')
               AND (organization IS NULL OR l.organization_id = organization)
             GROUP BY l.principal_id, l.organization_id) x;
  ELSIF report_type = 'integrity' THEN
    SELECT count(*) AS problems, min(p.problem || ': ' || p.detail) AS first_problem,
           json_agg(json_build_object('block_height', p.block_height, 'row_id', p.row_id, 'field', p.field,
                                      'problem', p.problem, 'detail', p.detail)) AS list
      INTO v FROM audit.verify(organization_id => organization) p;
    d := audit.digest();
    rows := json_build_array(json_build_object('clean', v.problems = 0, 'problems', v.problems,
                                               'first_problem', v.first_problem, 'height', d->'height',
                                               'header_hash', d->'header_hash', 'rows_total', d->'rows_total',
                                               'details', coalesce(v.list, '[]')));
  ELSIF report_type = 'retention' THEN
    SELECT coalesce(json_agg(json_build_object('retention_policy', x.retention_policy,
                                                 'data_classification', x.data_classification,
                                                 'rows', x.n, 'oldest', x.oldest, 'newest', x.newest,
                                                 'retention_days', p.retention_days,
                                                 'archive_after_days', p.archive_after_days,
                                                 'delete_after_days', coalesce(p.delete_after_days, p.retention_days),
                                                 'policy_active', coalesce(p.active, false))
                              ORDER BY x.retention_policy, x.data_classification), '[]'::json)
      INTO rows
      FROM (SELECT l.retention_policy, l.data_classification::text AS data_classification, count(*) AS n,
                   min(l."timestamp") AS oldest, max(l."timestamp") AS newest
              FROM audit.audit_log l
             WHERE (organization IS NULL OR l.organization_id = organization)
             GROUP BY 1, 2) x
      LEFT JOIN LATERAL (SELECT * FROM audit.audit_retention_policy p
                          WHERE p.policy_name = x.retention_policy
                            AND (p.data_classification IS NULL OR p.data_classification = x.data_classification)
                          ORDER BY p.data_classification NULLS LAST LIMIT 1) p ON true;
  ELSIF report_type = 'gdpr_requests' THEN
    SELECT coalesce(json_agg(json_build_object('event_id', l.id, 'timestamp', l."timestamp", 'action', l.action,
                                                 'organization_id', l.organization_id,
                                                 'performed_by', l.principal_id,
                                                 'requested_by', l.details->>'requested_by',
                                                 'request_id', (l.details->>'request_id')::bigint,
                                                 'rows_changed', (l.details->>'rows_changed')::bigint,
                                                 'rows_erased', (l.details->>'rows_erased')::bigint,
                                                 'rows_kept', (l.details->>'rows_kept')::bigint,
                                                 'format', l.details->>'format')
                              ORDER BY l."timestamp", l.id), '[]'::json)
      INTO rows
      FROM audit.audit_log l
     WHERE l.action LIKE 'gdpr.%' AND l."timestamp" >= t_from AND l."timestamp" < t_to
       AND (organization IS NULL OR l.organization_id = organization);
  ELSE
    RAISE EXCEPTION 'unknown report type %', coalesce(quote_literal(report_type), 'NULL') USING ERRCODE = '22023',
      HINT = 'One of: access, failed_authentication, integrity, retention, gdpr_requests.';
  END IF;
  RETURN rows;
END
$$;

-- The columns of each report kind, in order (the csv header).
CREATE FUNCTION audit.report_columns(report_type text) RETURNS text[]
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
  SELECT CASE report_type
    WHEN 'access' THEN ARRAY['principal_id', 'organization_id', 'events', 'first_access', 'last_access', 'actions']
    WHEN 'failed_authentication' THEN ARRAY['principal_id', 'organization_id', 'failures', 'first_failure',
                                            'last_failure', 'actions']
    WHEN 'integrity' THEN ARRAY['clean', 'problems', 'first_problem', 'height', 'header_hash', 'rows_total', 'details']
    WHEN 'retention' THEN ARRAY['retention_policy', 'data_classification', 'rows', 'oldest', 'newest', 'retention_days',
                                'archive_after_days', 'delete_after_days', 'policy_active']
    WHEN 'gdpr_requests' THEN ARRAY['event_id', 'timestamp', 'action', 'organization_id', 'performed_by',
                                    'requested_by', 'request_id', 'rows_changed', 'rows_erased', 'rows_kept', 'format']
  END
$$;

-- The template of a name, with the checks every entry point makes of its
-- criteria and format (42704 / 22023 otherwise).
CREATE FUNCTION audit.report_template(template text, criteria jsonb, format text) RETURNS audit.report_templates
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  t audit.report_templates;
BEGIN
  SELECT * INTO t FROM audit.report_templates x WHERE x.name = template;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'report template % does not exist', coalesce(quote_literal(template), 'NULL')
      USING ERRCODE = '42704', HINT = 'See audit.report_templates.';
  END IF;
  IF criteria IS NULL OR jsonb_typeof(criteria) <> 'object' THEN
    RAISE EXCEPTION 'report criteria must be a JSON object' USING ERRCODE = '22023', HINT = 'Pass ''{}'' for none.';
  END IF;
  IF format IS NOT NULL AND format NOT IN ('json', 'csv') THEN
    RAISE EXCEPTION 'unknown report format %', quote_literal(format) USING ERRCODE = '22023', HINT = 'json or csv.';
  END IF;
  RETURN t;
END
$$;

-- A report document: json ({report, type, criteria, organization,
-- generated_at, row_count, rows}) or csv (a header, then the rows; nested
-- values as JSON text).
CREATE FUNCTION audit.generate_report(template text, criteria jsonb DEFAULT '{}', format text DEFAULT NULL,
                                      organization_id text DEFAULT NULL)
RETURNS text
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  t    audit.report_templates;
  c    jsonb;
  fmt  text;
  rows json;
  cols text[];
BEGIN
  t := audit.report_template(template, criteria, format);
  fmt := coalesce(format, t.default_format);
  c := t.default_criteria || criteria;
  BEGIN
    PERFORM (c->>'from')::timestamptz, (c->>'to')::timestamptz;
  EXCEPTION WHEN others THEN
    RAISE EXCEPTION 'report criteria from/to must be timestamps' USING ERRCODE = '22007',
      HINT = 'For example {"from": "2026-01-01", "to": "2026-02-01"}.';
  END;
  rows := audit.report_rows(t.report_type, c, coalesce(organization_id, c->>'organization_id'));
  IF fmt = 'json' THEN
    RETURN json_build_object('report', t.name, 'type', t.report_type, 'criteria', c,
                             'organization', coalesce(organization_id, c->>'organization_id'),
                             'generated_at', now(), 'row_count', json_array_length(rows), 'rows', rows)::text;
  END IF;
  cols := audit.report_columns(t.report_type);
  RETURN (SELECT string_agg(line, E'\r\n' ORDER BY ord) || E'\r\n'
            FROM (SELECT 0::bigint AS ord, (SELECT string_agg('"' || k || '"', ',' ORDER BY i)
                                             FROM unnest(cols) WITH ORDINALITY AS x(k, i)) AS line
                  UNION ALL
                  SELECT e.ord, (SELECT string_agg(CASE WHEN json_typeof(e.doc -> k) IS NULL
                                                          OR json_typeof(e.doc -> k) = 'null' THEN ''
                                                     ELSE '"' || replace(CASE WHEN json_typeof(e.doc -> k) IN ('object', 'array')
                                                                              THEN (e.doc -> k)::text
                                                                              ELSE e.doc ->> k END, '"', '""') || '"'
                                                     END, ',' ORDER BY i)
                                   FROM unnest(cols) WITH ORDINALITY AS x(k, i))
                    FROM json_array_elements(rows) WITH ORDINALITY AS e(doc, ord)) lines
           WHERE line IS NOT NULL);
END
$$;
COMMENT ON FUNCTION audit.generate_report(text, jsonb, text, text) IS
  'A report of a template with criteria (merged over its defaults), as json or csv, without storing it';

-- Run a scheduled report now and store the execution; a failure is stored
-- (and logged in audit.error_log), not raised. Returns the execution id.
CREATE FUNCTION audit.run_report(schedule_id bigint, triggered_by text DEFAULT 'call') RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  s      audit.scheduled_reports;
  t      audit.report_templates;
  exec   bigint;
  doc    text;
  n      bigint;
  msg    text;
  state  text;
  began  timestamptz := clock_timestamp();
BEGIN
  SELECT * INTO s FROM audit.scheduled_reports x WHERE x.schedule_id = run_report.schedule_id;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'scheduled report % does not exist', schedule_id USING ERRCODE = 'P0002',
      HINT = 'See audit.scheduled_reports.';
  END IF;
  SELECT * INTO t FROM audit.report_templates x WHERE x.template_id = s.template_id;
  INSERT INTO audit.report_executions (schedule_id, template_id, report_type, criteria, format, organization_id,
                                       triggered_by, status, started_at)
  VALUES (s.schedule_id, t.template_id, t.report_type, t.default_criteria || s.criteria, s.format, s.organization_id,
          coalesce(triggered_by, 'call'), 'running', began)
  RETURNING execution_id INTO exec;
  BEGIN
    doc := audit.generate_report(t.name, s.criteria, s.format, s.organization_id);
    n := CASE WHEN s.format = 'json' THEN (doc::json->>'row_count')::bigint
              ELSE greatest(array_length(regexp_split_to_array(rtrim(doc, E'\r\n'), E'\r\n'), 1) - 1, 0) END;
    UPDATE audit.report_executions x
       SET status = 'succeeded', finished_at = clock_timestamp(),
           duration_ms = (extract(epoch FROM clock_timestamp() - began) * 1000)::int,
           row_count = n, result = doc,
           integrity_digest = jsonb_build_object('result_sha256', encode(sha256(convert_to(doc, 'UTF8')), 'hex'),
                                                 'chain', audit.digest())
     WHERE x.execution_id = exec;
  EXCEPTION WHEN others THEN
    GET STACKED DIAGNOSTICS msg = MESSAGE_TEXT, state = RETURNED_SQLSTATE;
    UPDATE audit.report_executions x
       SET status = 'failed', finished_at = clock_timestamp(),
           duration_ms = (extract(epoch FROM clock_timestamp() - began) * 1000)::int,
           error = msg, error_sqlstate = state
     WHERE x.execution_id = exec;
    PERFORM audit.report_error('report', msg, state, NULL,
                               jsonb_build_object('schedule_id', s.schedule_id, 'execution_id', exec),
                               s.organization_id);
  END;
  UPDATE audit.scheduled_reports x SET last_run_at = began, next_run_at = audit.cron_next(x.schedule, began)
   WHERE x.schedule_id = s.schedule_id;
  RETURN exec;
END
$$;
COMMENT ON FUNCTION audit.run_report(bigint, text) IS
  'Run a scheduled report now; stores and returns its execution (a failure is stored, not raised)';

-- The worker's share: run the reports it schedules that are due.
CREATE FUNCTION audit.run_due_reports() RETURNS integer
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  s bigint;
  n integer := 0;
BEGIN
  FOR s IN SELECT x.schedule_id FROM audit.scheduled_reports x
            WHERE x.enabled AND x.runner = 'worker' AND x.next_run_at <= now()
            ORDER BY x.next_run_at LOOP
    PERFORM audit.run_report(s, 'worker');
    n := n + 1;
  END LOOP;
  RETURN n;
END
$$;
COMMENT ON FUNCTION audit.run_due_reports() IS 'Run the worker-scheduled reports that are due (the worker calls it)';

-- pg_cron ------------------------------------------------------------------------

-- Run one statement against pg_cron (a SELECT of one column): here, or in
-- its database through dblink.
CREATE FUNCTION audit.pg_cron_exec(statement text) RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  c    record;
  nsp  name;
  conn text;
BEGIN
  SELECT * INTO c FROM audit.pg_cron_location();
  IF c.status = 'absent' THEN
    RAISE EXCEPTION 'pg_cron is not loaded' USING ERRCODE = '0A000',
      HINT = 'Add pg_cron to shared_preload_libraries (package postgresql-15-cron), or schedule with runner => ''worker''.';
  ELSIF c.status = 'local' THEN
    EXECUTE statement;
    RETURN;
  END IF;
  SELECT n.nspname INTO nsp FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace WHERE e.extname = 'dblink';
  IF NOT FOUND THEN
    RAISE EXCEPTION 'pg_cron runs in database %, and dblink is not installed here', c.database USING ERRCODE = '0A000',
      HINT = 'CREATE EXTENSION dblink in this database, or schedule with runner => ''worker''.';
  END IF;
  conn := format('dbname=%s port=%s', quote_literal(c.database), current_setting('port'));
  IF current_setting('unix_socket_directories') <> '' THEN
    conn := conn || format(' host=%s', quote_literal(split_part(current_setting('unix_socket_directories'), ',', 1)));
  END IF;
  -- dblink() rather than dblink_exec(): the statements return a row (one column).
  EXECUTE format('SELECT count(*) FROM %I.dblink($1, $2) AS t(result text)', nsp) USING conn, statement;
END
$$;

CREATE FUNCTION audit.schedule_report(name text, template text, schedule text, criteria jsonb DEFAULT '{}',
                                      format text DEFAULT NULL, organization_id text DEFAULT NULL,
                                      runner text DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  t     audit.report_templates;
  c     record;
  r     text := runner;
  job   text;
  id    bigint;
BEGIN
  IF name IS NULL OR name !~ '^[A-Za-z0-9_.-]+$' THEN
    RAISE EXCEPTION 'invalid report schedule name %', coalesce(quote_literal(name), 'NULL') USING ERRCODE = '22023',
      HINT = 'Letters, digits, _ . and -.';
  END IF;
  t := audit.report_template(template, criteria, format);
  PERFORM audit.cron_next(schedule, now());          -- validates the expression
  SELECT * INTO c FROM audit.pg_cron_location();
  IF r IS NULL THEN
    r := CASE WHEN c.status = 'absent' THEN 'worker' ELSE 'pg_cron' END;
    IF r = 'worker' THEN
      RAISE NOTICE 'pg_cron is not loaded: the audit_db worker runs report %', name
        USING HINT = 'The worker needs audit_db in shared_preload_libraries.';
    END IF;
  ELSIF r NOT IN ('pg_cron', 'worker') THEN
    RAISE EXCEPTION 'unknown report runner %', quote_literal(r) USING ERRCODE = '22023', HINT = 'pg_cron or worker.';
  ELSIF r = 'pg_cron' AND c.status = 'absent' THEN
    RAISE EXCEPTION 'pg_cron is not loaded' USING ERRCODE = '0A000',
      HINT = 'Add pg_cron to shared_preload_libraries, or pass runner => ''worker'' (the audit_db worker runs it).';
  END IF;

  INSERT INTO audit.scheduled_reports AS s (name, template_id, criteria, format, organization_id, schedule, runner,
                                            next_run_at)
  VALUES (schedule_report.name, t.template_id, criteria, coalesce(format, t.default_format),
          schedule_report.organization_id, schedule, r, audit.cron_next(schedule, now()))
  ON CONFLICT ON CONSTRAINT scheduled_reports_name_key DO UPDATE
     SET template_id = EXCLUDED.template_id, criteria = EXCLUDED.criteria, format = EXCLUDED.format,
         organization_id = EXCLUDED.organization_id, schedule = EXCLUDED.schedule, runner = EXCLUDED.runner,
         next_run_at = EXCLUDED.next_run_at, enabled = true
  RETURNING s.schedule_id INTO id;

  job := format('audit_db:%s:%s', current_database(), name);
  IF r = 'pg_cron' THEN
    -- Named jobs: scheduling the same report again replaces its job.
    PERFORM audit.pg_cron_exec(format('SELECT cron.schedule_in_database(%L, %L, %L, %L)', job, schedule,
                                      format('SELECT audit.run_report(%s, ''pg_cron'')', id), current_database()));
    UPDATE audit.scheduled_reports x SET cron_job_name = job, cron_database = coalesce(c.database, current_database())
     WHERE x.schedule_id = id;
  ELSE
    PERFORM audit.unschedule_cron_job(id);
  END IF;
  RETURN id;
END
$$;
COMMENT ON FUNCTION audit.schedule_report(text, text, text, jsonb, text, text, text) IS
  'Schedule a report (idempotent by name): a named pg_cron job, in pg_cron''s database if need be, '
  'or the audit_db worker when pg_cron is absent; returns its id';

-- Remove a schedule's pg_cron job, if it has one.
CREATE FUNCTION audit.unschedule_cron_job(schedule_id bigint) RETURNS boolean
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  job text;
BEGIN
  SELECT x.cron_job_name INTO job FROM audit.scheduled_reports x WHERE x.schedule_id = unschedule_cron_job.schedule_id;
  IF job IS NULL THEN
    RETURN false;
  END IF;
  IF (SELECT status FROM audit.pg_cron_location()) <> 'absent' THEN
    PERFORM audit.pg_cron_exec(format('SELECT cron.unschedule(jobid) FROM cron.job WHERE jobname = %L', job));
  END IF;
  UPDATE audit.scheduled_reports x SET cron_job_name = NULL, cron_database = NULL
   WHERE x.schedule_id = unschedule_cron_job.schedule_id;
  RETURN true;
END
$$;

CREATE FUNCTION audit.unschedule_report(name text) RETURNS boolean
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  id bigint;
BEGIN
  SELECT x.schedule_id INTO id FROM audit.scheduled_reports x WHERE x.name = unschedule_report.name;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'scheduled report % does not exist', coalesce(quote_literal(name), 'NULL') USING ERRCODE = 'P0002',
      HINT = 'See audit.scheduled_reports.';
  END IF;
  PERFORM audit.unschedule_cron_job(id);
  UPDATE audit.scheduled_reports x SET enabled = false, next_run_at = NULL WHERE x.schedule_id = id;
  RETURN true;
END
$$;
COMMENT ON FUNCTION audit.unschedule_report(text) IS
  'Stop a scheduled report: its pg_cron job is removed and it is disabled (its executions stay)';
-- Policy tables whose every change is recorded in audit.config_change_event
-- (src/sql/82_error_log.sql), with the reason from audit_db.change_reason.
DO $$
DECLARE
  tbl text;
BEGIN
  FOREACH tbl IN ARRAY ARRAY['audit_retention_policy', 'erasure_exemption', 'alert_rules', 'report_templates',
                             'scheduled_reports'] LOOP
    EXECUTE format('CREATE TRIGGER %I AFTER INSERT OR UPDATE OR DELETE ON audit.%I'
                   ' FOR EACH ROW EXECUTE FUNCTION audit.log_config_change()', tbl || '_config_change', tbl);
  END LOOP;
END
$$;

-- Alerts and errors belong to their organization (NULL: system-wide, seen by
-- every-organization readers only); the tenancy policies of 75_tenancy.sql.
SELECT audit.enable_tenant_isolation('audit.alerts');
SELECT audit.enable_tenant_isolation('audit.error_log');
SELECT audit.enable_tenant_isolation('audit.report_executions');
-- Privileges: nothing for PUBLIC but pure predicates and the tenancy
-- context; the roles of 05_roles.sql for the common jobs.

REVOKE ALL ON ALL TABLES IN SCHEMA audit FROM PUBLIC;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA audit FROM PUBLIC;
REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA audit FROM PUBLIC;
REVOKE EXECUTE ON ALL PROCEDURES IN SCHEMA audit FROM PUBLIC;
-- The domains' CHECK constraints call these pure predicates as the inserting
-- role, whoever it is; they reveal nothing.
GRANT EXECUTE ON FUNCTION audit.is_event_status(text), audit.is_data_classification(text),
                          audit.is_hash_algorithm(text) TO PUBLIC;

GRANT USAGE ON SCHEMA audit TO audit_db_writer, audit_db_auditor;

-- Writer: INSERT without reading anything back (audit.log_event() and
-- audit.last_event_id() return the new id), presets to apply them.
GRANT INSERT ON audit.audit_log TO audit_db_writer;
GRANT SELECT ON audit.audit_preset TO audit_db_writer;
GRANT EXECUTE ON FUNCTION audit.log_event(text, text, text, text, text, text, text, text, text, text, integer, jsonb, text, timestamptz, text),
                          audit.last_event_id() TO audit_db_writer;

-- Sealing is harmless and idempotent: both roles may trigger it.
GRANT EXECUTE ON FUNCTION audit.seal() TO audit_db_writer, audit_db_auditor;

-- Auditor: read everything, recompute hashes.
GRANT SELECT ON audit.audit_log, audit.audit_preset TO audit_db_auditor;
GRANT EXECUTE ON FUNCTION audit.leaf_hash(audit.audit_log),
                          audit.leaf_encoding(audit.audit_log),
                          audit.commitment_encoding(audit.audit_log),
                          audit.merkle_root(bytea[]) TO audit_db_auditor;

-- Auditor and the chain: read blocks, state and past verifications; verify,
-- digest, prove, export. audit.verify() records its run as the table owner.
GRANT SELECT ON audit.audit_chain_block, audit.audit_chain_state, audit.audit_integrity_log,
                audit.chain_status, audit.verification_in_progress TO audit_db_auditor;
GRANT EXECUTE ON FUNCTION audit.verify(timestamptz, timestamptz, text, boolean, integer, integer),
                          audit.verification_progress(), audit.digest(), audit.verify_digest(jsonb),
                          audit.prove(bigint), audit.export_row(audit.audit_log),
                          audit.export_block(audit.audit_chain_block), audit.export_header(audit.audit_chain_block),
                          audit.export_chain(), audit.chain_status_row(),
                          audit.block_header_hash(bigint, text, timestamptz, timestamptz, bigint, bigint, bigint, bigint, bytea, timestamptz, bytea),
                          audit.merkle_path(bytea, integer) TO audit_db_auditor;

-- Auditor and partitions / maintenance: read what exists and what was done.
-- Creating partitions and running maintenance stay with the extension's
-- owner (and the background worker).
GRANT SELECT ON audit.partitions, audit.maintenance_run, audit.audit_log_relocation TO audit_db_auditor;
GRANT EXECUTE ON FUNCTION audit.partition_bounds() TO audit_db_auditor;

-- Auditor and retention: read the policies and what retention would do.
-- Changing policies stays with the extension's owner.
GRANT SELECT ON audit.audit_retention_policy, audit.retention_summary TO audit_db_auditor;
GRANT EXECUTE ON FUNCTION audit.retention_plan(timestamptz) TO audit_db_auditor;

-- Auditor and the archive: read entries and dead letters, restore rows
-- (each restore is counted), see what would expire; audit.verify() reads
-- archived rows through audit.archive_lines().
-- Every column of an entry but its data: the rows of every organization,
-- which audit.archive_lines() hands out per organization.
GRANT SELECT (archive_id, block_height, partition_from, partition_to, retention_policy, data_classification,
              row_count, first_id, last_id, min_timestamp, max_timestamp, merkle_root, format, compression,
              raw_bytes, archived_at, retrieval_count, last_retrieved_at)
   ON audit.archive_storage TO audit_db_auditor;
GRANT SELECT ON audit.archive_dlq_event TO audit_db_auditor;
GRANT EXECUTE ON FUNCTION audit.archive_lines(bigint, boolean), audit.archive_restore(bigint),
                          audit.row_from_export(jsonb, timestamptz), audit.archive_plan(timestamptz)
                 TO audit_db_auditor;

-- Tenancy: everyone needs the context and the checks the policies call (they
-- run as the querying role); they only reveal what the session may see.
-- Mapping roles to organizations (organization_access) and isolating tables
-- stay with the extension's owner; tenant administrators manage roles and
-- assignments of their own organization (policies: resource
-- audit.organization_role / audit.organization_role_assignment, 'write').
GRANT EXECUTE ON FUNCTION audit.current_organization(), audit.current_principal(),
                          audit.set_organization(text, text, boolean), audit.reset_organization(),
                          audit.available_organizations(), audit.session_has_permission(text, text),
                          audit.has_permission(text, text, text, text), audit.user_permissions(text, text)
                 TO PUBLIC;
GRANT USAGE ON SCHEMA audit TO audit_db_tenant_admin, audit_db_all_organizations;
GRANT SELECT ON audit.organization_role, audit.organization_role_assignment
                TO audit_db_auditor, audit_db_tenant_admin;
GRANT INSERT, UPDATE, DELETE ON audit.organization_role, audit.organization_role_assignment
                TO audit_db_tenant_admin;
GRANT SELECT ON audit.tenant_isolation_status, audit.tenant_isolated_table TO audit_db_auditor;
GRANT EXECUTE ON FUNCTION audit.tenant_isolation_warnings(regclass), audit.tenant_policy_definitions(regclass)
                 TO audit_db_auditor;

-- GDPR (69_gdpr.sql): the four entry points decide themselves who may act
-- (audit_db_privacy_officer everywhere; organization permission
-- gdpr/<operation> in the session's organization) and run as the owner.
-- Keys and the mapping are granted to nobody; auditors read the requests and
-- the attestations (both tenant-isolated; audit.export_chain() exports them).
GRANT USAGE ON SCHEMA audit TO audit_db_privacy_officer;
GRANT EXECUTE ON FUNCTION audit.pseudonymize(text, text, text, text, text),
                          audit.original_id(text, text, text),
                          audit.export_subject(text, text, text),
                          audit.erase_subject(text, text, boolean, text) TO PUBLIC;
GRANT SELECT ON audit.redaction_request, audit.redacted_row, audit.erasure_exemption
   TO audit_db_auditor, audit_db_privacy_officer;
GRANT EXECUTE ON FUNCTION audit.redacted_fields_digest(audit.audit_log),
                          audit.mentions_subject(audit.audit_log, text[]) TO audit_db_auditor;

-- Alerts, errors, health, reports (80-88): writers raise alerts and report
-- errors of their organization; auditors read, acknowledge and resolve
-- alerts, read errors, changes, statistics and reports, and generate
-- reports. Evaluating rules, scheduling and running stored reports stay
-- with the extension's owner (and the worker, and pg_cron jobs it creates).
GRANT SELECT, INSERT, UPDATE (occurrences, last_seen_at, metadata) ON audit.alerts TO audit_db_writer;
GRANT EXECUTE ON FUNCTION audit.raise_alert(text, text, text, text, text, text, text, jsonb, text, bigint),
                          audit.report_error(text, text, text, text, jsonb, text, text),
                          audit.error_key(text, text, text) TO audit_db_writer;
GRANT SELECT ON audit.alerts, audit.alert_rules, audit.error_log, audit.error_aggregation,
                audit.config_change_event, audit.report_templates, audit.scheduled_reports,
                audit.report_executions, audit.table_statistics, audit.partition_statistics,
                audit.index_usage, audit.unused_indexes TO audit_db_auditor;
GRANT UPDATE (acknowledged, acknowledged_by, acknowledged_at, resolved, resolved_by, resolved_at,
              resolution_notes) ON audit.alerts TO audit_db_auditor;
GRANT EXECUTE ON FUNCTION audit.active_alerts(text),
                          audit.query_alerts(text, text, text, text, timestamptz, timestamptz, integer),
                          audit.alert_statistics(timestamptz), audit.acknowledge_alert(bigint),
                          audit.resolve_alert(bigint, text), audit.alert_actor(), audit.alert_exists(bigint),
                          audit.health(), audit.metrics_prometheus(), audit.slow_statements(integer),
                          audit.generate_report(text, jsonb, text, text), audit.report_template(text, jsonb, text),
                          audit.report_rows(text, jsonb, text), audit.report_columns(text),
                          audit.cron_next(text, timestamptz)
                 TO audit_db_auditor;

-- Last: the sealing worker for this database can start now.
SELECT audit.wake_launcher();
