/*-------------------------------------------------------------------------
 *
 * restore.h
 *	  Dump and restore: loading audit rows verbatim, the restore that is
 *	  not finished yet, and the offset that keeps the chain's transaction
 *	  ids increasing when a database moves to another cluster.
 *
 *-------------------------------------------------------------------------
 */
#ifndef AUDIT_RESTORE_H
#define AUDIT_RESTORE_H

#include "access/transam.h"
#include "nodes/nodes.h"

/* Register the cache invalidation callback (from _PG_init). */
extern void audit_restore_init(void);

/*
 * audit_loading_verbatim
 *		True when rows are being loaded as they are: the session runs with
 *		session_replication_role = replica (a superuser setting), as
 *		pg_restore does when told to and logical replication's apply does.
 */
extern bool audit_loading_verbatim(void);

/*
 * audit_restore_pending
 *		True while a restore into this database is not finished (the
 *		extension was created with session_replication_role = replica and
 *		audit.finish_restore() has not run).  Cached per backend; needs a
 *		transaction.
 */
extern bool audit_restore_pending(void);

/*
 * audit_refuse_while_restoring
 *		ERROR (55000) naming what was attempted when a restore is pending.
 */
extern void audit_refuse_while_restoring(const char *what);

/*
 * audit_chain_xid_offset
 *		What audit.audit_chain_state.xid_offset holds: added to this
 *		cluster's 64-bit transaction ids to give the chain's (0 unless the
 *		database was restored into a cluster whose ids were behind).
 *		Cached per backend; needs a transaction.
 */
extern int64 audit_chain_xid_offset(void);

/*
 * audit_chain_xid
 *		The chain's transaction id of a 64-bit transaction id of this
 *		cluster (what audit_log.transaction_id stores).
 */
extern int64 audit_chain_xid(FullTransactionId fxid);

/*
 * audit_restore_skips_statement
 *		True for a statement a restore must skip: pg_restore's CREATE INDEX
 *		of an audit_log partition's index that attaching the partition to
 *		audit.audit_log (whose indexes CREATE EXTENSION made) has already
 *		created under the same name.  Only under session_replication_role =
 *		replica; says so in a NOTICE.
 */
extern bool audit_restore_skips_statement(Node *stmt);

#endif							/* AUDIT_RESTORE_H */
