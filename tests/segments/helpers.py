"""Shared helpers for segment tests: write rows straight into warehouse tables."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
from pydantic import TypeAdapter

from zhiying.segments.models import Rule, parse_rule_document
from zhiying.segments.reference import Dataset
from zhiying.warehouse import Warehouse
from zhiying.warehouse.events import replace_aliases
from zhiying.warehouse.schema import (
    EVENTS,
    LAYER_VALUES,
    SEGMENT_MEMBERS,
    TAG_VALUES,
    TRAIT_UPDATES,
)

RULE = TypeAdapter(Rule)
EXAMPLES = Path(__file__).resolve().parents[2] / "docs" / "examples" / "segments"

_TABLES = {
    "events": EVENTS,
    "trait_updates": TRAIT_UPDATES,
    "tag_values": TAG_VALUES,
    "layer_values": LAYER_VALUES,
    "segment_members": SEGMENT_MEMBERS,
}


def load_example(name: str) -> Rule:
    doc = json.loads((EXAMPLES / name).read_text())
    return RULE.validate_python(parse_rule_document(doc)[0])


def event(
    message_id: str,
    one_id: str,
    name: str,
    at: datetime,
    **fields: Any,
) -> dict[str, Any]:
    row: dict[str, Any] = {
        "message_id": message_id,
        "type": "track",
        "event": name,
        "one_id": one_id,
        "timestamp": at,
        "received_at": at,
        "identifiers": [],
        "products": [],
    }
    row.update(fields)
    return row


def trait(one_id: str, key: str, value: Any, at: datetime, message_id: str) -> dict[str, Any]:
    number = (
        float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
    )
    text = None if value is None else (json.dumps(value) if isinstance(value, bool) else str(value))
    return {
        "one_id": one_id,
        "key": key,
        "value": text,
        "number": number,
        "timestamp": at,
        "message_id": message_id,
    }


def clear(warehouse: Warehouse) -> None:
    for name in [*_TABLES, "one_id_aliases"]:
        warehouse.execute(f"TRUNCATE TABLE {name}")


def load(warehouse: Warehouse, data: Dataset) -> None:
    """Write ``data`` into the warehouse tables (Arrow, one insert per table)."""
    rows: Mapping[str, Iterable[Mapping[str, Any]]] = {
        "events": data.events,
        "trait_updates": data.trait_updates,
        "tag_values": data.tag_values,
        "layer_values": data.layer_values,
        "segment_members": data.segment_members,
    }
    for name, items in rows.items():
        items = list(items)
        if items:
            warehouse.insert(name, pa.Table.from_pylist(items, schema=_TABLES[name]))
    replace_aliases(warehouse, data.aliases.items())


def member_ids(warehouse: Warehouse, sql: str) -> set[str]:
    return {str(v) for v in warehouse.query(sql).column("one_id").to_pylist()}
