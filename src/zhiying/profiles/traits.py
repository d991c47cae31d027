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
    """TRAIT_UPDATES rows from the ``identify`` rows of ``events`` whose ``one_id`` is set."""
    mask = pc.and_(
        pc.fill_null(pc.equal(events.column("type"), "identify"), False),
        pc.is_valid(events.column("one_id")),
    )
    rows = events.select(["one_id", "traits", "timestamp", "message_id"]).filter(mask).to_pydict()
    out: dict[str, list[Any]] = {name: [] for name in TRAIT_UPDATES.names}
    for one_id, text, at, message_id in zip(
        rows["one_id"], rows["traits"], rows["timestamp"], rows["message_id"], strict=True
    ):
        if not text:
            continue
        try:
            traits = orjson.loads(text)
        except orjson.JSONDecodeError:
            continue
        if not isinstance(traits, dict):
            continue
        for key, value in traits.items():
            if not key or len(key) > MAX_KEY_LENGTH:
                continue
            shown, number = text_and_number(value)
            out["one_id"].append(one_id)
            out["key"].append(key)
            out["value"].append(shown)
            out["number"].append(number)
            out["timestamp"].append(at)
            out["message_id"].append(message_id)
    return pa.table(out, schema=TRAIT_UPDATES)
