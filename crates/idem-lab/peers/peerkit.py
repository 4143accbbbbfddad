"""What the Python peers of `idem-lab bench peers` share: their command line and the
machine's CPU counter. Each peer puts this file's directory on `sys.path` to import it."""

from __future__ import annotations

import argparse
import os


def parse_args(default_jobs: int) -> argparse.Namespace:
    """`-database-url URL -jobs N -workers N`, as the bench passes them."""
    parser = argparse.ArgumentParser()
    parser.add_argument("-database-url", default=os.environ.get("DATABASE_URL", ""))
    parser.add_argument("-jobs", type=int, default=default_jobs)
    parser.add_argument("-workers", type=int, default=32)
    return parser.parse_args()


def machine_busy_ticks() -> int:
    """The machine's busy CPU time so far in USER_HZ ticks (100 a second), from /proc/stat:
    user + nice + system + irq + softirq of all cores; 0 where it is missing."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
    except OSError:
        return 0
    return sum(int(fields[i]) for i in (1, 2, 3, 6, 7) if i < len(fields))
