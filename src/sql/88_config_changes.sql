-- Policy tables whose every change is recorded in audit.config_change_event
-- (src/sql/82_error_log.sql), with the reason from audit_db.change_reason.
DO $$
DECLARE
  tbl text;
BEGIN
  FOREACH tbl IN ARRAY ARRAY['audit_retention_policy', 'erasure_exemption', 'alert_rules', 'report_templates',
                             'scheduled_reports'] LOOP
    EXECUTE format('CREATE TRIGGER %I AFTER INSERT OR UPDATE OR DELETE ON audit.%I'
                   ' FOR EACH ROW EXECUTE FUNCTION audit.log_config_change()', tbl || '_config_change', tbl);
  END LOOP;
END
$$;

-- Alerts and errors belong to their organization (NULL: system-wide, seen by
-- every-organization readers only); the tenancy policies of 75_tenancy.sql.
SELECT audit.enable_tenant_isolation('audit.alerts');
SELECT audit.enable_tenant_isolation('audit.error_log');
SELECT audit.enable_tenant_isolation('audit.report_executions');
-- Alert rules, report schedules and the record of their changes carry an
-- organization too: a tenant reads its own and those of no organization
-- (system-wide rules and settings), never another tenant's.
SELECT audit.enable_tenant_isolation('audit.alert_rules', shared_null_rows => true);
SELECT audit.enable_tenant_isolation('audit.scheduled_reports', shared_null_rows => true);
SELECT audit.enable_tenant_isolation('audit.config_change_event', shared_null_rows => true);
