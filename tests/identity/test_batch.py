"""Collapsing a batch to distinct identity tuples."""

from __future__ import annotations

from datetime import UTC, datetime

from tests.identity.events import NOW, T0, ev, table
from zhiying.identity.batch import collapse


def test_repeated_tuples_collapse_and_every_row_maps_to_its_tuple() -> None:
    rows = [
        ev("m1", user_id="u1", anonymous_id="a1", minute=5),
        ev("m2", anonymous_id="a2", minute=1),
        ev("m3", user_id="u1", anonymous_id="a1", minute=2),
        ev("m4", anonymous_id="a2", ids={"phone": "+8613800000000"}, minute=3),
    ]
    tuples = collapse(table(rows), NOW)
    assert len(tuples.observations) == 3
    by_row = [tuples.observations[c].identifiers for c in tuples.codes.to_pylist()]
    assert by_row == [
        (("user_id", "u1"), ("anonymous_id", "a1")),
        (("anonymous_id", "a2"),),
        (("user_id", "u1"), ("anonymous_id", "a1")),
        (("anonymous_id", "a2"), ("phone", "+8613800000000")),
    ]
    # Ordered by first event time; a tuple spans its first and last event.
    assert [o.message_id for o in tuples.observations] == ["m2", "m3", "m4"]
    u1 = tuples.observations[1]
    assert (u1.first_at.minute, u1.last_at.minute) == (2, 5)


def test_values_that_look_like_separators_are_not_confused() -> None:
    rows = [
        ev("m1", user_id="1:a", anonymous_id="b"),
        ev("m2", user_id="1", anonymous_id=":ab"),
        ev("m3", ids={"x": "1:y"}),
        ev("m4", ids={"x": "1", "y": ""}),
    ]
    assert len(collapse(table(rows), NOW).observations) == 4


def test_previous_id_counts_only_on_alias_calls() -> None:
    rows = [
        ev("m1", "track", user_id="u1", previous_id="a1"),
        ev("m2", "alias", user_id="u1", previous_id="a1", minute=1),
    ]
    obs = collapse(table(rows), NOW).observations
    assert [o.previous_id for o in obs] == [None, "a1"]


def test_event_times_after_now_are_read_as_now() -> None:
    rows = [ev("m1", anonymous_id="a", minute=60 * 24 * 365)]
    (o,) = collapse(table(rows), NOW).observations
    assert o.first_at == NOW
    assert T0.replace(tzinfo=UTC) < NOW < datetime(2027, 1, 1, tzinfo=UTC)
