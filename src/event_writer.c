/*-------------------------------------------------------------------------
 *
 * event_writer.c
 *	  Writing audit events from C without SQL (see event_writer.h).
 *
 * The change-tracking trigger fires once per changed row.  Through SPI each
 * event paid for a plan-cache check, a portal, an executor start (the
 * ModifyTable and Result nodes, their projections, tuple routing set up
 * again) and an executor end: most of the cost of a tracked row.  The
 * writer sets up what an INSERT into audit.audit_log needs once -- an
 * executor state with the table as its range table entry, a tuple-routing
 * descriptor, the partitions and their indexes opened as rows reach them --
 * and then inserts each event the way COPY FROM does: ExecFindPartition,
 * the partition's BEFORE ROW triggers (the stamping trigger, so an event
 * written here is checked, numbered and hashed exactly like any INSERT),
 * NOT NULL and partition checks, table_tuple_insert, ExecInsertIndexTuples.
 *
 * Lifetime.  The relations the writer opens belong to the resource owner
 * that was current when it opened them, so the writer is only used under
 * that owner and in the same subtransaction; used from elsewhere it is
 * closed and opened again.  It is closed (relations released through that
 * owner) at ExecutorEnd of the statement whose AFTER triggers opened it
 * (tracked in the ExecutorFinish hook, where they fire), after every
 * utility statement (COPY FROM fires row triggers without an executor), at
 * the commit of its subtransaction and before the commit of its
 * transaction.  On abort its resource owner has released everything and the
 * writer is simply forgotten.
 *
 * The same hooks name the statement whose triggers are firing by its
 * command id (audit_event_statement_cid), which the change-tracking events
 * use as their correlation id.
 *
 * Not supported: AFTER INSERT row triggers on audit.audit_log (the
 * extension creates none; they would not fire for events written here).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/pg_class.h"
#include "commands/trigger.h"
#include "executor/execPartition.h"
#include "executor/executor.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "nodes/makefuncs.h"
#include "storage/lmgr.h"
#include "utils/builtins.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/resowner.h"
#include "utils/snapmgr.h"
#if PG_VERSION_NUM >= 160000
#include "parser/parse_relation.h"
#endif

#include "audit_db.h"
#include "event_writer.h"
#include "partitions.h"

typedef struct EventWriter
{
	EState	   *estate;
	ModifyTableState *mtstate;	/* what ExecFindPartition expects */
	ResultRelInfo *root;		/* audit.audit_log */
	PartitionTupleRouting *proute;
	TupleTableSlot *slot;		/* a row in audit.audit_log's format */
	AuditColumnMap map;			/* of audit.audit_log */
	ResourceOwner owner;		/* owns every relation opened here */
	SubTransactionId subxid;	/* opened in this subtransaction */
	QueryDesc  *statement;		/* whose triggers opened it; NULL: a utility */
} EventWriter;

static EventWriter *writer = NULL;
static bool writing = false;	/* inside audit_event_write() */
static ExecutorEnd_hook_type prev_executor_end = NULL;
static ExecutorFinish_hook_type prev_executor_finish = NULL;

/*
 * The statement whose AFTER triggers are firing: the innermost query in
 * ExecutorFinish, or a utility statement (COPY, TRUNCATE).  Its command id
 * names it: the triggers' own queries (foreign-key checks among them) move
 * the command counter on between two rows of one statement.
 */
static AuditStatementMark current_statement = {NULL, InvalidCommandId};

void
audit_event_values_init(AuditEventValues *ev)
{
	for (int c = 0; c < AC_NUM_COLUMNS; c++)
	{
		ev->values[c] = (Datum) 0;
		ev->nulls[c] = true;
	}
#define SETDEF(c, v) (ev->values[c] = (v), ev->nulls[c] = false)
	SETDEF(AC_TIMESTAMP, TimestampTzGetDatum(GetCurrentTransactionStartTimestamp()));
	SETDEF(AC_STATUS, CStringGetTextDatum("success"));
	SETDEF(AC_EVENT_VERSION, CStringGetTextDatum("1.0"));
	SETDEF(AC_DATA_CLASSIFICATION, CStringGetTextDatum("INTERNAL"));
	SETDEF(AC_RETENTION_POLICY, CStringGetTextDatum("standard"));
	SETDEF(AC_HASH_ALGORITHM, CStringGetTextDatum(AUDIT_HASH_ALGORITHM));
#undef SETDEF
}

/*
 * open_writer
 *		Set up the executor state for inserting into audit.audit_log, under
 *		the current resource owner, in TopTransactionContext.
 */
