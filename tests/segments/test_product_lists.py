"""Product filters read the derived lists (``product_brands``, ``product_categories``) and
select what the reference evaluator selects, NULLs included, on DuckDB and chdb."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.segments.helpers import event, load, member_ids
from zhiying.runtime import Stores
from zhiying.segments.compiler import DIALECTS, compile_rule
from zhiying.segments.models import parse_rule
from zhiying.segments.reference import Dataset, evaluate

AT = datetime(2026, 11, 1, 9, 0, tzinfo=UTC)


def _data() -> Dataset:
    """People whose orders hold every shape a product list takes."""
    data = Dataset()
    orders: list[tuple[str, list[dict[str, Any]] | None]] = [
        ("shiseido", [{"brand": "Shiseido", "category": "skincare"}]),
        ("no_brand", [{"brand": None, "category": None}]),
        ("mixed", [{"brand": None, "category": "makeup"}, {"brand": "SK-II", "category": None}]),
        ("empty", []),
        ("null", None),
        ("two_brands", [{"brand": "Lancome", "category": "skincare"}, {"brand": "Shiseido"}]),
    ]
    for i, (person, products) in enumerate(orders):
        at = AT.replace(tzinfo=None) - timedelta(days=1 + i)
        data.events.append(event(f"m{i}", person, "Order Completed", at, products=products))
    return data


def _filters(one: str, two: str, three: str, letter: str) -> list[dict[str, Any]]:
    return [
        {"op": "eq", "value": one},
        {"op": "in", "values": [two, three]},
        {"op": "neq", "value": one},
        {"op": "not_in", "values": [one, two]},
        {"op": "contains", "value": letter},
        {"op": "starts_with", "value": one[0]},
        {"op": "is_set"},
        {"op": "is_not_set"},
    ]


FILTERS: dict[str, list[dict[str, Any]]] = {
    "brand": _filters("Shiseido", "SK-II", "Lancome", "i"),
    "category": _filters("skincare", "makeup", "toys", "k"),
}


def _rule(field: str, flt: dict[str, Any]) -> Any:
    return parse_rule(
        {
            "type": "event",
            "event": "Order Completed",
            "where": [{"property": f"properties.products[].{field}", **flt}],
        }
    )


def test_product_field_filters_select_the_reference_members(wh_stores: Stores) -> None:
    wh = wh_stores.warehouse
    data = _data()
    load(wh, data)
    wrong = {}
    for field, filters in FILTERS.items():
        for flt in filters:
            rule = _rule(field, flt)
            expected = evaluate(rule, data, AT)
            got = member_ids(wh, compile_rule(rule, AT).sql(wh.dialect))
            if got != expected:
                wrong[f"{field} {flt}"] = {wh.dialect: sorted(got), "reference": sorted(expected)}
    assert wrong == {}


@pytest.mark.parametrize("dialect", DIALECTS)
def test_brand_and_category_filters_read_the_lists_not_the_products(dialect: str) -> None:
    for field, column in (("brand", "product_brands"), ("category", "product_categories")):
        for flt in ({"op": "eq", "value": "x"}, {"op": "starts_with", "value": "x"}):
            sql = compile_rule(_rule(field, flt), AT).sql(dialect)  # type: ignore[arg-type]
            assert column in sql and "products" not in sql.replace(column, ""), (field, flt)
    # Fields without a list still read the products.
    price = compile_rule(_rule("price", {"op": "gt", "value": 1}), AT).sql(dialect)  # type: ignore[arg-type]
    assert "products" in price and "product_brands" not in price
