-- gdpr: pseudonyms, reverse lookup, subject export and erasure (issue 6).
-- Each operation changes exactly the subject's rows, keeps the chain
-- verifiable, and is itself logged; bad input and callers without the
-- permission get a clear error and change nothing; tampering with a
-- redacted row or its attestation is found by audit.verify().
-- Pseudonyms of the hash strategy depend on the database's own random key,
-- so the suite compares them with each other, never with fixed text.

\i sql/include/fresh_extension.sql
\set VERBOSITY terse


CREATE ROLE regress_gd_officer LOGIN IN ROLE audit_db_privacy_officer, audit_db_auditor;
CREATE ROLE regress_gd_nobody LOGIN;
CREATE ROLE regress_gd_writer LOGIN IN ROLE audit_db_writer;
CREATE ROLE regress_gd_tenant_a LOGIN IN ROLE audit_db_writer;
CREATE ROLE regress_gd_tenant_b LOGIN IN ROLE audit_db_writer;
GRANT USAGE ON SCHEMA audit TO regress_gd_nobody;
SELECT audit.grant_organization_access('regress_gd_tenant_a', 'org_a');
SELECT audit.grant_organization_access('regress_gd_tenant_b', 'org_b');
-- org_a's privacy role may pseudonymize and export, not erase or reverse.
INSERT INTO audit.organization_role (organization_id, role_name, permissions) VALUES
  ('org_a', 'privacy', '[{"resource": "gdpr", "action": "pseudonymize"}, {"resource": "gdpr", "action": "export"},
                         {"resource": "audit.audit_log", "action": "*"}]'),
  ('org_b', 'app', '[{"resource": "audit.audit_log", "action": "*"}]');
INSERT INTO audit.organization_role_assignment (organization_id, principal_id, role_name) VALUES
  ('org_a', 'regress_gd_tenant_a', 'privacy'), ('org_b', 'regress_gd_tenant_b', 'app');

-- The log: alice acts and is acted upon in two organizations; other rows
-- only look like her ('alicea', 'malice', 'alice2' are other tokens).
INSERT INTO audit.audit_log (organization_id, principal_id, action, status, target_resource_type,
                             target_resource_id, outcome_description, data_classification, details, correlation_id) VALUES
  ('org_a', 'alice', 'patient.view', 'success', 'patient', 'p-1', 'alice opened p-1', 'PHI',
   '{"ip": "10.0.0.1", "user": "alice", "tags": ["alice", "x"], "alice": {"nested": "by alice."}}', 'r1'),
  ('org_a', 'bob', 'user.update', 'success', 'user', 'alice', 'bob changed alice''s e-mail', 'CONFIDENTIAL',
   '{"field": "email"}', 'r2'),
  ('org_a', 'alice', 'invoice.pay', 'success', 'invoice', 'inv-7', 'paid', 'FINANCIAL', '{"amount": 12.50}', 'r3'),
  ('org_b', 'alice', 'login', 'failure', NULL, NULL, NULL, 'INTERNAL', '"alice"', 'r4'),
  ('org_a', 'carol', 'login', 'success', NULL, NULL, 'alicea malice alice2', 'INTERNAL', '{"who": "alicea"}', 'r5'),
  ('org_b', 'dave', 'login', 'success', NULL, NULL, NULL, 'INTERNAL', NULL, 'r6'),
  ('org_b', 'erin', 'report.view', 'success', 'report', 'r-1', NULL, 'INTERNAL', '{"by": "erin"}', 'r7');
SELECT pg_temp.seal_all() AS sealed;
CREATE TEMP TABLE before AS SELECT * FROM audit.audit_log WHERE correlation_id ~ '^r[0-9]$';

-- Whole-token matching.
SELECT r.correlation_id, audit.mentions_subject(r, '{alice}') AS alice, audit.mentions_subject(r, '{alicea}') AS alicea,
       audit.mentions_subject(r, '{p-1}') AS "p-1", audit.mentions_subject(r, '{e-mail}') AS "e-mail"
  FROM audit.audit_log r WHERE r.id IN (SELECT id FROM before) ORDER BY r.id;

-- Bad input: clear errors, nothing changed.
CREATE TEMP VIEW gdpr_state AS
  SELECT (SELECT count(*) FROM audit.audit_log) AS log_rows,
         (SELECT count(*) FROM audit.audit_log WHERE personal_data_salt IS NULL) AS redacted,
         (SELECT count(*) FROM audit.pseudonym_mapping) AS mappings,
         (SELECT count(*) FROM audit.redaction_request) AS requests,
         (SELECT count(*) FROM audit.redacted_row) AS attestations;
