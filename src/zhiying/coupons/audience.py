"""Who gets a batch: user references (``kind:value``, user ids, ONE_IDs) → ONE_IDs.

Resolution is batched against the operational identity map (read only): one query per
identifier kind and chunk, never one per person. Segment audiences arrive as ONE_IDs
already and need no resolution (``segment_members``).
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import sqlalchemy as sa
from sqlalchemy import Engine

from zhiying.identity.identifiers import InvalidIdentifier, parse_ref
from zhiying.store.tables import identifiers, one_ids

if TYPE_CHECKING:
    from zhiying.runtime import Stores

_CHUNK = 2000
HEADERS = {"ref": None, "user_id": "user_id", "one_id": "one_id"}


@dataclass
class Resolved:
    one_ids: list[str] = field(default_factory=list)
    unresolved: list[str] = field(default_factory=list)  # refs nobody is known by
    invalid: list[str] = field(default_factory=list)  # refs that cannot be read


def read_refs(path: Path) -> Iterator[str]:
    """References from a CSV: the first column, or the ``ref``/``user_id``/``one_id`` column
    named in a header. A bare value under ``user_id`` becomes ``user_id:value``."""
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        first = next(reader, None)
        if first is None:
            return
        header = [c.strip().lower() for c in first]
        col, kind = 0, None
        named = [h for h in header if h in HEADERS]
        rows: Iterator[list[str]] = reader
        if named:
            col, kind = header.index(named[0]), HEADERS[named[0]]
        else:
            rows = _chain([first], reader)
        for row in rows:
            if len(row) <= col or not row[col].strip():
                continue
            value = row[col].strip()
            if kind is not None and not value.startswith(f"{kind}:"):
                value = f"{kind}:{value}"
            yield value


def _chain(head: list[list[str]], rest: Iterator[list[str]]) -> Iterator[list[str]]:
    yield from head
    yield from rest


def resolve(engine: Engine, refs: Iterable[str], default_region: str = "CN") -> Resolved:
    """ONE_IDs (current owners, in input order, de-duplicated) of ``refs``.

    ``one_id:X`` names a ONE_ID (followed to the ONE_ID it was merged into); any other
    ``kind:value`` is looked up in the identity map; a bare value is a ``user_id``.
    """
    out = Resolved()
    wanted: list[tuple[str, str, str]] = []  # (ref, kind, value)
    for ref in refs:
        ref = ref.strip()
        if not ref:
            continue
        if ":" not in ref:
            ref = f"user_id:{ref}"
        kind, _, raw = ref.partition(":")
        if kind == "one_id":
            wanted.append((ref, "one_id", raw.strip()))
            continue
        try:
            kind, value = parse_ref(ref, default_region)
        except InvalidIdentifier:
            out.invalid.append(ref)
            continue
        wanted.append((ref, kind, value))
    found: dict[tuple[str, str], str] = {}
    with engine.connect() as conn:
        by_kind: dict[str, list[str]] = {}
        for _, kind, value in wanted:
            by_kind.setdefault(kind, []).append(value)
        for kind, values in by_kind.items():
            for start in range(0, len(values), _CHUNK):
                chunk = values[start : start + _CHUNK]
                if kind == "one_id":
                    q = sa.select(one_ids.c.one_id, one_ids.c.merged_into).where(
                        one_ids.c.one_id.in_(chunk)
                    )
                    for one_id, merged_into in conn.execute(q):
                        found[("one_id", one_id)] = merged_into or one_id
                else:
                    q2 = sa.select(identifiers.c.value, identifiers.c.one_id).where(
                        identifiers.c.kind == kind, identifiers.c.value.in_(chunk)
                    )
                    for value, one_id in conn.execute(q2):
                        found[(kind, value)] = one_id
    seen: set[str] = set()
    for ref, kind, value in wanted:
        one_id = found.get((kind, value))
        if one_id is None:
            out.unresolved.append(ref)
        elif one_id not in seen:
            seen.add(one_id)
            out.one_ids.append(one_id)
    return out


def segment_members(stores: Stores, segment_id: str, at: datetime) -> list[str]:
    """The current members (ONE_IDs, sorted) of saved segment ``segment_id``, evaluated
    at ``at`` by the segments service (raises ``NotFound`` for an unknown segment)."""
    from zhiying.segments import service as segments

    rule = segments.get_segment(stores, segment_id).rule
    found = segments.members(stores, rule, at)
    return sorted(str(v) for v in found.column("one_id").to_pylist() if v is not None)
