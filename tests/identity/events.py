"""Building EVENTS rows for identity and profile tests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pyarrow as pa

from zhiying.warehouse.schema import EVENTS

T0 = datetime(2026, 10, 1, 8, 0)
NOW = datetime(2026, 11, 1, 9, 0, tzinfo=UTC)


def ev(
    message_id: str,
    type_: str = "track",
    *,
    user_id: str | None = None,
    anonymous_id: str | None = None,
    ids: dict[str, str] | None = None,
    previous_id: str | None = None,
    minute: int = 0,
    event: str | None = None,
    traits: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One EVENTS row; ``minute`` counts from ``T0``."""
    at = T0 + timedelta(minutes=minute)
    return {
        "message_id": message_id,
        "type": type_,
        "event": event if event is not None else ("Product Viewed" if type_ == "track" else None),
        "user_id": user_id,
        "anonymous_id": anonymous_id,
        "timestamp": at,
        "received_at": at,
        "previous_id": previous_id,
        "identifiers": [{"kind": k, "value": v} for k, v in (ids or {}).items()],
        "traits": None if traits is None else orjson.dumps(traits).decode(),
    }


def table(rows: list[dict[str, Any]]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=EVENTS)
