-- change_tracking: audit.track_table() on ordinary tables (issue 8).
-- INSERT, UPDATE, DELETE and TRUNCATE give exactly the expected events
-- (action, target, diff; excluded columns absent, hashed ones hashed); a
-- table without a primary key works; a rolled-back change leaves no event;
-- the events are sealed and verify; the organization comes from a column;
-- DDL is logged, renamed and added columns are handled; the triggers cannot
-- be dropped or disabled behind audit.untrack_table(); switching tracking
-- on and off is logged, and only allowed roles may.

\i sql/include/fresh_extension.sql
\set VERBOSITY terse

CREATE TABLE public.patients (
  id         integer PRIMARY KEY,
  clinic     text NOT NULL,
  name       text,
  ssn        text,
  notes      text,
  active     boolean DEFAULT true,
  balance    numeric(10, 2),
  attributes jsonb
);
CREATE TABLE public.visit_log (patient integer, seen_at date, room text);    -- no primary key
CREATE TABLE public.order_lines (order_id integer, line integer, qty integer, PRIMARY KEY (order_id, line));

-- Errors.
SELECT pg_temp.error_of($$SELECT audit.track_table('public.patients', operations => '{INSERT,MERGE}')$$);
SELECT pg_temp.error_of($$SELECT audit.track_table('public.patients', exclude_columns => '{nope}')$$);
SELECT pg_temp.error_of($$SELECT audit.track_table('public.patients', exclude_columns => '{ssn}', hash_columns => '{ssn}')$$);
SELECT pg_temp.error_of($$SELECT audit.track_table('public.patients', data_classification => 'SECRET')$$);
SELECT pg_temp.error_of($$SELECT audit.track_table('public.patients', organization_column => 'clinic', organization_id => 'x')$$);
SELECT pg_temp.error_of($$SELECT audit.track_table('audit.alerts')$$);
SELECT pg_temp.error_of($$SELECT audit.untrack_table('public.patients')$$);
SELECT count(*) AS tracked FROM audit.tracked_table;

SELECT audit.track_table('public.patients', exclude_columns => '{notes}', hash_columns => '{ssn}',
                         data_classification => 'PHI', organization_column => 'clinic');
SELECT audit.track_table('public.visit_log', operations => '{INSERT,DELETE}', organization_id => 'clinic_b');
SELECT audit.track_table('public.order_lines', full_rows => true);
SELECT table_name, operations, excluded_columns, hashed_columns, full_rows, data_classification,
       organization_column, organization_id, trigger_active
  FROM audit.tracked_tables ORDER BY table_name::text;
SELECT action, target_resource_type, target_resource_id, details->'operations' AS operations
  FROM audit.audit_log WHERE action LIKE 'change_tracking.%' ORDER BY id;

-- The change events of a tracked table are its trigger's: nobody writes them
-- by hand, through log_event() or INSERT; other suffixes and the names of
-- untracked tables stay free.
SELECT pg_temp.error_of($$SELECT audit.log_event(action => 'patients.update', status => 'success')$$);
SELECT pg_temp.error_of($$INSERT INTO audit.audit_log (action, status) VALUES ('order_lines.truncate', 'success')$$);
SELECT audit.log_event(action => 'patients.updated', status => 'success') > 0 AS other_suffix,
       audit.log_event(action => 'invoices.update', status => 'success') > 0 AS untracked_table,
       audit.log_event(action => 'public.patients.update', status => 'success') > 0 AS not_its_action_name;

-- The changes.
CREATE TEMP TABLE mark AS SELECT coalesce(max(id), 0) AS last FROM audit.audit_log;
INSERT INTO public.patients VALUES
  (1, 'clinic_a', 'Ann', '123-45-6789', 'private note', true, 10.50, '{"allergies": ["nuts"]}'),
  (2, 'clinic_b', 'Bob', NULL, NULL, true, 0, NULL);
