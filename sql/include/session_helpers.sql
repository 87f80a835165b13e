-- Helpers shared by the pg_regress suites (\i sql/include/session_helpers.sql);
-- temporary functions, gone with the session.

-- Seal every committed row, whoever does it (a concurrent seal run of the
-- worker may hold the horizon back for a moment).
CREATE FUNCTION pg_temp.seal_all() RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
  FOR i IN 1..200 LOOP
    PERFORM audit.seal();
    IF NOT EXISTS (SELECT FROM audit.audit_log
                   WHERE transaction_id >= (SELECT horizon_xid FROM audit.audit_chain_state)) THEN
      RETURN true;
    END IF;
    PERFORM pg_sleep(0.05);
  END LOOP;
  RETURN false;
END
$$;

-- With audit_db preloaded, a new extension gets one maintenance run from its
-- database worker at once (as of the wall clock); wait for it to end before
-- a suite puts rows or policies where that run would act on them.
CREATE FUNCTION pg_temp.wait_for_worker_maintenance() RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
  IF current_setting('shared_preload_libraries') NOT LIKE '%audit_db%' THEN
    RETURN true;
  END IF;
  FOR i IN 1..400 LOOP
    IF EXISTS (SELECT FROM audit.maintenance_run WHERE via = 'worker' AND status <> 'running') THEN
      RETURN true;
    END IF;
    PERFORM pg_sleep(0.05);
  END LOOP;
  RETURN false;
END
$$;

-- SQLSTATE and message of a statement's error, or 'no error' (an error
-- undoes the statement). Any role of the session may call it.
CREATE FUNCTION pg_temp.error_of(sql text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
  EXECUTE sql;
  RETURN 'no error';
EXCEPTION WHEN OTHERS THEN
  RETURN SQLSTATE || ': ' || SQLERRM;
END
$$;
