/*-------------------------------------------------------------------------
 *
 * archive.h
 *	  audit.archive_storage: audit rows moved out of the log by retention
 *	  (archive_after_days), compressed, until their policy expires them;
 *	  reading them back (audit.archive_lines / audit.archive_restore) and
 *	  expiring them, each move and expiry sealed into the chain.
 *
 *-------------------------------------------------------------------------
 */
#ifndef AUDIT_ARCHIVE_H
#define AUDIT_ARCHIVE_H

#include "datatype/timestamp.h"
#include "hashing.h"

/* One archived row as retention hands it over. */
typedef struct AuditArchivedRow
{
	int64		id;
	uint8		leaf[AUDIT_HASH_LEN];
	TimestampTz ts;
	char	   *line;			/* audit.export_row(row)::text */
} AuditArchivedRow;

/*
 * audit_archive_store
 *		Store n rows (sorted by id) of one (policy, classification) group of
 *		the partition [from, to) as one archive entry belonging to the
 *		archive_rows block at block_height, whose Merkle root is root.
 *		Needs SPI.
 */
extern void audit_archive_store(int64 block_height, TimestampTz from, TimestampTz to,
								const char *retention_policy, const char *data_classification,
								const AuditArchivedRow *rows, int n, const uint8 root[AUDIT_HASH_LEN]);

/*
 * audit_archive_expire
 *		Remove one archive entry whose policy expired it and seal the removal
 *		(a retention_archive block with the entry's ids and leaves).  Returns
 *		the rows removed (0 when the entry is gone already).  Needs SPI.
 */
extern int64 audit_archive_expire(int64 archive_id);

#endif							/* AUDIT_ARCHIVE_H */
