"""The demo through the real stores: what the summary says is what the stores hold."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.conftest import make_stores
from zhiying.clock import ManualClock, SystemClock
from zhiying.demo.run import run_demo
from zhiying.demo.simulate import SimConfig, SimTruth, Simulation
from zhiying.errors import ValidationFailed
from zhiying.runtime import Stores
from zhiying.store.tables import merges as merges_table
from zhiying.store.tables import one_ids

USERS, DAYS, SEED = 300, 7, 3


def _user_cities() -> dict[str, str]:
    return {u.user_id: u.city for u in Simulation(SimConfig(USERS, DAYS, SEED)).users}


def test_summary_matches_the_warehouse_and_the_simulation(wh_stores: Stores) -> None:
    truth = SimTruth()
    summary = run_demo(wh_stores, USERS, DAYS, SEED, truth=truth, chunk_size=3000, parallel=False)
    wh = wh_stores.warehouse

    # Every distinct message stored once, every SDK retry dropped, nothing refused.
    assert summary.rejected == 0
    assert summary.sent == truth.messages + truth.retries
    assert summary.duplicates == truth.retries > 0
    assert summary.events == truth.messages
    assert summary.events == wh.query("SELECT count(*) AS n FROM events").column(0)[0].as_py()

    # Orders and revenue per city: read the raw rows and join cities from the simulation.
    rows = wh.query(
        "SELECT user_id, order_id, revenue FROM events WHERE event = 'Order Completed'"
    ).to_pylist()
    city_of = _user_cities()
    gmv: Counter[str] = Counter()
    orders: Counter[str] = Counter()
    for r in rows:
        gmv[city_of[r["user_id"]]] += r["revenue"]
        orders[city_of[r["user_id"]]] += 1
    assert summary.orders == len({r["order_id"] for r in rows}) == truth.orders > 0
    assert {c.city: c.gmv for c in summary.gmv_by_city} == dict(gmv)
    assert {c.city: c.orders for c in summary.gmv_by_city} == dict(orders)
    assert dict(gmv) == {
        city: Decimal(fen) / 100 for city, fen in truth.revenue_fen_by_city.items()
    }
    assert len(summary.gmv_by_city) >= 6

    channels = Counter(wh.query("SELECT channel FROM events").column(0).to_pylist())
    assert dict(summary.events_by_channel) == dict(channels)
    assert dict(channels) == dict(truth.messages_by_channel)

    # People: the live ONE_IDs of the operational store; merges as identity recorded them.
    with wh_stores.engine.connect() as conn:
        live = conn.scalar(
            sa.select(sa.func.count()).select_from(one_ids).where(one_ids.c.merged_into.is_(None))
        )
        merged = conn.scalar(sa.select(sa.func.count()).select_from(merges_table))
    assert summary.users == live
    assert summary.merges == summary.merges_reported == merged > 0
    assert summary.members == len(truth.identified_users)
    assert summary.example_user_id in city_of


def test_events_peak_at_21_local_time_in_the_warehouse(stores: Stores) -> None:
    run_demo(stores, USERS, DAYS, SEED, chunk_size=5000, parallel=False)
    stamps = stores.warehouse.query("SELECT timestamp FROM events").column(0).to_pylist()
    hours = Counter((at.hour + 8) % 24 for at in stamps)  # stored as naive UTC; Beijing is +8
    assert hours[21] > 5 * hours[4]


def test_running_the_same_seed_again_stores_nothing_new(stores: Stores) -> None:
    first = run_demo(stores, 80, 2, SEED, parallel=False)
    again = run_demo(stores, 80, 2, SEED, parallel=False)
    assert again.events == first.events
    assert again.duplicates == again.sent
    assert again.orders == first.orders and again.users == first.users


def test_helper_process_and_in_process_runs_store_the_same(stores: Stores, tmp_path: Path) -> None:
    parallel = run_demo(stores, 120, 3, SEED, chunk_size=2000, parallel=True)
    other = make_stores(tmp_path / "other", ManualClock(datetime(2026, 1, 1, tzinfo=UTC)))
    try:
        local = run_demo(other, 120, 3, SEED, chunk_size=2000, parallel=False)
    finally:
        other.close()
    fields = ("sent", "events", "users", "members", "merges", "orders", "gmv_by_city")
    assert [getattr(parallel, f) for f in fields] == [getattr(local, f) for f in fields]


def test_the_demo_needs_a_manual_clock(stores: Stores) -> None:
    stores.clock = SystemClock()
    with pytest.raises(ValidationFailed, match="ManualClock"):
        run_demo(stores, 10, 1, SEED)
