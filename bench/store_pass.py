"""The bulk importer's second pass alone (store: dedup, person keys, traits, DuckDB append),
this tree against a git revision, alternating in one process on the same rows.

    .venv/bin/python -m bench.store_pass [--events N] [--rev REV] [--runs K]
                                          (defaults: N = 1,000,000, REV = HEAD, K = 2)

Generates N events as ``bench.bulk_import`` does, runs the importer's first pass once
(read, map, validate, spill) and keeps the valid rows in an Arrow IPC file. Each run
then opens a fresh store, resolves the file's identities with that side's
``resolve_import`` (untimed) and times that side's second pass as ``import_file`` runs
it (``store_event_batches`` over ``_with_one_ids``, under the event-writer hold where
the side has one). "rev" is ``zhiying.ingest.{bulk,pipeline,person_keys}``,
``zhiying.warehouse.events`` and ``zhiying.profiles.{traits,service}`` as of REV, loaded
with ``git show`` under private names (the rest is this tree's). Both sides must store
the same rows, keys and traits (checked). Prints wall and CPU seconds per run.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import subprocess
import sys
import tempfile
import time
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa

from bench.bulk_import import NOW, generate
from zhiying.clock import ManualClock
from zhiying.config import Settings
from zhiying.ingest import bulk
from zhiying.runtime import Stores, open_stores

_ROOT = Path(__file__).resolve().parent.parent
_MODULES = {  # in dependency order: each may import the ones before it
    "zhiying.warehouse.events": "src/zhiying/warehouse/events.py",
    "zhiying.profiles.traits": "src/zhiying/profiles/traits.py",
    "zhiying.profiles.service": "src/zhiying/profiles/service.py",
    "zhiying.ingest.person_keys": "src/zhiying/ingest/person_keys.py",
    "zhiying.ingest.pipeline": "src/zhiying/ingest/pipeline.py",
    "zhiying.ingest.bulk": "src/zhiying/ingest/bulk.py",
}


def load_rev(rev: str) -> dict[str, types.ModuleType]:
    """The store-pass modules as of ``rev``, importing one another (not this tree's)."""
    prefix = "zy_store_" + "".join(c if c.isalnum() else "_" for c in rev)[:16]
    loaded: dict[str, types.ModuleType] = {}
    for dotted, path in _MODULES.items():
        source = subprocess.run(
            ["git", "show", f"{rev}:{path}"], cwd=_ROOT, capture_output=True, text=True, check=True
        ).stdout
        for other, module in loaded.items():
            source = source.replace(f"from {other} import", f"from {module.__name__} import")
        module = types.ModuleType(f"{prefix}_{dotted.replace('.', '_')}")
        module.__file__ = f"{rev}:{path}"
        sys.modules[module.__name__] = module
        exec(compile(source, module.__file__, "exec"), module.__dict__)
        loaded[dotted] = module
    return loaded


class _Rows:
    """The first pass's valid rows, as ``_Spill.batches`` hands them to the second pass."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def batches(self, size: int) -> Iterator[pa.Table]:
        with pa.memory_map(str(self.path)) as source:
            yield from bulk._chunks(pa.ipc.open_stream(source), size)


def first_pass(parquet: Path, out: Path) -> tuple[_Rows, pa.Table]:
    """Run ``import_file``'s first pass once; keep its valid rows and identity columns."""
    valid = out / "valid.arrows"
    kept: dict[str, pa.Table] = {}
    real_resolve, real_batches = bulk.resolve_import, bulk.store_event_batches

    def keep_identity(stores: Stores, rows: pa.Table) -> Any:
        kept["identity"] = rows
        return bulk.ImportIdentity(pa.nulls(rows.num_rows, pa.string()), 0, 0)

    def keep_rows(stores: Stores, batches: Any) -> Iterator[Any]:
        writer = None
        for item in batches:
            table = item.events if hasattr(item, "events") else item[0]
            if writer is None:
                writer = pa.ipc.new_stream(str(valid), table.schema)
            writer.write_table(table, max_chunksize=65_536)
        if writer is not None:
            writer.close()
        return iter(())

    bulk.resolve_import, bulk.store_event_batches = keep_identity, keep_rows  # type: ignore[assignment]
    stores = open_stores(Settings(data_dir=out / "first-pass"), clock=ManualClock(NOW))
    try:
        bulk.import_file(stores, parquet)
    finally:
        bulk.resolve_import, bulk.store_event_batches = real_resolve, real_batches
        stores.close()
    return _Rows(valid), kept["identity"]


def second_pass(
    modules: dict[str, types.ModuleType], rows: _Rows, identity: pa.Table, out: Path
) -> tuple[float, float, tuple[Any, ...]]:
    """(wall s, CPU s, what was stored) of one side's second pass on a fresh store."""
    side_bulk, events = modules["zhiying.ingest.bulk"], modules["zhiying.warehouse.events"]
    hold = getattr(events, "hold_event_writer", contextlib.nullcontext)
    stores = open_stores(Settings(data_dir=Path(tempfile.mkdtemp(dir=out))), clock=ManualClock(NOW))
    try:
        gc.collect()
        with hold():
            resolved = side_bulk.resolve_import(stores, identity)
            batches = side_bulk._with_one_ids(rows, side_bulk.STORE_BATCH, resolved)
            wall, cpu = time.perf_counter(), time.process_time()
            for _ in side_bulk.store_event_batches(stores, batches):
                pass
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        stored = stores.warehouse.query(
            "SELECT (SELECT count(*) FROM events) AS n, "
            "(SELECT count(DISTINCT message_id) FROM events) AS ids, "
            "(SELECT sum(person_key) FROM events) AS keys, "
            "(SELECT count(*) FROM trait_updates) AS traits"
        ).to_pylist()[0]
        return wall, cpu, tuple(stored.values())
    finally:
        stores.close()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.store_pass")
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--rev", default="HEAD", help="git revision to compare with")
    parser.add_argument("--runs", type=int, default=2, help="runs per side, alternating")
    args = parser.parse_args()
    sides = {args.rev: load_rev(args.rev), "this tree": {"zhiying.ingest.bulk": bulk}}
    sides["this tree"]["zhiying.warehouse.events"] = sys.modules["zhiying.warehouse.events"]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        parquet, jsonl = generate(args.events, out)
        jsonl.unlink()
        rows, identity = first_pass(parquet, out)
        print(f"{args.events:,} events; second pass only (load {os.getloadavg()[0]:.1f})")
        stored: set[tuple[Any, ...]] = set()
        for run in range(args.runs):
            order = list(sides) if run % 2 == 0 else list(reversed(sides))
            for name in order:
                wall, cpu, what = second_pass(sides[name], rows, identity, out)
                stored.add(what)
                print(
                    f"  {name:>12}: {wall:6.2f} s wall {cpu:6.2f} s CPU "
                    f"({args.events / wall:,.0f} events/s; load {os.getloadavg()[0]:.1f})",
                    flush=True,
                )
        assert len(stored) == 1, f"the sides stored different rows: {stored}"
        print(f"  both stored (events, ids, sum of keys, trait rows) = {stored.pop()}")


if __name__ == "__main__":
    main()
