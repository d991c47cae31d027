"""The SQL of the seed segment per dialect is pinned (``ZHIYING_UPDATE_SNAPSHOTS=1`` rewrites).

A change to the compiler or to ibis that alters the SQL shows up here as a
diff to review, not silently in production.
"""

from __future__ import annotations

import os
import re
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.segments.helpers import load_example
from zhiying.segments.compiler import DIALECTS, SqlDialect, compile_rule

SNAPSHOTS = Path(__file__).parent / "snapshots"
AT = datetime(2026, 11, 1, 9, 0, tzinfo=UTC)


@pytest.mark.parametrize("dialect", DIALECTS)
def test_seed_segment_sql_matches_snapshot(dialect: SqlDialect) -> None:
    sql = compile_rule(load_example("beijing-loyal.json"), AT).sql(dialect) + "\n"
    # ibis names some helper columns with a random suffix (PostgreSQL's array any()).
    sql = re.sub(r"(ibis_pg_arr_bool_or_)[a-z0-9]+", r"\1X", sql)
    path = SNAPSHOTS / f"beijing-loyal.{dialect}.sql"
    if os.environ.get("ZHIYING_UPDATE_SNAPSHOTS") == "1":
        path.write_text(sql)
    assert sql == path.read_text()


def test_json_properties_compile_with_our_rule_on_every_dialect() -> None:
    rule = load_example("json-property.json")
    compiled = compile_rule(rule, AT)
    fragments = {
        "duckdb": "JSON_TYPE",
        "clickhouse": "JSONExtractString",
        "postgres": "JSONB_TYPEOF",
        "pyspark": "SCHEMA_OF_VARIANT",
    }
    for dialect, fragment in fragments.items():
        assert fragment in compiled.sql(dialect), dialect
