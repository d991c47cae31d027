"""``zhiying serve``: the API (and, later, the worker) in one process."""

from __future__ import annotations

import logging

import typer
import uvicorn

from zhiying.api.app import create_app
from zhiying.cli.common import stores_for_cli


def serve(
    host: str = typer.Option("127.0.0.1", help="Interface to listen on."),
    port: int = typer.Option(8000, help="TCP port."),
    log_level: str = typer.Option("info", help="uvicorn log level."),
) -> None:
    """Apply migrations, open the stores and serve HTTP until interrupted."""
    with stores_for_cli() as stores:
        app = create_app(stores)
        # Access logs carry no keys: Basic credentials travel in headers, which
        # uvicorn does not log.
        logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
        uvicorn.run(app, host=host, port=port, log_level=log_level)
