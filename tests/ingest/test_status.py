"""``GET /api/ingest/status``: what an operator watches (mode, backlog, loads, dead letters)."""

from __future__ import annotations

from fastapi.testclient import TestClient

from tests.ingest.conftest import Keys, basic, track
from zhiying.api.app import create_app
from zhiying.config import Settings
from zhiying.runtime import Stores


def test_status_reports_the_spool_mode_and_what_the_loader_stored(
    client: TestClient, keys: Keys
) -> None:
    admin = {"Authorization": f"Bearer {keys.admin}"}
    before = client.get("/api/ingest/status", headers=admin).json()
    assert before == {
        "mode": "spool",
        "backlog": 0,
        "stored_by_loader": 0,
        "failed_loads": 0,
        "dead_letters": 0,
    }
    sent = client.post(
        "/v1/batch",
        json={"batch": [track("s1"), track("s2"), track("s1")]},
        headers=basic(keys.write),
    )
    assert sent.status_code == 200
    after = client.get("/api/ingest/status", headers=admin).json()
    assert after["stored_by_loader"] == 2 and after["backlog"] == 0


def test_status_needs_an_admin_key_and_says_direct_without_the_spool(
    stores: Stores, keys: Keys
) -> None:
    settings = Settings(**{**stores.settings.model_dump(), "ingest_spool": False})
    direct = Stores(
        settings=settings, engine=stores.engine, warehouse=stores.warehouse, clock=stores.clock
    )
    with TestClient(create_app(direct)) as c:
        assert c.get("/api/ingest/status").status_code == 401
        wrong = c.get("/api/ingest/status", headers={"Authorization": f"Bearer {keys.write}"})
        assert wrong.status_code == 403
        ok = c.get("/api/ingest/status", headers={"Authorization": f"Bearer {keys.admin}"})
        assert ok.status_code == 200 and ok.json()["mode"] == "direct"