SELECT * FROM gdpr_state;
SELECT pg_temp.error_of($$SELECT * FROM audit.pseudonymize(NULL, 'hash', 'ticket-1')$$);
SELECT pg_temp.error_of($$SELECT * FROM audit.pseudonymize('', 'hash', 'ticket-1')$$);
SELECT pg_temp.error_of($$SELECT * FROM audit.pseudonymize('alice', 'rot13', 'ticket-1')$$);
SELECT pg_temp.error_of($$SELECT * FROM audit.pseudonymize('alice', NULL, 'ticket-1')$$);
SELECT pg_temp.error_of($$SELECT * FROM audit.pseudonymize('alice', 'hash', NULL)$$);
SELECT pg_temp.error_of($$SELECT * FROM audit.pseudonymize('alice', 'hash', '  ')$$);
SELECT pg_temp.error_of($$SELECT * FROM audit.pseudonymize('zoe', 'hash', 'ticket-1')$$);
SELECT pg_temp.error_of($$SELECT * FROM audit.pseudonymize(repeat('z', 256), 'hash', 'ticket-1')$$);
SELECT pg_temp.error_of($$SELECT * FROM audit.pseudonymize('alice', 'hash', 'ticket-1', encryption_key => 'some key of enough length')$$);
SELECT pg_temp.error_of($$SELECT * FROM audit.pseudonymize('alice', 'encryption', 'ticket-1')$$);
SELECT pg_temp.error_of($$SELECT * FROM audit.pseudonymize('alice', 'encryption', 'ticket-1', encryption_key => 'short')$$);
SELECT pg_temp.error_of($$SELECT * FROM audit.pseudonymize('alice', 'hash', 'ticket-1', organization => '')$$);
SELECT pg_temp.error_of($$SELECT * FROM audit.erase_subject('zoe', 'ticket-1')$$);
SELECT pg_temp.error_of($$SELECT * FROM audit.erase_subject('alice', NULL)$$);
SELECT pg_temp.error_of($$SELECT * FROM audit.erase_subject('alice', 'ticket-1', keep_compliance => NULL)$$);
SELECT pg_temp.error_of($$SELECT audit.export_subject('alice', format => 'pdf')$$);
SELECT pg_temp.error_of($$SELECT audit.export_subject(NULL)$$);
SELECT pg_temp.error_of($$SELECT audit.original_id(NULL)$$);
SELECT pg_temp.error_of($$SELECT audit.original_id('ph_0000')$$);
SELECT * FROM gdpr_state;

-- Callers without the permission: refused, nothing changed.
SET SESSION AUTHORIZATION regress_gd_nobody;
SELECT pg_temp.error_of($$SELECT * FROM audit.pseudonymize('alice', 'hash', 'ticket-1')$$);
SELECT pg_temp.error_of($$SELECT audit.export_subject('alice')$$);
SELECT pg_temp.error_of($$SELECT * FROM audit.erase_subject('alice', 'ticket-1')$$);
SELECT pg_temp.error_of($$SELECT audit.original_id('ph_0000')$$);
SET SESSION AUTHORIZATION regress_gd_writer;
SELECT pg_temp.error_of($$SELECT * FROM audit.erase_subject('alice', 'ticket-1')$$);
-- org_b's application has no gdpr permission in org_b.
SET SESSION AUTHORIZATION regress_gd_tenant_b;
SELECT pg_temp.error_of($$SELECT * FROM audit.pseudonymize('alice', 'hash', 'ticket-1')$$);
-- org_a's privacy role may pseudonymize, but neither erase nor reverse, nor
-- touch org_b.
SET SESSION AUTHORIZATION regress_gd_tenant_a;
SELECT pg_temp.error_of($$SELECT * FROM audit.erase_subject('alice', 'ticket-1')$$);
SELECT pg_temp.error_of($$SELECT audit.original_id('ph_0000')$$);
SELECT pg_temp.error_of($$SELECT * FROM audit.pseudonymize('alice', 'hash', 'ticket-1', organization => 'org_b')$$);
-- Internal helpers are the owner's alone.
SELECT pg_temp.error_of($$SELECT audit.gdpr_hmac('\x00', 'a', 'b', 'c')$$);
SELECT pg_temp.error_of($$SELECT * FROM audit.redact_subject_rows(1, '{alice}', 'x', NULL, false, false)$$);
SELECT pg_temp.error_of($$SELECT * FROM audit.pseudonym_secret$$);
SELECT pg_temp.error_of($$SELECT * FROM audit.pseudonym_mapping$$);
RESET SESSION AUTHORIZATION;
SELECT * FROM gdpr_state;

