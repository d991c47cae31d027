"""The warehouse tables tags and layers read, as unbound ibis tables, resolved to persons.

Everything here builds expressions only; callers compile them with
``ibis.to_sql(expr, dialect=...)`` and run them through the ``Warehouse``.
A *person* is the integer key of the ONE_ID that owns a row now:
``coalesce(alias.person_key, row.person_key)`` through ``one_id_aliases``, so
rows written before a merge count for the merged user, and every ``GROUP BY``
is on an integer (``zhiying.ingest.person_keys``). Results come back to ONE_IDs
through the ``person_keys`` dictionary (:func:`with_one_id`), once per person.
Rows without a key (never stored by ingestion) belong to nobody.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import ibis
import ibis.expr.datatypes as dt
import ibis.expr.types as ir
import pyarrow as pa

from zhiying.warehouse.schema import (
    DERIVED,
    EVENTS_STORED,
    LAYER_VALUES,
    ONE_ID_ALIASES,
    PERSON_KEYS,
    TAG_VALUES,
    TRAIT_UPDATES,
    Dialect,
)

EVENT_COLUMNS = (
    "message_id",
    "type",
    "event",
    "name",
    "user_id",
    "timestamp",
    "source",
    "channel",
    "order_id",
    "revenue",
    "currency",
    "coupon",
    "products",
    *(d.name for d in DERIVED["events"]),  # the products' brands and categories as lists
)


def table(name: str) -> ir.Table:
    """An unbound ibis table for one of our warehouse tables."""
    schemas = {
        "events": EVENTS_STORED,  # with the derived product lists (schema.DERIVED)
        "one_id_aliases": ONE_ID_ALIASES,
        "trait_updates": TRAIT_UPDATES,
        "tag_values": TAG_VALUES,
        "tag_history": TAG_VALUES,
        "layer_values": LAYER_VALUES,
        "person_keys": PERSON_KEYS,
    }
    return ibis.table(ibis.Schema.from_pyarrow(schemas[name]), name=name)


def instant(at: datetime, dialect: Dialect) -> ir.TimestampScalar:
    """A UTC instant as a literal comparable with our naive-UTC timestamp columns.

    DuckDB columns are naive ``TIMESTAMP`` (meaning UTC), so the literal is
    naive too; ClickHouse columns are ``DateTime64(6, 'UTC')``, so the literal
    carries the zone and does not depend on the server's time zone.
    """
    if at.tzinfo is None:
        raise ValueError("instant() needs an aware datetime")
    naive = at.astimezone(UTC).replace(tzinfo=None)
    if dialect == "clickhouse":
        return ibis.literal(naive, type=dt.Timestamp(timezone="UTC", scale=6))
    return ibis.literal(naive, type=dt.Timestamp(scale=6))


def has_aliases(query: Callable[[str], pa.Table]) -> bool:
    """Whether any ONE_ID was ever merged (``query`` runs SQL on the warehouse)."""
    result = query("SELECT count(*) AS n FROM (SELECT alias FROM one_id_aliases LIMIT 1) AS t")
    return bool(result.column("n")[0].as_py())


def _owners() -> ir.Table:
    aliases = table("one_id_aliases")
    return aliases.select(alias=aliases["alias_key"], owner=aliases["person_key"])


def with_one_id(rows: ir.Table) -> ir.Table:
    """``rows`` (with an integer ``person``) with its ONE_ID as ``one_id``, in place of
    ``person``. Each key has one dictionary row; a key nobody's rows carry has none."""
    keys = table("person_keys")
    keys = keys.select(k=keys.person_key, k_one_id=keys.one_id)
    joined = rows.inner_join(keys, rows.person == keys.k)
    return joined.mutate(one_id=joined.k_one_id).drop("person", "k", "k_one_id")


def resolved_events(as_of: datetime, dialect: Dialect, *, aliases: bool = True) -> ir.Table:
    """Events up to and including ``as_of`` with ``person``; rows with no key are dropped.

    ``aliases=False`` skips the join with ``one_id_aliases`` — only correct
    when that table is empty (no merge ever happened); it saves the join's
    cost on every event.
    """
    events = table("events")
    if aliases:
        owners = _owners()
        joined = events.left_join(owners, events.person_key == owners["alias"])
        person = ibis.coalesce(joined.owner, joined.person_key)
    else:
        joined = events
        person = events.person_key
    cols = {c: joined[c] for c in EVENT_COLUMNS}
    resolved = joined.select(person=person, **cols)
    return resolved.filter(resolved.timestamp <= instant(as_of, dialect), resolved.person.notnull())


def resolved_traits(as_of: datetime, dialect: Dialect, keys: list[str]) -> ir.Table:
    """The latest update of each trait in ``keys`` per person, as of ``as_of``.

    Latest = greatest ``timestamp``, then greatest ``message_id`` (a stable tie-break).
    """
    traits = table("trait_updates")
    owners = _owners()
    joined = traits.left_join(owners, traits.person_key == owners["alias"])
    resolved = joined.select(
        person=ibis.coalesce(joined.owner, joined.person_key),
        key=joined.key,
        value=joined.value,
        number=joined.number,
        timestamp=joined.timestamp,
        message_id=joined.message_id,
    )
    resolved = resolved.filter(
        resolved.timestamp <= instant(as_of, dialect), resolved.key.isin(keys)
    )
    rank = ibis.row_number().over(
        group_by=[resolved.person, resolved.key],
        order_by=[ibis.desc(resolved.timestamp), ibis.desc(resolved.message_id)],
    )
    ranked = resolved.mutate(rank=rank)
    return ranked.filter(ranked["rank"] == 0).drop("rank")
