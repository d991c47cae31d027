"""Refusals of the coupon engine, each a ``zhiying.errors`` exception with a ``rule``.

Why it exists: every module that changes a coupon refuses in the same three ways, and
the API maps each class to one HTTP status once (409 for the two conflicts, 422 for
``CouponNotApplicable``). ``rule`` names the refusing rule (``quantity``, ``budget``,
``per_user_claim``, ``per_user_use``, ``locked``, ``version``, ``min_spend`` …), so a
caller can tell refusals apart without parsing messages. Abuse refusals are
``abuse.AbuseRefused``.
"""

from __future__ import annotations

from zhiying.errors import Conflict, ValidationFailed


class CouponConflict(Conflict):
    """The coupon is not in a state that allows the operation (already redeemed, locked …)."""

    code = "coupon_conflict"


class LimitReached(Conflict):
    """A quantity, budget or per-user limit would be exceeded; ``rule`` names it."""

    code = "coupon_limit"


class CouponNotApplicable(ValidationFailed):
    """Pricing refused the coupon for this cart; ``rule`` and the message say why."""

    code = "coupon_not_applicable"
