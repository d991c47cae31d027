"""Random rules over random people and events: the compiled SQL selects exactly
the members the pure-Python reference evaluator selects, on DuckDB and on chdb."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from tests.segments.helpers import RULE, clear, event, load, member_ids, trait
from zhiying.runtime import Stores
from zhiying.segments.compiler import compile_rule
from zhiying.segments.models import Rule
from zhiying.segments.reference import Dataset, evaluate

AT = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
NAIVE_AT = AT.replace(tzinfo=None)
PEOPLE = ["p0", "p1", "p2", "p3", "p4", "p5"]
EVENTS = ["Application Opened", "Order Completed", "Product Viewed"]
BRANDS = ["Shiseido", "Lancome", "SK-II"]
CITIES = ["Beijing", "Shanghai", "Chongqing"]


def _minutes_ago(m: int) -> datetime:
    return NAIVE_AT - timedelta(minutes=m)


json_values = st.one_of(
    st.integers(-3, 12),
    st.sampled_from(["gold", "silver", "5", "go"]),
    st.booleans(),
    st.none(),
)


@st.composite
def properties(draw: st.DrawFn) -> str | None:
    if draw(st.booleans()) and draw(st.booleans()):
        return None
    doc: dict[str, Any] = {}
    for key in ("size", "tier"):
        if draw(st.booleans()):
            doc[key] = draw(json_values)
    if draw(st.booleans()):
        doc["a"] = {"b": draw(json_values)}
    return json.dumps(doc)


@st.composite
def products(draw: st.DrawFn) -> list[dict[str, Any]]:
    items = []
    for i in range(draw(st.integers(0, 2))):
        items.append(
            {
                "product_id": f"sku{i}",
                "brand": draw(st.sampled_from([*BRANDS, None])),
                "price": Decimal(draw(st.integers(0, 40))) / 2,
                "quantity": draw(st.integers(1, 3)),
            }
        )
    return items


@st.composite
def datasets(draw: st.DrawFn) -> Dataset:
    data = Dataset()
    n_events = draw(st.integers(0, 30))
    for i in range(n_events):
        name = draw(st.sampled_from(EVENTS))
        # Mostly in the past, a few after AT (they must be ignored).
        when = _minutes_ago(draw(st.integers(-3 * 1440, 200 * 1440)))
        fields: dict[str, Any] = {"properties": draw(properties())}
        if name == "Order Completed":
            fields["revenue"] = draw(st.one_of(st.none(), st.integers(0, 30).map(Decimal)))
            fields["products"] = draw(products())
            fields["currency"] = draw(st.sampled_from(["CNY", "USD", None]))
        data.events.append(event(f"m{i}", draw(st.sampled_from(PEOPLE)), name, when, **fields))
    offsets = iter(
        draw(st.lists(st.integers(-1440, 400 * 1440), min_size=40, max_size=40, unique=True))
    )
    for person in PEOPLE:
        for key, values in (
            ("city", st.sampled_from([*CITIES, None])),
            ("age", st.one_of(st.integers(15, 70), st.just("unknown"))),
            (
                "birthday",
                st.sampled_from(["1990-03-01", "1985-03-05", "2000-02-29", "1999-12-31", "n/a"]),
            ),
        ):
            for _ in range(draw(st.integers(0, 2))):
                when = _minutes_ago(next(offsets))
                data.trait_updates.append(
                    trait(person, key, draw(values), when, f"t{len(data.trait_updates)}")
                )
        if draw(st.booleans()):
            data.tag_values.append(
                {
                    "one_id": person,
                    "tag": "orders_90d",
                    "value": str(n := draw(st.integers(0, 5))),
                    "number": float(n),
                    "computed_at": NAIVE_AT - timedelta(hours=1),
                }
            )
        for k in range(draw(st.integers(0, 2))):
            data.layer_values.append(
                {
                    "one_id": person,
                    "layer": "lifecycle",
                    "value": draw(st.sampled_from(["new", "loyal", "churned"])),
                    "as_of": NAIVE_AT - timedelta(days=k * 40 - 1),
                }
            )
    if draw(st.booleans()):
        data.aliases = {"p5": "p0", "p4": "p1"}
    return data


windows = st.one_of(
    st.none(),
    st.builds(
        lambda n, u: {"last": n, "unit": u},
        st.integers(1, 120),
        st.sampled_from(["minutes", "hours", "days"]),
    ),
    st.builds(
        lambda a, b: {
            "from": (AT - timedelta(days=a)).isoformat(),
            "to": (AT - timedelta(days=a) + timedelta(days=b)).isoformat(),
        },
        st.integers(0, 150),
        st.integers(1, 60),
    ),
)

filters = st.one_of(
    st.builds(
        lambda op, b: {"property": "properties.products[].brand", "op": op, "value": b},
        st.sampled_from(["eq", "neq", "starts_with"]),
        st.sampled_from(BRANDS),
    ),
    st.builds(
        lambda op, v: {"property": "properties.products[].price", "op": op, "value": v},
        st.sampled_from(["gt", "lte"]),
        st.integers(0, 20),
    ),
    st.builds(
        lambda op, v: {"property": "properties.revenue", "op": op, "value": v},
        st.sampled_from(["gte", "lt", "eq", "neq"]),
        st.integers(0, 30),
    ),
    st.builds(
        lambda vs: {"property": "properties.currency", "op": "in", "values": vs},
        st.lists(st.sampled_from(["CNY", "USD"]), min_size=1, max_size=2),
    ),
    st.builds(
        lambda p, op, v: {"property": p, "op": op, "value": v},
        st.sampled_from(["properties.size", "properties.tier", "properties.a.b"]),
        st.sampled_from(["eq", "neq"]),
        st.one_of(st.integers(-1, 6), st.sampled_from(["gold", "5"]), st.booleans()),
    ),
    st.builds(
        lambda p, op: {"property": p, "op": op},
        st.sampled_from(["properties.size", "properties.a.b"]),
        st.sampled_from(["is_set", "is_not_set"]),
    ),
    st.builds(
        lambda op, v: {"property": "properties.size", "op": op, "value": v},
        st.sampled_from(["gt", "lte"]),
        st.integers(0, 8),
    ),
)

measures = st.one_of(
    st.none(),
    st.builds(
        lambda op, v: {"fn": "count", "op": op, "value": v},
        st.sampled_from(["gte", "lt", "eq", "neq"]),
        st.integers(0, 4),
    ),
    st.builds(
        lambda fn, op, v: {"fn": fn, "property": "properties.revenue", "op": op, "value": v},
        st.sampled_from(["sum", "avg", "min", "max"]),
        st.sampled_from(["gte", "lt", "neq"]),
        st.integers(0, 40),
    ),
    st.builds(
        lambda lo, w: {
            "fn": "sum",
            "property": "properties.size",
            "op": "between",
            "values": [lo, lo + w],
        },
        st.integers(-2, 10),
        st.integers(0, 10),
    ),
)


@st.composite
def event_conditions(draw: st.DrawFn) -> dict[str, Any]:
    cond: dict[str, Any] = {"type": "event", "event": draw(st.sampled_from(EVENTS))}
    if draw(st.booleans()):
        cond["where"] = draw(st.lists(filters, max_size=2))
    if (w := draw(windows)) is not None:
        cond["window"] = w
    if draw(st.integers(0, 3)) == 0:
        cond["performed"] = False
    elif (m := draw(measures)) is not None:
        cond["measure"] = m
    return cond


@st.composite
def event_time_conditions(draw: st.DrawFn) -> dict[str, Any]:
    cond: dict[str, Any] = {
        "type": "event_time",
        "event": draw(st.sampled_from(EVENTS)),
        "which": draw(st.sampled_from(["first", "last"])),
    }
    if draw(st.booleans()):
        cond["where"] = draw(st.lists(filters, max_size=1))
    op = draw(st.sampled_from(["within", "not_within", "before", "after"]))
    cond["op"] = op
    if op in ("within", "not_within"):
        cond["window"] = draw(windows.filter(lambda w: w is not None))
    else:
        cond["value"] = (AT - timedelta(days=draw(st.integers(0, 150)))).isoformat()
    return cond


trait_conditions = st.one_of(
    st.builds(
        lambda op, v: {"type": "trait", "trait": "city", "op": op, "value": v},
        st.sampled_from(["eq", "neq", "starts_with", "contains", "lt"]),
        st.sampled_from([*CITIES, "Bei", "hai"]),
    ),
    st.builds(
        lambda op, vs: {"type": "trait", "trait": "city", "op": op, "values": vs},
        st.sampled_from(["in", "not_in"]),
        st.lists(st.sampled_from(CITIES), min_size=1, max_size=2),
    ),
    st.builds(
        lambda op: {"type": "trait", "trait": "city", "op": op},
        st.sampled_from(["is_set", "is_not_set"]),
    ),
    st.builds(
        lambda op, v: {"type": "trait", "trait": "age", "op": op, "value": v},
        st.sampled_from(["gte", "lt", "eq", "neq"]),
        st.integers(15, 70),
    ),
    st.builds(
        lambda lo, w: {"type": "trait", "trait": "age", "op": "between", "values": [lo, lo + w]},
        st.integers(15, 70),
        st.integers(0, 20),
    ),
    st.builds(
        lambda d: {
            "type": "trait",
            "trait": "birthday",
            "op": "anniversary_within_next",
            "days": d,
        },
        st.integers(0, 10),
    ),
    st.builds(
        lambda op, v: {"type": "trait", "trait": "birthday", "op": op, "value": v},
        st.sampled_from(["before", "after"]),
        st.sampled_from(["1990-01-01", "1995-06-30"]),
    ),
    st.builds(
        lambda d: {"type": "trait", "trait": "birthday", "op": "within_last", "days": d},
        st.integers(0, 20000),
    ),
)

other_conditions = st.one_of(
    st.builds(
        lambda op, v: {"type": "tag", "tag": "orders_90d", "op": op, "value": v},
        st.sampled_from(["gte", "eq", "neq"]),
        st.integers(0, 5),
    ),
    st.builds(
        lambda op, v: {"type": "layer", "layer": "lifecycle", "op": op, "value": v},
        st.sampled_from(["eq", "neq"]),
        st.sampled_from(["new", "loyal", "churned"]),
    ),
    st.builds(
        lambda op: {"type": "layer", "layer": "lifecycle", "op": op},
        st.sampled_from(["is_set", "is_not_set"]),
    ),
)

leaves = st.one_of(event_conditions(), event_time_conditions(), trait_conditions, other_conditions)

rules = st.recursive(
    leaves,
    lambda inner: st.one_of(
        st.builds(lambda rs: {"type": "and", "rules": rs}, st.lists(inner, min_size=1, max_size=3)),
        st.builds(lambda rs: {"type": "or", "rules": rs}, st.lists(inner, min_size=1, max_size=3)),
        st.builds(lambda r: {"type": "not", "rule": r}, inner),
    ),
    max_leaves=5,
)


def _check(stores: Stores, data: Dataset, docs: list[dict[str, Any]]) -> None:
    wh = stores.warehouse
    clear(wh)
    load(wh, data)
    for doc in docs:
        rule: Rule = RULE.validate_python(doc)
        expected = evaluate(rule, data, AT)
        try:
            sql = compile_rule(rule, AT).sql(wh.dialect)
        except Exception as exc:
            raise AssertionError(json.dumps(doc)) from exc
        got = member_ids(wh, sql)
        assert got == expected, json.dumps(doc, indent=1)


# Each example loads a warehouse (~0.3 s on chdb); raise for a deeper search:
# SEG_EXAMPLES=300 .venv/bin/pytest tests/segments/test_compiler_matches_reference.py
EXAMPLES = int(os.environ.get("SEG_EXAMPLES", "25"))


def test_compiled_members_equal_reference_members(wh_stores: Stores) -> None:
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        database=None,
        # Each example loads a warehouse; shrinking would take minutes. A failure
        # prints the whole (small) data set and the rule instead.
        phases=[Phase.explicit, Phase.generate],
    )
    @given(data=datasets(), docs=st.lists(rules, min_size=1, max_size=4))
    def run(data: Dataset, docs: list[dict[str, Any]]) -> None:
        _check(wh_stores, data, docs)

    run()
