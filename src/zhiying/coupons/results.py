"""What the coupon transactions answer: pydantic models the API returns as they are.

Why it exists: issuance, redemption, refunds and the wallet all answer with these
shapes, and lock/redeem/release/refund answers are stored verbatim for idempotent
replays (``idempotency.py``), so a field added here changes what a replay returns.
Money is integer minor units (fen) everywhere.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel


class CouponView(BaseModel):
    """One coupon as its owner and the operator see it (money in minor units)."""

    code: str
    template_id: str
    template_name: str = ""
    one_id: str
    state: str
    face_value: int | None
    issued_at: datetime
    valid_from: datetime
    valid_until: datetime
    order_id: str | None = None
    lock_expires_at: datetime | None = None
    discount: int | None = None
    redeemed_at: datetime | None = None


def coupon_view(row: Any, names: dict[str, tuple[str, str]] | None = None) -> CouponView:
    """A ``coupons`` row as a ``CouponView``; ``names`` maps template id → (name, kind)."""
    return CouponView(
        code=row.code,
        template_id=row.template_id,
        template_name=(names or {}).get(row.template_id, ("", ""))[0],
        one_id=row.one_id,
        state=row.state,
        face_value=row.face_value,
        issued_at=row.issued_at,
        valid_from=row.valid_from,
        valid_until=row.valid_until,
        order_id=row.order_id,
        lock_expires_at=row.lock_expires_at,
        discount=row.discount,
        redeemed_at=row.redeemed_at,
    )


class Issued(BaseModel):
    coupon: CouponView
    created: bool  # False: the issuance key had already issued this coupon


class CouponDiscount(BaseModel):
    """A coupon's discount on an order and where it lands: ``lines`` maps line id →
    minor units, ``shipping`` is the part that waived shipping."""

    code: str
    template_id: str
    discount: int
    lines: dict[str, int]
    shipping: int


class LockResult(BaseModel):
    order_id: str
    one_id: str
    coupons: list[CouponDiscount]
    total_discount: int
    payable: int
    expires_at: datetime


class RedeemResult(BaseModel):
    order_id: str
    one_id: str
    coupons: list[CouponDiscount]
    total_discount: int
    redeemed_at: datetime


class ReleaseResult(BaseModel):
    order_id: str
    released: list[str]


class RefundResult(BaseModel):
    """``clawed_back`` maps code → discount given back (minor units); a partial refund's
    coupons that stay redeemed are listed in ``partially_refunded``."""

    order_id: str
    restored: list[str]
    voided: list[str]
    discount_returned: int
    partially_refunded: list[str] = []
    clawed_back: dict[str, int] = {}
