"""The worker loop: every tick, run each job that is due here and whose lease we win.

A tick never raises: a failing job is logged (its exception type only: the
message may quote data) and reported in the tick's ``JobRun`` list, and the
next job still runs. Time comes from ``stores.clock``, so tests drive the loop
with a ``ManualClock``.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from zhiying.runtime import Stores
from zhiying.worker import leases
from zhiying.worker.jobs import Job, default_jobs

log = logging.getLogger(__name__)

Status = Literal["done", "failed", "busy"]


@dataclass(frozen=True)
class JobRun:
    """One job's outcome in one tick. ``busy``: another worker held its lease."""

    job: str
    status: Status
    summary: str
    seconds: float


class Worker:
    """Runs ``jobs`` against ``stores``; one instance per process (or thread)."""

    def __init__(self, stores: Stores, jobs: Sequence[Job] | None = None) -> None:
        self.stores = stores
        self.jobs = list(default_jobs() if jobs is None else jobs)
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._last_run: dict[str, datetime] = {}

    def tick(self) -> list[JobRun]:
        """Run every job whose ``every`` has elapsed since it last ran here."""
        runs = []
        for job in self.jobs:
            now = self.stores.clock.now()
            last = self._last_run.get(job.name)
            if last is not None and now < last + job.every:
                continue
            runs.append(self._run(job, now))
        return runs

    def _run(self, job: Job, now: datetime) -> JobRun:
        engine = self.stores.engine
        if not leases.acquire(engine, job.name, self.holder, now, job.timeout):
            return JobRun(job.name, "busy", "another worker holds the lease", 0.0)
        started = time.perf_counter()
        try:
            summary = job.run(self.stores)
            status: Status = "done"
        except Exception as exc:  # one job's failure must not stop the others
            summary = f"{type(exc).__name__}: {exc}"
            status = "failed"
            log.error("job %s failed (%s)", job.name, type(exc).__name__)
        finally:
            leases.release(engine, job.name, self.holder, self.stores.clock.now())
        self._last_run[job.name] = now
        seconds = time.perf_counter() - started
        if status == "done":
            log.info("job %s: %s (%.2f s)", job.name, summary, seconds)
        return JobRun(job.name, status, summary, seconds)

    def run_until(self, stop: threading.Event, poll_seconds: float = 15.0) -> None:
        """Tick every ``poll_seconds`` until ``stop`` is set."""
        while not stop.is_set():
            self.tick()
            stop.wait(poll_seconds)


class WorkerThread:
    """A worker in a daemon thread, for ``zhiying serve``."""

    def __init__(self, worker: Worker, poll_seconds: float = 15.0) -> None:
        self.worker = worker
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=worker.run_until,
            args=(self._stop, poll_seconds),
            name="zhiying-worker",
            daemon=True,
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 60.0) -> None:
        """Ask the loop to stop after the running job and wait for it."""
        self._stop.set()
        self._thread.join(timeout)
