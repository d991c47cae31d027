"""Appending to the event table and keeping ONE_ID aliases: the writes ingestion makes.

Dedup by ``messageId`` follows Segment's contract: a message seen again within
the look-back window (``ZHIYING_DEDUP_WINDOW_DAYS``, default 7 days of
*receive* time; Segment promises about 24 hours) is stored once.

Finding the repeats of a batch is the expensive part: ``message_id`` is a random
uuid that no sort key or zone map can prune, so asking the warehouse "which of
these ids do you hold?" scans every id received in the window (≈ 60 ms per
million rows on DuckDB). :class:`RecentMessageIds` avoids that scan for the
common case, a batch of new ids: an in-memory set of the 64-bit hashes of the
ids stored in the window answers "certainly new" for them, and only the ids
whose hash it holds (real repeats, and hash collisions: never in practice) are
looked up in the table. The set knows every stored id only when this process
is the warehouse's single writer, which holds for the embedded engines
(DuckDB, chdb); for a ClickHouse server (several API processes may write)
every id is looked up in the table.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from zhiying.warehouse.base import Warehouse
from zhiying.warehouse.schema import EVENTS, ONE_ID_ALIASES

_US_PER_DAY = 86_400_000_000

EVENT_WRITER = threading.RLock()
"""Held by every writer of the event table in this process (``append_events`` and
``zhiying.ingest.pipeline.store_events``): the dedup check and the insert that
follows it must not interleave with another writer's. Reentrant, so that a bulk
import can hold it (:func:`hold_event_writer`) from its whole-file dedup to its
last append while the functions it calls take it again."""


class DedupMark:
    """Names one messageId dedup made under a :class:`WriterHold` (``WriterHold.mark``)."""

    def __init__(self, hold: WriterHold) -> None:
        self.hold = hold


class WriterHold:
    """One uninterrupted holding of ``EVENT_WRITER`` (:func:`hold_event_writer`).

    Why: a bulk import deduplicates its whole file once
    (``zhiying.ingest.bulk.resolve_import``) and stores it batch by batch
    afterwards; the store pass may trust that answer instead of asking again only
    while nothing else was appended in between. Under the hold no other writer of
    the process appends (they all take ``EVENT_WRITER``); appends made under it
    by its own thread are tracked: every append of the event table reports to
    :func:`remember_stored`, and one whose rows do not come from the latest
    :meth:`mark` ends that mark's validity (:meth:`exclusive`).
    """

    def __init__(self) -> None:
        self.active = False
        self.thread = threading.get_ident()
        self._mark: DedupMark | None = None

    def mark(self) -> DedupMark:
        """Call right after a dedup made under this hold, before anything is appended."""
        mark = DedupMark(self)
        self._mark = mark
        return mark

    def appended(self, mark: DedupMark | None) -> None:
        """Event rows were appended under this hold; ``mark``: the dedup that chose them."""
        if mark is None or mark is not self._mark:
            self._mark = None

    def exclusive(self, mark: DedupMark | None) -> bool:
        """True when ``mark`` was made under this hold, the hold is still in force in
        this thread, and only rows of that dedup were appended since it was made: its
        answers ("not stored") still hold, barring other processes."""
        return (
            mark is not None
            and mark is self._mark
            and self.active
            and threading.get_ident() == self.thread
        )


_hold: WriterHold | None = None
"""The hold in force (at most one: it holds ``EVENT_WRITER``); read by appends in other
threads of the holder (the pipelined store pass appends from a second thread)."""


@contextmanager
def hold_event_writer() -> Iterator[WriterHold]:
    """Hold ``EVENT_WRITER`` for the block (nested blocks share the outer hold)."""
    global _hold
    with EVENT_WRITER:
        outer = _hold
        hold = WriterHold() if outer is None else outer
        hold.active = True
        _hold = hold
        try:
            yield hold
        finally:
            if outer is None:
                hold.active = False
                _hold = None


def current_hold() -> WriterHold | None:
    """The hold in force, when this thread holds it (None otherwise)."""
    hold = _hold
    if hold is None or not hold.active or hold.thread != threading.get_ident():
        return None
    return hold


_IN_LIST_CHUNK = 2000


def timestamp_literal(warehouse: Warehouse, at: datetime) -> str:
    """A UTC instant as a SQL literal of the warehouse's dialect."""
    if at.tzinfo is not None:
        offset = at.utcoffset()
        at = at.replace(tzinfo=None) - (offset or timedelta(0))
    text = at.strftime("%Y-%m-%d %H:%M:%S.%f")
    if warehouse.dialect == "clickhouse":
        return f"toDateTime64('{text}', 6, 'UTC')"
    return f"TIMESTAMP '{text}'"


