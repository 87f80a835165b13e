-- Dump and restore (src/restore.c; docs/operations.md, "Backup and restore").
--
-- pg_restore of a database using audit_db runs with
-- session_replication_role = replica. CREATE EXTENSION then creates the
-- structure only (the dump brings the partitions, the chain state, the keys
-- and every row) and marks the restore as pending here: until a superuser runs
-- audit.finish_restore(), nothing seals, maintains or logs. Not dumped.
CREATE TABLE audit.restore_pending (
  singleton  boolean     PRIMARY KEY DEFAULT true CHECK (singleton),
  begun_at   timestamptz NOT NULL DEFAULT now(),
  begun_by   name        NOT NULL DEFAULT session_user
);
COMMENT ON TABLE audit.restore_pending IS
  'One row while a restore of this database is not finished (see audit.finish_restore())';
INSERT INTO audit.restore_pending (singleton)
SELECT true WHERE current_setting('session_replication_role') = 'replica';

CREATE FUNCTION audit.finish_restore() RETURNS jsonb
LANGUAGE C VOLATILE
SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'audit_finish_restore_sql';
COMMENT ON FUNCTION audit.finish_restore() IS
  'End a restore (superuser): keep the chain''s transaction ids increasing in this cluster, let sealing, '
  'maintenance and logging resume; records an audit_db.restore event and returns a summary';
