"""Where a refresh's rows go: ``tag_values`` (current) and the history of dynamic tags.

Every value a refresh computes is written **once**. The history of a dynamic
tag is the set of its rows that were ever current:

* the current rows live in ``tag_values`` (the latest point of each history);
* when a refresh supersedes them they move to the history store — the table
  ``tag_history`` plus, on DuckDB, *history segments* (tables named
  ``tag_history__<instant>_<run>``, each the ``tag_values`` table a refresh
  replaced, renamed rather than copied).

A refresh of every defined tag (the scheduled, common case) is a **swap**:
the new rows go into a fresh table, which then takes the name
``tag_values`` in one transaction (DuckDB: two renames; ClickHouse:
``EXCHANGE TABLES``); the old table keeps only its superseded dynamic rows
and joins the history — on ClickHouse by ``ATTACH PARTITION ... FROM``
(hard-linked parts, no copy), on DuckDB as a segment, folded into
``tag_history`` later by ``fold_history`` (a copy, done by the scheduler
when no refresh is due). Readers never see a tag without rows.

A refresh of some tags only is done **in place**: the superseded dynamic
rows of those tags are copied to ``tag_history``, then their rows in
``tag_values`` are deleted and the new ones inserted (a reader may briefly
see those tags without rows).

A refresh repeated for the same instant replaces that instant's rows: they
never reach the history. Reading a history (``history_sql``) unions
``tag_history``, the segments and ``tag_values``, without duplicates.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass
from datetime import datetime

from zhiying.warehouse import Warehouse, WarehouseError
from zhiying.warehouse.events import string_literal, timestamp_literal
from zhiying.warehouse.schema import TABLES, TAG_VALUES, create_table_sql

SEGMENT_PREFIX = "tag_history__"
_NEXT = "tag_values__next"
_EMPTY = TAG_VALUES.empty_table()
_COLUMNS = ", ".join(TAG_VALUES.names)


@dataclass(frozen=True)
class Written:
    rows: int
    """Rows the refresh computed (its tags' new values)."""
    history_rows: int
    """Of those, the rows of dynamic tags (each is a point of that tag's history)."""


def _in_list(wh: Warehouse, names: Sequence[str]) -> str:
    return "(" + ", ".join(string_literal(wh, n) for n in names) + ")"


def _superseded_filter(wh: Warehouse, dynamic: Sequence[str], at: datetime) -> str:
    """Rows of ``tag_values`` that become history when ``dynamic`` is recomputed as of ``at``."""
    if not dynamic:
        return "1 = 0"
    return f"tag IN {_in_list(wh, dynamic)} AND computed_at <> {timestamp_literal(wh, at)}"


def _count(wh: Warehouse, table: str, where: str = "1 = 1") -> int:
    result = wh.query(f"SELECT count(*) AS n FROM {table} WHERE {where}")
    return int(result.column("n")[0].as_py())


def write_refresh(
    wh: Warehouse,
    select_sql: str,
    *,
    names: Sequence[str],
    dynamic: Sequence[str],
    at: datetime,
    run_id: str,
    swap: bool,
) -> Written:
    """Store the rows of ``select_sql`` (the compiled refresh of ``names``) as current values.

    ``swap`` must only be true when ``names`` are all defined tags (rows of
    other tags are carried over, which costs a copy of them).
    """
    if swap:
        return _swap(wh, select_sql, names=names, dynamic=dynamic, at=at, run_id=run_id)
    return _in_place(wh, select_sql, names=names, dynamic=dynamic, at=at)


def _in_place(
    wh: Warehouse,
    select_sql: str,
    *,
    names: Sequence[str],
    dynamic: Sequence[str],
    at: datetime,
) -> Written:
    if dynamic:
        wh.insert_select(
            "tag_history",
            _EMPTY,
            f"SELECT {_COLUMNS} FROM tag_values WHERE {_superseded_filter(wh, dynamic, at)}",
        )
    wh.execute(f"DELETE FROM tag_values WHERE tag IN {_in_list(wh, names)}")
    rows = wh.insert_select("tag_values", _EMPTY, select_sql)
    return Written(rows=rows, history_rows=_dynamic_rows(wh, "tag_values", names, dynamic, rows))


def _dynamic_rows(
    wh: Warehouse, table: str, names: Sequence[str], dynamic: Sequence[str], rows: int
) -> int:
    if set(dynamic) == set(names):
        return rows
    if not dynamic:
        return 0
    return _count(wh, table, f"tag IN {_in_list(wh, dynamic)}")


def _swap(
    wh: Warehouse,
    select_sql: str,
    *,
    names: Sequence[str],
    dynamic: Sequence[str],
    at: datetime,
    run_id: str,
) -> Written:
    schema, order_by = TABLES["tag_values"]
    wh.execute(f"DROP TABLE IF EXISTS {_NEXT}")
    wh.execute(create_table_sql(_NEXT, schema, wh.dialect, order_by))
    rows = wh.insert_select(_NEXT, _EMPTY, select_sql)
    # Rows of tags outside this refresh (none when every defined tag is in it) stay current.
    wh.insert_select(
        _NEXT,
        _EMPTY,
        f"SELECT {_COLUMNS} FROM tag_values WHERE tag NOT IN {_in_list(wh, names)}",
    )
    history_rows = _dynamic_rows(wh, _NEXT, names, dynamic, rows)
    if wh.dialect == "duckdb":
        replaced = f"{SEGMENT_PREFIX}{at.strftime('%Y%m%d%H%M%S%f')}_{run_id[:12]}"
        _transaction(
            wh,
            [
                f"ALTER TABLE tag_values RENAME TO {replaced}",
                f"ALTER TABLE {_NEXT} RENAME TO tag_values",
            ],
        )
    else:
        wh.execute(f"EXCHANGE TABLES tag_values AND {_NEXT}")
        replaced = _NEXT  # it holds the replaced rows now
    # Keep only the replaced table's superseded dynamic rows; they become history.
    superseded = _superseded_filter(wh, dynamic, at)
    counts = wh.query(
        "SELECT count(*) AS total, "
        f"coalesce(sum(CASE WHEN {superseded} THEN 1 ELSE 0 END), 0) AS kept FROM {replaced}"
    ).to_pylist()[0]
    if counts["kept"] and counts["kept"] < counts["total"]:
        wh.execute(f"DELETE FROM {replaced} WHERE NOT ({superseded})")
    if not counts["kept"]:
        wh.execute(f"DROP TABLE {replaced}")
    elif wh.dialect != "duckdb":
        _attach_to_history(wh, replaced)
        wh.execute(f"DROP TABLE {replaced}")
    # else: a DuckDB history segment, folded later (fold_history).
    return Written(rows=rows, history_rows=history_rows)


def _transaction(wh: Warehouse, statements: Sequence[str]) -> None:
    """Run DuckDB statements atomically (rolled back on failure)."""
    try:
        wh.execute("BEGIN TRANSACTION; " + "; ".join(statements) + "; COMMIT")
    except WarehouseError:
        with suppress(WarehouseError):  # the failure may have ended it already
            wh.execute("ROLLBACK")
        raise


def _attach_to_history(wh: Warehouse, table: str) -> None:
    """ClickHouse: move ``table``'s parts into ``tag_history`` (hard links), else copy them.

    Attaching needs the same structure and sorting key; a warehouse whose
    ``tag_history`` was created with another key gets a copy instead.
    """
    try:
        wh.execute(f"ALTER TABLE tag_history ATTACH PARTITION tuple() FROM {table}")
    except WarehouseError:
        wh.insert_select("tag_history", _EMPTY, f"SELECT {_COLUMNS} FROM {table}")


def segments(wh: Warehouse) -> list[str]:
    """History segments not yet folded into ``tag_history``, oldest first."""
    if wh.dialect == "duckdb":
        sql = (
            "SELECT table_name AS name FROM duckdb_tables() "
            "WHERE database_name = current_database() AND schema_name = current_schema() "
            f"AND starts_with(table_name, '{SEGMENT_PREFIX}')"
        )
    else:
        sql = (
            "SELECT name FROM system.tables WHERE database = currentDatabase() "
            f"AND startsWith(name, '{SEGMENT_PREFIX}')"
        )
    return sorted(str(n) for n in wh.query(sql).column("name").to_pylist())


def fold_history(wh: Warehouse, limit: int | None = None) -> int:
    """Copy the oldest ``limit`` (default all) segments into ``tag_history``; returns how many.

    Each segment is copied and dropped atomically on DuckDB; folding keeps
    the number of tables (and the size of a history query) bounded. Nothing
    is lost if it never runs.
    """
    folded = 0
    for segment in segments(wh)[:limit]:
        copy = f"INSERT INTO tag_history ({_COLUMNS}) SELECT {_COLUMNS} FROM {segment}"
        if wh.dialect == "duckdb":
            _transaction(wh, [copy, f"DROP TABLE {segment}"])
        else:
            _attach_to_history(wh, segment)
            wh.execute(f"DROP TABLE {segment}")
        folded += 1
    return folded


def retire_values(wh: Warehouse, name: str, *, dynamic: bool) -> None:
    """Remove a tag's current values; a dynamic tag's move to its history first."""
    where = f"tag = {string_literal(wh, name)}"
    if dynamic:
        wh.insert_select("tag_history", _EMPTY, f"SELECT {_COLUMNS} FROM tag_values WHERE {where}")
    wh.execute(f"DELETE FROM tag_values WHERE {where}")


def history_sql(wh: Warehouse, name: str, one_id: str, *, dynamic: bool) -> str:
    """``computed_at, value, number`` of ``name`` for ``one_id`` at every refresh, oldest first."""
    where = f"tag = {string_literal(wh, name)} AND one_id = {string_literal(wh, one_id)}"
    sources = ["tag_history", *segments(wh)] + (["tag_values"] if dynamic else [])
    parts = " UNION DISTINCT ".join(
        f"SELECT computed_at, value, number FROM {s} WHERE {where}" for s in sources
    )
    return f"SELECT computed_at, value, number FROM ({parts}) AS h ORDER BY computed_at"
