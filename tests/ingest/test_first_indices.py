"""``first_indices``: the first row of each messageId, whatever the repeats (dedup's core)."""

from __future__ import annotations

import pyarrow as pa
from hypothesis import given
from hypothesis import strategies as st

from zhiying.warehouse.events import first_indices


def _first_seen(ids: list[str | None]) -> list[int]:
    first: dict[str | None, int] = {}
    for row, message_id in enumerate(ids):
        first.setdefault(message_id, row)
    return sorted(first.values())


@given(st.lists(st.sampled_from(["m1", "m2", "m3", "m-4", "é5"]) | st.text(max_size=3)))
def test_first_indices_keep_the_first_row_of_every_message_id(ids: list[str]) -> None:
    table = pa.table({"message_id": pa.array(ids, pa.string())})
    assert first_indices(table).to_pylist() == _first_seen(list(ids))


@given(st.lists(st.sampled_from(["m1", "m2", None])))
def test_rows_without_a_message_id_count_as_one_id(ids: list[str | None]) -> None:
    table = pa.table({"message_id": pa.array(ids, pa.string())})
    assert first_indices(table).to_pylist() == _first_seen(ids)
