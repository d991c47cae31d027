"""Profiles: the current traits of a person and what the warehouse knows of them.

Traits are kept per ``(one_id, key)`` in the operational store (the latest
identify wins); a profile reads them across every ONE_ID merged into the
person, so a merge never has to move rows. Event counts and recent events come
from the warehouse through ``RESOLVED_EVENTS_SQL`` (``person_id``: the owner
after merges), restricted to the person's ONE_IDs, so events sent before a
device was linked to the user count for the user.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import orjson
import pyarrow as pa
import sqlalchemy as sa
from sqlalchemy import Connection

from zhiying.identity.service import (
    ConflictRow,
    IdentifierRow,
    MergeRow,
    conflicts_of,
    identifiers_of,
    lookup,
    members,
    merges_of,
)
from zhiying.runtime import Stores
from zhiying.store.tables import traits as traits_table
from zhiying.warehouse.base import Warehouse
from zhiying.warehouse.events import RESOLVED_EVENTS_SQL

# --- writing traits ----------------------------------------------------------------------


def _stored_value(text: str | None, number: float | None) -> Any:
    """The JSON kept in ``traits.value``: numbers as numbers (as sent), the rest as text."""
    if number is not None and text is not None:
        try:
            return orjson.loads(text)
        except orjson.JSONDecodeError:
            return number
    return text


def upsert_traits(conn: Connection, updates: pa.Table) -> int:
    """Keep the current value of each ``(one_id, key)`` of ``updates`` (TRAIT_UPDATES rows).

    A newer ``timestamp`` wins; an older one never overwrites (equal times: the
    later write wins, so a retried batch changes nothing). Within the batch
    only the latest row per key is sent. One ``INSERT … ON CONFLICT DO UPDATE
    … WHERE`` executed for many rows, on SQLite and PostgreSQL. Runs in the
    caller's transaction; returns the number of rows inserted or changed.
    """
    if updates.num_rows == 0:
        return 0
    data = updates.select(["one_id", "key", "value", "number", "timestamp"]).to_pydict()
    latest: dict[tuple[str, str], dict[str, Any]] = {}
    for o, k, v, n, at in zip(
        data["one_id"], data["key"], data["value"], data["number"], data["timestamp"], strict=True
    ):
        at = at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)
        have = latest.get((o, k))
        if have is None or at >= have["updated_at"]:
            latest[(o, k)] = {"one_id": o, "key": k, "value": _stored_value(v, n), "updated_at": at}
    rows = list(latest.values())
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        stmt: Any = pg_insert(traits_table)
    elif conn.dialect.name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        stmt = sqlite_insert(traits_table)
    else:
        raise ValueError(f"upsert_traits runs on SQLite and PostgreSQL, not {conn.dialect.name}")
    stmt = stmt.on_conflict_do_update(
        index_elements=[traits_table.c.one_id, traits_table.c.key],
        set_={"value": stmt.excluded.value, "updated_at": stmt.excluded.updated_at},
        where=stmt.excluded.updated_at >= traits_table.c.updated_at,
    ).returning(traits_table.c.one_id)  # rowcount of executemany is not portable; rows are
    written = 0
    for start in range(0, len(rows), 5000):
        written += len(conn.execute(stmt, rows[start : start + 5000]).all())
    return written


# --- reading -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Trait:
    key: str
    value: Any
    updated_at: datetime
    one_id: str  # the ONE_ID the identify call was resolved to


@dataclass(frozen=True)
class EventCounts:
    total: int = 0
    by_type: dict[str, int] = field(default_factory=dict)
    by_event: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Profile:
    """One person: the live ONE_ID, the ONE_IDs merged into it, what is known of them."""

    one_id: str
    merged: list[str]
    identifiers: list[IdentifierRow]
    traits: list[Trait]
    counts: EventCounts
    first_seen: datetime | None
    last_seen: datetime | None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (ISO-8601 UTC times), shared by the API and the CLI."""
        return {
            "one_id": self.one_id,
            "merged": list(self.merged),
            "identifiers": [
                {
                    "kind": i.kind,
                    "value": i.value,
                    "first_seen": _iso(i.first_seen),
                    "last_seen": _iso(i.last_seen),
                }
                for i in self.identifiers
            ],
            "traits": [
                {
                    "key": t.key,
                    "value": t.value,
                    "updated_at": _iso(t.updated_at),
                    "one_id": t.one_id,
                }
                for t in self.traits
            ],
            "counts": {
                "total": self.counts.total,
                "by_type": dict(self.counts.by_type),
                "by_event": dict(self.counts.by_event),
            },
            "first_seen": _iso(self.first_seen),
            "last_seen": _iso(self.last_seen),
        }


@dataclass(frozen=True)
class History:
    """Merges and conflicts that involve a person's ONE_IDs, oldest first."""

    one_id: str
    merges: list[MergeRow]
    conflicts: list[ConflictRow]

    def as_dict(self) -> dict[str, Any]:
        return {
            "one_id": self.one_id,
            "merges": [
                {
                    "winner": m.winner,
                    "loser": m.loser,
                    "kind": m.kind,
                    "value": m.value,
                    "reason": m.reason,
                    "message_id": m.message_id,
                    "merged_at": _iso(m.merged_at),
                }
                for m in self.merges
            ],
            "conflicts": [
                {
                    "one_id": c.one_id,
                    "other_one_id": c.other_one_id,
                    "kind": c.kind,
                    "value": c.value,
                    "rule": c.rule,
                    "message_id": c.message_id,
                    "seen_at": _iso(c.seen_at),
                }
                for c in self.conflicts
            ],
        }


