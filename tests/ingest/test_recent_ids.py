"""The in-memory set of recent message ids that spares the dedup scan."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from zhiying.warehouse.events import RecentMessageIds


@settings(max_examples=30, deadline=None)
@given(
    st.lists(st.lists(st.text(min_size=1, max_size=40), max_size=300), max_size=8),
    st.lists(st.text(min_size=1, max_size=40), max_size=50),
)
def test_every_added_id_is_reported_and_others_are_not(
    chunks: list[list[str]], others: list[str]
) -> None:
    recent = RecentMessageIds()
    for chunk in chunks:
        recent.add(chunk, np.full(len(chunk), 20_000))
    added = {i for chunk in chunks for i in chunk}
    if added:
        assert recent.maybe_seen(sorted(added), 19_999).all()
    fresh = [o for o in others if o not in added]
    assert not recent.maybe_seen(fresh, 19_999).any()


def test_many_adds_merge_into_one_sorted_set_without_losing_ids() -> None:
    recent = RecentMessageIds()
    ids = [f"m-{i}" for i in range(200_000)]
    for start in range(0, len(ids), 5_000):
        recent.add(ids[start : start + 5_000], np.full(5_000, 20_000))
    assert recent.maybe_seen(ids, 20_000).all()
    assert not recent.maybe_seen([f"n-{i}" for i in range(5_000)], 20_000).any()


def test_days_before_the_window_are_not_consulted_and_can_be_forgotten() -> None:
    recent = RecentMessageIds()
    recent.add(["old", "new"], np.array([100, 107]))
    assert recent.maybe_seen(["old", "new"], 101).tolist() == [False, True]
    recent.forget_before(107)
    assert recent.maybe_seen(["old", "new"], 0).tolist() == [False, True]
