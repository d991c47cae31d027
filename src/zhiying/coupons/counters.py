"""A template's counters: quantity and budget taken by issuance, given back by expiry,
voiding and refunds; redemptions and discount spent.

Why it exists: these counters are the one place where "never more than ``quantity``
coupons" and "never more face value than ``budget``" are enforced, so every change goes
through the statements below, in the same transaction as the coupon rows it counts:

* taking is ONE conditional ``UPDATE … WHERE issued_count + n <= quantity AND
  budget_committed + n·face <= budget``; it takes the template's row lock and can never
  overshoot (CHECK constraints on the table would refuse even a wrong WHERE);
* claims and redemptions of one template queue on that row lock, which is what makes
  the per-user and per-identifier counts read after it exact;
* giving back subtracts exactly what the coupon committed (its face value) or spent
  (its discount), once, because the coupon's own ``version`` check admits one change.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Connection

from zhiying.coupons.errors import CouponConflict, LimitReached
from zhiying.errors import NotFound
from zhiying.store.tables import coupon_templates

_t = coupon_templates.c

# Hot-path statements, built once (SQLAlchemy reuses their cache keys and compiled forms).
_TAKE = (
    coupon_templates.update()
    .where(
        _t.template_id == sa.bindparam("b_template_id"),
        _t.status == "active",
        sa.or_(_t.quantity.is_(None), _t.issued_count + sa.bindparam("b_n") <= _t.quantity),
        sa.or_(_t.budget.is_(None), _t.budget_committed + sa.bindparam("b_committed") <= _t.budget),
    )
    .values(
        issued_count=_t.issued_count + sa.bindparam("b_n"),
        budget_committed=_t.budget_committed + sa.bindparam("b_committed"),
        updated_at=sa.bindparam("b_now", type_=_t.updated_at.type),
    )
)
_COUNT_REDEMPTION = (
    coupon_templates.update()
    .where(_t.template_id == sa.bindparam("b_template_id"))
    .values(
        redeemed_count=_t.redeemed_count + sa.bindparam("b_n"),
        discount_spent=_t.discount_spent + sa.bindparam("b_discount"),
        updated_at=sa.bindparam("b_now", type_=_t.updated_at.type),
    )
)


def lock_template(conn: Connection, template_id: str) -> Any:
    """The template's row, locked ``FOR UPDATE`` until the transaction ends."""
    row = conn.execute(
        sa.select(coupon_templates)
        .where(coupon_templates.c.template_id == template_id)
        .with_for_update()
    ).first()
    if row is None:
        raise NotFound(f"no coupon template {template_id}", field="template_id")
    return row


def capacity(tpl: Any, wanted: int, face: int | None) -> tuple[int, str | None]:
    """How many of ``wanted`` coupons the template can still issue, and what stops it."""
    n, stop = wanted, None
    if tpl.quantity is not None and tpl.issued_count + n > tpl.quantity:
        n, stop = max(0, tpl.quantity - tpl.issued_count), "quantity"
    if tpl.budget is not None and face:
        room = max(0, (tpl.budget - tpl.budget_committed) // face)
        if room < n:
            n, stop = room, "budget"
    return n, stop


def take(conn: Connection, template_id: str, n: int, face: int | None, now: datetime) -> None:
    """Count ``n`` issued coupons against quantity and budget, or refuse naming the rule.

    One conditional UPDATE: it takes the template's row lock and can never overshoot
    (the CHECK constraints would refuse even a wrong WHERE).
    """
    t = coupon_templates.c
    params = {"b_template_id": template_id, "b_n": n, "b_committed": n * (face or 0), "b_now": now}
    if conn.execute(_TAKE, params).rowcount == 1:
        return
    tpl = conn.execute(sa.select(coupon_templates).where(t.template_id == template_id)).first()
    if tpl is None:
        raise NotFound(f"no coupon template {template_id}", field="template_id")
    if tpl.status != "active":
        raise CouponConflict(
            f"template {template_id} is {tpl.status}", field="template_id", rule="status"
        )
    raise _refuse_capacity(capacity(tpl, n, face)[1] or "quantity", tpl)


def _refuse_capacity(stop: str, tpl: Any) -> LimitReached:
    if stop == "quantity":
        return LimitReached(
            f"all {tpl.quantity} coupons of this template are issued",
            field="template_id",
            rule="quantity",
        )
    return LimitReached(
        "the template's face-value budget is used up", field="template_id", rule="budget"
    )


def count_redemption(
    conn: Connection, template_id: str, n: int, discount: int, now: datetime
) -> None:
    """Add ``n`` redemptions and their ``discount`` to the template (takes its row lock)."""
    conn.execute(
        _COUNT_REDEMPTION,
        {"b_template_id": template_id, "b_n": n, "b_discount": discount, "b_now": now},
    )


def give_back(
    conn: Connection,
    template_id: str,
    now: datetime,
    *,
    redeemed: int | None = None,
    discount: int | None = None,
    face: int | None = None,
) -> None:
    """Subtract undone redemptions, discount given back and face value freed from the
    template's counters (only the counters named)."""
    t = coupon_templates.c
    values: dict[str, Any] = {}
    if redeemed is not None:
        values["redeemed_count"] = t.redeemed_count - redeemed
    if discount is not None:
        values["discount_spent"] = t.discount_spent - discount
    if face is not None:
        values["budget_committed"] = t.budget_committed - face
    conn.execute(
        coupon_templates.update()
        .where(t.template_id == template_id)
        .values(**values, updated_at=now)
    )
