"""Spool mode on a real ``zhiying serve`` (uvicorn on loopback): a server killed right
after answering stores every answered event when it starts again, once."""

from __future__ import annotations

import signal
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from tests.ingest.server import free_port, serve
from zhiying.config import Settings
from zhiying.keys.service import create_key
from zhiying.runtime import open_stores


def _batch(n: int) -> dict[str, Any]:
    return {
        "batch": [
            {
                "type": "identify",
                "messageId": f"k{n}-{i}",
                "userId": f"p{n}-{i}",
                "traits": {"phone": f"+86139{n:02d}{i:06d}", "city": "Chengdu"},
            }
            for i in range(200)
        ]
    }


def test_a_killed_server_stores_every_answered_event_when_it_starts_again(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "data"
    stores = open_stores(Settings(data_dir=data_dir))
    now = datetime.now(UTC)
    write = (create_key(stores.engine, "write", now, "app"), "")
    admin = {"Authorization": f"Bearer {create_key(stores.engine, 'admin', now, 'ops')}"}
    stores.close()
    port = free_port()
    url = f"http://127.0.0.1:{port}"

    first = serve(data_dir, port, ZHIYING_INGEST_SPOOL="1")
    try:
        answered = 0
        for n in range(8):
            response = httpx.post(f"{url}/v1/batch", json=_batch(n), auth=write, timeout=30)
            assert response.status_code == 200, response.text
            answered += response.json()["accepted"]
        # No flush: the last groups are most likely only in the spool now.
        first.send_signal(signal.SIGKILL)
    finally:
        first.kill()
        first.wait(30)
    assert answered == 1600

    second = serve(data_dir, port, ZHIYING_INGEST_SPOOL="1")  # stores the spool before serving
    try:
        flushed = httpx.post(f"{url}/api/ingest/flush", headers=admin, timeout=60)
        assert flushed.status_code == 200, flushed.text
        count = httpx.get(f"{url}/api/events/count", headers=admin, timeout=30)
        assert count.json()["count"] == answered
        again = httpx.post(f"{url}/v1/batch", json=_batch(7), auth=write, timeout=30).json()
        assert (again["accepted"], again["duplicates"]) == (0, 200)
        profile = httpx.get(f"{url}/api/profiles/user_id:p7-199", headers=admin, timeout=30)
        assert profile.status_code == 200, profile.text
        assert {t["key"]: t["value"] for t in profile.json()["traits"]}["city"] == "Chengdu"
    finally:
        second.terminate()
        second.wait(30)
