"""Coupon value objects (pure): templates, carts, candidates and request context.

Money is ``int`` minor units (fen: 200.00 is ``20000``); rates are basis
points (30% off is ``3000``). Instants are aware UTC datetimes; usable days
and hours are read in the template's own time zone.

A *template* (券模板) says what a coupon gives, where and when it may be
used, how it combines with others and how many may exist; a *coupon* is one
issued instance with its own code, owner and validity window.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from functools import cached_property
from typing import Annotated, Literal, NewType
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

CouponCode = NewType("CouponCode", str)
OneId = NewType("OneId", str)
TemplateId = NewType("TemplateId", str)

CouponState = Literal["issued", "locked", "redeemed", "released", "expired", "voided"]
"""``released`` is never stored: a released coupon goes back to ``issued``; it names the ledger
action only. Stored states are issued, locked, redeemed, expired and voided."""

Stage = Literal["item", "order", "shipping"]
STAGE_RANK: dict[str, int] = {"item": 0, "order": 1, "shipping": 2}


def fmt_money(fen: int) -> str:
    """``20000`` → ``"200.00"`` (two decimals, currency-agnostic)."""
    sign = "-" if fen < 0 else ""
    fen = abs(fen)
    return f"{sign}{fen // 100}.{fen % 100:02d}"


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


# --- benefits: what a coupon gives ----------------------------------------------------


class FullReduction(_Frozen):
    """满减: spend ``threshold`` in scope, get ``reduction`` off; ``stepped`` repeats it for every
    full ``threshold`` (满200减40, 每满200减40), up to ``max_reduction`` when set."""

    kind: Literal["full_reduction"] = "full_reduction"
    threshold: int = Field(gt=0, description="Spend in scope needed, minor units.")
    reduction: int = Field(gt=0, description="Amount off per step, minor units.")
    stepped: bool = False
    max_reduction: int | None = Field(default=None, gt=0)


class PercentOff(_Frozen):
    """折扣券: ``percent_off_bp`` basis points off the amount in scope (3000 = 30% off),
    at most ``max_discount``; the raw discount is rounded half up to the minor unit, then capped."""

    kind: Literal["percent_off"] = "percent_off"
    percent_off_bp: int = Field(gt=0, le=10000)
    max_discount: int | None = Field(default=None, gt=0)
    min_spend: int = Field(default=0, ge=0)


class FixedAmount(_Frozen):
    """代金券 / 无门槛券: ``amount`` off (never more than the amount in scope)."""

    kind: Literal["fixed_amount"] = "fixed_amount"
    amount: int = Field(gt=0)
    min_spend: int = Field(default=0, ge=0)


class BuyNGetM(_Frozen):
    """买N送M: for every ``buy + get`` units in scope, the ``get`` cheapest are free
    ("buy 12, get 1 free" needs 13 units in the cart)."""

    kind: Literal["buy_n_get_m"] = "buy_n_get_m"
    buy: int = Field(gt=0)
    get: int = Field(gt=0)
    max_free_units: int | None = Field(default=None, gt=0)
    max_discount: int | None = Field(default=None, gt=0)


class FreeShipping(_Frozen):
    """包邮券: waives the shipping fee (up to ``max_discount``) when the spend in scope is met."""

    kind: Literal["free_shipping"] = "free_shipping"
    min_spend: int = Field(default=0, ge=0)
    max_discount: int | None = Field(default=None, gt=0)


Benefit = Annotated[
    FullReduction | PercentOff | FixedAmount | BuyNGetM | FreeShipping,
    Field(discriminator="kind"),
]
BenefitKind = Literal[
    "full_reduction", "percent_off", "fixed_amount", "buy_n_get_m", "free_shipping"
]


def stage_of(benefit: FullReduction | PercentOff | FixedAmount | BuyNGetM | FreeShipping) -> Stage:
    """Item coupons price units first, order coupons the rest, shipping coupons last."""
    if isinstance(benefit, BuyNGetM):
        return "item"
    if isinstance(benefit, FreeShipping):
        return "shipping"
    return "order"


# --- where, when, with what -------------------------------------------------------------


class Scope(_Frozen):
    """Where a coupon applies. An empty include set means "all"; exclusions always win.

    Products, categories and brands select cart lines; stores, cities and channels
    are properties of the whole cart.
    """

    products: frozenset[str] = frozenset()
    categories: frozenset[str] = frozenset()
    brands: frozenset[str] = frozenset()
    stores: frozenset[str] = frozenset()
    cities: frozenset[str] = frozenset()
    channels: frozenset[str] = frozenset()
    exclude_products: frozenset[str] = frozenset()
    exclude_categories: frozenset[str] = frozenset()
    exclude_brands: frozenset[str] = frozenset()

    @cached_property
    def line_filtered(self) -> bool:
        """True when some lines may be out of scope (so each line must be checked)."""
        return bool(
            self.products
            or self.categories
            or self.brands
            or self.exclude_products
            or self.exclude_categories
            or self.exclude_brands
        )

    def covers(self, line: CartLine) -> bool:
        if line.product_id in self.exclude_products:
            return False
        if line.category is not None and line.category in self.exclude_categories:
            return False
        if line.brand is not None and line.brand in self.exclude_brands:
            return False
        if self.products and line.product_id not in self.products:
            return False
        if self.categories and line.category not in self.categories:
            return False
        return not (self.brands and line.brand not in self.brands)


_HHMM = r"^([01]\d|2[0-3]):[0-5]\d$"


class HourWindow(_Frozen):
    """Usable from ``start`` (inclusive) to ``end`` (exclusive), local ``HH:MM``;
    ``end`` before ``start`` spans midnight (22:00–02:00)."""

    start: str = Field(pattern=_HHMM)
    end: str = Field(pattern=_HHMM)

    def contains(self, t: time) -> bool:
        start = time.fromisoformat(self.start)
        end = time.fromisoformat(self.end)
        if start <= end:
            return start <= t < end
        return t >= start or t < end

    def __str__(self) -> str:
        return f"{self.start}–{self.end}"


class Validity(_Frozen):
    """When an issued coupon may be used.

    The coupon's window is ``[valid_from, valid_until)``: from issue (or ``starts_at`` if
    later) until ``ends_at`` or ``days_after_issue`` days after issue, whichever is
    earlier. Inside it, ``weekdays`` (ISO 1 = Monday … 7 = Sunday; empty = every day) and
    ``hours`` (empty = all day) are read in ``timezone``.
    """

    starts_at: datetime | None = None
    ends_at: datetime | None = None
    days_after_issue: int | None = Field(default=None, gt=0)
    weekdays: frozenset[int] = frozenset()
    hours: tuple[HourWindow, ...] = ()
    timezone: str = "Asia/Shanghai"

    @field_validator("starts_at", "ends_at")
    @classmethod
    def _aware(cls, v: datetime | None) -> datetime | None:
        if v is not None and v.tzinfo is None:
            raise ValueError("give a time zone (e.g. 2026-11-11T00:00:00+08:00)")
        return v

    @field_validator("weekdays")
    @classmethod
    def _iso_days(cls, v: frozenset[int]) -> frozenset[int]:
        if any(d < 1 or d > 7 for d in v):
            raise ValueError("weekdays are ISO numbers 1 (Monday) to 7 (Sunday)")
        return v

    @field_validator("timezone")
    @classmethod
    def _zone(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {v!r}") from exc
        return v

    @model_validator(mode="after")
    def _bounded(self) -> Validity:
        if self.ends_at is None and self.days_after_issue is None:
            raise ValueError(
                "give ends_at (a fixed window) or days_after_issue (N days from issue)"
            )
        if self.starts_at and self.ends_at and self.ends_at <= self.starts_at:
            raise ValueError("ends_at must be after starts_at")
        return self

    @cached_property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def window(self, issued_at: datetime) -> tuple[datetime, datetime] | None:
        """``(valid_from, valid_until)`` of a coupon issued at ``issued_at``; None when the
        template's window has already closed (or would be empty)."""
        start = max(issued_at, self.starts_at) if self.starts_at else issued_at
        ends = [e for e in (self.ends_at,) if e is not None]
        if self.days_after_issue is not None:
            ends.append(issued_at + timedelta(days=self.days_after_issue))
        end = min(ends)
        return (start, end) if end > start else None


