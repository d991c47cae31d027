"""``zhiying demo``: a simulated cosmetics shop fed through the real ingestion path.

The demo always uses embedded stores (SQLite + DuckDB) in its own data
directory, wiped at the start so ``make demo`` can run twice. It refuses to
wipe a directory it did not create (no marker file) or one a running
``zhiying serve`` holds.

The simulator and the stores are imported inside the functions so that the
CLI starts without them (see ``zhiying.cli.common``).
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from zhiying.cli.common import console, err_console
from zhiying.clock import ManualClock
from zhiying.errors import StoreBusy, ZhiyingError

if TYPE_CHECKING:
    from zhiying.demo.run import DemoProgress, DemoSummary

DEFAULT_DIR = Path(".zhiying/demo")
MARKER = ".zhiying-demo"


def _fail(message: str) -> typer.Exit:
    err_console.print(f"[red]error:[/red] {message}")
    return typer.Exit(1)


def _wipe(data_dir: Path) -> bool:
    """Empty ``data_dir`` for a fresh run; returns True when an earlier run was removed."""
    from zhiying.warehouse import open_warehouse

    if not data_dir.exists():
        return False
    if not data_dir.is_dir():
        raise _fail(f"{data_dir} is not a directory")
    entries = list(data_dir.iterdir())
    if not entries:
        return False
    if not (data_dir / MARKER).exists():
        raise _fail(
            f"{data_dir} is not empty and was not made by `zhiying demo`; "
            "give --data-dir a new or empty directory"
        )
    duckdb_file = data_dir / "warehouse.duckdb"
    if duckdb_file.exists():
        try:
            open_warehouse(f"duckdb://{duckdb_file.resolve()}", create=False).close()
        except StoreBusy as exc:
            raise _fail(f"{exc.message}; the demo needs to wipe {data_dir}") from exc
    for entry in entries:
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    return True


def _money(amount: Decimal) -> str:
    return f"¥{amount:,.2f}"


def print_summary(summary: DemoSummary, out: Console = console) -> None:
    """The summary as Rich tables (docs/demo.md shows them; a test keeps it current)."""
    from zhiying.demo.population import TIME_ZONE

    beijing = ZoneInfo(TIME_ZONE)
    start, end = summary.period_start.astimezone(beijing), summary.period_end.astimezone(beijing)
    overview = Table(title="What Zhiying stored (SQL on the warehouse)", show_header=False)
    overview.add_column(style="bold")
    overview.add_column(justify="right")
    overview.add_row(
        "simulated period (Beijing time)", f"{start:%Y-%m-%d %H:%M} → {end:%Y-%m-%d %H:%M}"
    )
    overview.add_row("messages sent (SDK retries included)", f"{summary.sent:,}")
    overview.add_row("rejected by validation", f"{summary.rejected:,}")
    overview.add_row("duplicates dropped (same messageId)", f"{summary.duplicates:,}")
    overview.add_row("events stored", f"{summary.events:,}")
    overview.add_row("people (distinct ONE_IDs)", f"{summary.users:,}")
    overview.add_row("  of which logged in (have a userId)", f"{summary.members:,}")
    overview.add_row("merges (anonymous visitor → member)", f"{summary.merges:,}")
    overview.add_row("orders", f"{summary.orders:,}")
    overview.add_row("GMV (CNY)", _money(summary.gmv))
    out.print(overview)

    cities = Table(title="GMV by city (city trait of the buyer)")
    cities.add_column("city")
    cities.add_column("orders", justify="right")
    cities.add_column("GMV (CNY)", justify="right")
    cities.add_column("share", justify="right")
    total = summary.gmv or Decimal(1)
    for row in summary.gmv_by_city:
        cities.add_row(row.city, f"{row.orders:,}", _money(row.gmv), f"{row.gmv / total:.1%}")
    out.print(cities)

    channels = Table(title="Events by channel")
    channels.add_column("channel")
    channels.add_column("events", justify="right")
    channels.add_column("share", justify="right")
    for name, n in summary.events_by_channel:
        channels.add_row(name or "(none)", f"{n:,}", f"{n / max(summary.events, 1):.1%}")
    out.print(channels)


SEED_SEGMENT = "docs/examples/segments/beijing-loyal.json"
"""The issue's seed segment, as the repository holds it (``make demo`` runs at its root)."""


