"""Helpers every command group shares: settings, opened stores, console, errors."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import typer
from rich.console import Console

from zhiying.config import get_settings
from zhiying.errors import ZhiyingError
from zhiying.runtime import Stores, open_stores

console = Console()
err_console = Console(stderr=True)


@contextmanager
def stores_for_cli() -> Iterator[Stores]:
    """Open the stores for one command; domain errors become a clean exit 1."""
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
