"""The real data sets of ``../shared/data`` imported as ``docs/import.md`` documents them.

    .venv/bin/python -m bench.real_imports [--runs K] [--only olist|cdnow|hillstrom]
                                            (default K = 2)

Each run imports, into a fresh data directory (SQLite + DuckDB), the Olist customers
(99,441 rows, users), the CDNOW purchase history (69,659 rows, ``Order Completed``
events) and the Hillstrom customers (64,000 rows, users with 12 traits each) through
``zhiying.ingest.bulk.import_file`` with the mappings in ``docs/mappings/``, in this
process (no CLI start-up), and prints rows/s, wall and CPU seconds per file. Users
files are the ones whose rows carry many traits: most of their time goes to the
current-trait upserts in the operational store.

A/B of two revisions: run the command twice with ``PYTHONPATH`` pointing at each
tree's ``src`` (a ``git worktree`` of the baseline), alternating, on the same
machine; the figures are per file, so the two runs compare file by file.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import zhiying
from zhiying.config import Settings
from zhiying.ingest.bulk import import_file
from zhiying.ingest.mapping import load_mapping
from zhiying.runtime import open_stores

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"
FILES = {
    "olist": ("users", "olist/olist_customers_dataset.csv.gz", "olist_customers.toml"),
    "cdnow": ("orders", "cdnow/CDNOW_master.txt.gz", "cdnow_orders.toml"),
    "hillstrom": ("users", "hillstrom/hillstrom.csv.gz", "hillstrom_users.toml"),
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--only", choices=sorted(FILES))
    args = parser.parse_args()
    print(f"zhiying from {Path(zhiying.__file__).parent}; load {os.getloadavg()[0]:.2f}")
    for run in range(1, args.runs + 1):
        with tempfile.TemporaryDirectory() as tmp:
            stores = open_stores(Settings(data_dir=Path(tmp)))
            try:
                for name, (kind, file, mapping) in FILES.items():
                    if args.only and name != args.only:
                        continue
                    cpu, started = time.process_time(), time.perf_counter()
                    report = import_file(
                        stores,
                        DATA / file,
                        kind=kind,  # type: ignore[arg-type]
                        mapping=load_mapping(ROOT / "docs" / "mappings" / mapping),
                        rejects_path=Path(tmp) / f"{name}.rejects.csv",
                    )
                    wall, cpu = time.perf_counter() - started, time.process_time() - cpu
                    assert report.rejected == 0, report.first_rejections
                    print(
                        f"run {run} {name:9s} {kind:6s} {report.rows_read:>7,} rows "
                        f"{report.rows_read / wall:>8,.0f} rows/s  {wall:5.2f} s wall "
                        f"{cpu:5.2f} s CPU  (load {os.getloadavg()[0]:.2f})",
                        flush=True,
                    )
            finally:
                stores.close()


if __name__ == "__main__":
    main()
