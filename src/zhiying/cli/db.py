"""``zhiying db``: operational store migrations."""

from __future__ import annotations

import typer

from zhiying.cli.common import console
from zhiying.config import get_settings
from zhiying.store import upgrade as upgrade_store

app = typer.Typer(help="Operational store (SQLite / PostgreSQL) schema.", no_args_is_help=True)


@app.command()
def upgrade(revision: str = typer.Argument("heads", help="Alembic revision to reach.")) -> None:
    """Apply Alembic migrations to ZHIYING_DATABASE_URL."""
    settings = get_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    upgrade_store(settings.resolved_database_url(), revision)
    console.print(f"operational store at revision [bold]{revision}[/bold]")
