"""A refresh computes every tag for every person as of an instant, on DuckDB and on chdb."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tests.tags.factories import event, insert_events, insert_traits, trait
from zhiying.errors import NotFound
from zhiying.profiles.tags import service
from zhiying.profiles.tags.models import (
    Band,
    DynamicTag,
    EventFilter,
    EventSelector,
    ProductFilter,
    SemiStaticTag,
    StaticTag,
    TagDefinition,
)
from zhiying.runtime import Stores
from zhiying.warehouse.events import replace_aliases

NOW = datetime(2026, 11, 1, 9, 0, tzinfo=UTC)
ORDERS = EventSelector(events=["Order Completed"])


def ago(days: float) -> datetime:
    """A naive UTC timestamp ``days`` before NOW (the warehouse stores naive UTC)."""
    return (NOW - timedelta(days=days)).replace(tzinfo=None)


def seed_tags() -> list[TagDefinition]:
    return [
        DynamicTag(name="orders_90d", where=ORDERS, window_days=90, aggregate="count"),
        DynamicTag(
            name="coupon_orders_90d",
            where=EventSelector(
                events=["Order Completed"],
                filters=[EventFilter(column="coupon", op="not_null")],
            ),
            window_days=90,
            aggregate="count",
        ),
        DynamicTag(
            name="days_since_visit",
            where=EventSelector(filters=[EventFilter(column="type", op="in", value=["page"])]),
            aggregate="days_since_last",
        ),
        DynamicTag(
            name="favourite_category", where=ORDERS, aggregate="top", of="products.category"
        ),
        DynamicTag(
            name="aov",
            where=ORDERS,
            aggregate="avg",
            of="revenue",
            bands=[Band(label="low", max=50), Band(label="high", min=50)],
        ),
        StaticTag(name="gender", trait="gender", value_map={"f": "female", "m": "male"}),
        SemiStaticTag(name="balance", trait="balance"),
    ]


def values(stores: Stores) -> dict[tuple[str, str], tuple[str | None, float | None]]:
    rows = stores.warehouse.query("SELECT one_id, tag, value, number FROM tag_values").to_pylist()
    return {(r["one_id"], r["tag"]): (r["value"], r["number"]) for r in rows}


def test_dynamic_tags_apply_filters_and_windows(wh_stores: Stores) -> None:
    insert_events(
        wh_stores.warehouse,
        [
            event("u1", ago(10), revenue="30.00", coupon="C1", products=[("books", 1)]),
            event("u1", ago(80), revenue="80.00", products=[("music", 1), ("books", 1)]),
            event("u1", ago(100), revenue="10.00", coupon="C2"),  # outside 90 days
            event("u1", ago(3.5), None, type="page"),
            event("u2", ago(1), None, type="page"),  # a visitor without orders
            event("u1", NOW.replace(tzinfo=None) + timedelta(hours=1)),  # after the instant
        ],
    )
    service.define_tags(wh_stores, seed_tags())
    result = service.refresh(wh_stores)
    got = values(wh_stores)
    assert got[("u1", "orders_90d")] == (None, 2.0)
    assert got[("u1", "coupon_orders_90d")] == (None, 1.0)
    assert got[("u2", "orders_90d")] == (None, 0.0)  # counted as 0, not missing
    assert got[("u1", "days_since_visit")] == (None, 4.0)  # 3.5 days back crosses 4 midnights
    assert got[("u2", "days_since_visit")] == (None, 1.0)
    assert got[("u1", "aov")] == ("low", pytest.approx(40.0))  # (30 + 80 + 10) / 3
    assert ("u2", "aov") not in got  # no order: no average
    assert got[("u1", "favourite_category")] == ("books", None)
    assert result.rows == len(got)


def test_favourite_category_weighs_quantities_and_breaks_ties_by_name(wh_stores: Stores) -> None:
    insert_events(
        wh_stores.warehouse,
        [
            event("u1", ago(5), products=[("toys", 3), ("books", 1)]),
            event("u1", ago(4), products=[("books", 1), ("garden", None)]),  # no quantity = 1
            event("u2", ago(2), products=[("zoo", 2), ("art", 2)]),
        ],
    )
    tag = DynamicTag(name="fav", where=ORDERS, aggregate="top", of="products.category")
    service.define_tag(wh_stores, tag)
    service.refresh(wh_stores)
    got = values(wh_stores)
    assert got[("u1", "fav")] == ("toys", None)  # 3 toys beat 2 books
    assert got[("u2", "fav")] == ("art", None)  # a tie goes to the smallest name


def test_static_tag_reads_latest_trait_as_of_the_instant(wh_stores: Stores) -> None:
    insert_traits(
        wh_stores.warehouse,
        [
            trait("u1", "gender", "m", ago(30)),
            trait("u1", "gender", "f", ago(2)),
            trait("u1", "gender", "x", ago(-1)),  # tomorrow: not yet known
            trait("u1", "balance", 120.5, ago(20)),
            trait("u2", "balance", 7, ago(20)),
        ],
    )
    service.define_tags(wh_stores, seed_tags()[5:])
    service.refresh(wh_stores)
    got = values(wh_stores)
    assert got[("u1", "gender")] == ("female", None)
    assert got[("u1", "balance")] == ("120.5", 120.5)
    assert got[("u2", "balance")] == ("7", 7.0)
    assert ("u2", "gender") not in got


def test_semi_static_event_tag_keeps_the_latest_value(wh_stores: Stores) -> None:
    insert_events(
        wh_stores.warehouse,
        [
            event("u1", ago(9), "Order Completed", channel="app"),
            event("u1", ago(1), "Order Completed", channel="mini_program"),
            event("u1", ago(0.5), "Product Viewed", channel="web"),
        ],
    )
    tag = SemiStaticTag(name="last_order_channel", where=ORDERS, column="channel")
    service.define_tag(wh_stores, tag)
    service.refresh(wh_stores)
    assert values(wh_stores)[("u1", "last_order_channel")] == ("mini_program", None)


def test_events_of_a_merged_one_id_count_for_its_owner(wh_stores: Stores) -> None:
    insert_events(wh_stores.warehouse, [event("old", ago(3)), event("new", ago(2))])
    replace_aliases(wh_stores.warehouse, [("old", "new")])
    service.define_tag(wh_stores, seed_tags()[0])
    service.refresh(wh_stores)
    got = values(wh_stores)
    assert got[("new", "orders_90d")] == (None, 2.0)
    assert ("old", "orders_90d") not in got


def test_refresh_replaces_values_and_keeps_history_once_per_instant(wh_stores: Stores) -> None:
    insert_events(wh_stores.warehouse, [event("u1", ago(85)), event("u1", ago(1))])
    service.define_tag(wh_stores, seed_tags()[0])
    service.refresh(wh_stores)
    service.refresh(wh_stores)  # a retry for the same instant does not double history
    later = NOW + timedelta(days=10)
    service.refresh(wh_stores, as_of=later)
    assert values(wh_stores)[("u1", "orders_90d")] == (None, 1.0)  # one order left the window
    points = service.history(wh_stores, "orders_90d", "u1")
    assert [(p.computed_at, p.number) for p in points] == [(NOW, 2.0), (later, 1.0)]


def test_refresh_as_of_an_earlier_instant_reproduces_earlier_values(wh_stores: Stores) -> None:
    insert_events(wh_stores.warehouse, [event("u1", ago(40)), event("u1", ago(5))])
    service.define_tag(wh_stores, seed_tags()[0])
    service.refresh(wh_stores, as_of=NOW - timedelta(days=20))
    assert values(wh_stores)[("u1", "orders_90d")] == (None, 1.0)
    service.refresh(wh_stores)
    assert values(wh_stores)[("u1", "orders_90d")] == (None, 2.0)


def test_tags_for_shows_labels_and_whole_numbers(wh_stores: Stores) -> None:
    insert_events(wh_stores.warehouse, [event("u1", ago(1), revenue="99.00")])
    insert_traits(wh_stores.warehouse, [trait("u1", "gender", "m", ago(3))])
    service.define_tags(wh_stores, seed_tags())
    service.refresh(wh_stores)
    shown = service.tags_for(wh_stores, ["u1", "nobody"])
    assert shown == {
        "u1": {
            "aov": "high",
            "coupon_orders_90d": 0,
            "gender": "male",
            "orders_90d": 1,
        }
    }


def test_refreshing_an_unknown_tag_is_not_found(stores: Stores) -> None:
    service.define_tag(stores, seed_tags()[0])
    with pytest.raises(NotFound):
        service.refresh(stores, names=["nope"])


def test_scheduler_refreshes_only_due_tags_together(stores: Stores) -> None:
    insert_events(stores.warehouse, [event("u1", ago(1))])
    daily = seed_tags()[0]
    hourly = DynamicTag(
        name="orders_1d", where=ORDERS, window_days=1, aggregate="count", refresh="hourly"
    )
    manual = DynamicTag(name="orders_all", where=ORDERS, aggregate="count", refresh="manual")
    service.define_tags(stores, [daily, hourly, manual])
    first = service.refresh_due(stores)
    assert first is not None and sorted(first.tags) == ["orders_1d", "orders_90d"]
    assert service.refresh_due(stores) is None
    stores.clock.advance(timedelta(hours=1))  # type: ignore[attr-defined]
    second = service.refresh_due(stores)
    assert second is not None and second.tags == ["orders_1d"]
    assert [r.status for r in service.list_runs(stores)] == ["succeeded", "succeeded"]


def test_deleting_a_tag_removes_its_current_values(stores: Stores) -> None:
    insert_events(stores.warehouse, [event("u1", ago(1))])
    service.define_tag(stores, seed_tags()[0])
    service.refresh(stores)
    service.delete_tag(stores, "orders_90d")
    assert values(stores) == {}
    with pytest.raises(NotFound):
        service.get_tag(stores, "orders_90d")


def test_definitions_runs_and_layer_rules_persist_on_every_operational_store(
    ops_stores: Stores,
) -> None:
    from zhiying.profiles.layers import service as layers
    from zhiying.profiles.layers.models import LifecycleRules

    insert_events(ops_stores.warehouse, [event("u1", ago(1))])
    service.define_tags(ops_stores, seed_tags())
    service.define_tag(ops_stores, seed_tags()[0])  # replacing keeps one row
    result = service.refresh(ops_stores)
    assert [r.definition.name for r in service.list_tags(ops_stores)] == sorted(
        t.name for t in seed_tags()
    )
    assert service.get_tag(ops_stores, "orders_90d").last_as_of == NOW
    assert service.list_runs(ops_stores)[0].rows == result.rows
    layers.set_rules(ops_stores, LifecycleRules(new_days=3))
    layers.set_rules(ops_stores, LifecycleRules(new_days=2))
    run = layers.compute_layers(ops_stores, layers=["lifecycle"])[0]
    assert run.counts["new"] == 1 and layers.computed_dates(ops_stores, "lifecycle") == [NOW]


def test_distinct_counts_apply_the_window_and_give_zero_without_events(
    wh_stores: Stores,
) -> None:
    insert_events(
        wh_stores.warehouse,
        [
            event("u1", ago(5), channel="app", products=[("books", 1), ("toys", 2)]),
            event("u1", ago(4), channel="app", products=[("books", 1)]),
            event("u1", ago(3), "Product Viewed", channel="web"),
            event("u1", ago(100), channel="store", products=[("garden", 1)]),  # outside
            event("u1", ago(2), channel=None),  # no channel: not counted
            event("u2", ago(200), channel="web"),  # only outside the window
        ],
    )
    service.define_tags(
        wh_stores,
        [
            DynamicTag(
                name="channels_30d", window_days=30, aggregate="distinct_count", of="channel"
            ),
            DynamicTag(
                name="order_channels",
                where=ORDERS,
                window_days=30,
                aggregate="distinct_count",
                of="channel",
            ),
            DynamicTag(
                name="categories_30d",
                window_days=30,
                aggregate="distinct_count",
                of="products.category",
            ),
        ],
    )
    service.refresh(wh_stores)
    got = values(wh_stores)
    assert got[("u1", "channels_30d")] == (None, 2.0)  # app, web
    assert got[("u1", "order_channels")] == (None, 1.0)  # app
    assert got[("u1", "categories_30d")] == (None, 2.0)  # books, toys
    assert got[("u2", "channels_30d")] == (None, 0.0)
    assert got[("u2", "categories_30d")] == (None, 0.0)


def test_a_product_filter_keeps_events_with_some_product_of_those_values(
    wh_stores: Stores,
) -> None:
    insert_events(
        wh_stores.warehouse,
        [
            event("u1", ago(5), products=[("books", 1)]),
            event("u1", ago(4), products=[("music", 1), ("books", 2)]),
            event("u1", ago(3), products=[("music", 1)]),
            event("u1", ago(2)),  # no products
            event("u2", ago(2), products=[(None, 1), ("toys", 1)]),  # type: ignore[list-item]
            event("u2", ago(1), products=[("garden", 1)]),
        ],
    )
    books = ProductFilter(field="category", values=["books"])
    either = ProductFilter(field="category", values=["garden", "books"])
    service.define_tags(
        wh_stores,
        [
            DynamicTag(
                name="book_orders",
                where=EventSelector(events=["Order Completed"], products=books),
                aggregate="count",
            ),
            DynamicTag(
                name="book_or_garden_orders",
                where=EventSelector(events=["Order Completed"], products=either),
                aggregate="count",
            ),
        ],
    )
    service.refresh(wh_stores)
    got = values(wh_stores)
    assert got[("u1", "book_orders")] == (None, 2.0)
    assert got[("u2", "book_orders")] == (None, 0.0)
    assert got[("u1", "book_or_garden_orders")] == (None, 2.0)
    assert got[("u2", "book_or_garden_orders")] == (None, 1.0)
