"""Group commit for the server: many requests, one durable write.

Each HTTP request validates its events (inline, or in the worker process of
:attr:`EventWriter.validators`, see ``zhiying.ingest.workers``), puts them on a
queue (an ``EVENTS`` Arrow table, or row dicts) and waits for a future. One
writer thread takes everything pending (up to ``max_rows`` rows, waiting at
most ``linger`` seconds for more once it has some) and makes it durable in one
go; every future then gets that request's own counts. What "durable" means
depends on the mode:

**Spool mode** (an embedded DuckDB file; ``ZHIYING_INGEST_SPOOL``, see
:func:`spool_enabled`). The writer deduplicates the group by ``messageId``
(against the ids stored and the ids spooled but not stored yet), appends the
new rows to the spool (``zhiying.ingest.spool``: one ``fdatasync`` for the
group) and answers. A **loader** thread takes what the spool holds in large
groups (``load_rows`` rows, or whatever waited ``load_interval`` seconds) and
runs the whole ``store_events`` on them: dedup, ONE_ID, traits, warehouse
append, and DuckDB's checkpoints — none of which a request waits for. A spool
segment is deleted once everything in it is stored; at start, what an earlier
process left is stored first (dedup makes the replay safe). Readers that must
see what was just answered call :meth:`EventWriter.flush`.

**Direct mode** (any other warehouse, or the spool switched off): the writer
stores the group with one ``store_events`` call and answers after it returned.

Why: every ``store_events`` call pays fixed costs (a dedup probe, an
operational transaction, a few warehouse statements, ≈ 9 ms of CPU); the spool
lets the loader pay them once per 10,000 events or so instead of once per group of
concurrent requests, and keeps checkpoint stalls out of the requests' way.

Back-pressure: when more than ``max_pending_rows`` rows wait for the writer,
or (spool mode) more than ``max_backlog_rows`` spooled rows wait for the
loader, ``submit`` refuses with :class:`WriterBusy` (the API answers 503 with
``Retry-After``; Segment SDKs retry) instead of growing without bound.
"""

from __future__ import annotations

import collections
import gc
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Final

import numpy as np
import pyarrow as pa

from zhiying.errors import ZhiyingError, redacted
from zhiying.identity.service import SET_BASED_ROWS
from zhiying.ingest.models import Row, rows_to_table
from zhiying.ingest.pipeline import STORED_IDS, StoreResult, store_events
from zhiying.ingest.spool import Spool
from zhiying.ingest.workers import Validators
from zhiying.runtime import Stores
from zhiying.warehouse.duckdb_engine import DuckDBWarehouse
from zhiying.warehouse.events import first_indices, new_message_ids
from zhiying.warehouse.schema import EVENTS

log = logging.getLogger(__name__)

SPOOL_ENV: Final = "ZHIYING_INGEST_SPOOL"
"""``1`` answers requests from the spool (spool mode), ``0`` after ``store_events``."""
SPOOL_DEFAULT: Final = True
RETRY_SECONDS: Final = 1.0
"""Pause of the loader between two attempts to store a group that failed."""


def spool_enabled() -> bool:
    """Whether servers use spool mode (:data:`SPOOL_ENV`, default :data:`SPOOL_DEFAULT`)."""
    value = os.environ.get(SPOOL_ENV, "").strip().lower()
    if value in ("0", "false", "no", "off"):
        return False
    if value in ("1", "true", "yes", "on"):
        return True
    return SPOOL_DEFAULT


def spool_directory(stores: Stores) -> Path | None:
    """Where the spool of ``stores`` lives: beside an embedded DuckDB file (the
    single writer of its warehouse); None for other warehouses."""
    warehouse = stores.warehouse
    if isinstance(warehouse, DuckDBWarehouse) and warehouse.path != ":memory:":
        return Path(warehouse.path + ".spool")
    return None


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


@dataclass
class _Record:
    """Rows in the spool, waiting for the loader."""

    table: pa.Table
    ids: list[str]
    segment: int
    seq: int
    at: float  # time.monotonic() when spooled


