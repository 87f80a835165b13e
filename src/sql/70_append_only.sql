-- Append-only guards for the extension's record tables: UPDATE, DELETE and
-- TRUNCATE are refused by audit.refuse_audit_change() (src/immutability.c),
-- for every role, also under session_replication_role = replica (ALWAYS).
-- Triggers are named <table>_refuse_<operation>. audit.audit_log has its own
-- guards in 20_audit_log.sql (its partitions need them too).
DO $$
DECLARE
  tbl text;
  op  text;
BEGIN
  FOREACH tbl IN ARRAY ARRAY['audit_chain_block', 'audit_log_relocation', 'archive_storage',
                                 'redaction_request', 'redacted_row'] LOOP
    FOREACH op IN ARRAY ARRAY['update', 'delete', 'truncate'] LOOP
      EXECUTE format('CREATE TRIGGER %I BEFORE %s ON audit.%I FOR EACH %s EXECUTE FUNCTION audit.refuse_audit_change()',
                     tbl || '_refuse_' || op, upper(op), tbl,
                     CASE op WHEN 'truncate' THEN 'STATEMENT' ELSE 'ROW' END);
      EXECUTE format('ALTER TABLE audit.%I ENABLE ALWAYS TRIGGER %I', tbl, tbl || '_refuse_' || op);
    END LOOP;
  END LOOP;
END
$$;
