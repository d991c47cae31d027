"""The worked example of docs/ingestion.md runs as written."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
from fastapi.testclient import TestClient

from tests.ingest.conftest import Keys, basic
from zhiying.clock import ManualClock
from zhiying.runtime import Stores

DOC = Path(__file__).resolve().parents[2] / "docs" / "ingestion.md"


def _block(marker: str) -> Any:
    text = DOC.read_text(encoding="utf-8")
    match = re.search(rf"<!-- example:{marker} -->\s*```json\n(.*?)```", text, re.S)
    assert match, f"no example:{marker} block in {DOC}"
    return orjson.loads(match.group(1))


def test_worked_example_answers_and_stores_as_documented(
    client: TestClient, keys: Keys, stores: Stores, clock: ManualClock
) -> None:
    clock.set(datetime(2026, 11, 1, 9, 0, tzinfo=UTC))
    request = _block("request")
    headers = {**basic(keys.write), "Content-Type": "application/json"}
    response = client.post("/v1/batch", content=orjson.dumps(request), headers=headers)
    assert response.status_code == 200
    assert response.json() == _block("response")

    rows = {r["message_id"]: r for r in stores.warehouse.query("SELECT * FROM events").to_pylist()}
    order = rows["m-1"]
    assert order["revenue"] == Decimal("398.50") and order["currency"] == "CNY"
    assert [p["price"] for p in order["products"]] == [Decimal("199.25")]
    assert {"kind": "phone", "value": "+8613800138000"} in order["identifiers"]
    assert order["channel"] == "server"
    assert order["timestamp"] == datetime(2026, 11, 1, 8, 58)
    assert rows["m-3"]["channel"] == "web"

    again = client.post("/v1/batch", content=orjson.dumps(request), headers=headers).json()
    assert (again["accepted"], again["duplicates"]) == (0, 2)
