"""Partial refunds: refunding some lines of an order gives back the discount those lines
carried, on SQLite and on PostgreSQL."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient

from tests.coupons.test_lifecycle import CART, counters, template
from zhiying.api.app import create_app
from zhiying.coupons import service as svc
from zhiying.coupons.ledger import history, publish_pending
from zhiying.errors import ValidationFailed
from zhiying.keys.service import create_key
from zhiying.runtime import Stores


def redeemed(s: Stores, **template_kw: Any) -> tuple[str, str]:
    """A 满200减40 coupon redeemed on order o1: 24.00 on line a, 16.00 on line b."""
    now = s.clock.now()
    t = template(s, **template_kw)
    code = svc.issue(s.engine, t, "u1", now).coupon.code
    got = svc.redeem(s.engine, "o1", now, one_id="u1", codes=[code], cart=CART)
    assert got.coupons[0].lines == {"a": 2400, "b": 1600}
    return t, code


def ledger_of(s: Stores, code: str) -> list[Any]:
    with s.engine.connect() as conn:
        return history(conn, code)


def test_refunding_one_line_claws_back_exactly_its_allocation(ops_stores: Stores) -> None:
    s, now = ops_stores, ops_stores.clock.now()
    t, code = redeemed(s)
    result = svc.refund(s.engine, "o1", now, lines=["a"])
    assert result.partially_refunded == [code] and result.restored == result.voided == []
    assert result.clawed_back == {code: 2400} and result.discount_returned == 2400
    coupon = svc.get_coupon(s.engine, code)
    assert coupon.state == "redeemed" and coupon.discount == 1600 and coupon.order_id == "o1"
    c = counters(s, t)
    assert c["discount_spent"] == 1600 and c["redeemed_count"] == 1
    last = ledger_of(s, code)[-1]
    assert (last.action, last.from_state, last.to_state) == (
        "partially_refunded",
        "redeemed",
        "redeemed",
    )
    assert last.amount == 2400 and last.lines == ("a",) and last.order_id == "o1"


def test_refunding_the_last_discounted_line_refunds_the_coupon_in_full(ops_stores: Stores) -> None:
    s, now = ops_stores, ops_stores.clock.now()
    t, code = redeemed(s)
    svc.refund(s.engine, "o1", now, lines=["a"])
    result = svc.refund(s.engine, "o1", now, lines=["b"])
    assert result.restored == [code] and result.clawed_back == {code: 1600}
    coupon = svc.get_coupon(s.engine, code)
    assert coupon.state == "issued" and coupon.discount is None and coupon.order_id is None
    c = counters(s, t)
    assert c["discount_spent"] == 0 and c["redeemed_count"] == 0
    actions = [e.action for e in ledger_of(s, code)]
    assert actions == ["issued", "locked", "redeemed", "partially_refunded", "refunded"]
    # restored like after a full refund: usable again
    assert svc.lock(s.engine, "o2", "u1", [code], CART, now).total_discount == 4000


def test_void_policy_voids_and_frees_budget_when_nothing_is_left(ops_stores: Stores) -> None:
    s, now = ops_stores, ops_stores.clock.now()
    t, code = redeemed(s, refund="void", limits={"budget": 10000})
    assert svc.refund(s.engine, "o1", now, lines=["a", "b"]).voided == [code]
    assert svc.get_coupon(s.engine, code).state == "voided"
    c = counters(s, t)
    assert c["budget_committed"] == 0 and c["discount_spent"] == 0


def test_unknown_line_is_refused_naming_it_and_changes_nothing(ops_stores: Stores) -> None:
    s, now = ops_stores, ops_stores.clock.now()
    t, code = redeemed(s)
    with pytest.raises(ValidationFailed) as refused:
        svc.refund(s.engine, "o1", now, lines=["a", "zz"])
    assert refused.value.field == "lines" and "zz" in refused.value.message
    assert refused.value.details["lines"] == ["zz"]
    assert svc.get_coupon(s.engine, code).discount == 4000
    assert counters(s, t)["discount_spent"] == 4000


def test_refunding_a_line_twice_is_refused_unless_replayed_by_key(ops_stores: Stores) -> None:
    s, now = ops_stores, ops_stores.clock.now()
    t, _ = redeemed(s)
    first = svc.refund(s.engine, "o1", now, lines=["a"], idempotency_key="rf-1")
    replay = svc.refund(s.engine, "o1", now, lines=["a"], idempotency_key="rf-1")
    assert replay == first
    with pytest.raises(svc.CouponConflict) as again:
        svc.refund(s.engine, "o1", now, lines=["a"])
    assert again.value.details["rule"] == "already_refunded" and "a" in again.value.message
    assert again.value.details["lines"] == ["a"]
    assert counters(s, t)["discount_spent"] == 1600


def test_only_coupons_carrying_the_line_change_and_all_remember_it(ops_stores: Stores) -> None:
    s, now = ops_stores, ops_stores.clock.now()
    item = template(
        s,
        benefit={"kind": "fixed_amount", "amount": 1000},
        scope={"products": ["p1"]},
        stacking={"group": "item"},
    )
    order = template(s)
    c_item = svc.issue(s.engine, item, "u1", now).coupon.code
    c_order = svc.issue(s.engine, order, "u1", now).coupon.code
    got = svc.redeem(s.engine, "o1", now, one_id="u1", codes=[c_item, c_order], cart=CART)
    assert {c.code: set(c.lines) for c in got.coupons} == {c_item: {"a"}, c_order: {"a", "b"}}
    result = svc.refund(s.engine, "o1", now, lines=["b"])
    assert set(result.clawed_back) == {c_order}
    assert svc.get_coupon(s.engine, c_item).discount == 1000
    assert counters(s, item)["discount_spent"] == 1000
    assert [e.action for e in ledger_of(s, c_item)][-1] == "redeemed"
    with pytest.raises(svc.CouponConflict):
        svc.refund(s.engine, "o1", now, lines=["b"])
    # a full refund afterwards gives back what is left
    rest = svc.refund(s.engine, "o1", now)
    assert sorted(rest.restored) == sorted([c_item, c_order])
    assert counters(s, order)["discount_spent"] == counters(s, item)["discount_spent"] == 0


def test_partial_refund_is_a_coupon_refunded_event_with_amount_and_lines(
    ops_stores: Stores,
) -> None:
    s, now = ops_stores, ops_stores.clock.now()
    _, code = redeemed(s)
    svc.refund(s.engine, "o1", now, lines=["a"])
    publish_pending(s.engine, s.warehouse, now)
    rows = s.warehouse.query(
        f"SELECT event, properties FROM events WHERE coupon = '{code}' ORDER BY message_id"
    ).to_pylist()
    assert [r["event"] for r in rows] == [
        "Coupon Issued",
        "Coupon Locked",
        "Coupon Redeemed",
        "Coupon Refunded",
    ]
    props = orjson.loads(rows[-1]["properties"])
    assert props["action"] == "partially_refunded" and props["discount_minor"] == 2400
    assert props["lines"] == ["a"] and props["order_id"] == "o1"


def test_refund_route_accepts_lines(stores: Stores) -> None:
    _, code = redeemed(stores)
    c = TestClient(create_app(stores))
    c.headers["Authorization"] = f"Bearer {create_key(stores.engine, 'admin', stores.clock.now())}"
    r = c.post("/api/coupons/orders/o1/refund", json={"lines": ["b"]})
    assert r.status_code == 200 and r.json()["clawed_back"] == {code: 1600}
    bad = c.post("/api/coupons/orders/o1/refund", json={"lines": ["nope"]})
    assert bad.status_code == 422 and "nope" in bad.json()["detail"]
    twice = c.post("/api/coupons/orders/o1/refund", json={"lines": ["b"]})
    assert twice.status_code == 409 and twice.json()["errors"][0]["rule"] == "already_refunded"
