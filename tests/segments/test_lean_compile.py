"""The lean compile (``compiler.select``/``joined``, ``sqlext.to_sqlglot``): same answers,
less work, and ibis's own compilers untouched."""

from __future__ import annotations

import duckdb
import ibis
import pytest

from zhiying.segments import sqlext
from zhiying.segments.compiler import DIALECTS, join_refs, joined, select

T = ibis.table({"a": "int64", "b": "string"}, name="t")
U = ibis.table({"a": "int64", "c": "string"}, name="u")


def _run(expr: ibis.Table) -> list[tuple[object, ...]]:
    with_, body = sqlext.to_sqlglot(expr, "duckdb")
    if with_ is not None:
        body.set("with_", with_)
    con = duckdb.connect()
    con.execute("CREATE TABLE t AS SELECT * FROM (VALUES (1, 'x'), (2, NULL), (3, 'z')) v(a, b)")
    con.execute("CREATE TABLE u AS SELECT * FROM (VALUES (1, 'p'), (3, 'q')) v(a, c)")
    return sorted(con.execute(body.sql("duckdb")).fetchall(), key=repr)


def test_a_rewrite_pass_still_runs_when_some_node_needs_it() -> None:
    # ibis rewrites ``a IN ()`` to FALSE (the empty list is not valid SQL); the lean
    # compile skips that pass only when no node matches it.
    expr = select(T, [T["a"].isin([]) | (T["a"] == 1)], a=T["a"])
    assert _run(expr) == [(1,)]


def test_select_is_filter_then_select_in_one_query_level() -> None:
    expr = select(T, [T["a"] >= 2, T["b"].notnull()], b=T["b"], twice=T["a"] * 2)
    assert _run(expr) == [("z", 6)]
    _, body = sqlext.to_sqlglot(expr, "duckdb")
    assert body.sql("duckdb").count("SELECT") == 1


def test_select_refuses_a_value_read_from_another_table() -> None:
    with pytest.raises(ValueError, match="not a row-wise value"):
        select(T, [U["a"] == 1], a=T["a"])
    with pytest.raises(ValueError, match="not a row-wise value"):
        select(T, total=T["a"].sum())


def test_joined_names_every_column_and_keeps_unmatched_left_rows() -> None:
    t, u = join_refs(T, U)
    expr = joined([t, u], [("left", t["a"] == u["a"])], a=t["a"], c=u["c"])
    assert _run(expr) == [(1, "p"), (2, None), (3, "q")]


def test_a_table_used_twice_becomes_one_cte() -> None:
    once = select(T, [T["a"] > 1], a=T["a"])
    both = once.union(select(once, [once["a"] < 3], a=once["a"]))
    with_, _ = sqlext.to_sqlglot(both, "duckdb")
    assert with_ is not None and len(with_.expressions) == 1
    assert _run(both) == [(2,), (2,), (3,)]


@pytest.mark.parametrize("dialect", DIALECTS)
def test_ibis_own_compile_still_fuses_selects(dialect: str) -> None:
    # The lean compilers are subclasses: ibis's own (tags, layers) keep fusing.
    sql = str(ibis.to_sql(T.filter(T["a"] > 1).select("a"), dialect=dialect))
    assert sql.count("SELECT") == 1
