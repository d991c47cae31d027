"""``zhiying profile show`` and ``zhiying events count``, alone and beside a running server."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.identity.events import ev, table
from zhiying.cli.main import app
from zhiying.config import Settings, get_settings
from zhiying.ingest.pipeline import store_events
from zhiying.keys.service import create_key
from zhiying.runtime import open_stores

runner = CliRunner()


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    data = tmp_path / "data"
    for name in ("ZHIYING_DATABASE_URL", "ZHIYING_WAREHOUSE_URL", "ZHIYING_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ZHIYING_DATA_DIR", str(data))
    get_settings.cache_clear()
    stores = open_stores(Settings(data_dir=data))
    try:
        store_events(
            stores,
            table(
                [
                    ev("m1", anonymous_id="web", minute=0),
                    ev(
                        "m2",
                        "identify",
                        user_id="u1",
                        anonymous_id="web",
                        minute=1,
                        traits={"city": "Chongqing"},
                    ),
                ]
            ),
        )
    finally:
        stores.close()
    yield data
    get_settings.cache_clear()


def test_profile_show_prints_identifiers_traits_and_counts(data_dir: Path) -> None:
    result = runner.invoke(app, ["profile", "show", "user_id:u1"])
    assert result.exit_code == 0, result.output
    assert "anonymous_id" in result.output and "Chongqing" in result.output
    assert "events: 2" in result.output


def test_profile_show_of_an_unknown_person_says_so(data_dir: Path) -> None:
    result = runner.invoke(app, ["profile", "show", "user_id:nobody"])
    assert result.exit_code == 1
    assert "no person with user_id nobody" in result.output


def test_events_count(data_dir: Path) -> None:
    result = runner.invoke(app, ["events", "count", "--event", "Product Viewed"])
    assert result.exit_code == 0 and result.output.startswith("1 events")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def server(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A real `zhiying serve` owning the warehouse file."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "zhiying.cli.main",
            "serve",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        env={**os.environ, "ZHIYING_DATA_DIR": str(data_dir)},
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{url}/health", timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("zhiying serve did not start") from None
                time.sleep(0.2)
        monkeypatch.setenv("ZHIYING_API_URL", url)
        get_settings.cache_clear()
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_while_the_server_holds_the_warehouse_the_cli_asks_it_or_says_what_to_do(
    server: str, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = runner.invoke(app, ["events", "count"])
    assert result.exit_code == 1
    assert "ZHIYING_API_KEY" in result.output and "zhiying keys create --admin" in result.output

    # The operational store (SQLite) is shared; only the warehouse file is held.
    from zhiying.store import make_engine

    engine = make_engine(Settings(data_dir=data_dir).resolved_database_url())
    key = create_key(engine, "admin", datetime.now(UTC))
    engine.dispose()
    monkeypatch.setenv("ZHIYING_API_KEY", key)
    get_settings.cache_clear()
    result = runner.invoke(app, ["profile", "show", "user_id:u1"])
    assert result.exit_code == 0, result.output
    assert "Chongqing" in result.output and "events: 2" in result.output
    result = runner.invoke(app, ["events", "count"])
    assert result.exit_code == 0 and result.output.startswith("2 events")
    result = runner.invoke(app, ["profile", "show", "user_id:nobody"])
    assert result.exit_code == 1 and "no person with user_id nobody" in result.output
