"""DBOS Transact (Python, PostgreSQL) running the peer workload of `idem-lab bench peers`.

N workflows of one no-op step are enqueued up front on a queue no process consumes yet;
then this process registers the queue (so it starts dequeuing) with the given per-worker
concurrency and waits until every workflow succeeded. Prints one JSON object with the time
processing took. DBOS is a durable-workflow engine: each workflow and its step are
checkpointed in the system database, a workflow whose process died is recovered and its
finished steps are not run again; a step interrupted mid-call runs again (at-least-once
per step).
"""

from __future__ import annotations

import json
import os
import sys
import time
from importlib.metadata import version

import psycopg
from dbos import DBOS

# peerkit.py sits one directory up, beside the other peers.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from peerkit import machine_busy_ticks, parse_args

QUEUE = "idem_peer_noop"


def main() -> None:
    args = parse_args(2000)
    print(json.dumps(run(args.database_url, args.jobs, args.workers)))


@DBOS.step()
def noop_step(n: int) -> None:
    return None


@DBOS.workflow()
def noop_job(n: int) -> None:
    noop_step(n)


def succeeded(conn: psycopg.Connection) -> int:
    row = conn.execute(
        "SELECT count(*) FROM dbos.workflow_status WHERE queue_name = %s AND status = 'SUCCESS'",
        (QUEUE,),
    ).fetchone()
    return int(row[0]) if row else 0


def run(url: str, jobs: int, workers: int) -> dict[str, object]:
    DBOS(
        config={
            "name": "idem-bench-peer",
            "system_database_url": url,
            "log_level": "WARNING",
            "sys_db_pool_size": workers + 8,
        }
    )
    DBOS.launch()
    try:
        for n in range(jobs):
            DBOS.enqueue_workflow(QUEUE, noop_job, n)
        with psycopg.connect(url, autocommit=True) as conn:
            if succeeded(conn) != 0:
                raise SystemExit("the queue was consumed before it was registered")
            cpu0 = machine_busy_ticks()
            t = time.monotonic()
            DBOS.register_queue(
                QUEUE, worker_concurrency=workers, polling_interval_sec=0.02
            )
            while succeeded(conn) < jobs:
                time.sleep(0.02)
            elapsed = time.monotonic() - t
            cpu = (machine_busy_ticks() - cpu0) / 100
    finally:
        DBOS.destroy()
    return {
        "peer": "dbos",
        "version": version("dbos"),
        "jobs": jobs,
        "seconds": elapsed,
        "cpu_seconds": cpu,
        "semantics": "durable workflow, one checkpointed step; at-least-once per step",
        "config": f"worker_concurrency {workers}, polling_interval_sec 0.02, workflows kept (status SUCCESS)",
    }


if __name__ == "__main__":
    main()
