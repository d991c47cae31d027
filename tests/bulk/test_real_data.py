"""The three real data sets through the shipped mappings (docs/mappings/), exact counts.

The fast tests validate and map every row (``check_file``, nothing stored). The
``slow`` ones store everything through ``store_events``; they are marked slow
because storing 99k/64k users with their traits takes minutes on the
operational store today (profiles' trait upsert dominates, see bench/RESULTS.md).
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest

from zhiying.ingest.bulk import check_file, import_file
from zhiying.ingest.mapping import load_mapping
from zhiying.runtime import Stores

MAPPINGS = Path(__file__).resolve().parents[2] / "docs" / "mappings"


NOW = datetime(2026, 11, 1, 9, 0, tzinfo=UTC)


def scalar(stores: Stores, sql: str) -> object:
    return stores.warehouse.query(sql).column(0)[0].as_py()


def over(events: pa.Table, sql: str) -> dict[str, object]:
    """One row of ``sql`` run over the checked events (as table ``e``)."""
    con = duckdb.connect()
    con.register("e", events)
    result = con.sql(sql).to_arrow_table().to_pylist()[0]
    con.close()
    return dict(result)


def test_olist_mapping_reads_99441_customers_of_96096_people(shared_data: Path) -> None:
    checked = check_file(
        shared_data / "olist" / "olist_customers_dataset.csv.gz",
        received_at=NOW,
        kind="users",
        mapping=load_mapping(MAPPINGS / "olist_customers.toml"),
    )
    assert checked.rejections.num_rows == 0
    assert over(
        checked.events,
        "SELECT count(*) AS rows, count(DISTINCT user_id) AS people, "
        "count(DISTINCT identifiers[1].value) AS customer_ids, "
        "count(*) FILTER (WHERE length(traits ->> '$.zip_code_prefix') <> 5) AS bad_zip, "
        "count(*) FILTER (WHERE traits ->> '$.zip_code_prefix' LIKE '0%') AS padded FROM e",
    ) == {"rows": 99_441, "people": 96_096, "customer_ids": 99_441, "bad_zip": 0, "padded": 23_995}


def test_cdnow_mapping_reads_69659_purchases_of_23570_customers(shared_data: Path) -> None:
    checked = check_file(
        shared_data / "cdnow" / "CDNOW_master.txt.gz",
        received_at=NOW,
        kind="orders",
        mapping=load_mapping(MAPPINGS / "cdnow_orders.toml"),
    )
    assert checked.rejections.num_rows == 0
    assert over(
        checked.events,
        "SELECT count(*) AS orders, count(DISTINCT user_id) AS customers, "
        "sum(revenue) AS revenue, sum((properties ->> '$.quantity')::INTEGER) AS cds, "
        "min(user_id) AS first_id FROM e",
    ) == {
        "orders": 69_659,
        "customers": 23_570,
        "revenue": Decimal("2500315.63"),
        "cds": 167_881,
        "first_id": "00001",
    }


def test_hillstrom_mapping_reads_64000_customers_with_typed_traits(shared_data: Path) -> None:
    checked = check_file(
        shared_data / "hillstrom" / "hillstrom.csv.gz",
        received_at=NOW,
        kind="users",
        mapping=load_mapping(MAPPINGS / "hillstrom_users.toml"),
    )
    assert checked.rejections.num_rows == 0
    assert over(
        checked.events,
        "SELECT count(DISTINCT user_id) AS users, max(user_id = 'hillstrom-64000') AS last, "
        "count(*) FILTER (WHERE traits ->> '$.segment' = 'No E-Mail') AS control, "
        "sum((traits ->> '$.visit')::INTEGER) AS visits, "
        "sum((traits ->> '$.conversion')::INTEGER) AS conversions FROM e",
    ) == {"users": 64_000, "last": True, "control": 21_306, "visits": 9_394, "conversions": 578}


@pytest.mark.slow
def test_olist_customers_become_96096_users_with_padded_zip_prefixes(
    stores: Stores, shared_data: Path
) -> None:
    report = import_file(
        stores,
        shared_data / "olist" / "olist_customers_dataset.csv.gz",
        kind="users",
        mapping=load_mapping(MAPPINGS / "olist_customers.toml"),
    )
    assert (report.rows_read, report.inserted, report.rejected) == (99_441, 99_441, 0)
    assert scalar(stores, "SELECT count(DISTINCT one_id) FROM events") == 96_096
    assert scalar(stores, "SELECT count(DISTINCT user_id) FROM events") == 96_096
    assert (
        scalar(
            stores,
            "SELECT count(DISTINCT i.value) FROM (SELECT unnest(identifiers) AS i FROM events) "
            "WHERE i.kind = 'olist_customer_id'",
        )
        == 99_441
    )
    zips = stores.warehouse.query(
        "SELECT count(*) FILTER (WHERE length(value) <> 5) AS bad, "
        "count(*) FILTER (WHERE value LIKE '0%') AS padded "
        "FROM trait_updates WHERE key = 'zip_code_prefix'"
    ).to_pylist()[0]
    # README: 23,995 rows were written with fewer than 5 digits.
    assert zips == {"bad": 0, "padded": 23_995}


@pytest.mark.slow
def test_cdnow_history_becomes_69659_orders_of_23570_users_in_exact_dollars(
    stores: Stores, shared_data: Path
) -> None:
    path = shared_data / "cdnow" / "CDNOW_master.txt.gz"
    mapping = load_mapping(MAPPINGS / "cdnow_orders.toml")
    report = import_file(stores, path, kind="orders", mapping=mapping)
    assert (report.rows_read, report.inserted, report.rejected) == (69_659, 69_659, 0)
    totals = stores.warehouse.query(
        "SELECT count(*) AS orders, count(DISTINCT user_id) AS users, "
        "count(DISTINCT message_id) AS ids, sum(revenue) AS revenue, "
        "sum((properties ->> '$.quantity')::INTEGER) AS cds, min(timestamp)::DATE::VARCHAR AS "
        "first, max(timestamp)::DATE::VARCHAR AS last, "
        "count(*) FILTER (WHERE event = 'Order Completed' AND currency = 'USD') AS usd "
        "FROM events"
    ).to_pylist()[0]
    assert totals == {
        "orders": 69_659,
        "users": 23_570,
        "ids": 69_659,
        "revenue": Decimal("2500315.63"),
        "cds": 167_881,
        "first": "1997-01-01",
        "last": "1998-06-30",
        "usd": 69_659,
    }

    again = import_file(stores, path, kind="orders", mapping=mapping)
    assert (again.inserted, again.duplicates) == (0, 69_659)


@pytest.mark.slow
def test_hillstrom_rows_become_64000_users_with_every_column_as_a_trait(
    stores: Stores, shared_data: Path
) -> None:
    report = import_file(
        stores,
        shared_data / "hillstrom" / "hillstrom.csv.gz",
        kind="users",
        mapping=load_mapping(MAPPINGS / "hillstrom_users.toml"),
    )
    assert (report.rows_read, report.inserted, report.rejected) == (64_000, 64_000, 0)
    assert scalar(stores, "SELECT count(DISTINCT one_id) FROM events") == 64_000
    rows = stores.warehouse.query(
        "SELECT value, count(*) AS n FROM trait_updates WHERE key = 'segment' GROUP BY value"
    ).to_pylist()
    groups = {r["value"]: r["n"] for r in rows}
    assert groups == {"Mens E-Mail": 21_307, "No E-Mail": 21_306, "Womens E-Mail": 21_387}
    first = scalar(stores, "SELECT traits FROM events WHERE user_id = 'hillstrom-1'")
    assert first == (
        '{"recency":10,"history_segment":"2) $100 - $200","history":142.44,"mens":1,'
        '"womens":0,"zip_code":"Surburban","newbie":0,"channel":"Phone",'
        '"segment":"Womens E-Mail","visit":0,"conversion":0,"spend":0.0}'
    )
    conversions = scalar(stores, "SELECT sum(number) FROM trait_updates WHERE key = 'conversion'")
    assert conversions == pytest.approx(578)  # README: 578 conversions in total
