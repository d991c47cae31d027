"""Exactly-once under real concurrency (threads against SQLite WAL and PostgreSQL).

Each test opens an engine with one pooled connection per worker thread: SQLAlchemy's
pool is not fair, so with more threads than connections a waiting thread can starve
past the checkout timeout while the others keep re-using the connections.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from threading import Barrier

import pytest
import sqlalchemy as sa
from sqlalchemy import Engine

from tests.coupons.factories import spec
from zhiying.coupons import service as svc
from zhiying.coupons.models import Cart, CartLine
from zhiying.errors import ZhiyingError
from zhiying.runtime import Stores
from zhiying.store import make_engine
from zhiying.store.tables import coupon_templates, coupons

CART = Cart((CartLine("a", "p1", 30000),))
FIXED = {"kind": "fixed_amount", "amount": 500}
WORKERS = 32


@pytest.fixture
def engine(ops_stores: Stores) -> Iterator[Engine]:
    e = make_engine(
        ops_stores.settings.resolved_database_url(),
        pool_size=64,
        max_overflow=0,
        pool_timeout=120,
    )
    yield e
    e.dispose()


def test_64_concurrent_redemptions_of_one_coupon_exactly_one_succeeds(
    ops_stores: Stores, engine: Engine
) -> None:
    s, now = ops_stores, ops_stores.clock.now()
    t = svc.create_template(s.engine, spec(FIXED), now).template_id
    code = svc.issue(s.engine, t, "u1", now).coupon.code
    start = Barrier(64)

    def attempt(i: int) -> str:
        start.wait()
        try:
            svc.redeem(engine, f"o{i}", now, one_id="u1", codes=[code], cart=CART)
            return "ok"
        except svc.CouponConflict as exc:
            return f"conflict:{exc.details['rule']}"

    with ThreadPoolExecutor(64) as pool:
        outcomes = list(pool.map(attempt, range(64)))
    assert outcomes.count("ok") == 1
    assert set(outcomes) - {"ok"} <= {"conflict:redeemed", "conflict:locked"}
    with s.engine.connect() as conn:
        redeemed = conn.execute(
            sa.select(coupon_templates.c.redeemed_count, coupon_templates.c.discount_spent)
        ).one()
    assert tuple(redeemed) == (1, 500)


def test_10000_concurrent_claims_against_5000_issue_exactly_5000(
    ops_stores: Stores, engine: Engine
) -> None:
    s, now = ops_stores, ops_stores.clock.now()
    t = svc.create_template(
        s.engine, spec(FIXED, limits={"quantity": 5000, "budget": 5000 * 500}), now
    ).template_id

    def claim(i: int) -> bool:
        try:
            svc.issue(engine, t, f"u{i}", now, source="claim")
            return True
        except svc.LimitReached:
            return False

    with ThreadPoolExecutor(WORKERS) as pool:
        results = list(pool.map(claim, range(10_000), chunksize=50))
    assert results.count(True) == 5000
    with s.engine.connect() as conn:
        stored = conn.execute(sa.select(sa.func.count()).select_from(coupons)).scalar_one()
        issued, committed = conn.execute(
            sa.select(coupon_templates.c.issued_count, coupon_templates.c.budget_committed)
        ).one()
    assert (stored, issued, committed) == (5000, 5000, 5000 * 500)


def test_concurrent_replays_of_one_idempotency_key_redeem_once(
    ops_stores: Stores, engine: Engine
) -> None:
    s, now = ops_stores, ops_stores.clock.now()
    t = svc.create_template(s.engine, spec(FIXED), now).template_id
    code = svc.issue(s.engine, t, "u1", now).coupon.code
    start = Barrier(16)

    def attempt(_: int) -> object:
        start.wait()
        try:
            return svc.redeem(
                engine, "o1", now, one_id="u1", codes=[code], cart=CART, idempotency_key="k"
            )
        except ZhiyingError as exc:
            return exc

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(attempt, range(16)))
    assert all(isinstance(a, svc.RedeemResult) for a in answers), answers
    assert len({a.model_dump_json() for a in answers if isinstance(a, svc.RedeemResult)}) == 1
