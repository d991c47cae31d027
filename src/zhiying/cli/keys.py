"""``zhiying keys``: create, list and revoke API keys.

The key service is imported inside the commands so that the CLI starts without
it (see ``zhiying.cli.common``).
"""

from __future__ import annotations

import typer
from rich.table import Table

from zhiying.cli.common import console, stores_for_cli

app = typer.Typer(help="API keys: write keys ingest, admin keys manage.", no_args_is_help=True)


@app.command()
def create(
    write: bool = typer.Option(False, "--write", help="A write key (ingest only)."),
    admin: bool = typer.Option(False, "--admin", help="An admin key (/api, Bearer)."),
    name: str = typer.Option("", help="A label to recognise the key by."),
) -> None:
    """Create a key and print it once (only its hash is stored)."""
    from zhiying.keys.service import create_key

    if write == admin:
        raise typer.BadParameter("give exactly one of --write or --admin")
    with stores_for_cli() as stores:
        key = create_key(stores.engine, "write" if write else "admin", stores.clock.now(), name)
    print(key)


@app.command("list")
def list_() -> None:
    """List keys (ids and kinds, never the keys themselves)."""
    from zhiying.keys.service import list_keys

    with stores_for_cli() as stores:
        rows = list_keys(stores.engine)
    table = Table("key id", "kind", "name", "created", "revoked")
    for r in rows:
        table.add_row(
            str(r["key_id"]),
            str(r["kind"]),
            str(r["name"]),
            str(r["created_at"]),
            str(r["revoked_at"] or ""),
        )
    console.print(table)


@app.command()
def revoke(key_id: str) -> None:
    """Revoke a key by its id."""
    from zhiying.keys.service import revoke_key

    with stores_for_cli() as stores:
        ok = revoke_key(stores.engine, key_id, stores.clock.now())
    if not ok:
        console.print(f"no active key {key_id}")
        raise typer.Exit(1)
    console.print(f"revoked {key_id}")