UPDATE public.patients SET balance = 12.00, notes = 'changed note' WHERE id = 1;
UPDATE public.patients SET notes = 'only the excluded column' WHERE id = 2;
DELETE FROM public.patients WHERE id = 2;
BEGIN;
INSERT INTO public.patients VALUES (3, 'clinic_a', 'Rolled Back');
ROLLBACK;
INSERT INTO public.visit_log VALUES (1, '2026-11-30', 'A1'), (1, '2026-11-30', 'A1');
UPDATE public.visit_log SET room = 'B2';                       -- UPDATE is not tracked here
DELETE FROM public.visit_log WHERE room = 'B2';
INSERT INTO public.order_lines VALUES (7, 1, 3);
UPDATE public.order_lines SET qty = 4;
TRUNCATE public.order_lines;

SELECT a.action, a.target_resource_type, a.target_resource_id, a.organization_id, a.data_classification,
       a.principal_id = current_user AS by_me
  FROM audit.audit_log a, mark WHERE a.id > mark.last ORDER BY a.id;
-- The diffs: excluded columns absent, hashed ones hashed, updates keep only
-- what changed (unless full rows), JSON types kept.
SELECT a.action, a.details->'old' AS old, a.details->'new' AS new, a.details->'changed' AS changed
  FROM audit.audit_log a, mark WHERE a.id > mark.last AND a.action LIKE 'patients.%' ORDER BY a.id;
SELECT a.details->'new'->>'ssn' = 'sha256:' || encode(sha256('123-45-6789'), 'hex') AS ssn_hashed,
       a.details::text LIKE '%private note%' AS notes_leaked
  FROM audit.audit_log a, mark WHERE a.id > mark.last AND a.action = 'patients.insert' AND a.target_resource_id = '1';
SELECT a.action, a.target_resource_id ~ '^row:[0-9a-f]{64}$' AS row_identity, a.details->'new' AS new,
       a.details->'old' AS old
  FROM audit.audit_log a, mark WHERE a.id > mark.last AND a.action LIKE 'visit_log.%' ORDER BY a.id;
SELECT a.action, a.details->'old' AS old, a.details->'new' AS new
  FROM audit.audit_log a, mark WHERE a.id > mark.last AND a.action LIKE 'order_lines.%' ORDER BY a.id;
-- The actor and the statement: every row of one statement shares a correlation id.
SELECT a.details->'actor'->>'session_user' = session_user AS session_user_ok,
       a.details->'actor'->>'current_user' = current_user AS current_user_ok,
       a.details->'actor' ? 'transaction_id' AS has_xid, a.correlation_id ~ '^stmt:[0-9]+\.[0-9]+\.[0-9]+$' AS stmt
  FROM audit.audit_log a, mark WHERE a.id > mark.last ORDER BY a.id LIMIT 1;
SELECT count(DISTINCT a.correlation_id) AS statements, count(*) AS rows
  FROM audit.audit_log a, mark WHERE a.id > mark.last AND a.action = 'visit_log.insert';
SELECT count(*) AS rolled_back_events FROM audit.audit_log a WHERE a.target_resource_id = '3';

-- The event writer (src/event_writer.c) across statements, savepoints, COPY
-- and errors: every committed change has its event, no rolled-back one does,
-- and nothing leaks (a relation left open would show as a WARNING here).
CREATE TEMP TABLE mark2 AS SELECT coalesce(max(id), 0) AS last FROM audit.audit_log;
BEGIN;
INSERT INTO public.order_lines VALUES (8, 1, 1);
SAVEPOINT a;
INSERT INTO public.order_lines VALUES (8, 2, 2);
ROLLBACK TO SAVEPOINT a;
SAVEPOINT b;
INSERT INTO public.order_lines VALUES (8, 3, 3);
RELEASE SAVEPOINT b;
UPDATE public.order_lines SET qty = qty + 10 WHERE order_id = 8;
COMMIT;
COPY public.order_lines FROM stdin;
9	1	1
9	2	2
\.
BEGIN;
COPY public.order_lines FROM stdin;
9	3	3
\.
-- DDL on audit.audit_log in the same transaction finds nothing held open.
SELECT audit.ensure_month_partition(now() + interval '14 months') IS NOT NULL AS partition_created;
ROLLBACK;
-- Outside subtransactions the writer stays open from one statement of a
-- transaction to the next: DDL that refuses a relation in use (ALTER TABLE
-- of the partition the events went to) still runs between them, and the
-- events after it are written as before.
BEGIN;
DO $$
BEGIN
  INSERT INTO public.order_lines VALUES (11, 1, 1);
  EXECUTE format('ALTER TABLE %s SET (fillfactor = 100)',
                 (SELECT tableoid::regclass FROM audit.audit_log ORDER BY id DESC LIMIT 1));
  INSERT INTO public.order_lines VALUES (11, 2, 2);
