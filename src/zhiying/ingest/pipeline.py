"""``store_events``: the one function every path (HTTP, bulk import, demo) stores events with.

Steps, for a batch of validated ``EVENTS`` rows:

1. drop repeats: rows whose ``message_id`` occurs earlier in the batch, and rows
   whose ``message_id`` is stored with ``received_at`` inside the dedup window
   (``settings.dedup_window_days``; ``zhiying.warehouse.events``);
2. in ONE operational transaction: resolve every row to a ONE_ID
   (``zhiying.identity.service.resolve_events``, with this process's
   identifier cache: ``zhiying.identity.cache``), give every ONE_ID its
   integer ``person_key`` (``zhiying.ingest.person_keys``) and upsert the
   current traits of identify calls (``zhiying.profiles.service.upsert_traits``);
   before that transaction commits, write the keys it minted to the
   warehouse's ``person_keys`` and point merged-away ONE_IDs at their owner
   (``one_id_aliases``);
3. after it committed: append ``trait_updates``, and append the events last.

Aliases go to the warehouse before the operational commit so that a failure
there rolls the merges back too: the retry merges again and writes the
aliases again (a merge's winner is decided by stored facts, so it is the same
pair). Committed merges never lack their aliases. The opposite window is
narrower: if the operational COMMIT itself fails after the aliases were
written, the warehouse already shows merges the operational store does not
hold until the client's retry makes them (pairs naming ONE_IDs minted by the
failed attempt point from ids no event carries and are harmless).

Durability: when ``store_events`` returns, the operational transaction is
committed and every warehouse statement has committed (DuckDB commits each
statement to its write-ahead log before returning; ClickHouse acknowledges an
INSERT once the part is written). The events are written last, so a crash
between the steps leaves events absent, never half-resolved: the client gets no
success answer, retries with the same ``messageId`` s, and the retry passes the
dedup check and is resolved again — identity resolution and trait upserts are
idempotent, so it converges. The one visible trace of such a crash is a second
copy of that batch's ``trait_updates`` rows, which readers of "latest value"
ignore.

One writer per process: a process-wide lock (``warehouse.events.EVENT_WRITER``,
shared with ``append_events``) serialises calls, because an embedded DuckDB file
has one writer and the dedup check must see every earlier batch. A bulk import
holds it from its whole-file dedup to its last append and hands its batches
over as :class:`ImportBatch` es: step 1 is then not repeated, nor are person keys
looked up again (see :func:`store_event_batches` for why that keeps every
messageId stored once).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from zhiying.identity.cache import IdentityCache
from zhiying.identity.service import resolve_events
from zhiying.ingest.person_keys import key_resolution, person_keys
from zhiying.profiles.service import upsert_traits
from zhiying.profiles.traits import trait_updates
from zhiying.runtime import Stores
from zhiying.store.engine import PerEngine
from zhiying.warehouse.events import (
    EVENT_WRITER,
    DedupMark,
    hold_event_writer,
    remember_stored,
    single_writer,
    unseen_rows,
)
from zhiying.warehouse.schema import EVENTS

_ONE_ID = EVENTS.get_field_index("one_id")
_PERSON_KEY = EVENTS.get_field_index("person_key")

identity_cache = PerEngine(IdentityCache)
"""This process's identifier cache for the operational store behind an engine."""

STORED_IDS = threading.Lock()
"""Held while ``store_events`` reads or extends the process's set of stored message
ids (``warehouse.events``), so that a reader outside ``EVENT_WRITER`` sees it whole:
the server's spool deduplicates requests with it while the loader stores
(``zhiying.ingest.writer``)."""


@dataclass(frozen=True)
class StoreResult:
    """What one ``store_events`` call did.

    ``inserted`` rows were appended; ``duplicates`` were dropped as repeats of
    a stored or earlier ``message_id``; ``merges``/``conflicts`` come from
    identity resolution. ``stored`` has one boolean per input row: True when
    that row was appended (callers that merged several requests into one call
    split their answers with it).
    """

    inserted: int
    duplicates: int
    merges: int
    conflicts: int
    stored: np.ndarray = field(
        default_factory=lambda: np.zeros(0, dtype=bool), repr=False, compare=False
    )
    timings: dict[str, float] = field(default_factory=dict, repr=False, compare=False)
    """Seconds spent per step (dedup, identity, traits, warehouse), for profiling."""


