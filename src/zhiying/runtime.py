"""The opened stores of one process, handed to services, the API and the CLI.

One ``Stores`` per process: the operational engine (thread-safe pool), the
warehouse (one writer), the clock and the settings.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import Engine

from zhiying.clock import Clock, SystemClock
from zhiying.config import Settings
from zhiying.ingest.person_keys import backfill as backfill_person_keys
from zhiying.store import make_engine, upgrade
from zhiying.warehouse import Warehouse, open_warehouse


@dataclass
class Stores:
    settings: Settings
    engine: Engine
    warehouse: Warehouse
    clock: Clock = field(default_factory=SystemClock)

    def close(self) -> None:
        self.warehouse.close()
        self.engine.dispose()


def open_stores(settings: Settings, *, clock: Clock | None = None, migrate: bool = True) -> Stores:
    """Open both stores from ``settings``; when ``migrate``, apply migrations first and
    key the warehouse rows an older version wrote (``zhiying.ingest.person_keys``)."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    url = settings.resolved_database_url()
    if migrate:
        upgrade(url)
    engine = make_engine(url, sqlite_cache_mb=settings.sqlite_cache_mb)
    warehouse = open_warehouse(settings.resolved_warehouse_url())
    if migrate:
        backfill_person_keys(engine, warehouse)
    return Stores(
        settings=settings, engine=engine, warehouse=warehouse, clock=clock or SystemClock()
    )
