"""Issuing one coupon to one person: an operator's issue, a customer's claim, a trigger.

Why it exists: a single issuance has the most rules to honour at once, all in one
write transaction:

* exactly once per ``issuance_key`` (unique per template, column ``coupons.issuance_key``):
  a repeat, even a concurrent one that loses on the unique index, returns the coupon
  the first call issued with ``created=False``;
* the template's quantity and face-value budget (``counters.take``, one conditional
  UPDATE under the template's row lock);
* the per-person claim limit and the abuse rules, counted after that row lock is taken,
  so they see every earlier claim of the template and are exact under concurrency.

Many people at once (a segment, a CSV): ``batches.issue_batch``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

import sqlalchemy as sa
from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError

from zhiying.coupons import abuse
from zhiying.coupons.codes import new_codes
from zhiying.coupons.counters import take
from zhiying.coupons.errors import CouponConflict, LimitReached
from zhiying.coupons.ledger import LedgerEntry, record
from zhiying.coupons.models import RequestContext
from zhiying.coupons.results import CouponView, Issued, coupon_view
from zhiying.coupons.templates import load_spec
from zhiying.coupons.tx import write_tx
from zhiying.errors import ValidationFailed
from zhiying.store.tables import coupons

# Hot-path statements, built once (SQLAlchemy reuses their cache keys and compiled forms).
_HELD = sa.select(sa.func.count()).where(
    coupons.c.one_id == sa.bindparam("b_one_id"),
    coupons.c.template_id == sa.bindparam("b_template_id"),
)
_BY_KEY = sa.select(coupons).where(coupons.c.issuance_key == sa.bindparam("b_key"))
_INSERT_COUPON = coupons.insert()


def issue(
    engine: Engine,
    template_id: str,
    one_id: str,
    now: datetime,
    *,
    issuance_key: str | None = None,
    context: RequestContext | None = None,
    source: Literal["issue", "claim", "trigger"] = "issue",
) -> Issued:
    """Issue one coupon of ``template_id`` to ``one_id`` (a claim when ``source="claim"``).

    Idempotent by ``issuance_key`` (per template): a repeat returns the coupon the first
    call issued with ``created=False``. Refuses with ``LimitReached`` (quantity, budget,
    per_user_claim), ``AbuseRefused`` (block list, identity limits, velocity) or
    ``CouponConflict`` (template not active, window closed).
    """
    key = _issuance_key(template_id, issuance_key) if issuance_key else None
    try:
        with write_tx(engine) as conn:
            if key is not None:
                existing = conn.execute(_BY_KEY, {"b_key": key}).first()
                if existing is not None:
                    return Issued(coupon=coupon_view(existing), created=False)
            spec = load_spec(conn, template_id)
            window = spec.validity.window(now)
            if window is None:
                raise CouponConflict(
                    "the template's validity window has closed", field="template_id", rule="window"
                )
            # Reads that need no serialisation come before the template's row lock.
            fp = abuse.fingerprint(conn, one_id, context)
            abuse.check_blocks(conn, fp)
            code = new_codes(1)[0]
            row = {
                "code": code,
                "template_id": template_id,
                "one_id": one_id,
                "state": "issued",
                "face_value": spec.face_value,
                "issued_at": now,
                "valid_from": window[0],
                "valid_until": window[1],
                "issuance_key": key,
                "batch_id": None,
                "version": 1,
                "updated_at": now,
            }
            entry = LedgerEntry(
                code,
                1,
                template_id,
                one_id,
                "issued",
                None,
                "issued",
                now,
                amount=spec.face_value,
                reason=source,
                request_key=issuance_key,
            )
            # Rows first, then the template's row lock: the lock is held only for the
            # counter, the limit checks and the commit. The counts below run after the
            # lock is taken, so they see every earlier claim (and include our own row).
            conn.execute(_INSERT_COUPON, row)
            record(conn, [entry])
            take(conn, template_id, 1, spec.face_value, now)
            limit = spec.limits.per_user_claim
            if limit is not None:
                held = conn.execute(
                    _HELD, {"b_one_id": one_id, "b_template_id": template_id}
                ).scalar_one()
                if held > limit:
                    raise LimitReached(
                        f"at most {limit} coupon(s) of this template per person; "
                        f"this person has {held - 1}",
                        field="one_id",
                        rule="per_user_claim",
                    )
            abuse.check_rules(conn, template_id, spec, "claim", fp, now)
            abuse.write_marks(conn, template_id, "claim", fp, spec, one_id, code, now)
            return Issued(coupon=CouponView(**row, template_name=spec.name), created=True)
    except IntegrityError:
        # A concurrent call with the same issuance key committed first: answer as it did.
        if key is not None:
            with engine.connect() as conn:
                existing = conn.execute(_BY_KEY, {"b_key": key}).first()
            if existing is not None:
                return Issued(coupon=coupon_view(existing), created=False)
        raise


def _issuance_key(template_id: str, key: str) -> str:
    if len(key) > 150:
        raise ValidationFailed("issuance key longer than 150 characters", field="issuance_key")
    return f"{template_id}/{key}"
