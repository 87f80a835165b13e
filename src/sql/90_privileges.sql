-- Privileges: nothing for PUBLIC but pure predicates and the tenancy
-- context; the roles of 05_roles.sql for the common jobs.

REVOKE ALL ON ALL TABLES IN SCHEMA audit FROM PUBLIC;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA audit FROM PUBLIC;
REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA audit FROM PUBLIC;
REVOKE EXECUTE ON ALL PROCEDURES IN SCHEMA audit FROM PUBLIC;
-- The domains' CHECK constraints call these pure predicates as the inserting
-- role, whoever it is; they reveal nothing.
GRANT EXECUTE ON FUNCTION audit.is_event_status(text), audit.is_data_classification(text),
                          audit.is_hash_algorithm(text) TO PUBLIC;

GRANT USAGE ON SCHEMA audit TO audit_db_writer, audit_db_auditor;

-- Writer: INSERT without reading anything back (audit.log_event() and
-- audit.last_event_id() return the new id), presets to apply them.
GRANT INSERT ON audit.audit_log TO audit_db_writer;
GRANT SELECT ON audit.audit_preset TO audit_db_writer;
GRANT EXECUTE ON FUNCTION audit.log_event(text, text, text, text, text, text, text, text, text, text, integer, jsonb, text, timestamptz, text),
                          audit.last_event_id() TO audit_db_writer;

-- Sealing is harmless and idempotent: both roles may trigger it.
GRANT EXECUTE ON FUNCTION audit.seal() TO audit_db_writer, audit_db_auditor;

-- Auditor: read everything, recompute hashes.
GRANT SELECT ON audit.audit_log, audit.audit_preset TO audit_db_auditor;
GRANT EXECUTE ON FUNCTION audit.leaf_hash(audit.audit_log),
                          audit.leaf_encoding(audit.audit_log),
                          audit.commitment_encoding(audit.audit_log),
                          audit.merkle_root(bytea[]) TO audit_db_auditor;

-- Auditor and the chain: read blocks, state and past verifications; verify,
-- digest, prove, export. audit.verify() records its run as the table owner.
GRANT SELECT ON audit.audit_chain_block, audit.audit_chain_state, audit.audit_integrity_log, audit.restore_pending,
                audit.chain_status, audit.verification_in_progress TO audit_db_auditor;
GRANT EXECUTE ON FUNCTION audit.verify(timestamptz, timestamptz, text, boolean, integer, integer),
                          audit.verification_progress(), audit.digest(), audit.verify_digest(jsonb),
                          audit.prove(bigint), audit.export_row(audit.audit_log),
                          audit.export_block(audit.audit_chain_block), audit.export_header(audit.audit_chain_block),
                          audit.export_chain(), audit.chain_status_row(),
                          audit.block_header_hash(bigint, text, timestamptz, timestamptz, bigint, bigint, bigint, bigint, bytea, timestamptz, bytea),
                          audit.merkle_path(bytea, integer) TO audit_db_auditor;

-- Auditor and partitions / maintenance: read what exists and what was done.
-- Creating partitions and running maintenance stay with the extension's
-- owner (and the background worker).
GRANT SELECT ON audit.partitions, audit.maintenance_run, audit.audit_log_relocation TO audit_db_auditor;
GRANT EXECUTE ON FUNCTION audit.partition_bounds() TO audit_db_auditor;

-- Auditor and retention: read the policies and what retention would do.
-- Changing policies stays with the extension's owner.
GRANT SELECT ON audit.audit_retention_policy, audit.retention_summary TO audit_db_auditor;
GRANT EXECUTE ON FUNCTION audit.retention_plan(timestamptz) TO audit_db_auditor;

-- Auditor and the archive: read entries and dead letters, restore rows
-- (each restore is counted), see what would expire; audit.verify() reads
-- archived rows through audit.archive_lines().
-- Every column of an entry but its data: the rows of every organization,
-- which audit.archive_lines() hands out per organization.
GRANT SELECT (archive_id, block_height, partition_from, partition_to, retention_policy, data_classification,
              row_count, first_id, last_id, min_timestamp, max_timestamp, merkle_root, format, compression,
              raw_bytes, archived_at, retrieval_count, last_retrieved_at)
   ON audit.archive_storage TO audit_db_auditor;
GRANT SELECT ON audit.archive_dlq_event TO audit_db_auditor;
GRANT EXECUTE ON FUNCTION audit.archive_lines(bigint, boolean), audit.archive_restore(bigint),
                          audit.row_from_export(jsonb, timestamptz), audit.archive_plan(timestamptz)
                 TO audit_db_auditor;

