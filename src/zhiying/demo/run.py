"""Feed the simulated business through the real ingestion path and summarise the warehouse.

``run_demo`` plays the simulation's messages in timestamp order, in chunks, as
an SDK flushing batches would: each chunk is validated by
``zhiying.ingest.models`` (the same code behind ``POST /v1/batch``) and stored
by ``zhiying.ingest.pipeline.store_events`` (dedup, ONE_ID, traits,
warehouse). The stores' ``ManualClock`` follows the simulated time, so every
chunk is "received" just after its last event and dedup windows behave as in
production; at the end the clock reads the end of the period (the demo's "now").

The ``DemoSummary`` is computed by SQL on the warehouse, not from the
simulation's memory: the numbers are what Zhiying stored, so they show the
pipeline worked.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from decimal import Decimal
from typing import Any

from zhiying.clock import ManualClock
from zhiying.demo.batches import batches
from zhiying.demo.simulate import Anomaly, SimConfig, SimTruth
from zhiying.errors import ValidationFailed
from zhiying.ingest.models import Rejection
from zhiying.ingest.pipeline import store_events
from zhiying.runtime import Stores
from zhiying.warehouse.base import Warehouse
from zhiying.warehouse.events import RESOLVED_EVENTS_SQL

DEFAULT_CHUNK = 20_000
UNKNOWN_CITY = "(no city)"


@dataclass(frozen=True)
class DemoProgress:
    """Where a running demo is: ``fraction`` of the simulated period fed so far."""

    fraction: float
    simulated_now: datetime
    messages: int
    stored: int


@dataclass(frozen=True)
class CityRow:
    city: str
    orders: int
    gmv: Decimal  # CNY


@dataclass(frozen=True)
class DemoSummary:
    """What the warehouse holds after a demo run (``sent``/``rejected``/``duplicates``/
    ``merges_reported`` are what the pipeline answered; the rest is SQL on the warehouse).
    """

    period_start: datetime
    period_end: datetime
    sent: int  # messages handed to validation, SDK retries included
    rejected: int
    duplicates: int
    merges_reported: int
    events: int
    users: int  # distinct ONE_IDs that own events (after merges)
    members: int  # of which logged in at least once (have a userId)
    merges: int  # ONE_IDs merged into another (anonymous visitor → logged-in member)
    orders: int
    gmv_by_city: tuple[CityRow, ...]
    events_by_channel: tuple[tuple[str, int], ...]
    example_user_id: str | None  # the member with the most orders (for `zhiying profile show`)
    first_rejections: tuple[Rejection, ...] = field(default=(), repr=False)

    @property
    def gmv(self) -> Decimal:
        return sum((row.gmv for row in self.gmv_by_city), Decimal("0.00"))


def _scalar(warehouse: Warehouse, sql: str) -> Any:
    return warehouse.query(sql).column(0)[0].as_py()


def summarize(stores: Stores, period_start: datetime, period_end: datetime) -> DemoSummary:
    """The warehouse's view of the demo (every figure one SQL statement, DuckDB and ClickHouse)."""
    wh = stores.warehouse
    resolved = f"({RESOLVED_EVENTS_SQL}) AS r"
    events = int(_scalar(wh, "SELECT count(*) FROM events"))
    users = int(_scalar(wh, f"SELECT count(DISTINCT person_id) FROM {resolved}"))
    members = int(
        _scalar(wh, f"SELECT count(DISTINCT person_id) FROM {resolved} WHERE user_id IS NOT NULL")
    )
    merges = int(_scalar(wh, "SELECT count(DISTINCT alias) FROM one_id_aliases"))
    orders = int(
        _scalar(
            wh,
            "SELECT count(DISTINCT order_id) FROM events "
            "WHERE type = 'track' AND event = 'Order Completed'",
        )
    )
    city_sql = f"""
        WITH city AS (
            SELECT person_id, value AS city FROM (
                SELECT coalesce(a.one_id, t.one_id) AS person_id, t.value,
                       row_number() OVER (
                           PARTITION BY coalesce(a.one_id, t.one_id)
                           ORDER BY t.timestamp DESC, t.message_id DESC
                       ) AS rn
                FROM trait_updates AS t
                LEFT JOIN one_id_aliases AS a ON a.alias = t.one_id
                WHERE t.key = 'city' AND t.value IS NOT NULL
            ) AS latest WHERE rn = 1
        ),
        orders AS (
            SELECT person_id, order_id, revenue FROM {resolved}
            WHERE type = 'track' AND event = 'Order Completed'
        )
        SELECT coalesce(c.city, '{UNKNOWN_CITY}') AS city_name,
               count(DISTINCT o.order_id) AS order_count,
               sum(o.revenue) AS gmv
        FROM orders AS o LEFT JOIN city AS c ON c.person_id = o.person_id
        GROUP BY city_name
        ORDER BY gmv DESC, city_name
    """
    by_city = wh.query(city_sql).to_pylist()
    channels = wh.query(
        "SELECT coalesce(channel, '') AS channel_name, count(*) AS n FROM events "
        "GROUP BY channel_name ORDER BY n DESC, channel_name"
    ).to_pylist()
    top = wh.query(
        "SELECT user_id, count(*) AS n FROM events WHERE type = 'track' "
        "AND event = 'Order Completed' AND user_id IS NOT NULL "
        "GROUP BY user_id ORDER BY n DESC, user_id LIMIT 1"
    ).to_pylist()
    return DemoSummary(
        period_start=period_start,
        period_end=period_end,
        sent=0,
        rejected=0,
        duplicates=0,
        merges_reported=0,
        events=events,
        users=users,
        members=members,
        merges=merges,
        orders=orders,
        gmv_by_city=tuple(
            CityRow(
                str(r["city_name"]),
                int(r["order_count"]),
                Decimal(r["gmv"] or 0).quantize(Decimal("0.01")),
            )
            for r in by_city
        ),
        events_by_channel=tuple((str(r["channel_name"]), int(r["n"])) for r in channels),
        example_user_id=str(top[0]["user_id"]) if top else None,
    )


