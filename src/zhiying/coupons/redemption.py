"""Checkout and payment: lock coupons for an order, then redeem them.

Why it exists: this is the hot path of every order that uses a coupon, and the place
where "a coupon is used at most once" is decided. Invariants:

* all or none: every code of the request is locked (or redeemed) or none is;
* exactly once: a coupon row changes only if it still has the ``version`` that was read
  (rows read ``FOR UPDATE``, ordered by code, inside ``tx.write_tx``), and every
  transition writes a ledger row keyed ``(code, seq)``; of concurrent redemptions of one
  coupon exactly one succeeds, the others get ``CouponConflict``;
* an expired lock of another order is taken over (ledger: ``released``, "lock timed
  out"), an unexpired one refuses;
* redemptions of one template queue on its row (``counters.count_redemption``), so the
  per-user use limit and the abuse counts read after it are exact;
* ``idempotency_key``: the first successful answer is stored and replayed
  (``idempotency.py``).

Giving coupons back: ``release.py`` (order cancelled), ``refunds.py`` (order refunded).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Connection, Engine

from zhiying.coupons import abuse
from zhiying.coupons.counters import count_redemption
from zhiying.coupons.errors import CouponConflict, CouponNotApplicable, LimitReached
from zhiying.coupons.idempotency import idempotent
from zhiying.coupons.ledger import LedgerEntry, record
from zhiying.coupons.models import Candidate, Cart, RequestContext, TemplateSpec
from zhiying.coupons.pricing import price_combination
from zhiying.coupons.results import CouponDiscount, LockResult, RedeemResult
from zhiying.coupons.templates import specs_of
from zhiying.errors import NotFound, ValidationFailed
from zhiying.store.tables import coupons

# Hot-path statements, built once (SQLAlchemy reuses their cache keys and compiled forms).
_CODES_FOR_UPDATE = (
    sa.select(coupons)
    .where(coupons.c.code.in_(sa.bindparam("b_codes", expanding=True)))
    .order_by(coupons.c.code)
    .with_for_update()
)
_LOCKED_FOR_ORDER = (
    sa.select(coupons)
    .where(coupons.c.order_id == sa.bindparam("b_order_id"), coupons.c.state == "locked")
    .order_by(coupons.c.code)
    .with_for_update()
)
_LOCKED_CODES = sa.select(coupons.c.code).where(
    coupons.c.order_id == sa.bindparam("b_order_id"), coupons.c.state == "locked"
)
_LOCK = (
    coupons.update()
    .where(coupons.c.code == sa.bindparam("b_code"), coupons.c.version == sa.bindparam("b_version"))
    .values(
        state="locked",
        order_id=sa.bindparam("b_order_id"),
        lock_expires_at=sa.bindparam("b_expires", type_=coupons.c.lock_expires_at.type),
        discount=sa.bindparam("b_discount"),
        allocations=sa.bindparam("b_allocations", type_=coupons.c.allocations.type),
        version=sa.bindparam("b_seq"),
        updated_at=sa.bindparam("b_now", type_=coupons.c.updated_at.type),
    )
)
_USED = sa.select(sa.func.count()).where(
    coupons.c.one_id == sa.bindparam("b_one_id"),
    coupons.c.template_id == sa.bindparam("b_template_id"),
    coupons.c.state == "redeemed",
)
_REDEEM = (
    coupons.update()
    .where(coupons.c.code == sa.bindparam("b_code"), coupons.c.version == sa.bindparam("b_version"))
    .values(
        state="redeemed",
        redeemed_at=sa.bindparam("b_now", type_=coupons.c.redeemed_at.type),
        version=coupons.c.version + 1,
        updated_at=sa.bindparam("b_now", type_=coupons.c.updated_at.type),
    )
)


def lock(
    engine: Engine,
    order_id: str,
    one_id: str,
    codes: Sequence[str],
    cart: Cart,
    now: datetime,
    *,
    idempotency_key: str | None = None,
    context: RequestContext | None = None,
) -> LockResult:
    """Reserve ``codes`` for ``order_id`` at checkout (all or none), priced on ``cart``.

    The lock lasts the templates' ``lock_ttl_seconds`` (the shortest); an expired lock
    is released by ``release_timed_out`` or taken over by the next lock of the coupon.
    """
    request = {
        "order_id": order_id,
        "one_id": one_id,
        "codes": sorted(codes),
        "cart": _cart_dict(cart),
    }
    return idempotent(
        engine,
        idempotency_key,
        "lock",
        request,
        now,
        LockResult,
        lambda conn: _lock_in_tx(
            conn,
            order_id=order_id,
            one_id=one_id,
            codes=codes,
            cart=cart,
            now=now,
            context=context,
            request_key=idempotency_key,
        ),
    )


def redeem(
    engine: Engine,
    order_id: str,
    now: datetime,
    *,
    one_id: str | None = None,
    codes: Sequence[str] | None = None,
    cart: Cart | None = None,
    idempotency_key: str | None = None,
    context: RequestContext | None = None,
) -> RedeemResult:
    """Redeem the coupons locked for ``order_id`` (at payment).

    With ``one_id``, ``codes`` and ``cart`` the coupons are locked and redeemed in one
    transaction (a point-of-sale scan). Of concurrent redemptions of one coupon exactly
    one succeeds; the others get ``CouponConflict``.
    """
    request = {
        "order_id": order_id,
        "one_id": one_id,
        "codes": sorted(codes) if codes else None,
        "cart": _cart_dict(cart),
    }

    def run(conn: Connection) -> RedeemResult:
        if codes:
            if one_id is None or cart is None:
                raise ValidationFailed("one_id and cart are needed with codes", field="cart")
            held = conn.execute(_LOCKED_CODES, {"b_order_id": order_id}).scalars()
            if set(held) != set(codes):
                _lock_in_tx(
                    conn,
                    order_id=order_id,
                    one_id=one_id,
                    codes=codes,
                    cart=cart,
                    now=now,
                    context=context,
                    request_key=idempotency_key,
                )
        return _redeem_in_tx(
            conn, order_id=order_id, now=now, context=context, request_key=idempotency_key
        )

    return idempotent(engine, idempotency_key, "redeem", request, now, RedeemResult, run)


def _cart_dict(cart: Cart | None) -> Any:
    return asdict(cart) if cart is not None else None


# --- lock -----------------------------------------------------------------------------------


def _lock_in_tx(
    conn: Connection,
    *,
    order_id: str,
    one_id: str,
    codes: Sequence[str],
    cart: Cart,
    now: datetime,
    context: RequestContext | None,
    request_key: str | None,
) -> LockResult:
    codes = sorted(set(codes))
    if not codes:
        raise ValidationFailed("give at least one coupon code", field="codes")
    rows = conn.execute(_CODES_FOR_UPDATE, {"b_codes": codes}).all()
    found = {r.code: r for r in rows if r.one_id == one_id}
    for code in codes:
        if code not in found:
            raise NotFound(
                f"coupon {code} is not in this person's wallet", field="codes", code=code
            )
    entries: list[LedgerEntry] = []
    seqs, relock = _lockable(rows, order_id, now, entries)
    version_of = {r.code: r.version for r in rows}
    specs = specs_of(conn, (r.template_id for r in rows))
    candidates = [
        Candidate(r.code, r.template_id, specs[r.template_id], r.valid_from, r.valid_until)
        for r in rows
    ]
    priced = price_combination(cart, candidates, now)
    if priced.refused:
        why = priced.refused[0]
        raise CouponNotApplicable(
            f"coupon {why.code}: {why.message}",
            field="codes",
            rule=why.rule,
            code=why.code,
            needed=why.needed,
            actual=why.actual,
        )
    fp = abuse.fingerprint(conn, one_id, context)
    abuse.check_blocks(conn, fp)
    for template_id, spec in specs.items():
        _check_per_user_use(
            conn, template_id, spec, one_id, sum(1 for r in rows if r.template_id == template_id)
        )
        abuse.check_rules(conn, template_id, spec, "redeem", fp, now)
    ttl = min(specs[r.template_id].lock_ttl_seconds for r in rows)
    expires = now + timedelta(seconds=ttl)
    for a in priced.applied:
        seq = seqs[a.code] + 1
        allocations = {"lines": {x.line_id: x.amount for x in a.lines}, "shipping": a.shipping}
        params = {
            "b_code": a.code,
            "b_version": version_of[a.code],
            "b_order_id": order_id,
            "b_expires": expires,
            "b_discount": a.discount,
            "b_allocations": allocations,
            "b_seq": seq,
            "b_now": now,
        }
        n = conn.execute(_LOCK, params).rowcount
        if n != 1:
            raise CouponConflict(
                f"coupon {a.code} changed meanwhile", field="codes", rule="version"
            )
        before = "locked" if a.code in relock else "issued"
        entries.append(
            LedgerEntry(
                a.code,
                seq,
                a.template_id,
                one_id,
                "locked",
                before,
                "locked",
                now,
                order_id=order_id,
                amount=a.discount,
                request_key=request_key,
            )
        )
    record(conn, entries)
    return LockResult(
        order_id=order_id,
        one_id=one_id,
        coupons=_discounts(priced.applied),
        total_discount=priced.total_discount,
        payable=priced.payable,
        expires_at=expires,
    )


def _lockable(
    rows: Sequence[Any], order_id: str, now: datetime, entries: list[LedgerEntry]
) -> tuple[dict[str, int], set[str]]:
    """Check every row may be locked for ``order_id``; refuse with ``CouponConflict``.

    Returns each code's ledger seq before this lock's own entry, and the codes this
    order had already locked (a re-lock). An expired lock of another order is taken
    over: its ``released`` entry is appended to ``entries`` (and counts in the seq).
    """
    seqs: dict[str, int] = {}
    relock: set[str] = set()
    for r in rows:
        seq = r.version
        if r.state == "locked" and r.order_id == order_id:
            relock.add(r.code)
        elif r.state == "locked":
            if r.lock_expires_at is not None and r.lock_expires_at <= now:
                seq += 1
                entries.append(
                    LedgerEntry(
                        r.code,
                        seq,
                        r.template_id,
                        r.one_id,
                        "released",
                        "locked",
                        "issued",
                        now,
                        order_id=r.order_id,
                        amount=r.discount,
                        reason="lock timed out",
                    )
                )
            else:
                raise CouponConflict(
                    f"coupon {r.code} is locked by another order until "
                    f"{r.lock_expires_at:%Y-%m-%d %H:%M:%S} UTC",
                    field="codes",
                    rule="locked",
                    code=r.code,
                )
        elif r.state != "issued":
            raise CouponConflict(
                f"coupon {r.code} is {r.state}", field="codes", rule=r.state, code=r.code
            )
        seqs[r.code] = seq
    return seqs, relock


def _discounts(applied: Iterable[Any]) -> list[CouponDiscount]:
    return [
        CouponDiscount(
            code=a.code,
            template_id=a.template_id,
            discount=a.discount,
            lines={x.line_id: x.amount for x in a.lines},
            shipping=a.shipping,
        )
        for a in applied
    ]


def _check_per_user_use(
    conn: Connection, template_id: str, spec: TemplateSpec, one_id: str, adding: int
) -> None:
    limit = spec.limits.per_user_use
    if limit is None:
        return
    used = conn.execute(_USED, {"b_one_id": one_id, "b_template_id": template_id}).scalar_one()
    if used + adding > limit:
        raise LimitReached(
            f"at most {limit} use(s) of this template per person; this would be use "
            f"number {used + adding}",
            field="one_id",
            rule="per_user_use",
        )


# --- redeem ---------------------------------------------------------------------------------


def _redeem_in_tx(
    conn: Connection,
    *,
    order_id: str,
    now: datetime,
    context: RequestContext | None,
    request_key: str | None,
) -> RedeemResult:
    rows = conn.execute(_LOCKED_FOR_ORDER, {"b_order_id": order_id}).all()
    if not rows:
        done = conn.execute(
            sa.select(coupons.c.code).where(
                coupons.c.order_id == order_id, coupons.c.state == "redeemed"
            )
        ).first()
        if done is not None:
            raise CouponConflict(
                f"order {order_id} is already redeemed", field="order_id", rule="redeemed"
            )
        raise NotFound(f"no coupon is locked for order {order_id}", field="order_id")
    one_id = rows[0].one_id
    specs = specs_of(conn, (r.template_id for r in rows))
    fp = abuse.fingerprint(conn, one_id, context)
    abuse.check_blocks(conn, fp)
    entries = []
    for r in rows:
        n = conn.execute(_REDEEM, {"b_code": r.code, "b_version": r.version, "b_now": now}).rowcount
        if n != 1:
            raise CouponConflict(
                f"coupon {r.code} changed meanwhile", field="order_id", rule="version"
            )
        entries.append(
            LedgerEntry(
                r.code,
                r.version + 1,
                r.template_id,
                one_id,
                "redeemed",
                "locked",
                "redeemed",
                now,
                order_id=order_id,
                amount=r.discount,
                request_key=request_key,
            )
        )
    record(conn, entries)
    for template_id in sorted(specs):
        mine = [r for r in rows if r.template_id == template_id]
        # Locks the template's row: redemptions of one template queue here, so the
        # per-user and per-identifier counts that follow are exact (and include ours).
        count_redemption(conn, template_id, len(mine), sum(r.discount or 0 for r in mine), now)
        _check_per_user_use(conn, template_id, specs[template_id], one_id, 0)
        abuse.check_rules(conn, template_id, specs[template_id], "redeem", fp, now)
    for r in rows:
        abuse.write_marks(
            conn, r.template_id, "redeem", fp, specs[r.template_id], one_id, r.code, now
        )
    return RedeemResult(
        order_id=order_id,
        one_id=one_id,
        coupons=[
            CouponDiscount(
                code=r.code,
                template_id=r.template_id,
                discount=r.discount or 0,
                lines=dict((r.allocations or {}).get("lines", {})),
                shipping=int((r.allocations or {}).get("shipping", 0)),
            )
            for r in rows
        ],
        total_discount=sum(r.discount or 0 for r in rows),
        redeemed_at=now,
    )
