"""Refunds: undoing the redemptions of a refunded order, whole or line by line.

Why it exists: a refund must give back exactly what the order's coupons took, once:

* a full refund restores each coupon (usable again) or voids it, as its template's
  ``refund`` policy says; the template's ``redeemed_count`` and ``discount_spent`` drop
  by what the coupon counted, and a voided coupon's face value leaves the budget;
* a partial refund (``lines``) claws back the discount those lines carried (the
  coupon's ``allocations``); the coupon stays ``redeemed`` unless nothing is left on it;
* a line is never refunded twice: every redeemed coupon of the order remembers the
  refunded lines under ``allocations["refunded"]``;
* each coupon row changes only if its ``version`` is unchanged, with a ledger row keyed
  ``(code, seq)``; with an ``idempotency_key`` the first answer is replayed.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Connection, Engine

from zhiying.coupons.counters import give_back
from zhiying.coupons.errors import CouponConflict
from zhiying.coupons.idempotency import idempotent
from zhiying.coupons.ledger import LedgerEntry, record
from zhiying.coupons.models import TemplateSpec
from zhiying.coupons.results import RefundResult
from zhiying.coupons.templates import specs_of
from zhiying.errors import NotFound, ValidationFailed
from zhiying.store.tables import coupons


def refund(
    engine: Engine,
    order_id: str,
    now: datetime,
    *,
    reason: str = "order refunded",
    idempotency_key: str | None = None,
    lines: Sequence[str] | None = None,
) -> RefundResult:
    """Undo the redemptions of a refunded order: each coupon is restored (usable again)
    or voided, as its template's ``refund`` policy says. Money counters follow.

    With ``lines`` (line ids, whole lines) only those lines are refunded: each coupon
    gives back the discount those lines carried (its allocations; the customer gets
    the lines' paid amounts minus that) and stays ``redeemed``, with a
    ``partially_refunded`` ledger row; a coupon left carrying nothing is refunded in full
    as above. A line id no coupon of the order carried is ``ValidationFailed``; a line
    refunded before is ``CouponConflict`` (a replay with the same idempotency key gets
    the first answer instead).
    """
    wanted = None if lines is None else sorted(set(lines))
    if wanted is not None and not wanted:
        raise ValidationFailed("give at least one line id to refund", field="lines")

    def run(conn: Connection) -> RefundResult:
        rows = conn.execute(
            sa.select(coupons)
            .where(coupons.c.order_id == order_id, coupons.c.state == "redeemed")
            .order_by(coupons.c.code)
            .with_for_update()
        ).all()
        if not rows:
            raise NotFound(f"no redeemed coupon for order {order_id}", field="order_id")
        specs = specs_of(conn, (r.template_id for r in rows))
        out = _Refunds(order_id, now, reason[:300], idempotency_key)
        if wanted is None:
            for r in rows:
                out.full(conn, r, specs[r.template_id].refund)
        else:
            _refund_lines(conn, out, rows, specs, wanted)
        out.settle(conn)
        return RefundResult(
            order_id=order_id,
            restored=out.restored,
            voided=out.voided,
            partially_refunded=out.partial,
            discount_returned=sum(out.clawed_back.values()),
            clawed_back=out.clawed_back,
        )

    request: dict[str, Any] = {"order_id": order_id}
    if wanted is not None:
        request["lines"] = wanted
    return idempotent(engine, idempotency_key, "refund", request, now, RefundResult, run)


class _Refunds:
    """What one refund did: coupon rows changed, ledger entries and template counters."""

    def __init__(self, order_id: str, now: datetime, reason: str, key: str | None) -> None:
        self.order_id, self.now, self.reason, self.key = order_id, now, reason, key
        self.restored: list[str] = []
        self.voided: list[str] = []
        self.partial: list[str] = []
        self.clawed_back: dict[str, int] = {}
        self.entries: list[LedgerEntry] = []
        # template id → [redemptions undone, discount given back, face value freed]
        self.counters: dict[str, list[int]] = {}

    def _count(self, template_id: str, redeemed: int, discount: int, face: int) -> None:
        c = self.counters.setdefault(template_id, [0, 0, 0])
        c[0] += redeemed
        c[1] += discount
        c[2] += face

    def _update(self, conn: Connection, r: Any, **values: Any) -> None:
        n = conn.execute(
            coupons.update()
            .where(coupons.c.code == r.code, coupons.c.version == r.version)
            .values(version=r.version + 1, updated_at=self.now, **values)
        ).rowcount
        if n != 1:
            raise CouponConflict(f"coupon {r.code} changed meanwhile", rule="version")

    def _entry(self, r: Any, action: str, to_state: str, amount: int, lines: Any) -> None:
        self.entries.append(
            LedgerEntry(
                r.code,
                r.version + 1,
                r.template_id,
                r.one_id,
                action,
                "redeemed",
                to_state,
                self.now,
                order_id=self.order_id,
                amount=amount,
                reason=self.reason,
                request_key=self.key,
                lines=lines,
            )
        )

    def full(self, conn: Connection, r: Any, policy: str, lines: Any = None) -> None:
        """Undo ``r``'s redemption: restore it or void it (``policy``)."""
        restore = policy == "restore"
        to_state = "issued" if restore else "voided"
        self._update(
            conn,
            r,
            state=to_state,
            order_id=None if restore else r.order_id,
            lock_expires_at=None,
            discount=None if restore else r.discount,
            allocations=None if restore else r.allocations,
            redeemed_at=None if restore else r.redeemed_at,
        )
        (self.restored if restore else self.voided).append(r.code)
        discount = r.discount or 0
        self.clawed_back[r.code] = discount
        self._count(r.template_id, 1, discount, 0 if restore else r.face_value or 0)
        self._entry(r, "refunded", to_state, discount, lines)

    def part(self, conn: Connection, r: Any, allocations: Any, amount: int, lines: Any) -> None:
        """``r`` stays redeemed, ``amount`` less discount, with ``allocations``."""
        self._update(conn, r, discount=(r.discount or 0) - amount, allocations=allocations)
        self.partial.append(r.code)
        self.clawed_back[r.code] = amount
        self._count(r.template_id, 0, amount, 0)
        self._entry(r, "partially_refunded", "redeemed", amount, lines)

    def settle(self, conn: Connection) -> None:
        """Apply the counters, template by template, and write the ledger entries."""
        for template_id in sorted(self.counters):
            redeemed, discount, face = self.counters[template_id]
            give_back(conn, template_id, self.now, redeemed=redeemed, discount=discount, face=face)
        record(conn, self.entries)


def _refund_lines(
    conn: Connection,
    out: _Refunds,
    rows: Sequence[Any],
    specs: dict[str, TemplateSpec],
    wanted: list[str],
) -> None:
    """Refund the order's ``wanted`` lines (see ``refund``). Every redeemed coupon of the
    order keeps, under ``allocations["refunded"]``, the order's refunded lines (line →
    discount clawed back from it), so a line is never refunded twice."""
    allocs = [dict(r.allocations or {}) for r in rows]
    known: set[str] = set()
    done: set[str] = set()
    for a in allocs:
        known.update(a.get("lines", {}))
        done.update(a.get("refunded", {}))
    unknown = [x for x in wanted if x not in known and x not in done]
    if unknown:
        raise ValidationFailed(
            f"no coupon of order {out.order_id} carried a discount on line(s) {', '.join(unknown)}",
            field="lines",
            rule="unknown_line",
            lines=unknown,
        )
    again = [x for x in wanted if x in done]
    if again:
        raise CouponConflict(
            f"line(s) {', '.join(again)} of order {out.order_id} already refunded",
            field="lines",
            rule="already_refunded",
            lines=again,
        )
    for r, a in zip(rows, allocs, strict=True):
        kept = {k: int(v) for k, v in a.get("lines", {}).items() if k not in wanted}
        taken = {k: int(v) for k, v in a.get("lines", {}).items() if k in wanted}
        refunded = {**a.get("refunded", {}), **{x: taken.get(x, 0) for x in wanted}}
        shipping = int(a.get("shipping", 0))
        if not taken:
            # Not affected: only remember the refunded lines (no transition, no version).
            conn.execute(
                coupons.update()
                .where(coupons.c.code == r.code)
                .values(allocations={**a, "refunded": refunded}, updated_at=out.now)
            )
            continue
        lines = tuple(sorted(taken))
        if not kept and not shipping:
            out.full(conn, r, specs[r.template_id].refund, lines)
        else:
            new = {**a, "lines": kept, "shipping": shipping, "refunded": refunded}
            out.part(conn, r, new, sum(taken.values()), lines)
