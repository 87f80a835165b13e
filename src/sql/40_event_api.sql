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
