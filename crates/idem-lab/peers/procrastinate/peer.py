"""procrastinate (Python, PostgreSQL) running the peer workload of `idem-lab bench peers`.

N no-op jobs are deferred up front, then one worker processes them with the given
concurrency until the queue is empty; prints one JSON object with the time processing took.
At-least-once: a job whose worker died runs again; nothing is written ahead of the call.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from importlib.metadata import version

import procrastinate

# peerkit.py sits one directory up, beside the other peers.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from peerkit import machine_busy_ticks, parse_args

BATCH = 1000


def main() -> None:
    args = parse_args(20000)
    print(json.dumps(asyncio.run(run(args.database_url, args.jobs, args.workers))))


async def run(url: str, jobs: int, workers: int) -> dict[str, object]:
    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=url))

    @app.task(name="noop")
    async def noop(n: int) -> None:
        return None

    async with app.open_async():
        await app.schema_manager.apply_schema_async()
        for start in range(0, jobs, BATCH):
            await noop.batch_defer_async(
                *({"n": n} for n in range(start, min(jobs, start + BATCH)))
            )
        cpu0 = machine_busy_ticks()
        t = time.monotonic()
        # wait=False: return once the queue is empty.
        await app.run_worker_async(
            concurrency=workers,
            wait=False,
            install_signal_handlers=False,
            fetch_job_polling_interval=0.02,
        )
        elapsed = time.monotonic() - t
        cpu = (machine_busy_ticks() - cpu0) / 100
    return {
        "peer": "procrastinate",
        "version": version("procrastinate"),
        "jobs": jobs,
        "seconds": elapsed,
        "cpu_seconds": cpu,
        "semantics": "at-least-once",
        "config": f"concurrency {workers}, fetch_job_polling_interval 20 ms, jobs kept (status succeeded)",
    }


if __name__ == "__main__":
    main()
