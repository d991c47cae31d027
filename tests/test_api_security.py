"""Every endpoint but the health check needs a key; a write key can only ingest."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient

from zhiying.api.app import create_app
from zhiying.keys.service import create_key
from zhiying.runtime import Stores


def _routes(client: TestClient) -> list[tuple[str, str]]:
    paths = client.app.openapi()["paths"]  # type: ignore[attr-defined]
    found = []
    for path, methods in paths.items():
        concrete = re.sub(r"\{[^}]+\}", "x", path)
        found.extend((method.upper(), concrete) for method in methods)
    return sorted(found)


def test_every_route_but_health_refuses_a_caller_without_a_key(stores: Stores) -> None:
    with TestClient(create_app(stores)) as client:
        routes = _routes(client)
        assert len(routes) > 30
        for method, path in routes:
            response = client.request(method, path, json={})
            if path == "/health":
                assert response.status_code == 200
            else:
                assert response.status_code == 401, (method, path, response.status_code)


def test_a_write_key_opens_no_management_route(stores: Stores) -> None:
    key = create_key(stores.engine, "write", stores.clock.now())
    with TestClient(create_app(stores)) as client:
        for method, path in _routes(client):
            if not path.startswith("/api/"):
                continue
            response = client.request(
                method, path, json={}, headers={"Authorization": f"Bearer {key}"}
            )
            assert response.status_code == 403, (method, path, response.status_code)
            assert key not in response.text


@pytest.mark.parametrize("scheme", ["Basic", "Bearer"])
def test_an_admin_key_cannot_ingest(stores: Stores, scheme: str) -> None:
    import base64

    key = create_key(stores.engine, "admin", stores.clock.now())
    token = base64.b64encode(f"{key}:".encode()).decode() if scheme == "Basic" else key
    with TestClient(create_app(stores)) as client:
        response = client.post(
            "/v1/track",
            json={"userId": "u1", "event": "Order Completed"},
            headers={"Authorization": f"{scheme} {token}"},
        )
    assert response.status_code in (401, 403)
    assert key not in response.text
