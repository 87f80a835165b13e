#!/usr/bin/python3
"""test/bench/seal_lag.py: seal lag of the rows written during one benchmark point.

Used by test/bench/run around each single-row pgbench point (plain ones too,
so the polling costs every variant the same). Measures, never asserts.

    seal_lag.py start STATEFILE     poll until SIGTERM, then on until the
                                    point's rows are sealed; write STATEFILE
    seal_lag.py report STATEFILE    print "p50 p99 max rows" (seconds)

While polling, one connection reads audit.audit_chain_state every 20 ms and
records (server clock, chain height); the polls are the times at which each
height became visible to other sessions (late by at most one poll). The lag
of a row is the moment its block became visible minus the row's "timestamp"
(now(), the start of its transaction: pgbench's single-statement transactions
commit within a few milliseconds of it, so this slightly overstates the lag).
Rows are those with an id above the largest id before the point started.
Prints "none" when the point wrote no audit rows (the plain variant).

Connects through the libpq environment (PGHOST, PGPORT, PGUSER, PGDATABASE).
"""
import bisect
import json
import signal
import sys
import time

import psycopg

POLL_SECONDS = 0.02
SEAL_WAIT_SECONDS = 120     # after the point, at most this long for its rows to be sealed


def last_id(conn):
    row = conn.execute("SELECT last_value, is_called FROM audit.audit_log_id_seq").fetchone()
    return row[0] if row[1] else 0


def poll(conn):
    return conn.execute("SELECT height, extract(epoch FROM clock_timestamp())::float8"
                        " FROM audit.audit_chain_state").fetchone()


def start(path):
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    conn = psycopg.connect(autocommit=True)
    first_id = last_id(conn)
    polls = []
    while not stop:
        polls.append(poll(conn))
        time.sleep(POLL_SECONDS)
    # The point is over: go on polling until its rows are all sealed.
    end_id = last_id(conn)
    deadline = time.monotonic() + SEAL_WAIT_SECONDS
    sealed = False
    while time.monotonic() < deadline:
        polls.append(poll(conn))
        if conn.execute("SELECT unsealed_rows = 0 FROM audit.chain_status").fetchone()[0]:
            sealed = True
            break
        time.sleep(POLL_SECONDS)
    with open(path, "w") as f:
        json.dump({"first_id": first_id, "last_id": end_id, "polls": polls,
                   "sealed": sealed}, f)


def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, max(0, int(round(p / 100.0 * len(values) + 0.5)) - 1))]


def report(path):
    with open(path) as f:
        state = json.load(f)
    first_id, end_id, polls = state["first_id"], state["last_id"], state["polls"]
    if end_id <= first_id:
        print("none")
        return
    if not state["sealed"]:
        print("unsealed")
        return
    conn = psycopg.connect(autocommit=True)
    rows = conn.execute(
        "SELECT b.height, extract(epoch FROM l.\"timestamp\")::float8"
        " FROM audit.audit_chain_block b CROSS JOIN LATERAL unnest(b.row_ids) AS r(id)"
        " JOIN audit.audit_log l ON l.id = r.id"
        " WHERE b.height > %s AND r.id > %s AND r.id <= %s",
        (polls[0][0], first_id, end_id)).fetchall()
    polls.sort()
    heights = [h for h, _ in polls]
    lags = []
    for height, ts in rows:
        i = bisect.bisect_left(heights, height)
        if i == len(polls):
            continue        # cannot happen: polling ran until everything was sealed
        lags.append(polls[i][1] - ts)
    if not lags:
        print("none")
        return
    print("%.3f %.3f %.3f %d" % (pct(lags, 50), pct(lags, 99), max(lags), len(lags)))


def main():
    if len(sys.argv) != 3 or sys.argv[1] not in ("start", "report"):
        sys.exit("usage: seal_lag.py start|report STATEFILE")
    (start if sys.argv[1] == "start" else report)(sys.argv[2])


if __name__ == "__main__":
    main()
