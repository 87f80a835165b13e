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
 * When the stamping trigger is the partition's only BEFORE INSERT row
 * trigger (as the extension installs it), the writer calls the stamping
 * code itself instead of firing it: the same checks and stamp, without the
 * two heap tuples a trigger call forms and the partition check PostgreSQL
 * runs after a cloned BEFORE ROW trigger (stamping never changes the event
 * time, the partition key).  Any other trigger there, or the stamping
 * trigger disabled or conditional, and the triggers fire as PostgreSQL
 * fires them.
 *
 * Lifetime.  Outside subtransactions (the common case: pgbench's TPC-B
 * transaction tracks four statements) the writer is opened under the
 * transaction's resource owner and kept for the rest of the transaction, so
 * a statement that changes one row does not set up routing, open the
 * partition and its four indexes again.  It is closed before the commit,
 * before every utility statement (DDL such as DROP TABLE or DETACH
 * PARTITION refuses a relation that is still open, and retention drops
 * partitions through SPI, which passes the utility hook too), and opened
 * again after a relcache invalidation of audit.audit_log or of a partition
 * it wrote to.  Inside a subtransaction the relations belong to the
 * resource owner that was current when it opened them, so that writer is
 * only used under that owner and in the same subtransaction; used from
 * elsewhere it is closed and opened again.  It is closed (relations
 * released through that owner) at ExecutorEnd of the statement whose AFTER
 * triggers opened it (tracked in the ExecutorFinish hook, where they
 * fire), after every utility statement (COPY FROM fires row triggers
 * without an executor), at the commit of its subtransaction and before the
 * commit of its transaction.  On abort its resource owner has released
 * everything and the writer is simply forgotten.
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
#include "catalog/pg_trigger.h"
#include "commands/trigger.h"
#include "executor/execPartition.h"
#include "executor/executor.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "nodes/makefuncs.h"
#include "storage/lmgr.h"
#include "utils/builtins.h"
#include "utils/inval.h"
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
#include "restore.h"
#include "row_stamping.h"

#define MAX_LEAVES 8

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
	bool		persistent;		/* opened at top level: kept across statements */
	int			nleaves;		/* partitions rows went to */
	Oid			leaves[MAX_LEAVES]; /* the first MAX_LEAVES of them */
	bool		routed;			/* routed_time went to routed_leaf */
	TimestampTz routed_time;	/* the last event time routed */
	ResultRelInfo *routed_leaf;
	ResultRelInfo *stamp_leaf;	/* the partition stamp_direct is about */
	bool		stamp_direct;	/* stamp rows of stamp_leaf without the trigger */
	AuditColumnMap stamp_map;	/* column map of stamp_leaf */
} EventWriter;

static EventWriter *writer = NULL;
static bool writing = false;	/* inside audit_event_write() */
static bool writer_stale = false;	/* its relations changed: open it again */
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
	/* The defaults' texts, made once: an event per changed row uses them. */
	static Datum defaults[4];

	if (defaults[0] == (Datum) 0)
	{
		MemoryContext old = MemoryContextSwitchTo(TopMemoryContext);

		defaults[0] = CStringGetTextDatum("success");
		defaults[1] = CStringGetTextDatum("1.0");
		defaults[2] = CStringGetTextDatum("INTERNAL");
		defaults[3] = CStringGetTextDatum("standard");
		MemoryContextSwitchTo(old);
	}
	for (int c = 0; c < AC_NUM_COLUMNS; c++)
	{
		ev->values[c] = (Datum) 0;
		ev->nulls[c] = true;
	}
#define SETDEF(c, v) (ev->values[c] = (v), ev->nulls[c] = false)
	SETDEF(AC_TIMESTAMP, TimestampTzGetDatum(GetCurrentTransactionStartTimestamp()));
	SETDEF(AC_STATUS, defaults[0]);
	SETDEF(AC_EVENT_VERSION, defaults[1]);
	SETDEF(AC_DATA_CLASSIFICATION, defaults[2]);
	SETDEF(AC_RETENTION_POLICY, defaults[3]);
	/* hash_algorithm: the stamping sets it (row_stamping.c). */
#undef SETDEF
}

/*
 * open_writer
 *		Set up the executor state for inserting into audit.audit_log, in
 *		TopTransactionContext, under the transaction's resource owner when
 *		persistent (the caller is in no subtransaction), else under the
 *		current one.
 */
