"""Shared helpers for segment tests: write rows straight into warehouse tables.

Rows are keyed as ingestion keys them (``zhiying.ingest.person_keys``): every
ONE_ID a data set names gets a ``person_key`` (deliberately not 1, 2, 3… so
that a key mistaken for a row number shows), events and trait updates carry
it, aliases carry both keys, and ``person_keys`` is the dictionary. A row that
sets ``person_key`` itself (even to None) keeps it.
"""

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
from zhiying.warehouse.schema import (
    EVENTS,
    LAYER_VALUES,
    ONE_ID_ALIASES,
    PERSON_KEYS,
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
    "one_id_aliases": ONE_ID_ALIASES,
    "person_keys": PERSON_KEYS,
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
    for name in _TABLES:
        warehouse.execute(f"TRUNCATE TABLE {name}")


def key_of(one_id: str, keys: dict[str, int]) -> int:
    """The key of ``one_id`` in ``keys``, minting the next one (1000, 1007, …) if new."""
    if one_id not in keys:
        keys[one_id] = 1000 + 7 * len(keys)
    return keys[one_id]


def warehouse_rows(data: Dataset) -> dict[str, list[dict[str, Any]]]:
    """``data`` as keyed rows per warehouse table (the dictionary included)."""
    keys: dict[str, int] = {}

    def keyed(rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
        out = []
        for row in rows:
            row = dict(row)
            if "person_key" not in row and row.get("one_id") is not None:
                row["person_key"] = key_of(row["one_id"], keys)
            out.append(row)
        return out

    tables = {
        "events": keyed(data.events),
        "trait_updates": keyed(data.trait_updates),
        "tag_values": [dict(r) for r in data.tag_values],
        "layer_values": [dict(r) for r in data.layer_values],
        "segment_members": [dict(r) for r in data.segment_members],
    }
    for rows in (data.tag_values, data.layer_values, data.segment_members):
        for row in rows:
            key_of(row["one_id"], keys)
    tables["one_id_aliases"] = [
        {"alias": a, "one_id": o, "alias_key": key_of(a, keys), "person_key": key_of(o, keys)}
        for a, o in data.aliases.items()
    ]
    tables["person_keys"] = [{"person_key": k, "one_id": o} for o, k in keys.items()]
    return tables


def load(warehouse: Warehouse, data: Dataset) -> None:
    """Write ``data`` into the warehouse tables, keyed (Arrow, one insert per table)."""
    for name, items in warehouse_rows(data).items():
        if items:
            warehouse.insert(name, pa.Table.from_pylist(items, schema=_TABLES[name]))


def member_ids(warehouse: Warehouse, sql: str) -> set[str]:
    return {str(v) for v in warehouse.query(sql).column("one_id").to_pylist()}
