"""Bulk import speed: N realistic events from Parquet and from JSONL, end to end.

    .venv/bin/python -m bench.bulk_import [--events N] [--skip-store] [--before]
                                          [--per-batch] [--only parquet|jsonl]
                                          [--identity-from REV] [--read-from REV]
                                                          (default N = 5,000,000)

``--skip-store`` measures read + map + validate only (no ``store_events``), the part
the bulk importer owns; without it each format is also imported end to end: identity
resolved once for the whole file (``resolve_import``), then ``store_events`` per batch.
``--per-batch`` also imports each file the way before (identity resolved inside every
``store_events`` batch), in the same run, as the baseline. ``--identity-from REV`` also
imports each file with ``resolve_import`` and the ``zhiying.identity`` modules as they
were at git revision ``REV`` (read with ``git show``; the rest of the code is this
tree's), first, in the same run: an A/B of identity work on the same file.
``--read-from REV`` also times read + map + validate with ``zhiying.ingest.bulk``,
``bulk_rules`` and ``bulk_sql`` as they were at ``REV``, alternating with this tree's on
the same file (CPU seconds of this process, reader thread included): an A/B of the
first pass.

Generates N events (≈ 200k users with one or two devices each; 55 % track with products
on orders, 35 % page, 10 % identify with an e-mail trait; 20 % of tracks and pages come
from a user's device before login, so they carry only the anonymousId and merge into
the user when the device's login is seen) into a temporary directory as Parquet and as
JSONL, imports each into a fresh store through ``zhiying.ingest.bulk.import_file``
and prints events/s. Printed beside them, measured in the same run:

* floor — the raw DuckDB insert of the same rows (the Parquet file read into
  Arrow and inserted into a table of the same columns, no validation, no identity);
* Parquet load floor — DuckDB's own load of the Parquet file (``read_parquet`` into a
  table of a fresh database file), which on this machine beats the Arrow route;
* JSONL floor — DuckDB's own load of the JSONL file (``read_json`` with its
  detected columns into a table in a fresh file; no validation, no identity);
* validate — our read + map + validate SQL alone (no ``store_events``), which
  separates our cost from the store path's.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import types
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import pyarrow.parquet as pq

from zhiying.clock import ManualClock
from zhiying.config import Settings
from zhiying.ingest import bulk
from zhiying.ingest.bulk import checked_chunks, import_file, rejection_rows
from zhiying.runtime import open_stores

USERS = 200_000
BEFORE = (500_000, 250_000)
"""Chunk size and store batch before the bulk-import speed work (``--before``)."""
NOW = datetime(2026, 11, 1, 9, 0, tzinfo=UTC)


def generate(n: int, out: Path) -> tuple[Path, Path]:
    """Write ``n`` events as Parquet and JSONL (same rows) with DuckDB."""
    con = duckdb.connect()
    con.execute(
        f"""
        CREATE TABLE ev AS
        WITH b AS (
          SELECT range AS i, hash(range) AS h, (hash(range * 7 + 1) % 1000) / 1000.0 AS r,
                 'u' || lpad((hash(range * 13 + 5) % {USERS})::VARCHAR, 6, '0') AS uid
          FROM range({n})
        )
        SELECT
          'msg-' || i AS messageId,
          CASE WHEN r < 0.55 THEN 'track' WHEN r < 0.9 THEN 'page' ELSE 'identify' END AS type,
          CASE WHEN r < 0.05 THEN 'Order Completed' WHEN r < 0.3 THEN 'Product Viewed'
               WHEN r < 0.55 THEN 'Product Added' END AS event,
          CASE WHEN r >= 0.55 AND r < 0.9 THEN 'Home' END AS name,
          CASE WHEN r >= 0.9 OR h % 10 < 8 THEN uid END AS userId,
          'anon-' || uid || '-' || (h % 2) AS anonymousId,
          strftime(TIMESTAMP '2026-01-01' + to_seconds((h % 25000000)::BIGINT),
                   '%Y-%m-%dT%H:%M:%S.000Z') AS timestamp,
          CASE WHEN r < 0.05 THEN json_object(
                 'order_id', 'o-' || i,
                 'revenue', ((h % 50000) / 100.0)::DECIMAL(18, 2),
                 'currency', 'CNY',
                 'products', json_array(
                    json_object('product_id', 'p' || (h % 5000), 'price', 19.90,
                                'quantity', 1 + h % 3, 'brand', 'Shiseido'),
                    json_object('product_id', 'p' || (h % 777), 'price', 5.5, 'quantity', 1)))
               WHEN r < 0.55 THEN json_object('product_id', 'p' || (h % 5000), 'price', 19.9,
                                              'category', 'beauty')
               WHEN r < 0.9 THEN json_object('path', '/p/' || (h % 5000),
                                             'url', 'https://shop.example.com/p/' || (h % 5000))
          END AS properties,
          CASE WHEN r >= 0.9 THEN json_object('email', uid || '@example.com', 'city', 'Chongqing')
          END AS traits,
          json_object('library', json_object('name', 'analytics.js', 'version', '4.1.0'),
                      'ip', '10.0.0.1',
                      'userAgent', 'Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X)')
            AS context
        FROM b
        """
    )
    parquet, jsonl = out / "events.parquet", out / "events.jsonl"
    con.execute(f"COPY ev TO '{parquet}' (FORMAT parquet)")
    con.execute(f"COPY ev TO '{jsonl}' (FORMAT json)")
    con.close()
    return parquet, jsonl


_ROOT = Path(__file__).resolve().parent.parent
_IDENTITY_MODULES = ("identifiers", "resolver", "batch", "setwise", "bulk", "cache", "service")


def identity_from(rev: str) -> Callable[..., Any]:
    """``resolve_import`` as of git revision ``rev``, running that revision's
    ``zhiying.identity`` modules (loaded under a private package name), for A/B runs."""
    prefix = f"zy_identity_{rev.replace('-', '_').replace('.', '_')[:12]}"

    def load(name: str, path: str) -> types.ModuleType:
        source = subprocess.run(
            ["git", "show", f"{rev}:{path}"], cwd=_ROOT, capture_output=True, text=True, check=True
        ).stdout
        source = source.replace("from zhiying.identity import", f"from {prefix} import")
        source = source.replace("zhiying.identity.", f"{prefix}.")
        module = types.ModuleType(f"{prefix}.{name}")
        module.__file__ = f"{rev}:{path}"
        sys.modules[module.__name__] = module
        exec(compile(source, module.__file__, "exec"), module.__dict__)
        return module

    package = types.ModuleType(prefix)
    package.__path__ = []
    sys.modules[prefix] = package
    for name in _IDENTITY_MODULES:
        setattr(package, name, load(name, f"src/zhiying/identity/{name}.py"))
    old: Callable[..., Any] = load("ingest_bulk", "src/zhiying/ingest/bulk.py").resolve_import

    def resolve(*args: Any, **kwargs: Any) -> bulk.ImportIdentity:
        """The old revision's answer as this tree's ``ImportIdentity`` (fields it lacks,
        such as person keys and the dedup mark, left unset: the store pass then looks
        them up and deduplicates again, as it did)."""
        found = old(*args, **kwargs)
        fields = {f: getattr(found, f, None) for f in bulk.ImportIdentity.__dataclass_fields__}
        return bulk.ImportIdentity(**{f: v for f, v in fields.items() if v is not None})

    return resolve


def floor(parquet: Path, out: Path) -> float:
    """Seconds for the raw DuckDB insert of the file's rows (Arrow → table)."""
    started = time.perf_counter()
    table = pq.read_table(parquet)
    con = duckdb.connect(str(out / "floor.duckdb"))
    con.register("batch", table)
    con.execute("CREATE TABLE events AS SELECT * FROM batch LIMIT 0")
    con.execute("INSERT INTO events SELECT * FROM batch")
    con.close()
    return time.perf_counter() - started


