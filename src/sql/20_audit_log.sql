-- The audit log: one row per event, range-partitioned by month on "timestamp".

-- Enumerated values: domains whose CHECK calls the C predicates of
-- src/vocabulary.c (one list of values for SQL and C), used by the tables that
-- refer to a classification or a status (presets, retention, tracking).
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
  status                   varchar(16)  NOT NULL,
  outcome_description      varchar(4000),
  hash                     bytea        NOT NULL,
  hash_algorithm           varchar(50)  NOT NULL DEFAULT 'SHA-256',
  event_version            varchar(20)  NOT NULL DEFAULT '1.0',
  correlation_id           varchar(255),
  data_classification      varchar(20)  NOT NULL DEFAULT 'INTERNAL',
  retention_policy         varchar(50)  NOT NULL DEFAULT 'standard',
  processing_latency       integer,
  archived_at              timestamptz,
  details                  jsonb,
  -- What the hash chain needs (set by audit_db):
  transaction_id           bigint       NOT NULL,
  personal_data_salt       bytea,
  personal_data_commitment bytea
  -- The checks of this table run in C, in the stamping trigger
  -- (src/row_stamping.c), which every row meets: status, data_classification
  -- and hash_algorithm must be one of their values (src/vocabulary.c) and
  -- processing_latency not negative (SQLSTATE 23514, check_violation, with
  -- a hint), the event time in range (22008), required fields present
  -- (23502).  Neither table CHECK constraints nor domains: a CHECK
  -- constraint is re-read and re-planned by every single-row INSERT, a
  -- domain adds a coercion to every INSERT's plan (measured: test/bench).
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

-- pg_dump keeps these (their rows are data, not part of the extension).
SELECT pg_catalog.pg_extension_config_dump('audit.audit_log_default', '');
SELECT pg_catalog.pg_extension_config_dump('audit.audit_log_id_seq', '');
