"""``zhiying demo`` at its default size: wall time and CPU per process.

    .venv/bin/python -m bench.demo [--users 10000] [--days 30]

Runs the demo's ``run_demo`` twice on fresh embedded stores (SQLite + DuckDB):

- baseline: everything in this process (generate → validate → store);
- ours: the default, a helper process generates and validates while this
  process stores (``zhiying.demo.batches``).

Prints wall seconds, CPU seconds of this process and of the helper, and
messages/s. On a busy shared machine wall time mostly measures the other
load; the CPU figures say what an idle 2-core machine would take: about the
larger of the two processes' CPU for ours, their sum for the baseline.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from zhiying.clock import ManualClock
from zhiying.config import Settings
from zhiying.demo.run import run_demo
from zhiying.runtime import open_stores


def _cpu() -> tuple[float, float]:
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime, kids.ru_utime + kids.ru_stime


def measure(users: int, days: int, parallel: bool) -> None:
    with tempfile.TemporaryDirectory(prefix="zhiying-bench-demo-") as tmp:
        settings = Settings(data_dir=Path(tmp), database_url=None, warehouse_url=None)
        stores = open_stores(settings, clock=ManualClock(datetime(2020, 1, 1, tzinfo=UTC)))
        try:
            cpu0 = _cpu()
            t0 = time.perf_counter()
            summary = run_demo(stores, users, days, parallel=parallel)
            wall = time.perf_counter() - t0
            cpu1 = _cpu()
        finally:
            stores.close()
    label = "ours: helper process" if parallel else "baseline: one process"
    print(
        f"{label:24s} wall {wall:6.1f} s  cpu main {cpu1[0] - cpu0[0]:5.1f} s  "
        f"cpu helper {cpu1[1] - cpu0[1]:5.1f} s  {summary.sent / wall:8,.0f} messages/s  "
        f"({summary.sent:,} messages, {summary.events:,} events, {summary.orders:,} orders)",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--days", type=int, default=30)
    args = parser.parse_args()
    measure(args.users, args.days, parallel=False)
    measure(args.users, args.days, parallel=True)


if __name__ == "__main__":
    main()
