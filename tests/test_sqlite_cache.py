"""The operational SQLite store's page cache follows ``Settings.sqlite_cache_mb``."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import text

from zhiying.config import Settings
from zhiying.runtime import open_stores
from zhiying.store.engine import DEFAULT_SQLITE_CACHE_MB, make_engine


def _cache_kib(engine_url: str, **kwargs: int) -> int:
    engine = make_engine(engine_url, **kwargs)
    try:
        with engine.connect() as conn:
            return int(conn.execute(text("PRAGMA cache_size")).scalar_one())
    finally:
        engine.dispose()


def test_every_sqlite_connection_gets_the_configured_page_cache(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ops.sqlite3'}"
    assert _cache_kib(url) == -DEFAULT_SQLITE_CACHE_MB * 1024
    assert _cache_kib(url, sqlite_cache_mb=8) == -8 * 1024


def test_open_stores_takes_the_cache_size_from_settings(tmp_path: Path) -> None:
    stores = open_stores(Settings(data_dir=tmp_path, sqlite_cache_mb=16))
    try:
        with stores.engine.connect() as conn:
            assert conn.execute(text("PRAGMA cache_size")).scalar_one() == -16 * 1024
    finally:
        stores.close()