class Stacking(_Frozen):
    """How coupons combine on one order: at most one coupon per ``group``
    (default: the stage — ``item``, ``order`` or ``shipping``); an ``exclusive`` coupon
    is used alone. Within a combination coupons apply in order of stage, then
    ``priority`` (lower first), then group and code; each sees what the earlier ones left.
    """

    group: str | None = Field(default=None, max_length=64)
    exclusive: bool = False
    priority: int = 0


class Limits(_Frozen):
    """Counts and money a template may never exceed (enforced by the database)."""

    per_user_claim: int | None = Field(default=1, gt=0, description="Coupons one user may hold.")
    per_user_use: int | None = Field(default=None, gt=0, description="Redemptions per user.")
    quantity: int | None = Field(default=None, gt=0, description="Coupons that may be issued.")
    budget: int | None = Field(
        default=None,
        gt=0,
        description="Face-value budget, minor units: the face value of every coupon issued "
        "(minus expired or voided unredeemed ones) stays within it.",
    )


IdentityKind = Literal[
    "one_id", "user_id", "device_id", "phone", "email", "ip", "address", "payment_account"
]
Action = Literal["claim", "redeem"]


class IdentityLimit(_Frozen):
    """At most ``max_count`` claims (or redemptions) of this template per identifier value
    across accounts: e.g. 2 per ``device_id`` stops one phone farming new accounts."""

    kind: IdentityKind
    max_count: int = Field(gt=0)
    action: Action = "claim"


