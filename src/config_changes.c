/*-------------------------------------------------------------------------
 *
 * config_changes.c
 *	  audit.config_change_event rows for changes of audit_db.* settings,
 *	  made by ALTER SYSTEM, ALTER DATABASE ... SET and ALTER ROLE ... SET
 *	  (see config_changes.h).  ALTER SYSTEM changes the whole cluster; it is
 *	  recorded in the database where it was run, if that database has the
 *	  extension.  The reason comes from audit_db.change_reason.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "access/xlog.h"
#include "catalog/pg_type.h"
#include "commands/extension.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/guc.h"

#include "config_changes.h"
#include "tenancy.h"

struct AuditSettingChange
{
	char	   *setting;
	const char *operation;		/* ALTER SYSTEM, ALTER DATABASE, ALTER ROLE */
	char	   *scope;			/* the database or role; NULL for ALTER SYSTEM */
	char	   *old_value;		/* the session's value before; NULL if none */
	char	   *new_value;		/* NULL: RESET */
};

/* The setting a SET/RESET statement names, if it is one of audit_db's. */
static bool
names_audit_setting(VariableSetStmt *set)
{
	return set != NULL && set->name != NULL && strncmp(set->name, "audit_db.", 9) == 0 &&
		(set->kind == VAR_SET_VALUE || set->kind == VAR_SET_DEFAULT || set->kind == VAR_RESET);
}

AuditSettingChange *
audit_setting_change_begin(Node *stmt)
{
	VariableSetStmt *set = NULL;
	const char *operation = NULL;
	char	   *scope = NULL;
	AuditSettingChange *change;
	const char *old;

	if (IsA(stmt, AlterSystemStmt))
	{
		set = ((AlterSystemStmt *) stmt)->setstmt;
		operation = "ALTER SYSTEM";
	}
	else if (IsA(stmt, AlterDatabaseSetStmt))
	{
		set = ((AlterDatabaseSetStmt *) stmt)->setstmt;
		operation = "ALTER DATABASE";
		scope = pstrdup(((AlterDatabaseSetStmt *) stmt)->dbname);
	}
	else if (IsA(stmt, AlterRoleSetStmt))
	{
		AlterRoleSetStmt *r = (AlterRoleSetStmt *) stmt;

		set = r->setstmt;
		operation = "ALTER ROLE";
		scope = r->role == NULL ? pstrdup("ALL") :
			r->role->roletype == ROLESPEC_CSTRING ? pstrdup(r->role->rolename) :
			pstrdup("CURRENT_USER");
		if (r->database)
			scope = psprintf("%s IN DATABASE %s", scope, r->database);
	}
	if (!names_audit_setting(set))
		return NULL;

	change = palloc0(sizeof(AuditSettingChange));
	change->setting = pstrdup(set->name);
	change->operation = operation;
	change->scope = scope;
	/* Secret settings are recorded as changed, never with their value. */
	old = (GetConfigOptionFlags(set->name, true) & GUC_SUPERUSER_ONLY) ? "(hidden)" :
		GetConfigOption(set->name, true, false);
	change->old_value = old ? pstrdup(old) : NULL;
	if (set->kind == VAR_SET_VALUE)
		change->new_value = (GetConfigOptionFlags(set->name, true) & GUC_SUPERUSER_ONLY) ?
			pstrdup("(hidden)") : ExtractSetVariableArgs(set);
	return change;
}

void
audit_setting_change_finish(AuditSettingChange *change)
{
	Datum		values[5];
	char		nulls[5] = {' ', ' ', ' ', ' ', ' '};
	Oid			save_userid;
	int			save_sec;

	if (change == NULL || RecoveryInProgress() || !IsTransactionState() ||
		!OidIsValid(get_extension_oid("audit_db", true)))
		return;
	values[0] = CStringGetTextDatum(change->setting);
	values[1] = CStringGetTextDatum(change->operation);
	values[2] = change->scope ? CStringGetTextDatum(change->scope) : (Datum) 0;
	nulls[2] = change->scope ? ' ' : 'n';
	values[3] = change->old_value ? CStringGetTextDatum(change->old_value) : (Datum) 0;
	nulls[3] = change->old_value ? ' ' : 'n';
	values[4] = change->new_value ? CStringGetTextDatum(change->new_value) : (Datum) 0;
	nulls[4] = change->new_value ? ' ' : 'n';

	/* Written as the extension's owner: the changer needs no grant on the table. */
	GetUserIdAndSecContext(&save_userid, &save_sec);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	SetUserIdAndSecContext(audit_extension_owner(),
						   save_sec | SECURITY_LOCAL_USERID_CHANGE | SECURITY_NOFORCE_RLS);
	PG_TRY();
	{
		if (SPI_execute_with_args("SELECT audit.log_setting_change($1, $2, $3, $4, $5)", 5,
								  (Oid[]) {TEXTOID, TEXTOID, TEXTOID, TEXTOID, TEXTOID},
								  values, nulls, false, 0) != SPI_OK_SELECT)
			elog(ERROR, "audit_db: recording the change of %s failed", change->setting);
	}
	PG_FINALLY();
	{
		SetUserIdAndSecContext(save_userid, save_sec);
	}
	PG_END_TRY();
	SPI_finish();
}
