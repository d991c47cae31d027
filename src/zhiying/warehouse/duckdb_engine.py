"""DuckDB adapter: the embedded default warehouse (one file, one writing process).

A DuckDB file can be opened read-write by one process only. While ``zhiying
serve`` runs it owns the file; another process that tries gets ``StoreBusy``
with a message saying so, never a bare lock error.
"""

from __future__ import annotations

import threading
from pathlib import Path

import duckdb
import pyarrow as pa

from zhiying.errors import StoreBusy
from zhiying.warehouse.base import WarehouseError
from zhiying.warehouse.schema import Dialect


class DuckDBWarehouse:
    dialect: Dialect = "duckdb"

    def __init__(self, path: str, *, read_only: bool = False) -> None:
        self.url = f"duckdb://{path}"
        self.path = path
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        try:
            self._con = duckdb.connect(path, read_only=read_only)
        except duckdb.IOException as exc:
            if "lock" in str(exc).lower():
                raise StoreBusy(
                    f"the warehouse {path} is held by another process (usually a running "
                    "`zhiying serve`); stop it, or use the HTTP API of that server",
                    field="warehouse_url",
                ) from exc
            raise
        # One writer at a time inside this process; readers use their own cursors.
        self._write_lock = threading.Lock()

    @property
    def connection(self) -> duckdb.DuckDBPyConnection:
        """The underlying connection (for ibis, which can wrap it)."""
        return self._con

    def execute(self, sql: str) -> None:
        try:
            with self._write_lock:
                self._con.execute(sql)
        except duckdb.Error as exc:
            raise WarehouseError(str(exc), sql) from exc

    def query(self, sql: str) -> pa.Table:
        cursor = self._con.cursor()
        try:
            result = cursor.sql(sql).to_arrow_table()
            assert isinstance(result, pa.Table)
            return result
        except duckdb.Error as exc:
            raise WarehouseError(str(exc), sql) from exc
        finally:
            cursor.close()

    def insert(self, table: str, data: pa.Table) -> int:
        cols = ", ".join(f'"{name}"' for name in data.column_names)
        return self.insert_select(table, data, f"SELECT {cols} FROM __batch")

    def insert_select(self, table: str, data: pa.Table, select_sql: str) -> int:
        cols = ", ".join(f'"{name}"' for name in data.column_names)
        sql = f'INSERT INTO "{table}" ({cols}) {select_sql}'
        try:
            with self._write_lock:
                cursor = self._con.cursor()
                try:
                    cursor.register("__batch", data)
                    row = cursor.execute(sql).fetchone()
                    cursor.unregister("__batch")
                finally:
                    cursor.close()
        except duckdb.Error as exc:
            raise WarehouseError(str(exc), sql) from exc
        return int(row[0]) if row else 0

    def close(self) -> None:
        self._con.close()
