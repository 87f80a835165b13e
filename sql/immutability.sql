-- immutability: UPDATE, DELETE and TRUNCATE of audit rows are refused for every
-- role, including the owner and a superuser, through the parent, a partition
-- or the default partition, and also with session_replication_role = replica.

-- A fixed month (not now()), so that the errors name the same partition every month.
SELECT audit.ensure_month_partition('2030-01-15') AS fixed_month;
INSERT INTO audit.audit_log ("timestamp", action, status, principal_id) VALUES ('2030-01-15', 'immutable', 'success', 'carol');
INSERT INTO audit.audit_log ("timestamp", action, status) VALUES ('1990-01-01', 'immutable_old', 'success');
SELECT count(*) AS rows_before FROM audit.audit_log \gset

\set VERBOSITY default
UPDATE audit.audit_log SET principal_id = 'mallory' WHERE action = 'immutable';
\echo :LAST_ERROR_SQLSTATE
DELETE FROM audit.audit_log WHERE action = 'immutable';
\echo :LAST_ERROR_SQLSTATE
TRUNCATE audit.audit_log;
\echo :LAST_ERROR_SQLSTATE

-- Through the partitions directly.
SELECT format('UPDATE %s SET status = %L', audit.ensure_month_partition('2030-01-15'), 'failure') AS sql \gset
:sql;
\echo :LAST_ERROR_SQLSTATE
SELECT format('DELETE FROM %s', audit.ensure_month_partition('2030-01-15')) AS sql \gset
:sql;
\echo :LAST_ERROR_SQLSTATE
SELECT format('TRUNCATE %s', audit.ensure_month_partition('2030-01-15')) AS sql \gset
:sql;
\echo :LAST_ERROR_SQLSTATE
DELETE FROM audit.audit_log_default;
\echo :LAST_ERROR_SQLSTATE
TRUNCATE audit.audit_log_default;
\echo :LAST_ERROR_SQLSTATE

-- A partition created later carries the same guards.
SELECT audit.ensure_month_partition('2035-06-10') AS later;
INSERT INTO audit.audit_log ("timestamp", action, status) VALUES ('2035-06-10', 'immutable_later', 'success');
TRUNCATE audit.audit_log_2035_06;
\echo :LAST_ERROR_SQLSTATE
UPDATE audit.audit_log_2035_06 SET action = 'x';
\echo :LAST_ERROR_SQLSTATE

-- Replication role does not switch the guards off.
SET session_replication_role = replica;
UPDATE audit.audit_log SET action = 'x' WHERE action = 'immutable';
\echo :LAST_ERROR_SQLSTATE
DELETE FROM audit.audit_log WHERE action = 'immutable';
\echo :LAST_ERROR_SQLSTATE
RESET session_replication_role;

-- No setting can grant the exception: the audit_db prefix is reserved.
SET audit_db.allow_changes = on;
\echo :LAST_ERROR_SQLSTATE

-- The guard trigger refuses to be used as anything else.
SELECT audit.refuse_audit_change();
\echo :LAST_ERROR_SQLSTATE
CREATE TABLE scratch (x int);
CREATE TRIGGER g AFTER INSERT ON scratch FOR EACH ROW EXECUTE FUNCTION audit.refuse_audit_change();
INSERT INTO scratch VALUES (1);
\echo :LAST_ERROR_SQLSTATE
DROP TABLE scratch;

-- Nothing changed (one row was added on purpose: immutable_later).
SELECT count(*) = :rows_before + 1 AS no_row_lost FROM audit.audit_log;
SELECT action, principal_id, status, hash = audit.leaf_hash(l) AS hash_ok
FROM audit.audit_log l WHERE action LIKE 'immutable%' ORDER BY id;

-- A PL/pgSQL exception block cannot keep anything alive past an aborted
-- subtransaction: after one, the guards still refuse.
DO $$
BEGIN
  BEGIN
    UPDATE audit.audit_log SET action = 'x' WHERE action = 'immutable';
  EXCEPTION WHEN insufficient_privilege THEN
    RAISE NOTICE 'refused inside the block: %', SQLERRM;
  END;
  UPDATE audit.audit_log SET action = 'x' WHERE action = 'immutable';
END
$$;
\echo :LAST_ERROR_SQLSTATE
