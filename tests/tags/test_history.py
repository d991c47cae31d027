"""Values are written once per refresh; the values a refresh replaces become history.

Both write paths (a swap of ``tag_values`` when every tag is refreshed, an
in-place replacement for some tags) on DuckDB and chdb.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pyarrow as pa

from tests.tags.factories import event, insert_events, insert_traits, trait
from zhiying.profiles.tags import service, storage
from zhiying.profiles.tags.models import DynamicTag, EventSelector, StaticTag
from zhiying.runtime import Stores
from zhiying.warehouse.schema import TAG_VALUES

NOW = datetime(2026, 11, 1, 9, 0, tzinfo=UTC)
ORDERS = EventSelector(events=["Order Completed"])
ORDERS_90D = DynamicTag(name="orders_90d", where=ORDERS, window_days=90, aggregate="count")
ORDERS_ALL = DynamicTag(name="orders_all", where=ORDERS, aggregate="count")
GENDER = StaticTag(name="gender", trait="gender")


def ago(days: float) -> datetime:
    return (NOW - timedelta(days=days)).replace(tzinfo=None)


def points(stores: Stores, tag: str, one_id: str) -> list[tuple[datetime, float | None]]:
    return [(p.computed_at, p.number) for p in service.history(stores, tag, one_id)]


def current(stores: Stores) -> dict[tuple[str, str], tuple[str | None, float | None]]:
    rows = stores.warehouse.query("SELECT one_id, tag, value, number FROM tag_values").to_pylist()
    return {(r["one_id"], r["tag"]): (r["value"], r["number"]) for r in rows}


def stored_history(stores: Stores) -> list[tuple[str, str, float | None]]:
    rows = stores.warehouse.query("SELECT one_id, tag, number FROM tag_history").to_pylist()
    return sorted((r["one_id"], r["tag"], r["number"]) for r in rows)


def seed(stores: Stores) -> None:
    insert_events(stores.warehouse, [event("u1", ago(85)), event("u1", ago(1))])
    insert_traits(stores.warehouse, [trait("u1", "gender", "f", ago(3))])
    service.define_tags(stores, [ORDERS_90D, ORDERS_ALL, GENDER])


def test_full_refreshes_keep_every_instant_once_and_folding_keeps_the_history(
    wh_stores: Stores,
) -> None:
    seed(wh_stores)
    days = [NOW, NOW + timedelta(days=10), NOW + timedelta(days=100)]
    for at in days:
        result = service.refresh(wh_stores, as_of=at)
        assert result.rows == 3 and result.history_rows == 2
    service.refresh(wh_stores, as_of=days[-1])  # a retry of the last instant
    expected = [(days[0], 2.0), (days[1], 1.0), (days[2], 0.0)]
    assert points(wh_stores, "orders_90d", "u1") == expected
    assert points(wh_stores, "orders_all", "u1") == [(d, 2.0) for d in days]
    assert points(wh_stores, "gender", "u1") == []  # static tags keep no history
    before = len(storage.segments(wh_stores.warehouse))
    # DuckDB keeps each replaced table as a segment; ClickHouse attached them already.
    assert before == (2 if wh_stores.warehouse.dialect == "duckdb" else 0)
    assert storage.fold_history(wh_stores.warehouse) == before
    assert storage.segments(wh_stores.warehouse) == []
    assert points(wh_stores, "orders_90d", "u1") == expected
    assert stored_history(wh_stores) == sorted(
        [("u1", "orders_90d", 2.0), ("u1", "orders_90d", 1.0)] + [("u1", "orders_all", 2.0)] * 2
    )
    assert current(wh_stores) == {
        ("u1", "orders_90d"): (None, 0.0),
        ("u1", "orders_all"): (None, 2.0),
        ("u1", "gender"): ("f", None),
    }


def test_refreshing_some_tags_replaces_only_theirs_in_place(wh_stores: Stores) -> None:
    seed(wh_stores)
    later = NOW + timedelta(days=10)
    service.refresh(wh_stores)
    result = service.refresh(wh_stores, as_of=later, names=["orders_90d", "gender"])
    assert result.rows == 2 and result.history_rows == 1
    service.refresh(wh_stores, as_of=later, names=["orders_90d"])  # retry: no double
    assert storage.segments(wh_stores.warehouse) == []
    got = wh_stores.warehouse.query(
        "SELECT tag, computed_at FROM tag_values ORDER BY tag"
    ).to_pylist()
    assert [(r["tag"], r["computed_at"].replace(tzinfo=None)) for r in got] == [
        ("gender", later.replace(tzinfo=None)),
        ("orders_90d", later.replace(tzinfo=None)),
        ("orders_all", NOW.replace(tzinfo=None)),  # not refreshed: untouched
    ]
    assert points(wh_stores, "orders_90d", "u1") == [(NOW, 2.0), (later, 1.0)]
    assert points(wh_stores, "orders_all", "u1") == [(NOW, 2.0)]


def test_a_full_refresh_keeps_rows_of_tags_it_does_not_know(wh_stores: Stores) -> None:
    seed(wh_stores)
    stray = {"one_id": "u9", "tag": "imported", "value": "x", "number": None}
    wh_stores.warehouse.insert(
        "tag_values",
        pa.Table.from_pylist([{**stray, "computed_at": ago(5)}], schema=TAG_VALUES),
    )
    service.refresh(wh_stores)
    service.refresh(wh_stores, as_of=NOW + timedelta(days=1))
    assert current(wh_stores)[("u9", "imported")] == ("x", None)
    wh_stores.warehouse.execute("TRUNCATE TABLE tag_values")  # others' tests reset it so
    assert current(wh_stores) == {}


def test_deleting_a_dynamic_tag_moves_its_current_values_to_history(wh_stores: Stores) -> None:
    seed(wh_stores)
    service.refresh(wh_stores)
    service.delete_tag(wh_stores, "orders_all")
    service.delete_tag(wh_stores, "gender")
    assert stored_history(wh_stores) == [("u1", "orders_all", 2.0)]
    assert set(current(wh_stores)) == {("u1", "orders_90d")}


def test_an_idle_scheduler_tick_folds_one_history_segment(stores: Stores) -> None:
    insert_events(stores.warehouse, [event("u1", ago(1))])
    service.define_tag(stores, ORDERS_90D)
    for days in range(3):
        service.refresh(stores, as_of=NOW + timedelta(days=days))
    assert len(storage.segments(stores.warehouse)) == 2
    stores.clock.set(NOW + timedelta(days=2, hours=1))  # type: ignore[attr-defined]
    assert service.refresh_due(stores) is None  # refreshed today already
    assert len(storage.segments(stores.warehouse)) == 1
    assert stored_history(stores) == [("u1", "orders_90d", 1.0)]


def test_a_scheduler_that_is_never_idle_still_keeps_history_segments_bounded(
    stores: Stores,
) -> None:
    insert_events(stores.warehouse, [event("u1", ago(1))])
    hourly = DynamicTag(
        name="orders_hourly", where=ORDERS, window_days=90, aggregate="count", refresh="hourly"
    )
    service.define_tag(stores, hourly)
    counts = []
    for hour in range(12):  # due at every tick: never an idle one
        stores.clock.set(NOW + timedelta(hours=hour, minutes=1))  # type: ignore[attr-defined]
        assert service.refresh_due(stores) is not None
        counts.append(len(storage.segments(stores.warehouse)))
    assert max(counts) == service.MAX_UNFOLDED_SEGMENTS + 1
    assert counts[-1] == service.MAX_UNFOLDED_SEGMENTS + 1
    history = stored_history(stores)
    assert history and all(row == ("u1", "orders_hourly", 1.0) for row in history)


def test_segment_rules_and_profiles_read_the_swapped_current_values(wh_stores: Stores) -> None:
    from zhiying.segments import service as segments
    from zhiying.segments.models import TagCondition

    seed(wh_stores)
    later = NOW + timedelta(days=10)
    service.refresh(wh_stores)
    service.refresh(wh_stores, as_of=later)  # orders_90d: 2 -> 1

    def who(value: int) -> list[str]:
        rule = TagCondition(tag="orders_90d", op="eq", value=value)
        return sorted(segments.members(wh_stores, rule, later).column("one_id").to_pylist())

    assert who(1) == ["u1"]
    assert who(2) == []  # the replaced value is history, not a current value
    assert service.tags_for(wh_stores, ["u1"]) == {
        "u1": {"gender": "f", "orders_90d": 1, "orders_all": 2}
    }
