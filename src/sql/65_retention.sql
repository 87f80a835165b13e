-- Retention (src/retention.c, the "retention" steps of maintenance): rows are
-- kept as long as the policy they name says, then removed, and every removal
-- is sealed into the chain so that audit.verify() can tell rows retained away
-- from rows gone missing.
--
-- A row follows the policy named by its retention_policy column; a policy
-- row for the row's data_classification wins over the policy's row for every
-- classification (data_classification NULL). A row whose policy has no
-- active row is never removed. A row is removed once its "timestamp" lies
-- before the day (UTC) that is delete_after_days (default: retention_days)
-- before the maintenance run's as_of. Partitions whose rows have all expired
-- are dropped whole (metadata only); in a partition that still holds younger
-- rows or rows of longer policies, only the expired rows are deleted.

CREATE TABLE audit.audit_retention_policy (
  policy_name         varchar(50) NOT NULL CHECK (policy_name <> ''),
  -- NULL: every classification without a row of its own under this name.
  data_classification audit.data_classification,
  -- Rows are kept at least this many days ...
  retention_days      integer     NOT NULL CHECK (retention_days BETWEEN 1 AND 365000),
  -- ... archived into audit.archive_storage after this many (NULL: never) ...
  archive_after_days  integer     CHECK (archive_after_days >= 0),
  -- ... and removed after this many (NULL: after retention_days).
  delete_after_days   integer,
  active              boolean     NOT NULL DEFAULT true,
  description         text,
  created_at          timestamptz NOT NULL DEFAULT now(),
  CONSTRAINT delete_not_before_retention
    CHECK (delete_after_days IS NULL OR delete_after_days BETWEEN retention_days AND 365000),
  CONSTRAINT archive_before_delete
    CHECK (archive_after_days IS NULL OR archive_after_days < coalesce(delete_after_days, retention_days))
);
CREATE UNIQUE INDEX audit_retention_policy_key
  ON audit.audit_retention_policy (policy_name, (coalesce(data_classification::text, '')));
COMMENT ON TABLE audit.audit_retention_policy IS
  'How long audit rows are kept, by their retention_policy (and optionally data_classification); '
  'no active policy: kept for ever';
SELECT pg_catalog.pg_extension_config_dump('audit.audit_retention_policy', '');

-- What each partition holds, per (retention_policy, data_classification):
-- counted from the partition's sealed rows once, when the partition first
-- may hold expired rows; afterwards only the rows sealed since are added (a
-- transaction-id range scan through the BRIN index), and retention subtracts
-- what it removes. Planning retention reads only this (metadata).
CREATE TABLE audit.retention_summary (
  partition_oid     oid         PRIMARY KEY,
  range_from        timestamptz NOT NULL,
  range_to          timestamptz NOT NULL,
  -- Chain height and sealed horizon when summarised: every row sealed up to
  -- that height (every committed row below that transaction id) is counted.
  summarized_height bigint      NOT NULL,
  summarized_xid    bigint      NOT NULL,
  summarized_at     timestamptz NOT NULL DEFAULT clock_timestamp(),
  -- [{"retention_policy", "data_classification", "rows", "min", "max"}]
  groups            jsonb       NOT NULL
);
COMMENT ON TABLE audit.retention_summary IS
  'Per partition of audit.audit_log: sealed rows per retention policy and classification, with their time span '
  '(a cache for planning retention; rebuilt when stale)';

-- The policy that governs a (retention_policy, data_classification) group,
-- as of one maintenance run: its delete days, archive days and the cutoff
-- (rows before it have expired).
CREATE FUNCTION audit.retention_plan(as_of timestamptz DEFAULT now())
RETURNS TABLE (partition regclass, range_from timestamptz, range_to timestamptz,
               retention_policy text, data_classification text, policy_classification text,
               delete_after_days integer, cutoff timestamptz, archive_after_days integer,
               archive_cutoff timestamptz, row_count bigint,
               min_timestamp timestamptz, max_timestamp timestamptz, action text)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
