"""The warehouse tables the segment compiler reads, on engines the product does not
run as a warehouse (PostgreSQL, Spark), so that their compiled SQL is executed.

Both loaders take a ``reference.Dataset`` (the rows the pure-Python evaluator
reads) and derive every column type from the Arrow schemas in
``zhiying.warehouse.schema``:

- PostgreSQL: ``products`` and ``identifiers`` are arrays of composite types
  named after the Arrow struct (``product``, ``identifier``); ``properties``
  is ``text`` (the compiled SQL casts it to ``jsonb``); timestamps are
  ``timestamp`` without time zone (naive UTC, as in the warehouse). Rows go
  in with one ``jsonb_populate_recordset`` per table.
- Spark: one temporary view per table, built from an Arrow table with the
  warehouse schema.

``events`` has the derived columns too (``schema.DERIVED``: ``product_brands``,
…), computed from each row's products as the warehouse engines do on write.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import replace
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from tests.segments.helpers import warehouse_rows
from zhiying.segments.reference import Dataset
from zhiying.warehouse.schema import (
    DERIVED,
    EVENTS_STORED,
    IDENTIFIER,
    LAYER_VALUES,
    ONE_ID_ALIASES,
    PERSON_KEYS,
    PRODUCT,
    SEGMENT_MEMBERS,
    TAG_VALUES,
    TRAIT_UPDATES,
)

if TYPE_CHECKING:
    import psycopg
    from pyspark.sql import SparkSession

TABLES: dict[str, pa.Schema] = {
    "events": EVENTS_STORED,
    "one_id_aliases": ONE_ID_ALIASES,
    "person_keys": PERSON_KEYS,
    "trait_updates": TRAIT_UPDATES,
    "tag_values": TAG_VALUES,
    "layer_values": LAYER_VALUES,
    "segment_members": SEGMENT_MEMBERS,
}
COMPOSITES: dict[str, pa.StructType] = {"product": PRODUCT, "identifier": IDENTIFIER}


def rows_of(data: Dataset) -> dict[str, list[dict[str, Any]]]:
    """``data`` as keyed rows per warehouse table (aliases and dictionary included),
    with the derived columns filled."""
    rows = warehouse_rows(data)
    for name, derived in DERIVED.items():
        rows[name] = [{**row, **{d.name: d.values(row) for d in derived}} for row in rows[name]]
    return rows


def untied(data: Dataset) -> Dataset:
    """``data`` without rows that tie for "latest": a second tag or layer row of the
    same person (after merges) and name with the same time.

    Which of two tied tag or layer rows is the latest is not defined: the
    reference keeps the first, DuckDB's ``arg_max_null`` the first it reads,
    PostgreSQL's sorted ``array_agg`` and Spark's ``max_by`` either. Dropping
    the later tied rows leaves the reference's answer unchanged and makes every
    engine's defined. Trait rows are kept: their ties are defined (the greater
    message id wins, in the compiler and in the reference alike).
    """

    def first_of_ties(rows: list[Mapping[str, Any]], name: str, when: str) -> list[Any]:
        seen: set[tuple[str, str, datetime]] = set()
        out = []
        for row in rows:
            owner = data.aliases.get(row["one_id"], row["one_id"])
            key = (owner, row[name], row[when])
            if key not in seen:
                seen.add(key)
                out.append(row)
        return out

    return replace(
        data,
        tag_values=first_of_ties(data.tag_values, "tag", "computed_at"),
        layer_values=first_of_ties(data.layer_values, "layer", "as_of"),
    )


# --- PostgreSQL ------------------------------------------------------------------------


def pg_type(t: pa.DataType) -> str:
    """The PostgreSQL type the compiled SQL expects for Arrow type ``t``."""
    if pa.types.is_string(t):
        return "text"
    if pa.types.is_timestamp(t):
        return "timestamp"
    if pa.types.is_decimal(t):
        return f"numeric({t.precision}, {t.scale})"
    if pa.types.is_int32(t):
        return "integer"
    if pa.types.is_int64(t):
        return "bigint"
    if pa.types.is_float64(t):
        return "double precision"
    if pa.types.is_boolean(t):
        return "boolean"
    if pa.types.is_list(t):
        return f"{pg_type(t.value_type)}[]"
    if pa.types.is_struct(t):
        for name, struct in COMPOSITES.items():
            if struct.equals(t):
                return name
    raise TypeError(f"no PostgreSQL type for {t}")


def pg_ddl() -> list[str]:
    """Statements creating the composite types and the tables (in an empty schema)."""
    out = []
    for name, struct in COMPOSITES.items():
        fields = ", ".join(f'"{f.name}" {pg_type(f.type)}' for f in struct)
        out.append(f'CREATE TYPE "{name}" AS ({fields})')
    for name, schema in TABLES.items():
        cols = ", ".join(
            f'"{f.name}" {pg_type(f.type)}' + ("" if f.nullable else " NOT NULL") for f in schema
        )
        out.append(f'CREATE TABLE "{name}" ({cols})')
    return out


def _json_default(v: Any) -> Any:
    if isinstance(v, datetime):
        return v.isoformat()
    if isinstance(v, Decimal):
        return str(v)
    raise TypeError(type(v))


def pg_load(conn: psycopg.Connection[Any], data: Dataset) -> None:
    """Replace the tables' rows with ``data`` (one statement per table)."""
    for name, rows in rows_of(data).items():
        conn.execute(f'TRUNCATE "{name}"')
        if rows:
            doc = json.dumps(_complete(rows, TABLES[name]), default=_json_default)
            conn.execute(
                f'INSERT INTO "{name}" SELECT * FROM jsonb_populate_recordset(NULL::"{name}", %s)',
                (doc,),
            )


def _complete(rows: Iterable[Mapping[str, Any]], schema: pa.Schema) -> list[dict[str, Any]]:
    return [{f.name: row.get(f.name) for f in schema} for row in rows]


# --- Spark ---------------------------------------------------------------------------------


def spark_load(spark: SparkSession, data: Dataset) -> None:
    """Replace the temporary views with ``data`` (Arrow tables with the warehouse schema)."""
    for name, rows in rows_of(data).items():
        schema = TABLES[name]
        table = pa.Table.from_pylist(_complete(rows, schema), schema=schema)
        spark.createDataFrame(table).createOrReplaceTempView(name)
