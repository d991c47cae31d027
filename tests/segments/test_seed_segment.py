"""The seed segment (docs/examples/segments/beijing-loyal.json) on DuckDB and on chdb."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from tests.segments.helpers import event, load, load_example, member_ids, trait
from zhiying.runtime import Stores
from zhiying.segments import service
from zhiying.segments.compiler import compile_rule
from zhiying.segments.models import AndGroup, EventCondition, TraitCondition
from zhiying.segments.reference import Dataset, evaluate

AT = datetime(2026, 11, 1, 9, 0, tzinfo=UTC)
NOW = AT.replace(tzinfo=None)


def _days(n: float) -> datetime:
    return NOW - timedelta(days=n)


def _product(brand: str) -> dict[str, Any]:
    return {"product_id": brand.lower(), "brand": brand, "price": Decimal("199.00"), "quantity": 1}


def seed_data() -> Dataset:
    """One person per clause of the rule, each failing exactly that clause, plus members."""
    data = Dataset()
    n = iter(range(1000))

    def opens(person: str, *ages: float) -> None:
        for age in ages:
            data.events.append(event(f"m{next(n)}", person, "Application Opened", _days(age)))

    def order(person: str, age: float, *brands: str) -> None:
        data.events.append(
            event(
                f"m{next(n)}",
                person,
                "Order Completed",
                _days(age),
                revenue=Decimal("199.00"),
                products=[_product(b) for b in brands],
            )
        )

    for person, city in [
        ("a", "Beijing"),
        ("b", "Beijing"),
        ("c", "Beijing"),
        ("d", "Shanghai"),
        ("e", "Beijing"),
        ("f", "Beijing"),
        ("h", "Beijing"),
        ("i", "Beijing"),
    ]:
        data.trait_updates.append(trait(person, "city", city, _days(200), f"t{next(n)}"))
    # g registered in Beijing but moved: the current city is what counts.
    data.trait_updates.append(trait("g", "city", "Beijing", _days(200), f"t{next(n)}"))
    data.trait_updates.append(trait("g", "city", "Shanghai", _days(20), f"t{next(n)}"))

    opens("a", 1, 2, 80)
    order("a", 30, "Lancome")  # member: no Shiseido, and not recently
    opens("b", 1, 2, 3)
    order("b", 3, "Shiseido")  # bought Shiseido 3 days ago
    opens("c", 1, 2, 3)
    order("c", 10, "Shiseido")  # member: Shiseido, but 10 days ago
    opens("d", 1, 2, 3)
    order("d", 30, "Lancome")  # Shanghai
    opens("e", 1, 2, 100)
    order("e", 30, "Lancome")  # third visit is older than 90 days
    opens("f", 1, 2, 3)  # never ordered
    opens("g", 1, 2, 3)
    order("g", 30, "Lancome")
    # h's visits were recorded under an anonymous ONE_ID merged into h later.
    opens("h_anon", 1, 2, 3)
    order("h", 40)
    opens("i", 1, 2, 3)
    order("i", 2, "Lancome", "Shiseido")  # one Shiseido product among others
    data.aliases = {"h_anon": "h"}
    return data


def test_seed_document_reads_as_the_issue_states() -> None:
    rule = load_example("beijing-loyal.json")
    assert isinstance(rule, AndGroup)
    city, visits, bought, no_shiseido = rule.rules
    assert isinstance(city, TraitCondition) and (city.trait, city.op, city.value) == (
        "city",
        "eq",
        "Beijing",
    )
    assert isinstance(visits, EventCondition) and visits.event == "Application Opened"
    assert visits.window is not None and (visits.window.last, visits.window.unit) == (90, "days")
    assert visits.measure is not None and (visits.measure.fn, visits.measure.op) == ("count", "gte")
    assert visits.measure.value == 3
    assert isinstance(bought, EventCondition) and bought.window is None
    assert bought.measure is not None and (bought.measure.op, bought.measure.value) == ("gte", 1)
    assert isinstance(no_shiseido, EventCondition) and not no_shiseido.performed
    assert no_shiseido.window is not None and no_shiseido.window.last == 7
    assert [(f.property, f.op, f.value) for f in no_shiseido.where] == [
        ("properties.products[].brand", "eq", "Shiseido")
    ]


def test_seed_segment_selects_exactly_the_loyal_beijing_customers(wh_stores: Stores) -> None:
    data = seed_data()
    load(wh_stores.warehouse, data)
    rule = load_example("beijing-loyal.json")
    got = member_ids(wh_stores.warehouse, compile_rule(rule, AT).sql(wh_stores.warehouse.dialect))
    assert got == {"a", "c", "h"} == evaluate(rule, data, AT)


def test_relative_windows_are_evaluated_as_of_at(wh_stores: Stores) -> None:
    load(wh_stores.warehouse, seed_data())
    rule = load_example("beijing-loyal.json")
    assert service.count(wh_stores, rule, AT) == 3
    # Five days later b's Shiseido order is 8 days old (b enters); i's is exactly
    # 7 days old, the window's inclusive start (i stays out).
    later = AT + timedelta(days=5)
    assert evaluate(rule, seed_data(), later) == {"a", "b", "c", "h"}
    assert service.count(wh_stores, rule, later) == 4
    # Events after ``at`` do not exist yet: 8 days earlier nobody had 3 recent visits.
    assert service.count(wh_stores, rule, AT - timedelta(days=8)) == 0
