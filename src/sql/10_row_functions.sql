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
