"""Reading coupons: one coupon, a person's wallet, and a quote over the wallet.

Why it exists: the read side needs no write transaction and changes nothing, so it
lives apart from the modules that move coupons between states. ``quote_for`` prices a
cart with the person's *usable* coupons only (issued, locked by this order, or locked
with an expired lock), the same set ``redemption.lock`` would accept, so the quote a
checkout shows is the discount the lock gives.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy import Engine

from zhiying.coupons.ledger import template_names
from zhiying.coupons.models import Candidate, Cart
from zhiying.coupons.pricing import Quote, quote
from zhiying.coupons.results import CouponView, coupon_view
from zhiying.coupons.templates import specs_of
from zhiying.errors import NotFound
from zhiying.store.tables import coupons


def get_coupon(engine: Engine, code: str) -> CouponView:
    with engine.connect() as conn:
        row = conn.execute(sa.select(coupons).where(coupons.c.code == code)).first()
        if row is None:
            raise NotFound(f"no coupon {code}", field="code")
        return coupon_view(row, template_names(conn))


def wallet(engine: Engine, one_id: str, *, states: Sequence[str] | None = None) -> list[CouponView]:
    """A person's coupons, soonest to expire first."""
    with engine.connect() as conn:
        q = sa.select(coupons).where(coupons.c.one_id == one_id)
        if states:
            q = q.where(coupons.c.state.in_(list(states)))
        rows = conn.execute(q.order_by(coupons.c.valid_until, coupons.c.code)).all()
        names = template_names(conn) if rows else {}
        return [coupon_view(r, names) for r in rows]


def quote_for(
    engine: Engine, one_id: str, cart: Cart, now: datetime, *, order_id: str | None = None
) -> Quote:
    """``pricing.quote`` over the person's usable coupons (issued, or locked by
    ``order_id``, or locked with an expired lock)."""
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(coupons).where(
                coupons.c.one_id == one_id, coupons.c.state.in_(["issued", "locked"])
            )
        ).all()
        usable = [
            r
            for r in rows
            if r.state == "issued"
            or (order_id is not None and r.order_id == order_id)
            or (r.lock_expires_at is not None and r.lock_expires_at <= now)
        ]
        specs = specs_of(conn, (r.template_id for r in usable)) if usable else {}
    candidates = [
        Candidate(r.code, r.template_id, specs[r.template_id], r.valid_from, r.valid_until)
        for r in usable
    ]
    return quote(cart, candidates, now)
