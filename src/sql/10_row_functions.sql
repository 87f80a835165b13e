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