def _iso(at: datetime | None) -> str | None:
    if at is None:
        return None
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    return at.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _literal(warehouse: Warehouse, text: str) -> str:
    """A string literal of the warehouse's dialect (ClickHouse reads backslash escapes)."""
    if warehouse.dialect == "clickhouse":
        return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return "'" + text.replace("'", "''") + "'"


def _person_filter(warehouse: Warehouse, ids: list[str]) -> str:
    return "person_id IN (" + ", ".join(_literal(warehouse, i) for i in ids) + ")"


def _resolve(stores: Stores, ref: str) -> list[str]:
    with stores.engine.connect() as conn:
        return members(conn, lookup(conn, ref, stores.settings.default_phone_region))


def traits_of(conn: Connection, ids: list[str]) -> list[Trait]:
    """Current traits across ``ids``: per key the most recently set value."""
    rows = conn.execute(
        sa.select(
            traits_table.c.one_id,
            traits_table.c.key,
            traits_table.c.value,
            traits_table.c.updated_at,
        ).where(traits_table.c.one_id.in_(ids))
    )
    latest: dict[str, Trait] = {}
    for one_id, key, value, updated_at in rows:
        have = latest.get(key)
        if have is None or (updated_at, one_id) > (have.updated_at, have.one_id):
            latest[key] = Trait(key, value, updated_at, one_id)
    return [latest[k] for k in sorted(latest)]


def event_counts(
    warehouse: Warehouse, ids: list[str]
) -> tuple[EventCounts, datetime | None, datetime | None]:
    """Events of ``ids`` (by ``person_id``): total, per type, per track event name, time span."""
    sql = (
        "SELECT type, event, count(*) AS n, min(timestamp) AS first_at, max(timestamp) AS last_at "
        f"FROM ({RESOLVED_EVENTS_SQL}) AS r WHERE {_person_filter(warehouse, ids)} "
        "GROUP BY type, event"
    )
    by_type: dict[str, int] = {}
    by_event: dict[str, int] = {}
    first: datetime | None = None
    last: datetime | None = None
    for row in warehouse.query(sql).to_pylist():
        n = int(row["n"])
        by_type[row["type"]] = by_type.get(row["type"], 0) + n
        if row["event"] is not None:
            by_event[row["event"]] = by_event.get(row["event"], 0) + n
        lo, hi = _utc(row["first_at"]), _utc(row["last_at"])
        first = lo if first is None or lo < first else first
        last = hi if last is None or hi > last else last
    counts = EventCounts(
        total=sum(by_type.values()),
        by_type=dict(sorted(by_type.items())),
        by_event=dict(sorted(by_event.items(), key=lambda kv: (-kv[1], kv[0]))),
    )
    return counts, first, last


def _utc(at: datetime) -> datetime:
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)


def get_profile(stores: Stores, ref: str) -> Profile:
    """The profile of ``ref`` (a ONE_ID, merged or not, or ``kind:value``).

    Raises NotFound naming the identifier, ValidationFailed for a malformed ref.
    """
    with stores.engine.connect() as conn:
        owner = lookup(conn, ref, stores.settings.default_phone_region)
        ids = members(conn, owner)
        idents = identifiers_of(conn, owner)
        traits = traits_of(conn, ids)
    counts, first, last = event_counts(stores.warehouse, ids)
    if first is None and idents:
        first = min(i.first_seen for i in idents)
        last = max(i.last_seen for i in idents)
    return Profile(
        one_id=owner,
        merged=ids[1:],
        identifiers=idents,
        traits=traits,
        counts=counts,
        first_seen=first,
        last_seen=last,
    )


_EVENT_COLUMNS = (
    "message_id",
    "type",
    "event",
    "name",
    "timestamp",
    "received_at",
    "channel",
    "source",
    "user_id",
    "anonymous_id",
    "one_id",
    "person_id",
    "order_id",
    "revenue",
    "currency",
    "coupon",
    "properties",
)


def _json_ready(column: str, value: Any) -> Any:
    if isinstance(value, datetime):
        return _iso(value)
    if isinstance(value, Decimal):
        return str(value)
    if column == "properties" and isinstance(value, str):
        try:
            return orjson.loads(value)
        except orjson.JSONDecodeError:
            return value
    return value


def latest_events(stores: Stores, ref: str, limit: int = 50) -> tuple[str, list[dict[str, Any]]]:
    """``(ONE_ID, the person's latest events, newest first)``; ``limit`` rows at most."""
    ids = _resolve(stores, ref)
    cols = ", ".join(_EVENT_COLUMNS)
    sql = (
        f"SELECT {cols} FROM ({RESOLVED_EVENTS_SQL}) AS r "
        f"WHERE {_person_filter(stores.warehouse, ids)} "
        f"ORDER BY timestamp DESC, message_id DESC LIMIT {int(limit)}"
    )
    rows = stores.warehouse.query(sql).to_pylist()
    return ids[0], [{c: _json_ready(c, r[c]) for c in _EVENT_COLUMNS} for r in rows]


def merges(stores: Stores, ref: str) -> History:
    """Merges and conflicts of the person ``ref`` names."""
    with stores.engine.connect() as conn:
        ids = members(conn, lookup(conn, ref, stores.settings.default_phone_region))
        return History(
            one_id=ids[0], merges=merges_of(conn, ids), conflicts=conflicts_of(conn, ids)
        )


def count_events(stores: Stores, event: str | None = None) -> int:
    """Events stored in the warehouse; only track events named ``event`` when given."""
    where = "" if event is None else f" WHERE event = {_literal(stores.warehouse, event)}"
    table = stores.warehouse.query(f"SELECT count(*) AS n FROM events{where}")
    return int(table.column("n")[0].as_py())
