"""``zhiying db``: store schemas (operational migrations, warehouse columns and keys)."""

from __future__ import annotations

import typer

from zhiying.cli.common import console
from zhiying.config import get_settings
from zhiying.errors import StoreBusy
from zhiying.ingest.person_keys import backfill
from zhiying.store import make_engine
from zhiying.store import upgrade as upgrade_store
from zhiying.warehouse import open_warehouse

app = typer.Typer(
    help="Store schemas (SQLite / PostgreSQL, DuckDB / ClickHouse).", no_args_is_help=True
)


@app.command()
def upgrade(revision: str = typer.Argument("heads", help="Alembic revision to reach.")) -> None:
    """Apply Alembic migrations to ZHIYING_DATABASE_URL, then bring the warehouse up to date.

    The warehouse gains the columns this version added and its older rows get
    their person keys (``zhiying serve`` and every command that opens the
    stores do the same when they start).
    """
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