class VelocityRule(_Frozen):
    """At most ``max_count`` claims (or redemptions) per identifier value within any
    ``window_seconds`` sliding window."""

    kind: IdentityKind
    max_count: int = Field(gt=0)
    window_seconds: int = Field(gt=0)
    action: Action = "claim"


class AbuseRules(_Frozen):
    identity_limits: tuple[IdentityLimit, ...] = ()
    velocity: tuple[VelocityRule, ...] = ()


RefundPolicy = Literal["restore", "void"]


class TemplateSpec(_Frozen):
    """Everything an operator defines about a coupon template (stored as JSON)."""

    name: str = Field(min_length=1, max_length=200)
    description: str = ""
    benefit: Benefit
    scope: Scope = Scope()
    validity: Validity
    stacking: Stacking = Stacking()
    limits: Limits = Limits()
    abuse: AbuseRules = AbuseRules()
    refund: RefundPolicy = Field(
        default="restore", description="On refund: give the coupon back (restore) or void it."
    )
    lock_ttl_seconds: int = Field(default=900, gt=0, le=7 * 86400)

    @model_validator(mode="after")
    def _budget_needs_face_value(self) -> TemplateSpec:
        if self.limits.budget is not None and self.face_value is None:
            raise ValueError(
                "a budget needs a bounded face value: set max_reduction (stepped), "
                "max_discount (percent off, buy N get M, free shipping)"
            )
        return self

    @property
    def face_value(self) -> int | None:
        """The most one coupon can take off (minor units), or None when unbounded."""
        b = self.benefit
        if isinstance(b, FullReduction):
            if b.stepped:
                return b.max_reduction
            return min(b.reduction, b.max_reduction or b.reduction)
        if isinstance(b, FixedAmount):
            return b.amount
        return b.max_discount

    @property
    def stage(self) -> Stage:
        return stage_of(self.benefit)

    @property
    def group(self) -> str:
        return self.stacking.group or self.stage

    @cached_property
    def terms(self) -> Terms:
        """The benefit and stacking as plain ints and strings, computed once per spec
        (pricing reads them in its inner loops)."""
        b = self.benefit
        if isinstance(b, FullReduction):
            kind, t = KIND_FULL, (b.threshold, b.reduction, int(b.stepped), _cap(b.max_reduction))
        elif isinstance(b, PercentOff):
            kind, t = KIND_PERCENT, (b.min_spend, b.percent_off_bp, _cap(b.max_discount), 0)
        elif isinstance(b, FixedAmount):
            kind, t = KIND_FIXED, (b.min_spend, b.amount, 0, 0)
        elif isinstance(b, BuyNGetM):
            kind, t = KIND_BUY, (b.buy, b.get, _cap(b.max_free_units), _cap(b.max_discount))
        else:
            kind, t = KIND_SHIP, (b.min_spend, _cap(b.max_discount), 0, 0)
        return Terms(
            kind, *t, STAGE_RANK[self.stage], self.stacking.priority, self.group,
            self.stacking.exclusive,
        )  # fmt: skip


