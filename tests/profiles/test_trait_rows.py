"""``upsert_traits``' column work (latest row per key, JSON text of values) against the
row-by-row rules it replaced."""

from __future__ import annotations

import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from zhiying.profiles.service import _json_value, json_values, latest_trait_rows

_texts = st.one_of(
    st.none(),
    st.text(max_size=6),
    st.sampled_from(['say "hi"', "a\\b", "tab\there", "line\nbreak", "北京", "\x1f", "ok"]),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(_texts, st.one_of(st.none(), st.floats(allow_nan=False))), max_size=30))
def test_json_values_equal_the_row_by_row_form(
    pairs: list[tuple[str | None, float | None]],
) -> None:
    values = pa.array([v for v, _ in pairs], pa.string())
    numbers = pa.array([n for _, n in pairs], pa.float64())
    assert json_values(values, numbers) == [_json_value(v, n) for v, n in pairs]


def _latest_by_loop(rows: list[tuple[str, str, int, str | None]]) -> list[int]:
    """The loop ``upsert_traits`` ran before: ``(at, message or '') >=`` the best so far."""
    best: dict[tuple[str, str], tuple[int, str]] = {}
    latest: dict[tuple[str, str], int] = {}
    for i, (o, k, at, m) in enumerate(rows):
        have = best.get((o, k))
        if have is None or (at, m or "") >= have:
            best[(o, k)] = (at, m or "")
            latest[(o, k)] = i
    return sorted(latest.values())


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["u_1", "u_2", "u_3"]),
            st.sampled_from(["city", "name", "tier"]),
            st.integers(0, 3),
            st.one_of(st.none(), st.sampled_from(["", "m-a", "m-b", "m-c"])),
        ),
        max_size=40,
    )
)
def test_latest_rows_equal_the_loop(rows: list[tuple[str, str, int, str | None]]) -> None:
    table = pa.table(
        {
            "one_id": pa.array([r[0] for r in rows], pa.string()),
            "key": pa.array([r[1] for r in rows], pa.string()),
            "message_id": pa.array([r[3] for r in rows], pa.string()),
        }
    )
    stamps = pa.array([r[2] for r in rows], pa.int64()).cast(pa.timestamp("us"))
    got = latest_trait_rows(table, stamps).to_pylist() if rows else []
    assert got == _latest_by_loop(rows)
