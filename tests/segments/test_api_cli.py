"""Segments over HTTP and on the command line."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from tests.segments.helpers import EXAMPLES, load
from tests.segments.test_seed_segment import AT, seed_data
from zhiying.api.app import create_app
from zhiying.cli.main import app as cli
from zhiying.clock import ManualClock
from zhiying.config import Settings, get_settings
from zhiying.keys.service import create_key
from zhiying.runtime import Stores, open_stores

SEED = json.loads((EXAMPLES / "beijing-loyal.json").read_text())


@pytest.fixture
def client(stores: Stores, clock: ManualClock) -> Iterator[TestClient]:
    clock.set(AT)
    load(stores.warehouse, seed_data())
    key = create_key(stores.engine, "admin", clock.now())
    with TestClient(create_app(stores), headers={"Authorization": f"Bearer {key}"}) as c:
        yield c


def test_segment_crud_over_http(client: TestClient) -> None:
    created = client.post("/api/segments", json=SEED)
    assert created.status_code == 201, created.text
    seg = created.json()
    assert seg["version"] == 1 and seg["rule"]["rules"][0]["value"] == "Beijing"
    sid = seg["segment_id"]
    assert [s["segment_id"] for s in client.get("/api/segments").json()] == [sid]
    patched = client.patch(f"/api/segments/{sid}", json={"refresh_every_minutes": 30})
    assert patched.json()["refresh_every_minutes"] == 30 and patched.json()["version"] == 1
    snap = client.post(f"/api/segments/{sid}/materialise").json()
    assert (snap["member_count"], snap["entered"]) == (3, 3)
    assert client.get(f"/api/segments/{sid}").json()["last_member_count"] == 3
    csv = client.get(f"/api/segments/{sid}/members", params={"format": "csv"})
    assert csv.headers["content-type"].startswith("text/csv")
    assert csv.text.splitlines()[1].startswith('"a"')
    assert client.delete(f"/api/segments/{sid}").status_code == 204
    assert client.get(f"/api/segments/{sid}").status_code == 404


def test_preview_answers_count_sample_and_sql(client: TestClient) -> None:
    body = client.post("/api/segments/preview", json={"rule": SEED["rule"], "sample": 5}).json()
    assert body["count"] == 3
    assert [p["one_id"] for p in body["sample"]] == ["a", "c", "h"]
    assert body["sample"][0]["traits"] == {"city": "Beijing"}
    assert "Shiseido" in body["sql"] and body["dialect"] == "duckdb"


def test_bad_rules_get_422_naming_the_path_inside_the_rule(client: TestClient) -> None:
    unknown = json.loads(json.dumps(SEED["rule"]))
    unknown["rules"][1]["event"] = "App Opened"
    r = client.post("/api/segments/preview", json={"rule": unknown})
    assert r.status_code == 422
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["errors"][0]["field"] == "rules.1.event"
    assert "App Opened" in r.json()["errors"][0]["reason"]

    invalid = json.loads(json.dumps(SEED["rule"]))
    invalid["rules"][1]["window"] = {"last": 0}
    r = client.post("/api/segments/preview", json={"rule": invalid})
    assert r.status_code == 422
    assert r.json()["errors"][0]["field"] == "rule.rules.1.window.last"

    uncompilable = {
        "type": "event",
        "event": "Order Completed",
        "where": [{"property": "properties.products[].colour", "op": "eq", "value": "red"}],
    }
    r = client.post("/api/segments", json={"name": "x", "rule": uncompilable})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "where.0.property"


def test_unknown_tag_or_layer_gets_422_instead_of_matching_nobody(
    client: TestClient, stores: Stores
) -> None:
    from zhiying.profiles.tags import service as tags
    from zhiying.profiles.tags.models import DynamicTag, EventSelector

    rule = {
        "type": "and",
        "rules": [
            {"type": "layer", "layer": "lifecycle", "op": "eq", "value": "loyal"},
            {"type": "tag", "tag": "orders_90d", "op": "gte", "value": 2},
        ],
    }
    r = client.post("/api/segments/preview", json={"rule": rule})
    assert r.status_code == 422
    assert r.json()["errors"][0]["field"] == "rules.1.tag"
    assert "orders_90d" in r.json()["errors"][0]["reason"]

    tags.define_tag(
        stores,
        DynamicTag(
            name="orders_90d",
            where=EventSelector(events=["Order Completed"]),
            window_days=90,
            aggregate="count",
        ),
    )
    assert client.post("/api/segments/preview", json={"rule": rule}).status_code == 200

    rule["rules"][0]["layer"] = "lifecycel"
    r = client.post("/api/segments/preview", json={"rule": rule})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "rules.0.layer"


def test_rule_json_schema_is_in_the_openapi_document(client: TestClient) -> None:
    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    # FastAPI names request and response variants ``X-Input`` / ``X-Output``.
    names = {n.removesuffix("-Input").removesuffix("-Output") for n in schemas}
    assert {"AndGroup", "EventCondition", "PropertyFilter", "Window", "TraitCondition"} <= names
    one_of = schemas["SegmentCreate"]["properties"]["rule"]
    assert one_of["discriminator"]["propertyName"] == "type"


def test_sql_endpoint_compiles_for_every_dialect(client: TestClient) -> None:
    for dialect, marker in [
        ("duckdb", "ARRAY_CONTAINS"),
        ("clickhouse", "has("),
        ("postgres", "@>"),
        ("pyspark", "ARRAY_CONTAINS"),
    ]:
        r = client.post("/api/segments/sql", json={"rule": SEED["rule"], "dialect": dialect})
        assert r.status_code == 200 and marker in r.json()["sql"], dialect


runner = CliRunner()


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("ZHIYING_DATA_DIR", str(tmp_path / "data"))
    get_settings.cache_clear()
    stores = open_stores(Settings(data_dir=tmp_path / "data"))
    load(stores.warehouse, seed_data())
    stores.close()
    yield tmp_path / "data"
    get_settings.cache_clear()


def test_cli_prints_sql_per_dialect_without_a_warehouse(tmp_path: Path) -> None:
    for dialect in ("duckdb", "clickhouse", "postgres", "pyspark"):
        result = runner.invoke(
            cli,
            [
                "segment",
                "sql",
                str(EXAMPLES / "beijing-loyal.json"),
                "--dialect",
                dialect,
                "--at",
                "2026-11-01T09:00:00Z",
            ],
        )
        assert result.exit_code == 0, result.output
        assert "'2026-08-03 09:00:00.000000'" in result.output  # 90 days before --at


def test_cli_counts_as_of_at_and_reports_rule_paths(data_dir: Path, tmp_path: Path) -> None:
    seed = str(EXAMPLES / "beijing-loyal.json")
    result = runner.invoke(cli, ["segment", "count", seed, "--at", "2026-11-01T09:00:00Z"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == "3"
    result = runner.invoke(cli, ["segment", "count", seed, "--at", "2026-11-06T09:00:00"])
    assert result.output.strip() == "4"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"type": "trait", "trait": "town", "op": "is_set"}))
    result = runner.invoke(cli, ["segment", "count", str(bad)])
    assert result.exit_code == 1 and "(trait)" in result.output and "town" in result.output


def test_cli_creates_materialises_and_exports(data_dir: Path, tmp_path: Path) -> None:
    seed = str(EXAMPLES / "beijing-loyal.json")
    created = runner.invoke(cli, ["segment", "create", seed])
    assert created.exit_code == 0, created.output
    sid = created.output.strip()
    done = runner.invoke(cli, ["segment", "materialise", sid, "--at", "2026-11-01T09:00:00Z"])
    assert "members=3 entered=3 exited=0" in done.output, done.output
    out = tmp_path / "members.parquet"
    exported = runner.invoke(
        cli, ["segment", "export", sid, "--format", "parquet", "--out", str(out)]
    )
    assert exported.exit_code == 0, exported.output
    import pyarrow.parquet as pq

    assert pq.read_table(out).column("one_id").to_pylist() == ["a", "c", "h"]