def string_literal(warehouse: Warehouse, value: str) -> str:
    """``value`` as a SQL string literal of the warehouse's dialect.

    ClickHouse reads backslash escapes inside literals; DuckDB does not.
    """
    if warehouse.dialect == "clickhouse":
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return "'" + value.replace("'", "''") + "'"


def first_indices(batch: pa.Table) -> pa.Array:
    """Row numbers of the first row of each ``message_id``, in input order."""
    if batch.num_rows == 0:
        return pa.array([], pa.int64())
    ids = batch.column("message_id").combine_chunks()
    hashes = _hashes(ids.to_pylist()) if ids.null_count == 0 else None
    return _first_rows(ids, hashes)


def _first_rows(ids: pa.Array, hashes: np.ndarray | None) -> pa.Array:
    """:func:`first_indices` of ``ids`` given their 64-bit ``hashes`` (None when some id
    is null).

    Ids are nearly always all distinct, and distinct hashes prove it: one sort of
    the hashes (5M ids: ≈ 0.4 s) instead of a hash table of the strings
    (``dictionary_encode``: ≈ 1.5 s; a group-by with a ``min`` per group cost ≈ 2 s).
    Equal hashes (repeats, or a collision) take the exact path: repeats take the
    first index of each dictionary code."""
    n = len(ids)
    if hashes is not None:
        ordered = np.sort(hashes)
        if not np.any(ordered[1:] == ordered[:-1]):
            return pa.array(np.arange(n, dtype=np.int64))
    codes = pc.dictionary_encode(ids)
    if codes.indices.null_count == 0:
        if len(codes.dictionary) == n:
            return pa.array(np.arange(n, dtype=np.int64))
        _, first = np.unique(codes.indices.to_numpy(zero_copy_only=False), return_index=True)
        first.sort()
        return pa.array(first.astype(np.int64))
    # Null ids (not from the validators, which always set one) are one group, as before.
    indexed = pa.table({"message_id": ids, "__row": pa.array(np.arange(n, dtype=np.int64))})
    firsts = indexed.group_by("message_id", use_threads=False).aggregate([("__row", "min")])
    rows = firsts.column("__row_min")
    return pc.take(rows, pc.sort_indices(rows)).combine_chunks()


def first_per_message_id(batch: pa.Table) -> pa.Table:
    """Keep the first row of each ``message_id`` (order preserved)."""
    rows = first_indices(batch)
    return batch if len(rows) == batch.num_rows else batch.take(rows)


def stored_message_ids(
    warehouse: Warehouse, message_ids: Iterable[str], dedup_since: datetime
) -> set[str]:
    """Which of ``message_ids`` the event table holds with ``received_at >= dedup_since``."""
    ids = list(dict.fromkeys(message_ids))
    found: set[str] = set()
    since = timestamp_literal(warehouse, dedup_since)
    for start in range(0, len(ids), _IN_LIST_CHUNK):
        chunk = ids[start : start + _IN_LIST_CHUNK]
        quoted = ", ".join(string_literal(warehouse, i) for i in chunk)
        result = warehouse.query(
            f"SELECT DISTINCT message_id FROM events "
            f"WHERE received_at >= {since} AND message_id IN ({quoted})"
        )
        found.update(result.column("message_id").to_pylist())
    return found


def _in_sorted(values: np.ndarray, probes: np.ndarray) -> np.ndarray:
    """A boolean per probe: is it in the sorted array ``values``."""
    if len(values) == 0:
        return np.zeros(len(probes), dtype=bool)
    at = np.searchsorted(values, probes)
    at[at == len(values)] = 0
    found: np.ndarray = values[at] == probes
    return found


