"""Traits from identify calls, one row per key (pure).

An identify call's ``traits`` object is flattened one level: ``{"city":
"Chongqing", "age": 31, "address": {"street": "..."}}`` gives three rows,
``address`` holding its value as JSON text. ``value`` is the text form of
every value (strings as they are, numbers and booleans in JSON spelling,
JSON ``null`` as a null value: the trait was cleared); ``number`` is set for
JSON numbers only, so the string ``"42"`` stays text.

Keys longer than ``MAX_KEY_LENGTH`` are dropped (the operational store's key
column holds 200 characters), as are traits that are not a JSON object.
"""

from __future__ import annotations

import math
from typing import Any, Final

import orjson
import pyarrow as pa
import pyarrow.compute as pc

from zhiying.warehouse.schema import TRAIT_UPDATES

MAX_KEY_LENGTH: Final = 200


def text_and_number(value: Any) -> tuple[str | None, float | None]:
    """The ``(value, number)`` columns of one trait value."""
    if value is None:
        return None, None
    if isinstance(value, str):
        return value, None
    if isinstance(value, bool):
        return ("true" if value else "false"), None
    if isinstance(value, int | float):
        number = float(value)
        return orjson.dumps(value).decode(), number if math.isfinite(number) else None
    return orjson.dumps(value).decode(), None


def trait_updates(events: pa.Table) -> pa.Table:
    """TRAIT_UPDATES rows from the ``identify`` rows of ``events`` whose ``one_id`` is set.

    Only the traits objects are read in Python (one ``orjson.loads`` each, with
    the value-type cases inlined: a bulk import brings hundreds of thousands of
    traits); ``one_id``, ``timestamp``, ``message_id`` and ``person_key`` are repeated per key
    with one Arrow ``take``, never converted to Python objects.
    """
    mask = pc.and_(
        pc.fill_null(pc.equal(events.column("type"), "identify"), False),
        pc.is_valid(events.column("one_id")),
    )
    if "person_key" not in events.column_names:
        events = events.append_column("person_key", pa.nulls(events.num_rows, pa.int64()))
    rows = events.select(["one_id", "timestamp", "message_id", "traits", "person_key"]).filter(mask)
    at_row: list[int] = []
    keys: list[str] = []
    values: list[str | None] = []
    numbers: list[float | None] = []
    loads, dumps, bad_json = orjson.loads, orjson.dumps, orjson.JSONDecodeError
    for i, text in enumerate(rows.column("traits").to_pylist()):
        if not text:
            continue
        try:
            traits = loads(text)
        except bad_json:
            continue
        if type(traits) is not dict:
            continue
        for key, value in traits.items():
            if not key or len(key) > MAX_KEY_LENGTH:
                continue
            at_row.append(i)
            keys.append(key)
            kind = type(value)
            if kind is str:
                values.append(value)
                numbers.append(None)
            elif value is None:
                values.append(None)
                numbers.append(None)
            elif kind is bool:
                values.append("true" if value else "false")
                numbers.append(None)
            elif kind is int or kind is float:
                number = float(value)
                values.append(dumps(value).decode())
                numbers.append(number if math.isfinite(number) else None)
            else:
                values.append(dumps(value).decode())
                numbers.append(None)
    taken = rows.take(pa.array(at_row, pa.int64()))
    return pa.table(
        {
            "one_id": taken.column("one_id"),
            "key": pa.array(keys, pa.string()),
            "value": pa.array(values, pa.string()),
            "number": pa.array(numbers, pa.float64()),
            "timestamp": taken.column("timestamp"),
            "message_id": taken.column("message_id"),
            "person_key": taken.column("person_key"),
        }
    ).cast(TRAIT_UPDATES)