static EventWriter *
open_writer(void)
{
	Oid			relid = audit_log_relid(false);
	MemoryContext old = MemoryContextSwitchTo(TopTransactionContext);
	EventWriter *w = palloc0(sizeof(EventWriter));
	RangeTblEntry *rte;
	Relation	rel;

	/* The range table entry's lock: ExecInitResultRelation expects it held. */
	LockRelationOid(relid, RowExclusiveLock);

	w->estate = CreateExecutorState();
	MemoryContextSwitchTo(w->estate->es_query_cxt);
	rte = makeNode(RangeTblEntry);
	rte->rtekind = RTE_RELATION;
	rte->relid = relid;
	rte->relkind = RELKIND_PARTITIONED_TABLE;
	rte->rellockmode = RowExclusiveLock;
#if PG_VERSION_NUM >= 160000
	{
		List	   *perminfos = NIL;
		RTEPermissionInfo *perminfo = addRTEPermissionInfo(&perminfos, rte);

		perminfo->requiredPerms = ACL_INSERT;
		ExecInitRangeTable(w->estate, list_make1(rte), perminfos);
	}
#else
	rte->requiredPerms = ACL_INSERT;
	ExecInitRangeTable(w->estate, list_make1(rte));
#endif
	w->root = makeNode(ResultRelInfo);
	ExecInitResultRelation(w->estate, w->root, 1);
	rel = w->root->ri_RelationDesc;
	if (rel->rd_rel->relkind != RELKIND_PARTITIONED_TABLE)
		ereport(ERROR,
				(errcode(ERRCODE_WRONG_OBJECT_TYPE),
				 errmsg("%s.%s is not partitioned", AUDIT_SCHEMA_NAME, AUDIT_LOG_TABLE_NAME),
				 errhint("The extension's audit log was altered; recreate the extension.")));

	w->mtstate = makeNode(ModifyTableState);
	w->mtstate->ps.plan = NULL;
	w->mtstate->ps.state = w->estate;
	w->mtstate->operation = CMD_INSERT;
	w->mtstate->mt_nrels = 1;
	w->mtstate->resultRelInfo = w->root;
	w->mtstate->rootResultRelInfo = w->root;
	w->proute = ExecSetupPartitionTupleRouting(w->estate, rel);
	w->slot = table_slot_create(rel, &w->estate->es_tupleTable);
	w->map = *audit_columns_for_relation(rel);
	w->owner = CurrentResourceOwner;
	w->subxid = GetCurrentSubTransactionId();
	w->statement = current_statement.query;
	MemoryContextSwitchTo(old);
	return w;
}

void
audit_event_writer_close(void)
{
	EventWriter *w = writer;
	ResourceOwner save = CurrentResourceOwner;

	if (w == NULL || writing)
		return;
	writer = NULL;
	CurrentResourceOwner = w->owner;
	ExecResetTupleTable(w->estate->es_tupleTable, false);
	ExecCleanupTupleRouting(w->mtstate, w->proute);
	ExecCloseResultRelations(w->estate);
	ExecCloseRangeTableRelations(w->estate);
	FreeExecutorState(w->estate);
	CurrentResourceOwner = save;
	pfree(w);
}

/*
 * check_length
 *		Raise 22001 when a character value is longer than its varchar(n)
 *		column allows (what the cast to the column type does for an INSERT).
 */
static void
check_length(Form_pg_attribute att, Datum value)
{
	int32		max_chars;
	text	   *t;
	int			bytes;

	if (att->atttypid != VARCHAROID || att->atttypmod < (int32) VARHDRSZ)
		return;
	max_chars = att->atttypmod - VARHDRSZ;
	t = DatumGetTextPP(value);
	bytes = VARSIZE_ANY_EXHDR(t);
	if (bytes <= max_chars)
		return;					/* never more characters than bytes */
	if (pg_mbstrlen_with_len(VARDATA_ANY(t), bytes) > max_chars)
		ereport(ERROR,
				(errcode(ERRCODE_STRING_DATA_RIGHT_TRUNCATION),
				 errmsg("audit event %s is longer than %d characters", NameStr(att->attname), max_chars),
				 errhint("audit.audit_log.%s is varchar(%d).", NameStr(att->attname), max_chars)));
}

