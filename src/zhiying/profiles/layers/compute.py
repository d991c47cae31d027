"""Layer rules → ibis expressions yielding ``layer_values`` rows (``one_id, layer, value, as_of``).

Each function emits, as SQL ``CASE`` expressions, exactly the rule of the
matching pure function in ``models`` (``lifecycle_stage``, ``score`` +
``quadrant``, ``promotion_sensitivity``); tests hold them equal. Money is
compared in integer cents and rates in basis points, so the SQL and the
Python agree to the unit on every engine.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

import ibis
import ibis.expr.types as ir

from zhiying.profiles.layers.models import (
    LifecycleRules,
    PromotionSensitivityRules,
    ValueFrequencyRules,
    bp,
)
from zhiying.profiles.tags.sources import instant, resolved_events, with_one_id
from zhiying.warehouse.schema import Dialect


def _rows(metrics: ir.Table, layer: str, value: ir.StringValue, now: ir.Value) -> ir.Table:
    rows = metrics.select(person=metrics.person, layer=ibis.literal(layer), value=value, as_of=now)
    return with_one_id(rows).select("one_id", "layer", "value", "as_of")


def _in_window(
    t: ir.Table, window_days: int | None, as_of: datetime, dialect: Dialect
) -> ir.BooleanValue:
    if window_days is None:
        return ibis.literal(True)
    return t.timestamp > instant(as_of - timedelta(days=window_days), dialect)


# --- lifecycle ------------------------------------------------------------------


def lifecycle_metrics(rules: LifecycleRules, as_of: datetime, dialect: Dialect) -> ir.Table:
    """Per customer: ``days_since_first``, ``days_since_last``, ``orders`` (all up to ``as_of``)."""
    events = resolved_events(as_of, dialect)
    orders = events.filter(events.event.isin(rules.order_events))
    per = orders.group_by(orders.person).aggregate(
        first=orders.timestamp.min(), last=orders.timestamp.max(), orders=orders.count()
    )
    now = instant(as_of, dialect)
    return per.select(
        person=per.person,
        days_since_first=now.delta(per["first"], unit="day"),
        days_since_last=now.delta(per["last"], unit="day"),
        orders=per.orders,
    )


def lifecycle_expr(rules: LifecycleRules, as_of: datetime, dialect: Dialect) -> ir.Table:
    m = lifecycle_metrics(rules, as_of, dialect)
    value = ibis.cases(
        (m.days_since_first < rules.new_days, "new"),
        (m.days_since_last >= rules.churn_days, "churned"),
        (m.days_since_last >= rules.at_risk_days, "at_risk"),
        (
            (m.orders >= rules.loyal_orders) & (m.days_since_first >= rules.loyal_tenure_days),
            "loyal",
        ),
        (m.orders >= rules.mature_orders, "mature"),
        else_="growing",
    )
    return _rows(m, "lifecycle", value, instant(as_of, dialect))


# --- value x frequency ----------------------------------------------------------


def value_frequency_metrics(
    rules: ValueFrequencyRules, as_of: datetime, dialect: Dialect
) -> ir.Table:
    """Per customer: ``frequency`` (orders) and ``monetary`` (revenue in cents) in the window."""
    events = resolved_events(as_of, dialect)
    orders = events.filter(events.event.isin(rules.order_events))
    win = _in_window(orders, rules.window_days, as_of, dialect)
    per = orders.group_by(orders.person).aggregate(
        frequency=orders.count(where=win),
        revenue=orders.revenue.sum(where=win),
    )
    return per.select(
        person=per.person,
        frequency=per.frequency,
        monetary=(per.revenue * 100).cast("int64").fill_null(0),
    )


def histogram_expr(metrics: ir.Table, column: str) -> ir.Table:
    """``(x, n)``: how many customers with an order in the window have each ``column`` value."""
    active = metrics.filter(metrics.frequency > 0)
    return active.group_by(x=active[column]).aggregate(n=active.count())


def _score(x: ir.IntegerValue, cuts: Sequence[int]) -> ir.IntegerValue:
    total: ir.IntegerValue = ibis.literal(1)
    for c in cuts:
        total = total + (x > c).cast("int64")
    return total


def value_frequency_expr(
    rules: ValueFrequencyRules,
    as_of: datetime,
    dialect: Dialect,
    frequency_cuts: Sequence[int],
    monetary_cuts: Sequence[int],
) -> ir.Table:
    m = value_frequency_metrics(rules, as_of, dialect)
    high_f = _score(m.frequency, frequency_cuts) >= rules.high_from_score
    high_v = _score(m.monetary, monetary_cuts) >= rules.high_from_score
    value = ibis.cases(
        (high_f & high_v, "high_frequency_high_value"),
        (high_f, "high_frequency_low_value"),
        (high_v, "low_frequency_high_value"),
        else_="low_frequency_low_value",
    )
    return _rows(m, "value_frequency", value, instant(as_of, dialect))


# --- promotion sensitivity ------------------------------------------------------


def promotion_metrics(
    rules: PromotionSensitivityRules, as_of: datetime, dialect: Dialect
) -> ir.Table:
    """Per customer: ``orders``, ``coupon_orders``, ``offers``, ``responded`` in the window."""
    events = resolved_events(as_of, dialect)
    win = _in_window(events, rules.window_days, as_of, dialect)
    is_order = events.event.isin(rules.order_events)
    uses_coupon = is_order & events.coupon.notnull()
    if rules.redeemed_events:
        uses_coupon = uses_coupon | events.event.isin(rules.redeemed_events)
    offer_closed = events.timestamp <= instant(as_of - timedelta(days=rules.response_days), dialect)
    is_offer = (
        events.event.isin(rules.issued_events) & win & offer_closed
        if rules.issued_events
        else ibis.literal(False)
    )
    order_key = ibis.coalesce(events.order_id, events.message_id)
    per = events.group_by(events.person).aggregate(
        lifetime_orders=events.count(where=is_order),
        orders=events.count(where=is_order & win),
        coupon_keys=order_key.nunique(where=uses_coupon.fill_null(False) & win),
        offers=events.count(where=is_offer),
    )
    per = per.filter(per.lifetime_orders > 0)

    offers = events.filter(is_offer).select(
        o_person=events.person, offer_id=events.message_id, offered_at=events.timestamp
    )
    orders = events.filter(is_order).select(b_person=events.person, bought_at=events.timestamp)
    pairs = offers.inner_join(orders, offers.o_person == orders.b_person)
    pairs = pairs.filter(
        pairs.bought_at > pairs.offered_at,
        pairs.bought_at <= pairs.offered_at + ibis.interval(days=rules.response_days),
    )
    responses = pairs.group_by(r_person=pairs.o_person).aggregate(
        responded=pairs.offer_id.nunique()
    )
    joined = per.left_join(responses, per.person == responses.r_person)
    return joined.select(
        person=joined.person,
        orders=joined.orders,
        coupon_orders=ibis.least(joined.coupon_keys, joined.orders),
        offers=joined.offers,
        responded=joined.responded.fill_null(0),
    )


def promotion_expr(rules: PromotionSensitivityRules, as_of: datetime, dialect: Dialect) -> ir.Table:
    m = promotion_metrics(rules, as_of, dialect)
    share_known = m.orders >= rules.min_orders
    response_known = m.offers >= rules.min_offers
    coupons = m.coupon_orders.cast("int64") * 10000
    responded = m.responded.cast("int64") * 10000
    orders = m.orders.cast("int64")
    offers = m.offers.cast("int64")

    def share_at_least(rate_bp: int) -> ir.BooleanValue:
        return share_known & (coupons >= orders * rate_bp)

    def response_at_least(rate_bp: int) -> ir.BooleanValue:
        return response_known & (responded >= offers * rate_bp)

    share_low = ~share_known | (coupons <= orders * bp(rules.indifferent_share))
    response_low = ~response_known | (responded <= offers * bp(rules.indifferent_response))
    value = ibis.cases(
        (
            share_at_least(bp(rules.fanatic_share)) | response_at_least(bp(rules.fanatic_response)),
            "fanatic",
        ),
        (
            share_at_least(bp(rules.sensitive_share))
            | response_at_least(bp(rules.sensitive_response)),
            "sensitive",
        ),
        ((share_known | response_known) & share_low & response_low, "indifferent"),
        else_="neutral",
    )
    return _rows(m, "promotion_sensitivity", value, instant(as_of, dialect))