def store_events(
    stores: Stores,
    events: pa.Table,
    *,
    one_ids: pa.Array | None = None,
) -> StoreResult:
    """Deduplicate, resolve and durably store ``events`` (``EVENTS`` schema).

    Rows must come from ``zhiying.ingest.models`` (or satisfy the same rules);
    ``one_id`` in the input is ignored and set by identity resolution.
    ``one_ids`` (aligned with ``events``; bulk import) are ONE_IDs the caller
    resolved and committed itself: rows where it is not null skip resolution
    (``resolve_events(..., resolved=...)``).
    """
    with EVENT_WRITER:
        staged = _stage(stores, events, one_ids, in_flight=None)
        if staged.fresh is not None:
            _append(stores, staged)
    return staged.result


@dataclass(frozen=True)
class ImportBatch:
    """One store batch of a bulk import whose rows were deduplicated and resolved for
    the whole file at once (``zhiying.ingest.bulk.resolve_import``).

    ``one_ids``: one per row, null for a row that dedup dropped (a repeat of an
    earlier row of the file or of a stored event); ``keys``: the person key of
    each ONE_ID (null where it is null; None: look them up); ``deduplicated_under``:
    the mark of that dedup, made under the ``EVENT_WRITER`` hold in force
    (``warehouse.events.WriterHold.mark``), or None; ``hashes``, when known, spare
    the append hashing the ids again for later dedup checks.
    """

    events: pa.Table
    one_ids: pa.Array
    keys: pa.Array | None = None
    deduplicated_under: DedupMark | None = None
    hashes: np.ndarray | None = None
    """The message ids' hashes (``warehouse.events.unseen_rows_hashed``), one per row."""


def store_event_batches(
    stores: Stores, batches: Iterable[tuple[pa.Table, pa.Array | None] | ImportBatch]
) -> Iterator[StoreResult]:
    """``store_events`` of each ``(events, one_ids)`` in turn, one result per batch, with
    each batch's warehouse append running while the next batch is deduplicated and
    resolved (bulk import's second pass).

    The append (DuckDB releases the GIL) and the next batch's Python, pyarrow and
    SQLite work then use both cores instead of taking turns. Each batch still
    commits its operational transaction before its events are appended, and a
    batch is deduplicated against the one being appended as well as the stored
    ones, so the rows stored are those of consecutive ``store_events`` calls.
    The writer lock is held until the last append returned. A failed append is
    raised when the next batch has been staged (its operational transaction may
    have committed: resolution is idempotent, so running the import again
    converges, as after any crash between the steps).

    An :class:`ImportBatch` is not deduplicated again when its dedup's mark is
    still exclusive (``WriterHold.exclusive``: made under the ``EVENT_WRITER``
    hold still in force here, and nothing but that dedup's rows appended since)
    and the warehouse has this process as its only writer (DuckDB, chdb): its
    non-null ONE_IDs are then exactly the rows a second dedup would keep. Why:
    the whole-file dedup answered "not stored since ``dedup_since``" for those
    rows and kept the first row of each messageId of the file; since then no
    other writer of this process could append (all take ``EVENT_WRITER``, held
    throughout), no other process can write an embedded warehouse, and what was
    appended under the hold is that dedup's own rows, whose messageIds are
    distinct (so the batch in flight needs no check either, when it is one of
    them). A second dedup, whose window starts later and so is narrower, would
    drop nothing more. A messageId repeated in the file, or also sent over HTTP,
    is still stored once: an HTTP batch waits for ``EVENT_WRITER`` and its own
    dedup then sees the imported ids; one stored before the import took the
    lock was seen by the whole-file dedup. Otherwise (a ClickHouse server that
    other processes write; a mark no longer exclusive) the batch is
    deduplicated like any other, and rows with a null ONE_ID that pass are
    resolved here (``tests/ingest/test_import_batches.py``).
    """
    with (
        hold_event_writer() as hold,
        ThreadPoolExecutor(1, thread_name_prefix="zhiying-append") as pool,
    ):
        pending: tuple[Future[None], StoreResult] | None = None
        in_flight: pa.Array | None = None
        previous: DedupMark | None = None  # the dedup of the batch in flight, if trusted
        trusted = single_writer(stores.warehouse)
        for item in batches:
            done: DedupMark | None = None
            if isinstance(item, ImportBatch):
                if trusted and hold.exclusive(item.deduplicated_under):
                    done = item.deduplicated_under
                    staged = _stage_deduplicated(
                        stores, item, in_flight=None if previous is done else in_flight
                    )
                else:
                    staged = _stage(stores, item.events, item.one_ids, in_flight=in_flight)
            else:
                staged = _stage(stores, item[0], item[1], in_flight=in_flight)
            staged.mark = done
            if pending is not None:
                pending[0].result()
                yield pending[1]
                pending = None
            if staged.fresh is None:
                in_flight, previous = None, None
                yield staged.result
                continue
            in_flight, previous = staged.fresh.column("message_id").combine_chunks(), done
            pending = (pool.submit(_append, stores, staged), staged.result)
        if pending is not None:
            pending[0].result()
            yield pending[1]


