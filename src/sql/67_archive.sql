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
