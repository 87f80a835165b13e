/*-------------------------------------------------------------------------
 *
 * worker.h
 *	  The background workers: a launcher that starts one worker per
 *	  database, and the per-database worker that seals the chain.
 *
 *-------------------------------------------------------------------------
 */
#ifndef AUDIT_WORKER_H
#define AUDIT_WORKER_H

#include "fmgr.h"
#include "datatype/timestamp.h"

/* Settings (documented in audit_db.c). */
extern int	audit_seal_interval_ms;
extern int	audit_alert_interval_s;	/* audit_db.alert_interval */
extern int	audit_max_database_workers;
extern char *audit_skip_databases;
extern char *audit_worker_role;

/*
 * audit_worker_register_launcher
 *		Called from _PG_init while shared_preload_libraries is processed:
 *		registers the launcher (not in binary-upgrade mode).
 */
extern void audit_worker_register_launcher(void);

/*
 * audit_worker_release_database
 *		Have the launcher stop the worker of dboid (before DROP DATABASE and
 *		other commands that need the database without other connections).
 */
extern void audit_worker_release_database(Oid dboid);

/*
 * audit_sealer_last_run
 *		When the background sealer of database dboid started its last seal
 *		run that completed: every transaction that had finished by then is
 *		sealed.  False when unknown (audit_db not preloaded, no worker for
 *		the database yet, a hot standby).
 */
extern bool audit_sealer_last_run(Oid dboid, TimestampTz *run_started);

/*
 * audit_sealer_nudge
 *		Wake this database's worker if it is pausing after a run that found
 *		nothing, so rows just committed are sealed one audit_db.seal_interval
 *		from now rather than at the end of the idle pause.  Called after every
 *		commit that stamped audit rows (with the preload); cheap when the
 *		worker is busy; never raises.
 */
extern void audit_sealer_nudge(void);

/* Entry points named in BackgroundWorker.bgw_function_name. */
extern PGDLLEXPORT void audit_launcher_main(Datum arg);
extern PGDLLEXPORT void audit_database_worker_main(Datum dboid);

#endif							/* AUDIT_WORKER_H */
