"""Shared fixtures: real stores in temporary directories.

``database_url`` runs a test on SQLite and on a real PostgreSQL server;
``warehouse_url`` runs it on DuckDB and on chdb (ClickHouse's engine);
``stores`` combines the default pair (SQLite + DuckDB) unless a test asks
for the parametrised ones.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import settings

from tests import pg
from zhiying.clock import ManualClock
from zhiying.config import Settings, get_settings
from zhiying.runtime import Stores, open_stores

# CI runs the property tests on fixed examples (no flaky red build from a rare draw, no
# deadline on a busy machine); locally they explore new examples on every run.
settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def pg_server() -> Iterator[pg.PgServer]:
    if not pg.available():
        pytest.skip("PostgreSQL server binaries not installed (.ci/run installs them)")
    server = pg.start()
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'ops.sqlite3'}"
    server: pg.PgServer = request.getfixturevalue("pg_server")
    return server.create_database(f"t_{uuid.uuid4().hex[:12]}")


@pytest.fixture(
    params=[
        "duckdb",
        pytest.param("chdb", marks=pytest.mark.chdb),
        pytest.param("clickhouse-connect", marks=pytest.mark.chdb),
    ]
)
def warehouse_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """DuckDB; chdb; and the ClickHouse server adapter's clickhouse-connect client on its
    embedded chDB backend (no ClickHouse server can run here)."""
    if request.param == "duckdb":
        return f"duckdb://{tmp_path / 'wh.duckdb'}"
    if request.param == "chdb":
        return f"chdb://{tmp_path / 'chdb'}"
    return f"clickhouse+chdb://{tmp_path / 'cc-chdb'}"


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(datetime(2026, 11, 1, 9, 0, tzinfo=UTC))


def make_stores(
    tmp_path: Path,
    clock: ManualClock,
    database_url: str | None = None,
    warehouse_url: str | None = None,
) -> Stores:
    settings = Settings(
        data_dir=tmp_path / "data", database_url=database_url, warehouse_url=warehouse_url
    )
    return open_stores(settings, clock=clock)


@pytest.fixture
def stores(tmp_path: Path, clock: ManualClock) -> Iterator[Stores]:
    """SQLite + DuckDB in a temporary directory (the embedded default)."""
    s = make_stores(tmp_path, clock)
    yield s
    s.close()


@pytest.fixture
def ops_stores(tmp_path: Path, clock: ManualClock, database_url: str) -> Iterator[Stores]:
    """Parametrised over SQLite and PostgreSQL (warehouse: DuckDB)."""
    s = make_stores(tmp_path, clock, database_url=database_url)
    yield s
    s.close()


@pytest.fixture
def wh_stores(tmp_path: Path, clock: ManualClock, warehouse_url: str) -> Iterator[Stores]:
    """Parametrised over DuckDB and chdb (operational store: SQLite)."""
    s = make_stores(tmp_path, clock, warehouse_url=warehouse_url)
    yield s
    s.close()


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fresh ``ZHIYING_DATA_DIR`` for commands run through the CLI (embedded stores, no
    API key from the environment); modules that need data in it override this."""
    for name in ("ZHIYING_DATABASE_URL", "ZHIYING_WAREHOUSE_URL", "ZHIYING_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ZHIYING_DATA_DIR", str(tmp_path / "data"))
    get_settings.cache_clear()
    yield tmp_path / "data"
    get_settings.cache_clear()


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.exists():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA
