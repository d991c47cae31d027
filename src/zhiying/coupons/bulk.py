"""Bulk inserts for batch issuance: one DBAPI ``executemany`` (``COPY`` on PostgreSQL)
with values converted once.

SQLAlchemy converts every bound value of every row (datetime formatting on SQLite
alone costs more than the insert). A batch repeats the same instants and template
values on every row, so each distinct value is converted once here with the column
type's own bind processor, and the rows go to the driver as tuples.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from itertools import repeat
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


class Same:
    """A value repeated on every row of ``insert_columns`` (converted once)."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


Column = Sequence[str] | Sequence[int] | Same

_COPY_BLOCK = 4 << 20  # characters per COPY write
_SPECIAL = ("\\", "\t", "\n", "\r")


def insert_columns(
    conn: Connection, table: sa.Table, columns: Sequence[str], values: Sequence[Column]
) -> None:
    """Insert rows given column by column: each of ``values`` is a list (one ``str`` or
    ``int`` per row, stored as is) or a ``Same`` constant (converted once by the column
    type). No per-row conversion in Python: rows are zipped in C and go to the DBAPI
    ``executemany`` (SQLite) or to ``COPY`` as preformatted text blocks (PostgreSQL).
    """
    lists = [v for v in values if not isinstance(v, Same)]
    if not lists:
        raise ValueError("insert_columns needs at least one per-row column")
    n = len(lists[0])
    if n == 0:
        return
    if any(len(v) != n for v in lists):
        raise ValueError("per-row columns of different lengths")
    dialect = conn.dialect
    consts: list[Any] = []
    for name, v in zip(columns, values, strict=True):
        if isinstance(v, Same):
            proc = table.c[name].type.dialect_impl(dialect).bind_processor(dialect)
            consts.append(v.value if proc is None or v.value is None else proc(v.value))
        else:
            consts.append(None)
    quote = dialect.identifier_preparer.quote
    cols = ", ".join(quote(c) for c in columns)
    raw: Any = conn.connection.dbapi_connection
    if dialect.name == "postgresql":
        texts: list[Any] = []
        for v, const in zip(values, consts, strict=True):
            texts.append(repeat(_copy_text(const), n) if isinstance(v, Same) else _copy_list(v))
        lines = list(map("\t".join, zip(*texts, strict=False)))
        with raw.cursor() as cur, cur.copy(f"COPY {quote(table.name)} ({cols}) FROM STDIN") as cp:
            step = max(1, _COPY_BLOCK // max(1, len(lines[0]) + 1))
            for start in range(0, n, step):
                cp.write("\n".join(lines[start : start + step]) + "\n")
        return
    marks = ", ".join("?" if dialect.paramstyle == "qmark" else "%s" for _ in columns)
    iters = [
        repeat(c, n) if isinstance(v, Same) else v for v, c in zip(values, consts, strict=True)
    ]
    cur = raw.cursor()
    try:
        cur.executemany(
            f"INSERT INTO {quote(table.name)} ({cols}) VALUES ({marks})", zip(*iters, strict=False)
        )
    finally:
        cur.close()


def _copy_text(value: Any) -> str:
    """One value in PostgreSQL's COPY text format."""
    if value is None:
        return "\\N"
    if isinstance(value, bool):
        return "t" if value else "f"
    if isinstance(value, datetime):
        return value.isoformat()
    return _escape(str(value))


def _escape(s: str) -> str:
    return s.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def _copy_list(values: Sequence[str] | Sequence[int]) -> list[str]:
    out = [str(v) for v in values] if values and not isinstance(values[0], str) else list(values)
    joined = "".join(out)  # type: ignore[arg-type]
    if any(c in joined for c in _SPECIAL):
        out = [_escape(s) for s in out]  # type: ignore[arg-type]
    return out  # type: ignore[return-value]
