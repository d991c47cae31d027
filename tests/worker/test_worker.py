"""The worker runs due jobs under leases: once per interval, one holder at a time."""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.segments.helpers import load
from tests.segments.test_seed_segment import AT, seed_data
from tests.tags.factories import event, insert_events
from zhiying.cli.main import app
from zhiying.clock import ManualClock
from zhiying.profiles.tags import service as tags
from zhiying.profiles.tags.models import DynamicTag, EventSelector
from zhiying.runtime import Stores
from zhiying.segments import service as segments
from zhiying.segments.models import SegmentCreate, parse_rule
from zhiying.warehouse.compaction import Layout, layout
from zhiying.worker import leases
from zhiying.worker.jobs import Job
from zhiying.worker.loop import Worker, WorkerThread

CITY_SET = {"type": "trait", "trait": "city", "op": "is_set"}


@pytest.fixture
def seeded(stores: Stores, clock: ManualClock) -> Stores:
    clock.set(AT)
    load(stores.warehouse, seed_data())
    return stores


def _hourly_segment(stores: Stores) -> str:
    seg = segments.create_segment(
        stores,
        SegmentCreate(name="Hourly", rule=parse_rule(CITY_SET), refresh_every_minutes=60),
    )
    return seg.segment_id


def _snapshots(stores: Stores, segment_id: str) -> int:
    return len(segments.list_snapshots(stores, segment_id))


def test_lease_has_exactly_one_holder_among_racing_workers(
    ops_stores: Stores, clock: ManualClock
) -> None:
    now = clock.now()
    start = threading.Barrier(12)
    won: list[str] = []

    def race(i: int) -> None:
        start.wait()
        if leases.acquire(ops_stores.engine, "job", f"w{i}", now, timedelta(minutes=5)):
            won.append(f"w{i}")

    threads = [threading.Thread(target=race, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1
    assert leases.holder_of(ops_stores.engine, "job", now) == won[0]
    other = "w0" if won[0] != "w0" else "w1"
    later = now + timedelta(minutes=5)
    assert not leases.acquire(ops_stores.engine, "job", other, now, timedelta(minutes=5))
    assert leases.acquire(ops_stores.engine, "job", other, later, timedelta(minutes=5))
    leases.release(ops_stores.engine, "job", other, later)
    assert leases.holder_of(ops_stores.engine, "job", later) is None


def test_tick_materialises_due_segments_and_respects_both_intervals(
    seeded: Stores, clock: ManualClock
) -> None:
    sid = _hourly_segment(seeded)
    worker = Worker(seeded)
    first = {r.job: r for r in worker.tick()}
    assert set(first) == {
        "coupons.sweep",
        "tags.refresh",
        "segments.materialise",
        "events.compact",
    }
    assert all(r.status == "done" for r in first.values())
    assert first["segments.materialise"].summary == "1 snapshots"
    assert worker.tick() == []  # nothing has been a minute yet
    clock.advance(timedelta(minutes=2))
    again = {r.job: r for r in worker.tick()}
    assert again["segments.materialise"].summary == "0 snapshots"  # the segment's hour
    clock.advance(timedelta(minutes=58))
    assert {r.job: r for r in worker.tick()}["segments.materialise"].summary == "1 snapshots"
    assert _snapshots(seeded, sid) == 2


def test_tick_compacts_the_events_at_once_then_daily_for_a_small_tail(
    seeded: Stores, clock: ManualClock
) -> None:
    stored = layout(seeded.warehouse)
    assert stored is not None and stored.tail_rows == stored.table_rows > 0
    worker = Worker(seeded)
    first = {r.job: r for r in worker.tick()}["events.compact"]
    assert first.summary.startswith(f"sorted {stored.table_rows} of {stored.table_rows} events")
    insert_events(seeded.warehouse, [event("u9", clock.now().replace(tzinfo=None))])
    clock.advance(timedelta(minutes=10))
    later = {r.job: r for r in worker.tick()}["events.compact"]
    assert later.summary == "1 events wait for compaction"
    clock.advance(timedelta(days=1))
    daily = {r.job: r for r in worker.tick()}["events.compact"]
    assert daily.summary.startswith(f"sorted 1 of {stored.table_rows + 1} events")
    assert layout(seeded.warehouse) == Layout(
        0, stored.table_rows + 1, clock.now().replace(tzinfo=None)
    )


def test_tick_refreshes_due_tags(stores: Stores, clock: ManualClock) -> None:
    insert_events(
        stores.warehouse, [event("u1", (clock.now() - timedelta(days=1)).replace(tzinfo=None))]
    )
    tags.define_tag(
        stores,
        DynamicTag(
            name="orders_1d",
            where=EventSelector(events=["Order Completed"]),
            window_days=1,
            aggregate="count",
            refresh="hourly",
        ),
    )
    worker = Worker(stores)
    runs = {r.job: r for r in worker.tick()}
    assert runs["tags.refresh"].summary.startswith("refreshed 1 tags")
    clock.advance(timedelta(minutes=5))
    assert {r.job: r for r in worker.tick()}["tags.refresh"].summary == "no tag due"
    assert [r.status for r in tags.list_runs(stores)] == ["succeeded"]


def test_a_failing_job_is_reported_and_the_next_job_still_runs(stores: Stores) -> None:
    ran: list[str] = []

    def boom(_: Stores) -> str:
        raise RuntimeError("disk on fire")

    def fine(_: Stores) -> str:
        ran.append("fine")
        return "ok"

    worker = Worker(stores, [Job("boom", boom), Job("fine", fine)])
    runs = worker.tick()
    assert [(r.job, r.status) for r in runs] == [("boom", "failed"), ("fine", "done")]
    assert runs[0].summary == "RuntimeError: disk on fire"
    assert ran == ["fine"]
    assert leases.holder_of(stores.engine, "boom", stores.clock.now()) is None


def test_a_job_whose_lease_is_held_elsewhere_does_not_run(stores: Stores) -> None:
    ran: list[str] = []
    worker = Worker(stores, [Job("solo", lambda s: ran.append("x") or "ran")])
    now = stores.clock.now()
    assert leases.acquire(stores.engine, "solo", "other-process", now, timedelta(minutes=10))
    assert [(r.job, r.status) for r in worker.tick()] == [("solo", "busy")]
    assert ran == []


def test_worker_thread_ticks_until_stopped(seeded: Stores) -> None:
    sid = _hourly_segment(seeded)
    thread = WorkerThread(Worker(seeded), poll_seconds=0.05)
    thread.start()
    deadline = time.monotonic() + 30
    while _snapshots(seeded, sid) == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    thread.stop()
    assert _snapshots(seeded, sid) == 1
    assert not thread._thread.is_alive()


def test_worker_once_runs_every_job_and_prints_them(data_dir: Path) -> None:
    result = CliRunner().invoke(app, ["worker", "--once"])
    assert result.exit_code == 0, result.output
    for job in ("coupons.sweep", "tags.refresh", "segments.materialise", "events.compact"):
        assert job in result.output
    assert "failed" not in result.output
