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

-- The current month and audit_db.premake_months months ahead exist from the start
-- (under session_replication_role = replica, a restore, the dump brings them).
SELECT count(*) FROM audit.create_partitions()
WHERE current_setting('session_replication_role') <> 'replica';