-- Days are whole UTC days, whatever the session's TimeZone (daylight saving
-- would otherwise move a cutoff by an hour).
SET TimeZone = 'UTC'
AS $$
  WITH pol AS (
    SELECT p.policy_name, p.data_classification::text AS classification,
           coalesce(p.delete_after_days, p.retention_days) AS days, p.archive_after_days AS adays
    FROM audit.audit_retention_policy p WHERE p.active),
  day AS (SELECT date_trunc('day', as_of, 'UTC') AS d),
  -- Partitions that may hold an expired (or archivable) row: they start
  -- before the earliest cutoff of any active policy.
  -- A partition is dropped only when it lies wholly before that earliest
  -- cutoff, so the current and premade months are never dropped (premake
  -- would only create them again).
  cand AS (
    SELECT b.partition, b.range_from, b.range_to,
           b.range_to <= day.d - make_interval(days => (SELECT min(least(days, adays)) FROM pol)) AS droppable
    FROM audit.partition_bounds() b, day
    WHERE NOT b.is_default AND b.range_from IS NOT NULL AND b.range_to IS NOT NULL
      AND b.range_from < day.d - make_interval(days => (SELECT min(least(days, adays)) FROM pol))),
  fresh AS (
    SELECT c.*, s.groups,
           s.partition_oid IS NOT NULL AND NOT EXISTS (
             SELECT FROM audit.audit_chain_block k
             WHERE k.partition_from = c.range_from AND k.partition_to = c.range_to
               AND k.height > s.summarized_height AND k.kind = 'rows') AS summarized
    FROM cand c LEFT JOIN audit.retention_summary s ON s.partition_oid = c.partition::oid),
  grp AS (
    SELECT f.partition, f.range_from, f.range_to, f.droppable, g.*,
           m.days, m.adays, m.classification AS policy_classification
    FROM fresh f
    CROSS JOIN jsonb_to_recordset(f.groups) AS g(retention_policy text, data_classification text, "rows" bigint,
                                                 "min" timestamptz, "max" timestamptz)
    LEFT JOIN LATERAL (
      SELECT pl.days, pl.adays, pl.classification FROM pol pl
      WHERE pl.policy_name = g.retention_policy
        AND (pl.classification = g.data_classification OR pl.classification IS NULL)
      ORDER BY pl.classification IS NULL LIMIT 1) m ON true
    WHERE f.summarized),
  judged AS (
    SELECT grp.*, day.d - make_interval(days => grp.days) AS cut,
           day.d - make_interval(days => grp.adays) AS acut
    FROM grp, day),
  verdict AS (
    SELECT j.partition, bool_and(j.droppable AND j.days IS NOT NULL AND j."max" < j.cut) AS all_expired
    FROM judged j GROUP BY j.partition)
  SELECT j.partition, j.range_from, j.range_to, j.retention_policy, j.data_classification,
         j.policy_classification, j.days, j.cut, j.adays, j.acut, j."rows", j."min", j."max",
         CASE WHEN v.all_expired THEN 'drop'
              WHEN j.days IS NULL THEN 'keep'
              WHEN j."min" < j.cut AND j.acut > j.cut AND j."max" >= j.cut THEN 'archive+delete'
              WHEN j."min" < j.cut THEN 'delete'
              WHEN j."min" < j.acut THEN 'archive'
              ELSE 'keep' END
  FROM judged j JOIN verdict v USING (partition)
  UNION ALL
  -- Candidates with no (or a stale) summary: to be summarised first.
  SELECT f.partition, f.range_from, f.range_to, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
         'summarize'
  FROM fresh f WHERE NOT f.summarized
  UNION ALL
  -- Summarised partitions without a sealed row: nothing to keep.
  SELECT f.partition, f.range_from, f.range_to, NULL, NULL, NULL, NULL, NULL, NULL, NULL, 0, NULL, NULL, 'drop'
  FROM fresh f WHERE f.summarized AND f.droppable AND jsonb_array_length(f.groups) = 0
  ORDER BY 2, 4, 5
$$;
COMMENT ON FUNCTION audit.retention_plan(timestamptz) IS
  'What retention would do as of a time: per partition and (policy, classification) group, keep / '
  'delete (rows before cutoff) / archive (rows from cutoff to archive_cutoff move to audit.archive_storage) / '
  'archive+delete / drop (every row expired) / summarize (summary missing or stale)';

-- Summarise one partition's sealed rows (called by maintenance): the first
-- time all of them, later only those sealed since, merged in.
CREATE FUNCTION audit.refresh_retention_summary(part regclass) RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  b record;
  h bigint;
  horizon bigint;
  since bigint := 0;
  prior jsonb := '[]';
  g jsonb;
BEGIN
  SELECT * INTO b FROM audit.partition_bounds() pb WHERE pb.partition = part AND NOT pb.is_default;
  IF NOT FOUND OR b.range_from IS NULL OR b.range_to IS NULL THEN
    RAISE EXCEPTION '% is not a monthly partition of audit.audit_log', part
      USING ERRCODE = 'invalid_parameter_value', HINT = 'See audit.partitions.';
  END IF;
  SELECT s.height, s.horizon_xid INTO h, horizon FROM audit.audit_chain_state s;
  SELECT s.summarized_xid, s.groups INTO since, prior FROM audit.retention_summary s WHERE s.partition_oid = part;
  IF NOT FOUND THEN
    since := 0;
    prior := '[]';
  END IF;
  -- Rows of transactions in [since, horizon): sealed since the last count.
  EXECUTE format('SELECT coalesce(jsonb_agg(jsonb_build_object(''retention_policy'', retention_policy,'
                 ' ''data_classification'', data_classification, ''rows'', n, ''min'', lo, ''max'', hi)), ''[]'')'
                 ' FROM (SELECT retention_policy, data_classification::text AS data_classification,'
                 ' count(*) AS n, min("timestamp") AS lo, max("timestamp") AS hi'
                 ' FROM ONLY %s WHERE transaction_id >= $2 AND transaction_id < $1 GROUP BY 1, 2) g', part)
    INTO g USING horizon, since;
  SELECT coalesce(jsonb_agg(jsonb_build_object('retention_policy', x.p, 'data_classification', x.c,
                                               'rows', x.n, 'min', x.lo, 'max', x.hi) ORDER BY x.p, x.c), '[]')
    INTO g
  FROM (SELECT r.retention_policy AS p, r.data_classification AS c, sum(r."rows") AS n,
               min(r."min") AS lo, max(r."max") AS hi
        FROM jsonb_to_recordset(prior || g) AS r(retention_policy text, data_classification text, "rows" bigint,
                                                "min" timestamptz, "max" timestamptz)
        GROUP BY 1, 2) x;
  INSERT INTO audit.retention_summary AS s (partition_oid, range_from, range_to, summarized_height,
                                            summarized_xid, groups)
  VALUES (part, b.range_from, b.range_to, h, horizon, g)
  ON CONFLICT (partition_oid) DO UPDATE
    SET range_from = excluded.range_from, range_to = excluded.range_to,
        summarized_height = excluded.summarized_height, summarized_xid = excluded.summarized_xid,
        summarized_at = clock_timestamp(), groups = excluded.groups;
  -- Summaries of partitions that are gone.
  DELETE FROM audit.retention_summary s
  WHERE NOT EXISTS (SELECT FROM audit.partition_bounds() pb WHERE pb.partition::oid = s.partition_oid);
