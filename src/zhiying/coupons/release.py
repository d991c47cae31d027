"""Releasing locked coupons: the order was cancelled, its payment failed, or the lock
timed out.

Why it exists: a lock only reserves a coupon; giving it back must happen exactly once
and leave it usable again (``locked`` → ``issued``, order, discount and allocations
cleared). Each row changes only if its ``version`` is still the one read (rows read
``FOR UPDATE``), and each release writes a ``released`` ledger row keyed
``(code, seq)``. No counter changes: a lock never counted as a redemption.

The order's own release is ``release``; the sweep of timed-out locks
(``maintenance.release_timed_out``) reuses ``release_rows``.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Connection, Engine

from zhiying.coupons.errors import CouponConflict
from zhiying.coupons.idempotency import idempotent
from zhiying.coupons.ledger import LedgerEntry, record
from zhiying.coupons.results import ReleaseResult
from zhiying.errors import NotFound
from zhiying.store.tables import coupons


def release(
    engine: Engine,
    order_id: str,
    now: datetime,
    *,
    reason: str = "order cancelled",
    idempotency_key: str | None = None,
) -> ReleaseResult:
    """Give back the coupons locked for ``order_id`` (order cancelled or payment failed)."""

    def run(conn: Connection) -> ReleaseResult:
        rows = conn.execute(
            sa.select(coupons)
            .where(coupons.c.order_id == order_id, coupons.c.state == "locked")
            .order_by(coupons.c.code)
            .with_for_update()
        ).all()
        if not rows:
            raise NotFound(f"no coupon is locked for order {order_id}", field="order_id")
        release_rows(conn, rows, now, reason[:300], idempotency_key)
        return ReleaseResult(order_id=order_id, released=[r.code for r in rows])

    return idempotent(
        engine, idempotency_key, "release", {"order_id": order_id}, now, ReleaseResult, run
    )


def release_rows(
    conn: Connection, rows: Sequence[Any], now: datetime, reason: str, request_key: str | None
) -> None:
    """Release locked ``rows`` (read ``FOR UPDATE`` by the caller) with their ledger rows."""
    entries = []
    for r in rows:
        n = conn.execute(
            coupons.update()
            .where(coupons.c.code == r.code, coupons.c.version == r.version)
            .values(
                state="issued",
                order_id=None,
                lock_expires_at=None,
                discount=None,
                allocations=None,
                version=r.version + 1,
                updated_at=now,
            )
        ).rowcount
        if n != 1:
            raise CouponConflict(f"coupon {r.code} changed meanwhile", rule="version")
        entries.append(
            LedgerEntry(
                r.code,
                r.version + 1,
                r.template_id,
                r.one_id,
                "released",
                "locked",
                "issued",
                now,
                order_id=r.order_id,
                amount=r.discount,
                reason=reason,
                request_key=request_key,
            )
        )
    record(conn, entries)
