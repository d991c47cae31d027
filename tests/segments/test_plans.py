"""Plan choices of the compiler and the preview that the reference test alone would not pin:
rows stored under merged ids behind a driving trait, events shared by several conditions,
a latest trait value that is NULL, and sample traits stored under a merged id.
Each runs on DuckDB and on chdb and is checked against the reference evaluator."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from tests.segments.helpers import RULE, event, load, member_ids, trait
from zhiying.runtime import Stores
from zhiying.segments import service
from zhiying.segments.compiler import compile_rule
from zhiying.segments.reference import Dataset, evaluate

AT = datetime(2026, 11, 1, 9, 0, tzinfo=UTC)
NOW = AT.replace(tzinfo=None)


def _days(n: float) -> datetime:
    return NOW - timedelta(days=n)


def _order(message_id: str, person: str, age: float, *brands: str) -> dict[str, Any]:
    return event(
        message_id,
        person,
        "Order Completed",
        _days(age),
        revenue=Decimal("100.00"),
        products=[{"product_id": b.lower(), "brand": b, "quantity": 1} for b in brands],
    )


def _members(stores: Stores, data: Dataset, doc: dict[str, Any]) -> set[str]:
    rule = RULE.validate_python(doc)
    got = member_ids(stores.warehouse, compile_rule(rule, AT).sql(stores.warehouse.dialect))
    assert got == evaluate(rule, data, AT)
    return got


# Two orders ever, one of them a Shiseido order in the last 7 days: the recent order
# belongs to both conditions' row sets and must count in each.
REPEAT_SHISEIDO = {
    "type": "and",
    "rules": [
        {"type": "trait", "trait": "city", "op": "eq", "value": "Beijing"},
        {
            "type": "event",
            "event": "Order Completed",
            "measure": {"fn": "count", "op": "gte", "value": 2},
        },
        {
            "type": "event",
            "event": "Order Completed",
            "window": {"last": 7, "unit": "days"},
            "where": [{"property": "properties.products[].brand", "op": "eq", "value": "Shiseido"}],
        },
    ],
}


def test_events_under_merged_ids_count_when_a_trait_drives_the_plan(wh_stores: Stores) -> None:
    data = Dataset()
    for person, city in [("a", "Beijing"), ("b", "Beijing"), ("c", "Shanghai"), ("d", "Beijing")]:
        data.trait_updates.append(trait(person, "city", city, _days(100), f"t-{person}"))
    # a: one order under its own id, the recent Shiseido order under a merged id.
    data.events += [_order("m1", "a", 30, "Olay"), _order("m2", "a_anon", 2, "Shiseido")]
    # b: a single (recent, Shiseido) order: it counts for both conditions, but only once each.
    data.events += [_order("m3", "b", 2, "Shiseido", "Olay")]
    # c: would qualify but lives in Shanghai; d: two orders, none recent with Shiseido.
    data.events += [_order("m4", "c", 30), _order("m5", "c", 1, "Shiseido")]
    data.events += [_order("m6", "d", 30, "Shiseido"), _order("m7", "d", 1, "Olay")]
    data.aliases = {"a_anon": "a"}
    load(wh_stores.warehouse, data)

    assert _members(wh_stores, data, REPEAT_SHISEIDO) == {"a"}


def test_a_latest_trait_value_that_is_null_is_not_replaced_by_an_older_one(
    wh_stores: Stores,
) -> None:
    data = Dataset()
    data.trait_updates += [
        trait("a", "city", "Beijing", _days(10), "t1"),
        trait("a", "city", None, _days(5), "t2"),
        trait("b", "city", "Beijing", _days(10), "t3"),
    ]
    data.events.append(event("m1", "a", "Application Opened", _days(1)))
    load(wh_stores.warehouse, data)

    assert _members(
        wh_stores, data, {"type": "trait", "trait": "city", "op": "eq", "value": "Beijing"}
    ) == {"b"}
    assert _members(wh_stores, data, {"type": "trait", "trait": "city", "op": "is_not_set"}) == {
        "a"
    }


def test_preview_sample_traits_include_rows_stored_under_merged_ids(wh_stores: Stores) -> None:
    data = Dataset()
    data.trait_updates += [
        trait("a", "city", "Beijing", _days(10), "t1"),
        trait("a_anon", "tier", "gold", _days(20), "t2"),
        trait("a_anon", "city", "Shanghai", _days(30), "t3"),
        trait("b", "city", "Shanghai", _days(10), "t4"),
        trait("b_anon", "tier", "silver", _days(10), "t5"),
    ]
    data.aliases = {"a_anon": "a"}
    load(wh_stores.warehouse, data)
    rule = RULE.validate_python({"type": "trait", "trait": "city", "op": "eq", "value": "Beijing"})

    result = service.preview(wh_stores, rule, AT, sample=5)

    assert result.count == 1
    assert [(p.one_id, p.traits) for p in result.sample] == [
        ("a", {"city": "Beijing", "tier": "gold"})
    ]
