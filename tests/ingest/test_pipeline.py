"""``store_events`` (dedup, ONE_ID, traits, warehouse) and the group-commit writer."""

from __future__ import annotations

import threading
from datetime import timedelta
from typing import Any

import pyarrow as pa
import pytest
import sqlalchemy as sa

from tests.ingest.conftest import count_events
from zhiying.clock import ManualClock
from zhiying.ingest.models import BatchContext, rows_to_table, validate_batch
from zhiying.ingest.pipeline import StoreResult, store_events
from zhiying.ingest.writer import EventWriter, WriterBusy
from zhiying.runtime import Stores


def events(stores: Stores, *messages: dict[str, Any]) -> pa.Table:
    rows, rejected = validate_batch(
        list(messages), BatchContext(received_at=stores.clock.now(), source="test")
    )
    assert not rejected, rejected
    return rows_to_table(rows)


def msg(message_id: str, **fields: Any) -> dict[str, Any]:
    return {"type": "track", "event": "E", "messageId": message_id, **fields}


def test_store_resolves_one_ids_and_keeps_traits(ops_stores: Stores) -> None:
    stores = ops_stores
    result = store_events(
        stores,
        events(
            stores,
            msg("m1", anonymousId="a1"),
            {
                "type": "identify",
                "messageId": "m2",
                "userId": "u1",
                "anonymousId": "a1",
                "traits": {"city": "Chongqing", "phone": "13800138000"},
            },
        ),
    )
    assert (result.inserted, result.duplicates) == (2, 0)
    one_ids = stores.warehouse.query("SELECT DISTINCT one_id FROM events").column(0).to_pylist()
    assert len(one_ids) == 1 and one_ids[0]
    updates = stores.warehouse.query("SELECT key, value, one_id FROM trait_updates ORDER BY key")
    assert updates.to_pylist() == [
        {"key": "city", "value": "Chongqing", "one_id": one_ids[0]},
        {"key": "phone", "value": "13800138000", "one_id": one_ids[0]},
    ]
    with stores.engine.connect() as conn:
        cities = conn.execute(sa.text("SELECT one_id FROM traits WHERE key = 'city'")).all()
    assert [c[0] for c in cities] == one_ids


def test_merge_points_the_old_one_id_at_the_winner(wh_stores: Stores) -> None:
    stores = wh_stores
    store_events(stores, events(stores, msg("m1", anonymousId="a1")))
    store_events(stores, events(stores, msg("m2", userId="u1")))
    result = store_events(stores, events(stores, msg("m3", userId="u1", anonymousId="a1")))
    assert result.merges == 1
    owners = stores.warehouse.query(
        "SELECT DISTINCT coalesce(a.one_id, e.one_id) AS person "
        "FROM events e LEFT JOIN one_id_aliases a ON a.alias = e.one_id"
    )
    assert owners.num_rows == 1


def test_replayed_batch_changes_nothing(wh_stores: Stores) -> None:
    stores = wh_stores
    batch = events(
        stores,
        msg("m1", userId="u1"),
        {"type": "identify", "messageId": "m2", "userId": "u1", "traits": {"vip": True}},
    )
    assert store_events(stores, batch).inserted == 2
    again = store_events(stores, batch)
    assert (again.inserted, again.duplicates, again.merges) == (0, 2, 0)
    assert count_events(stores) == 2
    traits = stores.warehouse.query("SELECT count(*) FROM trait_updates").column(0)[0].as_py()
    assert traits == 1


def test_duplicates_inside_a_batch_keep_the_first(stores: Stores) -> None:
    batch = events(stores, msg("m1", userId="u1", event="First"), msg("m1", userId="u1"))
    result = store_events(stores, batch)
    assert (result.inserted, result.duplicates) == (1, 1)
    assert result.stored.tolist() == [True, False]
    names = stores.warehouse.query("SELECT event FROM events").column(0).to_pylist()
    assert names == ["First"]


def test_message_id_outside_the_dedup_window_is_stored_again(
    stores: Stores, clock: ManualClock
) -> None:
    store_events(stores, events(stores, msg("m1", userId="u1")))
    clock.advance(timedelta(days=stores.settings.dedup_window_days - 1))
    assert store_events(stores, events(stores, msg("m1", userId="u1"))).duplicates == 1
    clock.advance(timedelta(days=2))
    assert store_events(stores, events(stores, msg("m1", userId="u1"))).inserted == 1
    assert count_events(stores) == 2


def test_dedup_sees_events_stored_before_the_process_started(
    tmp_path: Any, clock: ManualClock
) -> None:
    from tests.conftest import make_stores

    first = make_stores(tmp_path, clock)
    store_events(first, events(first, msg("m1", userId="u1")))
    first.close()
    reopened = make_stores(tmp_path, clock)
    try:
        result = store_events(reopened, events(reopened, msg("m1", userId="u1")))
        assert result.duplicates == 1
    finally:
        reopened.close()


def test_empty_batch_is_a_no_op(stores: Stores) -> None:
    assert store_events(stores, events(stores)) == StoreResult(0, 0, 0, 0)
    assert count_events(stores) == 0


def test_writer_groups_concurrent_requests_into_one_commit(stores: Stores) -> None:
    writer = EventWriter(stores, linger=0.3)
    writer.start()
    try:
        rows_a, _ = validate_batch(
            [msg("m1", userId="u1"), msg("m2", userId="u2")],
            BatchContext(received_at=stores.clock.now()),
        )
        rows_b, _ = validate_batch(
            [msg("m2", userId="u2"), msg("m3", userId="u3")],
            BatchContext(received_at=stores.clock.now()),
        )
        a = writer.submit(rows_a)
        b = writer.submit(rows_b)
        first, second = a.result(timeout=30), b.result(timeout=30)
    finally:
        writer.stop()
    assert writer.commits == 1
    assert (first.inserted, first.duplicates) == (2, 0)
    assert (second.inserted, second.duplicates) == (1, 1)
    assert count_events(stores) == 3


def test_writer_refuses_when_too_much_is_pending(stores: Stores) -> None:
    gate = threading.Event()

    def gated_store(s: Stores, table: pa.Table) -> StoreResult:
        gate.wait(30)
        return store_events(s, table)

    writer = EventWriter(stores, max_pending_rows=3, linger=0, store=gated_store)
    writer.start()
    try:
        rows, _ = validate_batch(
            [msg(f"m{i}", userId="u") for i in range(3)],
            BatchContext(received_at=stores.clock.now()),
        )
        held = writer.submit(rows)
        with pytest.raises(WriterBusy):
            writer.submit(rows[:1])
        gate.set()
        assert held.result(timeout=30).inserted == 3
    finally:
        gate.set()
        writer.stop()


def test_writer_stores_what_was_submitted_before_stop(stores: Stores) -> None:
    writer = EventWriter(stores, linger=0.5)
    writer.start()
    rows, _ = validate_batch([msg("m1", userId="u1")], BatchContext(received_at=stores.clock.now()))
    future = writer.submit(rows)
    writer.stop()
    assert future.result(timeout=1).inserted == 1