def floor_load(path: Path, out: Path) -> float:
    """Seconds for DuckDB to load ``path`` as it is (``read_parquet`` or ``read_json``,
    columns as it reads or detects them) into a table of a fresh database file."""
    started = time.perf_counter()
    reader = "read_parquet" if path.suffix == ".parquet" else "read_json"
    con = duckdb.connect(str(out / f"floor-{path.suffix[1:]}.duckdb"))
    con.execute(f"CREATE TABLE events AS SELECT * FROM {reader}(?)", [str(path)])
    con.close()
    return time.perf_counter() - started


def read_from(rev: str) -> Callable[..., Any]:
    """``checked_chunks`` as of git revision ``rev``: that revision's ``ingest.bulk``,
    ``bulk_rules`` and ``bulk_sql`` loaded under a private package name (the rest of
    the code is this tree's), for A/B runs of the first pass."""
    prefix = f"zy_read_{rev.replace('-', '_').replace('.', '_')[:12]}"
    package = types.ModuleType(prefix)
    package.__path__ = []
    sys.modules[prefix] = package
    module = package
    for name in ("bulk_rules", "bulk_sql", "bulk"):
        source = subprocess.run(
            ["git", "show", f"{rev}:src/zhiying/ingest/{name}.py"],
            cwd=_ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for own in ("bulk_rules", "bulk_sql"):
            source = source.replace(f"zhiying.ingest.{own} ", f"{prefix}.{own} ")
        module = types.ModuleType(f"{prefix}.{name}")
        module.__file__ = f"{rev}:src/zhiying/ingest/{name}.py"
        sys.modules[module.__name__] = module
        exec(compile(source, module.__file__, "exec"), module.__dict__)
        setattr(package, name, module)
    checked: Callable[..., Any] = module.checked_chunks
    return checked


def validate_only(path: Path, checked: Callable[..., Any] = checked_chunks) -> float:
    """Seconds to read, map and validate every row (streamed in chunks, nothing stored)."""
    started = time.perf_counter()
    rows = 0
    for chunk in checked(path, received_at=NOW):
        bad = chunk.filter(chunk.column("__bad"))
        assert bad.num_rows == 0, rejection_rows(bad).slice(0, 3).to_pylist()
        rows += chunk.num_rows
    assert rows > 0
    return time.perf_counter() - started


def ours(
    path: Path,
    out: Path,
    name: str,
    chunk_size: int = bulk.DEFAULT_CHUNK_SIZE,
    store_batch: int = bulk.STORE_BATCH,
    per_batch: bool = False,
    resolve: Callable[..., Any] | None = None,
) -> tuple[float, float, float]:
    """(total seconds, seconds inside store_events and resolve_import, CPU seconds of
    this process) for an import into a fresh store (the CPU figure includes the
    reader thread)."""
    stores = open_stores(Settings(data_dir=out / f"store-{name}"), clock=ManualClock(NOW))
    spent = {"store_events": 0.0, "resolve_import": 0.0, "resolve_import CPU": 0.0}
    real_store, real_resolve = bulk.store_events, bulk.resolve_import
    resolving = resolve or real_resolve
    real_batches = bulk.store_event_batches

    def timed_store(s, events, **kw):  # type: ignore[no-untyped-def]
        t = time.perf_counter()
        try:
            return real_store(s, events, **kw)
        finally:
            spent["store_events"] += time.perf_counter() - t

    def timed_batches(s, batches):  # type: ignore[no-untyped-def]
        # The pipelined second pass: its wall time from the first batch to the last result.
        t = time.perf_counter()
        try:
            yield from real_batches(s, batches)
        finally:
            spent["store_events"] += time.perf_counter() - t

    def timed_resolve(s, rows):  # type: ignore[no-untyped-def]
        # CPU as well as wall: on a shared machine the wall time of this step says more
        # about the load than about the code (no other thread of ours runs during it).
        t, c = time.perf_counter(), time.process_time()
        try:
            return resolving(s, rows)
        finally:
            spent["resolve_import"] += time.perf_counter() - t
            spent["resolve_import CPU"] += time.process_time() - c

    bulk.store_events, bulk.resolve_import = timed_store, timed_resolve
    bulk.store_event_batches = timed_batches
    cpu = time.process_time()
    try:
        report = import_file(
            stores,
            path,
            chunk_size=chunk_size,
            store_batch=store_batch,
            identity_per_batch=per_batch,
        )
    finally:
        bulk.store_events, bulk.resolve_import = real_store, real_resolve
        bulk.store_event_batches = real_batches
        stores.close()
    cpu = time.process_time() - cpu
    assert report.rejected == 0 and report.inserted == report.events
    print(
        f"        ({report.merges:,} merges, {report.conflicts:,} identity conflicts; "
        f"resolve_import {spent['resolve_import']:.1f} s "
        f"({spent['resolve_import CPU']:.1f} s CPU), "
        f"store_events {spent['store_events']:.1f} s)"
    )
    return report.seconds, spent["store_events"] + spent["resolve_import"], cpu


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.bulk_import")
    parser.add_argument("legacy_n", nargs="?", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--events", type=int, default=5_000_000, help="events to generate")
    parser.add_argument(
        "--skip-store", action="store_true", help="read + map + validate only (no store_events)"
    )
    parser.add_argument(
        "--before",
        action="store_true",
        help="also import each file with the previous sizes (500k-row chunks stored in "
        "250k-row batches) in the same run",
    )
    parser.add_argument(
        "--per-batch",
        action="store_true",
        help="also import each file with identity resolved inside every store_events "
        "batch (the path before whole-file resolution) in the same run",
    )
    parser.add_argument(
        "--only", choices=["parquet", "jsonl"], help="import only this format end to end"
    )
    parser.add_argument(
        "--identity-from",
        metavar="REV",
        help="also import each file with resolve_import and zhiying.identity as of git "
        "revision REV (the rest as in this tree), first, in the same run",
    )
    parser.add_argument(
        "--read-from",
        metavar="REV",
        help="also time read + map + validate with ingest.bulk, bulk_rules and bulk_sql as "
        "of git revision REV, alternating with this tree's on the same file",
    )
    args = parser.parse_args()
    n = args.legacy_n or args.events
    old_resolve = identity_from(args.identity_from) if args.identity_from else None
    old_checked = read_from(args.read_from) if args.read_from else None
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        t = time.perf_counter()
        parquet, jsonl = generate(n, out)
        print(
            f"generated {n:,} events in {time.perf_counter() - t:.1f} s "
            f"(parquet {parquet.stat().st_size / 1e6:.0f} MB, "
            f"jsonl {jsonl.stat().st_size / 1e6:.0f} MB)"
        )
        base = floor(parquet, out)
        print(
            f"floor   raw DuckDB insert of the Arrow table: {n / base:>12,.0f} rows/s "
            f"({base:.1f} s)"
        )
        floors = {}
        for label, path, reader in (
            ("parquet", parquet, "read_parquet"),
            ("jsonl", jsonl, "read_json"),
        ):
            if args.only and label != args.only:
                continue
            floors[label] = floor_load(path, out)
            what = f"DuckDB {reader} of the {label} file:"
            print(f"floor   {what:37s}{n / floors[label]:>12,.0f} rows/s ({floors[label]:.1f} s)")
        for label, path in (("parquet", parquet), ("jsonl", jsonl)):
            if args.only and label != args.only:
                continue
            best_floor = min(base, floors[label]) if label == "parquet" else floors[label]
            fl = f"floor {n / best_floor:,.0f}/s"
            if old_checked is not None:
                for tag, checked in ((f"@{args.read_from}", old_checked), ("", checked_chunks)):
                    cpu = time.process_time()
                    v = validate_only(path, checked)
                    what = f"read+map+validate{tag}:"
                    print(
                        f"{label:7s} {what:34s} {n / v:>12,.0f} events/s ({v:.1f} s; "
                        f"{time.process_time() - cpu:.1f} s CPU; load {os.getloadavg()[0]:.1f})"
                    )
            v = validate_only(path)
            print(
                f"{label:7s} read+map+validate only:            {n / v:>12,.0f} events/s "
                f"({v:.1f} s; {fl})"
            )
            if args.skip_store:
                continue
            runs: list[tuple[str, int, int, bool, Callable[..., Any] | None]] = [
                ("", bulk.DEFAULT_CHUNK_SIZE, bulk.STORE_BATCH, False, None)
            ]
            if old_resolve is not None:
                tag = f" identity@{args.identity_from}"
                runs.insert(0, (tag, bulk.DEFAULT_CHUNK_SIZE, bulk.STORE_BATCH, False, old_resolve))
            if args.per_batch:
                runs.insert(
                    0, (" per-batch", bulk.DEFAULT_CHUNK_SIZE, bulk.STORE_BATCH, True, None)
                )
            if args.before:
                runs.insert(0, (" before", *BEFORE, True, None))
            for tag, chunk_size, store_batch, per_batch, resolve in runs:
                name = label + tag.strip().replace("@", "-")
                total, store, cpu = ours(
                    path, out, name, chunk_size, store_batch, per_batch, resolve
                )
                what = f"end to end{tag} (batches {store_batch // 1000}k):"
                print(
                    f"{label:7s} {what:34s} {n / total:>12,.0f} events/s ({total:.1f} s, of "
                    f"which identity + store {store:.1f} s; {cpu:.1f} s CPU; {fl}; "
                    f"load {os.getloadavg()[0]:.1f})"
                )


if __name__ == "__main__":
    main()
