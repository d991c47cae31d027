"""Settings from the environment (``ZHIYING_*``): the only module that reads env.

Both stores are opened from URLs so a deployment that outgrows one machine
switches ``ZHIYING_DATABASE_URL`` to PostgreSQL and ``ZHIYING_WAREHOUSE_URL``
to ClickHouse and changes nothing else.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Runtime settings. Defaults give an embedded install under ``./.zhiying``."""

    model_config = SettingsConfigDict(env_prefix="ZHIYING_", extra="ignore")

    data_dir: Path = Field(default=Path(".zhiying"), description="Where embedded stores live.")
    database_url: str | None = Field(
        default=None,
        description="Operational store (SQLAlchemy URL). Default: SQLite file in the data dir.",
    )
    warehouse_url: str | None = Field(
        default=None,
        description="Warehouse: duckdb://PATH, chdb://PATH or clickhouse://host:port/db. "
        "Default: DuckDB file in the data dir.",
    )
    default_phone_region: str = Field(
        default="CN", description="Region used to read phone numbers written without +country."
    )
    dedup_window_days: int = Field(
        default=7, ge=1, description="Look-back window in which a repeated messageId is dropped."
    )
    sqlite_cache_mb: int = Field(
        default=256,
        ge=2,
        description="Page cache of each SQLite connection, in MiB (allocated as pages are "
        "read). With SQLite's own 2 MiB, inserts into the identifier indexes read pages back "
        "once a store outgrows it: 700k random identifiers into a fresh store took 19.6 s "
        "with 2 MiB and 6.5 s with 256 MiB.",
    )
    ingest_spool: bool = Field(
        default=True,
        description="Spool mode of `zhiying serve` with an embedded DuckDB file: a request is "
        "answered once its events are synced to the spool beside the warehouse file, and a "
        "loader thread stores them in large groups (docs/ingestion.md). False: answer after "
        "storing each group of requests (direct mode).",
    )
    api_url: str = Field(
        default="http://127.0.0.1:8000",
        description="Where the CLI finds a running `zhiying serve` when it holds the warehouse.",
    )
    api_key: str | None = Field(default=None, description="Admin key the CLI uses with api_url.")

    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'zhiying.sqlite3').resolve()}"

    def resolved_warehouse_url(self) -> str:
        if self.warehouse_url:
            return self.warehouse_url
        return f"duckdb://{(self.data_dir / 'warehouse.duckdb').resolve()}"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Settings of this process, read once."""
    return Settings()