def command_name() -> str:
    """How to run this installation's ``zhiying`` from the current directory.

    ``make demo`` runs ``.venv/bin/zhiying`` without activating the environment,
    so a bare ``zhiying`` in the suggested commands would not be found: name the
    script beside this interpreter unless ``PATH`` already finds that one."""
    script = Path(sys.executable).parent / "zhiying"
    found = shutil.which("zhiying")
    if not script.exists() or (found is not None and Path(found).resolve() == script.resolve()):
        return "zhiying"
    if script.is_relative_to(Path.cwd()):
        return os.path.join(".", os.path.relpath(script))
    return str(script)


def print_next_steps(data_dir: Path, summary: DemoSummary) -> None:
    """Commands to try on the demo's data (unwrapped, so they copy and paste).

    The segment preview passes ``--at``: the simulated period ends on a fixed day
    (``simulate.DEFAULT_END``, for the product story's anomaly), and relative
    windows such as "the last 90 days" count back from ``--at``, not from today."""
    from zhiying.demo.population import TIME_ZONE

    run = f"ZHIYING_DATA_DIR={data_dir} {command_name()}"
    who = f"user_id:{summary.example_user_id or 'm100001'}"
    at = summary.period_end.astimezone(ZoneInfo(TIME_ZONE)).isoformat()
    console.print(
        "\n[bold]Try next[/bold] (the member who ordered most, the seed segment as of the "
        "period's end, then the API):"
    )
    for command in (
        f"{run} profile show {who}",
        f"{run} events count --event 'Order Completed'",
        f"{run} segment preview {SEED_SEGMENT} --at {at} --sample 3",
        f"{run} serve",
    ):
        console.print("  " + command, soft_wrap=True, markup=False, highlight=False)


def demo(
    users: int = typer.Option(10_000, "--users", min=1, help="Simulated customers."),
    days: int = typer.Option(30, "--days", min=1, max=366, help="Simulated days."),
    seed: int = typer.Option(42, "--seed", help="Same seed, same business, byte for byte."),
    data_dir: Path = typer.Option(
        DEFAULT_DIR, "--data-dir", help="Embedded stores of the demo (wiped at the start)."
    ),
) -> None:
    """Simulate a cosmetics shop (app, web, mini program; 8 cities) and ingest it end to end."""
    from zhiying.config import Settings
    from zhiying.demo.population import TIME_ZONE
    from zhiying.demo.run import run_demo
    from zhiying.demo.simulate import SimConfig
    from zhiying.runtime import open_stores

    if _wipe(data_dir):
        console.print(f"wiped the previous demo in {data_dir}", soft_wrap=True, markup=False)
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / MARKER).write_text("made by `zhiying demo`; wiped by the next run\n")
    config = SimConfig(users=users, days=days, seed=seed)
    # The demo never follows ZHIYING_DATABASE_URL / ZHIYING_WAREHOUSE_URL: it
    # only ever writes its own embedded files.
    settings = Settings(data_dir=data_dir, database_url=None, warehouse_url=None)
    console.print(
        f"simulating {users:,} customers for {days} days (seed {seed}) into {data_dir}/ …",
        soft_wrap=True,
        markup=False,
    )
    started = time.perf_counter()
    try:
        stores = open_stores(settings, clock=ManualClock(config.start))
    except ZhiyingError as exc:
        raise _fail(exc.message) from exc
    try:
        with Progress(
            TextColumn("[progress.description]{task.description}"),
            BarColumn(),
            TaskProgressColumn(),
            TextColumn("{task.fields[day]}"),
            TextColumn("{task.fields[stored]} events"),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        ) as bar:
            task = bar.add_task("ingesting", total=1.0, day="", stored="0")

            def on_progress(p: DemoProgress) -> None:
                local = p.simulated_now.astimezone(ZoneInfo(TIME_ZONE))
                bar.update(
                    task, completed=p.fraction, day=f"{local:%Y-%m-%d}", stored=f"{p.stored:,}"
                )

            summary = run_demo(stores, users, days, seed, progress=on_progress)
    except ZhiyingError as exc:
        raise _fail(exc.message) from exc
    finally:
        stores.close()
    elapsed = time.perf_counter() - started
    print_summary(summary)
    rate = summary.sent / elapsed if elapsed > 0 else 0.0
    console.print(f"done in [bold]{elapsed:.1f} s[/bold]: {rate:,.0f} messages/s end to end")
    print_next_steps(data_dir, summary)
    if summary.rejected:
        first = summary.first_rejections[0]
        raise _fail(
            f"{summary.rejected} simulated messages were rejected, "
            f"e.g. {first.field}: {first.reason}"
        )
