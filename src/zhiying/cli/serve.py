"""``zhiying serve``: the API and the worker (scheduled jobs) in one process.

uvicorn, the API and the worker are imported inside the command so that the
CLI starts without them (see ``zhiying.cli.common``).
"""

from __future__ import annotations

import logging

import typer

from zhiying.cli.common import stores_for_cli


def serve(
    host: str = typer.Option("127.0.0.1", help="Interface to listen on."),
    port: int = typer.Option(8000, help="TCP port."),
    log_level: str = typer.Option("info", help="uvicorn log level."),
    worker: bool = typer.Option(
        True, help="Run the scheduled jobs (segment snapshots, tag refreshes, coupon sweeps)."
    ),
    worker_poll: float = typer.Option(15.0, min=0.1, help="Seconds between worker ticks."),
) -> None:
    """Apply migrations, open the stores and serve HTTP until interrupted."""
    import uvicorn

    from zhiying.api.app import create_app
    from zhiying.worker.loop import Worker, WorkerThread

    with stores_for_cli() as stores:
        app = create_app(stores)
        # Access logs carry no keys: Basic credentials travel in headers, which
        # uvicorn does not log.
        logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
        jobs = WorkerThread(Worker(stores), worker_poll) if worker else None
        if jobs is not None:
            jobs.start()
        try:
            uvicorn.run(app, host=host, port=port, log_level=log_level)
        finally:
            if jobs is not None:
                jobs.stop()
