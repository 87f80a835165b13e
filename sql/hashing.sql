-- hashing: hash format v1 (docs/hash-format.md) pinned by fixed rows, and the
-- properties the chain relies on: every hashed field matters, NULL differs
-- from empty, jsonb is hashed canonically, excluded columns do not matter.

-- A fixed row (salt included) has a fixed hash.
CREATE TEMP TABLE fixed AS
SELECT jsonb_populate_record(NULL::audit.audit_log, '{
  "id": 1, "transaction_id": 1000, "timestamp": "2026-01-01T00:00:00Z",
  "principal_id": "alice", "organization_id": "org-1", "action": "login",
  "target_resource_type": "session", "target_resource_id": "s-1",
  "status": "success", "outcome_description": null, "hash": null,
  "hash_algorithm": "SHA-256", "event_version": "1.0", "correlation_id": "c-1",
  "data_classification": "INTERNAL", "retention_policy": "standard",
  "processing_latency": 5, "archived_at": null,
  "details": {"ip": "10.0.0.1", "mfa": true},
  "personal_data_salt": "\\x000102030405060708090a0b0c0d0e0f",
  "personal_data_commitment": null}') AS r;

SELECT encode(audit.commitment_encoding(r), 'hex') AS commitment_input FROM fixed;
SELECT encode(audit.leaf_encoding(r), 'hex') AS leaf_input FROM fixed;
SELECT encode(sha256(audit.commitment_encoding(r)), 'hex') AS commitment,
       encode(audit.leaf_hash(r), 'hex') AS leaf
FROM fixed;
-- The leaf is SHA-256 of the leaf input.
SELECT audit.leaf_hash(r) = sha256(audit.leaf_encoding(r)) AS leaf_is_sha256 FROM fixed;

-- Helper: the hash of the fixed row with one field replaced.
CREATE FUNCTION pg_temp.hash_with(patch jsonb) RETURNS bytea LANGUAGE sql AS $$
  SELECT audit.leaf_hash(jsonb_populate_record(r, patch)) FROM fixed
$$;

-- Every hashed field changes the hash.
SELECT field, pg_temp.hash_with(patch) <> (SELECT audit.leaf_hash(r) FROM fixed) AS changes_hash
FROM (VALUES
  ('id',                   '{"id": 2}'::jsonb),
  ('transaction_id',       '{"transaction_id": 1001}'),
  ('timestamp',            '{"timestamp": "2026-01-01T00:00:00.000001Z"}'),
  ('principal_id',         '{"principal_id": "alice2"}'),
  ('organization_id',      '{"organization_id": "org-2"}'),
  ('action',               '{"action": "logout"}'),
  ('target_resource_type', '{"target_resource_type": "token"}'),
  ('target_resource_id',   '{"target_resource_id": "s-2"}'),
  ('status',               '{"status": "failure"}'),
  ('outcome_description',  '{"outcome_description": "ok"}'),
  ('event_version',        '{"event_version": "1.1"}'),
  ('correlation_id',       '{"correlation_id": "c-2"}'),
  ('data_classification',  '{"data_classification": "PHI"}'),
  ('retention_policy',     '{"retention_policy": "long"}'),
  ('processing_latency',   '{"processing_latency": 6}'),
  ('details',              '{"details": {"ip": "10.0.0.2", "mfa": true}}'),
  ('personal_data_salt',   '{"personal_data_salt": "\\x0f0e0d0c0b0a09080706050403020100"}')
) AS t(field, patch)
ORDER BY field;

-- Columns outside the hash: the stored hash itself, the algorithm name (fixed by
-- the domain tag) and archived_at (set later by archival).
SELECT pg_temp.hash_with('{"hash": "\\xdeadbeef"}') = (SELECT audit.leaf_hash(r) FROM fixed) AS hash_column_ignored,
       pg_temp.hash_with('{"hash_algorithm": null}') = (SELECT audit.leaf_hash(r) FROM fixed) AS algorithm_ignored,
       pg_temp.hash_with('{"archived_at": "2030-01-01T00:00:00Z"}') = (SELECT audit.leaf_hash(r) FROM fixed) AS archived_at_ignored;

-- NULL and the empty string hash differently, in every text field.
SELECT field,
       pg_temp.hash_with(jsonb_build_object(field, NULL)) <> pg_temp.hash_with(jsonb_build_object(field, '')) AS null_differs_from_empty
FROM unnest(ARRAY['principal_id', 'organization_id', 'target_resource_type', 'target_resource_id',
                  'outcome_description', 'correlation_id']) AS field
ORDER BY field;
-- Moving bytes between adjacent fields changes the hash (length prefixes).
SELECT pg_temp.hash_with('{"target_resource_type": "ab", "target_resource_id": "c"}')
    <> pg_temp.hash_with('{"target_resource_type": "a", "target_resource_id": "bc"}') AS boundaries_matter;

-- jsonb is hashed in canonical form: key order and whitespace do not matter,
-- values do (1.5 and 1.50 are different documents).
SELECT pg_temp.hash_with('{"details": {"b": [1, 2], "a": {"y": 1, "x": 2}}}')
     = pg_temp.hash_with(jsonb_build_object('details', '{ "a":{"x":2,"y":1},"b":[1,2] }'::jsonb)) AS key_order_ignored,
       pg_temp.hash_with('{"details": {"n": 1.5}}') <> pg_temp.hash_with('{"details": {"n": 1.50}}') AS scale_matters,
       pg_temp.hash_with('{"details": null}') <> pg_temp.hash_with('{"details": {}}') AS null_differs_from_empty_object;

