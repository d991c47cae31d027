"""The SQL of each layer classifies every customer exactly as the pure rules do (DuckDB, chdb)."""

from __future__ import annotations

import random
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from tests.tags.factories import event, insert_events
from zhiying.errors import NotFound
from zhiying.profiles.layers import service
from zhiying.profiles.layers.models import (
    LifecycleRules,
    PromotionSensitivityRules,
    ValueFrequencyRules,
    cut_points,
    lifecycle_stage,
    promotion_sensitivity,
    quadrant,
    score,
)
from zhiying.runtime import Stores

NOW = datetime(2026, 11, 1, 9, 0, tzinfo=UTC)


def _days(at: datetime) -> int:
    return (NOW.date() - at.date()).days


def synthetic(seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    rows = []
    for p in range(120):
        person = f"p{p:03d}"
        for _ in range(rng.choice([0, 1, 1, 2, 3, 5, 8])):
            at = (NOW - timedelta(days=rng.uniform(0, 500))).replace(tzinfo=None)
            coupon = "C" if rng.random() < 0.4 else None
            order = f"o{rng.getrandbits(48)}"
            rows.append(
                event(
                    person,
                    at,
                    revenue=f"{rng.randint(1, 30000) / 100:.2f}",
                    coupon=coupon,
                    order_id=order,
                )
            )
            if coupon is None and rng.random() < 0.2:  # a redemption recorded apart
                rows.append(event(person, at, "Coupon Redeemed", order_id=order))
        for _ in range(rng.choice([0, 0, 2, 4])):
            at = (NOW - timedelta(days=rng.uniform(0, 300))).replace(tzinfo=None)
            rows.append(event(person, at, "Coupon Issued"))
        rows.append(
            event(person, (NOW - timedelta(hours=1)).replace(tzinfo=None), None, type="page")
        )
    return rows


def expected(rows: list[dict[str, Any]]) -> dict[str, dict[str, str]]:
    by: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        by[r["one_id"]].append(r | {"timestamp": r["timestamp"].replace(tzinfo=UTC)})
    since = NOW - timedelta(days=365)
    offer_cutoff = NOW - timedelta(days=7)
    life, vf_rules, promo = LifecycleRules(), ValueFrequencyRules(), PromotionSensitivityRules()
    metrics = {}
    for person, evs in by.items():
        orders = [e for e in evs if e["event"] == "Order Completed"]
        if not orders:
            continue
        stamps = [o["timestamp"] for o in orders]
        recent = [o for o in orders if o["timestamp"] > since]
        cents = sum(int(o["revenue"] * 100) for o in recent)
        coupon_keys = {o["order_id"] for o in recent if o["coupon"]} | {
            e["order_id"] for e in evs if e["event"] == "Coupon Redeemed" and e["timestamp"] > since
        }
        offers = [
            e["timestamp"]
            for e in evs
            if e["event"] == "Coupon Issued" and since < e["timestamp"] <= offer_cutoff
        ]
        responded = sum(any(o < s <= o + timedelta(days=7) for s in stamps) for o in offers)
        metrics[person] = {
            "lifecycle": lifecycle_stage(_days(min(stamps)), _days(max(stamps)), len(orders), life),
            "f": len(recent),
            "m": cents,
            "promotion_sensitivity": promotion_sensitivity(
                len(recent), len(coupon_keys), len(offers), responded, promo
            ),
        }
    active = [m for m in metrics.values() if m["f"] > 0]

    def cuts(key: str) -> list[int]:
        hist: dict[int, int] = defaultdict(int)
        for m in active:
            hist[m[key]] += 1
        return cut_points(list(hist), list(hist.values()), vf_rules.bins)

    f_cuts, m_cuts = cuts("f"), cuts("m")
    return {
        person: {
            "lifecycle": m["lifecycle"],
            "value_frequency": quadrant(score(m["f"], f_cuts), score(m["m"], m_cuts), vf_rules),
            "promotion_sensitivity": m["promotion_sensitivity"],
        }
        for person, m in metrics.items()
    }


def stored(stores: Stores) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = defaultdict(dict)
    for r in stores.warehouse.query("SELECT one_id, layer, value FROM layer_values").to_pylist():
        out[r["one_id"]][r["layer"]] = r["value"]
    return dict(out)


def test_sql_layers_equal_the_pure_rules_for_every_customer(wh_stores: Stores) -> None:
    rows = synthetic(seed=7)
    insert_events(wh_stores.warehouse, rows)
    runs = service.compute_layers(wh_stores)
    want = expected(rows)
    assert stored(wh_stores) == want
    assert {r.layer: sum(r.counts.values()) for r in runs} == dict.fromkeys(
        ("lifecycle", "value_frequency", "promotion_sensitivity"), len(want)
    )
    # the synthetic data reaches every promotion class, so the rules are all exercised
    assert all(n > 0 for n in runs[2].counts.values())


def test_recomputing_an_instant_replaces_it(stores: Stores) -> None:
    insert_events(stores.warehouse, synthetic(seed=3))
    first = service.compute_layers(stores, layers=["lifecycle"])
    again = service.compute_layers(stores, layers=["lifecycle"])
    assert first[0].counts == again[0].counts
    n = stores.warehouse.query("SELECT count(*) AS n FROM layer_values").column("n")[0].as_py()
    assert n == first[0].rows


def test_migration_matrix_counts_moves_between_two_dates(wh_stores: Stores) -> None:
    def at(days_ago: float) -> datetime:
        return (NOW - timedelta(days=days_ago)).replace(tzinfo=None)

    insert_events(
        wh_stores.warehouse,
        [
            event("a", at(300)),  # at risk → churned (no order since)
            event("b", at(260)),
            event("b", at(220)),
            event("b", at(5)),  # growing → mature
            event("c", at(10)),  # not a customer yet → new
        ],
    )
    start, end = NOW - timedelta(days=200), NOW
    service.compute_layers(wh_stores, as_of=start, layers=["lifecycle"])
    service.compute_layers(wh_stores, as_of=end, layers=["lifecycle"])
    matrix = service.migration(wh_stores, "lifecycle", start, end)
    assert matrix.moved("at_risk", "churned") == 1  # a: quiet for 100, then 300 days
    assert matrix.moved("growing", "mature") == 1  # b: a third order
    assert matrix.moved("none", "new") == 1
    assert sum(map(sum, matrix.rows())) == 3
    assert matrix.from_values[-1] == "none"


def test_distribution_of_an_uncomputed_date_is_not_found(stores: Stores) -> None:
    with pytest.raises(NotFound):
        service.distribution(stores, "lifecycle", NOW)


def test_stored_rules_change_the_classification(stores: Stores) -> None:
    insert_events(stores.warehouse, [event("a", (NOW - timedelta(days=100)).replace(tzinfo=None))])
    assert service.compute_layers(stores, layers=["lifecycle"])[0].counts["at_risk"] == 1
    service.set_rules(stores, LifecycleRules(at_risk_days=120, churn_days=200))
    assert service.rules_for(stores, "lifecycle").at_risk_days == 120
    assert service.compute_layers(stores, layers=["lifecycle"])[0].counts["growing"] == 1
    service.reset_rules(stores, "lifecycle")
    assert service.rules_for(stores, "lifecycle") == LifecycleRules()


def test_money_is_compared_in_cents() -> None:
    assert int(Decimal("45.57") * 100) == 4557
