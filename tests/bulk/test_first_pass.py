"""The first pass's shortcuts change nothing a file's rows come out as.

* product lines and identifiers are checked as flat rows and listed back per message
  in Arrow (``bulk._RowIndex``): interleaved with plain and bad rows, in chunks of any
  size, every message still gets its own lists (compared with the HTTP validator);
* a Parquet file's rows do not travel with the parts: rejected rows' raw text is read
  back by row number and derived messageIds hash only the rows without one; both must
  equal what the path that carries the source row gives (still used for CSV);
* JSONL keys are read into a STRUCT, where an explicit ``null`` and an absent key are
  alike, and timestamps without an offset take the plain cast.
"""

from __future__ import annotations

import random
import threading
import time
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tests.bulk.test_parity import BAD, GOOD, both_paths, comparable
from zhiying.ingest import bulk
from zhiying.ingest.bulk import _Checked, _RowIndex, check_file
from zhiying.ingest.bulk_rules import checked_select, register_udfs
from zhiying.ingest.bulk_sql import Column, default_mapping, mapped_parts_sql, source_sql
from zhiying.ingest.mapping import Mapping

NOW = datetime(2026, 11, 1, 9, 0, tzinfo=UTC)


def test_row_lists_follow_each_rows_number_in_order_for_sorted_and_unsorted_rows() -> None:
    values = pa.array(["a", None, "b", "c", None, "d"])
    side = np.array([2, 2, 2, 5, 9, 9])
    for rows in ([1, 2, 5, 7, 9], [9, 5, 1, 2, 7]):
        index = _RowIndex(np.array(rows))
        kept = dict(zip(rows, index.lists(side, values).to_pylist(), strict=True))
        assert kept == {1: [], 2: ["a", None, "b"], 5: ["c"], 7: [], 9: [None, "d"]}
        dropped = dict(zip(rows, index.lists(side, values, True).to_pylist(), strict=True))
        assert dropped == {1: [], 2: ["a", "b"], 5: ["c"], 7: [], 9: ["d"]}
    assert _RowIndex(np.array([], np.int64)).lists(side[:0], values[:0]).to_pylist() == []


def _mixed_messages(n: int) -> list[Any]:
    """GOOD and BAD messages (products, identifiers, bad lines of both) shuffled among
    plain page views, so a list given to the wrong row shows."""
    rnd = random.Random(3)
    plain = [
        {"type": "page", "userId": f"p{i}", "name": "Home", "messageId": f"page-{i}"}
        for i in range(n)
    ]
    special = [dict(m) if isinstance(m, dict) else m for m in (GOOD + BAD) * 3]
    for i, m in enumerate(special):
        if isinstance(m, dict) and "messageId" in m:
            m["messageId"] = f"{m['messageId']}-{i}"
    out = plain + special
    rnd.shuffle(out)
    return out


def test_products_and_identifiers_reach_their_own_rows_among_many(tmp_path: Path) -> None:
    messages = _mixed_messages(400)
    http_rej, bulk_rej, http_rows, bulk_rows = both_paths(tmp_path, messages)
    assert bulk_rej == http_rej
    assert comparable(bulk_rows, messages) == comparable(http_rows, messages)
    assert any(r["products"] for r in bulk_rows) and any(r["identifiers"] for r in bulk_rows)


def _checked(
    path: Path, plan_sql: str, raw: str, hashed: str, lookup: str | None, size: int
) -> pa.Table:
    """The checked rows of ``path`` through one parts plan, in chunks of ``size``."""
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    register_udfs(con, "CN")
    sql = checked_select(
        "SELECT * FROM __parts",
        received_at=NOW.replace(tzinfo=None),
        source=f"import:{path.name}",
        raw_sql=raw,
        hash_sql=hashed,
    )
    table = pa.concat_tables(list(_Checked(con, plan_sql, sql, lookup).chunks(size)))
    con.close()
    return table


