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
#include "utils/guc.h"

#include "audit_db.h"
#include "audit_log_columns.h"
#include "immutability.h"

PG_MODULE_MAGIC;

void		_PG_init(void);

/* audit_db.max_details_bytes: upper bound of one event's details document. */
int			audit_max_details_bytes = 1024 * 1024;

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
