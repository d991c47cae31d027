"""Derived product columns (``schema.DERIVED``): every write fills them, on DuckDB and chdb,
and opening a warehouse created before they existed adds and fills them."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa

from tests.conftest import make_stores
from tests.identity.events import ev, table
from zhiying.clock import ManualClock
from zhiying.ingest.pipeline import store_events
from zhiying.runtime import Stores
from zhiying.warehouse import Warehouse
from zhiying.warehouse.events import append_events
from zhiying.warehouse.schema import DERIVED, EVENTS, create_table_sql

SINCE = datetime(2026, 1, 1, tzinfo=UTC)


def _order(
    message_id: str, products: list[dict[str, Any]] | None, minute: int = 0
) -> dict[str, Any]:
    row = ev(message_id, user_id="u1", event="Order Completed", minute=minute)
    row["products"] = products
    return row


ORDERS = [
    _order(
        "two",
        [
            {"brand": "Shiseido", "category": "skincare"},
            {"brand": None, "category": "makeup"},
        ],
    ),
    _order("one", [{"brand": "SK-II", "category": None}], minute=1),
    _order("empty", [], minute=2),
    _order("none", None, minute=3),
]


def _lists(stores: Stores) -> dict[str, tuple[Any, Any]]:
    rows = stores.warehouse.query(
        "SELECT message_id, product_brands, product_categories FROM events"
    ).to_pylist()
    return {r["message_id"]: (r["product_brands"], r["product_categories"]) for r in rows}


def _expected(stores: Stores, prefix: str = "") -> dict[str, tuple[Any, Any]]:
    # ClickHouse arrays cannot be NULL: no products at all is an empty list there.
    absent = [] if stores.warehouse.dialect == "clickhouse" else None
    return {
        f"{prefix}two": (["Shiseido", None], ["skincare", "makeup"]),
        f"{prefix}one": (["SK-II"], [None]),
        f"{prefix}empty": ([], []),
        f"{prefix}none": (absent, absent),
    }


def _prefixed(prefix: str) -> pa.Table:
    return table([{**row, "message_id": prefix + row["message_id"]} for row in ORDERS])


def test_every_event_write_path_fills_the_product_lists(wh_stores: Stores) -> None:
    wh = wh_stores.warehouse
    wh.insert("events", _prefixed("insert-"))
    append_events(wh, _prefixed("append-"), SINCE)
    store_events(wh_stores, _prefixed("ingest-"))

    got = _lists(wh_stores)
    expected = {
        **_expected(wh_stores, "insert-"),
        **_expected(wh_stores, "append-"),
        **_expected(wh_stores, "ingest-"),
    }
    assert got == expected


def test_a_write_of_some_columns_only_leaves_the_lists_to_their_default(
    wh_stores: Stores,
) -> None:
    # A writer that does not write ``products`` gets no error and no made-up brands.
    wh = wh_stores.warehouse
    wh.insert("events", table(ORDERS).select(["message_id", "type", "timestamp", "received_at"]))
    absent = [] if wh.dialect == "clickhouse" else None
    assert list(_lists(wh_stores).values()) == [(absent, absent)] * len(ORDERS)


def test_opening_an_older_warehouse_adds_and_fills_the_product_lists(
    tmp_path: Path, clock: ManualClock, warehouse_url: str
) -> None:
    stores = make_stores(tmp_path, clock, warehouse_url=warehouse_url)
    stores.warehouse.insert("events", table(ORDERS))
    # What an older version left: the event table without the derived columns.
    for column in DERIVED["events"]:
        stores.warehouse.execute(f"ALTER TABLE events DROP COLUMN {column.name}")
    columns = stores.warehouse.query("SELECT * FROM events LIMIT 0").column_names
    assert columns == EVENTS.names
    stores.close()

    reopened = make_stores(tmp_path, clock, warehouse_url=warehouse_url)
    wh = reopened.warehouse
    try:
        wh.execute(
            create_table_sql("new_events", EVENTS, wh.dialect, ("received_at",), DERIVED["events"])
        )
        assert _lists(reopened) == _expected(reopened)
        if wh.dialect == "clickhouse":
            # Stored in the old parts (MATERIALIZE COLUMN), not computed on every read.
            stored = wh.query(
                "SELECT DISTINCT column FROM system.parts_columns WHERE active "
                "AND database = currentDatabase() AND table = 'events'"
            ).column("column")
            assert {d.name for d in DERIVED["events"]} <= set(stored.to_pylist())
        # New writes fill them too, and the layout is the one a new warehouse has.
        reopened.warehouse.insert("events", _prefixed("later-"))
        assert _lists(reopened) == {**_expected(reopened), **_expected(reopened, "later-")}
        assert _layout(reopened.warehouse, "events") == _layout(reopened.warehouse, "new_events")
    finally:
        reopened.close()


def _layout(wh: Warehouse, name: str) -> list[tuple[str, str]]:
    """Columns in order with their types (ClickHouse: and how they are filled)."""
    if wh.dialect == "duckdb":
        sql = (
            "SELECT column_name AS n, data_type AS t FROM information_schema.columns "
            f"WHERE table_name = '{name}' ORDER BY ordinal_position"
        )
    else:
        sql = (
            "SELECT name AS n, concat(type, ' ', default_kind, ' ', default_expression) AS t "
            f"FROM system.columns WHERE database = currentDatabase() AND table = '{name}' "
            "ORDER BY position"
        )
    return [(r["n"], r["t"]) for r in wh.query(sql).to_pylist()]


def test_the_arrow_form_of_a_derived_column_equals_the_row_form_on_sliced_chunks() -> None:
    rows = [{**row, "message_id": f"{i}-{row['message_id']}"} for i in range(3) for row in ORDERS]
    whole = table(rows)
    # Two chunks, each a slice that does not start at offset 0 of its buffers.
    chunked = pa.concat_tables([whole.slice(1, 5), whole.slice(7, 4)])
    expected_rows = rows[1:6] + rows[7:11]
    for column in DERIVED["events"]:
        got = column.arrow(chunked.column("products"))
        assert got is not None
        assert got.to_pylist() == [column.values(r) for r in expected_rows]
    # A source that is not a list of structs with the field is left to the SQL expression.
    assert DERIVED["events"][0].arrow(pa.array([["a"]])) is None
