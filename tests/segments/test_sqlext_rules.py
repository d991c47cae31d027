"""Our compile rules on ibis's compilers (``segments.sqlext``) leave ibis's own intact."""

from __future__ import annotations

import ibis
import ibis.expr.operations as ops
import pytest
from ibis.backends.sql.compilers import DuckDBCompiler

from zhiying.segments import sqlext
from zhiying.segments.compiler import DIALECTS


@pytest.mark.parametrize("dialect", DIALECTS)
def test_ibis_still_compiles_order_by_after_our_rules_are_registered(dialect: str) -> None:
    # A rule registered as ``visit_SortKey`` once replaced ibis's ORDER BY everywhere
    # (tags' history queries failed); our tie-break key is ``TieBreakKey``.
    t = ibis.table({"a": "int64", "b": "string"}, name="t")
    sql = str(ibis.to_sql(t.order_by(ibis.desc("a")), dialect=dialect))
    assert "ORDER BY" in sql and "DESC" in sql


def test_registering_a_rule_over_one_of_ibis_rules_is_refused() -> None:
    def rule(self: object, op: object, **kwargs: object) -> None:
        return None

    with pytest.raises(RuntimeError, match="visit_SortKey is ibis's own"):
        sqlext._register(DuckDBCompiler, ops.SortKey, rule)