@dataclass
class _Staged:
    """A batch deduplicated and resolved (operational transaction committed), not
    yet in the warehouse: ``fresh`` (None when nothing is new) and its
    ``trait_updates`` rows, appended by :func:`_append`."""

    result: StoreResult
    fresh: pa.Table | None = None
    updates: pa.Table | None = None
    dedup_since: datetime | None = None
    mark: DedupMark | None = None
    """The dedup that chose ``fresh``, when it was not this batch's own."""
    hashes: np.ndarray | None = None
    """The message ids' hashes of ``fresh``, when known."""


def _stage(
    stores: Stores, events: pa.Table, one_ids: pa.Array | None, in_flight: pa.Array | None
) -> _Staged:
    """Steps 1 and 2 of the module docstring; the caller holds ``EVENT_WRITER``.

    ``in_flight``: message ids of a batch whose append has not returned yet,
    dropped as repeats like the stored ones."""
    total = events.num_rows
    stored = np.zeros(total, dtype=bool)
    if total == 0:
        return _Staged(StoreResult(0, 0, 0, 0, stored))
    events = events.select(EVENTS.names).cast(EVENTS)
    warehouse = stores.warehouse
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    now = stores.clock.now()
    dedup_since = now - timedelta(days=stores.settings.dedup_window_days)

    with STORED_IDS:
        fresh, rows = unseen_rows(warehouse, events, dedup_since)
    fresh, rows = _not_in_flight(fresh, rows, in_flight)
    stored[rows] = True
    t1 = time.perf_counter()
    timings["dedup"] = t1 - t0
    if fresh.num_rows == 0:
        return _Staged(StoreResult(0, total, 0, 0, stored, timings))
    return _resolve(stores, fresh, total, stored, one_ids, rows, now, dedup_since, timings)


def _not_in_flight(
    fresh: pa.Table, rows: np.ndarray, in_flight: pa.Array | None
) -> tuple[pa.Table, np.ndarray]:
    """``fresh`` (and its row numbers) less the rows whose message id is in ``in_flight``."""
    if in_flight is None or not len(rows):
        return fresh, rows
    ids = fresh.column("message_id").combine_chunks()
    new = pc.invert(pc.is_in(ids, value_set=in_flight))
    if new.false_count:
        fresh, rows = fresh.filter(new), rows[new.to_numpy(zero_copy_only=False)]
    return fresh, rows


