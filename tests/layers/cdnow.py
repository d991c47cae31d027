"""Load CDNOW's purchase history into the warehouse as ``Order Completed`` events.

A stand-in until the order importer (``zhiying import orders`` with
``docs/mappings/cdnow_orders.toml``) lands: one event per row, ONE_ID = the
customer id, the purchase date at 00:00 UTC, ``revenue`` = ``dollar_value``,
one product line carrying ``number_of_cds`` as its quantity.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from tests.warehouse_keys import keyed
from zhiying.warehouse import Warehouse
from zhiying.warehouse.schema import EVENTS, MONEY, PRODUCT

ROWS = 69_659
CUSTOMERS = 23_570


def cdnow_events(path: Path) -> pa.Table:
    frame = pd.read_csv(
        path,
        sep=r"\s+",
        dtype={"customer_id": str, "date": str, "number_of_cds": "int32", "dollar_value": str},
    )
    n = len(frame)
    when = pa.array(pd.to_datetime(frame["date"], format="%Y%m%d").to_numpy(), pa.timestamp("us"))
    ids = pa.array(frame["customer_id"].to_numpy(), pa.string())
    row = pa.array([f"{i:06d}" for i in range(n)], pa.string())
    message_id = pc.binary_join_element_wise("cdnow-", row, "")
    quantity = pa.array(frame["number_of_cds"].to_numpy(), pa.int32())
    products = pa.ListArray.from_arrays(
        pa.array(range(n + 1), pa.int32()),
        pa.StructArray.from_arrays(
            [pa.nulls(n, f.type) if f.name != "quantity" else quantity for f in PRODUCT],
            fields=list(PRODUCT),
        ),
    )
    columns = {
        "message_id": message_id,
        "type": pa.array(["track"] * n),
        "event": pa.array(["Order Completed"] * n),
        "user_id": ids,
        "one_id": ids,
        "timestamp": when,
        "received_at": when,
        "source": pa.array(["import:CDNOW_master.txt"] * n),
        "order_id": message_id,
        "revenue": pc.cast(pa.array(frame["dollar_value"].to_numpy(), pa.string()), MONEY),
        "currency": pa.array(["USD"] * n),
        "products": products,
        "identifiers": pa.array([[]] * n, EVENTS.field("identifiers").type),
    }
    arrays = [columns[f.name] if f.name in columns else pa.nulls(n, f.type) for f in EVENTS]
    return pa.Table.from_arrays(arrays, schema=EVENTS)


def load_cdnow(warehouse: Warehouse, path: Path) -> int:
    return warehouse.insert("events", keyed(warehouse, cdnow_events(path)))