-- Tenancy: everyone needs the context and the checks the policies call (they
-- run as the querying role); they only reveal what the session may see.
-- Mapping roles to organizations (organization_access) and isolating tables
-- stay with the extension's owner; tenant administrators manage roles and
-- assignments of their own organization (policies: resource
-- audit.organization_role / audit.organization_role_assignment, 'write').
GRANT EXECUTE ON FUNCTION audit.current_organization(), audit.current_principal(),
                          audit.set_organization(text, text, boolean), audit.reset_organization(),
                          audit.available_organizations(), audit.session_has_permission(text, text),
                          audit.has_permission(text, text, text, text), audit.user_permissions(text, text)
                 TO PUBLIC;
GRANT USAGE ON SCHEMA audit TO audit_db_tenant_admin, audit_db_all_organizations;
GRANT SELECT ON audit.organization_role, audit.organization_role_assignment
                TO audit_db_auditor, audit_db_tenant_admin;
GRANT INSERT, UPDATE, DELETE ON audit.organization_role, audit.organization_role_assignment
                TO audit_db_tenant_admin;
GRANT SELECT ON audit.tenant_isolation_status, audit.tenant_isolated_table TO audit_db_auditor;
GRANT EXECUTE ON FUNCTION audit.tenant_isolation_warnings(regclass), audit.tenant_policy_definitions(regclass)
                 TO audit_db_auditor;

-- GDPR (69_gdpr.sql): the four entry points decide themselves who may act
-- (audit_db_privacy_officer everywhere; organization permission
-- gdpr/<operation> in the session's organization) and run as the owner.
-- Keys and the mapping are granted to nobody; auditors read the requests and
-- the attestations (both tenant-isolated; audit.export_chain() exports them).
GRANT USAGE ON SCHEMA audit TO audit_db_privacy_officer;
GRANT EXECUTE ON FUNCTION audit.pseudonymize(text, text, text, text, text),
                          audit.original_id(text, text, text),
                          audit.export_subject(text, text, text),
                          audit.erase_subject(text, text, boolean, text) TO PUBLIC;
GRANT SELECT ON audit.redaction_request, audit.redacted_row, audit.erasure_exemption
   TO audit_db_auditor, audit_db_privacy_officer;
GRANT EXECUTE ON FUNCTION audit.redacted_fields_digest(audit.audit_log),
                          audit.mentions_subject(audit.audit_log, text[]) TO audit_db_auditor;

-- Change tracking (77): auditors see which tables are tracked, and how.
GRANT SELECT ON audit.tracked_table, audit.tracked_tables TO audit_db_auditor;

-- Alerts, errors, health, reports (80-88): writers raise alerts and report
-- errors of their organization; auditors read, acknowledge and resolve
-- alerts, read errors, changes, statistics and reports, and generate
-- reports. Evaluating rules, scheduling and running stored reports stay
-- with the extension's owner (and the worker, and pg_cron jobs it creates).
GRANT SELECT, INSERT, UPDATE (occurrences, last_seen_at, metadata) ON audit.alerts TO audit_db_writer;
GRANT EXECUTE ON FUNCTION audit.raise_alert(text, text, text, text, text, text, text, jsonb, text, bigint),
                          audit.report_error(text, text, text, text, jsonb, text, text),
                          audit.error_key(text, text, text) TO audit_db_writer;
GRANT SELECT ON audit.alerts, audit.alert_rules, audit.error_log, audit.error_aggregation,
                audit.config_change_event, audit.report_templates, audit.scheduled_reports,
                audit.report_executions, audit.table_statistics, audit.partition_statistics,
                audit.index_usage, audit.unused_indexes TO audit_db_auditor;
GRANT UPDATE (acknowledged, acknowledged_by, acknowledged_at, resolved, resolved_by, resolved_at,
              resolution_notes) ON audit.alerts TO audit_db_auditor;
GRANT EXECUTE ON FUNCTION audit.active_alerts(text),
                          audit.query_alerts(text, text, text, text, timestamptz, timestamptz, integer),
                          audit.alert_statistics(timestamptz), audit.acknowledge_alert(bigint),
                          audit.resolve_alert(bigint, text), audit.alert_actor(), audit.alert_exists(bigint),
                          audit.health(), audit.metrics_prometheus(), audit.slow_statements(integer),
                          audit.generate_report(text, jsonb, text, text), audit.report_template(text, jsonb, text),
                          audit.report_rows(text, jsonb, text), audit.report_columns(text),
                          audit.cron_next(text, timestamptz)
                 TO audit_db_auditor;

-- Last: the sealing worker for this database can start now.
SELECT audit.wake_launcher();
