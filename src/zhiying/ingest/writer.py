"""Group commit for the server: many requests, one durable write.

Each HTTP request validates its events (inline, or in the worker process of
:attr:`EventWriter.validators`, see ``zhiying.ingest.workers``), puts them on a
queue (an ``EVENTS`` Arrow table, or row dicts) and waits for a future. One
writer thread takes everything pending (up to ``max_rows`` rows, waiting at
most ``linger`` seconds for more once it has some: by default only in direct
mode) and makes it durable in one go; every future then gets that request's own
counts. What "durable" means depends on the mode:

**Spool mode** (an embedded DuckDB file; ``Settings.ingest_spool``, env
``ZHIYING_INGEST_SPOOL``, default on). The writer deduplicates the group by ``messageId``
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
import itertools
import logging
import queue
import sys
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

RETRY_SECONDS: Final = 1.0
"""Pause of the loader between two attempts to store events that failed."""
POISON_STRIKES: Final = 3
"""Failures after which a group is split, and strikes after which a row is set aside
(see :class:`_Loader`)."""


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
    ipc: bytes | None = None  # ``events`` as Arrow IPC stream bytes, when known

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


@dataclass
class _Part:
    """Rows of a stuck load, tried on their own (see :class:`_Loader`)."""

    table: pa.Table
    strikes: int = 0
    done: bool = False
    error: BaseException | None = None


def _halves(table: pa.Table) -> list[pa.Table]:
    half = table.num_rows // 2
    return [table] if half == 0 else [table.slice(0, half), table.slice(half)]


class _Loader:
    """Spool mode's loader thread and the bookkeeping it shares with the writer.

    **Poison rows vs a store that is down.** Answered events must never be
    dropped, but one row a store refuses for good (a value a constraint or
    trigger rejects, a bug) must not stop the loader forever. The rule:

    1. A load (a group of spooled records) that fails :data:`POISON_STRIKES`
       times in a row, :data:`RETRY_SECONDS` apart, is split in halves.
    2. Then in rounds, :data:`RETRY_SECONDS` apart: every part still unstored is
       tried once, in spool order, then (loader thread) the records spooled
       since, as one more part. A part that fails in a round in which the
       stores accepted other events of the load (a call with ``inserted > 0``)
       gets a **strike**; its halves inherit its strikes. A part of several
       rows with a strike is split in halves; a single row that failed on its
       own with :data:`POISON_STRIKES` strikes is **dead-lettered**
       (``Spool.dead_letter``: ``<spool>/dead/*.arrows``), and the load goes on.

    While a store is down, every attempt fails and nothing is accepted, so no
    part gets a strike: nothing is split further and nothing is set aside; the
    load is retried every second until the store is back. Splitting loses
    nothing; only dead-lettering does, and a row is dead-lettered only after it
    failed in three rounds, at least a second apart, in each of which the
    stores accepted other events — a store that refuses that row, not one that
    is down (wrongly setting a row aside would take a store that fails and
    recovers three times in a row, in step with the rounds). The cost: a
    poison row whose load has no other rows left waits (retried every second)
    until newer events arrive, and a load in which the stores refuse every row
    waits like a store that is down.
    """

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
        """Failed ``store_events`` calls."""
        self.inserted = 0
        """Rows inserted by this loader's ``store_events`` calls."""
        self.dead_letters = 0
        """Events set aside (dead-lettered) since the start."""
        self._taken = 0
        """Queue records in the load under way (the group and what it took in since)."""

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
        returns the rows stored now (rows already stored are duplicates). Rows the
        stores refuse now (a round of :meth:`_store_all` with nothing accepted)
        are left to the loader thread, which retries them while serving."""
        # Build the set of stored ids now (one scan of the dedup window), not in a request.
        since = self._stores.clock.now() - timedelta(days=self._stores.settings.dedup_window_days)
        with STORED_IDS:
            new_message_ids(self._stores.warehouse, EVENTS.empty_table(), since)
        stored = 0
        left: list[tuple[pa.Table, int]] = []
        below = self.spool.current
        groups: list[tuple[list[pa.Table], int]] = []
        rows = 0
        for segment, table in self.spool.records(below=below):
            if not groups or rows >= self.max_load_rows:
                groups.append(([], segment))
                rows = 0
            groups[-1][0].append(table)
            rows += table.num_rows
        for tables, segment in groups:
            table = pa.concat_tables(tables)
            inserted_before = self.inserted
            rest = self._store_all(table, None)
            stored += self.inserted - inserted_before
            left += [(part, segment) for part in rest or []]
        if left:
            now = time.monotonic()
            with self._cond:
                for part, segment in left:
                    ids: list[str] = part.column("message_id").to_pylist()
                    with STORED_IDS:
                        self.pending.update(ids)
                    self.spooled_seq += 1
                    self._queue.append(_Record(part, ids, segment, self.spooled_seq, now))
                    self.queued_rows += part.num_rows
            below = left[0][1]
            log.error("%d events left in the spool are refused for now; retrying", self.queued_rows)
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
                self._taken = len(group)
            tables = [record.table for record in group]
            table = tables[0] if len(tables) == 1 else pa.concat_tables(tables)
            if self._store_all(table, self._take_more) is None:
                return
            with self._cond:
                done = [self._queue.popleft() for _ in range(self._taken)]
                self._taken = 0
            self.forget([i for record in done for i in record.ids])
            with self._cond:
                self.queued_rows -= sum(record.table.num_rows for record in done)
                self.stored_seq = done[-1].seq
                below = self._queue[0].segment if self._queue else self._last_segment
                self._cond.notify_all()
            self.spool.release(below)

    def _take_more(self) -> pa.Table | None:
        """The records spooled after the load under way (up to ``max_load_rows``
        rows), now part of it: a stuck load takes them in so that they are stored
        (and witness that the stores work) instead of waiting behind it."""
        with self._cond:
            more: list[pa.Table] = []
            rows = 0
            for record in itertools.islice(self._queue, self._taken, None):
                if more and rows + record.table.num_rows > self.max_load_rows:
                    break
                more.append(record.table)
                rows += record.table.num_rows
            self._taken += len(more)
        return pa.concat_tables(more) if more else None

    def _try(self, table: pa.Table) -> int:
        """One ``store_events`` call; the rows it inserted."""
        inserted = self._store(self._stores, table).inserted
        self.loads.append(table.num_rows)
        self.inserted += inserted
        return inserted

    def _pause(self) -> bool:
        """Wait :data:`RETRY_SECONDS` (less if stopping); False when stopping."""
        with self._cond:
            if self._stopping:
                return False
            self._cond.wait(RETRY_SECONDS)
        return True

    def _store_all(
        self, table: pa.Table, more: Callable[[], pa.Table | None] | None
    ) -> list[pa.Table] | None:
        """Store ``table`` (its rows were answered as stored): retried, split and
        dead-lettered by the rule of the class docstring. ``more``: newer records to
        take in while stuck (the loader thread). Returns ``[]`` once every row is
        stored or dead-lettered; None when stopping (the spool keeps the rows);
        without ``more`` (recovery), the parts still refused after a round in
        which nothing was accepted."""
        failures = 0
        while True:
            try:
                self._try(table)
            except Exception as exc:
                failures += 1
                self.failures += 1
                log.error(
                    "storing %d spooled events failed (attempt %d): %s",
                    table.num_rows,
                    failures,
                    redacted(exc),
                )
            else:
                return []
            if failures >= POISON_STRIKES:
                return self._isolate(table, more)
            if not self._pause():
                return None

    def _isolate(
        self, table: pa.Table, more: Callable[[], pa.Table | None] | None
    ) -> list[pa.Table] | None:
        """Rounds 2. of the rule (class docstring) on ``table``, split in halves."""
        parts = [_Part(half) for half in _halves(table)]
        while True:
            if more is not None and (extra := more()) is not None:
                parts.append(_Part(extra))
            accepted = False
            for part in parts:
                try:
                    inserted = self._try(part.table)
                except Exception as exc:
                    self.failures += 1
                    part.error = exc
                else:
                    part.done = True
                    accepted |= inserted > 0  # the stores take other events now
            failed = [part for part in parts if not part.done]
            if not failed:
                return []
            errors = sorted({type(part.error).__name__ for part in failed})
            log.error(
                "storing spooled events: %d rows in %d parts refused (%s); retrying",
                sum(part.table.num_rows for part in failed),
                len(failed),
                ", ".join(errors),
            )
            if more is None and not accepted:
                return [part.table for part in failed]
            parts = []
            dead: list[_Part] = []
            for part in failed:
                if not accepted:  # a store down, or every row refused: wait, as is
                    parts.append(part)
                    continue
                part.strikes += 1
                if part.table.num_rows > 1:
                    parts += [_Part(half, part.strikes) for half in _halves(part.table)]
                elif part.strikes >= POISON_STRIKES:
                    dead.append(part)
                else:
                    parts.append(part)
            if dead:
                self._dead_letter(dead)
            if parts and not self._pause():
                return None

    def _dead_letter(self, dead: list[_Part]) -> None:
        rows = pa.concat_tables([part.table for part in dead])
        classes = [type(part.error).__name__ for part in dead]
        errors = [redacted(part.error) if part.error else "" for part in dead]
        rows = rows.append_column("error_class", pa.array(classes, pa.string())).append_column(
            "error", pa.array(errors, pa.string())
        )
        path = self.spool.dead_letter(rows, self._stores.clock.now())
        self.dead_letters += rows.num_rows
        log.warning(
            "set aside %d events the stores refused %d times while accepting others (%s) in "
            "%s; %d dead-lettered since start",
            rows.num_rows,
            POISON_STRIKES,
            ", ".join(sorted(set(classes))),
            path.name,
            self.dead_letters,
        )


DIRECT_LINGER: Final = 0.002
"""Direct mode's wait for more requests once the writer has one: each group pays
``store_events``' fixed cost (≈ 9 ms of CPU), so a few ms buy larger groups. Spool
mode does not wait: a group costs one ``fdatasync`` (≈ 0.75 ms), and the requests
that arrive meanwhile form the next group anyway; waiting only added its time to
every request (measured: with 3 senders of 500-event bodies, 169 requests made
166 groups with a 2 ms wait — the validation worker hands bodies over one by one)."""


SWITCH_INTERVAL: Final = 0.001
"""Seconds a thread may hold the interpreter lock while another waits for it
(Python's default: 0.005). The loader (or, in direct mode, the writer) runs long
stretches of Python in ``store_events``; every step of a request — the event loop
reading it, the worker's answer coming back, the spool, the response — is another
thread that must win the lock back, each time waiting up to this long. Measured
in one process with a thread spinning Python: a chain of 6 thread hand-offs took
p99 48-49 ms with 5 ms and 10-14 ms with 1 ms (p50 ≈ 0.1 ms either way)."""


class EventWriter:
    """The single writer thread of a server process (see module docstring)."""

    def __init__(
        self,
        stores: Stores,
        *,
        max_rows: int = 20_000,
        linger: float | None = None,
        max_pending_rows: int = 200_000,
        store: Callable[[Stores, pa.Table], StoreResult] = store_events,
        validate_in_worker: bool = True,
        spool: bool | None = None,
        load_rows: int = 10_000,
        load_interval: float = 0.5,
        max_load_rows: int = 16_000,
        max_backlog_rows: int = 100_000,
    ) -> None:
        """``spool``: spool mode (None: ``settings.ingest_spool``; only with an embedded
        DuckDB file). ``load_rows``/``load_interval``/``max_load_rows``: the loader's
        groups (kept under ``identity.service.SET_BASED_ROWS``: a group that large is
        resolved set-based, without the identifier cache, ≈ 10× the CPU of the cached
        path for known people — measured); ``max_backlog_rows``: spooled rows beyond
        which requests get 503. ``linger``: how long the writer waits for more
        requests once it has one (None: :data:`DIRECT_LINGER` in direct mode, none
        in spool mode)."""
        self._stores = stores
        self.validators = Validators(enabled=validate_in_worker)
        """Where requests parse and validate large bodies (a worker process)."""
        self._store = store
        self.max_rows = max_rows
        self.linger = 0.0
        self.max_pending_rows = max_pending_rows
        self.max_backlog_rows = max_backlog_rows
        self._queue: queue.SimpleQueue[_Job | object] = queue.SimpleQueue()
        self._pending_rows = 0
        self._pending_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._switch_before: float | None = None
        self.commits = 0  # groups made durable, for tests and the bench
        use_spool = stores.settings.ingest_spool if spool is None else spool
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
        if linger is not None:
            self.linger = linger
        elif self.loader is None:
            self.linger = DIRECT_LINGER

    def start(self) -> None:
        """Store what an earlier run left in the spool, then start the thread(s).

        Also moves every object alive now (the app, its modules, its caches) out of
        the cyclic garbage collector's reach (``gc.freeze``): a server keeps them
        for its lifetime, and a full collection rescanned them all — pauses of
        0.2-0.5 s under load, measured, which every waiting request paid for.

        And shortens the interpreter's thread switch interval to
        :data:`SWITCH_INTERVAL` (restored by :meth:`stop`): see there.
        """
        if self._thread is not None:
            return
        if self.loader is not None:
            self.loader.recover()
            self.loader.start()
        gc.collect()
        gc.freeze()
        self._switch_before = sys.getswitchinterval()
        sys.setswitchinterval(min(self._switch_before, SWITCH_INTERVAL))
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
        if self._switch_before is not None:
            sys.setswitchinterval(self._switch_before)
            self._switch_before = None

    def flush(self, timeout: float | None = 30.0) -> bool:
        """Wait until every event answered before this call is in the warehouse and
        the operational store (read-your-writes); False on timeout. Immediate in
        direct mode, where answers come after storing."""
        if self.loader is None:
            return True
        return self.loader.flush(timeout)

    @property
    def dead_letters(self) -> int:
        """Events set aside since the start because the stores kept refusing them
        (``<spool>/dead/``; see :class:`_Loader`)."""
        return 0 if self.loader is None else self.loader.dead_letters

    @property
    def backlog_rows(self) -> int:
        """Rows answered (spooled) and not stored yet."""
        return 0 if self.loader is None else self.loader.queued_rows

    def submit(
        self, events: pa.Table | Sequence[Row], *, ipc: bytes | None = None
    ) -> Future[Written]:
        """Queue validated events (an ``EVENTS`` table, or rows from
        ``zhiying.ingest.models``); the future resolves once they are durable.
        ``ipc``: the same table as Arrow IPC stream bytes (from the validation
        worker), spooled as they are when no row of it is a repeat."""
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
        self._queue.put(_Job(events, count, future, ipc))
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
        encoded: list[pa.Table | bytes] = []
        answers: list[Written] = []
        try:
            for job in jobs:
                table = job.table()
                if not table.schema.equals(EVENTS):  # a validator's table already is
                    table = table.select(EVENTS.names).cast(EVENTS)
                fresh, ids = loader.fresh_rows(table)
                if ids:
                    records.append((fresh, ids))
                    # The worker's bytes are this very table when no row was dropped.
                    whole = job.ipc is not None and fresh is job.events
                    encoded.append(job.ipc if whole and job.ipc is not None else fresh)
                answers.append(Written(inserted=len(ids), duplicates=job.count - len(ids)))
            segment = loader.spool.append(encoded) if records else 0
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
