"""Abuse control: block lists, limits across accounts, velocity, and the risk report."""

from __future__ import annotations

from datetime import timedelta

import pytest
import sqlalchemy as sa

from tests.coupons.factories import spec
from zhiying.clock import ManualClock
from zhiying.coupons import abuse
from zhiying.coupons import service as svc
from zhiying.coupons.models import Cart, CartLine, RequestContext
from zhiying.runtime import Stores
from zhiying.store.tables import identifiers, one_ids

FIXED = {"kind": "fixed_amount", "amount": 500}
CART = Cart((CartLine("a", "p1", 3000),))


def test_blocked_device_cannot_claim_and_refusal_names_the_rule(stores: Stores) -> None:
    now = stores.clock.now()
    t = svc.create_template(stores.engine, spec(FIXED), now).template_id
    abuse.block(stores.engine, "device_id", "dev-farm-1", "emulator farm", now)
    with pytest.raises(abuse.AbuseRefused) as refused:
        svc.issue(stores.engine, t, "u1", now, context=RequestContext(device_id="dev-farm-1"))
    assert refused.value.details["rule"] == "block_list"
    assert svc.issue(stores.engine, t, "u2", now, context=RequestContext(device_id="dev-ok"))


def test_device_limit_applies_across_accounts_including_onboarded_identifiers(
    ops_stores: Stores,
) -> None:
    s, now = ops_stores, ops_stores.clock.now()
    rules = {"identity_limits": [{"kind": "device_id", "max_count": 2}]}
    t = svc.create_template(s.engine, spec(FIXED, abuse=rules), now).template_id
    # u3's device is known to ONE_ID (identifiers table), not sent with the request
    with s.engine.begin() as conn:
        conn.execute(
            identifiers.insert().values(
                kind="device_id", value="phone-A", one_id="u3", first_seen=now, last_seen=now
            )
        )
    ctx = RequestContext(device_id="phone-A")
    svc.issue(s.engine, t, "u1", now, context=ctx)
    svc.issue(s.engine, t, "u2", now, context=ctx)
    with pytest.raises(abuse.AbuseRefused) as refused:
        svc.issue(s.engine, t, "u3", now)
    assert refused.value.details["rule"] == "identity_limit:device_id"


def test_velocity_rule_limits_claims_per_ip_in_a_sliding_window(
    stores: Stores, clock: ManualClock
) -> None:
    rules = {"velocity": [{"kind": "ip", "max_count": 3, "window_seconds": 3600}]}
    t = svc.create_template(stores.engine, spec(FIXED, abuse=rules), clock.now()).template_id
    ctx = RequestContext(ip="10.0.0.7")
    for i in range(3):
        svc.issue(stores.engine, t, f"u{i}", clock.now(), context=ctx)
    with pytest.raises(abuse.AbuseRefused) as refused:
        svc.issue(stores.engine, t, "u9", clock.now(), context=ctx)
    assert refused.value.details["rule"] == "velocity:ip"
    clock.advance(timedelta(hours=1, seconds=1))
    assert svc.issue(stores.engine, t, "u9", clock.now(), context=ctx).created


def test_one_redemption_per_payment_account_across_accounts(stores: Stores) -> None:
    now = stores.clock.now()
    rules = {"identity_limits": [{"kind": "payment_account", "max_count": 1, "action": "redeem"}]}
    t = svc.create_template(stores.engine, spec(FIXED, abuse=rules), now).template_id
    pay = RequestContext(payment_account="alipay:ACCT 42")
    first, second = (svc.issue(stores.engine, t, u, now).coupon.code for u in ("u1", "u2"))
    svc.redeem(stores.engine, "o1", now, one_id="u1", codes=[first], cart=CART, context=pay)
    with pytest.raises(abuse.AbuseRefused) as refused:
        svc.redeem(stores.engine, "o2", now, one_id="u2", codes=[second], cart=CART, context=pay)
    assert refused.value.details["rule"] == "identity_limit:payment_account"


def test_risk_report_flags_new_accounts_sharing_a_device_and_one_shot_redeemers(
    stores: Stores, clock: ManualClock
) -> None:
    now = clock.now()
    t = svc.create_template(stores.engine, spec(FIXED), now).template_id
    with stores.engine.begin() as conn:
        conn.execute(one_ids.insert(), [{"one_id": f"n{i}", "created_at": now} for i in range(5)])
    for i in range(5):
        code = svc.issue(
            stores.engine,
            t,
            f"n{i}",
            now,
            context=RequestContext(device_id="shared"),
            source="claim",
        ).coupon.code
        svc.redeem(stores.engine, f"o{i}", now, one_id=f"n{i}", codes=[code], cart=CART)
    svc.issue(stores.engine, t, "loyal", now, context=RequestContext(device_id="own"))
    clock.advance(timedelta(days=31))
    report = abuse.risk_report(stores.engine, clock.now(), min_accounts=3)
    [cluster] = report.clusters
    assert (cluster.kind, cluster.accounts, cluster.new_accounts) == ("device_id", 5, 5)
    assert cluster.one_shot_accounts == 5 and report.one_shot_accounts == 5
    with stores.engine.connect() as conn:
        stored = conn.execute(sa.text("SELECT value_hash FROM coupon_marks")).scalars().all()
    assert "shared" not in stored and all(len(h) == 64 for h in stored)
