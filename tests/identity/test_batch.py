"""Collapsing a batch to distinct identity tuples."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

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


_VALUES = ["", "1", "1:", ":1", "a", "~", "u1"]


@st.composite
def _rows(draw: st.DrawFn) -> list[dict[str, object]]:
    out = []
    for i in range(draw(st.integers(1, 30))):
        pairs = draw(
            st.none()
            | st.lists(
                st.tuples(
                    st.sampled_from(["user_id", "anonymous_id", "x", ""]), st.sampled_from(_VALUES)
                ),
                max_size=3,
            )
        )
        row = ev(
            f"m{i}",
            draw(st.sampled_from(["track", "alias", "identify"])),
            user_id=draw(st.none() | st.sampled_from(_VALUES)),
            anonymous_id=draw(st.none() | st.sampled_from(_VALUES)),
            previous_id=draw(st.none() | st.sampled_from(_VALUES)),
            minute=draw(st.integers(0, 5)),
        )
        row["identifiers"] = None if pairs is None else [{"kind": k, "value": v} for k, v in pairs]
        out.append(row)
    return out


@settings(max_examples=200, deadline=None)
@given(rows=_rows())
def test_tuples_are_the_distinct_combinations_of_the_identity_fields(
    rows: list[dict[str, object]],
) -> None:
    """Reference: group rows by (userId, anonymousId, previousId of an alias call, the
    identifier list; a null list is an empty one), numbered by first event in time order."""

    def key(r: dict[str, Any]) -> tuple[object, ...]:
        items = tuple((i["kind"], i["value"]) for i in r["identifiers"] or [])
        return (
            r["user_id"],
            r["anonymous_id"],
            r["previous_id"] if r["type"] == "alias" else None,
            items,
        )

    order = sorted(range(len(rows)), key=lambda i: (rows[i]["timestamp"], i))
    number: dict[tuple[object, ...], int] = {}
    for i in order:
        number.setdefault(key(rows[i]), len(number))
    tuples = collapse(table(rows), NOW)
    assert tuples.codes.to_pylist() == [number[key(r)] for r in rows]
    for k, t in number.items():
        user, anon, previous, items = k
        expected: list[tuple[str, str]] = []
        for ident in [("user_id", user), ("anonymous_id", anon), *items]:
            if ident[0] and ident[1] and ident not in expected:
                expected.append(ident)  # type: ignore[arg-type]
        obs = tuples.observations[t]
        assert obs.identifiers == tuple(expected)
        assert obs.previous_id == (previous or None)
        firsts = [i for i in order if key(rows[i]) == k]
        assert obs.message_id == rows[firsts[0]]["message_id"]
