"""Group commit for the server: many requests, one ``store_events`` call.

Each HTTP request validates its events, puts the rows on a queue and waits for
a future. One writer thread takes everything pending (up to ``max_rows``
rows, waiting at most ``linger`` seconds for more once it has some), stores it
with a single ``store_events`` call, and resolves every future with that
request's own counts. A request is answered only after its rows are durable
(``store_events`` returned), so a 200 means stored.

Why: every ``store_events`` call pays fixed costs (a dedup probe, an
operational transaction, a few warehouse statements); sharing them across the
requests that arrive while the previous call runs is what lets one process
keep up with many clients, and the batch grows by itself under load.

When more than ``max_pending_rows`` rows wait, ``submit`` refuses with
:class:`WriterBusy` (the API answers 503 with ``Retry-After``) instead of
buffering without bound.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass

import pyarrow as pa

from zhiying.errors import ZhiyingError
from zhiying.ingest.models import Row, rows_to_table
from zhiying.ingest.pipeline import StoreResult, store_events
from zhiying.runtime import Stores

log = logging.getLogger(__name__)


class WriterBusy(ZhiyingError):
    """Too many rows wait for the writer; the client should retry shortly."""

    code = "writer_busy"
    status = 503


class WriterStopped(ZhiyingError):
    code = "writer_stopped"
    status = 503


@dataclass(frozen=True)
class Written:
    """One request's share of a group commit."""

    inserted: int
    duplicates: int


@dataclass
class _Job:
    rows: Sequence[Row]
    future: Future[Written]


_STOP = object()


class EventWriter:
    """The single writer thread of a server process (see module docstring)."""

    def __init__(
        self,
        stores: Stores,
        *,
        max_rows: int = 20_000,
        linger: float = 0.002,
        max_pending_rows: int = 200_000,
        store: Callable[[Stores, pa.Table], StoreResult] = store_events,
    ) -> None:
        self._stores = stores
        self._store = store
        self.max_rows = max_rows
        self.linger = linger
        self.max_pending_rows = max_pending_rows
        self._queue: queue.SimpleQueue[_Job | object] = queue.SimpleQueue()
        self._pending_rows = 0
        self._pending_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self.commits = 0  # number of store_events calls, for tests and the bench

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="zhiying-event-writer")
            self._thread.daemon = True
            self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Store everything already submitted, then end the thread."""
        self._stopping = True
        if self._thread is not None:
            self._queue.put(_STOP)
            self._thread.join(timeout)
            self._thread = None

    def submit(self, rows: Sequence[Row]) -> Future[Written]:
        """Queue ``rows`` (from ``zhiying.ingest.models``); the future resolves once stored."""
        if self._stopping or self._thread is None:
            raise WriterStopped("the event writer is not running (server shutting down?)")
        with self._pending_lock:
            if self._pending_rows and self._pending_rows + len(rows) > self.max_pending_rows:
                raise WriterBusy(
                    f"{self._pending_rows} events are waiting to be stored; retry in a second"
                )
            self._pending_rows += len(rows)
        future: Future[Written] = Future()
        self._queue.put(_Job(rows, future))
        return future

    def _run(self) -> None:
        stop = False
        while not stop:
            item = self._queue.get()
            if item is _STOP:
                break
            assert isinstance(item, _Job)
            jobs = [item]
            count = len(item.rows)
            deadline = time.monotonic() + self.linger
            while count < self.max_rows:
                remaining = deadline - time.monotonic()
                try:
                    nxt = (
                        self._queue.get(timeout=remaining)
                        if remaining > 0
                        else (self._queue.get_nowait())
                    )
                except queue.Empty:
                    break
                if nxt is _STOP:
                    stop = True
                    break
                assert isinstance(nxt, _Job)
                jobs.append(nxt)
                count += len(nxt.rows)
            self._commit(jobs, count)

    def _commit(self, jobs: list[_Job], count: int) -> None:
        try:
            rows = [row for job in jobs for row in job.rows]
            result = self._store(self._stores, rows_to_table(rows))
        except BaseException as exc:  # every waiting request must hear about it
            log.exception("storing %d events failed", count)
            for job in jobs:
                job.future.set_exception(exc)
        else:
            offset = 0
            for job in jobs:
                n = len(job.rows)
                inserted = int(result.stored[offset : offset + n].sum())
                job.future.set_result(Written(inserted=inserted, duplicates=n - inserted))
                offset += n
        finally:
            self.commits += 1
            with self._pending_lock:
                self._pending_rows -= count
