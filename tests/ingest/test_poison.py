"""Poison rows in spool mode: a row the stores keep refusing is set aside (dead-lettered)
and the loader goes on; a store that refuses everything for a while loses nothing.

The refusals are the stores' own: a trigger on the operational ``identifiers`` table
(SQLite and PostgreSQL) that raises for one user, or for every insert; a CHECK
constraint on DuckDB's ``events`` table for one ``message_id``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pytest

from tests.ingest.conftest import count_events
from tests.ingest.test_spool import segments, spool_writer, table
from zhiying.ingest.pipeline import store_events
from zhiying.ingest.spool import read_dead_letters
from zhiying.ingest.writer import POISON_STRIKES, EventWriter, spool_directory
from zhiying.runtime import Stores

IDS = [f"p{i}" for i in range(8)]  # users u-p0 … u-p7; p3 is the poison row


def refuse_identifiers(stores: Stores, value: str | None) -> Callable[[], None]:
    """Make the operational store refuse inserting identifier ``value`` (every
    identifier when None) with a trigger; returns what drops it."""
    dialect = stores.engine.dialect.name
    with stores.engine.begin() as conn:
        if dialect == "sqlite":
            when = "" if value is None else f"WHEN NEW.value = '{value}'"
            conn.exec_driver_sql(
                f"CREATE TRIGGER refuse BEFORE INSERT ON identifiers {when} "
                "BEGIN SELECT RAISE(ABORT, 'refused'); END"
            )
        else:
            test = "TRUE" if value is None else f"NEW.value = '{value}'"
            conn.exec_driver_sql(
                "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                f"IF {test} THEN RAISE EXCEPTION 'refused'; END IF; RETURN NEW; END $$"
            )
            conn.exec_driver_sql(
                "CREATE TRIGGER refuse BEFORE INSERT ON identifiers "
                "FOR EACH ROW EXECUTE FUNCTION refuse()"
            )

    def drop() -> None:
        with stores.engine.begin() as conn:
            conn.exec_driver_sql(
                "DROP TRIGGER refuse"
                if dialect == "sqlite"
                else "DROP TRIGGER refuse ON identifiers"
            )

    return drop


def dead_files(stores: Stores) -> list[Path]:
    directory = spool_directory(stores)
    assert directory is not None
    return sorted((directory / "dead").glob("*.arrows"))


def wait_for(condition: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def check_poison_row_set_aside(stores: Stores, writer: EventWriter) -> Path:
    """8 rows with p3 refused: 7 stored, p3 in one dead-letter file, the loader goes on."""
    assert writer.submit(table(stores, *IDS)).result(10).inserted == 8
    assert writer.flush(60)
    assert count_events(stores) == 7
    assert count_events(stores, "message_id = 'p3'") == 0
    assert writer.dead_letters == 1
    (path,) = dead_files(stores)
    with pa.ipc.open_stream(path) as reader:
        dead = reader.read_all()
    assert dead.column("message_id").to_pylist() == ["p3"]
    assert dead.column("error_class")[0].as_py()
    assert "refused" not in dead.column("error")[0].as_py()  # type and frames, no message
    # The loader goes on: later events are stored.
    assert writer.submit(table(stores, "q1", "q2")).result(10).inserted == 2
    assert writer.flush(30)
    assert count_events(stores) == 9
    return path


def test_a_row_the_operational_store_refuses_is_dead_lettered_and_the_rest_stored(
    ops_stores: Stores, caplog: pytest.LogCaptureFixture
) -> None:
    stores = ops_stores
    drop = refuse_identifiers(stores, "u-p3")
    writer = spool_writer(stores, load_interval=0)
    writer.start()
    try:
        with caplog.at_level(logging.WARNING):
            path = check_poison_row_set_aside(stores, writer)
        assert "set aside 1 events" in caplog.text
        assert "u-p3" not in caplog.text and "refused'" not in caplog.text
    finally:
        writer.stop()
    assert segments(stores) == []
    # Re-import once the cause is fixed (docs/ingestion.md): the row is stored once.
    drop()
    assert store_events(stores, read_dead_letters(path)).inserted == 1
    assert store_events(stores, read_dead_letters(path)).inserted == 0
    assert count_events(stores, "message_id = 'p3'") == 1


def test_a_row_the_warehouse_refuses_is_dead_lettered_and_the_rest_stored(
    stores: Stores,
) -> None:
    # DuckDB has no triggers and no ADD CONSTRAINT: rebuild events with a CHECK.
    ddl = (
        stores.warehouse.query("SELECT sql FROM duckdb_tables() WHERE table_name = 'events'")
        .column(0)[0]
        .as_py()
    )
    checked = ddl.rstrip().rstrip(";").rstrip()
    assert checked.endswith(")")
    checked = checked[:-1] + ", CHECK (message_id <> 'p3'))"
    stores.warehouse.execute("DROP TABLE events")
    stores.warehouse.execute(checked)
    writer = spool_writer(stores, load_interval=0)
    writer.start()
    try:
        path = check_poison_row_set_aside(stores, writer)
    finally:
        writer.stop()
    assert segments(stores) == []
    assert read_dead_letters(path).column("message_id").to_pylist() == ["p3"]


def test_a_store_that_refuses_everything_for_a_while_loses_nothing(
    ops_stores: Stores,
) -> None:
    stores = ops_stores
    drop = refuse_identifiers(stores, None)
    writer = spool_writer(stores, load_interval=0)
    writer.start()
    try:
        assert writer.submit(table(stores, *IDS)).result(10).inserted == 8
        loader = writer.loader
        assert loader is not None
        # The whole group K times, then rounds of its halves, none accepted.
        wait_for(lambda: loader.failures >= POISON_STRIKES + 6)
        assert not writer.flush(0)
        drop()
        assert writer.flush(30)
    finally:
        writer.stop()
    assert count_events(stores) == 8
    assert writer.dead_letters == 0 and dead_files(stores) == []
    assert segments(stores) == []


def test_a_row_refused_for_a_short_while_is_stored_not_dead_lettered(
    ops_stores: Stores,
) -> None:
    stores = ops_stores
    drop = refuse_identifiers(stores, "u-p3")
    writer = spool_writer(stores, load_interval=0)
    writer.start()
    try:
        assert writer.submit(table(stores, *IDS)).result(10).inserted == 8
        loader = writer.loader
        assert loader is not None
        # The whole group K times, then its first half once (while the second is stored).
        wait_for(lambda: loader.failures >= POISON_STRIKES + 1)
        drop()
        assert writer.flush(30)
    finally:
        writer.stop()
    assert count_events(stores) == 8
    assert writer.dead_letters == 0 and dead_files(stores) == []


def test_a_lone_poison_row_is_set_aside_once_newer_events_are_stored(stores: Stores) -> None:
    """A request of one refused row, then a steady stream: the loader takes the newer
    events in (they do not wait behind it) and they witness that the store works."""
    refuse_identifiers(stores, "u-p3")
    writer = spool_writer(stores, load_interval=0)
    writer.start()
    stop = threading.Event()
    sent: list[str] = []

    def stream() -> None:
        n = 0
        while not stop.is_set():
            sent.append(f"s{n}")
            writer.submit(table(stores, f"s{n}")).result(10)
            n += 1
            time.sleep(0.1)

    sender = threading.Thread(target=stream)
    try:
        assert writer.submit(table(stores, "p3")).result(10).inserted == 1
        sender.start()
        wait_for(lambda: writer.dead_letters == 1)
        stop.set()
        sender.join(10)
        assert writer.flush(30)
    finally:
        stop.set()
        writer.stop()
    assert count_events(stores) == len(sent) > 0
    assert count_events(stores, "message_id = 'p3'") == 0
    assert [read_dead_letters(p).num_rows for p in dead_files(stores)] == [1]
