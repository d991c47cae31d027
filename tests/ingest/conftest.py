"""Fixtures for ingestion tests: the app on real stores (SQLite + DuckDB) and keys."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from fastapi.testclient import TestClient

from zhiying.api.app import create_app
from zhiying.keys.service import create_key
from zhiying.runtime import Stores


@dataclass
class Keys:
    write: str
    admin: str


def basic(key: str) -> dict[str, str]:
    """Segment's auth header: the write key as Basic user name, empty password."""
    return {"Authorization": "Basic " + base64.b64encode(f"{key}:".encode()).decode()}


def count_events(stores: Stores, where: str = "TRUE") -> int:
    table = stores.warehouse.query(f"SELECT count(*) AS n FROM events WHERE {where}")
    return int(table.column("n")[0].as_py())


def track(message_id: str, user_id: str = "u1", **extra: Any) -> dict[str, Any]:
    msg: dict[str, Any] = {
        "type": "track",
        "messageId": message_id,
        "userId": user_id,
        "event": "Product Viewed",
        "timestamp": "2026-11-01T08:59:00.000Z",
        "properties": {"product_id": "p1", "price": 19.99},
    }
    msg.update(extra)
    return msg


@pytest.fixture
def keys(stores: Stores) -> Keys:
    now = stores.clock.now()
    return Keys(
        write=create_key(stores.engine, "write", now, "app"),
        admin=create_key(stores.engine, "admin", now, "ops"),
    )


class IngestClient(TestClient):
    """A test client that reads its own writes: after a POST to ``/v1`` it waits
    (bounded) until the server's writer has stored what it answered — in spool mode
    the answer comes when the events are spooled, before they are stored."""

    def post(self, url: Any, *args: Any, **kwargs: Any) -> Any:
        response = super().post(url, *args, **kwargs)
        writer = getattr(self.app.state, "event_writer", None)  # type: ignore[attr-defined]
        if str(url).startswith("/v1/") and writer is not None:
            assert writer.flush(30), "the loader did not store the events within 30 s"
        return response


@pytest.fixture
def client(stores: Stores) -> Iterator[TestClient]:
    """The app with its lifespan running (so the group-commit writer is used)."""
    with IngestClient(create_app(stores)) as c:
        yield c