END
$$;
SELECT audit.ensure_month_partition(now() + interval '15 months') IS NOT NULL AS partition_created;
UPDATE public.order_lines SET qty = qty + 1 WHERE order_id = 11;
SELECT a.action, a.target_resource_id, count(*) OVER (PARTITION BY a.correlation_id) AS events_of_statement
  FROM audit.audit_log a WHERE a.action LIKE 'order_lines.%' AND a.target_resource_id LIKE '["11",%' ORDER BY a.id;
ROLLBACK;
-- A BEFORE INSERT trigger of one's own on audit.audit_log fires for the
-- events, before the stamping trigger (alphabetical order), as for an INSERT.
BEGIN;
CREATE FUNCTION public.tag_event() RETURNS trigger LANGUAGE plpgsql AS
  $$ BEGIN NEW.details := NEW.details || '{"tagged": true}'; RETURN NEW; END $$;
CREATE TRIGGER a_tag_event BEFORE INSERT ON audit.audit_log FOR EACH ROW EXECUTE FUNCTION public.tag_event();
INSERT INTO public.order_lines VALUES (11, 3, 3);
SELECT a.action, a.details->>'tagged' AS tagged, length(a.hash) AS hash_bytes
  FROM audit.audit_log a WHERE a.action = 'order_lines.insert' ORDER BY a.id DESC LIMIT 1;
ROLLBACK;
-- A PL/pgSQL exception block: the block's events go with it, the rest stay.
DO $$
BEGIN
  INSERT INTO public.order_lines VALUES (10, 1, 1);
  BEGIN
    INSERT INTO public.order_lines VALUES (10, 2, 2);
    INSERT INTO public.order_lines VALUES (10, 1, 1);      -- duplicate key
  EXCEPTION WHEN unique_violation THEN
    INSERT INTO public.order_lines VALUES (10, 3, 3);
  END;
END
$$;
SELECT a.action, a.target_resource_id, a.details->'new'->>'qty' AS qty,
       count(*) OVER (PARTITION BY a.correlation_id) AS events_of_statement
  FROM audit.audit_log a, mark2 WHERE a.id > mark2.last AND a.action LIKE 'order_lines.%' ORDER BY a.id;
SELECT array_agg(DISTINCT order_id ORDER BY order_id) AS orders_kept FROM public.order_lines;
-- Foreign-key checks run queries between the rows of one statement (and move
-- the command counter on): the statement still has one correlation id.
CREATE TABLE public.fk_parent (id integer PRIMARY KEY);
CREATE TABLE public.fk_child (id integer PRIMARY KEY, parent integer REFERENCES public.fk_parent);
INSERT INTO public.fk_parent SELECT generate_series(1, 5);
SELECT audit.track_table('public.fk_child');
INSERT INTO public.fk_child VALUES (1, 1), (2, 2), (3, 3);
COPY public.fk_child FROM stdin;
4	4
5	5
\.
SELECT count(*) AS events, count(DISTINCT correlation_id) AS statements
  FROM audit.audit_log WHERE action = 'fk_child.insert';
SELECT audit.untrack_table('public.fk_child');
DROP TABLE public.fk_child, public.fk_parent;
-- A value longer than its audit_log column is refused, with the change.
CREATE TABLE public.long_keys (k text PRIMARY KEY);
SELECT audit.track_table('public.long_keys');
SELECT pg_temp.error_of($$INSERT INTO public.long_keys VALUES (repeat('k', 300))$$);
SELECT count(*) AS long_keys_rows FROM public.long_keys;
SELECT audit.untrack_table('public.long_keys');
DROP TABLE public.long_keys;

-- Sealed and verified like every other event.
SELECT pg_temp.seal_all() AS sealed;
SELECT count(*) AS problems FROM audit.verify();