def _stage_deduplicated(stores: Stores, item: ImportBatch, in_flight: pa.Array | None) -> _Staged:
    """:func:`_stage` of a batch whose dedup is done (see :func:`store_event_batches`):
    its rows with a ONE_ID are the new ones, in order; they take the keys they came with."""
    events = item.events
    total = events.num_rows
    stored = np.zeros(total, dtype=bool)
    if total == 0:
        return _Staged(StoreResult(0, 0, 0, 0, stored))
    t0 = time.perf_counter()
    events = events.select(EVENTS.names).cast(EVENTS)
    now = stores.clock.now()
    dedup_since = now - timedelta(days=stores.settings.dedup_window_days)
    one_ids = _array(item.one_ids)
    if len(one_ids) != total:
        raise ValueError(f"{len(one_ids)} ONE_IDs for {total} rows")
    valid = one_ids.is_valid()
    keys = None if item.keys is None else _array(item.keys)
    if valid.false_count:
        rows = np.flatnonzero(valid.to_numpy(zero_copy_only=False))
        fresh = events.filter(valid)
    else:
        rows = np.arange(total, dtype=np.int64)
        fresh = events
    fresh, rows = _not_in_flight(fresh, rows, in_flight)
    stored[rows] = True
    timings = {"dedup": time.perf_counter() - t0}
    if fresh.num_rows == 0:
        return _Staged(StoreResult(0, total, 0, 0, stored, timings))
    keyed = False
    if keys is not None:
        if len(keys) != total:
            raise ValueError(f"{len(keys)} person keys for {total} rows")
        taken = keys.take(pa.array(rows)).cast(pa.int64())
        keyed = taken.null_count == 0
        if keyed:
            fresh = fresh.set_column(_PERSON_KEY, EVENTS.field("person_key"), taken)
    staged = _resolve(
        stores, fresh, total, stored, one_ids, rows, now, dedup_since, timings, keyed=keyed
    )
    if item.hashes is not None:
        if len(item.hashes) != total:
            raise ValueError(f"{len(item.hashes)} message id hashes for {total} rows")
        staged.hashes = item.hashes[rows]
    return staged


def _array(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    return values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values


def _resolve(
    stores: Stores,
    fresh: pa.Table,
    total: int,
    stored: np.ndarray,
    one_ids: pa.Array | None,
    rows: np.ndarray,
    now: datetime,
    dedup_since: datetime,
    timings: dict[str, float],
    *,
    keyed: bool = False,
) -> _Staged:
    """Step 2 for the new rows ``fresh`` (rows ``rows`` of the batch): the operational
    transaction. ``keyed``: every row of ``fresh`` comes with its ONE_ID (``one_ids``)
    and the person key of it (a bulk import's, :func:`_stage_deduplicated`, keyed in
    ``resolve_import``'s committed transaction; a committed key never changes), so
    keys are neither looked up nor minted."""
    t1 = time.perf_counter()
    warehouse = stores.warehouse
    resolved = None if one_ids is None else one_ids.take(pa.array(rows))
    keyed = keyed and resolved is not None and resolved.null_count == 0
    cache = identity_cache(stores.engine)
    keys = person_keys(stores.engine)
    if not keyed:
        # Two numbers per row: a row mints at most one ONE_ID and names at most one owner.
        keys.reserve(stores.engine, 2 * fresh.num_rows)
    with stores.engine.begin() as conn:
        resolution = resolve_events(conn, fresh, now, cache, resolved=resolved)
        fresh = fresh.set_column(_ONE_ID, EVENTS.field("one_id"), resolution.one_ids)
        learned: dict[str, int] = {}
        if not keyed:  # a row that came with its ONE_ID and key needs neither resolved
            assigned = key_resolution(conn, keys, warehouse, resolution.one_ids, resolution.aliases)
            fresh = fresh.set_column(_PERSON_KEY, EVENTS.field("person_key"), assigned.keys)
            learned = assigned.learned
        t2 = time.perf_counter()
        updates = trait_updates(fresh)
        upsert_traits(conn, updates)
        t3 = time.perf_counter()
    cache.apply(resolution.generation, resolution.cache_entries)
    if learned:
        keys.remember(learned)
    timings["identity"] = t2 - t1
    timings["traits"] = t3 - t2
    result = StoreResult(
        inserted=fresh.num_rows,
        duplicates=total - fresh.num_rows,
        merges=resolution.merges,
        conflicts=resolution.conflicts,
        stored=stored,
        timings=timings,
    )
    return _Staged(result, fresh, updates, dedup_since)


def _append(stores: Stores, staged: _Staged) -> None:
    """Step 3: ``trait_updates``, then the events last."""
    assert staged.fresh is not None and staged.updates is not None
    assert staged.dedup_since is not None
    started = time.perf_counter()
    warehouse = stores.warehouse
    if staged.updates.num_rows:
        warehouse.insert("trait_updates", staged.updates)
    warehouse.insert("events", staged.fresh)
    with STORED_IDS:
        remember_stored(warehouse, staged.fresh, staged.dedup_since, staged.mark, staged.hashes)
    staged.result.timings["warehouse"] = time.perf_counter() - started
