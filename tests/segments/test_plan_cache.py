"""Plans reused across instants give exactly the SQL a fresh compile gives, for every rule."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest

from tests.segments.coverage import coverage_rules
from tests.segments.helpers import RULE
from zhiying.segments.compiler import compile_rule
from zhiying.segments.plans import Plans, reads_segments, template

AT = datetime(2026, 11, 1, 9, 0, tzinfo=UTC)
LATER = [AT + timedelta(days=3, hours=5, microseconds=7), AT + timedelta(days=40, minutes=1)]
DIALECTS = ("duckdb", "clickhouse", "postgres", "pyspark")
# ibis names some PostgreSQL sub-queries with random suffixes: equal up to those.
_RANDOM = re.compile(r"(ibis_\w+?_)[a-z0-9]{26}\b")


def _same(sql: str) -> str:
    return _RANDOM.sub(r"\1x", sql)


@pytest.mark.parametrize("dialect", DIALECTS)
def test_every_coverage_rule_gets_the_fresh_compile_sql_at_any_instant(dialect: str) -> None:
    plans = Plans()
    rules = [r for r in coverage_rules().values() if not reads_segments(r)]
    assert len(rules) > 60
    for rule in rules:
        for when in (AT, *LATER):
            planned = plans.compiled(rule, when)
            fresh = compile_rule(rule, when)
            got = planned.sql(dialect, pretty=False)  # type: ignore[arg-type]
            assert _same(got) == _same(fresh.sql(dialect, pretty=False))  # type: ignore[arg-type]
            count = planned.count_sql(dialect)  # type: ignore[arg-type]
            assert _same(count) == _same(fresh.count_sql(dialect))  # type: ignore[arg-type]


def test_a_shiftable_rule_compiles_twice_then_never_again() -> None:
    plans = Plans()
    rule = RULE.validate_python(
        {
            "type": "and",
            "rules": [
                {"type": "trait", "trait": "city", "op": "eq", "value": "Beijing"},
                {"type": "event", "event": "Order Completed", "window": {"last": 7}},
            ],
        }
    )
    for k in range(6):
        plans.compiled(rule, AT + timedelta(hours=k)).count_sql("duckdb")
    assert plans.compiles == 2
    # The first instant is served by the first compilation, any text of it.
    plans.compiled(rule, AT).sql("duckdb")
    assert plans.compiles == 2
    # A new text at a new instant: one compile makes its template, then it is shared.
    plans.compiled(rule, AT + timedelta(hours=9)).sql("duckdb")
    assert plans.compiles == 3
    plans.compiled(rule, AT + timedelta(hours=10)).sql("duckdb")
    assert plans.compiles == 3


def test_a_rule_with_calendar_days_is_compiled_at_every_instant() -> None:
    plans = Plans()
    rule = RULE.validate_python(
        {"type": "trait", "trait": "birthday", "op": "anniversary_within_next", "days": 7}
    )
    texts = {plans.compiled(rule, AT + timedelta(days=k)).sql("duckdb") for k in range(3)}
    assert plans.compiles == 3 and len(texts) == 3
    for k in range(3):
        when = AT + timedelta(days=k)
        assert plans.compiled(rule, when).sql("duckdb") == compile_rule(rule, when).sql("duckdb")


def test_an_absolute_date_equal_to_a_relative_bound_is_left_alone() -> None:
    # The window's absolute start equals "7 days before AT" as text in the first compile;
    # only the relative bound may move.
    start = AT - timedelta(days=7)
    rule = RULE.validate_python(
        {
            "type": "and",
            "rules": [
                {"type": "event", "event": "Order Completed", "window": {"last": 7}},
                {"type": "event", "event": "Page Viewed", "window": {"from": start.isoformat()}},
            ],
        }
    )
    plans = Plans()
    for when in (AT, *LATER):
        assert plans.compiled(rule, when).sql("duckdb") == compile_rule(rule, when).sql("duckdb")


def test_texts_that_differ_by_more_than_instants_make_no_template() -> None:
    first = "SELECT 1 FROM t WHERE ts >= '2026-11-01 09:00:00.000000' AND d = '2026-11-01'"
    second = "SELECT 1 FROM t WHERE ts >= '2026-11-02 09:00:00.000000' AND d = '2026-11-02'"
    assert template(first, AT, second, AT + timedelta(days=1), "duckdb") is None
    moved = "SELECT 1 FROM t WHERE ts >= '2026-11-02 09:00:00.000000' AND d = '2026-11-01'"
    found = template(first, AT, moved, AT + timedelta(days=1), "duckdb")
    assert found is not None
    assert found.at(AT + timedelta(days=2)) == moved.replace("11-02 09", "11-03 09")
