"""Segments on the real data sets: the counts in docs/segments.md, reproduced.

The files are read by the importer's own mapping (``zhiying.ingest.bulk.check_file``
with ``docs/mappings/``) and written straight into the warehouse tables, with
ONE_ID = the source's customer id and one person key per ONE_ID: identity
resolution of 100k people through the operational store is the importer's
business and takes minutes. Olist
identify rows of one import share a timestamp; each row is given its file
position in microseconds so that, as in the file, a later row of the same
person wins (122 of 96,096 people have rows in two cities).

Each count is checked three ways: the number in the docs, an independent
pandas computation over the raw file, and the compiled SQL on DuckDB and chdb.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from tests.segments.helpers import load_example
from zhiying.ingest.bulk import check_file
from zhiying.ingest.mapping import load_mapping
from zhiying.profiles.traits import trait_updates
from zhiying.segments.compiler import compile_rule
from zhiying.warehouse import Warehouse, open_warehouse

ROOT = Path(__file__).resolve().parents[2]
MAPPINGS = ROOT / "docs" / "mappings"
DOC = ROOT / "docs" / "segments.md"
AT = datetime(2026, 11, 1, tzinfo=UTC)
IMPORTED = datetime(2026, 10, 1, tzinfo=UTC)


def _documented() -> dict[str, int]:
    """``rule file → count`` from the table in docs/segments.md."""
    rows = re.findall(r"^\|[^|]+\| `([\w-]+\.json)` \| ([\d,]+) \|$", DOC.read_text(), re.M)
    return {name: int(count.replace(",", "")) for name, count in rows}


def _with_ids(events: pa.Table, column: str) -> pa.Table:
    return events.set_column(events.schema.get_field_index("one_id"), "one_id", events[column])


def _keyed(table: pa.Table, dictionary: pa.Table) -> pa.Table:
    """``table`` with the ``person_key`` of its ``one_id`` in ``dictionary``."""
    keys = dictionary["person_key"].take(pc.index_in(table["one_id"], dictionary["one_id"]))
    if "person_key" in table.column_names:
        table = table.drop_columns(["person_key"])
    return table.append_column("person_key", keys)


def _dictionary(*tables: pa.Table) -> pa.Table:
    """One key per ONE_ID of ``tables`` (as ingestion would mint them: 1, 2, …)."""
    ids = pa.chunked_array([t["one_id"].cast(pa.string()) for t in tables]).unique()
    return pa.table({"person_key": pa.array(range(1, len(ids) + 1), pa.int64()), "one_id": ids})


@pytest.fixture(scope="module")
def real(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Warehouse]]:
    data = Path(__file__).resolve().parents[3] / "shared" / "data"
    if not data.exists():
        pytest.skip("shared data not found")
    orders = check_file(
        data / "cdnow" / "CDNOW_master.txt.gz",
        received_at=IMPORTED,
        kind="orders",
        mapping=load_mapping(MAPPINGS / "cdnow_orders.toml"),
    ).events
    users = check_file(
        data / "olist" / "olist_customers_dataset.csv.gz",
        received_at=IMPORTED,
        kind="users",
        mapping=load_mapping(MAPPINGS / "olist_customers.toml"),
    ).events
    orders = _with_ids(orders, "user_id")
    orders = orders.set_column(
        orders.schema.get_field_index("message_id"),
        "message_id",
        pc.cast(orders["__row"], pa.string()),
    ).drop_columns(["__row"])
    stamps = pc.add(
        pc.cast(users["timestamp"], pa.int64()), pc.cast(users["__row"], pa.int64())
    ).cast(pa.timestamp("us"))
    users = users.set_column(users.schema.get_field_index("timestamp"), "timestamp", stamps)
    users = users.set_column(
        users.schema.get_field_index("message_id"),
        "message_id",
        pc.cast(users["__row"], pa.string()),
    )
    traits = trait_updates(_with_ids(users, "user_id"))
    dictionary = _dictionary(orders, traits)
    orders, traits = _keyed(orders, dictionary), _keyed(traits, dictionary)
    out: dict[str, Warehouse] = {}
    for engine in ("duckdb", "chdb"):
        where = tmp_path_factory.mktemp(engine)
        url = f"duckdb://{where / 'wh.duckdb'}" if engine == "duckdb" else f"chdb://{where}"
        wh = open_warehouse(url)
        wh.insert("events", orders)
        wh.insert("trait_updates", traits)
        wh.insert("person_keys", dictionary)
        out[engine] = wh
    yield out
    for wh in out.values():
        wh.close()


def _pandas_counts(shared: Path) -> dict[str, int]:
    cd = pd.read_csv(
        shared / "cdnow" / "CDNOW_master.txt.gz",
        sep=r"\s+",
        dtype={"customer_id": str, "date": str},
    )
    cd["date"] = pd.to_datetime(cd["date"], format="%Y%m%d")
    per_customer = cd.groupby("customer_id").size()
    q1 = set(cd[(cd.date >= "1997-01-01") & (cd.date < "1997-04-01")].customer_id)
    later = set(cd[cd.date >= "1997-07-01"].customer_id)
    olist = pd.read_csv(shared / "olist" / "olist_customers_dataset.csv.gz")
    last = olist.drop_duplicates("customer_unique_id", keep="last")
    return {
        "olist-sao-paulo-city.json": int((last.customer_city == "sao paulo").sum()),
        "olist-sp-state.json": int((last.customer_state == "SP").sum()),
        "cdnow-repeat-buyers.json": int((per_customer >= 2).sum()),
        "cdnow-q1-only.json": len(q1 - later),
    }


@pytest.mark.parametrize("engine", ["duckdb", pytest.param("chdb", marks=pytest.mark.chdb)])
def test_documented_counts_on_real_data_are_reproduced(
    real: dict[str, Warehouse], engine: str, shared_data: Path
) -> None:
    documented = _documented()
    assert set(documented) == {
        "olist-sao-paulo-city.json",
        "olist-sp-state.json",
        "cdnow-repeat-buyers.json",
        "cdnow-q1-only.json",
    }
    assert documented == _pandas_counts(shared_data)
    wh = real[engine]
    for name, count in documented.items():
        compiled = compile_rule(load_example(name), AT)
        got = int(wh.query(compiled.count_sql(wh.dialect)).column(0)[0].as_py())
        assert got == count, name
