"""Replaying a stream of identity rows in batches and reading back what the store holds,
named so that two runs (two resolution paths) compare equal when they stored the same."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import pyarrow as pa
import sqlalchemy as sa

from tests.identity.events import ev, table
from zhiying.identity.service import Resolution
from zhiying.store.tables import identifiers, identity_conflicts, merges, one_ids

_TABLES = ("identity_conflicts", "identity_merges", "identifiers", "one_ids", "identity_generation")

Resolve = Callable[[sa.Connection, pa.Table], Resolution]


def replay(
    engine: sa.Engine,
    stream: list[dict[str, Any]],
    cuts: list[int],
    resolve: Resolve,
    committed: Callable[[Resolution], None] | None = None,
) -> dict[str, Any]:
    """Resolve ``stream`` cut into batches at ``cuts`` (``committed`` runs after each
    batch's commit) and return the stored state with every ONE_ID named by the smallest
    identifier it ever owned (a loser by the first identifier its merge names), ONE_IDs
    with the rank of their mint order."""
    with engine.begin() as conn:
        for name in _TABLES:
            conn.exec_driver_sql(f"DELETE FROM {name}")
    rows = [ev(f"m{i}", e.pop("type_"), **e) for i, e in enumerate(dict(e) for e in stream)]
    per_row: list[str | None] = []
    aliases: list[tuple[str, str]] = []
    counts = []
    for start, end in itertools.pairwise([0, *sorted(set(cuts)), len(rows)]):
        if end <= start:
            continue
        with engine.begin() as conn:
            r = resolve(conn, table(rows[start:end]))
        if committed is not None:
            committed(r)
        per_row += r.one_ids.to_pylist()
        aliases += r.aliases
        counts.append((r.merges, r.conflicts))
    with engine.connect() as conn:
        idents = conn.execute(sa.select(identifiers)).all()
        ids = conn.execute(sa.select(one_ids)).all()
        merged = conn.execute(sa.select(merges)).all()
        conflicts = conn.execute(sa.select(identity_conflicts)).all()
    name: dict[str, str] = {}
    for i in idents:
        key = f"{i.kind}:{i.value}"
        name[i.one_id] = min(name.get(i.one_id, key), key)
    for m in merged:
        name.setdefault(m.loser, f"lost:{m.kind}:{m.value}:{m.message_id}")
    for o in ids:
        name.setdefault(o.one_id, f"empty@{o.created_at}")

    def n(one_id: str | None) -> str | None:
        return None if one_id is None else name.get(one_id, "?" + one_id)

    # Mint orders as ranks: the store's counter is not reset between runs.
    minted = {o.one_id: i for i, o in enumerate(sorted(ids, key=lambda o: o.mint_order))}

    return {
        "rows": [n(o) for o in per_row],
        "identifiers": sorted((i.kind, i.value, n(i.one_id), i.first_seen) for i in idents),
        "last_seen": {(i.kind, i.value): i.last_seen for i in idents},
        "one_ids": sorted(
            (n(o.one_id), o.created_at, n(o.merged_into), o.merged_at, minted[o.one_id])
            for o in ids
        ),
        "merges": sorted(
            (n(m.winner), n(m.loser), m.kind, m.value, m.reason, m.message_id, m.merged_at)
            for m in merged
        ),
        "conflicts": sorted(
            (n(c.one_id), n(c.other_one_id), c.kind, c.value, c.rule, c.message_id, c.seen_at)
            for c in conflicts
        ),
        "aliases": sorted((n(a), n(b)) for a, b in aliases),
        "counts": counts,
    }
