"""Coupon benchmarks: quote latency, redemptions per second, batch issuance.

    .venv/bin/python -m bench.coupons                 # everything (1,000,000 coupons)
    .venv/bin/python -m bench.coupons --issue-n 100000 --skip-postgres

Each figure is printed next to a baseline measured in the same process:

* quote (20 lines, 30 candidates) vs. pricing each candidate alone (no combination search);
* redemptions/s (16 clients, lock+redeem of distinct coupons of one template, ledger and
  abuse checks included) vs. a bare conditional ``UPDATE … WHERE state='issued'``;
* batch issuance (ledger rows, counters and warehouse events included) vs. a bare
  ``executemany`` of the same coupon rows into an empty copy of the table.
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import sqlalchemy as sa

from zhiying.clock import ManualClock
from zhiying.config import Settings
from zhiying.coupons import batches, redemption, templates
from zhiying.coupons.codes import new_codes
from zhiying.coupons.models import Candidate, Cart, CartLine, TemplateSpec
from zhiying.coupons.pricing import price_combination, quote
from zhiying.runtime import Stores, open_stores
from zhiying.store import make_engine
from zhiying.store.tables import coupons

NOW = datetime(2026, 11, 11, 4, 0, tzinfo=UTC)


def _spec(benefit: dict[str, object], **kw: object) -> TemplateSpec:
    return TemplateSpec.model_validate(
        {"name": str(benefit["kind"]), "benefit": benefit, "validity": {"days_after_issue": 30}}
        | kw
    )


def quote_case(seed: int = 7) -> tuple[Cart, list[Candidate]]:
    rng = random.Random(seed)
    cats, brands = ["beauty", "baby", "food", "home"], ["a", "b", "c", "d", "e"]
    lines = tuple(
        CartLine(
            f"l{i}",
            f"p{i}",
            rng.randint(500, 30000),
            rng.randint(1, 6),
            category=rng.choice(cats),
            brand=rng.choice(brands),
        )
        for i in range(20)
    )
    cart = Cart(lines, shipping_fee=1000, city="Chongqing", channel="app")
    kinds: list[Callable[[], dict[str, object]]] = [
        lambda: {"kind": "full_reduction", "threshold": rng.randint(5, 60) * 1000,
                 "reduction": rng.randint(1, 10) * 500, "stepped": rng.random() < 0.3},
        lambda: {"kind": "percent_off", "percent_off_bp": rng.randint(5, 40) * 100,
                 "max_discount": rng.randint(5, 50) * 100},
        lambda: {"kind": "fixed_amount", "amount": rng.randint(1, 30) * 100,
                 "min_spend": rng.randint(0, 20) * 1000},
        lambda: {"kind": "buy_n_get_m", "buy": rng.randint(2, 5), "get": 1,
                 "max_discount": 5000},
        lambda: {"kind": "free_shipping", "min_spend": rng.randint(0, 10) * 1000},
    ]  # fmt: skip
    cands = []
    for i in range(30):
        scope: dict[str, object] = {}
        if rng.random() < 0.5:
            scope["categories"] = rng.sample(cats, 2)
        if rng.random() < 0.2:
            scope["exclude_brands"] = [rng.choice(brands)]
        stacking = {"group": rng.choice([None, None, "platform", "shop"]),
                    "exclusive": rng.random() < 0.03}  # fmt: skip
        s = _spec(rng.choice(kinds)(), scope=scope, stacking=stacking)
        cands.append(
            Candidate(f"C{i:02d}", f"T{i}", s, NOW - timedelta(days=1), NOW + timedelta(days=9))
        )
    return cart, cands


def _pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(p * len(values)))]


def bench_quote(rounds: int = 3000) -> None:
    cart, cands = quote_case()
    for _ in range(50):
        quote(cart, cands, NOW)
    ours, cpu, base = [], [], []
    for _ in range(rounds):
        t0, c0 = time.perf_counter(), time.process_time()
        quote(cart, cands, NOW)
        ours.append((time.perf_counter() - t0) * 1000)
        cpu.append((time.process_time() - c0) * 1000)
        t0 = time.perf_counter()
        for c in cands:
            price_combination(cart, [c], NOW)
        base.append((time.perf_counter() - t0) * 1000)
    q = quote(cart, cands, NOW)
    print(
        f"quote 20 lines x 30 coupons ({len(q.options)} apply, best {len(q.best)} stacked): "
        f"p50 {statistics.median(ours):.3f} ms, p99 {_pct(ours, 0.99):.3f} ms wall, "
        f"p99 {_pct(cpu, 0.99):.3f} ms CPU (target p99 < 2 ms) | "
        "baseline, each coupon priced alone: "
        f"p50 {statistics.median(base):.3f} ms, p99 {_pct(base, 0.99):.3f} ms"
    )


def _stores(tmp: Path, url: str | None) -> Stores:
    return open_stores(
        Settings(data_dir=tmp / uuid.uuid4().hex[:8], database_url=url), clock=ManualClock(NOW)
    )


FIXED = {"kind": "fixed_amount", "amount": 500}
CART = Cart((CartLine("a", "p", 3000),))


def bench_redeem(tmp: Path, url: str | None, label: str, n: int = 4000, clients: int = 16) -> None:
    stores = _stores(tmp, url)
    engine = make_engine(stores.settings.resolved_database_url(), pool_size=clients, max_overflow=0)
    try:
        t = templates.create_template(stores.engine, _spec(FIXED), NOW).template_id
        people = [f"u{i}" for i in range(n)]
        batches.issue_batch(stores.engine, None, t, people, NOW, batch_key="bench")
        with engine.connect() as conn:
            owned = {o: c for o, c in conn.execute(sa.select(coupons.c.one_id, coupons.c.code))}
        half = n // 2
        work = people[:half]

        def redeem(i: int) -> None:
            u = work[i]
            redemption.redeem(engine, f"o{i}", NOW, one_id=u, codes=[owned[u]], cart=CART)

        t0 = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            list(pool.map(redeem, range(half)))
        ours = half / (time.perf_counter() - t0)
        rest = [owned[u] for u in people[half:]]
        bare = (
            coupons.update()
            .where(coupons.c.code == sa.bindparam("b_code"), coupons.c.state == "issued")
            .values(state="redeemed")
        )

        def bare_redeem(i: int) -> None:
            with engine.begin() as conn:
                if conn.dialect.name == "sqlite":
                    conn.exec_driver_sql("BEGIN IMMEDIATE")
                conn.execute(bare, {"b_code": rest[i]})

        t0 = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            list(pool.map(bare_redeem, range(len(rest))))
        base = len(rest) / (time.perf_counter() - t0)
        print(
            f"redemptions/s, {clients} clients, {label}: {ours:,.0f}/s "
            f"(lock+redeem, ledger, counters, abuse checks) | baseline bare conditional "
            f"UPDATE: {base:,.0f}/s"
        )
    finally:
        engine.dispose()
        stores.close()


def bench_issue(tmp: Path, url: str | None, label: str, n: int) -> None:
    stores = _stores(tmp, url)
    try:
        t = templates.create_template(stores.engine, _spec(FIXED), NOW).template_id
        people = [f"seg{i:07d}" for i in range(n)]
        t0, c0 = time.perf_counter(), time.process_time()
        r = batches.issue_batch(
            stores.engine, stores.warehouse, t, people, NOW, batch_key="segment-1", chunk_size=50000
        )
        ours, cpu = time.perf_counter() - t0, time.process_time() - c0
        assert r.issued == n and r.events_written == n, r
        # baseline: the same coupon rows, bare executemany into an empty copy of the table
        md = sa.MetaData()
        copy = sa.Table(
            "coupons_baseline", md, *[sa.Column(c.name, c.type) for c in coupons.columns]
        )
        md.create_all(stores.engine)
        codes = new_codes(n)
        rows = [
            {"code": c, "template_id": t, "one_id": o, "state": "issued", "face_value": 500,
             "issued_at": NOW, "valid_from": NOW, "valid_until": NOW, "issuance_key": f"k{o}",
             "batch_id": "b", "version": 1, "updated_at": NOW}
            for c, o in zip(codes, people, strict=True)
        ]  # fmt: skip
        t0 = time.perf_counter()
        with stores.engine.begin() as conn:
            for start in range(0, n, 10000):
                conn.execute(copy.insert(), rows[start : start + 10000])
        base = time.perf_counter() - t0
        print(
            f"batch issuance of {n:,} coupons, {label}: {ours:.1f} s wall, {cpu:.1f} s CPU of "
            f"this process ({n / ours:,.0f}/s; coupons + ledger + counters + "
            f"{r.events_written:,} warehouse events) | baseline bare executemany of the "
            f"coupon rows: {base:.1f} s"
        )
    finally:
        stores.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--issue-n", type=int, default=1_000_000)
    parser.add_argument("--skip-postgres", action="store_true")
    args = parser.parse_args()
    bench_quote()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        bench_redeem(tmp, None, "SQLite", clients=4)
        bench_issue(tmp, None, "SQLite", args.issue_n)
        if not args.skip_postgres:
            from tests import pg

            if not pg.available():
                print("PostgreSQL binaries not installed: skipping PostgreSQL figures")
                return
            server = pg.start()
            try:
                bench_redeem(tmp, server.create_database("bench_redeem"), "PostgreSQL")
                bench_issue(tmp, server.create_database("bench_issue"), "PostgreSQL", args.issue_n)
            finally:
                server.stop()


if __name__ == "__main__":
    main()
