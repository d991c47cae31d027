"""Retiring coupons outside any order: timed-out locks, expiry, voiding.

Why it exists: the worker (``coupons.sweep`` every minute), ``zhiying coupons sweep``
and ``POST /api/coupons/maintenance`` run the two sweeps; an operator voids a coupon
found in an abuse cluster. Invariants:

* sweeps work in chunks, one ``tx.write_tx`` each, rows read ``FOR UPDATE SKIP LOCKED``
  on PostgreSQL, so a sweep never waits on (or fights) a checkout holding a coupon, and
  two sweeps at once split the work instead of doing it twice;
* each coupon changes only if its ``version`` is unchanged, with a ledger row keyed
  ``(code, seq)``;
* an expired or voided unused coupon gives its face value back to the template's
  budget (``counters.give_back``), once.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy import Engine

from zhiying.coupons.counters import give_back
from zhiying.coupons.errors import CouponConflict
from zhiying.coupons.ledger import LedgerEntry, publish_pending, record
from zhiying.coupons.release import release_rows
from zhiying.coupons.results import CouponView, coupon_view
from zhiying.coupons.tx import write_tx
from zhiying.errors import NotFound
from zhiying.runtime import Stores
from zhiying.store.tables import coupons


def release_timed_out(engine: Engine, now: datetime, *, chunk: int = 1000) -> int:
    """Release every lock older than its expiry (the order never paid); returns how many."""
    total = 0
    while True:
        with write_tx(engine) as conn:
            rows = conn.execute(
                sa.select(coupons)
                .where(coupons.c.state == "locked", coupons.c.lock_expires_at <= now)
                .order_by(coupons.c.code)
                .limit(chunk)
                .with_for_update(skip_locked=True)
            ).all()
            if rows:
                release_rows(conn, rows, now, "lock timed out", None)
        total += len(rows)
        if len(rows) < chunk:
            return total


def expire_due(engine: Engine, now: datetime, *, chunk: int = 5000) -> int:
    """Expire issued coupons whose window has ended; their face value leaves the budget."""
    total = 0
    while True:
        with write_tx(engine) as conn:
            rows = conn.execute(
                sa.select(
                    coupons.c.code,
                    coupons.c.version,
                    coupons.c.template_id,
                    coupons.c.one_id,
                    coupons.c.face_value,
                )
                .where(coupons.c.state == "issued", coupons.c.valid_until <= now)
                .order_by(coupons.c.code)
                .limit(chunk)
                .with_for_update(skip_locked=True)
            ).all()
            if rows:
                conn.execute(
                    coupons.update()
                    .where(
                        coupons.c.code == sa.bindparam("b_code"),
                        coupons.c.version == sa.bindparam("b_version"),
                    )
                    .values(state="expired", version=coupons.c.version + 1, updated_at=now),
                    [{"b_code": r.code, "b_version": r.version} for r in rows],
                )
                faces: dict[str, int] = {}
                for r in rows:
                    faces[r.template_id] = faces.get(r.template_id, 0) + (r.face_value or 0)
                for template_id in sorted(faces):
                    give_back(conn, template_id, now, face=faces[template_id])
                record(
                    conn,
                    [
                        LedgerEntry(
                            r.code,
                            r.version + 1,
                            r.template_id,
                            r.one_id,
                            "expired",
                            "issued",
                            "expired",
                            now,
                            amount=r.face_value,
                            reason="validity ended",
                        )
                        for r in rows
                    ],
                )
        total += len(rows)
        if len(rows) < chunk:
            return total


def void(engine: Engine, code: str, now: datetime, *, reason: str) -> CouponView:
    """Cancel an issued (or locked) coupon, e.g. one found in an abuse cluster."""
    with write_tx(engine) as conn:
        r = conn.execute(sa.select(coupons).where(coupons.c.code == code).with_for_update()).first()
        if r is None:
            raise NotFound(f"no coupon {code}", field="code")
        if r.state not in ("issued", "locked"):
            raise CouponConflict(f"coupon {code} is {r.state}", field="code", rule=r.state)
        conn.execute(
            coupons.update()
            .where(coupons.c.code == code, coupons.c.version == r.version)
            .values(state="voided", version=r.version + 1, updated_at=now, lock_expires_at=None)
        )
        give_back(conn, r.template_id, now, face=r.face_value or 0)
        record(
            conn,
            [
                LedgerEntry(
                    code,
                    r.version + 1,
                    r.template_id,
                    r.one_id,
                    "voided",
                    r.state,
                    "voided",
                    now,
                    order_id=r.order_id,
                    amount=r.face_value,
                    reason=reason[:300],
                )
            ],
        )
        return coupon_view(conn.execute(sa.select(coupons).where(coupons.c.code == code)).one())


@dataclass(frozen=True)
class Sweep:
    locks_released: int
    expired: int
    events_published: int


def sweep(stores: Stores) -> Sweep:
    """Both sweeps, then export pending ledger rows to the warehouse: what the worker's
    ``coupons.sweep`` job, ``zhiying coupons sweep`` and ``POST /api/coupons/maintenance``
    all run."""
    now = stores.clock.now()
    released = release_timed_out(stores.engine, now)
    expired = expire_due(stores.engine, now)
    published = publish_pending(
        stores.engine, stores.warehouse, now, dedup_days=stores.settings.dedup_window_days
    )
    return Sweep(released, expired, published.published)
