"""User layers (用户分层): configurable rules with documented defaults, and their pure logic.

Three built-in layers classify every *customer* — a person with at least one
order event (``Order Completed`` by default) up to the as-of instant:

* ``lifecycle``: new / growing / mature / loyal / at_risk / churned;
* ``value_frequency``: the value × frequency quadrant, from RFM F and M scores
  cut at quantiles of the customers who ordered in the window;
* ``promotion_sensitivity``: fanatic / sensitive / neutral / indifferent, from
  the share of orders with a coupon and the response to past offers.

"Days since" are whole UTC calendar days between an event and the as-of
instant (an order earlier on the as-of day is 0 days ago). A window of N days
holds the events after ``as_of - N days`` up to ``as_of``.

The functions at the bottom are the rules in plain Python. ``compute`` emits
the same rules as SQL ``CASE`` expressions; tests hold the two equal.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

LayerName = Literal["lifecycle", "value_frequency", "promotion_sensitivity"]
LAYER_NAMES: tuple[LayerName, ...] = ("lifecycle", "value_frequency", "promotion_sensitivity")

LIFECYCLE_VALUES = ("new", "growing", "mature", "loyal", "at_risk", "churned")
QUADRANT_VALUES = (
    "high_frequency_high_value",
    "high_frequency_low_value",
    "low_frequency_high_value",
    "low_frequency_low_value",
)
PROMOTION_VALUES = ("fanatic", "sensitive", "neutral", "indifferent")
NONE = "none"
"""Migration matrices use this for "not a customer at that date"."""

LAYER_VALUES: dict[str, tuple[str, ...]] = {
    "lifecycle": LIFECYCLE_VALUES,
    "value_frequency": QUADRANT_VALUES,
    "promotion_sensitivity": PROMOTION_VALUES,
}


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class LifecycleRules(_Frozen):
    """Stages, checked in this order (first match wins):

    1. ``new``: first order fewer than ``new_days`` days ago;
    2. ``churned``: last order ``churn_days`` or more days ago;
    3. ``at_risk``: last order ``at_risk_days`` or more days ago;
    4. ``loyal``: ``loyal_orders`` or more orders and first order
       ``loyal_tenure_days`` or more days ago;
    5. ``mature``: ``mature_orders`` or more orders;
    6. ``growing``: everyone else (recent, few orders, past the first month).

    Defaults suit purchase cycles of a few months (CDNOW's median gap between
    repeat purchases is about 2-3 months): quiet for a quarter is at risk, for
    half a year churned.
    """

    layer: Literal["lifecycle"] = "lifecycle"
    order_events: list[str] = Field(default_factory=lambda: ["Order Completed"], min_length=1)
    new_days: int = Field(default=30, ge=1)
    at_risk_days: int = Field(default=90, ge=1)
    churn_days: int = Field(default=180, ge=1)
    mature_orders: int = Field(default=3, ge=2)
    loyal_orders: int = Field(default=6, ge=2)
    loyal_tenure_days: int = Field(default=365, ge=0)

    @model_validator(mode="after")
    def _order(self) -> LifecycleRules:
        if not self.new_days <= self.at_risk_days < self.churn_days:
            raise ValueError("need new_days <= at_risk_days < churn_days")
        if self.mature_orders > self.loyal_orders:
            raise ValueError("need mature_orders <= loyal_orders")
        return self


class ValueFrequencyRules(_Frozen):
    """Quadrants from RFM scores.

    F = orders and M = order revenue (in cents) in the last ``window_days``
    days (``None``: all time). Each is scored 1..``bins`` against quantile cut
    points computed over the customers with at least one order in the window
    (see ``cut_points`` and ``score`` for ties). A customer is high-frequency
    when the F score is at least ``high_from_score`` and high-value when the M
    score is. Customers without an order in the window score 1 on both.

    Defaults: ``bins=2``, ``high_from_score=2`` — above the median is high.
    ``bins=5, high_from_score=4`` puts the top two quintiles high instead.
    """

    layer: Literal["value_frequency"] = "value_frequency"
    order_events: list[str] = Field(default_factory=lambda: ["Order Completed"], min_length=1)
    window_days: int | None = Field(default=365, ge=1)
    bins: int = Field(default=2, ge=2, le=10)
    high_from_score: int = Field(default=2, ge=2)

    @model_validator(mode="after")
    def _score(self) -> ValueFrequencyRules:
        if self.high_from_score > self.bins:
            raise ValueError("high_from_score cannot exceed bins")
        return self


Rate = Annotated[Decimal, Field(ge=0, le=1)]


class PromotionSensitivityRules(_Frozen):
    """Sensitivity to promotions over the last ``window_days`` days.

    * share = coupon orders / orders. A coupon order is an order event with a
      ``coupon``, or a ``redeemed_events`` event (counted once per order id);
      trusted once the customer has ``min_orders`` orders in the window.
    * response = responded offers / offers. An offer is an ``issued_events``
      event whose response period (``response_days``) ended by the as-of
      instant; it is responded when an order followed within that period.
      Trusted from ``min_offers`` offers.

    Checked in order: ``fanatic`` when a trusted share ≥ ``fanatic_share`` or
    a trusted response ≥ ``fanatic_response``; ``sensitive`` likewise with the
    ``sensitive_*`` rates; ``indifferent`` when at least one measure is trusted
    and every trusted one is ≤ its ``indifferent_*`` rate; else ``neutral``
    (including customers with too little evidence).
    Rates have at most four decimals (they are compared as basis points).
    """

    layer: Literal["promotion_sensitivity"] = "promotion_sensitivity"
    order_events: list[str] = Field(default_factory=lambda: ["Order Completed"], min_length=1)
    redeemed_events: list[str] = Field(default_factory=lambda: ["Coupon Redeemed"])
    issued_events: list[str] = Field(default_factory=lambda: ["Coupon Issued"])
    window_days: int | None = Field(default=365, ge=1)
    response_days: int = Field(default=7, ge=1)
    min_orders: int = Field(default=2, ge=1)
    min_offers: int = Field(default=2, ge=1)
    fanatic_share: Rate = Decimal("0.7")
    fanatic_response: Rate = Decimal("0.5")
    sensitive_share: Rate = Decimal("0.3")
    sensitive_response: Rate = Decimal("0.25")
    indifferent_share: Rate = Decimal("0.05")
    indifferent_response: Rate = Decimal("0.05")

    @field_validator(
        "fanatic_share",
        "fanatic_response",
        "sensitive_share",
        "sensitive_response",
        "indifferent_share",
        "indifferent_response",
    )
    @classmethod
    def _four_decimals(cls, v: Decimal) -> Decimal:
        if (v * 10000) % 1 != 0:
            raise ValueError("rates have at most four decimals")
        return v

    @model_validator(mode="after")
    def _order(self) -> PromotionSensitivityRules:
        if not self.indifferent_share < self.sensitive_share <= self.fanatic_share:
            raise ValueError("need indifferent_share < sensitive_share <= fanatic_share")
        if not self.indifferent_response < self.sensitive_response <= self.fanatic_response:
            raise ValueError("need indifferent_response < sensitive_response <= fanatic_response")
        return self


LayerRules = Annotated[
    LifecycleRules | ValueFrequencyRules | PromotionSensitivityRules,
    Field(discriminator="layer"),
]

DEFAULT_RULES: dict[str, LifecycleRules | ValueFrequencyRules | PromotionSensitivityRules] = {
    "lifecycle": LifecycleRules(),
    "value_frequency": ValueFrequencyRules(),
    "promotion_sensitivity": PromotionSensitivityRules(),
}


def bp(rate: Decimal) -> int:
    """A rate in basis points (exact: rules allow at most four decimals)."""
    return int(rate * 10000)


# --- the rules in plain Python ----------------------------------------------------


def lifecycle_stage(
    days_since_first: int, days_since_last: int, orders: int, rules: LifecycleRules
) -> str:
    """The lifecycle stage of a customer (see ``LifecycleRules``)."""
    if days_since_first < rules.new_days:
        return "new"
    if days_since_last >= rules.churn_days:
        return "churned"
    if days_since_last >= rules.at_risk_days:
        return "at_risk"
    if orders >= rules.loyal_orders and days_since_first >= rules.loyal_tenure_days:
        return "loyal"
    if orders >= rules.mature_orders:
        return "mature"
    return "growing"


def cut_points(values: Sequence[int], counts: Sequence[int], bins: int) -> list[int]:
    """Quantile cut points ``c_1..c_{bins-1}`` of a histogram (distinct ``values`` with ``counts``).

    ``c_k`` is the inverted-CDF quantile at ``k/bins``: the smallest value
    whose cumulative count reaches ``k/bins`` of the total (exact integer
    arithmetic). Cut points are therefore always observed values; when many
    customers share a value, several cut points may coincide. No customers:
    no cut points.
    """
    if len(values) != len(counts):
        raise ValueError("values and counts differ in length")
    pairs = sorted(zip(values, counts, strict=True))
    total = sum(c for _, c in pairs)
    if total == 0:
        return []
    cuts: list[int] = []
    k = 1
    cumulative = 0
    for value, count in pairs:
        cumulative += count
        while k < bins and cumulative * bins >= k * total:
            cuts.append(value)
            k += 1
    return cuts


def score(x: int, cuts: Sequence[int]) -> int:
    """``1 + #{k : x > c_k}``: ties never split, a value equal to a cut point scores low."""
    return 1 + sum(1 for c in cuts if x > c)


