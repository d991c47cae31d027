"""The bulk validator's shortcuts for JSON types and strings agree with DuckDB's JSON reader.

``bulk_rules._jt``/``_js`` tell a JSON text's type by its first byte and read a string
without escapes by slicing; these tests compare them with ``json_type`` and ``->> '$'``
on texts chosen to break a careless shortcut (escapes, quotes inside, non-ASCII, leading
blanks, every JSON type) and on random JSON values.
"""

from __future__ import annotations

import json

import duckdb
from hypothesis import given, settings
from hypothesis import strategies as st

from zhiying.ingest.bulk_rules import _js, _jt

TRICKY = [
    None,
    '"plain"',
    '""',
    '"with \\"quote\\" inside"',
    '"back\\\\slash"',
    '"tab\\tand\\nnewline"',
    '"\\u00e9 escaped"',
    '"é 中文 raw"',
    '"{not an object}"',
    '{"a": 1}',
    "{}",
    "[1, 2]",
    "[]",
    '  {"padded": true}',
    ' "padded string"',
    "12",
    "-3.5e2",
    "18446744073709551616",
    "true",
    "false",
    "null",
]


def _ours_and_duckdbs(texts: list[str | None]) -> list[tuple[object, ...]]:
    con = duckdb.connect()
    con.execute("CREATE TABLE t (i INTEGER, x VARCHAR)")
    con.executemany("INSERT INTO t VALUES (?, ?)", list(enumerate(texts)))
    return con.sql(
        f"SELECT {_jt('x')}, coalesce(json_type(x), 'NULL'), {_js('x')}, "
        "CASE WHEN json_type(x) = 'VARCHAR' THEN x ->> '$' END FROM t ORDER BY i"
    ).fetchall()


def test_type_and_string_shortcuts_match_the_json_reader_on_tricky_texts() -> None:
    rows = _ours_and_duckdbs(TRICKY)
    assert len(rows) == len(TRICKY)
    for text, (our_type, their_type, our_str, their_str) in zip(TRICKY, rows, strict=True):
        assert (our_type, our_str) == (their_type, their_str), text


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=8,
)


@settings(max_examples=60, deadline=None)
@given(st.lists(json_values, min_size=1, max_size=20))
def test_type_and_string_shortcuts_match_the_json_reader_on_random_values(
    values: list[object],
) -> None:
    texts: list[str | None] = [json.dumps(v, ensure_ascii=False) for v in values]
    for our_type, their_type, our_str, their_str in _ours_and_duckdbs(texts):
        assert (our_type, our_str) == (their_type, their_str)