-- Timestamps are hashed in UTC: the session time zone does not matter.
SET TimeZone = 'Asia/Kolkata';
SELECT encode(audit.leaf_hash(r), 'hex') AS leaf_in_kolkata FROM fixed;
RESET TimeZone;

-- A redacted row (salt destroyed, commitment kept) hashes to the same leaf.
SELECT audit.leaf_hash(jsonb_populate_record(r, jsonb_build_object(
         'personal_data_salt', NULL,
         'personal_data_commitment', '\x' || encode(sha256(audit.commitment_encoding(r)), 'hex'),
         'principal_id', 'pseudonym-7f3a', 'details', NULL)))
       = audit.leaf_hash(r) AS redacted_leaf_unchanged,
       audit.commitment_encoding(jsonb_populate_record(r, '{"personal_data_salt": null, "personal_data_commitment": "\\x00"}')) IS NULL AS no_commitment_input_once_redacted
FROM fixed;

-- A row with neither salt nor commitment, or a malformed commitment, is corrupt.
SELECT audit.leaf_hash(jsonb_populate_record(r, '{"personal_data_salt": null}')) FROM fixed;
\echo :LAST_ERROR_SQLSTATE
SELECT audit.leaf_hash(jsonb_populate_record(r, '{"personal_data_salt": null, "personal_data_commitment": "\\x00"}')) FROM fixed;
\echo :LAST_ERROR_SQLSTATE

-- Non-ASCII text is hashed as UTF-8.
SELECT encode(pg_temp.hash_with('{"principal_id": "Zoë Müller", "details": {"note": "naïve \"quote\"\n"}}'), 'hex') AS unicode_leaf;

-- The details text hashed is exactly jsonb's own output (the C serializer in
-- src/hashing.c must agree with jsonb_out byte for byte): the commitment input
-- ends with 0x01, the 4-byte length and the text.
SELECT d AS details,
       substring(enc FROM octet_length(enc) - octet_length(t) - 5 + 1)
         = '\x01'::bytea || int4send(octet_length(t)) || t AS same_as_jsonb_out
FROM (SELECT d, convert_to(d::text, 'UTF8') AS t,
             audit.commitment_encoding(jsonb_populate_record(r, jsonb_build_object('details', d))) AS enc
      FROM fixed, unnest(ARRAY[
        '{}', '[]', '"just a string"', '42', '-0.0', '1.50', '1e3', 'true', '[null]',
        '{"b": [1, [2, []], {}], "a": {"y": null, "x": false}}',
        '["quote \" backslash \\ slash /", "tab\t nl\n cr\r ff\f bs\b", "\u0001\u001f\u007f"]',
        '{"ключ": "значение", "emoji": "😀", "": ""}',
        '{"n": 123456789012345678901234567890.000000000001, "e": -1.5e-10}'
      ]::jsonb[]) AS d) s;

-- The same over strings of every length from 0 to 40 with one character that
-- needs escaping (or a multi-byte one) at every position: the serializer scans
-- strings eight bytes at a time, so every alignment of the escape is tried.
SELECT count(*) AS strings_tried,
       count(*) FILTER (WHERE substring(enc FROM octet_length(enc) - octet_length(t) - 5 + 1)
                              <> '\x01'::bytea || int4send(octet_length(t)) || t) AS differing
FROM (SELECT convert_to(d::text, 'UTF8') AS t,
             audit.commitment_encoding(jsonb_populate_record(r, jsonb_build_object('details', d))) AS enc
      FROM fixed,
           generate_series(0, 40) AS n,
           generate_series(0, 40) AS pos,
           unnest(ARRAY[E'"', E'\\', E'\n', E'\t', E'\b', E'\f', E'\r', chr(1), chr(31), chr(127),
                        'é', '😀', ' ', '~'
                       ]) AS c,
           LATERAL (SELECT jsonb_build_object(repeat('k', n) || c, repeat('x', pos) || c || repeat('y', n)) AS d) j
      WHERE pos <= n) s;

-- Merkle roots (RFC 6962) over leaf hashes: the building block of sealed blocks.
SELECT encode(audit.merkle_root('{}'), 'hex') AS empty_tree,
       audit.merkle_root(ARRAY[sha256('a')]) = sha256('a') AS one_leaf_is_itself,
       audit.merkle_root(ARRAY[sha256('a'), sha256('b')])
         = sha256('\x01'::bytea || sha256('a') || sha256('b')) AS two_leaves,
       audit.merkle_root(ARRAY[sha256('a'), sha256('b'), sha256('c')])
         = sha256('\x01'::bytea || sha256('\x01'::bytea || sha256('a') || sha256('b')) || sha256('c')) AS three_leaves;
SELECT encode(audit.merkle_root(array_agg(sha256(convert_to(g::text, 'UTF8')) ORDER BY g)), 'hex') AS root_of_1_to_100
FROM generate_series(1, 100) g;
SELECT audit.merkle_root(ARRAY[sha256('a'), NULL]);
\echo :LAST_ERROR_SQLSTATE
SELECT audit.merkle_root(ARRAY['\x0102'::bytea]);
\echo :LAST_ERROR_SQLSTATE
