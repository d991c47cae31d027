"""Rows written straight into the warehouse for tag and layer tests."""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from datetime import datetime
from decimal import Decimal
from typing import Any

import pyarrow as pa

from tests.warehouse_keys import keyed
from zhiying.warehouse import Warehouse
from zhiying.warehouse.schema import EVENTS, TRAIT_UPDATES

_ids = itertools.count()


def event(
    one_id: str,
    at: datetime,
    event: str | None = "Order Completed",
    *,
    type: str = "track",
    revenue: str | None = None,
    coupon: str | None = None,
    order_id: str | None = None,
    channel: str | None = None,
    products: Iterable[tuple[str, int | None]] = (),
) -> dict[str, Any]:
    """One event row; ``at`` is naive UTC; ``products`` are ``(category, quantity)`` pairs."""
    n = next(_ids)
    return {
        "message_id": f"m{n}",
        "type": type,
        "event": event,
        "one_id": one_id,
        "timestamp": at,
        "received_at": at,
        "revenue": Decimal(revenue) if revenue is not None else None,
        "coupon": coupon,
        "order_id": order_id,
        "channel": channel,
        "products": [{"category": c, "quantity": q} for c, q in products],
        "identifiers": [],
    }


def insert_events(warehouse: Warehouse, rows: list[dict[str, Any]]) -> None:
    warehouse.insert("events", keyed(warehouse, pa.Table.from_pylist(rows, schema=EVENTS)))


def trait(one_id: str, key: str, value: str | float | None, at: datetime) -> dict[str, Any]:
    n = next(_ids)
    number = float(value) if isinstance(value, (int, float)) else None
    text = None if value is None else str(value)
    return {
        "one_id": one_id,
        "key": key,
        "value": text,
        "number": number,
        "timestamp": at,
        "message_id": f"t{n}",
    }


def insert_traits(warehouse: Warehouse, rows: list[dict[str, Any]]) -> None:
    table = pa.Table.from_pylist(rows, schema=TRAIT_UPDATES)
    warehouse.insert("trait_updates", keyed(warehouse, table))
