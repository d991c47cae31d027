"""The scheduled jobs: what the worker runs, how often, and for how long at most.

Each job is idempotent and decides for itself what is due (a segment's
``refresh_every_minutes``, a tag's hourly/daily/weekly period, a coupon's end
of validity), so running a job late or twice in a row does no harm; the
worker's ``every`` is only how often it asks. Jobs return a one-line summary
of counts, never people's data, because the worker logs it.

Order matters: tags refresh before segments materialise, so a segment that
tests a tag sees this tick's values.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from zhiying.runtime import Stores


@dataclass(frozen=True)
class Job:
    name: str
    run: Callable[[Stores], str]
    every: timedelta = timedelta(minutes=1)
    timeout: timedelta = timedelta(minutes=30)
    """Lease time to live: after a crash, another worker may take the job this much later."""


def refresh_tags(stores: Stores) -> str:
    from zhiying.profiles.tags.service import refresh_due

    result = refresh_due(stores)
    if result is None:
        return "no tag due"
    return f"refreshed {len(result.tags)} tags ({result.rows} values)"


def materialise_segments(stores: Stores) -> str:
    from zhiying.segments.service import materialise_due

    run = materialise_due(stores)
    summary = f"{len(run.done)} snapshots"
    if run.failed:
        summary += f", {len(run.failed)} failed: " + ", ".join(sid for sid, _ in run.failed)
    return summary


def sweep_coupons(stores: Stores) -> str:
    from zhiying.coupons.maintenance import sweep

    done = sweep(stores)
    return (
        f"released {done.locks_released} locks, expired {done.expired} coupons, "
        f"exported {done.events_published} ledger events"
    )


def compact_event_table(stores: Stores) -> str:
    from zhiying.warehouse.compaction import compact_events, layout

    now = stores.clock.now()
    current = layout(stores.warehouse)
    if current is None:
        return "the warehouse sorts events itself"
    if not current.due(now):
        return f"{current.tail_rows} events wait for compaction"
    done = compact_events(stores.warehouse, now)
    if done is None:
        return "nothing to compact"
    return f"sorted {done.rows} of {done.table_rows} events in {done.seconds:.1f} s"


def default_jobs() -> list[Job]:
    """Every job a Zhiying worker runs, in the order of one tick."""
    return [
        Job("coupons.sweep", sweep_coupons),
        Job("tags.refresh", refresh_tags),
        Job("segments.materialise", materialise_segments),
        Job("events.compact", compact_event_table, every=timedelta(minutes=10)),
    ]
