"""Spool mode of the server's writer: answers once spooled, one loader storing large
groups, read-your-writes by flush, back-pressure, retries, recovery after a crash."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
import sqlalchemy as sa

from tests.conftest import make_stores
from tests.ingest.conftest import count_events
from zhiying.clock import ManualClock
from zhiying.ingest.models import BatchContext, rows_to_table, validate_batch
from zhiying.ingest.pipeline import StoreResult, store_events
from zhiying.ingest.spool import Spool
from zhiying.ingest.workers import table_to_ipc
from zhiying.ingest.writer import (
    DIRECT_LINGER,
    SWITCH_INTERVAL,
    EventWriter,
    WriterBusy,
    spool_directory,
)
from zhiying.runtime import Stores
from zhiying.store.tables import identifiers

ROOT = Path(__file__).resolve().parents[2]


def table(stores: Stores, *ids: str, kind: str = "track") -> pa.Table:
    messages: list[dict[str, Any]] = [
        {"type": "track", "event": "E", "messageId": i, "userId": f"u-{i}"}
        if kind == "track"
        else {
            "type": "identify",
            "messageId": i,
            "userId": f"u-{i}",
            "traits": {"phone": f"+86138{n:08d}"},
        }
        for n, i in enumerate(ids)
    ]
    rows, rejected = validate_batch(messages, BatchContext(received_at=stores.clock.now()))
    assert not rejected
    return rows_to_table(rows)


def segments(stores: Stores) -> list[Path]:
    directory = spool_directory(stores)
    assert directory is not None
    return sorted(directory.glob("*.log"))


class Gate:
    """``store_events`` that waits for ``open`` (the loader is held back)."""

    def __init__(self) -> None:
        self.open = threading.Event()
        self.calls: list[int] = []

    def __call__(self, stores: Stores, events: pa.Table) -> StoreResult:
        assert self.open.wait(30)
        self.calls.append(events.num_rows)
        return store_events(stores, events)


@pytest.fixture
def gate() -> Iterator[Gate]:
    g = Gate()
    yield g
    g.open.set()


def spool_writer(stores: Stores, **kwargs: Any) -> EventWriter:
    kwargs.setdefault("linger", 0)
    return EventWriter(stores, spool=True, validate_in_worker=False, **kwargs)


def test_answers_come_from_the_spool_and_flush_makes_them_readable(
    ops_stores: Stores, gate: Gate
) -> None:
    stores = ops_stores
    writer = spool_writer(stores, store=gate, load_interval=60)
    writer.start()
    try:
        first = writer.submit(table(stores, "m1", "m2", kind="identify")).result(10)
        assert (first.inserted, first.duplicates) == (2, 0)
        assert count_events(stores) == 0  # answered, durable in the spool, not stored yet
        assert segments(stores) and writer.backlog_rows == 2
        # A retry while they wait is a duplicate: dedup sees the spooled ids.
        again = writer.submit(table(stores, "m2", "m3", "m3")).result(10)
        assert (again.inserted, again.duplicates) == (1, 2)
        assert not writer.flush(0.2)  # bounded: the loader is held back
        gate.open.set()
        assert writer.flush(10)
        assert count_events(stores) == 3
        assert count_events(stores, "message_id = 'm3'") == 1
        with stores.engine.connect() as conn:  # the operational store has them too
            phones = conn.execute(
                sa.select(sa.func.count())
                .select_from(identifiers)
                .where(identifiers.c.kind == "phone")
            ).scalar_one()
        assert phones == 2
        # One store_events call for both requests (the loader's group).
        assert gate.calls == [3]
        later = writer.submit(table(stores, "m1", "m4")).result(10)
        assert (later.inserted, later.duplicates) == (1, 1)
    finally:
        gate.open.set()
        writer.stop()
    assert count_events(stores) == 4
    assert segments(stores) == []  # everything stored: the spool is emptied


def test_the_loader_stores_in_large_groups(stores: Stores) -> None:
    writer = spool_writer(stores, load_rows=60, load_interval=30)
    writer.start()
    try:
        for n in range(6):
            ids = [f"g{n}-{i}" for i in range(10)]
            assert writer.submit(table(stores, *ids)).result(10).inserted == 10
        assert writer.flush(10)
        assert writer.loader is not None and list(writer.loader.loads) == [60]
    finally:
        writer.stop()
    assert count_events(stores) == 60


def test_a_loader_behind_by_more_than_the_backlog_limit_refuses_with_busy(
    stores: Stores, gate: Gate
) -> None:
    writer = spool_writer(stores, store=gate, load_interval=0, max_backlog_rows=5)
    writer.start()
    try:
        assert writer.submit(table(stores, "b1", "b2", "b3")).result(10).inserted == 3
        with pytest.raises(WriterBusy):
            writer.submit(table(stores, "b4", "b5", "b6"))
        gate.open.set()
        assert writer.flush(10)
        assert writer.submit(table(stores, "b4", "b5", "b6")).result(10).inserted == 3
    finally:
        gate.open.set()
        writer.stop()
    assert count_events(stores) == 6


def test_answered_events_are_retried_until_storing_works(stores: Stores) -> None:
    writer = spool_writer(stores, load_interval=0)
    writer.start()
    try:
        stores.warehouse.execute("ALTER TABLE events RENAME TO events_away")
        assert writer.submit(table(stores, "r1", "r2")).result(10).inserted == 2
        assert not writer.flush(0.5)  # the loader fails and retries
        assert writer.loader is not None and writer.loader.failures >= 1
        stores.warehouse.execute("ALTER TABLE events_away RENAME TO events")
        assert writer.flush(10)
    finally:
        writer.stop()
    assert count_events(stores) == 2
    assert segments(stores) == []


def test_spool_records_survive_reopening_and_a_torn_tail_is_ignored(
    stores: Stores, tmp_path: Path
) -> None:
    spool = Spool(tmp_path / "spool", segment_bytes=1)  # a new segment per append
    first = spool.append([table(stores, "s1")])
    second = spool.append([table(stores, "s2"), table(stores, "s3")])
    assert second == first + 1
    spool.close(empty=False)
    with (tmp_path / "spool" / f"{second:012d}.log").open("ab") as f:
        f.write(b"\x00\x00\x10\x00torn")  # a record cut short by a crash
    reopened = Spool(tmp_path / "spool")
    read = [(n, t.column("message_id").to_pylist()) for n, t in reopened.records()]
    assert read == [(first, ["s1"]), (second, ["s2"]), (second, ["s3"])]
    reopened.release(second)  # the first segment is stored
    assert [n for n, _ in reopened.records()] == [second, second]


def test_events_left_in_the_spool_are_stored_at_start_once(stores: Stores) -> None:
    directory = spool_directory(stores)
    assert directory is not None
    spool = Spool(directory)
    events = table(stores, "a1", "a2", "a3")
    store_events(stores, events.slice(0, 2))  # stored before the crash, not released
    spool.append([events])
    spool.close(empty=False)
    writer = spool_writer(stores)
    writer.start()
    writer.stop()
    assert count_events(stores) == 3
    assert count_events(stores, "message_id = 'a1'") == 1
    assert segments(stores) == []


CRASHING_SERVER = textwrap.dedent(
    """
    import json, os, signal, sys, threading
    from datetime import UTC, datetime
    from pathlib import Path
    from zhiying.clock import ManualClock
    from zhiying.config import Settings
    from zhiying.ingest.models import BatchContext, rows_to_table, validate_batch
    from zhiying.ingest.pipeline import store_events
    from zhiying.ingest.writer import EventWriter
    from zhiying.runtime import open_stores

    clock = ManualClock(datetime(2026, 11, 1, 9, 0, tzinfo=UTC))
    stores = open_stores(Settings(data_dir=Path(sys.argv[1])), clock=clock)
    calls = []
    def store(stores, events):
        calls.append(events.num_rows)
        if len(calls) > 1:
            threading.Event().wait()  # the second load never ends
        return store_events(stores, events)
    writer = EventWriter(stores, spool=True, linger=0, validate_in_worker=False,
                         store=store, load_interval=0, max_load_rows=50)
    writer.start()
    answered = []
    for n in range(6):
        messages = [
            {"type": "identify", "messageId": f"c{n}-{i}", "userId": f"p{n}-{i}",
             "traits": {"phone": f"+8613800{n:02d}{i:04d}", "city": "Chengdu"}}
            for i in range(50)
        ]
        rows, _ = validate_batch(messages, BatchContext(received_at=clock.now()))
        written = writer.submit(rows_to_table(rows)).result(30)
        answered += [m["messageId"] for m in messages][: written.inserted]
    print(json.dumps(answered), flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
    """
)


def test_a_crash_loses_no_answered_event_and_stores_none_twice(
    tmp_path: Path, clock: ManualClock
) -> None:
    done = subprocess.run(
        [sys.executable, "-c", CRASHING_SERVER, str(tmp_path / "data")],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert done.returncode == -9, done.stderr
    answered: list[Any] = json.loads(done.stdout)
    assert len(answered) == 300
    stores = make_stores(tmp_path, clock)
    try:
        assert segments(stores), "the crash should leave events in the spool"
        assert count_events(stores) < 300
        writer = spool_writer(stores)
        writer.start()  # stores what the spool holds before serving
        try:
            stored = stores.warehouse.query("SELECT message_id FROM events")
            assert sorted(stored.column(0).to_pylist()) == sorted(answered)
            orphans = stores.warehouse.query(
                "SELECT count(*) FROM events WHERE person_key IS NULL "
                "OR person_key NOT IN (SELECT person_key FROM person_keys)"
            )
            assert orphans.column(0)[0].as_py() == 0
            # The client's retry of an answered batch is a duplicate.
            retry = writer.submit(table(stores, answered[0])).result(30)
            assert (retry.inserted, retry.duplicates) == (0, 1)
        finally:
            writer.stop()
        assert segments(stores) == []
    finally:
        stores.close()


def test_direct_mode_answers_after_storing(wh_stores: Stores) -> None:
    """``spool=False`` (or a warehouse other than a DuckDB file: chdb here) stores
    before answering, so a read right after the answer sees the events."""
    stores = wh_stores
    writer = EventWriter(stores, spool=False, linger=0, validate_in_worker=False)
    assert writer.loader is None
    writer.start()
    try:
        assert writer.submit(table(stores, "d1", "d2")).result(30).inserted == 2
        assert count_events(stores) == 2
        assert writer.flush(0) and writer.backlog_rows == 0
    finally:
        writer.stop()
    if not stores.warehouse.url.startswith("duckdb://"):
        assert spool_directory(stores) is None  # spool mode needs an embedded DuckDB file
        assert EventWriter(stores, spool=True).loader is None


def test_a_writer_stopped_without_starting_keeps_the_spool(stores: Stores) -> None:
    directory = spool_directory(stores)
    assert directory is not None
    spool = Spool(directory)
    spool.append([table(stores, "k1")])
    spool.close(empty=False)
    spool_writer(stores).stop()  # never started: never read the spool
    assert len(segments(stores)) == 1


def test_the_workers_ipc_bytes_are_spooled_as_they_are_unless_rows_are_dropped(
    stores: Stores, gate: Gate
) -> None:
    writer = spool_writer(stores, store=gate, load_interval=60)
    writer.start()
    try:
        whole = table(stores, "w1", "w2")
        marked = whole.replace_schema_metadata({"from": "worker"})  # tells the bytes apart
        writer.submit(whole, ipc=table_to_ipc(marked)).result(10)
        # A repeat (w2) is dropped: the bytes no longer describe the rows to spool.
        again = table(stores, "w2", "w3")
        written = writer.submit(again, ipc=table_to_ipc(again)).result(10)
        assert (written.inserted, written.duplicates) == (1, 1)
        directory = spool_directory(stores)
        assert directory is not None
        records = [t for _, t in Spool(directory).records()]
        assert [t.column("message_id").to_pylist() for t in records] == [["w1", "w2"], ["w3"]]
        assert records[0].equals(whole)
        assert records[0].schema.metadata == {b"from": b"worker"}
        assert records[1].schema.metadata is None
        gate.open.set()
        assert writer.flush(10)
    finally:
        gate.open.set()
        writer.stop()
    assert count_events(stores) == 3
    assert count_events(stores, "message_id = 'w2'") == 1


def test_only_direct_mode_waits_for_more_requests_by_default(stores: Stores) -> None:
    spooled = EventWriter(stores, spool=True, validate_in_worker=False)
    direct = EventWriter(stores, spool=False, validate_in_worker=False)
    assert spooled.loader is not None and spooled.linger == 0
    assert direct.loader is None and direct.linger == DIRECT_LINGER > 0
    assert EventWriter(stores, spool=True, linger=0.01, validate_in_worker=False).linger == 0.01


def test_a_running_writer_shortens_the_thread_switch_interval_until_it_stops(
    stores: Stores,
) -> None:
    before = sys.getswitchinterval()
    writer = spool_writer(stores)
    writer.start()
    try:
        assert sys.getswitchinterval() == min(before, SWITCH_INTERVAL) < 0.005
    finally:
        writer.stop()
    assert sys.getswitchinterval() == before
