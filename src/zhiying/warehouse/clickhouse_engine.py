"""ClickHouse adapters: chdb (ClickHouse's engine in-process) and a server via clickhouse-connect.

Both speak the same SQL, so one class holds the logic and two small runners
differ only in how a statement reaches the engine. No ClickHouse server runs on
the development machine (Debian ships 18.16), so the tests run the server runner's
client code on clickhouse-connect's embedded chDB backend (``clickhouse+chdb://``).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Protocol

import pyarrow as pa

from zhiying.warehouse.base import WarehouseError
from zhiying.warehouse.schema import Dialect


class _Runner(Protocol):
    def command(self, sql: str) -> None: ...
    def arrow(self, sql: str) -> pa.Table: ...
    def insert_select(self, table: str, sql_with_batch: str, data: pa.Table) -> None: ...
    def close(self) -> None: ...


class _ChdbRunner:
    def __init__(self, path: str, database: str) -> None:
        import chdb.session

        Path(path).mkdir(parents=True, exist_ok=True)
        make_session: Any = chdb.session.Session  # chdb ships no type hints
        self._session: Any = make_session(path)
        self._session.query(f"CREATE DATABASE IF NOT EXISTS `{database}`")
        # Standard SQL outer joins (NULL, not the type's default, for no match),
        # as ibis's ClickHouse backend also expects.
        self._session.query("SET join_use_nulls = 1")
        self._database = database
        self._lock = threading.Lock()  # a chdb session is not safe across threads

    def _q(self, sql: str, fmt: str = "CSV") -> Any:
        with self._lock:
            return self._session.query(f"USE `{self._database}`; {sql}", fmt)

    def command(self, sql: str) -> None:
        self._q(sql)

    def arrow(self, sql: str) -> pa.Table:
        result = self._q(sql, "ArrowTable")
        assert isinstance(result, pa.Table)
        return result

    def insert_select(self, table: str, sql_with_batch: str, data: pa.Table) -> None:
        # chdb's Python() table function reads a local variable by name.
        batch = data  # noqa: F841 - read by chdb through Python(batch)
        with self._lock:
            self._session.query(
                f"USE `{self._database}`; " + sql_with_batch.replace("__batch", "Python(batch)")
            )

    def close(self) -> None:
        self._session.close()


class _ServerRunner:
    """Statements through clickhouse-connect's client: over HTTP to a server, or (for
    the tests, ``clickhouse+chdb://``) to its embedded chDB backend, the same client code.

    The client keeps a session (the staging table of :meth:`insert_select` is a
    temporary table, which lives in one), and a client with a session is not safe
    across threads: ClickHouse refuses two queries at once in one session. The
    server's loader, its API handlers and the worker share this warehouse, so every
    statement takes the lock."""

    def __init__(self, database: str, **connect: Any) -> None:
        import clickhouse_connect

        admin = clickhouse_connect.get_client(**connect)
        admin.command(f"CREATE DATABASE IF NOT EXISTS `{database}`")
        admin.close()
        self._client = clickhouse_connect.get_client(
            **connect, database=database, settings={"join_use_nulls": 1}
        )
        self._lock = threading.Lock()

    def command(self, sql: str) -> None:
        with self._lock:
            self._client.command(sql)

    def arrow(self, sql: str) -> pa.Table:
        with self._lock:
            result = self._client.query_arrow(sql)
        assert isinstance(result, pa.Table)
        return result

    def insert_select(self, table: str, sql_with_batch: str, data: pa.Table) -> None:
        # A server cannot read our memory: stage the batch in a temporary table
        # shaped like the target's columns, then insert from it in one statement.
        stage = "__zhiying_stage"
        cols = ", ".join(f"`{name}`" for name in data.column_names)
        with self._lock:
            self._client.command(f"DROP TEMPORARY TABLE IF EXISTS {stage}")
            self._client.command(
                f"CREATE TEMPORARY TABLE {stage} ENGINE = Memory "
                f"AS SELECT {cols} FROM `{table}` WHERE 0"
            )
            try:
                self._client.insert_arrow(stage, data)
                self._client.command(sql_with_batch.replace("__batch", stage))
            finally:
                self._client.command(f"DROP TEMPORARY TABLE IF EXISTS {stage}")

    def close(self) -> None:
        with self._lock:
            self._client.close()


class ClickHouseWarehouse:
    dialect: Dialect = "clickhouse"

    def __init__(self, url: str, runner: _Runner) -> None:
        self.url = url
        self._runner = runner

    @classmethod
    def chdb(cls, path: str, database: str = "zhiying") -> ClickHouseWarehouse:
        return cls(f"chdb://{path}", _ChdbRunner(path, database))

    @classmethod
    def server(
        cls,
        host: str,
        port: int,
        database: str,
        username: str = "default",
        password: str = "",
        *,
        secure: bool = False,
    ) -> ClickHouseWarehouse:
        """A ClickHouse server over HTTP, or HTTPS when ``secure``."""
        scheme = "clickhouses" if secure else "clickhouse"
        runner = _ServerRunner(
            database, host=host, port=port, username=username, password=password, secure=secure
        )
        return cls(f"{scheme}://{host}:{port}/{database}", runner)

    @classmethod
    def client_on_chdb(cls, path: str, database: str = "zhiying") -> ClickHouseWarehouse:
        """clickhouse-connect's client on its embedded chDB backend: the statements,
        staging and Arrow transfers of :meth:`server` without a server (tests; one
        chDB engine per process, as for :meth:`chdb`)."""
        Path(path).mkdir(parents=True, exist_ok=True)
        runner = _ServerRunner(database, interface="chdb", path=path)
        return cls(f"clickhouse+chdb://{path}", runner)

    def execute(self, sql: str) -> None:
        try:
            self._runner.command(sql)
        except Exception as exc:
            raise WarehouseError(str(exc), sql) from exc

    def query(self, sql: str) -> pa.Table:
        try:
            return self._runner.arrow(sql)
        except Exception as exc:
            raise WarehouseError(str(exc), sql) from exc

    def insert(self, table: str, data: pa.Table) -> int:
        cols = ", ".join(f"`{name}`" for name in data.column_names)
        return self.insert_select(table, data, f"SELECT {cols} FROM __batch")

    def insert_select(self, table: str, data: pa.Table, select_sql: str) -> int:
        cols = ", ".join(f"`{name}`" for name in data.column_names)
        sql = f"INSERT INTO `{table}` ({cols}) {select_sql}"
        before = self._count(table)
        try:
            self._runner.insert_select(table, sql, data)
        except Exception as exc:
            raise WarehouseError(str(exc), sql) from exc
        return self._count(table) - before

    def _count(self, table: str) -> int:
        return int(self.query(f"SELECT count() AS n FROM `{table}`").column("n")[0].as_py())

    def close(self) -> None:
        self._runner.close()