def quadrant(frequency_score: int, value_score: int, rules: ValueFrequencyRules) -> str:
    f = "high_frequency" if frequency_score >= rules.high_from_score else "low_frequency"
    v = "high_value" if value_score >= rules.high_from_score else "low_value"
    return f"{f}_{v}"


def promotion_sensitivity(
    orders: int,
    coupon_orders: int,
    offers: int,
    responded: int,
    rules: PromotionSensitivityRules,
) -> str:
    """The promotion-sensitivity class of a customer (see ``PromotionSensitivityRules``)."""
    coupon_orders = min(coupon_orders, orders)
    share_known = orders >= rules.min_orders
    response_known = offers >= rules.min_offers

    def share_at_least(rate: Decimal) -> bool:
        return share_known and coupon_orders * 10000 >= bp(rate) * orders

    def response_at_least(rate: Decimal) -> bool:
        return response_known and responded * 10000 >= bp(rate) * offers

    if share_at_least(rules.fanatic_share) or response_at_least(rules.fanatic_response):
        return "fanatic"
    if share_at_least(rules.sensitive_share) or response_at_least(rules.sensitive_response):
        return "sensitive"
    share_low = not share_known or coupon_orders * 10000 <= bp(rules.indifferent_share) * orders
    response_low = (
        not response_known or responded * 10000 <= bp(rules.indifferent_response) * offers
    )
    if (share_known or response_known) and share_low and response_low:
        return "indifferent"
    return "neutral"


# --- instants -------------------------------------------------------------------


def end_of_day(day: date) -> datetime:
    """The last microsecond of ``day`` in UTC: "as of 1998-06-30" includes that whole day."""
    return datetime(day.year, day.month, day.day, 23, 59, 59, 999999, tzinfo=UTC)


def parse_as_of(text: str) -> datetime:
    """``YYYY-MM-DD`` (the end of that UTC day) or an ISO 8601 instant (naive = UTC)."""
    text = text.strip()
    try:
        if len(text) == 10:
            return end_of_day(date.fromisoformat(text))
        at = datetime.fromisoformat(text)
    except ValueError as exc:
        raise ValueError(f"not a date or ISO instant: {text!r}") from exc
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)
