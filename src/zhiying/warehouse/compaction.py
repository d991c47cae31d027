"""Clustering DuckDB's event table by (type, event, timestamp), so scans skip row groups.

Why: DuckDB skips a row group (122,880 rows) when its min/max statistics exclude a
filter. Events arrive in time order, so every row group holds every event name
and ``event = 'Order Completed'`` reads all of them: with 20M events, "bought
Shiseido at least twice" scanned 163 of 163 row groups to find 2M orders. Sorted
by event, then time, that scan reads the order rows only, and a window reads
only that event's rows of the window.

How: the rows appended since the last compaction (the *tail*: ``rowid`` above
the watermark in ``event_compactions``) are inserted again, sorted, and the
originals deleted, in one transaction holding ``EVENT_WRITER``; DuckDB's
checkpoint drops the emptied row groups. The work is proportional to the tail,
not the table: the table becomes a series of sorted runs, one per compaction,
and a run's row groups each hold one event name (or a few) as long as the run
is large. Events are append-only, so a run stays sorted. Readers are not
blocked: a query sees the table as it was when it started.

The row count is checked inside the transaction before it commits, so a
compaction either moves every row of the tail or changes nothing. The watermark
is written after the commit; if the process dies in between, the next
compaction sorts that run again (harmless). DuckDB keeps ``rowid`` stable
(checked across checkpoints and reopening); a table rebuilt under new rowids
invalidates the watermark (see :func:`_watermark`).

ClickHouse needs none of this (its MergeTree keeps parts sorted by the table's
``ORDER BY``): :func:`compact_events` returns ``None`` there.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import pyarrow as pa

from zhiying.clock import naive_utc
from zhiying.warehouse.base import Warehouse, WarehouseError
from zhiying.warehouse.duckdb_engine import DuckDBWarehouse
from zhiying.warehouse.events import EVENT_WRITER
from zhiying.warehouse.schema import EVENT_COMPACTIONS

SORT_KEY = "type, event, timestamp"
"""The clustering: identify/page/screen rows apart from tracks, then by event name
(what nearly every segment condition filters on), then time (its window)."""

MIN_ROWS = 1_000_000
"""Tail size at which the worker compacts at once (about 8 row groups); a smaller
tail waits until :data:`MAX_AGE` after the last compaction."""

MAX_AGE = timedelta(days=1)
"""The worker compacts any tail once the last compaction is this old, so recent
events, which most windows read, are sorted at least daily."""


@dataclass(frozen=True)
class Compaction:
    """What one compaction did: ``rows`` of the tail sorted, of ``table_rows``."""

    rows: int
    table_rows: int
    through_rowid: int
    seconds: float


@dataclass(frozen=True)
class Layout:
    """The event table's clustering: rows not yet sorted and the last compaction."""

    tail_rows: int
    table_rows: int
    last_compacted_at: datetime | None

    def due(self, now: datetime, min_rows: int = MIN_ROWS, max_age: timedelta = MAX_AGE) -> bool:
        """Whether the worker should compact now (see :data:`MIN_ROWS`, :data:`MAX_AGE`)."""
        if self.tail_rows == 0:
            return False
        if self.tail_rows >= min_rows or self.last_compacted_at is None:
            return True
        return naive_utc(now) - self.last_compacted_at >= max_age


def layout(warehouse: Warehouse) -> Layout | None:
    """The event table's clustering, or ``None`` where the engine sorts by itself."""
    if not isinstance(warehouse, DuckDBWarehouse):
        return None
    mark, at = _watermark(warehouse)
    counts = warehouse.query(
        f"SELECT count(*) FILTER (WHERE rowid > {mark}) AS tail, count(*) AS total FROM events"
    ).to_pylist()[0]
    return Layout(int(counts["tail"]), int(counts["total"]), at)


def compact_events(warehouse: Warehouse, now: datetime, *, min_rows: int = 1) -> Compaction | None:
    """Sort the tail of the event table into place; ``None`` if it has fewer than
    ``min_rows`` rows or the engine sorts by itself (ClickHouse).

    Holds ``EVENT_WRITER`` throughout: event writers of this process wait (HTTP
    ingestion keeps answering from its spool), readers do not. Costs about 3 µs
    of CPU per tail row; the first compaction of a warehouse sorts all of it.
    """
    if not isinstance(warehouse, DuckDBWarehouse):
        return None
    with EVENT_WRITER:
        started = time.perf_counter()
        mark, _ = _watermark(warehouse)
        with warehouse.transaction() as cur:
            high, total, waiting = _ints(
                cur.execute(
                    f"SELECT max(rowid), count(*), count(*) FILTER (WHERE rowid > {mark}) "
                    "FROM events"
                ).fetchone()
            )
            if waiting == 0 or waiting < min_rows:
                return None
            tail = f"rowid > {mark} AND rowid <= {high}"
            cur.execute(f"INSERT INTO events SELECT * FROM events WHERE {tail} ORDER BY {SORT_KEY}")
            moved = _ints(cur.execute(f"DELETE FROM events WHERE {tail}").fetchone())[0]
            after = _ints(cur.execute("SELECT count(*) FROM events").fetchone())[0]
            if after != total or moved != waiting:
                raise WarehouseError(
                    f"compaction would leave {after} events of {total} (moved {moved} of "
                    f"{waiting}); rolled back"
                )
        through = int(warehouse.query("SELECT max(rowid) AS r FROM events").column("r")[0].as_py())
        seconds = time.perf_counter() - started
        record = pa.table(
            {
                "compacted_at": [naive_utc(now)],
                "through_rowid": [through],
                "sorted_rows": [total],
                "rows": [moved],
                "seconds": [seconds],
            },
            schema=EVENT_COMPACTIONS,
        )
        warehouse.insert("event_compactions", record)
        return Compaction(moved, total, through, seconds)


def _watermark(warehouse: DuckDBWarehouse) -> tuple[int, datetime | None]:
    """The rowid up to which events are sorted (-1: none), and when that was recorded.

    A record is trusted only while exactly its ``sorted_rows`` events have a rowid at
    or below its mark. Events are never deleted, so that count changes only if the
    table was rebuilt with new rowids (``ensure_tables`` adding a derived column
    copies it, in the same order, under rowids from 0): the mark then means
    nothing, and everything counts as tail again (sorting sorted runs again is
    only wasted work).
    """
    # The last record written (a stale one may have a larger mark than its successors).
    last = warehouse.query(
        "SELECT through_rowid, sorted_rows, compacted_at FROM event_compactions "
        "ORDER BY rowid DESC LIMIT 1"
    ).to_pylist()
    if not last:
        return -1, None
    mark = int(last[0]["through_rowid"])
    at: datetime | None = last[0]["compacted_at"]
    below = warehouse.query(f"SELECT count(*) AS n FROM events WHERE rowid <= {mark}")
    if int(below.column("n")[0].as_py()) != int(last[0]["sorted_rows"]):
        return -1, at
    return mark, at


def _ints(row: tuple[Any, ...] | None) -> list[int]:
    """A fetched row of counts as ints (``max(rowid)`` of an empty table: -1)."""
    assert row is not None
    return [-1 if v is None else int(v) for v in row]
