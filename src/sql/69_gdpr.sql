-- GDPR: pseudonyms of data subjects, reverse lookup, subject export and
-- erasure that keep the chain verifiable (src/pseudonyms.c,
-- src/redaction.c; docs/gdpr.md).
--
-- Who: members of audit_db_privacy_officer (and superusers) in every
-- organization; otherwise a session acting for an organization whose
-- organization roles grant resource 'gdpr', action 'pseudonymize',
-- 'reverse_lookup', 'export' or 'erase', in that organization only.
-- Every request is recorded in audit.audit_log under a reserved 'gdpr.'
-- action (kept under retention policy 'gdpr_record').

-- Internal C helpers (only the extension's owner may call them) ---------------

CREATE FUNCTION audit.gdpr_authorize(operation text) RETURNS text
LANGUAGE C VOLATILE
AS 'MODULE_PATHNAME', 'audit_gdpr_authorize_sql';
COMMENT ON FUNCTION audit.gdpr_authorize(text) IS
  'Where the calling session may run a GDPR operation: ''*'' (every organization) or its organization; 42501 otherwise';

CREATE FUNCTION audit.gdpr_hmac(key bytea, domain text, scope text, value text) RETURNS bytea
LANGUAGE C IMMUTABLE STRICT
AS 'MODULE_PATHNAME', 'audit_gdpr_hmac_sql';
COMMENT ON FUNCTION audit.gdpr_hmac(bytea, text, text, text) IS
  'HMAC-SHA-256 under a 32-byte key of the length-prefixed fields domain, scope, value';

CREATE FUNCTION audit.gdpr_encrypt(key bytea, plaintext text) RETURNS bytea
LANGUAGE C VOLATILE STRICT
AS 'MODULE_PATHNAME', 'audit_gdpr_encrypt_sql';
COMMENT ON FUNCTION audit.gdpr_encrypt(bytea, text) IS
  'AES-256-GCM with a random nonce: 0x01 || nonce || ciphertext || tag';

CREATE FUNCTION audit.gdpr_decrypt(key bytea, ciphertext bytea) RETURNS text
LANGUAGE C IMMUTABLE STRICT
AS 'MODULE_PATHNAME', 'audit_gdpr_decrypt_sql';
COMMENT ON FUNCTION audit.gdpr_decrypt(bytea, bytea) IS
  'Plaintext of audit.gdpr_encrypt(); 22023 when the key is wrong or the ciphertext altered';

CREATE FUNCTION audit.gdpr_encryption_key(passphrase text) RETURNS bytea
LANGUAGE C STABLE
AS 'MODULE_PATHNAME', 'audit_gdpr_encryption_key_sql';
COMMENT ON FUNCTION audit.gdpr_encryption_key(text) IS
  'AES key of the encryption strategy: PBKDF2-HMAC-SHA-256 of the passphrase (NULL: audit_db.pseudonym_encryption_key)';

CREATE FUNCTION audit.gdpr_random_bytes(n integer) RETURNS bytea
LANGUAGE C VOLATILE STRICT
AS 'MODULE_PATHNAME', 'audit_gdpr_random_bytes_sql';
COMMENT ON FUNCTION audit.gdpr_random_bytes(integer) IS 'n bytes from the server''s strong random source';

CREATE FUNCTION audit.mentions_subject(r audit.audit_log, terms text[]) RETURNS boolean
LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE
AS 'MODULE_PATHNAME', 'audit_mentions_subject_sql';
COMMENT ON FUNCTION audit.mentions_subject(audit.audit_log, text[]) IS
  'Whether one of the identifiers occurs as a whole token in the row''s principal_id, target_resource_id, '
  'outcome_description or details (keys and strings)';

CREATE FUNCTION audit.redacted_fields_digest(r audit.audit_log) RETURNS bytea
LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE
AS 'MODULE_PATHNAME', 'audit_redacted_fields_digest_sql';
COMMENT ON FUNCTION audit.redacted_fields_digest(audit.audit_log) IS
  'SHA-256 over the row''s id and personal fields as they are: what a redaction record attests (docs/hash-format.md)';

CREATE FUNCTION audit.redact_subject_rows(request_id bigint, terms text[], replacement text, organization text,
                                          erase boolean, keep_exempt boolean,
                                          OUT rows_changed bigint, OUT rows_erased bigint, OUT rows_kept bigint)
LANGUAGE C VOLATILE
AS 'MODULE_PATHNAME', 'audit_redact_subject_rows_sql';
COMMENT ON FUNCTION audit.redact_subject_rows(bigint, text[], text, text, boolean, boolean) IS
  'Internal: rewrite the rows mentioning the identifiers, keeping their leaves, and attest the new fields';

-- Rows about or by a subject: a sequential scan (of one organization's rows
-- when given), filtered cheaply by substring, then exactly by whole token.
CREATE FUNCTION audit.subject_rows(terms text[], organization text)
RETURNS TABLE (partition oid, row_location tid, r audit.audit_log)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
  SELECT a.tableoid, a.ctid, a
    FROM audit.audit_log a
   WHERE (organization IS NULL OR a.organization_id = organization)
     AND EXISTS (SELECT FROM unnest(terms) AS t(term)
                  WHERE strpos(a.principal_id, t.term) > 0
                     OR strpos(a.target_resource_id, t.term) > 0
                     OR strpos(a.outcome_description, t.term) > 0
                     OR strpos(a.details::text, substr(to_jsonb(t.term)::text, 2,
                                                      length(to_jsonb(t.term)::text) - 2)) > 0)
     AND audit.mentions_subject(a, terms)
$$;
COMMENT ON FUNCTION audit.subject_rows(text[], text) IS
  'Internal: location and content of every audit row mentioning one of the identifiers (of one organization)';

-- Rows about or by a subject that retention moved into the archive (every
-- entry decompressed and read).
CREATE FUNCTION audit.archived_subject_rows(terms text[], organization text)
RETURNS TABLE (archive_id bigint, r audit.audit_log)
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
  SELECT a.archive_id, audit.row_from_export(l.doc, a.archived_at)
    FROM audit.archive_storage a
   CROSS JOIN LATERAL audit.archive_lines(a.archive_id, false) AS l(doc)
   WHERE (organization IS NULL OR l.doc->>'organization_id' = organization)
     AND audit.mentions_subject(audit.row_from_export(l.doc), terms)
$$;
COMMENT ON FUNCTION audit.archived_subject_rows(text[], text) IS
  'Internal: the archived rows mentioning one of the identifiers (of one organization), with their entry';

-- Archive entries cannot be rewritten: say how many of the subject's rows
-- they hold, which a redaction leaves as they are.
CREATE FUNCTION audit.warn_archived_subject_rows(terms text[], organization text) RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  n bigint;
  entries bigint;
BEGIN
  SELECT count(*), count(DISTINCT x.archive_id) INTO n, entries
    FROM audit.archived_subject_rows(terms, organization) x;
  IF n > 0 THEN
    RAISE WARNING '% archived rows of the subject (in % archive entries) were left as they are', n, entries
      USING HINT = 'Archive entries are immutable and leave with their retention policy '
                   '(audit.archive_plan()); docs/gdpr.md says what to do.';
  END IF;
  RETURN n;
END
$$;

CREATE FUNCTION audit.record_gdpr_event(action text, organization text, target_type text, target_id text,
                                        details jsonb) RETURNS void
LANGUAGE C VOLATILE
AS 'MODULE_PATHNAME', 'audit_record_gdpr_event_sql';
COMMENT ON FUNCTION audit.record_gdpr_event(text, text, text, text, jsonb) IS
  'Internal: log a GDPR request under its reserved gdpr. action and retention policy gdpr_record';

-- Keys -----------------------------------------------------------------------

-- The HMAC key of the hash strategy and lookup digests, and the AES key of
-- the mapping's encrypted originals (hash and token strategies): 32 random
-- bytes each, made at CREATE EXTENSION. Nobody but the extension's owner
-- (and superusers) can read them: no grant, and only the SECURITY DEFINER
-- GDPR functions use them. The encryption strategy's key is never stored:
-- it is passed in, or read from the superuser-only setting
-- audit_db.pseudonym_encryption_key.
CREATE TABLE audit.pseudonym_secret (
  singleton   boolean     PRIMARY KEY DEFAULT true CHECK (singleton),
  hmac_key    bytea       NOT NULL CHECK (length(hmac_key) = 32),
  mapping_key bytea       NOT NULL CHECK (length(mapping_key) = 32),
  created_at  timestamptz NOT NULL DEFAULT now()
);
-- Under session_replication_role = replica (a restore), the dump brings the keys.
INSERT INTO audit.pseudonym_secret (hmac_key, mapping_key)
SELECT audit.gdpr_random_bytes(32), audit.gdpr_random_bytes(32)
WHERE current_setting('session_replication_role') <> 'replica';
SELECT pg_catalog.pg_extension_config_dump('audit.pseudonym_secret', '');
COMMENT ON TABLE audit.pseudonym_secret IS
  'Keys of the hash strategy, lookup digests and encrypted originals (owner only; docs/gdpr.md)';

-- Mapping ---------------------------------------------------------------------

CREATE TABLE audit.pseudonym_mapping (
  -- '*': made by a privacy officer for every organization; else the organization.
  organization_scope varchar(255) NOT NULL,
  pseudonym          varchar(255) NOT NULL,
  strategy           text         NOT NULL CHECK (strategy IN ('hash', 'token', 'encryption')),
  -- AES-256-GCM of the original id (mapping key; the caller's key for 'encryption').
  original_encrypted bytea        NOT NULL,
  -- HMAC of the original id: finds a subject's pseudonyms without decrypting.
  original_lookup    bytea        NOT NULL,
  requested_by       text         NOT NULL,
  created_by         name         NOT NULL,
  created_at         timestamptz  NOT NULL DEFAULT now(),
  PRIMARY KEY (organization_scope, pseudonym)
);
CREATE INDEX pseudonym_mapping_lookup_idx ON audit.pseudonym_mapping (original_lookup);
COMMENT ON TABLE audit.pseudonym_mapping IS
  'Pseudonyms of data subjects, with their originals encrypted (owner only; read through audit.original_id())';

-- Redaction records ---------------------------------------------------------------

CREATE SEQUENCE audit.redaction_request_id_seq AS bigint;

-- One row per pseudonymization or erasure (append-only). It never names the
-- subject: its sealed event in audit.audit_log carries the same counts and
-- the attestation root.
CREATE TABLE audit.redaction_request (
  request_id       bigint       PRIMARY KEY,
  kind             text         NOT NULL CHECK (kind IN ('pseudonymize', 'erase')),
  organization_id  varchar(255),               -- NULL: every organization
  strategy         text,                       -- pseudonymize: hash, token or encryption
  keep_compliance  boolean,                    -- erase
  requested_by     text         NOT NULL,
  performed_by     name         NOT NULL,
  requested_at     timestamptz  NOT NULL DEFAULT now(),
  rows_changed     bigint       NOT NULL,
  rows_erased      bigint       NOT NULL DEFAULT 0,
  rows_kept        bigint       NOT NULL DEFAULT 0,
  mappings_removed integer      NOT NULL DEFAULT 0,
  attestation_root bytea        NOT NULL
);
ALTER SEQUENCE audit.redaction_request_id_seq OWNED BY audit.redaction_request.request_id;
COMMENT ON TABLE audit.redaction_request IS
  'Pseudonymizations and erasures done (never the subject''s identity), with the root of their attestations';

-- Per redacted row and request: the digest of the personal fields it left.
CREATE TABLE audit.redacted_row (
  audit_log_id  bigint      NOT NULL,
  log_timestamp timestamptz NOT NULL,
  organization_id varchar(255),             -- the row's (tenant isolation)
  request_id    bigint      NOT NULL
    REFERENCES audit.redaction_request DEFERRABLE INITIALLY DEFERRED,
  fields_digest bytea       NOT NULL CHECK (length(fields_digest) = 32),
  PRIMARY KEY (audit_log_id, request_id)
);
CREATE INDEX redacted_row_request_idx ON audit.redacted_row (request_id);
COMMENT ON TABLE audit.redacted_row IS
  'Attestation of each redacted audit row: digest of its personal fields after each request (docs/hash-format.md)';

-- Rows that erasure keeps (pseudonymized) for legal reasons.
CREATE TABLE audit.erasure_exemption (
  data_classification audit.data_classification,   -- NULL: any
  retention_policy    varchar(50),                  -- NULL: any
  reason              text NOT NULL CHECK (reason <> ''),
  CONSTRAINT erasure_exemption_names_something
    CHECK (data_classification IS NOT NULL OR retention_policy IS NOT NULL),
  CONSTRAINT erasure_exemption_unique UNIQUE NULLS NOT DISTINCT (data_classification, retention_policy)
);
-- Under session_replication_role = replica (a restore), the dump brings the rows.
INSERT INTO audit.erasure_exemption (data_classification, reason)
SELECT 'FINANCIAL', 'Financial records are kept for the statutory period of bookkeeping and tax law'
WHERE current_setting('session_replication_role') <> 'replica';
SELECT pg_catalog.pg_extension_config_dump('audit.erasure_exemption', '');
COMMENT ON TABLE audit.erasure_exemption IS
  'Classifications and retention policies whose rows audit.erase_subject(keep_compliance => true) keeps, pseudonymized';

-- Requests ----------------------------------------------------------------------

-- The effective organization of a request: the caller's scope narrowed by
-- the organization argument (NULL result: every organization).
CREATE FUNCTION audit.gdpr_organization(scope text, organization text) RETURNS text
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  IF organization = '' THEN
    RAISE EXCEPTION 'organization must not be empty' USING ERRCODE = '22023',
      HINT = 'Pass NULL for every organization you may act for.';
  END IF;
  IF scope = '*' THEN
    RETURN organization;
  END IF;
  IF organization IS NOT NULL AND organization <> scope THEN
    RAISE EXCEPTION 'permission denied for organization "%"', organization USING ERRCODE = '42501',
      HINT = format('The session acts for organization %L only.', scope);
  END IF;
  RETURN scope;
END
$$;

-- Checks shared by the entry points: a non-empty subject id and requester.
CREATE FUNCTION audit.gdpr_check_subject(principal_id text, requested_by text, needs_requester boolean)
RETURNS void
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  IF principal_id IS NULL OR principal_id = '' THEN
    RAISE EXCEPTION 'principal_id must not be NULL or empty' USING ERRCODE = '22004',
      HINT = 'Pass the data subject''s principal id as it appears in the audit log.';
  END IF;
  IF length(principal_id) > 255 THEN
    RAISE EXCEPTION 'principal_id is longer than 255 characters' USING ERRCODE = '22001',
      HINT = 'audit_log.principal_id holds at most 255 characters; no row can name this subject.';
  END IF;
  IF needs_requester AND (requested_by IS NULL OR btrim(requested_by) = '') THEN
    RAISE EXCEPTION 'requested_by must name who asked for this' USING ERRCODE = '22004',
      HINT = 'For example the data subject''s request or ticket reference.';
  END IF;
END
$$;

-- The subject's identifiers: the id itself and every pseudonym it has in
-- the mapping (of the organization, or of every organization).
CREATE FUNCTION audit.subject_identifiers(principal_id text, organization text) RETURNS text[]
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
  SELECT array_prepend(principal_id, coalesce(array_agg(m.pseudonym::text ORDER BY m.pseudonym), '{}'))
    FROM audit.pseudonym_mapping m, audit.pseudonym_secret s
   WHERE (organization IS NULL OR m.organization_scope IN (organization, '*'))
     AND m.original_lookup = audit.gdpr_hmac(s.hmac_key, 'audit_db.lookup.v1', m.organization_scope, principal_id)
$$;

CREATE FUNCTION audit.pseudonymize(principal_id text, strategy text DEFAULT 'hash', requested_by text DEFAULT NULL,
                                   encryption_key text DEFAULT NULL, organization text DEFAULT NULL)
RETURNS TABLE (pseudonym text, rows_affected bigint)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  scope    text := audit.gdpr_authorize('pseudonymize');
  org      text := audit.gdpr_organization(scope, organization);
  map_scope text := coalesce(org, '*');
  secret   audit.pseudonym_secret;
  p        text;
  enc      bytea;
  lookup   bytea;
  existed  boolean;
  archived bigint;
  req      bigint;
  res      record;
  root     bytea;
BEGIN
  PERFORM audit.gdpr_check_subject(principal_id, requested_by, true);
  IF strategy IS NULL OR strategy NOT IN ('hash', 'token', 'encryption') THEN
    RAISE EXCEPTION 'unknown pseudonymization strategy %', coalesce(quote_literal(strategy), 'NULL')
      USING ERRCODE = '22023', HINT = 'One of: hash, token, encryption.';
  END IF;
  IF strategy <> 'encryption' AND encryption_key IS NOT NULL THEN
    RAISE EXCEPTION 'encryption_key applies to the encryption strategy only' USING ERRCODE = '22023',
      HINT = 'Leave encryption_key NULL for the hash and token strategies.';
  END IF;
  -- One redaction at a time: rows are rewritten from one consistent view.
  LOCK TABLE audit.redaction_request IN SHARE ROW EXCLUSIVE MODE;
  SELECT * INTO STRICT secret FROM audit.pseudonym_secret;

  IF EXISTS (SELECT FROM audit.pseudonym_mapping m
              WHERE m.pseudonym = pseudonymize.principal_id AND m.organization_scope IN (map_scope, '*')) THEN
    RAISE EXCEPTION 'principal_id % is already a pseudonym', quote_literal(principal_id) USING ERRCODE = '22023',
      HINT = 'Pseudonymize the original id; audit.original_id() reverses a pseudonym.';
  END IF;

  lookup := audit.gdpr_hmac(secret.hmac_key, 'audit_db.lookup.v1', map_scope, principal_id);
  -- A subject pseudonymized before with this strategy keeps that pseudonym:
  -- rows logged since get the same one, and a repeated request is a no-op
  -- (token and encryption pseudonyms are random: a new one would split the
  -- subject in two).
  SELECT m.pseudonym INTO p FROM audit.pseudonym_mapping m
   WHERE m.original_lookup = lookup AND m.organization_scope = map_scope
     AND m.strategy = pseudonymize.strategy
   ORDER BY m.created_at, m.pseudonym LIMIT 1;
  existed := p IS NOT NULL;
  IF existed THEN
    NULL;
  ELSIF strategy = 'hash' THEN
    p := 'ph_' || encode(substr(audit.gdpr_hmac(secret.hmac_key, 'audit_db.pseudonym.v1', map_scope, principal_id),
                                1, 16), 'hex');
    enc := audit.gdpr_encrypt(secret.mapping_key, principal_id);
  ELSIF strategy = 'token' THEN
    p := 'pt_' || encode(audit.gdpr_random_bytes(16), 'hex');
    enc := audit.gdpr_encrypt(secret.mapping_key, principal_id);
  ELSE
    enc := audit.gdpr_encrypt(audit.gdpr_encryption_key(encryption_key), principal_id);
    p := 'pe_' || translate(encode(enc, 'base64'), E'+/=\n', '-_');
    IF length(p) > 255 THEN
      RAISE EXCEPTION 'principal_id is too long for the encryption strategy (% bytes)', octet_length(principal_id)
        USING ERRCODE = '22001',
        HINT = 'Its pseudonym would not fit audit_log.principal_id (255); use the hash or token strategy.';
    END IF;
  END IF;

  IF NOT existed THEN
    INSERT INTO audit.pseudonym_mapping AS m (organization_scope, pseudonym, strategy, original_encrypted,
                                              original_lookup, requested_by, created_by)
    VALUES (map_scope, p, strategy, enc, lookup, requested_by, session_user)
    ON CONFLICT ON CONSTRAINT pseudonym_mapping_pkey DO NOTHING;
    existed := NOT FOUND;
  END IF;

  req := nextval('audit.redaction_request_id_seq');
  SELECT * INTO STRICT res
    FROM audit.redact_subject_rows(req, ARRAY[principal_id], p, org, false, false);
  archived := audit.warn_archived_subject_rows(ARRAY[principal_id], org);
  IF res.rows_changed = 0 AND NOT existed AND archived = 0 THEN
    RAISE EXCEPTION 'no audit row mentions principal %', quote_literal(principal_id) USING ERRCODE = 'P0002',
      HINT = CASE WHEN org IS NULL THEN 'Check the id: it is matched exactly (case-sensitive), as a whole token.'
                  ELSE format('Only organization %L''s rows were searched.', org) END;
  END IF;

  SELECT audit.merkle_root(coalesce(array_agg(d.fields_digest ORDER BY d.audit_log_id), '{}'))
    INTO root FROM audit.redacted_row d WHERE d.request_id = req;
  INSERT INTO audit.redaction_request (request_id, kind, organization_id, strategy, requested_by, performed_by,
                                       rows_changed, attestation_root)
  VALUES (req, 'pseudonymize', org, strategy, requested_by, session_user, res.rows_changed, root);
  PERFORM audit.record_gdpr_event('gdpr.pseudonymize', org, 'pseudonym', p,
            jsonb_build_object('request_id', req, 'strategy', strategy, 'requested_by', requested_by,
                               'rows_changed', res.rows_changed, 'attestation_root', encode(root, 'hex')));
  RETURN QUERY SELECT p, res.rows_changed;
END
$$;
COMMENT ON FUNCTION audit.pseudonymize(text, text, text, text, text) IS
  'Replace a data subject''s id in every audit row mentioning it by a pseudonym (hash, token or encryption); '
  'returns the pseudonym and the rows changed';

CREATE FUNCTION audit.original_id(pseudonym text, encryption_key text DEFAULT NULL, reason text DEFAULT NULL)
RETURNS text
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  scope    text := audit.gdpr_authorize('reverse_lookup');
  m        audit.pseudonym_mapping;
  original text;
BEGIN
  IF pseudonym IS NULL OR pseudonym = '' THEN
    RAISE EXCEPTION 'pseudonym must not be NULL or empty' USING ERRCODE = '22004',
      HINT = 'Pass a pseudonym returned by audit.pseudonymize().';
  END IF;
  SELECT * INTO m FROM audit.pseudonym_mapping p
   WHERE p.pseudonym = original_id.pseudonym AND (scope = '*' OR p.organization_scope = scope)
   ORDER BY p.organization_scope = '*' LIMIT 1;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'unknown pseudonym %', quote_literal(pseudonym) USING ERRCODE = 'P0002',
      HINT = 'It was never made, its subject was erased, or it belongs to another organization.';
  END IF;
  IF m.strategy = 'encryption' THEN
    original := audit.gdpr_decrypt(audit.gdpr_encryption_key(encryption_key), m.original_encrypted);
  ELSE
    IF encryption_key IS NOT NULL THEN
      RAISE EXCEPTION 'encryption_key applies to the encryption strategy only' USING ERRCODE = '22023',
        HINT = format('Pseudonym %s was made with the %s strategy; leave encryption_key NULL.', pseudonym, m.strategy);
    END IF;
    original := audit.gdpr_decrypt((SELECT s.mapping_key FROM audit.pseudonym_secret s), m.original_encrypted);
  END IF;
  PERFORM audit.record_gdpr_event('gdpr.original_id',
            CASE WHEN m.organization_scope = '*' THEN NULL ELSE m.organization_scope END,
            'pseudonym', pseudonym,
            jsonb_build_object('strategy', m.strategy, 'reason', reason));
  RETURN original;
END
$$;
COMMENT ON FUNCTION audit.original_id(text, text, text) IS
  'The original id behind a pseudonym (authorized roles only; every lookup is logged as gdpr.original_id)';

-- One subject's rows, each with its chain status, as json, csv or xml.
CREATE FUNCTION audit.export_subject(principal_id text, organization text DEFAULT NULL, format text DEFAULT 'json')
RETURNS text
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  scope  text := audit.gdpr_authorize('export');
  org    text := audit.gdpr_organization(scope, organization);
  terms  text[];
  events jsonb;
  doc    text;
  n      bigint;
  cols   constant text[] := ARRAY['id', 'timestamp', 'principal_id', 'organization_id', 'action',
                                  'target_resource_type', 'target_resource_id', 'status', 'outcome_description',
                                  'data_classification', 'retention_policy', 'correlation_id', 'event_version',
                                  'processing_latency', 'details', 'hash', 'chain_status', 'sealed',
                                  'leaf_intact', 'redacted'];
BEGIN
  PERFORM audit.gdpr_check_subject(principal_id, NULL, false);
  IF format IS NULL OR format NOT IN ('json', 'csv', 'xml') THEN
    RAISE EXCEPTION 'unknown export format %', coalesce(quote_literal(format), 'NULL') USING ERRCODE = '22023',
      HINT = 'One of: json, csv, xml.';
  END IF;
  terms := audit.subject_identifiers(principal_id, org);

  SELECT coalesce(jsonb_agg(x.doc ORDER BY x.ts, x.id), '[]'), count(*) INTO events, n
    FROM (
  SELECT jsonb_build_object(
           'id', (s.r).id, 'timestamp', (s.r)."timestamp", 'principal_id', (s.r).principal_id,
           'organization_id', (s.r).organization_id, 'action', (s.r).action,
           'target_resource_type', (s.r).target_resource_type, 'target_resource_id', (s.r).target_resource_id,
           'status', (s.r).status, 'outcome_description', (s.r).outcome_description,
           'data_classification', (s.r).data_classification, 'retention_policy', (s.r).retention_policy,
           'correlation_id', (s.r).correlation_id, 'event_version', (s.r).event_version,
           'processing_latency', (s.r).processing_latency, 'details', (s.r).details,
           'hash', encode((s.r).hash, 'hex'),
           'chain_status', CASE WHEN NOT v.intact THEN 'modified' WHEN s.archived THEN 'archived'
                                WHEN v.sealed THEN 'sealed' ELSE 'unsealed' END,
           'sealed', v.sealed, 'leaf_intact', v.intact, 'redacted', (s.r).personal_data_salt IS NULL) AS doc,
         (s.r)."timestamp" AS ts, (s.r).id AS id
    FROM (SELECT l.r, false AS archived FROM audit.subject_rows(terms, org) l
          UNION ALL
          SELECT x.r, true FROM audit.archived_subject_rows(terms, org) x) s
    CROSS JOIN LATERAL (
      SELECT (s.r).transaction_id < st.horizon_xid AS sealed,
             audit.leaf_hash(s.r) = (s.r).hash
             AND ((s.r).personal_data_salt IS NOT NULL
                  OR audit.redacted_fields_digest(s.r) IS NOT DISTINCT FROM
                     (SELECT d.fields_digest FROM audit.redacted_row d WHERE d.audit_log_id = (s.r).id
                       ORDER BY d.request_id DESC LIMIT 1)) AS intact
        FROM audit.audit_chain_state st) v) x;

  IF format = 'json' THEN
    SELECT jsonb_pretty(jsonb_build_object(
             'subject', principal_id, 'organization', org, 'exported_at', now(), 'rows', n,
             'events', events))
      INTO doc;
  ELSIF format = 'csv' THEN
    -- RFC 4180: every field quoted, quotes doubled, CRLF line ends.
    SELECT string_agg(line, E'\r\n' ORDER BY ord) || E'\r\n' INTO doc
      FROM (SELECT 0::bigint AS ord,
                   (SELECT string_agg('"' || c || '"', ',' ORDER BY i) FROM unnest(cols) WITH ORDINALITY AS x(c, i)) AS line
            UNION ALL
            SELECT e.ord,
                   (SELECT string_agg(CASE WHEN e.doc -> c IS NULL OR jsonb_typeof(e.doc -> c) = 'null' THEN ''
                                           ELSE '"' || replace(CASE WHEN jsonb_typeof(e.doc -> c) IN ('object', 'array')
                                                                    THEN (e.doc -> c)::text ELSE e.doc ->> c END,
                                                               '"', '""') || '"' END,
                                      ',' ORDER BY i)
                      FROM unnest(cols) WITH ORDINALITY AS x(c, i))
              FROM jsonb_array_elements(events) WITH ORDINALITY AS e(doc, ord)) lines;
  ELSE
    SELECT xmlserialize(DOCUMENT xmlroot(
             xmlelement(name "subject_export",
                        xmlattributes(principal_id AS "subject", org AS "organization", now() AS "exported_at",
                                      n AS "rows"),
                        xmlagg(xmlelement(name "event",
                                          (SELECT xmlagg(xmlelement(name "field", xmlattributes(c AS "name"),
                                                                    CASE WHEN jsonb_typeof(e.doc -> c) IN ('object', 'array')
                                                                         THEN (e.doc -> c)::text ELSE e.doc ->> c END)
                                                         ORDER BY i)
                                             FROM unnest(cols) WITH ORDINALITY AS x(c, i)
                                            WHERE jsonb_typeof(e.doc -> c) IS DISTINCT FROM 'null'))
                               ORDER BY e.ord)),
             version '1.0', standalone yes) AS text)
      INTO doc FROM jsonb_array_elements(events) WITH ORDINALITY AS e(doc, ord);
  END IF;

  PERFORM audit.record_gdpr_event('gdpr.export', org, 'principal', principal_id,
            jsonb_build_object('format', format, 'rows', n));
  RETURN doc;
END
$$;
COMMENT ON FUNCTION audit.export_subject(text, text, text) IS
  'Every audit row about or by a data subject (also through its pseudonyms), with chain status, as json, csv or xml';

CREATE FUNCTION audit.erase_subject(principal_id text, requested_by text, keep_compliance boolean DEFAULT true,
                                    organization text DEFAULT NULL)
RETURNS TABLE (rows_erased bigint, rows_kept bigint)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  scope   text := audit.gdpr_authorize('erase');
  org     text := audit.gdpr_organization(scope, organization);
  terms   text[];
  token   text;
  req     bigint;
  res     record;
  removed integer;
  archived bigint;
  root    bytea;
BEGIN
  PERFORM audit.gdpr_check_subject(principal_id, requested_by, true);
  IF keep_compliance IS NULL THEN
    RAISE EXCEPTION 'keep_compliance must not be NULL' USING ERRCODE = '22004',
      HINT = 'true keeps rows audit.erasure_exemption names (pseudonymized); false erases them too.';
  END IF;
  LOCK TABLE audit.redaction_request IN SHARE ROW EXCLUSIVE MODE;
  terms := audit.subject_identifiers(principal_id, org);
  -- An erased subject is named by a random token that nothing maps back.
  token := 'erased_' || encode(audit.gdpr_random_bytes(16), 'hex');
  req := nextval('audit.redaction_request_id_seq');
  SELECT * INTO STRICT res
    FROM audit.redact_subject_rows(req, terms, token, org, true, keep_compliance);
  archived := audit.warn_archived_subject_rows(terms, org);

  DELETE FROM audit.pseudonym_mapping m
   WHERE m.pseudonym = ANY (terms[2:])
     AND (org IS NULL OR m.organization_scope = org);
  GET DIAGNOSTICS removed = ROW_COUNT;
  IF res.rows_changed = 0 AND removed = 0 AND archived = 0 THEN
    RAISE EXCEPTION 'no audit row or pseudonym mentions principal %', quote_literal(principal_id)
      USING ERRCODE = 'P0002',
      HINT = CASE WHEN org IS NULL THEN 'Check the id: it is matched exactly (case-sensitive), as a whole token.'
                  ELSE format('Only organization %L''s rows were searched.', org) END;
  END IF;

  SELECT audit.merkle_root(coalesce(array_agg(d.fields_digest ORDER BY d.audit_log_id), '{}'))
    INTO root FROM audit.redacted_row d WHERE d.request_id = req;
  INSERT INTO audit.redaction_request (request_id, kind, organization_id, keep_compliance, requested_by,
                                       performed_by, rows_changed, rows_erased, rows_kept, mappings_removed,
                                       attestation_root)
  VALUES (req, 'erase', org, keep_compliance, requested_by, session_user, res.rows_changed, res.rows_erased,
          res.rows_kept, removed, root);
  PERFORM audit.record_gdpr_event('gdpr.erase', org, 'erased_subject', token,
            jsonb_build_object('request_id', req, 'requested_by', requested_by, 'keep_compliance', keep_compliance,
                               'rows_erased', res.rows_erased, 'rows_kept', res.rows_kept,
                               'mappings_removed', removed, 'archived_rows_left', archived,
                               'attestation_root', encode(root, 'hex')));
  RAISE NOTICE 'erased % and pseudonymized % audit rows of the subject', res.rows_erased, res.rows_kept
    USING HINT = 'Old row versions stay on disk until VACUUM audit.audit_log; WAL, backups and replicas '
                 'keep them longer (docs/gdpr.md).';
  RETURN QUERY SELECT res.rows_erased, res.rows_kept;
END
$$;
COMMENT ON FUNCTION audit.erase_subject(text, text, boolean, text) IS
  'Erase a data subject''s personal data from the audit log (rows audit.erasure_exemption names are kept, '
  'pseudonymized, unless keep_compliance is false); returns the rows erased and kept';

-- pg_dump keeps these (their rows are data, not part of the extension).
SELECT pg_catalog.pg_extension_config_dump('audit.pseudonym_mapping', '');
SELECT pg_catalog.pg_extension_config_dump('audit.redaction_request', '');
SELECT pg_catalog.pg_extension_config_dump('audit.redaction_request_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('audit.redacted_row', '');