-- DDL: logged; a renamed column keeps its options (by number), an added one
-- is tracked; the cache follows without a reconnect.
ALTER TABLE public.patients RENAME COLUMN ssn TO social_security;
ALTER TABLE public.patients ADD COLUMN email text;
SELECT hashed_columns, excluded_columns FROM audit.tracked_tables WHERE table_name = 'public.patients'::regclass;
INSERT INTO public.patients (id, clinic, name, social_security, email) VALUES (4, 'clinic_a', 'Dee', '999', 'dee@x');
SELECT a.details->'new'->>'social_security' LIKE 'sha256:%' AS still_hashed, a.details->'new'->>'email' AS email
  FROM audit.audit_log a WHERE a.action = 'patients.insert' AND a.target_resource_id = '4';
SELECT details->>'command_tag' AS command_tag, target_resource_id
  FROM audit.audit_log WHERE action = 'change_tracking.ddl' ORDER BY id;

-- The triggers cannot be dropped or disabled behind the registry's back.
SELECT pg_temp.error_of($$DROP TRIGGER audit_db_changes ON public.patients$$);
SELECT pg_temp.error_of($$ALTER TABLE public.patients DISABLE TRIGGER audit_db_changes$$);
SELECT pg_temp.error_of($$ALTER TABLE public.patients DISABLE TRIGGER ALL$$);
SELECT trigger_active FROM audit.tracked_tables WHERE table_name = 'public.patients'::regclass;

-- Tenant isolation applies: clinic_a's application sees clinic_a's events only.
CREATE ROLE regress_ct_clinic_a LOGIN IN ROLE audit_db_auditor;
SELECT audit.grant_organization_access('regress_ct_clinic_a', 'clinic_a');
INSERT INTO audit.organization_role (organization_id, role_name, permissions)
VALUES ('clinic_a', 'reader', '[{"resource": "audit.audit_log", "action": "read"}]');
INSERT INTO audit.organization_role_assignment (organization_id, principal_id, role_name)
VALUES ('clinic_a', 'regress_ct_clinic_a', 'reader');
SET SESSION AUTHORIZATION regress_ct_clinic_a;
SELECT DISTINCT organization_id FROM audit.audit_log WHERE action LIKE 'patients.%';
RESET SESSION AUTHORIZATION;

-- Who may switch tracking: the owner, and whom it grants EXECUTE; the table's
-- own writers need nothing on the audit tables.
CREATE ROLE regress_ct_app LOGIN;
GRANT SELECT, INSERT, UPDATE, DELETE ON public.patients TO regress_ct_app;
SET SESSION AUTHORIZATION regress_ct_app;
INSERT INTO public.patients (id, clinic, name) VALUES (5, 'clinic_b', 'Eve');
SELECT pg_temp.error_of($$SELECT audit.untrack_table('public.patients')$$);
RESET SESSION AUTHORIZATION;
SELECT principal_id, details->'actor'->>'current_user' AS current_user, details->'actor'->>'session_user' AS session_user
  FROM audit.audit_log WHERE action = 'patients.insert' AND target_resource_id = '5';

-- Untracking, by a role the owner allowed to: logged, triggers gone, no more
-- events; DROP TABLE of a tracked table is logged and forgets it.
GRANT USAGE ON SCHEMA audit TO regress_ct_app;
GRANT EXECUTE ON FUNCTION audit.untrack_table(regclass) TO regress_ct_app;
SET SESSION AUTHORIZATION regress_ct_app;
SELECT audit.untrack_table('public.patients');
RESET SESSION AUTHORIZATION;
SELECT count(*) AS triggers FROM pg_trigger WHERE tgrelid = 'public.patients'::regclass AND NOT tgisinternal;
INSERT INTO public.patients (id, clinic) VALUES (6, 'clinic_a');
SELECT count(*) AS events_for_6 FROM audit.audit_log WHERE action LIKE 'patients.%' AND target_resource_id = '6';
DROP TABLE public.visit_log;
SELECT table_name::text FROM audit.tracked_table ORDER BY 1;
SELECT action, target_resource_id, principal_id FROM audit.audit_log
 WHERE action IN ('change_tracking.disable', 'change_tracking.drop') ORDER BY id;
