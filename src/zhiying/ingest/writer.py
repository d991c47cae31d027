"""Group commit for the server: many requests, one ``store_events`` call.

Each HTTP request validates its events (inline, or in the worker process of
:attr:`EventWriter.validators`, see ``zhiying.ingest.workers``), puts them on a
queue (an ``EVENTS`` Arrow table, or row dicts) and waits for a future. One
writer thread takes everything pending (up to ``max_rows`` rows, waiting at
most ``linger`` seconds for more once it has some), stores it with a single
``store_events`` call, and resolves every future with that request's own
counts. A request is answered only after its rows are durable (``store_events``
returned), so a 200 means stored.

Why: every ``store_events`` call pays fixed costs (a dedup probe, an
operational transaction, a few warehouse statements); sharing them across the
requests that arrive while the previous call runs is what lets one process
keep up with many clients, and the batch grows by itself under load.

When more than ``max_pending_rows`` rows wait, ``submit`` refuses with
:class:`WriterBusy` (the API answers 503 with ``Retry-After``) instead of
buffering without bound.
"""

from __future__ import annotations

import gc
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass

import pyarrow as pa

from zhiying.errors import ZhiyingError, redacted
from zhiying.ingest.models import Row, rows_to_table
from zhiying.ingest.pipeline import StoreResult, store_events
from zhiying.ingest.workers import Validators
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
    events: pa.Table | Sequence[Row]
    count: int
    future: Future[Written]

    def table(self) -> pa.Table:
        events = self.events
        return events if isinstance(events, pa.Table) else rows_to_table(events)


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
        validate_in_worker: bool = True,
    ) -> None:
        self._stores = stores
        self.validators = Validators(enabled=validate_in_worker)
        """Where requests parse and validate large bodies (a worker process)."""
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
        """Start the writer thread.

        Also moves every object alive now (the app, its modules, its caches) out of
        the cyclic garbage collector's reach (``gc.freeze``): a server keeps them
        for its lifetime, and a full collection rescanned them all — pauses of
        0.2-0.5 s under load, measured, which every waiting request paid for.
        """
        gc.collect()
        gc.freeze()
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="zhiying-event-writer")
            self._thread.daemon = True
            self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Store everything already submitted, then end the thread (and the validation worker)."""
        self._stopping = True
        if self._thread is not None:
            self._queue.put(_STOP)
            self._thread.join(timeout)
            self._thread = None
        self.validators.close()

    def submit(self, events: pa.Table | Sequence[Row]) -> Future[Written]:
        """Queue validated events (an ``EVENTS`` table, or rows from
        ``zhiying.ingest.models``); the future resolves once they are stored."""
        if self._stopping or self._thread is None:
            raise WriterStopped("the event writer is not running (server shutting down?)")
        count = events.num_rows if isinstance(events, pa.Table) else len(events)
        with self._pending_lock:
            if self._pending_rows and self._pending_rows + count > self.max_pending_rows:
                raise WriterBusy(
                    f"{self._pending_rows} events are waiting to be stored; retry in a second"
                )
            self._pending_rows += count
        future: Future[Written] = Future()
        self._queue.put(_Job(events, count, future))
        return future

    def _run(self) -> None:
        stop = False
        while not stop:
            item = self._queue.get()
            if item is _STOP:
                break
            assert isinstance(item, _Job)
            jobs = [item]
            count = item.count
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
                count += nxt.count
            self._commit(jobs, count)

    def _commit(self, jobs: list[_Job], count: int) -> None:
        try:
            tables = [job.table() for job in jobs]
            table = tables[0] if len(tables) == 1 else pa.concat_tables(tables)
            result = self._store(self._stores, table)
        except BaseException as exc:  # every waiting request must hear about it
            log.error("storing %d events failed: %s", count, redacted(exc))
            for job in jobs:
                job.future.set_exception(exc)
        else:
            offset = 0
            for job in jobs:
                n = job.count
                inserted = int(result.stored[offset : offset + n].sum())
                job.future.set_result(Written(inserted=inserted, duplicates=n - inserted))
                offset += n
        finally:
            self.commits += 1
            with self._pending_lock:
                self._pending_rows -= count
