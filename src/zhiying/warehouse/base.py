"""The ``Warehouse`` protocol: a handful of methods each engine implements.

Everything else (event append with dedup, segments, tags, metrics) is written
once against this protocol and against ibis expressions compiled to
``Warehouse.dialect``. Errors carry the SQL that failed.
"""

from __future__ import annotations

from typing import Protocol

import pyarrow as pa

from zhiying.warehouse.schema import Dialect


class WarehouseError(Exception):
    """An engine error, with the statement that caused it."""

    def __init__(self, message: str, sql: str | None = None) -> None:
        super().__init__(message if sql is None else f"{message}\n-- while running:\n{sql}")
        self.sql = sql


class Warehouse(Protocol):
    dialect: Dialect
    url: str

    def execute(self, sql: str) -> None:
        """Run DDL or DML that returns nothing."""
        ...

    def query(self, sql: str) -> pa.Table:
        """Run a query and return its result as Arrow."""
        ...

    def insert(self, table: str, data: pa.Table) -> int:
        """Append ``data`` (columns by name) to ``table``; returns rows written."""
        ...

    def insert_select(self, table: str, data: pa.Table, select_sql: str) -> int:
        """Append the rows of ``select_sql`` to ``table``, where ``select_sql`` reads the
        Arrow table ``data`` under the name ``__batch``; returns rows written.

        This lets callers filter a batch against what is stored (dedup) in one statement.
        """
        ...

    def close(self) -> None: ...
