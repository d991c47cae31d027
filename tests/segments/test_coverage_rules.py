"""One rule per condition kind and operator (``tests/segments/coverage.py``) on DuckDB and
chdb: the members equal the reference evaluator's. The same rules run on PostgreSQL
(``test_postgres_exec``) and Spark (``test_spark_exec``)."""

from __future__ import annotations

from tests.segments import coverage
from tests.segments.helpers import load, member_ids
from zhiying.runtime import Stores
from zhiying.segments.compiler import compile_rule
from zhiying.segments.reference import evaluate


def test_every_condition_kind_selects_the_reference_members(wh_stores: Stores) -> None:
    wh = wh_stores.warehouse
    data = coverage.coverage_data()
    load(wh, data)
    catalog = coverage.Catalog()
    wrong = {}
    for name, rule in coverage.coverage_rules().items():
        expected = evaluate(rule, data, coverage.AT, catalog)
        got = member_ids(wh, compile_rule(rule, coverage.AT, catalog).sql(wh.dialect))
        if got != expected:
            wrong[name] = {wh.dialect: sorted(got), "reference": sorted(expected)}
    assert wrong == {}


def test_every_coverage_rule_selects_somebody_and_leaves_somebody_out() -> None:
    data = coverage.coverage_data()
    people = {"a", "b", "c", "d", "e", "f", "g", "h", "i"}
    catalog = coverage.Catalog()
    trivial = [
        name
        for name, rule in coverage.coverage_rules().items()
        if evaluate(rule, data, coverage.AT, catalog) in (set(), people)
    ]
    assert trivial == []