KIND_FULL, KIND_PERCENT, KIND_FIXED, KIND_BUY, KIND_SHIP = range(5)


def _cap(v: int | None) -> int:
    return -1 if v is None else v


@dataclass(frozen=True, slots=True)
class Terms:
    """A template's benefit compiled for pricing. ``kind`` is one of ``KIND_*``; ``a``–``d``
    are, by kind: full reduction (threshold, reduction, stepped 0/1, max_reduction),
    percent off (min_spend, bp, max_discount, 0), fixed amount (min_spend, amount, 0, 0),
    buy N get M (buy, get, max_free_units, max_discount), free shipping (min_spend,
    max_discount, 0, 0); ``-1`` means no cap."""

    kind: int
    a: int
    b: int
    c: int
    d: int
    stage_rank: int
    priority: int
    group: str
    exclusive: bool


# --- carts and candidates (inputs of pricing) -------------------------------------------


@dataclass(frozen=True, slots=True)
class CartLine:
    """One line of a cart: ``quantity`` units at ``unit_price`` minor units each."""

    line_id: str
    product_id: str
    unit_price: int
    quantity: int = 1
    category: str | None = None
    brand: str | None = None

    def __post_init__(self) -> None:
        if self.unit_price < 0 or self.quantity <= 0:
            raise ValueError(f"line {self.line_id}: unit_price >= 0 and quantity > 0 required")

    @property
    def amount(self) -> int:
        return self.unit_price * self.quantity


@dataclass(frozen=True, slots=True)
class Cart:
    """A cart to price; ``store_id``, ``city`` and ``channel`` apply to the whole cart."""

    lines: tuple[CartLine, ...]
    shipping_fee: int = 0
    store_id: str | None = None
    city: str | None = None
    channel: str | None = None

    def __post_init__(self) -> None:
        if self.shipping_fee < 0:
            raise ValueError("shipping_fee must be >= 0")
        ids = [line.line_id for line in self.lines]
        if len(set(ids)) != len(ids):
            raise ValueError("line ids must be unique within a cart")

    @property
    def subtotal(self) -> int:
        return sum(line.amount for line in self.lines)


@dataclass(frozen=True, slots=True)
class Candidate:
    """A coupon the customer holds, offered to ``quote``: its code, template and window."""

    code: str
    template_id: str
    spec: TemplateSpec
    valid_from: datetime
    valid_until: datetime


# --- request context (abuse control) -----------------------------------------------------


@dataclass(frozen=True)
class RequestContext:
    """Who is asking, as far as the caller knows: used by limits, velocity rules and block
    lists. Values are hashed before they are stored (see ``identity_hash``)."""

    ip: str | None = None
    device_id: str | None = None
    address: str | None = None
    payment_account: str | None = None
    phone: str | None = None

    def pairs(self) -> list[tuple[str, str]]:
        out = []
        for kind in ("ip", "device_id", "address", "payment_account", "phone"):
            value = getattr(self, kind)
            if value:
                out.append((kind, normalise_context_value(kind, value)))
        return out


def normalise_context_value(kind: str, value: str) -> str:
    """Spellings of one address or account must count as one (case, spaces)."""
    value = value.strip()
    if kind in ("address", "payment_account", "email"):
        value = " ".join(value.lower().split())
    return value


def identity_hash(kind: str, value: str) -> str:
    """SHA-256 of ``kind:value``: limits, marks and block lists never store the raw value."""
    return hashlib.sha256(f"{kind}:{value}".encode()).hexdigest()


@dataclass(frozen=True)
class Template:
    """A stored template with its counters (quantities and money in minor units)."""

    template_id: str
    spec: TemplateSpec
    status: Literal["active", "paused", "archived"]
    created_at: datetime
    issued_count: int = 0
    budget_committed: int = 0
    redeemed_count: int = 0
    discount_spent: int = 0
