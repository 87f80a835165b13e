-- install: CREATE EXTENSION builds the schema, the partitioned log, its guards
-- and privileges; DROP/CREATE in one session keeps working (C caches are
-- invalidated).
CREATE EXTENSION audit_db;

SELECT extname, extversion, extrelocatable, extnamespace::regnamespace AS schema
FROM pg_extension WHERE extname = 'audit_db';

-- pg_cron and pgcrypto are not hard requirements, in any version.
SELECT version, requires FROM pg_available_extension_versions WHERE name = 'audit_db' ORDER BY version;

-- The objects of the extension.
SELECT pg_describe_object(classid, objid, objsubid) AS object
FROM pg_depend
WHERE refclassid = 'pg_extension'::regclass
  AND refobjid = (SELECT oid FROM pg_extension WHERE extname = 'audit_db')
  AND deptype = 'e'
  AND NOT (classid = 'pg_class'::regclass AND objid::regclass::text ~ '^audit\.audit_log_[0-9]{4}_[0-9]{2}$')
ORDER BY 1;

-- Partitions: default, the current UTC month and audit_db.premake_months (6) ahead.
SELECT count(*) AS partitions,
       count(*) FILTER (WHERE pg_get_expr(c.relpartbound, c.oid) = 'DEFAULT') AS default_partitions
FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
WHERE i.inhparent = 'audit.audit_log'::regclass;

SELECT audit.ensure_month_partition(now())
       = format('audit.audit_log_%s', to_char(now() AT TIME ZONE 'UTC', 'YYYY_MM'))::regclass AS current_month,
       audit.ensure_month_partition(now() + interval '1 month')
       = format('audit.audit_log_%s', to_char((now() + interval '1 month') AT TIME ZONE 'UTC', 'YYYY_MM'))::regclass AS next_month;

-- Bounds are UTC month starts, whatever the session time zone.
SET TimeZone = 'America/New_York';
SELECT audit.ensure_month_partition('2031-03-15 12:00+00') AS created;
SET TimeZone = 'UTC';
SELECT pg_get_expr(relpartbound, oid) AS bounds
FROM pg_class WHERE oid = 'audit.audit_log_2031_03'::regclass;
RESET TimeZone;
-- Idempotent.
SELECT audit.ensure_month_partition('2031-03-01 00:00+00') AS again;

SELECT audit.ensure_month_partition(NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT audit.ensure_month_partition('infinity');
\echo :LAST_ERROR_SQLSTATE

-- Every guard trigger fires ALWAYS (also under session_replication_role = replica),
-- on the parent and on every partition.
SELECT c.relname, t.tgname, t.tgenabled
FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
WHERE c.relnamespace = 'audit'::regnamespace AND c.relname ~ '^audit_log(_default)?$'
ORDER BY 1, 2;
SELECT count(*) AS partition_guards_not_always
FROM pg_trigger t JOIN pg_inherits i ON i.inhrelid = t.tgrelid
WHERE i.inhparent = 'audit.audit_log'::regclass AND t.tgenabled <> 'A';
SELECT count(*) AS partitions_without_truncate_guard
FROM pg_inherits i
WHERE i.inhparent = 'audit.audit_log'::regclass
  AND NOT EXISTS (SELECT FROM pg_trigger t
                  WHERE t.tgrelid = i.inhrelid AND t.tgname = 'audit_log_refuse_truncate');

-- Indexes for the access patterns.
SELECT indexrelid::regclass AS index, pg_get_indexdef(indexrelid) AS definition
FROM pg_index WHERE indrelid = 'audit.audit_log'::regclass ORDER BY 1;

-- Drop and re-create in the same session: the per-backend caches follow.
INSERT INTO audit.audit_log (action, status) VALUES ('install_check', 'success');
DROP EXTENSION audit_db;
CREATE EXTENSION audit_db;
INSERT INTO audit.audit_log (action, status) VALUES ('install_check', 'success');
SELECT audit.log_event(action => 'install_check') > 0 AS logged;
SELECT id, action, audit.leaf_hash(l) = hash AS hash_ok FROM audit.audit_log l ORDER BY id;

-- Twice more, each new extension's first event logged through
-- audit.log_event(): ids start again at 1, the same id as the last event of
-- the extension before, and the call still sees its row stamped (it once
-- compared ids and failed here).
DROP EXTENSION audit_db;
CREATE EXTENSION audit_db;
SELECT audit.log_event(action => 'install_check') AS first_id;
DROP EXTENSION audit_db;
CREATE EXTENSION audit_db;
SELECT audit.log_event(action => 'install_check') AS first_id_again;
