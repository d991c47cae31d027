"""The warehouse: the append-only event table and every analytical read.

``open_warehouse(url)`` picks the engine from the URL:
``duckdb://PATH`` (default), ``chdb://PATH`` (ClickHouse in-process) or
``clickhouse://[user:password@]host:port/db`` (a ClickHouse server; ``clickhouses://``
over HTTPS, port 8443 by default). ``clickhouse+chdb://PATH`` runs the server adapter's
clickhouse-connect client on its embedded chDB backend: how the tests exercise it.
"""

from __future__ import annotations

from contextlib import suppress
from urllib.parse import unquote, urlparse

from zhiying.warehouse.base import Warehouse, WarehouseError
from zhiying.warehouse.schema import (
    DERIVED,
    TABLES,
    add_column_sql,
    add_derived_sql,
    create_table_sql,
)


def open_warehouse(url: str, *, read_only: bool = False, create: bool = True) -> Warehouse:
    """Open the warehouse at ``url`` and (unless ``create`` is false) create missing tables."""
    parsed = urlparse(url)
    warehouse: Warehouse
    if parsed.scheme == "duckdb":
        from zhiying.warehouse.duckdb_engine import DuckDBWarehouse

        warehouse = DuckDBWarehouse(
            url.removeprefix("duckdb://") or ":memory:", read_only=read_only
        )
    elif parsed.scheme == "chdb":
        from zhiying.warehouse.clickhouse_engine import ClickHouseWarehouse

        warehouse = ClickHouseWarehouse.chdb(url.removeprefix("chdb://"))
    elif parsed.scheme in ("clickhouse", "clickhouses"):
        from zhiying.warehouse.clickhouse_engine import ClickHouseWarehouse

        secure = parsed.scheme == "clickhouses"
        warehouse = ClickHouseWarehouse.server(
            parsed.hostname or "localhost",
            parsed.port or (8443 if secure else 8123),
            parsed.path.lstrip("/") or "zhiying",
            unquote(parsed.username or "default"),
            unquote(parsed.password or ""),
            secure=secure,
        )
    elif parsed.scheme == "clickhouse+chdb":
        from zhiying.warehouse.clickhouse_engine import ClickHouseWarehouse

        warehouse = ClickHouseWarehouse.client_on_chdb(url.removeprefix("clickhouse+chdb://"))
    else:
        raise ValueError(
            f"warehouse_url: unknown scheme {parsed.scheme!r}; use duckdb://, chdb:// or "
            "clickhouse:// (clickhouses:// for HTTPS)"
        )
    if create and not read_only:
        ensure_tables(warehouse)
    return warehouse


def ensure_tables(warehouse: Warehouse) -> None:
    """Create the warehouse tables that do not exist yet and add the columns a table
    lacks (idempotent).

    The warehouse has no migration tool: its tables only ever gain nullable
    columns, appended last (``schema.py``), so a table created by an older
    version is brought up to date by ``ALTER TABLE … ADD COLUMN`` and reads the
    same as a new one. Filling the new columns of old rows is the job of the
    code that introduced them (``zhiying.ingest.person_keys.backfill``), except
    for derived columns (``schema.DERIVED``), which are added after the others
    and filled for the stored rows here: they are a function of columns every
    row already has.
    """
    present = _columns(warehouse)
    for name, (schema, order_by) in TABLES.items():
        derived = DERIVED.get(name, ())
        have = present.get(name)
        if have is None:
            warehouse.execute(create_table_sql(name, schema, warehouse.dialect, order_by, derived))
            continue
        for column in schema:
            if column.name not in have:
                warehouse.execute(add_column_sql(name, column, warehouse.dialect))
        missing = tuple(d for d in derived if d.name not in have)
        statements = add_derived_sql(name, schema, derived, missing, warehouse.dialect)
        if statements and warehouse.dialect == "duckdb":
            try:
                warehouse.execute(";\n".join(statements))  # one transaction
            except WarehouseError:
                with suppress(WarehouseError):  # leave the connection usable
                    warehouse.execute("ROLLBACK")
                raise
        else:
            for sql in statements:
                warehouse.execute(sql)


def _columns(warehouse: Warehouse) -> dict[str, set[str]]:
    if warehouse.dialect == "duckdb":
        sql = (
            "SELECT table_name, column_name FROM information_schema.columns "
            "WHERE table_schema = current_schema()"
        )
    else:
        sql = "SELECT table AS table_name, name AS column_name FROM system.columns " + (
            "WHERE database = currentDatabase()"
        )
    rows = warehouse.query(sql).to_pylist()
    found: dict[str, set[str]] = {}
    for row in rows:
        found.setdefault(str(row["table_name"]), set()).add(str(row["column_name"]))
    return found


__all__ = ["Warehouse", "WarehouseError", "ensure_tables", "open_warehouse"]
