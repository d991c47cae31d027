"""``zhiying worker``: run the scheduled jobs (segments, tags, coupon sweeps) in this process.

The worker loop is imported inside the command so that the CLI starts without
it (see ``zhiying.cli.common``).
"""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import TYPE_CHECKING

import typer
from rich.table import Table

from zhiying.cli.common import console, stores_for_cli

if TYPE_CHECKING:
    from zhiying.worker.loop import JobRun


def worker(
    once: bool = typer.Option(False, "--once", help="Run one tick and exit (for cron)."),
    poll: float = typer.Option(15.0, min=0.1, help="Seconds between ticks."),
) -> None:
    """Run due jobs every POLL seconds until interrupted.

    `zhiying serve` already runs this loop next to the API; use this command for
    a worker of its own (a ClickHouse warehouse) or with --once from cron. An
    embedded DuckDB warehouse admits one process: stop `serve` first.
    """
    from zhiying.worker.loop import Worker

    with stores_for_cli() as stores:
        loop = Worker(stores)
        if once:
            _print(loop.tick())
            return
        stop = threading.Event()

        def _stop(signum: int, frame: FrameType | None) -> None:
            stop.set()

        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)
        console.print(f"worker {loop.holder}: {len(loop.jobs)} jobs, a tick every {poll:g} s")
        while not stop.is_set():
            _print([r for r in loop.tick() if r.status != "done" or r.summary])
            stop.wait(poll)


def _print(runs: list[JobRun]) -> None:
    table = Table("job", "status", "summary", "seconds")
    for r in runs:
        style = {"done": "green", "failed": "red", "busy": "yellow"}[r.status]
        table.add_row(r.job, f"[{style}]{r.status}[/{style}]", r.summary, f"{r.seconds:.2f}")
    console.print(table)
