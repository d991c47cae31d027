"""``first_indices`` and ``unseen_rows``: the first row of each messageId not stored yet,
whatever the repeats (dedup's core)."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.identity.events import ev, table
from zhiying.warehouse import open_warehouse
from zhiying.warehouse.events import _first_rows, append_events, first_indices, unseen_rows

SINCE = datetime(2026, 1, 1, tzinfo=UTC)


def _first_seen(ids: list[str | None]) -> list[int]:
    first: dict[str | None, int] = {}
    for row, message_id in enumerate(ids):
        first.setdefault(message_id, row)
    return sorted(first.values())


@settings(deadline=None)  # the first call warms up pyarrow's kernels
@given(st.lists(st.sampled_from(["m1", "m2", "m3", "m-4", "é5"]) | st.text(max_size=3)))
def test_first_indices_keep_the_first_row_of_every_message_id(ids: list[str]) -> None:
    table = pa.table({"message_id": pa.array(ids, pa.string())})
    assert first_indices(table).to_pylist() == _first_seen(list(ids))


@settings(deadline=None)
@given(st.lists(st.sampled_from(["m1", "m2", None])))
def test_rows_without_a_message_id_count_as_one_id(ids: list[str | None]) -> None:
    table = pa.table({"message_id": pa.array(ids, pa.string())})
    assert first_indices(table).to_pylist() == _first_seen(ids)


@settings(deadline=None)
@given(st.lists(st.sampled_from(["m1", "m2", "m3"]) | st.text(max_size=3)))
def test_ids_whose_hashes_collide_are_still_told_apart(ids: list[str]) -> None:
    """Equal hashes only send the ids to the exact path: distinct ids stay distinct."""
    column = pa.array(ids, pa.string())
    colliding = np.zeros(len(ids), dtype=np.uint64)
    assert _first_rows(column, colliding).to_pylist() == _first_seen(list(ids))


@settings(max_examples=25, deadline=None)
@given(
    st.lists(st.sampled_from([f"m{i}" for i in range(12)]), max_size=40),
    st.sets(st.sampled_from([f"m{i}" for i in range(12)]), max_size=8),
)
def test_unseen_rows_are_the_first_row_of_each_id_not_stored(
    tmp_path_factory: pytest.TempPathFactory, ids: list[str], stored: set[str]
) -> None:
    wh = open_warehouse(f"duckdb://{tmp_path_factory.mktemp('wh') / 'wh.duckdb'}")
    try:
        if stored:
            append_events(wh, table([ev(m, user_id="u1") for m in sorted(stored)]), SINCE)
        batch = table([ev(m, user_id="u2", minute=i) for i, m in enumerate(ids)])

        fresh, rows = unseen_rows(wh, batch, SINCE)

        expected = [r for r in _first_seen(list(ids)) if ids[r] not in stored]
        assert rows.tolist() == expected
        assert fresh.column("message_id").to_pylist() == [ids[r] for r in expected]
        stamps = batch.column("timestamp").to_pylist()
        assert fresh.column("timestamp").to_pylist() == [stamps[r] for r in expected]
    finally:
        wh.close()