void
audit_event_write(const AuditEventValues *ev)
{
	EventWriter *w;
	EState	   *estate;
	TupleTableSlot *slot;
	TupleDesc	desc;
	ResultRelInfo *leaf;
	TupleConversionMap *map;
	bool		has_before_row;
	MemoryContext old;

	if (writer != NULL &&
		(writer->owner != CurrentResourceOwner || writer->subxid != GetCurrentSubTransactionId()))
		audit_event_writer_close();
	if (writer == NULL)
		writer = open_writer();
	w = writer;
	estate = w->estate;
	slot = w->slot;
	desc = slot->tts_tupleDescriptor;
	estate->es_output_cid = GetCurrentCommandId(true);
	if (ActiveSnapshotSet())
		estate->es_snapshot = GetActiveSnapshot();

	writing = true;
	old = MemoryContextSwitchTo(GetPerTupleMemoryContext(estate));

	ExecClearTuple(slot);
	memset(slot->tts_isnull, true, desc->natts * sizeof(bool));
	for (int c = 0; c < AC_NUM_COLUMNS; c++)
	{
		int			a = w->map.attno[c];

		slot->tts_isnull[a] = ev->nulls[c];
		slot->tts_values[a] = ev->values[c];
		if (!ev->nulls[c])
			check_length(TupleDescAttr(desc, a), ev->values[c]);
	}
	ExecStoreVirtualTuple(slot);

	leaf = ExecFindPartition(w->mtstate, w->root, w->proute, slot, estate);
#if PG_VERSION_NUM >= 160000
	map = ExecGetRootToChildMap(leaf, estate);
#else
	map = leaf->ri_RootToPartitionMap;
#endif
	if (map != NULL)
		slot = execute_attr_map_slot(map->attrMap, slot, leaf->ri_PartitionTupleSlot);

	has_before_row = leaf->ri_TrigDesc && leaf->ri_TrigDesc->trig_insert_before_row;
	if (!has_before_row || ExecBRInsertTriggers(estate, leaf, slot))
	{
		if (leaf->ri_RelationDesc->rd_att->constr)
			ExecConstraints(leaf, slot, estate);
		/* A BEFORE ROW trigger could have moved the row out of the partition. */
		if (has_before_row)
			ExecPartitionCheck(leaf, slot, estate, true);
		table_tuple_insert(leaf->ri_RelationDesc, slot, estate->es_output_cid, 0, NULL);
		if (leaf->ri_NumIndices > 0)
#if PG_VERSION_NUM >= 160000
			(void) ExecInsertIndexTuples(leaf, slot, estate, false, false, NULL, NIL, false);
#else
			(void) ExecInsertIndexTuples(leaf, slot, estate, false, false, NULL, NIL);
#endif
	}

	MemoryContextSwitchTo(old);
	ResetPerTupleExprContext(estate);
	writing = false;
}

CommandId
audit_event_statement_cid(void)
{
	if (current_statement.cid != InvalidCommandId)
		return current_statement.cid;
	return GetCurrentCommandId(false);
}

AuditStatementMark
audit_event_statement_enter(QueryDesc *query, CommandId cid)
{
	AuditStatementMark outer = current_statement;

	current_statement.query = query;
	current_statement.cid = cid;
	return outer;
}

void
audit_event_statement_exit(AuditStatementMark outer)
{
	current_statement = outer;
}

/* ExecutorFinish hook: the statement's AFTER triggers fire in here. */
static void
writer_executor_finish(QueryDesc *queryDesc)
{
	AuditStatementMark outer = audit_event_statement_enter(queryDesc, queryDesc->estate->es_output_cid);

	PG_TRY();
	{
		if (prev_executor_finish)
			prev_executor_finish(queryDesc);
		else
			standard_ExecutorFinish(queryDesc);
	}
	PG_FINALLY();
	{
		audit_event_statement_exit(outer);
	}
	PG_END_TRY();
}

/*
 * ExecutorEnd hook: the statement that opened the writer is over.  The
 * queries its triggers run (foreign-key checks, PL/pgSQL) end earlier and
 * leave the writer open.
 */
static void
writer_executor_end(QueryDesc *queryDesc)
{
	if (prev_executor_end)
		prev_executor_end(queryDesc);
	else
		standard_ExecutorEnd(queryDesc);
	if (writer != NULL && writer->statement == queryDesc)
		audit_event_writer_close();
}

static void
writer_xact_callback(XactEvent event, void *arg)
{
	switch (event)
	{
		case XACT_EVENT_PRE_COMMIT:
		case XACT_EVENT_PARALLEL_PRE_COMMIT:
		case XACT_EVENT_PRE_PREPARE:
			audit_event_writer_close();
			break;
		default:
			/* Commit, abort: the resource owners have released everything. */
			writer = NULL;
			writing = false;
			break;
	}
}

static void
writer_subxact_callback(SubXactEvent event, SubTransactionId mySubid,
						SubTransactionId parentSubid, void *arg)
{
	if (writer == NULL || writer->subxid != mySubid)
		return;
	if (event == SUBXACT_EVENT_PRE_COMMIT_SUB)
		audit_event_writer_close();
	else if (event == SUBXACT_EVENT_ABORT_SUB)
	{
		writer = NULL;			/* its resource owner released it */
		writing = false;
	}
}

void
audit_event_writer_init(void)
{
	prev_executor_finish = ExecutorFinish_hook;
	ExecutorFinish_hook = writer_executor_finish;
	prev_executor_end = ExecutorEnd_hook;
	ExecutorEnd_hook = writer_executor_end;
	RegisterXactCallback(writer_xact_callback, NULL);
	RegisterSubXactCallback(writer_subxact_callback, NULL);
}
