"""``zhiying db``: store schemas (operational migrations, warehouse columns and keys) and the
event table's compaction.

The stores are imported inside the commands so that the CLI starts without
them (see ``zhiying.cli.common``).
"""

from __future__ import annotations

import typer

from zhiying.cli.common import console, stores_for_cli
from zhiying.errors import StoreBusy

app = typer.Typer(
    help="Store schemas and upkeep (SQLite / PostgreSQL, DuckDB / ClickHouse).",
    no_args_is_help=True,
)


@app.command()
def upgrade(revision: str = typer.Argument("heads", help="Alembic revision to reach.")) -> None:
    """Apply Alembic migrations to ZHIYING_DATABASE_URL, then bring the warehouse up to date.

    The warehouse gains the columns this version added and its older rows get
    their person keys (``zhiying serve`` and every command that opens the
    stores do the same when they start).
    """
    from zhiying.config import get_settings
    from zhiying.ingest.person_keys import backfill
    from zhiying.store import make_engine
    from zhiying.store import upgrade as upgrade_store
    from zhiying.warehouse import open_warehouse

    settings = get_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    url = settings.resolved_database_url()
    upgrade_store(url, revision)
    console.print(f"operational store at revision [bold]{revision}[/bold]")
    if revision != "heads":
        return
    try:
        warehouse = open_warehouse(settings.resolved_warehouse_url())
    except StoreBusy as exc:
        console.print(f"warehouse not changed: {exc} (it is brought up to date when it opens)")
        return
    engine = make_engine(url, sqlite_cache_mb=settings.sqlite_cache_mb)
    try:
        keyed = backfill(engine, warehouse)
    finally:
        warehouse.close()
        engine.dispose()
    console.print(f"warehouse up to date (rows of {keyed:,} ONE_IDs given their person keys)")


@app.command()
def compact(
    min_rows: int = typer.Option(
        1, min=1, help="Leave the events alone if fewer than this many arrived since last time."
    ),
) -> None:
    """Sort the events stored since the last compaction by (type, event, time), so that
    segment and tag scans skip the row groups of other events (DuckDB; ClickHouse sorts
    by itself). `zhiying serve` and `zhiying worker` do this on their own; the first
    compaction of a large warehouse takes about 3 µs per event.
    """
    from zhiying.warehouse.compaction import compact_events, layout

    with stores_for_cli() as stores:
        before = layout(stores.warehouse)
        if before is None:
            console.print("nothing to do: ClickHouse keeps the events sorted itself")
            return
        if before.tail_rows == 0:
            console.print(f"all {before.table_rows:,} events are sorted already")
            return
        console.print(f"{before.tail_rows:,} of {before.table_rows:,} events to sort …")
        done = compact_events(stores.warehouse, stores.clock.now(), min_rows=min_rows)
        if done is None:
            console.print(f"left alone: fewer than {min_rows:,} events to sort")
            return
        console.print(f"sorted {done.rows:,} events in {done.seconds:.1f} s")
