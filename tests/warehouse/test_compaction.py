"""Event-table compaction (``warehouse.compaction``): the tail is sorted into place, no row
is lost or doubled (also while ingestion appends), and scans then skip row groups."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from tests.identity.events import ev, table
from zhiying.cli.main import app
from zhiying.config import Settings
from zhiying.runtime import Stores, open_stores
from zhiying.warehouse import Warehouse
from zhiying.warehouse.compaction import Layout, compact_events, layout
from zhiying.warehouse.events import append_events

NOW = datetime(2026, 11, 1, 9, 0, tzinfo=UTC)
SINCE = datetime(2026, 1, 1, tzinfo=UTC)
NAMES = ("Application Opened", "Product Viewed", "Order Completed")


def _generate(wh: Warehouse, start: int, count: int) -> None:
    """``count`` track events in arrival order, names interleaved as real traffic has them."""
    wh.execute(f"""
        INSERT INTO events (message_id, type, event, one_id, timestamp, received_at)
        SELECT 'm' || i, 'track',
               ['Application Opened', 'Product Viewed', 'Order Completed'][1 + i % 3],
               'p' || (i % 997),
               TIMESTAMP '2026-10-01' + INTERVAL (i) SECOND,
               TIMESTAMP '2026-10-01' + INTERVAL (i) SECOND
        FROM range({start}, {start + count}) r(i)
    """)


def _rows(wh: Warehouse) -> list[tuple[Any, ...]]:
    t = wh.query("SELECT message_id, type, event, one_id, timestamp FROM events ORDER BY 1")
    return list(zip(*(t.column(i).to_pylist() for i in range(t.num_columns)), strict=True))


def _in_storage_order(wh: Warehouse) -> list[tuple[Any, ...]]:
    t = wh.query("SELECT type, event, timestamp, message_id FROM events ORDER BY rowid")
    return list(zip(*(t.column(i).to_pylist() for i in range(t.num_columns)), strict=True))


def _row_groups_scanned(wh: Warehouse, where: str) -> tuple[int, int]:
    plan = wh.query(f"EXPLAIN (ANALYZE, FORMAT JSON) SELECT count(*) FROM events WHERE {where}")
    node = json.loads(plan.column(1)[0].as_py())["operator"][0]
    while node["type"] != "TABLE_SCAN":
        (node,) = node["children"]
    return int(node["row_groups_scanned"]), int(node["total_row_groups_to_scan"])


def test_compaction_sorts_the_tail_and_keeps_every_row(stores: Stores) -> None:
    wh = stores.warehouse
    _generate(wh, 0, 5000)
    before = _rows(wh)

    done = compact_events(wh, NOW)

    assert done is not None and done.rows == 5000 and done.table_rows == 5000
    assert _rows(wh) == before
    stored = _in_storage_order(wh)
    assert stored == sorted(stored, key=lambda r: (r[0], r[1], r[2]))
    assert layout(wh) == Layout(
        tail_rows=0, table_rows=5000, last_compacted_at=NOW.replace(tzinfo=None)
    )


def test_a_second_compaction_sorts_only_what_came_after_the_first(stores: Stores) -> None:
    wh = stores.warehouse
    _generate(wh, 0, 3000)
    compact_events(wh, NOW)
    first_run = _in_storage_order(wh)
    _generate(wh, 3000, 2000)
    assert layout(wh) == Layout(2000, 5000, NOW.replace(tzinfo=None))

    done = compact_events(wh, NOW + timedelta(hours=1))

    assert done is not None and done.rows == 2000
    stored = _in_storage_order(wh)
    assert stored[:3000] == first_run
    tail = stored[3000:]
    assert tail == sorted(tail, key=lambda r: (r[0], r[1], r[2]))
    assert {r[3] for r in tail} == {f"m{i}" for i in range(3000, 5000)}
    assert compact_events(wh, NOW + timedelta(hours=2)) is None  # nothing new


def test_a_table_rebuilt_under_new_rowids_counts_as_never_sorted(stores: Stores) -> None:
    wh = stores.warehouse
    _generate(wh, 0, 3000)
    compact_events(wh, NOW)
    # As ``ensure_tables`` adding a derived column does: a copy in the same order,
    # renamed, whose rowids start again from 0 (below the recorded mark).
    wh.execute(
        "BEGIN; CREATE TABLE copy AS SELECT * FROM events ORDER BY rowid; DROP TABLE events; "
        "ALTER TABLE copy RENAME TO events; COMMIT"
    )
    _generate(wh, 3000, 500)

    assert layout(wh) == Layout(3500, 3500, NOW.replace(tzinfo=None))
    done = compact_events(wh, NOW + timedelta(hours=1))

    assert done is not None and done.rows == 3500
    stored = _in_storage_order(wh)
    assert stored == sorted(stored, key=lambda r: (r[0], r[1], r[2]))
    assert layout(wh) == Layout(0, 3500, (NOW + timedelta(hours=1)).replace(tzinfo=None))
    # The stale record's mark may exceed the new one's: the newest record counts.
    wh.execute("UPDATE event_compactions SET through_rowid = 10 ** 9 WHERE rows = 3000")
    _generate(wh, 3500, 10)
    assert layout(wh) == Layout(10, 3510, (NOW + timedelta(hours=1)).replace(tzinfo=None))


def test_a_tail_smaller_than_min_rows_is_left_alone(stores: Stores) -> None:
    wh = stores.warehouse
    _generate(wh, 0, 100)
    assert compact_events(wh, NOW, min_rows=101) is None
    assert layout(wh) == Layout(100, 100, None)
    assert compact_events(wh, NOW, min_rows=100) is not None


def test_after_compaction_a_scan_for_one_event_skips_the_other_events_row_groups(
    stores: Stores,
) -> None:
    wh = stores.warehouse
    _generate(wh, 0, 500_000)  # 4 row groups of 122,880 rows and a bit
    wh.execute("CHECKPOINT")
    orders = "event = 'Order Completed'"
    scanned, total = _row_groups_scanned(wh, orders)
    assert scanned == total == 5  # arrival order: every row group holds every name

    compact_events(wh, NOW)
    wh.execute("CHECKPOINT")

    scanned, total = _row_groups_scanned(wh, orders)
    assert scanned <= 3 < total  # a third of the rows: 2 row groups, 3 if the run is split
    # Within one name, time is sorted too: a recent window skips the name's older groups.
    views = "event = 'Product Viewed'"
    recent = f"{views} AND timestamp >= TIMESTAMP '2026-10-06 12:00'"  # its last 8,000 rows
    assert _row_groups_scanned(wh, recent)[0] < _row_groups_scanned(wh, views)[0]


def test_events_appended_while_compacting_are_all_kept_once(stores: Stores) -> None:
    wh = stores.warehouse
    _generate(wh, 0, 200_000)
    errors: list[BaseException] = []

    def ingest() -> None:
        try:
            for b in range(20):
                rows = [ev(f"live-{b}-{i}", user_id=f"u{i}", minute=i) for i in range(50)]
                append_events(wh, table(rows), SINCE)
        except BaseException as exc:  # reported below, not lost in the thread
            errors.append(exc)

    writer = threading.Thread(target=ingest)
    writer.start()
    compact_events(wh, NOW)
    writer.join()
    compact_events(wh, NOW + timedelta(hours=1))

    assert errors == []
    counts = wh.query(
        "SELECT count(*) AS n, count(DISTINCT message_id) AS d, "
        "count(*) FILTER (WHERE message_id LIKE 'live-%') AS live FROM events"
    ).to_pylist()[0]
    assert counts == {"n": 201_000, "d": 201_000, "live": 1000}


def test_layout_is_due_for_a_large_tail_or_a_day_after_the_last_compaction() -> None:
    last = NOW.replace(tzinfo=None)
    assert not Layout(0, 10, None).due(NOW)
    assert Layout(5, 10, None).due(NOW)  # never compacted
    assert Layout(1_000_000, 2_000_000, last).due(NOW)
    assert not Layout(999, 2_000_000, last).due(NOW + timedelta(hours=23))
    assert Layout(999, 2_000_000, last).due(NOW + timedelta(days=1))


@pytest.mark.parametrize("warehouse_url", ["chdb"], indirect=True)
def test_clickhouse_sorts_by_itself_and_is_not_compacted(wh_stores: Stores) -> None:
    append_events(wh_stores.warehouse, table([ev("a", user_id="u1")]), SINCE)
    assert layout(wh_stores.warehouse) is None
    assert compact_events(wh_stores.warehouse, NOW) is None
    events = wh_stores.warehouse.query(
        "SELECT sorting_key, (SELECT groupArray(name) FROM system.data_skipping_indices "
        "WHERE database = currentDatabase() AND table = 'events') AS skip "
        "FROM system.tables WHERE database = currentDatabase() AND name = 'events'"
    ).to_pylist()
    assert events == [{"sorting_key": "type, event, timestamp", "skip": ["received_at_minmax"]}]


def test_db_compact_command_sorts_the_tail_then_finds_nothing_to_do(data_dir: Path) -> None:
    stores = open_stores(Settings(data_dir=data_dir))
    _generate(stores.warehouse, 0, 300)
    stores.close()
    first = CliRunner().invoke(app, ["db", "compact", "--min-rows", "301"])
    assert first.exit_code == 0, first.output
    assert "left alone: fewer than 301 events to sort" in first.output
    second = CliRunner().invoke(app, ["db", "compact"])
    assert "300 of 300 events to sort" in second.output
    assert "sorted 300 events" in second.output
    third = CliRunner().invoke(app, ["db", "compact"])
    assert "all 300 events are sorted already" in third.output
