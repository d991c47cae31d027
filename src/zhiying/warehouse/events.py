"""Appending to the event table and keeping ONE_ID aliases: the two writes ingestion makes.

Dedup by ``messageId`` follows Segment's contract: a message seen again within
the look-back window (``ZHIYING_DEDUP_WINDOW_DAYS``, default 7 days of
*receive* time; Segment promises about 24 hours) is stored once. The check is
an anti-join against the recent part of the table, which the engines prune
by ``received_at`` (DuckDB zone maps, the ClickHouse ``ORDER BY`` key).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

import pyarrow as pa
import pyarrow.compute as pc

from zhiying.warehouse.base import Warehouse
from zhiying.warehouse.schema import EVENTS, ONE_ID_ALIASES


def timestamp_literal(warehouse: Warehouse, at: datetime) -> str:
    """A UTC instant as a SQL literal of the warehouse's dialect."""
    text = at.strftime("%Y-%m-%d %H:%M:%S.%f")
    if warehouse.dialect == "clickhouse":
        return f"toDateTime64('{text}', 6, 'UTC')"
    return f"TIMESTAMP '{text}'"


def first_per_message_id(batch: pa.Table) -> pa.Table:
    """Keep the first row of each ``message_id`` (order preserved)."""
    if batch.num_rows == 0:
        return batch
    indexed = batch.select(["message_id"]).append_column(
        "__row", pa.array(range(batch.num_rows), pa.int64())
    )
    firsts = indexed.group_by("message_id", use_threads=False).aggregate([("__row", "min")])
    keep = pc.sort_indices(firsts.column("__row_min"))
    return batch.take(pc.take(firsts.column("__row_min"), keep))


def append_events(warehouse: Warehouse, batch: pa.Table, dedup_since: datetime) -> int:
    """Append ``batch`` (``EVENTS`` schema) minus messageIds stored since ``dedup_since``.

    Returns the number of rows written; the rest were duplicates. The caller
    serialises writers (one writer per embedded warehouse).
    """
    batch = first_per_message_id(batch.cast(EVENTS))
    if batch.num_rows == 0:
        return 0
    cols = ", ".join(EVENTS.names)
    since = timestamp_literal(warehouse, dedup_since)
    select = (
        f"SELECT {cols} FROM __batch WHERE message_id NOT IN "
        f"(SELECT message_id FROM events WHERE received_at >= {since})"
    )
    return warehouse.insert_select("events", batch, select)


def replace_aliases(warehouse: Warehouse, pairs: Iterable[tuple[str, str]]) -> None:
    """Point each ``alias`` ONE_ID at its current owner ``one_id`` (replacing older rows)."""
    rows = list(dict(pairs).items())
    if not rows:
        return
    table = pa.table(
        {"alias": [a for a, _ in rows], "one_id": [o for _, o in rows]}, schema=ONE_ID_ALIASES
    )
    for start in range(0, len(rows), 1000):
        chunk = rows[start : start + 1000]
        quoted = ", ".join("'" + a.replace("'", "''") + "'" for a, _ in chunk)
        warehouse.execute(f"DELETE FROM one_id_aliases WHERE alias IN ({quoted})")
    warehouse.insert("one_id_aliases", table)


RESOLVED_EVENTS_SQL = (
    "SELECT e.*, coalesce(a.one_id, e.one_id) AS person_id "
    "FROM events AS e LEFT JOIN one_id_aliases AS a ON a.alias = e.one_id"
)
"""Events with ``person_id``: the ONE_ID that owns each event now, after any merges."""
