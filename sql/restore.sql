-- restore: what pg_restore relies on (docs/operations.md, "Backup and
-- restore"); test/dump_restore.py runs the real pg_dump / pg_restore.
\i sql/include/session_helpers.sql

-- An ordinary install: no restore pending, no offset, finish_restore refuses.
SELECT count(*) AS pending FROM audit.restore_pending;
SELECT xid_offset FROM audit.audit_chain_state;
\set VERBOSITY default
SELECT audit.finish_restore();
\set VERBOSITY terse
CREATE ROLE regress_restorer LOGIN;
GRANT USAGE ON SCHEMA audit TO regress_restorer;
GRANT EXECUTE ON FUNCTION audit.finish_restore() TO regress_restorer;
SET ROLE regress_restorer;
SELECT audit.finish_restore();
RESET ROLE;

-- Data tables are dumped by pg_dump, with their sequences.
SELECT r.oid::regclass AS dumped, e.extcondition[r.n] AS condition
FROM pg_extension e, unnest(e.extconfig) WITH ORDINALITY r(oid, n)
WHERE e.extname = 'audit_db' ORDER BY 1::text;

-- Under session_replication_role = replica a stamped row is kept as it is
-- (as pg_restore loads it); one without a stamp is stamped as always.
BEGIN;
SET LOCAL session_replication_role = replica;
INSERT INTO audit.audit_log (id, action, status, hash, transaction_id, "timestamp")
VALUES (-1, 'restored.event', 'success', '\x00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff', 42,
        '2026-01-15 10:00:00+00')
RETURNING id, transaction_id, encode(hash, 'hex') = '00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff' AS kept;
INSERT INTO audit.audit_log (action, status) VALUES ('new.event', 'success')
RETURNING id > 0 AS stamped_id, transaction_id > 42 AS stamped_xid, hash = audit.leaf_hash(audit_log) AS hashed;
ROLLBACK;
-- Without it, a stamp given by the writer is overwritten.
BEGIN;
INSERT INTO audit.audit_log (id, action, status, hash, transaction_id)
VALUES (-1, 'restored.event', 'success', '\x00', 42)
RETURNING id > 0 AS restamped_id, transaction_id > 42 AS restamped_xid, hash = audit.leaf_hash(audit_log) AS rehashed;
ROLLBACK;
-- audit_db.* actions are audit_db's own.
INSERT INTO audit.audit_log (action, status) VALUES ('audit_db.restore', 'success');

-- A restore in progress (as CREATE EXTENSION under replica makes it): a new
-- session sees it; nothing is sealed, maintained or logged until it ends.
INSERT INTO audit.restore_pending DEFAULT VALUES;
\c
\set VERBOSITY default
SELECT audit.log_event(action => 'during.restore', status => 'success');
SELECT * FROM audit.seal();
CALL audit.run_maintenance();
\set VERBOSITY terse
SELECT count(*) AS problems FROM audit.verify();
SELECT r->>'xid_offset' AS xid_offset, r->>'previous_xid_offset' AS previous, (r->>'rows')::bigint > 0 AS has_rows
FROM audit.finish_restore() r;
SELECT count(*) AS pending FROM audit.restore_pending;
SELECT action, target_resource_type, details ? 'xid_offset' AS has_offset
FROM audit.audit_log WHERE action = 'audit_db.restore';
SELECT audit.log_event(action => 'after.restore', status => 'success') > 0 AS logged;
SELECT blocks >= 0 AS sealed FROM audit.seal();
SELECT count(*) AS problems FROM audit.verify();
DROP OWNED BY regress_restorer;
DROP ROLE regress_restorer;
