"""Tags and layers over HTTP (admin key) and from the terminal."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from tests.tags.factories import event, insert_events
from tests.tags.test_refresh import ago
from zhiying.api.app import create_app
from zhiying.cli.main import app as cli
from zhiying.clock import ManualClock
from zhiying.config import Settings, get_settings
from zhiying.keys.service import create_key
from zhiying.runtime import Stores, open_stores

ORDERS_90D = {
    "kind": "dynamic",
    "where": {"events": ["Order Completed"]},
    "window_days": 90,
    "aggregate": "count",
}


@pytest.fixture
def admin(stores: Stores) -> Iterator[tuple[TestClient, dict[str, str]]]:
    key = create_key(stores.engine, "admin", stores.clock.now(), "ops")
    with TestClient(create_app(stores)) as client:
        yield client, {"Authorization": f"Bearer {key}"}


def test_define_refresh_and_read_a_tag_over_http(
    stores: Stores, admin: tuple[TestClient, dict[str, str]]
) -> None:
    client, auth = admin
    insert_events(stores.warehouse, [event("u1", ago(1)), event("u2", ago(200))])
    assert client.put("/api/tags/orders_90d", json=ORDERS_90D, headers=auth).status_code == 200
    done = client.post("/api/tags/refresh", json={}, headers=auth)
    assert done.status_code == 200 and done.json()["rows"] == 2
    counts = client.get("/api/tags/orders_90d/values", headers=auth).json()
    assert sorted((c["value"], c["users"]) for c in counts) == [(0, 1), (1, 1)]
    hist = client.get("/api/tags/orders_90d/history/u1", headers=auth).json()
    assert [p["number"] for p in hist] == [1.0]


def test_invalid_definition_and_unknown_tag_are_problem_details(
    admin: tuple[TestClient, dict[str, str]],
) -> None:
    client, auth = admin
    bad = client.put("/api/tags/x", json={**ORDERS_90D, "aggregate": "sum"}, headers=auth)
    assert bad.status_code == 422
    assert bad.headers["content-type"] == "application/problem+json"
    assert client.get("/api/tags/nope", headers=auth).status_code == 404
    assert client.get("/api/tags").status_code == 401


def test_layers_over_http(stores: Stores, admin: tuple[TestClient, dict[str, str]]) -> None:
    client, auth = admin
    insert_events(stores.warehouse, [event("u1", ago(400)), event("u1", ago(100))])
    body = {"as_of": "2026-06-01", "layers": ["lifecycle"]}
    assert client.post("/api/layers/compute", json=body, headers=auth).status_code == 200
    assert client.post("/api/layers/compute", json={"as_of": "2026-11-01"}, headers=auth).is_success
    dist = client.get("/api/layers/lifecycle/distribution?as_of=2026-11-01", headers=auth).json()
    assert dist["counts"]["at_risk"] == 1
    matrix = client.get(
        "/api/layers/lifecycle/migration?from=2026-06-01&to=2026-11-01", headers=auth
    ).json()
    assert matrix["from_values"] == ["new", "growing", "mature", "loyal", "at_risk", "churned"]
    assert matrix["matrix"][5][4] == 1  # churned on June 1st, back and at risk in November
    put = "/api/layers/lifecycle/rules"
    assert client.put(put, json={"churn_days": 60}, headers=auth).status_code == 422
    assert client.put(put, json={"churn_days": 120}, headers=auth).json()["churn_days"] == 120


@pytest.fixture
def cli_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clock: ManualClock) -> Iterator[Path]:
    monkeypatch.setenv("ZHIYING_DATA_DIR", str(tmp_path / "data"))
    get_settings.cache_clear()
    stores = open_stores(Settings(data_dir=tmp_path / "data"), clock=clock)
    insert_events(stores.warehouse, [event("u1", ago(1)), event("u1", ago(500))])
    stores.close()
    yield tmp_path
    get_settings.cache_clear()


def test_cli_defines_refreshes_and_lists_tags(cli_env: Path) -> None:
    file = cli_env / "tags.json"
    file.write_text(json.dumps({"tags": [{"name": "orders_90d", **ORDERS_90D}]}))
    runner = CliRunner()
    defined = runner.invoke(cli, ["tags", "define", str(file)])
    assert defined.exit_code == 0, defined.output
    refreshed = runner.invoke(cli, ["tags", "refresh", "--as-of", "2026-11-01"])
    assert refreshed.exit_code == 0, refreshed.output
    assert "refreshed 1 tags" in refreshed.output and "1 values" in refreshed.output
    listed = runner.invoke(cli, ["tags", "list"])
    assert "orders_90d" in listed.output and "2026-11-01" in listed.output
    again = runner.invoke(cli, ["tags", "refresh", "--as-of", "2026-11-02"])
    assert again.exit_code == 0, again.output
    folded = runner.invoke(cli, ["tags", "fold-history"])
    assert folded.exit_code == 0, folded.output
    assert "folded 1 history segments" in folded.output


def test_cli_prints_a_migration_matrix(cli_env: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(
        cli,
        [
            "layers",
            "migration",
            "--layer",
            "lifecycle",
            "--from",
            "2025-12-31",
            "--to",
            "2026-11-01",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "churned" in result.output and "at_risk" in result.output
