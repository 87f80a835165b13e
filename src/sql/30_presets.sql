-- Event presets: named templates of fixed values, defaults, required fields and
-- validation rules, applied by audit.log_event(preset => ...). See src/event_api.c.

CREATE TABLE audit.audit_preset (
  preset_id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  name                varchar(100) NOT NULL,
  organization_id     varchar(255),
  action              varchar(255),
  data_classification audit.data_classification,
  required_fields     text[]       NOT NULL DEFAULT '{}',
  default_values      jsonb        NOT NULL DEFAULT '{}',
  validation_rules    jsonb        NOT NULL DEFAULT '{}',
  description         text,
  created_at          timestamptz  NOT NULL DEFAULT now(),
  updated_at          timestamptz  NOT NULL DEFAULT now(),
  CONSTRAINT audit_preset_name_organization_key UNIQUE NULLS NOT DISTINCT (name, organization_id),
  CONSTRAINT audit_preset_name_check CHECK (name <> '')
);
COMMENT ON TABLE audit.audit_preset IS
  'Event templates for audit.log_event(preset => name): fixed values, defaults, required fields, rules';
COMMENT ON COLUMN audit.audit_preset.organization_id IS
  'NULL: a preset for every organization; else used only for events of that organization';
COMMENT ON COLUMN audit.audit_preset.required_fields IS
  'Fields (or details.<key>) an event must have after defaults';
COMMENT ON COLUMN audit.audit_preset.default_values IS
  'Field -> value for fields the event leaves NULL; "details" is merged under the event''s details';
COMMENT ON COLUMN audit.audit_preset.validation_rules IS
  'Field (or details.<key>) -> {"pattern", "min_length", "max_length", "enum", "min", "max"}';

CREATE FUNCTION audit.check_audit_preset() RETURNS trigger
LANGUAGE C AS 'MODULE_PATHNAME', 'audit_check_preset';

CREATE FUNCTION audit.touch_audit_preset() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  NEW.updated_at := now();
  RETURN NEW;
END
$$;

CREATE TRIGGER audit_preset_check
  BEFORE INSERT OR UPDATE ON audit.audit_preset
  FOR EACH ROW EXECUTE FUNCTION audit.check_audit_preset();
CREATE TRIGGER audit_preset_touch
  BEFORE UPDATE ON audit.audit_preset
  FOR EACH ROW EXECUTE FUNCTION audit.touch_audit_preset();

-- ALWAYS: presets written under session_replication_role = replica are checked too.
ALTER TABLE audit.audit_preset ENABLE ALWAYS TRIGGER audit_preset_check;

SELECT pg_catalog.pg_extension_config_dump('audit.audit_preset', '');
SELECT pg_catalog.pg_extension_config_dump('audit.audit_preset_preset_id_seq', '');