SELECT pg_temp.error_of($$INSERT INTO audit.audit_log (action, status) VALUES ('change_tracking.disable', 'success')$$);

-- A partitioned table: its partitions (one with another column order) fire
-- the tracking trigger, and their rows are recorded as the parent's.
CREATE TABLE public.readings (site text, taken date, value integer, PRIMARY KEY (site, taken))
  PARTITION BY RANGE (taken);
CREATE TABLE public.readings_2026 PARTITION OF public.readings FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
CREATE TABLE public.readings_2027 (value integer, taken date NOT NULL, site text NOT NULL);
ALTER TABLE public.readings ATTACH PARTITION public.readings_2027 FOR VALUES FROM ('2027-01-01') TO ('2028-01-01');
SELECT audit.track_table('public.readings', hash_columns => '{value}');
INSERT INTO public.readings VALUES ('north', '2026-05-01', 7), ('south', '2027-02-01', 9);
UPDATE public.readings SET value = 10 WHERE site = 'south';
SELECT action, target_resource_type, target_resource_id, details->'new'->>'value' LIKE 'sha256:%' AS hashed,
       details->'changed' AS changed
  FROM audit.audit_log WHERE action LIKE 'readings.%' ORDER BY id;

-- Cleanup.
SELECT audit.untrack_table('public.readings');
DROP TABLE public.readings;
SELECT audit.untrack_table('public.order_lines');
DROP TABLE public.patients, public.order_lines;
DELETE FROM audit.organization_role_assignment;
DELETE FROM audit.organization_role;
DELETE FROM audit.organization_access;
REVOKE ALL ON FUNCTION audit.untrack_table(regclass) FROM regress_ct_app;
REVOKE ALL ON SCHEMA audit FROM regress_ct_app;
DROP ROLE regress_ct_app, regress_ct_clinic_a;

-- Every kind of value as JSON: integers and numerics as numbers (NaN and the
-- infinities, which JSON lacks, as strings), floats and text as strings,
-- booleans, jsonb nested as JSON (scalars too), dates and times in ISO 8601
-- (timestamptz in UTC); the keys in jsonb's order.
CREATE TABLE public.value_kinds (id bigint PRIMARY KEY, s smallint, b bigint, n numeric, f float8, j jsonb,
                                 ok boolean, d date, ts timestamptz, t text);
-- (The session has just read the tracked tables, for an action that looked
-- like a change event; tracking one more must still reserve its names.)
SELECT audit.log_event(action => 'not_tracked.update', status => 'success') > 0 AS logged;
SELECT audit.track_table('public.value_kinds');
SELECT pg_temp.error_of($$SELECT audit.log_event(action => 'value_kinds.insert', status => 'success')$$);
INSERT INTO public.value_kinds VALUES
  (1, -32768, 9223372036854775807, 1.50, 0.1, '{"z": [1, {"b": null, "a": "x"}], "aa": 2.50}', true,
   '2026-12-02', '2026-12-02 10:00+02', 'ü'),
  (2, NULL, -9223372036854775808, 'NaN', 'NaN', '5', false, NULL, NULL, ''),
  (3, 0, 0, 'Infinity', 'Infinity', '"str"', NULL, NULL, NULL, NULL),
  (4, 1, 1, '-Infinity', '-Infinity', 'null', NULL, NULL, NULL, NULL),
  (5, 1, 1, -0.000, 1e300, '[]', NULL, NULL, NULL, NULL);
UPDATE public.value_kinds SET n = n * 2, j = j || '{"added": true}' WHERE id = 1;
SELECT a.action, a.target_resource_id, a.details->'old' AS old, a.details->'new' AS new, a.details->'changed' AS changed
  FROM audit.audit_log a WHERE a.action LIKE 'value_kinds.%' ORDER BY a.id;
SELECT audit.untrack_table('public.value_kinds');
-- Untracked, its name is free again.
SELECT audit.log_event(action => 'value_kinds.insert', status => 'success') > 0 AS logged_after_untrack;
DROP TABLE public.value_kinds;
-- Their leaf hashes (over the canonical text of details) verify.
SELECT pg_temp.seal_all() AS sealed;
SELECT count(*) AS problems FROM audit.verify();
