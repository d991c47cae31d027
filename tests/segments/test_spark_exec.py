"""The compiled PySpark SQL, executed by a local Spark (``local[1]``, one session per module).

The warehouse tables are temporary views built from Arrow tables with the
warehouse schema (``tests/segments/engines.py``). The seed rule runs as its
exact compiled SQL; the rules of ``coverage.py`` (every condition kind and
operator) run as one ``UNION ALL`` of their compiled SQL, each tagged with its
name, because Spark plans and schedules every query afresh (about a second
each on a busy machine, against a few milliseconds on DuckDB).

Spark needs Java 17+; without it these tests fail (they are not skipped).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator, Mapping
from datetime import datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from pyspark.sql import SparkSession

from tests.segments import coverage
from tests.segments.engines import spark_load, untied
from tests.segments.helpers import RULE, load_example
from tests.segments.test_compiler_matches_reference import AT as RANDOM_AT
from tests.segments.test_compiler_matches_reference import datasets, rules
from tests.segments.test_seed_segment import seed_data
from zhiying.segments.compiler import Catalog, compile_rule
from zhiying.segments.models import Rule
from zhiying.segments.reference import Dataset, evaluate

# pyspark checks the pandas version when it builds a DataFrame; we give it Arrow.
pytestmark = pytest.mark.filterwarnings("ignore:PySpark does not yet fully support pandas")


@pytest.fixture(scope="module")
def spark() -> Iterator[SparkSession]:
    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        pytest.fail("Spark needs Java 17+ (apt-get install openjdk-17-jre-headless)")
    session = (
        SparkSession.builder.master("local[1]")
        .appName("zhiying-segment-tests")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.driver.memory", "512m")
        .config("spark.sql.shuffle.partitions", "1")
        .config("spark.sql.adaptive.enabled", "false")
        # Tiny data: interpreting beats compiling Java code for every operator.
        .config("spark.sql.codegen.wholeStage", "false")
        .config("spark.sql.codegen.factoryMode", "NO_CODEGEN")
        # The warehouse's timestamps are naive UTC.
        .config("spark.sql.session.timeZone", "UTC")
        .config(
            "spark.driver.extraJavaOptions",
            "-Duser.timezone=UTC -XX:+UseSerialGC -XX:TieredStopAtLevel=1",
        )
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


def _members_of_each(
    spark: SparkSession,
    named: Mapping[str, Rule],
    at: datetime,
    catalog: Catalog | None = None,
) -> dict[str, set[str]]:
    """The members of every rule, from one query: the rules' compiled SQL, tagged, UNION ALL."""
    names = list(named)
    sqls = [compile_rule(named[n], at, catalog).sql("pyspark") for n in names]
    parts = [f"SELECT {i} AS rule_no, one_id FROM (\n{sql}\n)" for i, sql in enumerate(sqls)]
    out: dict[str, set[str]] = {n: set() for n in names}
    for row in spark.sql("\nUNION ALL\n".join(parts)).collect():
        out[names[row["rule_no"]]].add(str(row["one_id"]))
    return out


def test_seed_segment_selects_the_loyal_beijing_customers_on_spark(spark: SparkSession) -> None:
    data = seed_data()
    spark_load(spark, data)
    rule = load_example("beijing-loyal.json")
    sql = compile_rule(rule, coverage.AT).sql("pyspark")
    got = {str(row["one_id"]) for row in spark.sql(sql).collect()}
    assert got == {"a", "c", "h"} == evaluate(rule, data, coverage.AT)


def test_every_condition_kind_selects_the_reference_members_on_spark(spark: SparkSession) -> None:
    data = coverage.coverage_data()
    spark_load(spark, data)
    catalog = coverage.Catalog()
    named = coverage.coverage_rules()
    got = _members_of_each(spark, named, coverage.AT, catalog)
    wrong = {}
    for name, rule in named.items():
        expected = evaluate(rule, data, coverage.AT, catalog)
        if got[name] != expected:
            wrong[name] = {"spark": sorted(got[name]), "reference": sorted(expected)}
    assert wrong == {}


# Each example loads the views and runs one query (a few seconds); raise for a deeper search:
# SEG_SPARK_EXAMPLES=100 .venv/bin/pytest tests/segments/test_spark_exec.py
EXAMPLES = int(os.environ.get("SEG_SPARK_EXAMPLES", "4"))


def test_random_rules_select_the_reference_members_on_spark(spark: SparkSession) -> None:
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        database=None,
        phases=[Phase.explicit, Phase.generate],
    )
    @given(data=datasets().map(untied), docs=st.lists(rules, min_size=1, max_size=4))
    def run(data: Dataset, docs: list[dict[str, Any]]) -> None:
        spark_load(spark, data)
        named = {json.dumps(doc): RULE.validate_python(doc) for doc in docs}
        got = _members_of_each(spark, named, RANDOM_AT)
        for doc, rule in named.items():
            assert got[doc] == evaluate(rule, data, RANDOM_AT), doc

    run()