class _Loader:
    """Spool mode's loader thread and the bookkeeping it shares with the writer."""

    def __init__(
        self,
        stores: Stores,
        spool: Spool,
        store: Callable[[Stores, pa.Table], StoreResult],
        *,
        load_rows: int,
        load_interval: float,
        max_load_rows: int,
    ) -> None:
        self._stores = stores
        self.spool = spool
        self._store = store
        self.load_rows = load_rows
        self.load_interval = load_interval
        self.max_load_rows = max_load_rows
        self.pending: set[str] = set()
        """``message_id`` s spooled and not stored yet (guarded by ``STORED_IDS``)."""
        self._queue: collections.deque[_Record] = collections.deque()
        self._cond = threading.Condition()
        self.queued_rows = 0
        self.spooled_seq = 0
        self.stored_seq = 0
        self._last_segment = 0
        self._flushing = 0
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._recovered = False
        self.loads: collections.deque[int] = collections.deque(maxlen=1000)
        """Rows per recent ``store_events`` call (tests, the bench)."""
        self.failures = 0

    # -- the writer's side --

    def fresh_rows(self, table: pa.Table) -> tuple[pa.Table, list[str]]:
        """The rows of ``table`` to spool: the first of each ``message_id`` that is
        neither stored in the dedup window nor spooled; their ids become pending.
        Consistent with the loader: ids leave ``pending`` only after
        ``store_events`` has added them to the stored set, under ``STORED_IDS``."""
        firsts = first_indices(table)
        unique = table if len(firsts) == table.num_rows else table.take(firsts)
        ids: list[str] = unique.column("message_id").to_pylist()
        now = self._stores.clock.now()
        since = now - timedelta(days=self._stores.settings.dedup_window_days)
        with STORED_IDS:
            mask = new_message_ids(self._stores.warehouse, unique, since)
            pending = self.pending
            if pending:
                mask &= np.fromiter((i not in pending for i in ids), dtype=bool, count=len(ids))
            fresh_ids = (
                ids if mask.all() else [i for i, m in zip(ids, mask.tolist(), strict=True) if m]
            )
            pending.update(fresh_ids)
        fresh = unique if len(fresh_ids) == len(ids) else unique.filter(pa.array(mask))
        return fresh, fresh_ids

    def forget(self, ids: list[str]) -> None:
        with STORED_IDS:
            self.pending.difference_update(ids)

    def put(self, records: list[tuple[pa.Table, list[str]]], segment: int) -> None:
        """Queue spooled ``records`` (all in ``segment``) for the loader."""
        now = time.monotonic()
        with self._cond:
            for table, ids in records:
                self.spooled_seq += 1
                self._queue.append(_Record(table, ids, segment, self.spooled_seq, now))
                self.queued_rows += table.num_rows
            self._last_segment = segment
            self._cond.notify_all()

    def flush(self, timeout: float | None) -> bool:
        """Wait until every record spooled before this call is stored; False on timeout."""
        with self._cond:
            target = self.spooled_seq
            self._flushing += 1
            self._cond.notify_all()
            try:
                return self._cond.wait_for(lambda: self.stored_seq >= target, timeout)
            finally:
                self._flushing -= 1

    # -- the loader thread --

    def recover(self) -> int:
        """Store what the spool holds from an earlier process (before serving);
        returns the rows stored now (rows already stored are duplicates)."""
        # Build the set of stored ids now (one scan of the dedup window), not in a request.
        since = self._stores.clock.now() - timedelta(days=self._stores.settings.dedup_window_days)
        with STORED_IDS:
            new_message_ids(self._stores.warehouse, EVENTS.empty_table(), since)
        stored = 0
        group: list[pa.Table] = []
        rows = 0
        below = self.spool.current
        for _, table in self.spool.records(below=below):
            group.append(table)
            rows += table.num_rows
            if rows >= self.max_load_rows:
                stored += self._store(self._stores, pa.concat_tables(group)).inserted
                group, rows = [], 0
        if group:
            stored += self._store(self._stores, pa.concat_tables(group)).inserted
        self.spool.release(below)
        self._recovered = True
        if stored:
            log.warning("stored %d events left in the spool by an earlier run", stored)
        return stored

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="zhiying-loader", daemon=True)
        self._thread.start()

    def stop(self, timeout: float) -> None:
        """Store everything spooled (the writer has stopped), then end the thread."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        with self._cond:
            # Never recovered (never started): what is on disk was not read, keep it.
            empty = self._recovered and not self._queue
        if self._recovered and not empty:
            log.error("stopping with spooled events not stored; the next start stores them")
        self.spool.close(empty=empty)

    def _next_group(self) -> list[_Record] | None:
        """Wait for a group worth loading (None: stop). Under ``_cond``."""
        while True:
            if self._queue:
                waited = time.monotonic() - self._queue[0].at
                if (
                    self._stopping
                    or self._flushing
                    or self.queued_rows >= self.load_rows
                    or waited >= self.load_interval
                ):
                    break
                self._cond.wait(self.load_interval - waited)
            elif self._stopping:
                return None
            else:
                self._cond.wait()
        group: list[_Record] = []
        rows = 0
        for record in self._queue:
            if group and rows + record.table.num_rows > self.max_load_rows:
                break
            group.append(record)
            rows += record.table.num_rows
        return group

    def _run(self) -> None:
        while True:
            with self._cond:
                group = self._next_group()
            if group is None:
                return
            tables = [record.table for record in group]
            table = tables[0] if len(tables) == 1 else pa.concat_tables(tables)
            if not self._load(table):
                return
            ids = [i for record in group for i in record.ids]
            self.forget(ids)
            with self._cond:
                for _ in group:
                    self._queue.popleft()
                self.queued_rows -= table.num_rows
                self.stored_seq = group[-1].seq
                below = self._queue[0].segment if self._queue else self._last_segment
                self._cond.notify_all()
            self.spool.release(below)

    def _load(self, table: pa.Table) -> bool:
        """Store ``table``, retrying until it works (its rows were answered as
        stored); False when stopping after a failure (the spool keeps them)."""
        while True:
            try:
                self._store(self._stores, table)
            except Exception as exc:
                self.failures += 1
                log.error(
                    "storing %d spooled events failed (retrying): %s", table.num_rows, redacted(exc)
                )
                with self._cond:
                    if self._stopping:
                        return False
                    self._cond.wait(RETRY_SECONDS)
            else:
                self.loads.append(table.num_rows)
                return True


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
        spool: bool | None = None,
        load_rows: int = 10_000,
        load_interval: float = 0.5,
        max_load_rows: int = 16_000,
        max_backlog_rows: int = 100_000,
    ) -> None:
        """``spool``: spool mode (None: :func:`spool_enabled`; only with an embedded
        DuckDB file). ``load_rows``/``load_interval``/``max_load_rows``: the loader's
        groups (kept under ``identity.service.SET_BASED_ROWS``: a group that large is
        resolved set-based, without the identifier cache, ≈ 10× the CPU of the cached
        path for known people — measured); ``max_backlog_rows``: spooled rows beyond
        which requests get 503."""
        self._stores = stores
        self.validators = Validators(enabled=validate_in_worker)
        """Where requests parse and validate large bodies (a worker process)."""
        self._store = store
        self.max_rows = max_rows
        self.linger = linger
        self.max_pending_rows = max_pending_rows
        self.max_backlog_rows = max_backlog_rows
        self._queue: queue.SimpleQueue[_Job | object] = queue.SimpleQueue()
        self._pending_rows = 0
        self._pending_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self.commits = 0  # groups made durable, for tests and the bench
        use_spool = spool_enabled() if spool is None else spool
        directory = spool_directory(stores) if use_spool else None
        self.loader = (
            None
            if directory is None
            else _Loader(
                stores,
                Spool(directory),
                store,
                load_rows=min(load_rows, SET_BASED_ROWS - 1),
                load_interval=load_interval,
                max_load_rows=min(max_load_rows, SET_BASED_ROWS - 1),
            )
        )
        """Spool mode's spool and loader; None in direct mode."""

    def start(self) -> None:
        """Store what an earlier run left in the spool, then start the thread(s).

        Also moves every object alive now (the app, its modules, its caches) out of
        the cyclic garbage collector's reach (``gc.freeze``): a server keeps them
        for its lifetime, and a full collection rescanned them all — pauses of
        0.2-0.5 s under load, measured, which every waiting request paid for.
        """
        if self._thread is not None:
            return
        if self.loader is not None:
            self.loader.recover()
            self.loader.start()
        gc.collect()
        gc.freeze()
        self._thread = threading.Thread(target=self._run, name="zhiying-event-writer")
        self._thread.daemon = True
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Make everything already submitted durable and answer it; in spool mode,
        store everything spooled; then end the threads (and the validation worker)."""
        self._stopping = True
        if self._thread is not None:
            self._queue.put(_STOP)
            self._thread.join(timeout)
            self._thread = None
        if self.loader is not None:
            self.loader.stop(timeout)
        self.validators.close()

    def flush(self, timeout: float | None = 30.0) -> bool:
        """Wait until every event answered before this call is in the warehouse and
        the operational store (read-your-writes); False on timeout. Immediate in
        direct mode, where answers come after storing."""
        if self.loader is None:
            return True
        return self.loader.flush(timeout)

    @property
    def backlog_rows(self) -> int:
        """Rows answered (spooled) and not stored yet."""
        return 0 if self.loader is None else self.loader.queued_rows

    def submit(self, events: pa.Table | Sequence[Row]) -> Future[Written]:
        """Queue validated events (an ``EVENTS`` table, or rows from
        ``zhiying.ingest.models``); the future resolves once they are durable."""
        if self._stopping or self._thread is None:
            raise WriterStopped("the event writer is not running (server shutting down?)")
        count = events.num_rows if isinstance(events, pa.Table) else len(events)
        backlog = self.backlog_rows
        if backlog and backlog + count > self.max_backlog_rows:
            raise WriterBusy(f"{backlog} events are waiting to be stored; retry in a second")
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
            if self.loader is not None:
                self._spool(self.loader, jobs, count)
            else:
                self._commit(jobs, count)

    def _spool(self, loader: _Loader, jobs: list[_Job], count: int) -> None:
        records: list[tuple[pa.Table, list[str]]] = []
        answers: list[Written] = []
        try:
            for job in jobs:
                table = job.table().select(EVENTS.names).cast(EVENTS)
                fresh, ids = loader.fresh_rows(table)
                if ids:
                    records.append((fresh, ids))
                answers.append(Written(inserted=len(ids), duplicates=job.count - len(ids)))
            segment = loader.spool.append([table for table, _ in records]) if records else 0
        except BaseException as exc:  # nothing of this group is spooled: fail it all
            log.error("spooling %d events failed: %s", count, redacted(exc))
            loader.forget([i for _, ids in records for i in ids])
            for job in jobs:
                job.future.set_exception(exc)
        else:
            if records:
                loader.put(records, segment)
            for job, written in zip(jobs, answers, strict=True):
                job.future.set_result(written)
        finally:
            self.commits += 1
            with self._pending_lock:
                self._pending_rows -= count

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
