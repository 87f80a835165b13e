/*-------------------------------------------------------------------------
 *
 * immutability.c
 *	  Triggers that make audit.audit_log append-only, and the backend-local
 *	  permission through which audit_db's own C code makes the controlled
 *	  exceptions (see immutability.h).
 *
 * The triggers are created ENABLE ALWAYS, so session_replication_role =
 * replica does not switch them off.  A superuser can still drop or disable
 * them; the hash chain (sealing, verification, external digests) is what
 * makes such tampering evident.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "commands/trigger.h"
#include "fmgr.h"
#include "utils/memutils.h"
#include "utils/rel.h"

#include "immutability.h"

/* Depth of nested grants; 0 means audit rows are read-only. */
static int	privileged_change_depth = 0;
static const char *privileged_change_reason = NULL;

/*
 * The depth at the start of each open subtransaction, innermost last, so that
 * an aborted subtransaction (an error caught by PL/pgSQL's EXCEPTION, say)
 * gives back any grant taken inside it.
 */
static int *subxact_depths = NULL;
static int	subxact_count = 0;
static int	subxact_allocated = 0;

/*
 * reset_at_transaction_end
 *		A grant never outlives the transaction that took it, even when an
 *		error skipped the matching audit_end_privileged_change().
 */
static void
reset_at_transaction_end(XactEvent event, void *arg)
{
	switch (event)
	{
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PARALLEL_COMMIT:
		case XACT_EVENT_PARALLEL_ABORT:
		case XACT_EVENT_PREPARE:
			privileged_change_depth = 0;
			privileged_change_reason = NULL;
			subxact_count = 0;
			break;
		default:
			break;
	}
}

/*
 * restore_at_subtransaction_abort
 *		Remember the depth when a subtransaction starts; restore it when the
 *		subtransaction aborts, forget it when it commits.
 */
static void
restore_at_subtransaction_abort(SubXactEvent event, SubTransactionId mySubid,
								SubTransactionId parentSubid, void *arg)
{
	switch (event)
	{
		case SUBXACT_EVENT_START_SUB:
			if (subxact_count == subxact_allocated)
			{
				int			n = Max(16, subxact_allocated * 2);

				subxact_depths = subxact_depths == NULL ?
					MemoryContextAlloc(TopMemoryContext, n * sizeof(int)) :
					repalloc(subxact_depths, n * sizeof(int));
				subxact_allocated = n;
			}
			subxact_depths[subxact_count++] = privileged_change_depth;
			break;
		case SUBXACT_EVENT_COMMIT_SUB:
			if (subxact_count > 0)
				subxact_count--;
			break;
		case SUBXACT_EVENT_ABORT_SUB:
			if (subxact_count > 0)
				privileged_change_depth = subxact_depths[--subxact_count];
			if (privileged_change_depth == 0)
				privileged_change_reason = NULL;
			break;
		default:
			break;
	}
}

void
audit_immutability_init(void)
{
	RegisterXactCallback(reset_at_transaction_end, NULL);
	RegisterSubXactCallback(restore_at_subtransaction_abort, NULL);
}

void
audit_begin_privileged_change(const char *reason)
{
	privileged_change_depth++;
	privileged_change_reason = reason;
}

void
audit_end_privileged_change(void)
{
	if (privileged_change_depth > 0)
		privileged_change_depth--;
	if (privileged_change_depth == 0)
		privileged_change_reason = NULL;
}

bool
audit_privileged_change_active(void)
{
	return privileged_change_depth > 0;
}

PG_FUNCTION_INFO_V1(audit_refuse_change);

/*
 * audit_refuse_change
 *		Trigger function audit.refuse_audit_change(): BEFORE UPDATE or
 *		DELETE FOR EACH ROW, and BEFORE TRUNCATE FOR EACH STATEMENT, on
 *		audit.audit_log and its partitions.  Refuses the change for every
 *		role unless audit_db's own code holds the permission.
 */
Datum
audit_refuse_change(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;
	const char *what;

	if (!CALLED_AS_TRIGGER(fcinfo) || !TRIGGER_FIRED_BEFORE(trigdata->tg_event))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("audit.refuse_audit_change() must be fired as a BEFORE trigger"),
				 errhint("It is installed on audit.audit_log by the extension; do not attach it elsewhere.")));

	if (TRIGGER_FIRED_BY_UPDATE(trigdata->tg_event))
		what = "UPDATE";
	else if (TRIGGER_FIRED_BY_DELETE(trigdata->tg_event))
		what = "DELETE";
	else if (TRIGGER_FIRED_BY_TRUNCATE(trigdata->tg_event))
		what = "TRUNCATE";
	else
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("audit.refuse_audit_change() fired by an unexpected event"),
				 errhint("It guards UPDATE, DELETE and TRUNCATE only.")));

	if (privileged_change_depth > 0)
	{
		if (TRIGGER_FIRED_BY_UPDATE(trigdata->tg_event))
			return PointerGetDatum(trigdata->tg_newtuple);
		if (TRIGGER_FIRED_BY_DELETE(trigdata->tg_event))
			return PointerGetDatum(trigdata->tg_trigtuple);
		return PointerGetDatum(NULL);
	}

	ereport(ERROR,
			(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
			 errmsg("%s of audit rows is not allowed: %s is append-only",
					what, RelationGetRelationName(trigdata->tg_relation)),
			 errdetail("audit_db refuses UPDATE, DELETE and TRUNCATE of audit events for every role, including the table owner and superusers."),
			 errhint("To correct an event, log a new event that references it, for example through the same correlation_id.")));
	PG_RETURN_NULL();			/* keep compiler quiet */
}
