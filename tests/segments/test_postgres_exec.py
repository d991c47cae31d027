"""The compiled PostgreSQL SQL, executed on the real PostgreSQL server of the test suite.

The warehouse tables are created in a database of their own (types derived
from the Arrow schemas, see ``tests/segments/engines.py``); the members of the
seed rule, of one rule per condition kind and operator, and of random rules
must equal the reference evaluator's.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from tests import pg
from tests.segments import coverage
from tests.segments.engines import pg_ddl, pg_load, untied
from tests.segments.helpers import RULE, load_example
from tests.segments.test_compiler_matches_reference import AT as RANDOM_AT
from tests.segments.test_compiler_matches_reference import datasets, rules
from tests.segments.test_seed_segment import seed_data
from zhiying.segments.compiler import compile_rule
from zhiying.segments.models import Rule
from zhiying.segments.reference import Dataset, evaluate

pytestmark = pytest.mark.postgres


@pytest.fixture(scope="module")
def conn(pg_server: pg.PgServer) -> Iterator[psycopg.Connection[Any]]:
    name = f"wh_{uuid.uuid4().hex[:12]}"
    pg_server.create_database(name)
    with psycopg.connect(
        f"host=127.0.0.1 port={pg_server.port} user=postgres dbname={name}", autocommit=True
    ) as c:
        for statement in pg_ddl():
            c.execute(statement)
        yield c


def _members(conn: psycopg.Connection[Any], rule: Rule, at: Any, catalog: Any = None) -> set[str]:
    sql = compile_rule(rule, at, catalog).sql("postgres")
    return {str(row[0]) for row in conn.execute(sql).fetchall()}


def test_seed_segment_selects_the_loyal_beijing_customers_on_postgres(
    conn: psycopg.Connection[Any],
) -> None:
    data = seed_data()
    pg_load(conn, data)
    rule = load_example("beijing-loyal.json")
    assert _members(conn, rule, coverage.AT) == {"a", "c", "h"} == evaluate(rule, data, coverage.AT)


def test_every_condition_kind_selects_the_reference_members_on_postgres(
    conn: psycopg.Connection[Any],
) -> None:
    data = coverage.coverage_data()
    pg_load(conn, data)
    catalog = coverage.Catalog()
    wrong = {}
    for name, rule in coverage.coverage_rules().items():
        expected = evaluate(rule, data, coverage.AT, catalog)
        got = _members(conn, rule, coverage.AT, catalog)
        if got != expected:
            wrong[name] = {"postgres": sorted(got), "reference": sorted(expected)}
    assert wrong == {}


# Each example loads the tables (a few ms); raise for a deeper search:
# SEG_PG_EXAMPLES=300 .venv/bin/pytest tests/segments/test_postgres_exec.py
EXAMPLES = int(os.environ.get("SEG_PG_EXAMPLES", "25"))


def test_random_rules_select_the_reference_members_on_postgres(
    conn: psycopg.Connection[Any],
) -> None:
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        database=None,
        phases=[Phase.explicit, Phase.generate],
    )
    @given(data=datasets().map(untied), docs=st.lists(rules, min_size=1, max_size=4))
    def run(data: Dataset, docs: list[dict[str, Any]]) -> None:
        pg_load(conn, data)
        for doc in docs:
            rule: Rule = RULE.validate_python(doc)
            assert _members(conn, rule, RANDOM_AT) == evaluate(rule, data, RANDOM_AT), json.dumps(
                doc, indent=1
            )

    run()