END
$$;
COMMENT ON FUNCTION audit.refresh_retention_summary(regclass) IS
  'Count one partition''s sealed rows per retention policy and classification into audit.retention_summary '
  '(all of them the first time, then only those sealed since)';

-- Retention removed `removed` rows of one group of a partition, keeping none
-- older than kept_from: subtract them from the summary (called by maintenance).
CREATE FUNCTION audit.retention_summary_removed(part regclass, policy text, classification text,
                                                removed bigint, kept_from timestamptz) RETURNS void
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
  UPDATE audit.retention_summary s SET groups = (
    SELECT coalesce(jsonb_agg(jsonb_build_object('retention_policy', x.retention_policy,
                                                 'data_classification', x.data_classification,
                                                 'rows', x.n, 'min', x.lo, 'max', x."max")
                              ORDER BY x.retention_policy, x.data_classification), '[]')
    FROM (SELECT r.retention_policy, r.data_classification, r."max",
                 CASE WHEN r.retention_policy = policy AND r.data_classification = classification
                      THEN r."rows" - removed ELSE r."rows" END AS n,
                 CASE WHEN r.retention_policy = policy AND r.data_classification = classification
                      THEN greatest(r."min", kept_from) ELSE r."min" END AS lo
          FROM jsonb_to_recordset(s.groups) AS r(retention_policy text, data_classification text, "rows" bigint,
                                                 "min" timestamptz, "max" timestamptz)) x
    WHERE x.n > 0)
  WHERE s.partition_oid = part
$$;
COMMENT ON FUNCTION audit.retention_summary_removed(regclass, text, text, bigint, timestamptz) IS
  'Subtract rows retention removed from one (policy, classification) group of a partition''s summary';

CREATE VIEW audit.partitions AS
SELECT b.partition,
       b.range_from,
       b.range_to,
       b.is_default,
       CASE WHEN c.reltuples >= 0 THEN c.reltuples::bigint END AS estimated_rows,
       pg_catalog.pg_total_relation_size(b.partition) AS total_bytes,
       coalesce(s.blocks, 0) AS sealed_blocks,
       coalesce(s.rows_sealed, 0) AS sealed_rows,
       s.last_sealed_at,
       CASE WHEN b.is_default THEN NULL ELSE coalesce(v.verdict, 'keep') END AS retention_verdict
FROM audit.partition_bounds() b
JOIN pg_catalog.pg_class c ON c.oid = b.partition
LEFT JOIN (
  SELECT p.partition,
         CASE WHEN bool_or(p.action = 'summarize') THEN 'not summarized yet'
              WHEN bool_or(p.action = 'drop') THEN 'drop: every row expired'
              WHEN bool_or(p.action = 'archive+delete') THEN 'archive and delete rows'
              WHEN bool_or(p.action = 'delete') THEN 'delete expired rows'
              WHEN bool_or(p.action = 'archive') THEN 'archive rows'
              ELSE 'keep' END AS verdict
  FROM audit.retention_plan(now()) p GROUP BY p.partition
) v ON v.partition = b.partition
LEFT JOIN LATERAL (
  SELECT count(*) AS blocks, sum(k.row_count) AS rows_sealed, max(k.sealed_at) AS last_sealed_at
  FROM audit.audit_chain_block k
  WHERE k.kind = 'rows'
    AND k.partition_from IS NOT DISTINCT FROM b.range_from
    AND k.partition_to IS NOT DISTINCT FROM b.range_to
) s ON true;
COMMENT ON VIEW audit.partitions IS
  'Partitions of audit.audit_log: real bounds, estimated rows, size, what of them is sealed, and what '
  'retention would do with them now';

-- pg_dump keeps these (their rows are data, not part of the extension).
SELECT pg_catalog.pg_extension_config_dump('audit.retention_summary', '');