class _HashSet:
    """A set of 64-bit hashes as sorted arrays: a large one and a small recent one.

    Adding merges into the recent array; when it outgrows an eighth of the large
    one they are merged (both are sorted runs, so a stable sort merges them in
    linear time). Membership is a binary search in each.
    """

    def __init__(self) -> None:
        self.main = np.zeros(0, dtype=np.uint64)
        self.recent = np.zeros(0, dtype=np.uint64)

    def add(self, hashes: np.ndarray) -> None:
        self.recent = np.sort(np.concatenate([self.recent, np.sort(hashes)]), kind="stable")
        if len(self.recent) > max(1 << 16, len(self.main) // 8):
            self.main = np.sort(np.concatenate([self.main, self.recent]), kind="stable")
            self.recent = np.zeros(0, dtype=np.uint64)

    def contains(self, hashes: np.ndarray) -> np.ndarray:
        found: np.ndarray = _in_sorted(self.main, hashes) | _in_sorted(self.recent, hashes)
        return found


def _hashes(ids: list[str]) -> np.ndarray:
    return np.fromiter((hash(i) for i in ids), dtype=np.int64, count=len(ids)).view(np.uint64)


class RecentMessageIds:
    """The 64-bit hashes of the message ids stored in a warehouse, per receive day.

    ``maybe_seen`` never answers False for an id that was added; for a new id
    it answers True only on a 64-bit hash collision (about n / 2^64: never in
    practice), and the caller then checks the table. 8 bytes per id in the
    window (10 million events a week: 80 MB). Days older than the dedup window
    are dropped. Python's string hash is salted per process, so the set is
    rebuilt from the table when a process starts.
    """

    def __init__(self) -> None:
        self._days: dict[int, _HashSet] = {}

    def add(self, ids: list[str], received_day: np.ndarray) -> None:
        """Remember ``ids`` with their receive day (days since the epoch)."""
        if ids:
            self.add_hashes(_hashes(ids), received_day)

    def add_hashes(self, hashes: np.ndarray, received_day: np.ndarray) -> None:
        """:meth:`add` of ids given by their :func:`_hashes`."""
        if not len(hashes):
            return
        for day in np.unique(received_day):
            self._days.setdefault(int(day), _HashSet()).add(hashes[received_day == day])

    def maybe_seen(self, ids: list[str], since_day: int) -> np.ndarray:
        """A boolean per id: True when it may have been stored on or after ``since_day``."""
        return self.maybe_seen_hashes(_hashes(ids), since_day)

    def maybe_seen_hashes(self, hashes: np.ndarray, since_day: int) -> np.ndarray:
        """:meth:`maybe_seen` of ids given by their :func:`_hashes`."""
        result = np.zeros(len(hashes), dtype=bool)
        for day, known in self._days.items():
            if day >= since_day:
                result |= known.contains(hashes)
        return result

    def forget_before(self, day: int) -> None:
        for old in [d for d in self._days if d < day]:
            del self._days[old]


def days_since_epoch(received_at: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """``received_at`` (timestamp[us]) as whole days since 1970-01-01."""
    micros = pc.cast(received_at, pa.int64()).to_numpy(zero_copy_only=False)
    return micros // _US_PER_DAY  # type: ignore[no-any-return]


def _epoch_day(at: datetime) -> int:
    if at.tzinfo is not None:
        at = at.replace(tzinfo=None) - (at.utcoffset() or timedelta(0))
    return (at - datetime(1970, 1, 1)).days


_filters: weakref.WeakKeyDictionary[Warehouse, RecentMessageIds] = weakref.WeakKeyDictionary()
_filters_lock = threading.Lock()


def single_writer(warehouse: Warehouse) -> bool:
    """True for the embedded warehouses (DuckDB, chdb), which this process alone writes."""
    return warehouse.url.startswith(("duckdb://", "chdb://"))


def _recent_ids(warehouse: Warehouse, dedup_since: datetime) -> RecentMessageIds | None:
    if not single_writer(warehouse):
        return None
    with _filters_lock:
        recent = _filters.get(warehouse)
        if recent is None:
            recent = RecentMessageIds()
            since = timestamp_literal(warehouse, dedup_since)
            stored = warehouse.query(
                f"SELECT message_id, received_at FROM events WHERE received_at >= {since}"
            )
            recent.add(
                stored.column("message_id").to_pylist(),
                days_since_epoch(stored.column("received_at")),
            )
            _filters[warehouse] = recent
        return recent


def unseen_rows(
    warehouse: Warehouse, batch: pa.Table, dedup_since: datetime
) -> tuple[pa.Table, np.ndarray]:
    """Dedup by messageId: the rows of ``batch`` to store (the first row of each
    ``message_id`` that is not stored since ``dedup_since``, in input order) and
    their row numbers in ``batch``. The ids are read and hashed once for both steps."""
    fresh, rows, _ = unseen_rows_hashed(warehouse, batch, dedup_since)
    return fresh, rows


def unseen_rows_hashed(
    warehouse: Warehouse, batch: pa.Table, dedup_since: datetime
) -> tuple[pa.Table, np.ndarray, np.ndarray | None]:
    """:func:`unseen_rows`, and the message ids' hashes of the rows to store (None when
    some id is null), which :func:`remember_stored` takes instead of hashing again."""
    if batch.num_rows == 0:
        return batch, np.zeros(0, dtype=np.int64), None
    column = batch.column("message_id").combine_chunks()
    ids: list[str] = column.to_pylist()
    hashes = _hashes(ids) if column.null_count == 0 else None
    firsts = _first_rows(column, hashes)
    if len(firsts) == batch.num_rows:
        unique = batch
    else:
        unique = batch.take(firsts)
        taken = firsts.to_numpy(zero_copy_only=False)
        ids = [ids[i] for i in taken]
        hashes = None if hashes is None else hashes[taken]
    new_mask = _new_ids(warehouse, ids, hashes, dedup_since)
    rows = firsts.to_numpy(zero_copy_only=False)[new_mask]
    if new_mask.all():  # the usual case; a filter would copy every column (1M events: ≈ 1 s)
        return unique, rows, hashes
    kept = None if hashes is None else hashes[new_mask]
    return unique.filter(pa.array(new_mask)), rows, kept


def new_message_ids(warehouse: Warehouse, batch: pa.Table, dedup_since: datetime) -> np.ndarray:
    """A boolean per row of ``batch``: True when its ``message_id`` is not stored since
    ``dedup_since``. Repeats inside ``batch`` are not considered (see ``first_per_message_id``).
    """
    return _new_ids(warehouse, batch.column("message_id").to_pylist(), None, dedup_since)


def _new_ids(
    warehouse: Warehouse, ids: list[str], hashes: np.ndarray | None, dedup_since: datetime
) -> np.ndarray:
    """:func:`new_message_ids` of ``ids`` (with their :func:`_hashes`, if known): only the
    ids the in-memory filter may have seen are looked up in the table."""
    fresh = np.ones(len(ids), dtype=bool)
    recent = _recent_ids(warehouse, dedup_since)
    if recent is None:
        suspects = np.arange(len(ids))
    elif ids:
        known = _hashes(ids) if hashes is None else hashes
        suspects = np.flatnonzero(recent.maybe_seen_hashes(known, _epoch_day(dedup_since)))
    else:
        suspects = np.zeros(0, dtype=np.int64)
    if len(suspects) == 0:
        return fresh
    asked = [ids[i] for i in suspects.tolist()]
    stored = stored_message_ids(warehouse, asked, dedup_since)
    fresh[suspects] = np.array([i not in stored for i in asked], dtype=bool)
    return fresh


def remember_stored(
    warehouse: Warehouse,
    batch: pa.Table,
    dedup_since: datetime,
    mark: DedupMark | None = None,
    hashes: np.ndarray | None = None,
) -> None:
    """Record that ``batch`` (``EVENTS`` rows) was just appended, for later dedup checks.

    Every append of the event table calls it (under ``EVENT_WRITER``); ``mark``: the
    dedup that chose the rows, when it was one made under the hold in force
    (:class:`WriterHold`); ``hashes``: the message ids' hashes, one per row, when the
    caller has them (:func:`unseen_rows_hashed`)."""
    hold = _hold
    if hold is not None:
        hold.appended(mark)
    recent = _recent_ids(warehouse, dedup_since)
    if recent is None or batch.num_rows == 0:
        return
    days = days_since_epoch(batch.column("received_at"))
    if hashes is not None:
        if len(hashes) != batch.num_rows:
            raise ValueError(f"{len(hashes)} message id hashes for {batch.num_rows} rows")
        recent.add_hashes(hashes, days)
    else:
        recent.add(batch.column("message_id").to_pylist(), days)
    recent.forget_before(_epoch_day(dedup_since))


def append_events(warehouse: Warehouse, batch: pa.Table, dedup_since: datetime) -> int:
    """Append ``batch`` (``EVENTS`` schema) minus messageIds stored since ``dedup_since``
    and minus repeats inside ``batch``. Returns the number of rows written.

    Serialised with every other event writer of the process (``EVENT_WRITER``).
    It stores rows as they are, except that a row without ``person_key`` gets
    its ONE_ID's key from the warehouse dictionary (``person_keys``; null if the
    ONE_ID was never stored by ingestion). Ingestion paths use
    ``zhiying.ingest.pipeline.store_events``, which also resolves ONE_IDs.
    """
    batch = first_per_message_id(batch.cast(EVENTS))
    if batch.num_rows == 0:
        return 0
    with EVENT_WRITER:
        fresh = batch.filter(pa.array(new_message_ids(warehouse, batch, dedup_since)))
        if fresh.num_rows == 0:
            return 0
        written = warehouse.insert_select("events", fresh, _keyed_select(warehouse))
        remember_stored(warehouse, fresh, dedup_since)
    return written


def _keyed_select(warehouse: Warehouse) -> str:
    """``__batch`` with a missing ``person_key`` taken from the ``person_keys`` dictionary.

    Only the batch's own ONE_IDs are read from the dictionary. A ONE_ID with two
    dictionary rows (a key written before an operational commit that then
    failed, and the key of the retry) takes the larger: ``nullif(…, 0)``
    because ClickHouse fills an unmatched LEFT JOIN with 0, not NULL.
    """
    q = '"' if warehouse.dialect == "duckdb" else "`"
    keyed = f"coalesce(b.{q}person_key{q}, nullif(d.k, 0))"
    cols = ", ".join(keyed if n == "person_key" else f"b.{q}{n}{q}" for n in EVENTS.names)
    return (
        f"SELECT {cols} FROM __batch AS b LEFT JOIN ("
        "SELECT one_id AS o, max(person_key) AS k FROM person_keys "
        "WHERE one_id IN (SELECT one_id FROM __batch) GROUP BY one_id"
        ") AS d ON d.o = b.one_id"
    )


def replace_aliases(warehouse: Warehouse, aliases: pa.Table | Iterable[tuple[str, str]]) -> None:
    """Point each ``alias`` ONE_ID (and its key) at its current owner, replacing older rows.

    ``aliases`` has ``ONE_ID_ALIASES`` columns, one row per alias
    (``zhiying.ingest.person_keys.keyed_aliases``); plain ``(alias, owner)``
    pairs take their keys from the ``person_keys`` dictionary.
    """
    if not isinstance(aliases, pa.Table):
        aliases = _keyed_pairs(warehouse, dict(aliases))
    if aliases.num_rows == 0:
        return
    names = aliases.column("alias").to_pylist()
    for start in range(0, len(names), 1000):
        chunk = names[start : start + 1000]
        quoted = ", ".join(string_literal(warehouse, a) for a in chunk)
        warehouse.execute(f"DELETE FROM one_id_aliases WHERE alias IN ({quoted})")
    for field in ONE_ID_ALIASES:  # rows without keys (tests, tools) get null keys
        if field.name not in aliases.column_names:
            aliases = aliases.append_column(field, pa.nulls(aliases.num_rows, field.type))
    warehouse.insert("one_id_aliases", aliases.select(ONE_ID_ALIASES.names).cast(ONE_ID_ALIASES))


def _keyed_pairs(warehouse: Warehouse, latest: dict[str, str]) -> pa.Table:
    keys: dict[str, int] = {}
    names = sorted(set(latest) | set(latest.values()))
    for start in range(0, len(names), 1000):
        quoted = ", ".join(string_literal(warehouse, o) for o in names[start : start + 1000])
        found = warehouse.query(
            f"SELECT one_id, max(person_key) AS k FROM person_keys WHERE one_id IN ({quoted}) "
            "GROUP BY one_id"
        ).to_pylist()
        keys.update((str(r["one_id"]), int(r["k"])) for r in found)
    return pa.table(
        {
            "alias": list(latest),
            "one_id": list(latest.values()),
            "alias_key": pa.array([keys.get(a) for a in latest], pa.int64()),
            "person_key": pa.array([keys.get(o) for o in latest.values()], pa.int64()),
        }
    )


RESOLVED_EVENTS_SQL = (
    "SELECT e.*, coalesce(a.one_id, e.one_id) AS person_id "
    "FROM events AS e LEFT JOIN one_id_aliases AS a ON a.alias = e.one_id"
)
"""Events with ``person_id``: the ONE_ID that owns each event now, after any merges."""