def run_demo(
    stores: Stores,
    users: int = 10_000,
    days: int = 30,
    seed: int = 42,
    *,
    progress: Callable[[DemoProgress], None] | None = None,
    anomalies: tuple[Anomaly, ...] = (),
    chunk_size: int = DEFAULT_CHUNK,
    truth: SimTruth | None = None,
    parallel: bool = True,
) -> DemoSummary:
    """Simulate ``users`` customers for ``days`` days and store every message via ingestion.

    ``stores.clock`` must be a ``ManualClock`` (the demo moves it through
    simulated time). ``truth``, when given, receives what the simulation sent,
    for comparison with the summary. ``parallel`` generates and validates in a
    helper process while this one stores (``zhiying.demo.batches``). Storing
    into a warehouse that already holds a run of the same seed stores nothing
    new (every ``messageId`` repeats).
    """
    clock = stores.clock
    if not isinstance(clock, ManualClock):
        raise ValidationFailed(
            "the demo moves time itself: open the stores with a ManualClock", field="clock"
        )
    config = SimConfig(users=users, days=days, seed=seed, anomalies=anomalies)
    start, end = config.start, config.end_utc
    span = (end - start).total_seconds()
    truth = truth if truth is not None else SimTruth()

    sent = rejected = duplicates = merges = stored = 0
    first_rejections: list[Rejection] = []
    for batch in batches(config, chunk_size, truth, parallel=parallel):
        clock.set(batch.received_at)
        sent += batch.sent
        rejected += len({r.index for r in batch.rejections})
        first_rejections.extend(batch.rejections[: max(0, 5 - len(first_rejections))])
        if batch.table.num_rows:
            result = store_events(stores, batch.table)
            duplicates += result.duplicates
            merges += result.merges
            stored += result.inserted
        if progress is not None:
            done = (batch.received_at - start).total_seconds() / span
            progress(DemoProgress(min(done, 1.0), batch.received_at, sent, stored))
    clock.set(end)
    if progress is not None:
        progress(DemoProgress(1.0, end, sent, stored))

    summary = summarize(stores, start, end)
    return replace(
        summary,
        sent=sent,
        rejected=rejected,
        duplicates=duplicates,
        merges_reported=merges,
        first_rejections=tuple(first_rejections),
    )
