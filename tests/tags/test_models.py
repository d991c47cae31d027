"""Tag definitions validate what they promise; bands and schedules are pure rules."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from tests.tags.test_refresh import seed_tags
from zhiying.profiles.tags.compiler import tags_sql
from zhiying.profiles.tags.models import (
    Band,
    DynamicTag,
    EventFilter,
    SemiStaticTag,
    TagSet,
    band_label,
)
from zhiying.profiles.tags.schedule import is_due, period_start
from zhiying.profiles.tags.service import parse_definition


def test_list_operators_need_a_list_and_comparisons_need_revenue() -> None:
    with pytest.raises(ValidationError):
        EventFilter(column="channel", op="in", value="app")
    with pytest.raises(ValidationError):
        EventFilter(column="channel", op="gt", value=3)
    assert EventFilter(column="revenue", op="gte", value=100).value == 100


def test_sum_needs_a_measure_and_top_needs_a_text_field() -> None:
    with pytest.raises(ValidationError):
        DynamicTag(name="x", aggregate="sum")
    with pytest.raises(ValidationError):
        DynamicTag(name="x", aggregate="top", of="revenue")
    assert DynamicTag(name="x", aggregate="top", of="products.brand").numeric is False


def test_semi_static_tag_has_exactly_one_source() -> None:
    with pytest.raises(ValidationError):
        SemiStaticTag(name="x")
    with pytest.raises(ValidationError):
        SemiStaticTag(name="x", trait="balance", column="channel")


def test_names_are_lower_case_identifiers_and_unique_in_a_file() -> None:
    with pytest.raises(ValidationError):
        DynamicTag(name="Orders 90d", aggregate="count")
    tag = DynamicTag(name="a", aggregate="count")
    with pytest.raises(ValidationError):
        TagSet(tags=[tag, tag])


def test_definition_round_trips_through_json() -> None:
    for tag in seed_tags():
        assert parse_definition(tag.model_dump(mode="json")) == tag


@given(st.floats(min_value=-1e6, max_value=1e6, allow_nan=False))
def test_band_label_is_the_first_band_with_min_inclusive_max_exclusive(x: float) -> None:
    bands = [
        Band(label="low", max=10),
        Band(label="mid", min=10, max=100),
        Band(label="top", min=100),
    ]
    expected = "low" if x < 10 else "mid" if x < 100 else "top"
    assert band_label(bands, x) == expected


def test_scalar_tags_read_the_event_table_once_per_refresh() -> None:
    scalar = [t for t in seed_tags() if isinstance(t, DynamicTag) and t.aggregate != "top"]
    at = datetime(2026, 11, 1, tzinfo=UTC)
    assert tags_sql(scalar, at, "duckdb").count('FROM "events"') == 1
    assert tags_sql(scalar, at, "clickhouse").count('FROM "events"') == 1


def test_daily_tags_are_due_once_per_utc_day() -> None:
    now = datetime(2026, 11, 4, 15, 30, tzinfo=UTC)  # a Wednesday
    assert period_start("weekly", now) == datetime(2026, 11, 2, tzinfo=UTC)
    assert is_due("daily", None, now)
    assert not is_due("daily", now.replace(hour=0, minute=5), now)
    assert is_due("daily", now - timedelta(days=1), now)
    assert not is_due("manual", None, now)


@given(
    st.sampled_from(["hourly", "daily", "weekly"]),
    st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1)),
)
def test_a_tag_is_not_due_again_right_after_its_refresh(refresh: str, naive: datetime) -> None:
    now = naive.replace(tzinfo=UTC)
    assert not is_due(refresh, now, now)  # type: ignore[arg-type]
    assert period_start(refresh, now) <= now  # type: ignore[arg-type]