static EventWriter *
open_writer(bool persistent)
{
	Oid			relid = audit_log_relid(false);
	MemoryContext old = MemoryContextSwitchTo(TopTransactionContext);
	ResourceOwner save_owner = CurrentResourceOwner;
	EventWriter *w = palloc0(sizeof(EventWriter));
	RangeTblEntry *rte;
	Relation	rel;

	if (persistent)
		CurrentResourceOwner = TopTransactionResourceOwner;

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
	w->persistent = persistent;
	CurrentResourceOwner = save_owner;
	MemoryContextSwitchTo(old);
	writer_stale = false;
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

/*
 * stamps_directly
 *		Whether rows of the partition leaf can be stamped by calling
 *		audit_stamp_values() instead of firing its BEFORE INSERT row
 *		triggers: true when the only such trigger is audit_db's stamping
 *		function, enabled ALWAYS (as the extension creates it, so it fires
 *		under any session_replication_role) and without a WHEN condition.
 *		Looks the trigger's function up the way the executor does, into the
 *		ResultRelInfo's cache.
 */
static bool
stamps_directly(ResultRelInfo *leaf, EState *estate)
{
	TriggerDesc *td = leaf->ri_TrigDesc;
	Trigger    *stamp = NULL;
	int			at = -1;

	if (td == NULL)
		return false;
	for (int i = 0; i < td->numtriggers; i++)
	{
		if (!TRIGGER_TYPE_MATCHES(td->triggers[i].tgtype, TRIGGER_TYPE_ROW,
								  TRIGGER_TYPE_BEFORE, TRIGGER_TYPE_INSERT))
			continue;
		if (stamp != NULL)
			return false;		/* more than one */
		stamp = &td->triggers[i];
		at = i;
	}
	if (stamp == NULL || stamp->tgenabled != TRIGGER_FIRES_ALWAYS || stamp->tgqual != NULL)
		return false;
	if (leaf->ri_TrigFunctions[at].fn_oid == InvalidOid)
		fmgr_info_cxt(stamp->tgfoid, &leaf->ri_TrigFunctions[at], estate->es_query_cxt);
	return leaf->ri_TrigFunctions[at].fn_addr == audit_stamp_row;
}

/*
 * remember_leaf
 *		Note a partition the writer routed a row to, for the relcache
 *		callback; past MAX_LEAVES partitions any invalidation counts.
 */
static void
remember_leaf(EventWriter *w, Oid relid)
{
	for (int i = 0; i < Min(w->nleaves, MAX_LEAVES); i++)
		if (w->leaves[i] == relid)
			return;
	if (w->nleaves < MAX_LEAVES)
		w->leaves[w->nleaves] = relid;
	w->nleaves++;
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
	bool		fire_before_row;
	MemoryContext old;
	ResourceOwner save_owner;
	bool		top_level = GetCurrentSubTransactionId() == TopSubTransactionId;

	if (writer != NULL &&
		(writer_stale ||
		 (writer->persistent ? !top_level :
		  (writer->owner != CurrentResourceOwner || writer->subxid != GetCurrentSubTransactionId()))))
		audit_event_writer_close();
	if (writer == NULL)
		writer = open_writer(top_level);
	w = writer;
	estate = w->estate;
	slot = w->slot;
	desc = slot->tts_tupleDescriptor;
	estate->es_output_cid = GetCurrentCommandId(true);
	if (ActiveSnapshotSet())
		estate->es_snapshot = GetActiveSnapshot();

	writing = true;
	/* Partitions and indexes opened on the way belong to the writer's owner. */
	save_owner = CurrentResourceOwner;
	CurrentResourceOwner = w->owner;
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

	/*
	 * The events of a transaction share its start time, the partition key:
	 * route once per time.  The writer's partition descriptor does not change
	 * while it is open (attaching or detaching a partition invalidates it).
	 */
	if (w->routed && !ev->nulls[AC_TIMESTAMP] &&
		DatumGetTimestampTz(ev->values[AC_TIMESTAMP]) == w->routed_time)
		leaf = w->routed_leaf;
	else
	{
		leaf = ExecFindPartition(w->mtstate, w->root, w->proute, slot, estate);
		w->routed = !ev->nulls[AC_TIMESTAMP];
		w->routed_time = ev->nulls[AC_TIMESTAMP] ? 0 : DatumGetTimestampTz(ev->values[AC_TIMESTAMP]);
		w->routed_leaf = leaf;
	}
#if PG_VERSION_NUM >= 160000
	map = ExecGetRootToChildMap(leaf, estate);
#else
	map = leaf->ri_RootToPartitionMap;
#endif
	if (map != NULL)
		slot = execute_attr_map_slot(map->attrMap, slot, leaf->ri_PartitionTupleSlot);

	if (leaf != w->stamp_leaf)
	{
		remember_leaf(w, RelationGetRelid(leaf->ri_RelationDesc));
		w->stamp_direct = stamps_directly(leaf, estate);
		w->stamp_map = *audit_columns_for_relation(leaf->ri_RelationDesc);
		w->stamp_leaf = leaf;
	}
	fire_before_row = leaf->ri_TrigDesc && leaf->ri_TrigDesc->trig_insert_before_row;
	if (fire_before_row && w->stamp_direct && !audit_loading_verbatim())
	{
		slot_getallattrs(slot);
		audit_stamp_values(&w->stamp_map, slot->tts_values, slot->tts_isnull);
		fire_before_row = false;
	}
	if (!fire_before_row || ExecBRInsertTriggers(estate, leaf, slot))
	{
		if (leaf->ri_RelationDesc->rd_att->constr)
			ExecConstraints(leaf, slot, estate);
		/* A BEFORE ROW trigger could have moved the row out of the partition. */
		if (fire_before_row)
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
	CurrentResourceOwner = save_owner;
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
	if (writer != NULL && !writer->persistent && writer->statement == queryDesc)
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

/*
 * writer_relcache_callback
 *		audit.audit_log or a partition the writer routed rows to changed
 *		(a partition attached, an index created, ...): the writer's routing
 *		and opened relations may be out of date.  Only a flag: an
 *		invalidation can arrive at any point, the writer is opened again at
 *		its next row.
 */
static void
writer_relcache_callback(Datum arg, Oid relid)
{
	EventWriter *w = writer;

	if (w == NULL || writer_stale)
		return;
	if (!OidIsValid(relid) || relid == RelationGetRelid(w->root->ri_RelationDesc) ||
		w->nleaves > MAX_LEAVES)
	{
		writer_stale = true;
		return;
	}
	for (int i = 0; i < w->nleaves; i++)
		if (w->leaves[i] == relid)
			writer_stale = true;
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
	CacheRegisterRelcacheCallback(writer_relcache_callback, (Datum) 0);
}
