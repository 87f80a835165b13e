/*-------------------------------------------------------------------------
 *
 * audit_db.c
 *	  Module entry point of the audit_db extension: the PG_MODULE_MAGIC
 *	  block, _PG_init (settings and callbacks), and the small vocabulary
 *	  helpers shared by the other files.
 *
 * The library works both when loaded on first use (CREATE EXTENSION, the
 * first call of one of its functions) and when listed in
 * shared_preload_libraries; later capabilities (the sealing background
 * worker) need the latter.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "fmgr.h"
#include "lib/stringinfo.h"
#include "utils/guc.h"

#include "audit_db.h"
#include "audit_log_columns.h"
#include "immutability.h"

PG_MODULE_MAGIC;

void		_PG_init(void);

/* audit_db.max_details_bytes: upper bound of one event's details document. */
int			audit_max_details_bytes = 1024 * 1024;

const char *const audit_status_values[] = {"attempt", "success", "failure"};
const int	audit_status_count = lengthof(audit_status_values);

const char *const audit_classification_values[] = {
	"PUBLIC", "INTERNAL", "CONFIDENTIAL", "PHI", "FINANCIAL"
};
const int	audit_classification_count = lengthof(audit_classification_values);

/*
 * _PG_init
 *		Define the extension's settings and register its backend callbacks.
 *		Runs once per backend, when the library is loaded.
 */
void
_PG_init(void)
{
	DefineCustomIntVariable("audit_db.max_details_bytes",
							"Largest accepted audit event details document, in bytes of its canonical text.",
							"Events whose details are larger are refused with SQLSTATE 54000.",
							&audit_max_details_bytes,
							1024 * 1024,
							64,
							64 * 1024 * 1024,
							PGC_SUSET,
							GUC_UNIT_BYTE,
							NULL, NULL, NULL);

	MarkGUCPrefixReserved("audit_db");

	audit_log_columns_init();
	audit_immutability_init();
}

bool
audit_value_in_list(const char *value, int len, const char *const *list, int count)
{
	for (int i = 0; i < count; i++)
	{
		if ((int) strlen(list[i]) == len && memcmp(list[i], value, len) == 0)
			return true;
	}
	return false;
}

char *
audit_list_to_string(const char *const *list, int count)
{
	StringInfoData buf;

	initStringInfo(&buf);
	for (int i = 0; i < count; i++)
		appendStringInfo(&buf, "%s'%s'", i > 0 ? ", " : "", list[i]);
	return buf.data;
}
