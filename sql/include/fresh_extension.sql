-- A fresh audit_db for a suite (\i sql/include/fresh_extension.sql): the
-- extension dropped and created again, UTC, the session helpers, and the
-- worker's first maintenance run over; notices off.
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS audit_db CASCADE;
CREATE EXTENSION audit_db;
SET TimeZone = 'UTC';
\i sql/include/session_helpers.sql
SELECT pg_temp.wait_for_worker_maintenance() AS worker_ran;
