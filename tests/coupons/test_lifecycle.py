"""Issue → lock → redeem → release/refund → expire, with a ledger row per transition,
on SQLite and on PostgreSQL."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from tests.coupons.factories import spec
from zhiying.clock import ManualClock
from zhiying.coupons import service as svc
from zhiying.coupons.ledger import history, publish_pending
from zhiying.coupons.models import Cart, CartLine, TemplateSpec
from zhiying.errors import Conflict, NotFound
from zhiying.runtime import Stores
from zhiying.store.tables import coupon_templates

FULL_200_40 = {"kind": "full_reduction", "threshold": 20000, "reduction": 4000}
CART = Cart((CartLine("a", "p1", 15000), CartLine("b", "p2", 10000)), shipping_fee=600)


def template(stores: Stores, **kw: Any) -> str:
    s: TemplateSpec = spec(kw.pop("benefit", FULL_200_40), **kw)
    return svc.create_template(stores.engine, s, stores.clock.now()).template_id


def counters(stores: Stores, template_id: str) -> dict[str, Any]:
    with stores.engine.connect() as conn:
        row = conn.execute(
            sa.select(coupon_templates).where(coupon_templates.c.template_id == template_id)
        ).one()
    return dict(row._mapping)


def test_issue_is_idempotent_by_issuance_key_and_limited_per_user(ops_stores: Stores) -> None:
    s, now = ops_stores, ops_stores.clock.now()
    t = template(s)
    first = svc.issue(s.engine, t, "u1", now, issuance_key="signup:u1")
    again = svc.issue(s.engine, t, "u1", now, issuance_key="signup:u1")
    assert first.created and not again.created and again.coupon.code == first.coupon.code
    with pytest.raises(svc.LimitReached) as refused:
        svc.issue(s.engine, t, "u1", now, issuance_key="another")
    assert refused.value.details["rule"] == "per_user_claim"
    assert counters(s, t)["issued_count"] == 1


def test_lock_redeem_refund_restores_coupon_and_writes_ledger(ops_stores: Stores) -> None:
    s, now = ops_stores, ops_stores.clock.now()
    t = template(s)
    code = svc.issue(s.engine, t, "u1", now).coupon.code
    locked = svc.lock(s.engine, "o1", "u1", [code], CART, now)
    assert locked.total_discount == 4000 and locked.payable == 25000 + 600 - 4000
    assert locked.coupons[0].lines == {"a": 2400, "b": 1600}
    svc.redeem(s.engine, "o1", now)
    assert counters(s, t)["discount_spent"] == 4000
    refunded = svc.refund(s.engine, "o1", now)
    assert refunded.restored == [code] and svc.get_coupon(s.engine, code).state == "issued"
    assert counters(s, t)["discount_spent"] == 0
    with s.engine.connect() as conn:
        actions = [e.action for e in history(conn, code)]
    assert actions == ["issued", "locked", "redeemed", "refunded"]


def test_refund_voids_when_template_says_so_and_frees_budget(ops_stores: Stores) -> None:
    s, now = ops_stores, ops_stores.clock.now()
    t = template(s, refund="void", limits={"budget": 10000})
    code = svc.issue(s.engine, t, "u1", now).coupon.code
    svc.redeem(s.engine, "o1", now, one_id="u1", codes=[code], cart=CART)
    assert svc.refund(s.engine, "o1", now).voided == [code]
    assert counters(s, t)["budget_committed"] == 0
    with pytest.raises(svc.CouponConflict):
        svc.lock(s.engine, "o2", "u1", [code], CART, now)


def test_second_redeem_of_same_coupon_is_rejected(ops_stores: Stores) -> None:
    s, now = ops_stores, ops_stores.clock.now()
    code = svc.issue(s.engine, template(s), "u1", now).coupon.code
    svc.redeem(s.engine, "o1", now, one_id="u1", codes=[code], cart=CART)
    with pytest.raises(svc.CouponConflict) as again:
        svc.redeem(s.engine, "o2", now, one_id="u1", codes=[code], cart=CART)
    assert again.value.details["rule"] == "redeemed"


def test_lock_refuses_a_cart_below_threshold_naming_the_rule(ops_stores: Stores) -> None:
    s, now = ops_stores, ops_stores.clock.now()
    code = svc.issue(s.engine, template(s), "u1", now).coupon.code
    small = Cart((CartLine("a", "p1", 15000),))
    with pytest.raises(svc.CouponNotApplicable) as why:
        svc.lock(s.engine, "o1", "u1", [code], small, now)
    assert why.value.details["rule"] == "min_spend"
    assert "needs 200.00 in scope, cart has 150.00" in why.value.message


def test_someone_elses_coupon_is_not_found(ops_stores: Stores) -> None:
    s, now = ops_stores, ops_stores.clock.now()
    code = svc.issue(s.engine, template(s), "u1", now).coupon.code
    with pytest.raises(NotFound):
        svc.lock(s.engine, "o1", "intruder", [code], CART, now)


def test_cancel_releases_and_crashed_checkout_lock_times_out(
    ops_stores: Stores, clock: ManualClock
) -> None:
    s = ops_stores
    t = template(s, lock_ttl_seconds=600)
    code = svc.issue(s.engine, t, "u1", clock.now()).coupon.code
    svc.lock(s.engine, "o1", "u1", [code], CART, clock.now())
    assert svc.release(s.engine, "o1", clock.now()).released == [code]
    # a checkout that crashed between lock and redeem
    svc.lock(s.engine, "o2", "u1", [code], CART, clock.now())
    with pytest.raises(svc.CouponConflict) as busy:
        svc.lock(s.engine, "o3", "u1", [code], CART, clock.now())
    assert busy.value.details["rule"] == "locked"
    clock.advance(timedelta(seconds=601))
    assert svc.release_timed_out(s.engine, clock.now()) == 1
    assert svc.get_coupon(s.engine, code).state == "issued"
    assert svc.redeem(s.engine, "o3", clock.now(), one_id="u1", codes=[code], cart=CART)


def test_expired_lock_is_taken_over_by_the_next_order(
    ops_stores: Stores, clock: ManualClock
) -> None:
    s = ops_stores
    code = svc.issue(s.engine, template(s, lock_ttl_seconds=60), "u1", clock.now()).coupon.code
    svc.lock(s.engine, "o1", "u1", [code], CART, clock.now())
    clock.advance(timedelta(seconds=61))
    svc.lock(s.engine, "o2", "u1", [code], CART, clock.now())
    with s.engine.connect() as conn:
        entries = [(e.action, e.order_id, e.reason) for e in history(conn, code)][1:]
    assert entries == [
        ("locked", "o1", ""),
        ("released", "o1", "lock timed out"),
        ("locked", "o2", ""),
    ]


def test_replayed_redemption_with_same_key_returns_the_first_answer(ops_stores: Stores) -> None:
    s, now = ops_stores, ops_stores.clock.now()
    code = svc.issue(s.engine, template(s), "u1", now).coupon.code
    first = svc.redeem(
        s.engine, "o1", now, one_id="u1", codes=[code], cart=CART, idempotency_key="pay-1"
    )
    replay = svc.redeem(
        s.engine, "o1", now, one_id="u1", codes=[code], cart=CART, idempotency_key="pay-1"
    )
    assert replay == first
    with pytest.raises(Conflict) as reuse:
        svc.redeem(
            s.engine, "o9", now, one_id="u1", codes=[code], cart=CART, idempotency_key="pay-1"
        )
    assert reuse.value.details["rule"] == "idempotency_key_reuse"


def test_expiry_returns_face_value_to_the_budget(ops_stores: Stores, clock: ManualClock) -> None:
    s = ops_stores
    t = template(s, limits={"budget": 8000, "per_user_claim": 5})
    svc.issue(s.engine, t, "u1", clock.now())
    svc.issue(s.engine, t, "u2", clock.now())
    with pytest.raises(svc.LimitReached) as spent:
        svc.issue(s.engine, t, "u3", clock.now())
    assert spent.value.details["rule"] == "budget"
    clock.advance(timedelta(days=31))
    assert svc.expire_due(s.engine, clock.now()) == 2
    assert counters(s, t)["budget_committed"] == 0
    assert svc.issue(s.engine, t, "u3", clock.now()).created


def test_batch_issuance_is_idempotent_and_stops_at_quantity(ops_stores: Stores) -> None:
    s, now = ops_stores, ops_stores.clock.now()
    t = template(s, limits={"quantity": 25})
    seen: list[int] = []
    people = [f"p{i}" for i in range(20)] + ["p3", "p4"]  # repeats are ignored
    r1 = svc.issue_batch(
        s.engine, s.warehouse, t, people, now, batch_key="b1", chunk_size=7, progress=seen.append
    )
    assert (r1.requested, r1.issued, r1.events_written) == (20, 20, 20)
    assert seen[-1] == 20
    r2 = svc.issue_batch(
        s.engine, s.warehouse, t, [f"p{i}" for i in range(30)], now, batch_key="b1"
    )
    assert (r2.already_issued, r2.issued, r2.not_issued, r2.stopped_by) == (20, 5, 5, "quantity")
    assert counters(s, t)["issued_count"] == 25


def test_every_transition_becomes_a_warehouse_event(ops_stores: Stores) -> None:
    s, now = ops_stores, ops_stores.clock.now()
    t = template(s)
    code = svc.issue(s.engine, t, "u1", now).coupon.code
    svc.lock(s.engine, "o1", "u1", [code], CART, now)
    svc.release(s.engine, "o1", now)
    svc.redeem(s.engine, "o2", now, one_id="u1", codes=[code], cart=CART)
    assert publish_pending(s.engine, s.warehouse, now).published == 5
    assert publish_pending(s.engine, s.warehouse, now).published == 0
    rows = s.warehouse.query(
        "SELECT event, one_id, coupon, order_id, properties FROM events ORDER BY message_id"
    ).to_pylist()
    assert [r["event"] for r in rows] == [
        "Coupon Issued",
        "Coupon Locked",
        "Coupon Released",
        "Coupon Locked",
        "Coupon Redeemed",
    ]
    assert all(r["coupon"] == code and r["one_id"] == "u1" for r in rows)
    assert '"discount_minor":4000' in rows[-1]["properties"] and rows[-1]["order_id"] == "o2"
