"""The bulk reader hands ``store_events`` chunks of exactly ``chunk_size`` rows."""

from __future__ import annotations

import pyarrow as pa

from zhiying.ingest.bulk import _chunks


def _reader(sizes: list[int]) -> pa.RecordBatchReader:
    batches, start = [], 0
    for size in sizes:
        batches.append(pa.record_batch({"n": pa.array(range(start, start + size), pa.int64())}))
        start += size
    return pa.RecordBatchReader.from_batches(batches[0].schema, batches)


def test_chunks_are_cut_at_exactly_the_chunk_size_across_record_batches_in_order() -> None:
    chunks = list(_chunks(_reader([3, 5, 1, 7, 2, 4]), 4))
    assert [c.num_rows for c in chunks] == [4, 4, 4, 4, 4, 2]
    assert pa.concat_tables(chunks).column("n").to_pylist() == list(range(22))


def test_a_record_batch_larger_than_several_chunks_is_cut_into_all_of_them() -> None:
    chunks = list(_chunks(_reader([10, 2]), 3))
    assert [c.num_rows for c in chunks] == [3, 3, 3, 3]
    assert pa.concat_tables(chunks).column("n").to_pylist() == list(range(12))


def test_an_exact_multiple_leaves_no_empty_last_chunk_and_no_rows_yield_nothing() -> None:
    assert [c.num_rows for c in _chunks(_reader([2, 2, 2]), 3)] == [3, 3]
    assert list(_chunks(_reader([0]), 3)) == []


def test_a_smaller_first_chunk_is_followed_by_full_size_chunks() -> None:
    chunks = list(_chunks(_reader([3, 5, 1, 7, 2, 4]), 5, first=2))
    assert [c.num_rows for c in chunks] == [2, 5, 5, 5, 5]
    assert pa.concat_tables(chunks).column("n").to_pylist() == list(range(22))
