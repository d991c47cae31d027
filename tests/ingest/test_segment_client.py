"""A real Segment SDK (``segment-analytics-python``) against a real ``zhiying serve``."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from segment.analytics.client import Client

from tests.ingest.server import free_port, serve
from zhiying.config import Settings
from zhiying.keys.service import create_key
from zhiying.runtime import open_stores


@pytest.fixture
def server(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """``zhiying serve`` in a subprocess on a free loopback port, with its own data dir."""
    data_dir = tmp_path / "data"
    stores = open_stores(Settings(data_dir=data_dir))
    now = datetime.now(UTC)
    write_key = create_key(stores.engine, "write", now, "sdk")
    admin_key = create_key(stores.engine, "admin", now, "test")
    stores.close()

    port = free_port()
    process = serve(data_dir, port)
    url = f"http://127.0.0.1:{port}"
    try:
        yield {"url": url, "write_key": write_key, "admin_key": admin_key}
    finally:
        process.terminate()
        process.wait(30)


def test_segment_python_sdk_events_are_stored_and_readable(server: dict[str, Any]) -> None:
    errors: list[Any] = []
    # One client posts each call synchronously; the other queues, gzips and
    # sends one batch on flush(), as production setups do.
    for gzip in (False, True):
        client = Client(
            server["write_key"],
            host=server["url"],
            sync_mode=not gzip,
            gzip=gzip,
            on_error=lambda exc, batch: errors.append(exc),
        )
        tag = "gz" if gzip else "plain"
        client.identify(f"user-{tag}", {"email": f"Li.Lei+{tag}@Example.com", "city": "Chongqing"})
        client.track(
            f"user-{tag}",
            "Order Completed",
            {"order_id": f"o-{tag}", "revenue": 199.9, "currency": "CNY"},
        )
        client.page(f"user-{tag}", "Shop", "Home", {"url": "https://shop.example.cn/"})
        client.group(f"user-{tag}", "company-1", {"name": "Initech"})
        client.alias(f"anon-{tag}", f"user-{tag}")
        if gzip:
            client.flush()
            client.shutdown()
    assert errors == []

    admin = {"Authorization": f"Bearer {server['admin_key']}"}
    # Answers mean "durable in the spool"; wait (bounded) until the loader stored them.
    flushed = httpx.post(f"{server['url']}/api/ingest/flush", headers=admin, timeout=60)
    assert flushed.status_code == 200 and flushed.json()["stored"] is True, flushed.text
    profile = httpx.get(f"{server['url']}/api/profiles/user_id:user-gz", headers=admin)
    assert profile.status_code == 200, profile.text
    body = profile.json()
    assert body["counts"]["total"] == 5
    assert body["counts"]["by_event"] == {"Order Completed": 1}
    assert {t["key"]: t["value"] for t in body["traits"]}["city"] == "Chongqing"
    assert {"kind": "email", "value": "li.lei+gz@example.com"} in [
        {"kind": i["kind"], "value": i["value"]} for i in body["identifiers"]
    ]
    count = httpx.get(f"{server['url']}/api/events/count", headers=admin)
    assert count.json()["count"] == 10
