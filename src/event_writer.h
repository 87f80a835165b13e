/*-------------------------------------------------------------------------
 *
 * event_writer.h
 *	  Writing audit events from C without SQL: rows go straight into the
 *	  right partition of audit.audit_log through PostgreSQL's executor
 *	  routines (tuple routing, the stamping, the NOT NULL checks, heap and
 *	  index inserts), the way COPY FROM does, with no plan, portal
 *	  or executor start per event.
 *
 * One writer is kept open while events are written.  Outside
 * subtransactions it lasts until the transaction commits, a utility
 * statement runs or audit.audit_log's partitions change; inside a
 * subtransaction it is closed at the end of the statement (its
 * ExecutorEnd, or the end of a utility statement such as COPY), at the end
 * of the subtransaction it was opened in, or when used from another
 * (sub)transaction or resource owner.
 *
 *-------------------------------------------------------------------------
 */
#ifndef AUDIT_EVENT_WRITER_H
#define AUDIT_EVENT_WRITER_H

#include "audit_log_columns.h"
#include "executor/execdesc.h"

/*
 * AuditEventValues
 *		An event to write: values[c] / nulls[c] for each AuditColumn c, as
 *		the writer passes them (text datums for the character columns).
 *		The stamping trigger fills in and overwrites what audit_db sets.
 */
typedef struct AuditEventValues
{
	Datum		values[AC_NUM_COLUMNS];
	bool		nulls[AC_NUM_COLUMNS];
} AuditEventValues;

/*
 * audit_event_values_init
 *		All columns NULL except the defaults of audit.audit_log: the event
 *		time (transaction start, as now()), status 'success', event_version
 *		'1.0', data_classification 'INTERNAL', retention_policy 'standard'.
 *		The default texts are shared by every call: replace a value, never
 *		modify or free it.
 */
extern void audit_event_values_init(AuditEventValues *ev);

/*
 * audit_event_write
 *		Insert one event into audit.audit_log, as an INSERT would (stamping
 *		and its checks included -- called directly when the stamping trigger
 *		is the partition's only BEFORE INSERT row trigger, fired with the
 *		others otherwise -- row-level security aside: the caller is audit_db
 *		itself).  A character value longer than its
 *		column allows raises 22001.  Allocates in the current memory
 *		context; the caller resets it.
 */
extern void audit_event_write(const AuditEventValues *ev);

/*
 * AuditStatementMark
 *		The statement whose AFTER triggers are firing (saved and restored
 *		around nested ones).
 */
typedef struct AuditStatementMark
{
	QueryDesc  *query;			/* NULL for a utility statement */
	CommandId	cid;			/* InvalidCommandId: none */
} AuditStatementMark;

/*
 * audit_event_statement_cid
 *		Command id of the statement whose triggers are firing: the same for
 *		every row it changed, although the triggers' own queries move the
 *		command counter on.  Outside any statement, the current command id.
 */
extern CommandId audit_event_statement_cid(void);

/*
 * audit_event_statement_enter / audit_event_statement_exit
 *		Bracket a statement that fires triggers (the ExecutorFinish hook does
 *		it for queries, the utility hook for COPY and TRUNCATE); exit with
 *		what enter returned, also on error (PG_FINALLY).
 */
extern AuditStatementMark audit_event_statement_enter(QueryDesc *query, CommandId cid);
extern void audit_event_statement_exit(AuditStatementMark outer);

/*
 * audit_event_writer_close
 *		Close the open writer, if any, unless a row is being written (the
 *		utility hook calls it before and after each utility statement).
 */
extern void audit_event_writer_close(void);

/*
 * audit_event_writer_init
 *		Called from _PG_init: installs the ExecutorEnd hook and the
 *		transaction callbacks that close or forget the writer.
 */
extern void audit_event_writer_init(void);

#endif							/* AUDIT_EVENT_WRITER_H */
