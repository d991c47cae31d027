"""The layer rules in plain Python: cut points, scores, stages, sensitivity (no database)."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from zhiying.profiles.layers.models import (
    LifecycleRules,
    PromotionSensitivityRules,
    ValueFrequencyRules,
    cut_points,
    lifecycle_stage,
    parse_as_of,
    promotion_sensitivity,
    quadrant,
    score,
)

histograms = st.dictionaries(
    st.integers(min_value=0, max_value=10_000), st.integers(min_value=1, max_value=50), min_size=1
)


@given(histograms, st.integers(min_value=2, max_value=10))
def test_cut_points_are_numpys_inverted_cdf_quantiles(hist: dict[int, int], bins: int) -> None:
    expanded = np.repeat(list(hist), list(hist.values()))
    expected = [int(np.quantile(expanded, k / bins, method="inverted_cdf")) for k in range(1, bins)]
    assert cut_points(list(hist), list(hist.values()), bins) == expected


@given(histograms, st.integers(min_value=2, max_value=10))
def test_at_least_k_bins_th_of_customers_score_k_or_lower(hist: dict[int, int], bins: int) -> None:
    cuts = cut_points(list(hist), list(hist.values()), bins)
    total = sum(hist.values())
    for k in range(1, bins):
        at_most_k = sum(n for x, n in hist.items() if score(x, cuts) <= k)
        assert at_most_k * bins >= k * total


def test_ties_are_never_split_and_a_cut_value_scores_low() -> None:
    # 6 one-order customers, 2 with two orders, 2 with five: the median is 1.
    cuts = cut_points([1, 2, 5], [6, 2, 2], bins=2)
    assert cuts == [1]
    assert [score(x, cuts) for x in (1, 2, 5)] == [1, 2, 2]
    quintiles = cut_points([1, 2, 5], [6, 2, 2], bins=5)
    assert quintiles == [1, 1, 1, 2]
    assert [score(x, quintiles) for x in (0, 1, 2, 5)] == [1, 1, 4, 5]


def test_no_customers_means_no_cut_points_and_everyone_scores_one() -> None:
    assert cut_points([], [], 5) == []
    assert score(7, []) == 1


def test_quadrant_uses_the_high_from_score() -> None:
    rules = ValueFrequencyRules(bins=5, high_from_score=4)
    assert quadrant(4, 3, rules) == "high_frequency_low_value"
    assert quadrant(2, 5, rules) == "low_frequency_high_value"


@pytest.mark.parametrize(
    ("first", "last", "orders", "stage"),
    [
        (29, 0, 1, "new"),
        (30, 0, 1, "growing"),
        (400, 180, 9, "churned"),
        (400, 179, 9, "at_risk"),
        (400, 90, 9, "at_risk"),
        (400, 89, 6, "loyal"),
        (364, 10, 6, "mature"),  # six orders, but not a year yet
        (100, 10, 3, "mature"),
        (100, 10, 2, "growing"),
    ],
)
def test_lifecycle_thresholds(first: int, last: int, orders: int, stage: str) -> None:
    assert lifecycle_stage(first, last, orders, LifecycleRules()) == stage


def test_lifecycle_rules_must_be_ordered() -> None:
    with pytest.raises(ValidationError):
        LifecycleRules(at_risk_days=200, churn_days=180)


@pytest.mark.parametrize(
    ("orders", "coupons", "offers", "responded", "expected"),
    [
        (10, 7, 0, 0, "fanatic"),  # exactly 70 %: 7/10 is not below 0.7
        (10, 6, 0, 0, "sensitive"),
        (10, 3, 0, 0, "sensitive"),
        (10, 2, 0, 0, "neutral"),
        (10, 0, 0, 0, "indifferent"),
        (10, 0, 4, 2, "fanatic"),  # answers half the offers
        (10, 0, 4, 1, "sensitive"),
        (1, 1, 0, 0, "neutral"),  # one coupon order is too little evidence
        (1, 0, 5, 0, "indifferent"),  # ignored five offers
        (3, 9, 0, 0, "fanatic"),  # more coupon uses than orders is capped
    ],
)
def test_promotion_sensitivity(
    orders: int, coupons: int, offers: int, responded: int, expected: str
) -> None:
    rules = PromotionSensitivityRules()
    assert promotion_sensitivity(orders, coupons, offers, responded, rules) == expected


def test_rates_take_at_most_four_decimals() -> None:
    with pytest.raises(ValidationError):
        PromotionSensitivityRules(fanatic_share=Decimal("0.12345"))


def test_a_date_means_the_end_of_that_utc_day() -> None:
    assert parse_as_of("1998-06-30") == datetime(1998, 6, 30, 23, 59, 59, 999999, tzinfo=UTC)
    assert parse_as_of("1998-06-30T08:00:00+08:00") == datetime(1998, 6, 30, tzinfo=UTC)
    with pytest.raises(ValueError):
        parse_as_of("30/06/1998")