def test_a_parquet_files_rejects_and_derived_ids_equal_those_of_the_carried_row_path(
    tmp_path: Path,
) -> None:
    n = 300
    src = tmp_path / "events.parquet"
    pq.write_table(
        pa.table(
            {
                # every 3rd row without a messageId (derived), every 5th of a bad type
                "messageId": [None if i % 3 == 0 else f"m{i}" for i in range(n)],
                "type": ["bogus" if i % 5 == 0 else "track" for i in range(n)],
                "event": ["Bought"] * n,
                "userId": [f"u{i % 7}" for i in range(n)],
                "timestamp": pa.array(
                    [1_700_000_000_000_000 + i for i in range(n)], pa.timestamp("us")
                ),
                "revenue": pa.array([Decimal(i) / 100 for i in range(n)], pa.decimal128(18, 2)),
                "tags": [["a", str(i)] for i in range(n)],
                "plan": ["gold", "free", "重庆"] * (n // 3),
            }
        ),
        src,
        row_group_size=64,  # several row groups: the lookup reads only the chunk's
    )
    con = duckdb.connect()
    source = source_sql(src, "parquet", Mapping())
    columns = [
        Column(str(r[0]), str(r[1]))
        for r in con.sql(f"DESCRIBE SELECT * EXCLUDE (__row) FROM ({source})").fetchall()
    ]
    mapping = default_mapping(columns, "events")
    carried = mapped_parts_sql(source, columns, mapping, "events")
    looked = mapped_parts_sql(source, columns, mapping, "events", raw_by_lookup=True)
    assert carried.raw_lookup is None and looked.raw_lookup is not None
    want = _checked(src, carried.sql, carried.raw_sql, carried.hash_sql, None, 1000)
    for size in (1000, 110):
        got = _checked(src, looked.sql, looked.raw_sql, looked.hash_sql, looked.raw_lookup, size)
        for name in ("__row", "__bad", "__errors", "__raw", "__h", "message_id", "products"):
            assert got.column(name).to_pylist() == want.column(name).to_pylist(), name
    assert sum(want.column("__bad").to_pylist()) == 60
    assert want.column("__h").null_count < n
    # and the importer takes the lookup path for Parquet
    checked = check_file(src, received_at=NOW)
    assert checked.rejections.column("raw").to_pylist() == [
        r for r in want.column("__raw").to_pylist() if r is not None
    ]
    assert bulk.resolve_format(src, None, None) == "parquet"


def test_explicit_nulls_read_like_absent_keys_and_offsets_like_the_http_path(
    tmp_path: Path,
) -> None:
    messages: list[Any] = [
        {"type": "track", "event": "e", "userId": None, "anonymousId": "a1", "properties": None},
        {"type": "page", "userId": "u", "context": None, "traits": None, "channel": None},
        {"type": None, "userId": "u"},
        {"type": "track", "event": None, "userId": "u"},
        {"type": "identify", "userId": "u", "traits": {"email": None, "phone": None}},
        {"type": "alias", "userId": "u", "previousId": None},
        {"type": "track", "event": "e", "userId": "u", "messageId": None, "sentAt": None},
    ]
    stamps = [
        "2026-10-31T23:00:00.123456+08:00",
        "2026-10-31T23:00+05:30",
        "2026-10-31T23:00:00-00:00",
        "2026-10-31T23:00:00.5Z",
        "2026-10-31 23:00",
        "2026-10-31",
        "2026-02-29T10:00:00Z",
        "2024-02-29T23:59:59.999999-23:59",
        "2026-10-31T23:00:00.1234567Z",
    ]
    for i, at in enumerate(stamps):
        messages.append({"type": "track", "event": "e", "userId": "u", "timestamp": at})
        messages.append({"type": "track", "event": f"s{i}", "userId": "u", "sentAt": at})
    http_rej, bulk_rej, http_rows, bulk_rows = both_paths(tmp_path, messages)
    assert bulk_rej == http_rej
    assert {r for r, _, _ in bulk_rej} >= {3, 4, 6}
    assert comparable(bulk_rows, messages) == comparable(http_rows, messages)
    lines = tmp_path / "messages.jsonl"
    assert orjson.loads(lines.read_bytes().splitlines()[0])["userId"] is None


def test_a_text_file_is_checked_in_order_while_its_next_parts_are_read_ahead(
    tmp_path: Path,
) -> None:
    messages = _mixed_messages(200)
    path = tmp_path / "m.jsonl"
    path.write_bytes(b"\n".join(orjson.dumps(m) for m in messages) + b"\n")
    whole = check_file(path, received_at=NOW)
    with bulk._open_checked(path, "jsonl", "events", None, NOW, "CN") as (_, checked):
        assert checked._read_ahead
        chunks = list(checked.chunks(50))
    assert [c.num_rows for c in chunks[:-1]] == [50] * (len(chunks) - 1)
    rows = pa.concat_tables(chunks)
    assert rows.column("__row").to_pylist() == list(range(1, len(messages) + 1))
    good = rows.filter(pc.invert(rows.column("__bad")))
    assert good.column("message_id").to_pylist() == whole.events.column("message_id").to_pylist()
    # a consumer that stops early leaves no reader thread behind
    for chunk in bulk.checked_chunks(path, received_at=NOW, chunk_size=20):
        assert chunk.num_rows == 20
        break
    for _ in range(50):
        if not any(t.name == "zhiying-bulk-reader" for t in threading.enumerate()):
            break
        time.sleep(0.1)
    assert not any(t.name == "zhiying-bulk-reader" for t in threading.enumerate())


def test_chunks_checked_by_relations_made_at_the_first_chunk_equal_one_whole_check(
    tmp_path: Path,
) -> None:
    """The checked, product and identifier relations are made once per file and run
    again on each chunk's ``__parts``: every chunk must come out as its own rows."""
    messages = _mixed_messages(240)
    path = tmp_path / "m.jsonl"
    path.write_bytes(b"\n".join(orjson.dumps(m) for m in messages) + b"\n")
    with bulk._open_checked(path, "jsonl", "events", None, NOW, "CN") as (_, checked):
        whole = pa.concat_tables(list(checked.chunks(10_000)))
    with bulk._open_checked(path, "jsonl", "events", None, NOW, "CN") as (_, checked):
        chunks = list(checked.chunks(37))
    assert len(chunks) > 5
    assert pa.concat_tables(chunks).to_pylist() == whole.to_pylist()
