"""The lean compile (``compiler.select``/``joined``, ``sqlext.to_sqlglot``): same answers,
less work, and ibis's own compilers untouched."""

from __future__ import annotations

import re
from typing import Any

import duckdb
import ibis
import ibis.backends.sql.compilers as sql_compilers
import ibis.backends.sql.rewrites as sql_rewrites
import ibis.expr.operations as ops
import pytest
import sqlglot.expressions as sge
from hypothesis import given, settings
from ibis.common.exceptions import IntegrityError
from ibis.common.graph import Graph
from ibis.common.patterns import Any as Any_

from tests.segments.coverage import AT as COVERAGE_AT
from tests.segments.coverage import Catalog as CoverageCatalog
from tests.segments.coverage import coverage_rules
from tests.segments.helpers import RULE, load_example
from tests.segments.test_compiler_matches_reference import rules as random_rules
from zhiying.segments import sqlext
from zhiying.segments.compiler import (
    DIALECTS,
    CompiledRule,
    SqlDialect,
    _inline_plain_ctes,
    aggregate,
    compile_rule,
    join_refs,
    joined,
    select,
)

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


# --- session 8: a cheaper compile, the same SQL ------------------------------------------


def _whole_text(
    keys: tuple[sge.With | None, sge.Select], dialect: SqlDialect, kind: str, pretty: bool
) -> str:
    """The text as written until session 8: the outer query built around (a copy of)
    the keys' compiled tree and the whole tree written at once."""
    with_, body = (None if keys[0] is None else keys[0].copy()), keys[1].copy()
    m = sge.TableAlias(this=sge.to_identifier("m", quoted=True))
    query = sge.Select().from_(sge.Subquery(this=body, alias=m), copy=False)
    if with_ is not None:
        query.set("with_", with_)
    one_id = sge.column("one_id", table="k", quoted=True)
    if kind != "count":
        on = sge.EQ(
            this=sge.column("person_key", table="m", quoted=True),
            expression=sge.column("person_key", table="k", quoted=True),
        )
        k = sge.Table(
            this=sge.to_identifier("person_keys", quoted=True),
            alias=sge.TableAlias(this=sge.to_identifier("k", quoted=True)),
        )
        query = query.join(k, on=on, join_type="inner", copy=False)
    if kind == "sql":
        query = query.select(one_id, copy=False)
    elif kind == "count":
        n = sge.Count(this=sge.column("person_key", table="m", quoted=True))
        query = query.select(sge.alias_(n, "n", quoted=True), copy=False)
    else:
        total = sge.alias_(sge.Window(this=sge.Count(this=sge.Star())), "members", quoted=True)
        query = query.select(one_id, total, copy=False)
        query = query.order_by(sge.Ordered(this=one_id.copy()), copy=False).limit(7, copy=False)
    dialect_cls = getattr(sql_compilers, dialect).compiler.dialect
    return str(query.sql(dialect=dialect_cls, pretty=pretty, copy=False))


def _same_text_as_the_whole_tree(compiled: CompiledRule, dialects: tuple[SqlDialect, ...]) -> None:
    # ibis names some helper columns with a random suffix (PostgreSQL's array any()).
    def norm(sql: str) -> str:
        return re.sub(r"(ibis_pg_arr_bool_or_)[a-z0-9]+", r"\1X", sql)

    for dialect in dialects:
        keys = sqlext.to_sqlglot(compiled.keys, dialect)
        if dialect == "duckdb" and keys[0] is not None:
            _inline_plain_ctes(keys[0])
        texts = {
            "sql": compiled.sql(dialect, pretty=False),
            "pretty": compiled.sql(dialect, pretty=True),
            "count": compiled.count_sql(dialect),
            "sample": compiled.sample_sql(dialect, 7),
        }
        for kind, got in texts.items():
            pretty = kind == "pretty"
            whole = _whole_text(keys, dialect, "sql" if pretty else kind, pretty)
            assert norm(got) == norm(whole), (dialect, kind)


def test_every_text_equals_the_whole_tree_written_for_every_kind_of_condition() -> None:
    # The keys' query is written once per dialect and layout and spliced into each text
    # (``CompiledRule._text``): the result must be what sqlglot writes for the whole tree.
    # Every rule on the warehouse dialects, every fourth on the others (a compile each).
    for i, rule in enumerate(coverage_rules().values()):
        compiled = compile_rule(rule, COVERAGE_AT, CoverageCatalog())
        _same_text_as_the_whole_tree(compiled, DIALECTS if i % 4 == 0 else ("duckdb", "clickhouse"))


@settings(max_examples=15, deadline=None, database=None)
@given(doc=random_rules)
def test_every_text_equals_the_whole_tree_written_for_random_rules(doc: dict[str, Any]) -> None:
    _same_text_as_the_whole_tree(compile_rule(RULE.validate_python(doc), COVERAGE_AT), DIALECTS)


def test_the_keys_query_is_written_once_per_dialect_and_layout() -> None:
    compiled = compile_rule(load_example("beijing-loyal.json"), COVERAGE_AT)
    compiled.sql("duckdb", pretty=False)
    compiled.count_sql("duckdb")
    compiled.sample_sql("duckdb", 5)
    assert set(compiled._parts) == {("duckdb", False)}
    compiled.sql("duckdb")
    assert set(compiled._parts) == {("duckdb", False), ("duckdb", True)}


def test_cte_detection_equals_ibis_own() -> None:
    for rule in coverage_rules().values():
        op = compile_rule(rule, COVERAGE_AT, CoverageCatalog()).keys.op()
        assert sqlext._ctes(op, Graph.from_bfs(op)) == sql_rewrites.extract_ctes(op)


def test_a_pass_is_tried_on_the_node_types_it_can_match_only() -> None:
    duckdb = sqlext._LEAN["duckdb"]
    types = {t for p in duckdb.rewrite_passes for t in (p.types or ())}
    assert ops.InValues in types and ops.ArrayMap in types
    assert sqlext._match_types(sqlext._SQLIZE) is not None
    assert ops.Filter in (sqlext._SQLIZE_PASS.types or ())
    # A pattern of an unknown kind may match anything: every node is tried.
    assert sqlext._Pass.of(Any_()).types is None
    # ``Table.filter`` builds a ``Filter`` node, which the SQL-level pass must turn into
    # a ``Select``: found, so the pass runs.
    assert _run(T.filter(T["a"] >= 2).select("a")) == [(2,), (3,)]


def test_aggregate_builds_the_node_group_by_aggregate_builds() -> None:
    mine = aggregate(T, {"b": T["b"]}, {"n": T["a"].count(), "top": T["a"].max()})
    theirs = T.group_by(b=T["b"]).aggregate(n=T["a"].count(), top=T["a"].max())
    assert mine.op() == theirs.op()
    with pytest.raises(IntegrityError):
        aggregate(T, {"b": T["b"]}, {"n": U["a"].count()})
