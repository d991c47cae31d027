"""Helpers every command group shares: settings, opened stores, console, errors.

The CLI modules import the services (and with them pandas, ibis, DuckDB,
SQLAlchemy…) inside the command functions, not at the top: ``zhiying --help``
and every command would otherwise pay for the whole analytical stack before
doing anything (tests/test_cli_startup.py keeps it out).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import typer
from rich.console import Console

from zhiying.errors import ZhiyingError

if TYPE_CHECKING:
    from zhiying.runtime import Stores

console = Console()
err_console = Console(stderr=True)


@contextmanager
def stores_for_cli() -> Iterator[Stores]:
    """Open the stores for one command; domain errors become a clean exit 1."""
    from zhiying.config import get_settings  # local: see the module docstring
    from zhiying.runtime import open_stores

    try:
        stores = open_stores(get_settings())
    except ZhiyingError as exc:
        err_console.print(f"[red]error:[/red] {exc.message}")
        raise typer.Exit(1) from exc
    try:
        yield stores
    except ZhiyingError as exc:
        where = f" ({exc.field})" if exc.field else ""
        err_console.print(f"[red]error{where}:[/red] {exc.message}")
        raise typer.Exit(1) from exc
    finally:
        stores.close()
