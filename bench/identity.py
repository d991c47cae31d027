"""ONE_ID resolution of 1M events from scratch: Zhiying vs a plain in-memory union-find.

    .venv/bin/python -m bench.identity [--events 1000000] [--batch 100000] [--no-postgres]

Synthetic stream (seeded): 80 % of users use the app as themselves (an
identify with userId + anonymousId + phone, then tracks); 10 % browse the web
anonymously (3 tracks), log in (identify with userId + anonymousId + phone)
and go on as the user (6 tracks); 10 % do the same after an earlier app
session, so their web device is merged into the existing ONE_ID. A user's
steps are 1 minute to 2 days apart over about a month, so most users recur in
several batches and are found in the store. Events are
ordered by time and cut into ``--batch``-row batches, each resolved with
``identity.service.resolve_events`` in its own transaction on a fresh store,
set-based (the default for batches this size) and, for comparison, with every
tuple through the ``Resolver`` one by one (``set_based=False``, the path before):
SQLite, and PostgreSQL when the test server helper (``tests/pg.py``) can
start one.

Printed beside it, on the same distinct tuples:

* **union-find**: connected components with no rules and no store (the floor);
* **resolver**: ``identity.resolver.Resolver`` with the rules, no store.

Check: every user ends with exactly one ONE_ID holding their identifiers.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import sqlalchemy as sa

from zhiying.identity.batch import collapse
from zhiying.identity.resolver import Resolver, union_find_partition
from zhiying.identity.service import new_one_id, resolve_events
from zhiying.store import make_engine, upgrade
from zhiying.store.tables import identifiers
from zhiying.warehouse.schema import EVENTS, IDENTIFIER

NOW = datetime(2026, 11, 1, 9, 0, tzinfo=UTC)
START = datetime(2026, 10, 1)

# (type, user id?, device "app"/"web"/None, phone?, minute offset)
Step = tuple[str, bool, str | None, bool, int]
APP_USER: Sequence[Step] = [("identify", True, "app", True, 0)] + [
    ("track", True, "app", False, m) for m in range(1, 9)
]
WEB_LOGIN: Sequence[Step] = (
    [("track", False, "web", False, m) for m in range(0, 3)]
    + [("identify", True, "web", True, 3)]
    + [("track", True, "web", False, m) for m in range(4, 10)]
)
APP_THEN_WEB_LOGIN: Sequence[Step] = (
    [("identify", True, "app", True, 0), ("track", True, "app", False, 1)]
    + [("track", True, "app", False, 2)]
    + [(t, u, d, False, m + 60) for t, u, d, p, m in WEB_LOGIN if not p]
    + [("identify", True, "web", False, 63)]
)
PATTERNS = [(APP_USER, 0.8), (WEB_LOGIN, 0.1), (APP_THEN_WEB_LOGIN, 0.1)]


def _strings(prefix: str, numbers: np.ndarray) -> pa.Array:
    return pc.binary_join_element_wise(prefix, pc.cast(pa.array(numbers), pa.string()), "")


def generate(n_events: int, seed: int = 7) -> tuple[pa.Table, int]:
    """About ``n_events`` EVENTS rows in time order, and the number of users."""
    rng = np.random.default_rng(seed)
    per_user = sum(len(p) * share for p, share in PATTERNS)
    n_users = int(n_events / per_user)
    counts = [int(n_users * share) for _, share in PATTERNS]
    parts = []
    first_user = 0
    for (pattern, _), m in zip(PATTERNS, counts, strict=True):
        users = np.repeat(np.arange(first_user, first_user + m), len(pattern))
        first_user += m
        steps = np.tile(np.arange(len(pattern)), m)
        parts.append((pattern, users, steps))
    n_users = first_user
    # Users come back: consecutive steps of a user are 1 minute to 2 days apart,
    # so a user's tuples recur in later batches and are found in the store.
    start_minute = rng.integers(0, 20 * 24 * 60, n_users)
    gap = rng.integers(1, 2 * 24 * 60, n_users)

    user = np.concatenate([u for _, u, _ in parts])
    cols: dict[str, list[np.ndarray]] = {
        "identify": [],
        "has_user": [],
        "web": [],
        "dev": [],
        "phone": [],
        "minute": [],
    }
    for pattern, _, steps in parts:
        table = np.array(
            [(t == "identify", u, d == "web", d is not None, p, m) for t, u, d, p, m in pattern],
            dtype=np.int64,
        )
        picked = table[steps]
        for i, name in enumerate(cols):
            cols[name].append(picked[:, i])
    c = {k: np.concatenate(v).astype(bool if k != "minute" else np.int64) for k, v in cols.items()}
    n = len(user)
    null = pa.scalar(None, pa.string())
    user_id = pc.if_else(pa.array(c["has_user"]), _strings("user-", user), null)
    anon = pc.if_else(pa.array(c["web"]), _strings("web-", user), _strings("app-", user))
    phones = _strings("+86139", user[c["phone"]] + 10_000_000)
    phone_structs = pa.StructArray.from_arrays(
        [pa.array(["phone"] * len(phones)), phones], fields=list(IDENTIFIER)
    )
    offsets = np.concatenate([[0], np.cumsum(c["phone"])]).astype(np.int32)
    idents = pa.ListArray.from_arrays(pa.array(offsets), phone_structs)
    minutes = start_minute[user] + c["minute"] * gap[user]
    stamps = pa.array(
        np.datetime64(START, "us") + minutes.astype("timedelta64[m]").astype("timedelta64[us]")
    )
    types = pc.if_else(pa.array(c["identify"]), "identify", "track")
    events = pa.table(
        {
            "message_id": _strings("m", np.arange(n)),
            "type": types,
            "event": pc.if_else(pa.array(c["identify"]), null, "Product Viewed"),
            "user_id": user_id,
            "anonymous_id": anon,
            "timestamp": stamps,
            "received_at": stamps,
            "identifiers": idents,
        }
    )
    for field in EVENTS:
        if field.name not in events.column_names:
            events = events.append_column(field.name, pa.nulls(n, field.type))
    events = events.select(EVENTS.names).cast(EVENTS)
    return events.take(pc.sort_indices(events.column("timestamp"))), n_users


def run_store(
    url: str, events: pa.Table, batch: int, set_based: bool = True
) -> tuple[float, float, int, int]:
    """Wall and CPU seconds (this process) to resolve ``events`` in batches, people, merges.

    ``set_based=False`` forces every tuple through the ``Resolver`` one by one (the
    path before ``identity.setwise``; still the one for small batches)."""
    upgrade(url)
    engine = make_engine(url)
    merges = 0
    started, cpu = time.perf_counter(), time.process_time()
    for start in range(0, events.num_rows, batch):
        chunk = events.slice(start, batch)
        with engine.begin() as conn:
            r = resolve_events(conn, chunk, NOW, set_based=set_based)
        merges += r.merges
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    with engine.connect() as conn:
        owners = conn.execute(
            sa.select(sa.func.count(sa.distinct(identifiers.c.one_id)))
        ).scalar_one()
    small = _small_batches(engine, events)
    engine.dispose()
    print(
        f"  then HTTP-sized batches ({SMALL} events of known people, {SMALL_RUNS} batches): "
        f"{small[0] * 1e6:.0f} µs wall, {small[1] * 1e6:.0f} µs CPU here per event"
    )
    return elapsed, cpu, int(owners), merges


SMALL = 500
SMALL_RUNS = 40


def _small_batches(engine: sa.Engine, events: pa.Table) -> tuple[float, float]:
    """Seconds per event resolving ``SMALL``-event batches drawn from the stream again."""
    rng = np.random.default_rng(1)
    started, cpu = time.perf_counter(), time.process_time()
    for _ in range(SMALL_RUNS):
        rows = pa.array(rng.integers(0, events.num_rows, SMALL))
        with engine.begin() as conn:
            resolve_events(conn, events.take(rows), NOW)
    n = SMALL * SMALL_RUNS
    return (time.perf_counter() - started) / n, (time.process_time() - cpu) / n


def _timed(fn: Callable[[], T]) -> tuple[float, T]:
    """Wall seconds and result; the CPU seconds of this process go to ``CPU``."""
    started, cpu = time.perf_counter(), time.process_time()
    result = fn()
    CPU.append(time.process_time() - cpu)
    return time.perf_counter() - started, result


CPU: list[float] = []
T = TypeVar("T")


def _line(label: str, wall: float, cpu: float, n: int, tuples: int, extra: str = "") -> None:
    print(
        f"{label:<44} {wall:7.2f} s wall ({cpu:6.2f} s CPU here) = {n / wall:>9,.0f} events/s, "
        f"{tuples / wall:>8,.0f} tuples/s{extra}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=100_000)
    parser.add_argument("--no-postgres", action="store_true")
    args = parser.parse_args()

    events, n_users = generate(args.events)
    n = events.num_rows
    t_collapse = 0.0
    batches = []
    for start in range(0, n, args.batch):
        dt, tuples = _timed(partial(collapse, events.slice(start, args.batch), NOW))
        t_collapse += dt
        batches.append(tuples.observations)
    batch_tuples = sum(len(b) for b in batches)
    distinct = {(o.identifiers, o.previous_id): o for b in batches for o in b}
    observations = sorted(distinct.values(), key=lambda o: o.first_at)
    print(
        f"{n:,} events, {n_users:,} users, {len(observations):,} distinct tuples "
        f"({batch_tuples:,} summed over {len(batches)} batches of {args.batch:,})"
    )
    _line("collapse to tuples (Arrow), alone", t_collapse, sum(CPU), n, batch_tuples)

    t_uf, groups = _timed(lambda: union_find_partition(o.identifiers for o in observations))
    people = len(groups)
    _line(
        "BASELINE union-find, no rules, no store",
        t_uf,
        CPU[-1],
        n,
        len(observations),
        f"; {people:,} people",
    )

    def rules() -> int:
        r = Resolver(new_one_id)
        for o in observations:
            r.observe(o)
        return len(set(r.assignments().values()))

    t_rules, resolved = _timed(rules)
    _line(
        "resolver with rules, no store",
        t_rules,
        CPU[-1],
        n,
        len(observations),
        f"; {resolved:,} people",
    )

    for set_based, label in ((False, "per-tuple resolver (before)"), (True, "set-based")):
        with tempfile.TemporaryDirectory() as tmp:
            url = f"sqlite:///{Path(tmp) / 'identity.sqlite3'}"
            wall, cpu, owners, merges = run_store(url, events, args.batch, set_based)
            _line(
                f"ZHIYING resolve_events, SQLite, {label}",
                wall,
                cpu,
                n,
                batch_tuples,
                f"; {owners:,} people, {merges:,} merges",
            )
            assert owners == n_users, (owners, n_users)

    if args.no_postgres:
        return
    from tests import pg

    if not pg.available():
        print("PostgreSQL: server binaries not installed, skipped")
        return
    server = pg.start()
    try:
        for set_based, label in ((False, "per-tuple resolver (before)"), (True, "set-based")):
            url = server.create_database(f"bench_identity_{int(set_based)}")
            wall, cpu, owners, merges = run_store(url, events, args.batch, set_based)
            _line(
                f"ZHIYING resolve_events, PostgreSQL, {label}",
                wall,
                cpu,
                n,
                batch_tuples,
                f"; {owners:,} people, {merges:,} merges",
            )
            assert owners == n_users, (owners, n_users)
    finally:
        server.stop()


if __name__ == "__main__":
    main()
