"""Bulk reads and writes of the identity tables, straight to the DB-API driver.

At hundreds of thousands of rows per batch, SQLAlchemy's per-value bind
processing and its rendering of long ``IN (...)`` lists cost more than the
statements themselves. These few plain statements therefore go to the driver,
inside the caller's SQLAlchemy transaction, with values converted the way
``zhiying.store.tables.UtcDateTime`` stores them (SQLite: naive UTC text with
microseconds; PostgreSQL: ``timestamptz``):

* a list of values is ONE parameter: ``= ANY(%s)`` (a PostgreSQL array) or
  ``IN (SELECT value FROM json_each(?))`` (a JSON array on SQLite), so a
  lookup of 100 000 identifiers is one statement per kind;
* inserts are ``COPY`` on PostgreSQL and ``executemany`` on SQLite (in-process,
  no round trips);
* bulk updates go through a temporary table and one ``UPDATE … FROM`` on
  PostgreSQL.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, Final

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
from sqlalchemy import Connection

REBUILD_MIN_ROWS: Final = 50_000
"""``BulkSql.insert(..., rebuild_indexes=True)`` considers rebuilding from this many rows."""


class BulkSql:
    """Driver-level statements on ``conn`` (SQLite or PostgreSQL)."""

    def __init__(self, conn: Connection) -> None:
        if conn.dialect.name not in ("sqlite", "postgresql"):
            raise ValueError(
                f"identity resolution runs on SQLite and PostgreSQL, not {conn.dialect.name}"
            )
        self.conn = conn
        self.sqlite = conn.dialect.name == "sqlite"
        self.mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"

    # --- values ---------------------------------------------------------------------

    def time(self, at: datetime | None) -> Any:
        """An aware datetime as the driver should receive it."""
        if at is None:
            return None
        if not self.sqlite:
            return at if at.tzinfo is UTC else at.astimezone(UTC)
        # Formatted directly: hashing an aware datetime (for a memo) costs more
        # than a naive isoformat, which is much faster than strftime.
        utc = at if at.tzinfo is UTC else at.astimezone(UTC)
        text = utc.replace(tzinfo=None).isoformat(" ")
        return text if utc.microsecond else text + ".000000"

    def times(self, values: Sequence[datetime]) -> list[Any]:
        """``time`` of many aware datetimes; on SQLite formatted in bulk.

        NumPy's ISO formatting is several times faster than ``isoformat`` per
        value (or Arrow's ``strftime``); ``T`` becomes the stored space.
        """
        if not self.sqlite:
            return [self.time(v) for v in values]
        micros = pa.array(values, pa.timestamp("us", tz="UTC")).cast(pa.int64()).to_numpy()
        iso = np.datetime_as_string(micros.astype("datetime64[us]"), unit="us")
        texts: list[Any] = pc.replace_substring(pa.array(iso), "T", " ").to_pylist()
        return texts

    def micros(self, values: Sequence[Any]) -> np.ndarray:
        """Stored instants (as the driver returned them) as naive-UTC microseconds."""
        if self.sqlite:
            stamps = pa.array(values, pa.string()).cast(pa.timestamp("us"))
        else:
            stamps = pa.array(values, pa.timestamp("us", tz="UTC"))
        return np.asarray(stamps.cast(pa.int64()).to_numpy(zero_copy_only=False), dtype=np.int64)

    def times_of_micros(self, micros: np.ndarray) -> list[Any]:
        """Naive-UTC microseconds as the driver should receive them (``time`` in bulk)."""
        if not self.sqlite:
            return [at.replace(tzinfo=UTC) for at in micros.astype("datetime64[us]").tolist()]
        # Arrow's cast spells a timestamp exactly as stored: "YYYY-MM-DD HH:MM:SS.ffffff".
        texts: list[Any] = pa.array(micros, pa.timestamp("us")).cast(pa.string()).to_pylist()
        return texts

    def read_time(self, value: Any) -> datetime:
        """A stored instant back as an aware UTC datetime."""
        if isinstance(value, str):
            return datetime.fromisoformat(value).replace(tzinfo=UTC)  # SQLite: naive UTC text
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)

    def in_values(self, values: Sequence[str]) -> tuple[str, Any]:
        """``(SQL after the column, parameter)`` testing membership in ``values``."""
        if self.sqlite:
            return "IN (SELECT value FROM json_each(?))", orjson.dumps(list(values)).decode()
        return "= ANY(CAST(%s AS text[]))", list(values)

    # --- statements -----------------------------------------------------------------

    def fetch(self, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        """Rows of ``sql`` (written with ``?`` placeholders) from a raw cursor.

        Same connection, so same transaction; SQLAlchemy's row objects would
        cost more than the query for a million rows.
        """
        raw: Any = self.conn.connection.dbapi_connection
        cursor = raw.cursor()
        try:
            cursor.execute(sql if self.sqlite else sql.replace("?", self.mark), params)
            rows: list[tuple[Any, ...]] = cursor.fetchall()
        finally:
            cursor.close()
        return rows

    def many(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        """``executemany`` of ``sql``, written with ``?`` placeholders."""
        if rows:
            self.conn.exec_driver_sql(sql if self.sqlite else sql.replace("?", self.mark), rows)

    def _copy(self, table: str, columns: Sequence[str], rows: list[tuple[Any, ...]]) -> None:
        raw: Any = self.conn.connection.driver_connection  # psycopg 3, in our transaction
        with (
            raw.cursor() as cursor,
            cursor.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy,
        ):
            for row in rows:
                copy.write_row(row)

    def insert(
        self,
        table: str,
        columns: Sequence[str],
        rows: list[tuple[Any, ...]],
        *,
        rebuild_indexes: bool = False,
    ) -> None:
        """Insert ``rows``: ``COPY`` on PostgreSQL, ``executemany`` on SQLite.

        ``rebuild_indexes`` (SQLite): when the rows are many and at least as many as
        the table holds, its non-unique indexes are dropped before the insert and
        created again after it (:meth:`_without_plain_indexes`)."""
        if not rows:
            return
        if not self.sqlite:
            self._copy(table, columns, rows)
            return
        marks = ", ".join("?" for _ in columns)
        sql = f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})"
        if rebuild_indexes and self._worth_rebuilding(table, len(rows)):
            with self._without_plain_indexes(table):
                self.many(sql, rows)
            return
        self.many(sql, rows)

    def _worth_rebuilding(self, table: str, adding: int) -> bool:
        """Is building ``table``'s indexes afresh after adding ``adding`` rows cheaper
        than growing them row by row? Building sorts every entry once; adding
        inserts each new entry at a random place (a ONE_ID is random). 723k
        identifiers into an empty table: 3.6 s with the ``one_id`` index, 2.6 s
        with it dropped and created again (sqlite 3.40); with as many rows already
        stored: 4.2 vs 3.6 s. ``max(rowid)`` bounds the rows held (one B-tree
        descent, where ``count(*)`` reads the whole table)."""
        if adding < REBUILD_MIN_ROWS:
            return False
        try:
            held = self.fetch(f"SELECT max(rowid) FROM {table}", ())[0][0]
        except sqlite3.OperationalError:  # a WITHOUT ROWID table: keep its indexes
            return False
        return held is None or int(held) <= adding

    @contextmanager
    def _without_plain_indexes(self, table: str) -> Iterator[None]:
        """SQLite: ``table``'s non-unique indexes dropped for the block, then created
        again from their stored definitions (``sqlite_master.sql``), also when the
        block raises, inside the caller's transaction: a rollback restores them as
        well, and other connections never see the table without them. Unique
        indexes stay: they decide what an insert may do."""
        plain = {
            str(name)
            for _, name, unique, origin, *_ in self.fetch(f"PRAGMA index_list({table})", ())
            if not unique and origin == "c"
        }
        found = self.fetch(
            "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = ? "
            "AND sql IS NOT NULL ORDER BY name",
            (table,),
        )
        definitions = [(str(name), str(sql)) for name, sql in found if name in plain]
        for name, _ in definitions:
            self.conn.exec_driver_sql(f'DROP INDEX "{name}"')
        try:
            yield
        finally:
            for _, sql in definitions:
                self.conn.exec_driver_sql(sql)

    def insert_new(
        self,
        table: str,
        columns: Sequence[str],
        rows: list[tuple[Any, ...]],
        temp_types: Sequence[str] = (),
    ) -> None:
        """Insert ``rows``, skipping those a unique index already holds.

        SQLite: ``executemany`` of ``INSERT … ON CONFLICT DO NOTHING``; PostgreSQL:
        ``COPY`` into a temporary table (columns of ``temp_types``) and one
        ``INSERT … SELECT … ON CONFLICT DO NOTHING``.
        """
        if not rows:
            return
        names = ", ".join(columns)
        if self.sqlite or len(rows) <= 200:
            marks = ", ".join("?" for _ in columns)
            self.many(
                f"INSERT INTO {table} ({names}) VALUES ({marks}) ON CONFLICT DO NOTHING", rows
            )
            return
        temp = f"zy_new_{table}"
        spec = ", ".join(f"{c} {t}" for c, t in zip(columns, temp_types, strict=True))
        self.conn.exec_driver_sql(
            f"CREATE TEMPORARY TABLE IF NOT EXISTS {temp} ({spec}) ON COMMIT DROP"
        )
        self.conn.exec_driver_sql(f"TRUNCATE {temp}")
        self._copy(temp, columns, rows)
        self.conn.exec_driver_sql(
            f"INSERT INTO {table} ({names}) SELECT {names} FROM {temp} ON CONFLICT DO NOTHING"
        )

    def update_seen(self, rows: list[tuple[Any, ...]]) -> None:
        """Set ``(first_seen, last_seen)`` of identifier ``(kind, value)`` per row.

        The owner is not named, so the ``one_id`` index is left alone (SQLite) and
        PostgreSQL can update in place (HOT).
        """
        if not rows:
            return
        if self.sqlite or len(rows) <= 200:
            self.many(
                "UPDATE identifiers SET first_seen = ?, last_seen = ? WHERE kind = ? AND value = ?",
                rows,
            )
            return
        self.conn.exec_driver_sql(
            "CREATE TEMPORARY TABLE IF NOT EXISTS zy_seen_updates (first_seen timestamptz, "
            "last_seen timestamptz, kind text, value text) ON COMMIT DROP"
        )
        self.conn.exec_driver_sql("TRUNCATE zy_seen_updates")
        self._copy("zy_seen_updates", ("first_seen", "last_seen", "kind", "value"), rows)
        self.conn.exec_driver_sql(
            "UPDATE identifiers AS i SET first_seen = u.first_seen, last_seen = u.last_seen "
            "FROM zy_seen_updates AS u WHERE i.kind = u.kind AND i.value = u.value"
        )

    def update_identifiers(self, rows: list[tuple[Any, ...]]) -> None:
        """Set ``(one_id, first_seen, last_seen)`` of identifier ``(kind, value)`` per row."""
        if not rows:
            return
        if self.sqlite or len(rows) <= 200:
            self.many(
                "UPDATE identifiers SET one_id = ?, first_seen = ?, last_seen = ? "
                "WHERE kind = ? AND value = ?",
                rows,
            )
            return
        self.conn.exec_driver_sql(
            "CREATE TEMPORARY TABLE IF NOT EXISTS zy_identifier_updates (one_id text, "
            "first_seen timestamptz, last_seen timestamptz, kind text, value text) "
            "ON COMMIT DROP"
        )
        self.conn.exec_driver_sql("TRUNCATE zy_identifier_updates")
        self._copy(
            "zy_identifier_updates", ("one_id", "first_seen", "last_seen", "kind", "value"), rows
        )
        self.conn.exec_driver_sql(
            "UPDATE identifiers AS i SET one_id = u.one_id, first_seen = u.first_seen, "
            "last_seen = u.last_seen FROM zy_identifier_updates AS u "
            "WHERE i.kind = u.kind AND i.value = u.value"
        )