-- A tenant pseudonymizes alice in its own organization: only org_a's rows
-- that mention her change; org_b's alice row stays.
SET SESSION AUTHORIZATION regress_gd_tenant_a;
CREATE TEMP TABLE tenant_result AS SELECT * FROM audit.pseudonymize('alice', 'hash', 'ticket-a1');
SELECT pseudonym ~ '^ph_[0-9a-f]{32}$' AS hash_pseudonym, rows_affected FROM tenant_result;
RESET SESSION AUTHORIZATION;
SELECT b.correlation_id, b.organization_id, a.principal_id = (SELECT pseudonym FROM tenant_result) AS principal_pseudonymized,
       a.personal_data_salt IS NULL AS redacted, a.hash = b.hash AS same_leaf
  FROM before b JOIN audit.audit_log a USING (id) ORDER BY b.id;
SELECT organization_scope, strategy, requested_by, created_by FROM audit.pseudonym_mapping;

-- The privacy officer pseudonymizes alice everywhere (scope '*': another
-- pseudonym than org_a's); the same call again finds nothing more and
-- returns the same pseudonym (hash is deterministic).
SET SESSION AUTHORIZATION regress_gd_officer;
CREATE TEMP TABLE officer_first AS SELECT * FROM audit.pseudonymize('alice', 'hash', 'ticket-2');
CREATE TEMP TABLE officer_again AS SELECT * FROM audit.pseudonymize('alice', 'hash', 'ticket-2');
RESET SESSION AUTHORIZATION;
SELECT f.rows_affected AS first_rows, g.rows_affected AS again_rows, f.pseudonym = g.pseudonym AS deterministic,
       f.pseudonym <> t.pseudonym AS differs_from_tenant_scope
  FROM officer_first f, officer_again g, tenant_result t;
-- org_b's row now carries the officer's pseudonym; org_a's rows keep the
-- tenant's (they no longer mention 'alice'); nobody else's row changed.
SELECT b.correlation_id, a.principal_id IN (SELECT pseudonym FROM officer_first) AS officer_pseudonym,
       a.principal_id IN (SELECT pseudonym FROM tenant_result) AS tenant_pseudonym,
       a.hash = b.hash AS same_leaf,
       (a.principal_id, a.target_resource_id, a.outcome_description, a.details)
         IS NOT DISTINCT FROM (b.principal_id, b.target_resource_id, b.outcome_description, b.details) AS unchanged
  FROM before b JOIN audit.audit_log a USING (id) ORDER BY b.id;
-- Every occurrence went: in keys, nested strings, arrays, a scalar document.
SELECT a.correlation_id, a.details::text ~ '\malice\M' AS details_mention_alice,
       a.outcome_description ~ '\malice\M' AS description_mentions_alice,
       regexp_replace(a.details::text, 'ph_[0-9a-f]{32}', 'ph_<pseudonym>', 'g') AS details
  FROM audit.audit_log a WHERE a.correlation_id IN ('r1', 'r2', 'r4', 'r5') ORDER BY a.id;
SELECT pg_temp.seal_all() AS sealed;
SELECT count(*) AS problems FROM audit.verify();

-- Token and encryption strategies; reverse lookup for allowed roles only,
-- each lookup logged.
SET SESSION AUTHORIZATION regress_gd_officer;
CREATE TEMP TABLE dave AS SELECT * FROM audit.pseudonymize('dave', 'token', 'ticket-3');
CREATE TEMP TABLE erin AS
  SELECT * FROM audit.pseudonymize('erin', 'encryption', 'ticket-4', encryption_key => 'correct horse battery staple');
SELECT (SELECT pseudonym ~ '^pt_[0-9a-f]{32}$' FROM dave) AS token_pseudonym,
       (SELECT pseudonym ~ '^pe_[A-Za-z0-9_-]+$' FROM erin) AS encryption_pseudonym,
       (SELECT rows_affected FROM dave) AS dave_rows, (SELECT rows_affected FROM erin) AS erin_rows;
-- Asked again, after dave logged one more event: the same token covers the
-- new row, and a repeated request changes nothing and is no error (the same
-- for the encryption strategy).
RESET SESSION AUTHORIZATION;
INSERT INTO audit.audit_log (action, status, principal_id) VALUES ('late_dave', 'success', 'dave');
SET SESSION AUTHORIZATION regress_gd_officer;
SELECT p.pseudonym = d.pseudonym AS same_token, p.rows_affected
  FROM audit.pseudonymize('dave', 'token', 'ticket-3b') p, dave d;
SELECT p.pseudonym = d.pseudonym AS same_token, p.rows_affected
  FROM audit.pseudonymize('dave', 'token', 'ticket-3c') p, dave d;
SELECT p.pseudonym = e.pseudonym AS same_pseudonym, p.rows_affected
  FROM audit.pseudonymize('erin', 'encryption', 'ticket-4b', encryption_key => 'correct horse battery staple') p, erin e;
RESET SESSION AUTHORIZATION;
SELECT count(*) AS dave_mappings FROM audit.pseudonym_mapping m, dave d WHERE m.strategy = 'token'
   AND m.original_lookup = (SELECT original_lookup FROM audit.pseudonym_mapping WHERE pseudonym = d.pseudonym);
SET SESSION AUTHORIZATION regress_gd_officer;
SELECT audit.original_id((SELECT pseudonym FROM dave), reason => 'subject access request 3') AS dave;
SELECT audit.original_id((SELECT pseudonym FROM erin), encryption_key => 'correct horse battery staple') AS erin;
SELECT audit.original_id((SELECT pseudonym FROM erin), encryption_key => 'wrong horse battery staple') AS erin;
SELECT audit.original_id((SELECT pseudonym FROM erin)) AS erin;
SELECT audit.original_id((SELECT pseudonym FROM dave), encryption_key => 'correct horse battery staple') AS dave;
SELECT audit.original_id((SELECT pseudonym FROM officer_first)) AS alice;
RESET SESSION AUTHORIZATION;
-- The superuser-only setting supplies the key when none is passed.
SET audit_db.pseudonym_encryption_key = 'correct horse battery staple';
SELECT audit.original_id((SELECT pseudonym FROM erin)) AS erin_from_setting;
RESET audit_db.pseudonym_encryption_key;
-- Others can neither set nor read the setting, nor reverse a pseudonym.
SELECT pseudonym AS dave_pseudonym FROM dave \gset
SET SESSION AUTHORIZATION regress_gd_writer;
SET audit_db.pseudonym_encryption_key = 'correct horse battery staple';
SHOW audit_db.pseudonym_encryption_key;
SELECT audit.original_id(:'dave_pseudonym');
RESET SESSION AUTHORIZATION;
-- The four successful lookups are logged (three by the officer, one by the
-- superuser), with the reason given; the refused ones changed nothing.
SELECT principal_id, target_resource_type, target_resource_id IN (SELECT pseudonym FROM dave UNION ALL
                                                                  SELECT pseudonym FROM erin UNION ALL
                                                                  SELECT pseudonym FROM officer_first) AS names_pseudonym,
       details->>'reason' AS reason, details->>'strategy' AS strategy
  FROM audit.audit_log WHERE action = 'gdpr.original_id' ORDER BY id;

-- Export: every row about or by alice, found through her pseudonyms too,
-- with its chain status; the three formats parse. Each export is logged and
-- names her, so each later export holds one event more.
SELECT pg_temp.seal_all() AS sealed;
SET SESSION AUTHORIZATION regress_gd_officer;
CREATE TEMP TABLE exports AS
  SELECT audit.export_subject('alice')::jsonb AS json,
         audit.export_subject('alice', format => 'csv') AS csv,
         audit.export_subject('alice', format => 'xml') AS xml;
RESET SESSION AUTHORIZATION;
SELECT (json->>'rows')::int AS json_rows, jsonb_array_length(json->'events') AS json_events,
       array_length(regexp_split_to_array(rtrim(csv, E'\r\n'), E'\r\n'), 1) - 1 AS csv_rows,
       xml_is_well_formed_document(xml) AS xml_well_formed,
       (xpath('count(/subject_export/event)', xml::xml))[1]::text AS xml_events
  FROM exports;
SELECT e->>'id' AS id, e->>'action' AS action, e->>'chain_status' AS chain_status, e->>'redacted' AS redacted
  FROM exports, jsonb_array_elements(json->'events') e ORDER BY (e->>'id')::bigint;
SELECT split_part(csv, E'\r\n', 1) AS csv_header FROM exports;
-- A tenant exports its own organization only.
SET SESSION AUTHORIZATION regress_gd_tenant_a;
SELECT (audit.export_subject('alice')::jsonb)->>'rows' AS org_a_rows;
SELECT audit.export_subject('alice', organization => 'org_b');
RESET SESSION AUTHORIZATION;

-- Tampering with a redacted row, or with the attestations, is found.
CREATE TEMP TABLE saved_1 AS SELECT id, details FROM audit.audit_log WHERE correlation_id = 'r1';
ALTER TABLE audit.audit_log DISABLE TRIGGER USER;
UPDATE audit.audit_log SET details = '{"user": "bob"}' WHERE correlation_id = 'r1';
SELECT row_id = (SELECT id FROM saved_1) AS row_r1, field, problem FROM audit.verify();
-- A redaction would hide it: refused, as for a row whose leaf no longer
-- matches.
SELECT pg_temp.error_of($$SELECT * FROM audit.pseudonymize('bob', 'token', 'ticket-5')$$);
CREATE TEMP TABLE saved_5 AS SELECT id, outcome_description FROM audit.audit_log WHERE correlation_id = 'r5';
UPDATE audit.audit_log SET outcome_description = 'carol was here' WHERE correlation_id = 'r5';
SELECT pg_temp.error_of($$SELECT * FROM audit.pseudonymize('carol', 'token', 'ticket-5')$$);
UPDATE audit.audit_log a SET outcome_description = s.outcome_description FROM saved_5 s WHERE a.id = s.id;
SELECT * FROM gdpr_state;
UPDATE audit.audit_log a SET details = b.details FROM before b
 WHERE a.correlation_id = 'r1' AND b.correlation_id = 'r1';   -- the original: still not what was attested
SELECT row_id = (SELECT id FROM saved_1) AS row_r1, field, problem FROM audit.verify();
ALTER TABLE audit.audit_log ENABLE TRIGGER USER;
ALTER TABLE audit.redacted_row DISABLE TRIGGER USER;
CREATE TEMP TABLE attestation_1 AS SELECT * FROM audit.redacted_row WHERE audit_log_id = (SELECT id FROM saved_1);
DELETE FROM audit.redacted_row WHERE audit_log_id = (SELECT id FROM saved_1);
SELECT row_id = (SELECT id FROM saved_1) AS row_r1, field, problem, detail ~ 'no redaction record|do not match' AS explained
  FROM audit.verify() ORDER BY 1, 2;
INSERT INTO audit.redacted_row SELECT * FROM attestation_1;
ALTER TABLE audit.redacted_row ENABLE TRIGGER USER;
-- Put row 1 back as the redaction left it (its attested value).
ALTER TABLE audit.audit_log DISABLE TRIGGER USER;
UPDATE audit.audit_log a SET details = s.details FROM saved_1 s WHERE a.id = s.id;
ALTER TABLE audit.audit_log ENABLE TRIGGER USER;
SELECT count(*) AS problems FROM audit.verify();

-- Erasure: rows about alice lose their personal data; FINANCIAL rows and
-- the record of earlier GDPR requests are kept, pseudonymized; her
-- pseudonyms are gone from the mapping; the chain still verifies; rows
-- not about her are left as they were.
CREATE TEMP TABLE before_erasure AS SELECT * FROM audit.audit_log;
SET SESSION AUTHORIZATION regress_gd_officer;
CREATE TEMP TABLE erased AS SELECT * FROM audit.erase_subject('alice', 'ticket-6');
RESET SESSION AUTHORIZATION;
SELECT * FROM erased;
SELECT a.correlation_id, a.action, a.data_classification, a.principal_id ~ '^erased_[0-9a-f]{32}$' AS principal_erased,
       a.outcome_description IS NULL AS description_gone, a.details IS NULL AS details_gone,
       a.personal_data_salt IS NULL AS redacted,
       (a.principal_id, a.target_resource_id, a.outcome_description, a.details)
         IS NOT DISTINCT FROM (e.principal_id, e.target_resource_id, e.outcome_description, e.details)
         AS untouched_by_erasure
  FROM audit.audit_log a JOIN before_erasure e USING (id)
 WHERE a.id IN (SELECT id FROM before) ORDER BY a.id;
SELECT e.action, count(*) AS kept_pseudonymized
  FROM audit.audit_log a JOIN before_erasure e USING (id)
 WHERE e.action LIKE 'gdpr.%' AND a.target_resource_id IS DISTINCT FROM e.target_resource_id
 GROUP BY e.action ORDER BY e.action;
SELECT count(*) FILTER (WHERE a::text ~ '\malice\M') AS rows_naming_alice,
       count(*) FILTER (WHERE a::text LIKE '%' || (SELECT pseudonym FROM officer_first) || '%') AS rows_naming_pseudonym
  FROM audit.audit_log a;
SELECT count(*) AS alice_mappings FROM audit.pseudonym_mapping WHERE strategy = 'hash';
SELECT regexp_replace(pg_temp.error_of(format('SELECT audit.original_id(%L)', pseudonym)), 'ph_[0-9a-f]{32}', 'ph_<pseudonym>')
  FROM officer_first;
SELECT kind, organization_id, strategy, keep_compliance, requested_by, rows_changed, rows_erased, rows_kept,
       mappings_removed, length(attestation_root) AS root_bytes
  FROM audit.redaction_request ORDER BY request_id;
SELECT details->>'rows_erased' AS rows_erased, details->>'rows_kept' AS rows_kept,
       details->>'attestation_root' = encode((SELECT attestation_root FROM audit.redaction_request
                                               WHERE kind = 'erase'), 'hex') AS root_sealed
  FROM audit.audit_log WHERE action = 'gdpr.erase';
SELECT pg_temp.seal_all() AS sealed;
SELECT count(*) AS problems FROM audit.verify();
SELECT (audit.export_subject('alice')::jsonb)->>'rows' AS rows_after_erasure;

-- keep_compliance => false erases the FINANCIAL row of another subject too.
INSERT INTO audit.audit_log (organization_id, principal_id, action, status, data_classification, details)
VALUES ('org_a', 'frank', 'invoice.pay', 'success', 'FINANCIAL', '{"payer": "frank"}');
SELECT * FROM audit.erase_subject('frank', 'ticket-7', keep_compliance => false);
SELECT data_classification, details IS NULL AS details_gone FROM audit.audit_log WHERE action = 'invoice.pay'
 ORDER BY id;
SELECT pg_temp.seal_all() AS sealed;
SELECT count(*) AS problems FROM audit.verify();

-- Archived rows (moved out of the log by retention) are exported, marked
-- 'archived'; archive entries are immutable, so a redaction leaves them and
-- says so.
INSERT INTO audit.audit_retention_policy (policy_name, retention_days, archive_after_days, delete_after_days)
VALUES ('cold', 60, 30, 100);
SELECT count(*) > 0 AS created FROM audit.create_partitions(2, '2024-03-01');
INSERT INTO audit.audit_log ("timestamp", organization_id, principal_id, action, status, retention_policy, details)
SELECT timestamptz '2024-03-10' + n * interval '1 day', 'org_a', 'grace', 'record.view', 'success', 'cold',
       jsonb_build_object('n', n)
  FROM generate_series(1, 3) n;
SELECT pg_temp.seal_all() AS sealed;
CALL audit.run_maintenance('2024-05-15');
SELECT count(*) AS archived_entries FROM audit.archive_storage;
SELECT e->>'action' AS action, e->>'chain_status' AS chain_status, e->>'leaf_intact' AS leaf_intact
  FROM jsonb_array_elements((audit.export_subject('grace')::jsonb)->'events') e;
SET client_min_messages = warning;
SELECT * FROM audit.erase_subject('grace', 'ticket-8');
SELECT (details->>'archived_rows_left')::int AS archived_rows_left FROM audit.audit_log
 WHERE action = 'gdpr.erase' ORDER BY id DESC LIMIT 1;

-- The record tables are append-only; the GDPR actions cannot be forged.
UPDATE audit.redaction_request SET rows_erased = 0;
DELETE FROM audit.redacted_row;
INSERT INTO audit.audit_log (action, status) VALUES ('gdpr.erase', 'success');
SELECT audit.log_event(action => 'gdpr.pseudonymize', status => 'success');

-- Cleanup.
DISCARD TEMP;
DELETE FROM audit.organization_role_assignment;
DELETE FROM audit.organization_role;
DELETE FROM audit.organization_access;
REVOKE ALL ON SCHEMA audit FROM regress_gd_nobody;
DROP ROLE regress_gd_officer, regress_gd_nobody, regress_gd_writer, regress_gd_tenant_a, regress_gd_tenant_b;
