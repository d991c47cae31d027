"""Rules covering every condition kind and operator, on one small data set.

Used by the tests that execute compiled SQL on engines other than the
warehouse's (PostgreSQL, Spark): each rule's members there must equal the
reference evaluator's. The data extend the seed data of
``test_seed_segment`` (people ``a``…``i``, ``h_anon`` merged into ``h``) so
that every rule selects somebody and leaves somebody out.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from tests.segments.helpers import RULE, event, trait
from tests.segments.test_seed_segment import seed_data
from zhiying.segments.models import Rule
from zhiying.segments.reference import Dataset

AT = datetime(2026, 11, 1, 9, 0, tzinfo=UTC)
NOW = AT.replace(tzinfo=None)
SNAPSHOT_AT = NOW - timedelta(days=1)


def _days(n: float) -> datetime:
    return NOW - timedelta(days=n)


class Catalog:
    """Two segments: ``seg_beijing`` (live rule) and ``seg_vip`` (snapshots only)."""

    def segment_rule(self, segment_id: str) -> Rule | None:
        if segment_id == "seg_beijing":
            return RULE.validate_python(
                {"type": "trait", "trait": "city", "op": "eq", "value": "Beijing"}
            )
        if segment_id == "seg_vip":
            return RULE.validate_python({"type": "tag", "tag": "tier", "op": "eq", "value": "gold"})
        return None

    def latest_snapshot(self, segment_id: str, at: datetime) -> datetime | None:
        if segment_id != "seg_vip":
            return None
        taken = [t for t in (_days(30), SNAPSHOT_AT) if t.replace(tzinfo=UTC) <= at]
        return max(taken).replace(tzinfo=UTC) if taken else None


def coverage_data() -> Dataset:
    data = seed_data()
    n = iter(range(5000, 9000))

    def traits(key: str, **values: Any) -> None:
        for person, value in values.items():
            data.trait_updates.append(trait(person, key, value, _days(50), f"t{next(n)}"))

    traits("age", a=35, b=52, c="unknown", d=28, e=35, i=41)
    data.trait_updates.append(trait("e", "age", 44, _days(5), f"t{next(n)}"))
    traits("birthday", a="1990-11-03", b="1985-03-05", c="2000-02-29", d="n/a", f="1999-10-20")
    traits("signup", a="2025-01-01", f="2026-10-20", g="2026-10-31")
    traits("vip", a=True, b=False)
    traits("nickname", a=None, b="bee")

    for person, orders, tier in [("a", 3, "gold"), ("b", 1, "silver"), ("c", 0, "gold")]:
        data.tag_values.append(
            {
                "one_id": person,
                "tag": "orders_90d",
                "value": str(orders),
                "number": float(orders),
                "computed_at": _days(1),
            }
        )
        data.tag_values.append(
            {
                "one_id": person,
                "tag": "tier",
                "value": tier,
                "number": None,
                "computed_at": _days(1),
            }
        )
    for person, value, age in [
        ("a", "new", 60),
        ("a", "loyal", 1),
        ("b", "churned", 1),
        ("c", "new", -2),  # assigned after ``at``: not yet known
        ("d", "loyal", 10),
    ]:
        data.layer_values.append(
            {"one_id": person, "layer": "lifecycle", "value": value, "as_of": _days(age)}
        )
    for person, taken in [("a", SNAPSHOT_AT), ("b", SNAPSHOT_AT), ("h_anon", SNAPSHOT_AT)]:
        data.segment_members.append(
            {"segment_id": "seg_vip", "one_id": person, "snapshot_at": taken}
        )
    for person in ("c", "d"):
        data.segment_members.append(
            {"segment_id": "seg_vip", "one_id": person, "snapshot_at": _days(30)}
        )

    pushes: list[tuple[str, float, dict[str, Any] | None, str | None]] = [
        ("a", 2, {"campaign": {"tier": "gold"}, "size": 5, "flag": True}, "app"),
        ("b", 3, {"campaign": {"tier": "silver"}, "size": "5"}, "web"),
        ("c", 4, {"size": 7.5, "flag": False}, "app"),
        ("d", 5, {"campaign": {"tier": None}, "size": None, "flag": "true"}, None),
        ("e", 40, {"campaign": "gold", "size": [5]}, "app"),
        ("h_anon", 6, {"campaign": {"tier": "gold"}, "size": 2}, "wechat"),
        ("f", 1, None, "app"),
    ]
    for person, age, props, channel in pushes:
        data.events.append(
            event(
                f"m{next(n)}",
                person,
                "Push Opened",
                _days(age),
                properties=None if props is None else json.dumps(props),
                channel=channel,
            )
        )
    for person, age, revenue, currency, items in [
        ("a", 20, "120.50", "CNY", [("Lancome", "99.00", 2, "skincare")]),
        ("a", 60, "80.00", "USD", []),
        ("b", 15, "500.00", "USD", [("SK-II", "250.00", 2, "skincare")]),
        ("c", 50, None, None, [("Shiseido", "19.90", 1, "makeup")]),
        ("h", 5, "10.00", "CNY", [("Lancome", "10.00", 1, None)]),
    ]:
        data.events.append(
            event(
                f"m{next(n)}",
                person,
                "Order Completed",
                _days(age),
                revenue=None if revenue is None else Decimal(revenue),
                currency=currency,
                order_id=f"o{next(n)}",
                products=[
                    {
                        "product_id": f"p{next(n)}",
                        "brand": brand,
                        "price": Decimal(price),
                        "quantity": qty,
                        "category": category,
                    }
                    for brand, price, qty, category in items
                ],
            )
        )
    # Money in cents that binary floats cannot hold: a and b average exactly 0.15; d's
    # 0.29 is 0.28999… as a float (ClickHouse's ``toDecimal64(0.29, 2)`` is 0.28).
    tips = [("a", 3, "0.10"), ("a", 4, "0.20"), ("b", 3, "0.15"), ("d", 3, "0.29")]
    for person, age, revenue in tips:
        data.events.append(
            event(f"m{next(n)}", person, "Tip Paid", _days(age), revenue=Decimal(revenue))
        )
    data.events.append(event(f"m{next(n)}", "c", "Tip Paid", _days(3), revenue=Decimal("0.16")))
    # Events after ``at`` do not exist yet.
    data.events.append(event(f"m{next(n)}", "g", "Push Opened", _days(-1)))
    return data


def _t(trait: str, op: str, value: Any = None, **more: Any) -> dict[str, Any]:
    out = {"type": "trait", "trait": trait, "op": op, **more}
    if value is not None:
        out["value"] = value
    return out


def _ev(name: str, **more: Any) -> dict[str, Any]:
    return {"type": "event", "event": name, **more}


def _push(prop: str, op: str, value: Any = None, **more: Any) -> dict[str, Any]:
    flt = {"property": prop, "op": op, **more}
    if value is not None:
        flt["value"] = value
    return _ev("Push Opened", where=[flt])


def _order(prop: str, op: str, value: Any = None, **more: Any) -> dict[str, Any]:
    flt = {"property": prop, "op": op, **more}
    if value is not None:
        flt["value"] = value
    return _ev("Order Completed", where=[flt])


def _first(which: str, event_name: str, op: str, **more: Any) -> dict[str, Any]:
    return {"type": "event_time", "event": event_name, "which": which, "op": op, **more}


RULES: dict[str, dict[str, Any]] = {
    # traits: text, numbers, booleans, dates
    "trait_eq": _t("city", "eq", "Beijing"),
    "trait_neq": _t("city", "neq", "Beijing"),
    "trait_in": _t("city", "in", values=["Shanghai", "Chongqing"]),
    "trait_not_in": _t("city", "not_in", values=["Beijing"]),
    "trait_contains": _t("city", "contains", "jin"),
    "trait_starts_with": _t("city", "starts_with", "Shang"),
    "trait_text_lt": _t("city", "lt", "C"),
    "trait_is_set": _t("nickname", "is_set"),
    "trait_is_not_set": _t("age", "is_not_set"),
    "trait_number_gte": _t("age", "gte", 35),
    "trait_number_between": _t("age", "between", values=[30, 42]),
    "trait_number_neq": _t("age", "neq", 35),
    "trait_number_lt": _t("age", "lt", 40),
    "trait_boolean": _t("vip", "eq", True),
    "trait_boolean_false": _t("vip", "eq", False),
    "trait_date_before": _t("birthday", "before", "1995-01-01"),
    "trait_date_after": _t("birthday", "after", "1988-01-01"),
    "trait_date_between": _t("birthday", "date_between", values=["1980-01-01", "1995-12-31"]),
    "trait_within_last": _t("signup", "within_last", days=30),
    "trait_anniversary": _t("birthday", "anniversary_within_next", days=5),
    # tags and layers
    "tag_number": {"type": "tag", "tag": "orders_90d", "op": "gte", "value": 1},
    "tag_text": {"type": "tag", "tag": "tier", "op": "eq", "value": "gold"},
    "tag_not_in": {"type": "tag", "tag": "tier", "op": "not_in", "values": ["gold"]},
    "layer_eq": {"type": "layer", "layer": "lifecycle", "op": "eq", "value": "loyal"},
    "layer_neq": {"type": "layer", "layer": "lifecycle", "op": "neq", "value": "churned"},
    "layer_in": {"type": "layer", "layer": "lifecycle", "op": "in", "values": ["new", "churned"]},
    "layer_is_not_set": {"type": "layer", "layer": "lifecycle", "op": "is_not_set"},
    # events: performed, counts and measures
    "event_performed": _ev("Push Opened"),
    "event_window": _ev("Push Opened", window={"last": 72, "unit": "hours"}),
    "event_absolute_window": _ev(
        "Order Completed",
        window={"from": (AT - timedelta(days=30)).isoformat(), "to": AT.isoformat()},
    ),
    "event_not_performed": _ev(
        "Order Completed", performed=False, window={"last": 7, "unit": "days"}
    ),
    "event_count_between": _ev(
        "Order Completed", measure={"fn": "count", "op": "between", "values": [2, 3]}
    ),
    "event_count_lt": _ev(
        "Application Opened",
        window={"last": 50, "unit": "days"},
        measure={"fn": "count", "op": "lt", "value": 3},
    ),
    "event_sum": _ev(
        "Order Completed",
        measure={"fn": "sum", "property": "properties.revenue", "op": "gte", "value": 300},
    ),
    "event_avg": _ev(
        "Order Completed",
        measure={"fn": "avg", "property": "properties.revenue", "op": "lt", "value": 150},
    ),
    "event_min": _ev(
        "Order Completed",
        measure={"fn": "min", "property": "properties.revenue", "op": "lte", "value": 80},
    ),
    "event_max": _ev(
        "Order Completed",
        measure={"fn": "max", "property": "properties.revenue", "op": "neq", "value": 199},
    ),
    # money is summed, averaged and compared exactly (DECIMAL, never float)
    "money_sum_eq": _ev(
        "Tip Paid",
        measure={"fn": "sum", "property": "properties.revenue", "op": "eq", "value": 0.3},
    ),
    "money_avg_eq": _ev(
        "Tip Paid",
        measure={"fn": "avg", "property": "properties.revenue", "op": "eq", "value": 0.15},
    ),
    "money_avg_between": _ev(
        "Tip Paid",
        measure={
            "fn": "avg",
            "property": "properties.revenue",
            "op": "between",
            "values": [0.15, 0.155],
        },
    ),
    "money_avg_neq": _ev(
        "Tip Paid",
        measure={"fn": "avg", "property": "properties.revenue", "op": "neq", "value": 0.15},
    ),
    "money_where_eq": _ev(
        "Tip Paid", where=[{"property": "properties.revenue", "op": "eq", "value": 0.29}]
    ),
    "money_where_three_decimals": _ev(
        "Tip Paid", where=[{"property": "properties.revenue", "op": "gte", "value": 0.155}]
    ),
    "event_sum_json": _ev(
        "Push Opened", measure={"fn": "sum", "property": "properties.size", "op": "gte", "value": 5}
    ),
    # events: typed properties
    "where_currency_eq": _order("properties.currency", "eq", "USD"),
    "where_currency_in": _order("properties.currency", "in", values=["CNY"]),
    "where_revenue_gt": _order("properties.revenue", "gt", 100),
    "where_revenue_between": _order("properties.revenue", "between", values=[50, 150]),
    "where_order_id_set": _order("properties.order_id", "is_set"),
    "where_channel": _push("channel", "in", values=["app", "wechat"]),
    "where_channel_not_set": _push("channel", "is_not_set"),
    # events: products[] fields
    "products_brand_eq": _order("properties.products[].brand", "eq", "Lancome"),
    "products_brand_neq": _order("properties.products[].brand", "neq", "Lancome"),
    "products_brand_starts_with": _order("properties.products[].brand", "starts_with", "Shi"),
    "products_category_contains": _order("properties.products[].category", "contains", "care"),
    "products_price_gt": _order("properties.products[].price", "gt", 50),
    "products_price_eq": _order("properties.products[].price", "eq", 19.9),
    "products_quantity_gte": _order("properties.products[].quantity", "gte", 2),
    "products_category_not_set": _order("properties.products[].category", "is_not_set"),
    "products_brand_in": _order("properties.products[].brand", "in", values=["SK-II", "Shiseido"]),
    "products_category_eq": _order("properties.products[].category", "eq", "makeup"),
    # events: JSON properties, typed by the JSON value
    "json_string": _push("properties.campaign.tier", "eq", "gold"),
    "json_string_neq": _push("properties.campaign.tier", "neq", "gold"),
    "json_number_eq": _push("properties.size", "eq", 5),
    "json_number_gt": _push("properties.size", "gt", 4),
    "json_digits_as_text": _push("properties.size", "eq", "5"),
    "json_boolean": _push("properties.flag", "eq", True),
    "json_is_set": _push("properties.campaign.tier", "is_set"),
    "json_is_not_set": _push("properties.size", "is_not_set"),
    "json_contains": _push("properties.campaign.tier", "contains", "ol"),
    "json_in": _push("properties.campaign.tier", "in", values=["silver", "bronze"]),
    # event times
    "first_before": _first(
        "first", "Application Opened", "before", value=(AT - timedelta(days=50)).isoformat()
    ),
    "last_after": _first(
        "last", "Order Completed", "after", value=(AT - timedelta(days=12)).isoformat()
    ),
    "last_within": _first("last", "Push Opened", "within", window={"last": 3, "unit": "days"}),
    "last_not_within": _first(
        "last",
        "Order Completed",
        "not_within",
        window={"last": 14, "unit": "days"},
        where=[{"property": "properties.currency", "op": "eq", "value": "CNY"}],
    ),
    # other segments
    "segment_live": {
        "type": "and",
        "rules": [{"type": "segment", "segment": "seg_beijing"}, _ev("Push Opened")],
    },
    "segment_snapshot": {"type": "segment", "segment": "seg_vip", "source": "snapshot"},
    # two events over one window: one scan of the window (``event IN``), tagged by name
    "same_window_two_events": {
        "type": "and",
        "rules": [
            _ev("Application Opened", window={"last": 30, "unit": "days"}),
            _ev("Order Completed", performed=False, window={"last": 30, "unit": "days"}),
        ],
    },
    "same_absolute_window_two_events": {
        "type": "or",
        "rules": [
            _ev(
                "Push Opened",
                window={
                    "from": (AT - timedelta(days=40)).isoformat(),
                    "to": (AT - timedelta(days=2)).isoformat(),
                },
                measure={"fn": "count", "op": "gte", "value": 2},
            ),
            _ev(
                "Tip Paid",
                window={
                    "from": (AT - timedelta(days=40)).isoformat(),
                    "to": (AT - timedelta(days=2)).isoformat(),
                },
            ),
        ],
    },
    # groups
    "or": {
        "type": "or",
        "rules": [
            _t("city", "eq", "Shanghai"),
            {"type": "tag", "tag": "tier", "op": "eq", "value": "gold"},
        ],
    },
    "not": {"type": "not", "rule": _ev("Order Completed")},
    "nested": {
        "type": "and",
        "rules": [
            _t("city", "eq", "Beijing"),
            {
                "type": "or",
                "rules": [
                    {"type": "not", "rule": _ev("Push Opened")},
                    _push("properties.size", "gte", 5),
                ],
            },
        ],
    },
}


def coverage_rules() -> dict[str, Rule]:
    return {name: RULE.validate_python(doc) for name, doc in RULES.items()}
