"""Bulk inserts for batch issuance: one DBAPI ``executemany`` (``COPY`` on PostgreSQL)
with values converted once.

SQLAlchemy converts every bound value of every row (datetime formatting on SQLite
alone costs more than the insert). A batch repeats the same instants and template
values on every row, so each distinct value is converted once here with the column
type's own bind processor, and the rows go to the driver as tuples.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Connection


def bulk_insert(
    conn: Connection, table: sa.Table, columns: Sequence[str], rows: Sequence[Sequence[Any]]
) -> None:
    """Insert ``rows`` (tuples in ``columns`` order) into ``table`` in one ``executemany``."""
    if not rows:
        return
    dialect = conn.dialect
    mark = "?" if dialect.paramstyle == "qmark" else "%s"
    quote = dialect.identifier_preparer.quote
    sql = (
        f"INSERT INTO {quote(table.name)} ({', '.join(quote(c) for c in columns)}) "
        f"VALUES ({', '.join(mark for _ in columns)})"
    )
    procs: list[Callable[[Any], Any] | None] = [
        table.c[c].type.dialect_impl(dialect).bind_processor(dialect) for c in columns
    ]
    memos: list[dict[Any, Any]] = [{} for _ in columns]

    def convert(i: int, value: Any) -> Any:
        proc = procs[i]
        if proc is None or value is None:
            return value
        memo = memos[i]
        try:
            return memo[value]
        except KeyError:
            memo[value] = out = proc(value)
            return out
        except TypeError:  # unhashable (JSON)
            return proc(value)

    if all(p is None for p in procs):
        converted = [tuple(r) for r in rows]
    else:
        active = [i for i, p in enumerate(procs) if p is not None]
        converted = []
        for r in rows:
            values = list(r)
            for i in active:
                values[i] = convert(i, values[i])
            converted.append(tuple(values))
    if dialect.name == "postgresql":
        # COPY is PostgreSQL's bulk path (several times an executemany), in this transaction.
        cols = ", ".join(quote(c) for c in columns)
        raw: Any = conn.connection.dbapi_connection
        with raw.cursor() as cur, cur.copy(f"COPY {quote(table.name)} ({cols}) FROM STDIN") as cp:
            for row in converted:
                cp.write_row(row)
        return
    conn.exec_driver_sql(sql, converted)
