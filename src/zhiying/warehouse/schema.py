"""The warehouse's tables, defined once as Arrow schemas and rendered as DDL per dialect.

The event table types the Segment-spec fields that rules use (e-commerce
``products``, ``revenue``, ``order_id``, ``coupon``) and keeps the rest as JSON
text (``properties``, ``traits``, ``context``): typed columns compile through
ibis to every dialect, JSON does not (see DESIGN.md).

Timestamps are naive microsecond values meaning UTC on every engine.
Money (``revenue``, product ``price``) is ``DECIMAL(18, 2)`` in currency units,
never float.

Derived columns (:class:`DerivedColumn`, :data:`DERIVED`) are stored copies
of parts of other columns that rules filter on, kept out of the writer
schemas: writers build ``EVENTS`` tables and the engines fill the derived
columns on every write.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import pyarrow as pa
import pyarrow.compute as pc

Dialect = Literal["duckdb", "clickhouse"]

MONEY = pa.decimal128(18, 2)
TS = pa.timestamp("us")

PRODUCT = pa.struct(
    [
        pa.field("product_id", pa.string()),
        pa.field("sku", pa.string()),
        pa.field("name", pa.string()),
        pa.field("brand", pa.string()),
        pa.field("category", pa.string()),
        pa.field("price", MONEY),
        pa.field("quantity", pa.int32()),
        pa.field("coupon", pa.string()),
    ]
)

IDENTIFIER = pa.struct([pa.field("kind", pa.string()), pa.field("value", pa.string())])

EVENTS = pa.schema(
    [
        pa.field("message_id", pa.string(), nullable=False),
        pa.field("type", pa.string(), nullable=False),  # track|identify|page|screen|group|alias
        pa.field("event", pa.string()),  # track: event name
        pa.field("name", pa.string()),  # page/screen: name
        pa.field("user_id", pa.string()),
        pa.field("anonymous_id", pa.string()),
        pa.field("one_id", pa.string()),  # ONE_ID at ingest; current owner via one_id_aliases
        pa.field("timestamp", TS, nullable=False),
        pa.field("received_at", TS, nullable=False),
        pa.field("sent_at", TS),
        pa.field("original_timestamp", TS),
        pa.field("source", pa.string()),  # write key id or "import:<file>"
        pa.field("channel", pa.string()),  # app|web|mini_program|wechat|store|server|...
        pa.field("order_id", pa.string()),
        pa.field("revenue", MONEY),
        pa.field("currency", pa.string()),
        pa.field("coupon", pa.string()),
        pa.field("products", pa.list_(PRODUCT)),
        pa.field("group_id", pa.string()),
        pa.field("previous_id", pa.string()),
        pa.field("identifiers", pa.list_(IDENTIFIER)),  # normalised: phone, email, openid, ...
        pa.field("properties", pa.string()),  # JSON text
        pa.field("traits", pa.string()),  # JSON text (identify/group)
        pa.field("context", pa.string()),  # JSON text
        # Integer key of ``one_id`` (``person_keys``), what analytical reads group on.
        # Last, so a warehouse upgraded by ``ALTER TABLE ADD COLUMN`` has the same layout.
        pa.field("person_key", pa.int64()),
    ]
)

# Maps every ONE_ID that was merged away to the ONE_ID that owns it now, so
# events stored before a merge belong to the merged user without rewriting them.
ONE_ID_ALIASES = pa.schema(
    [
        pa.field("alias", pa.string(), nullable=False),
        pa.field("one_id", pa.string(), nullable=False),
        pa.field("alias_key", pa.int64()),  # person_key of ``alias``, if it ever had one
        pa.field("person_key", pa.int64()),  # person_key of ``one_id``
    ]
)

# The dictionary of person keys: one row per key handed out (a row may name a
# key no event carries). Segments and tags group on ``person_key`` and come back
# to the ONE_ID through this table, for the members only.
PERSON_KEYS = pa.schema(
    [
        pa.field("person_key", pa.int64(), nullable=False),
        pa.field("one_id", pa.string(), nullable=False),
    ]
)

# Every trait a person was given (identify, user import), one row per key, so
# "current value of trait city" is an arg-max over typed columns instead of
# JSON extraction (which does not compile to ClickHouse through ibis).
# ``value`` is the JSON-free text form; ``number`` is set when the value is numeric.
TRAIT_UPDATES = pa.schema(
    [
        pa.field("one_id", pa.string(), nullable=False),
        pa.field("key", pa.string(), nullable=False),
        pa.field("value", pa.string()),
        pa.field("number", pa.float64()),
        pa.field("timestamp", TS, nullable=False),
        pa.field("message_id", pa.string(), nullable=False),
        pa.field("person_key", pa.int64()),
    ]
)

# Current value of every computed tag (replaced per tag at each refresh). The
# history of dynamic tags (``tag_history``) has the same columns and sorting
# key, so ClickHouse can move replaced values into it by attaching parts.
TAG_VALUES = pa.schema(
    [
        pa.field("one_id", pa.string(), nullable=False),
        pa.field("tag", pa.string(), nullable=False),
        pa.field("value", pa.string()),
        pa.field("number", pa.float64()),
        pa.field("computed_at", TS, nullable=False),
    ]
)

# Layer assignment of every user as of a date (lifecycle, value x frequency, ...).
LAYER_VALUES = pa.schema(
    [
        pa.field("one_id", pa.string(), nullable=False),
        pa.field("layer", pa.string(), nullable=False),
        pa.field("value", pa.string(), nullable=False),
        pa.field("as_of", TS, nullable=False),
    ]
)

# Membership snapshots of materialised segments.
SEGMENT_MEMBERS = pa.schema(
    [
        pa.field("segment_id", pa.string(), nullable=False),
        pa.field("one_id", pa.string(), nullable=False),
        pa.field("snapshot_at", TS, nullable=False),
    ]
)

# One row per compaction of the DuckDB event table (``warehouse.compaction``): the
# ``sorted_rows`` events with a rowid up to ``through_rowid`` are clustered, the rows
# appended after them are the tail the next compaction sorts; ``rows``: how many this
# compaction moved. Unused on ClickHouse, whose MergeTree sorts parts itself.
EVENT_COMPACTIONS = pa.schema(
    [
        pa.field("compacted_at", TS, nullable=False),
        pa.field("through_rowid", pa.int64(), nullable=False),
        pa.field("sorted_rows", pa.int64(), nullable=False),
        pa.field("rows", pa.int64(), nullable=False),
        pa.field("seconds", pa.float64(), nullable=False),
    ]
)


@dataclass(frozen=True)
class DerivedColumn:
    """A stored column the warehouse computes from a list-of-struct column: the list of
    one field of its elements, in element order (NULL elements where the field is
    NULL; on DuckDB a NULL list where the source is NULL, on ClickHouse, whose
    arrays cannot be NULL, an empty one).

    Why: "some product's brand is Shiseido" over ``products`` makes DuckDB decode
    every field of every product of every scanned order; over a ``VARCHAR[]`` of
    the brands "bought Shiseido twice" (2M orders in 20M events, one thread) took
    0.24 s by hand against 0.51 s over the structs. The writers do not know these
    columns (they build ``EVENTS`` tables; a writer can neither forget nor get one
    wrong):

    - DuckDB (no stored generated columns): ``DuckDBWarehouse.insert`` appends
      them computed in Arrow (:meth:`arrow`), ``insert_select`` with
      :meth:`expression` in its ``INSERT … SELECT``, whenever the written columns
      include the source and not the derived column;
    - ClickHouse (chdb, server): ``MATERIALIZED`` columns, which the engine fills
      on insert and leaves out of ``SELECT *``.

    A warehouse created before a derived column existed gains it, filled for the
    stored rows, in ``zhiying.warehouse.ensure_tables`` (:func:`add_derived_sql`).
    Derived columns come after the writer schema's columns, in new and upgraded
    tables alike.
    """

    name: str
    source: str
    element: str
    type: pa.DataType

    @property
    def field(self) -> pa.Field:
        return pa.field(self.name, self.type)

    def expression(self, dialect: Dialect, source_sql: str | None = None) -> str:
        """The SQL computing the column from ``source_sql`` (default: the source column)."""
        if dialect == "duckdb":
            src = source_sql or f'"{self.source}"'
            return f'list_transform({src}, lambda x: x."{self.element}")'
        src = source_sql or f"`{self.source}`"
        return f"arrayMap(x -> tupleElement(x, '{self.element}'), {src})"

    def arrow(self, source: pa.Array | pa.ChunkedArray) -> pa.Array | None:
        """The column for ``source`` (the source column's values) computed in Arrow, or
        None when ``source`` is not a list of structs with the element field.

        It shares the source's offsets and the element field's child array: no
        row-by-row work (DuckDB's ``insert`` writes it instead of evaluating the SQL
        expression; measured on 500-row event appends: about 0.5 ms less CPU).
        """
        lists = source.combine_chunks() if isinstance(source, pa.ChunkedArray) else source
        t = lists.type
        if not (pa.types.is_list(t) and pa.types.is_struct(t.value_type)):
            return None
        if t.value_type.get_field_index(self.element) < 0:
            return None
        values = pc.struct_field(lists.values, self.element).cast(self.type.value_type)
        mask = lists.is_null() if lists.null_count else None
        return pa.ListArray.from_arrays(lists.offsets, values, type=self.type, mask=mask)

    def values(self, row: Mapping[str, Any]) -> list[Any] | None:
        """The column's value for a row given as a dict (DuckDB's form: NULL for a NULL
        source), for test harnesses that load rows into other engines."""
        items = row.get(self.source)
        if items is None:
            return None
        return [None if item is None else item.get(self.element) for item in items]


DERIVED: dict[str, tuple[DerivedColumn, ...]] = {
    "events": (
        DerivedColumn("product_brands", "products", "brand", pa.list_(pa.string())),
        DerivedColumn("product_categories", "products", "category", pa.list_(pa.string())),
    ),
}
"""Derived columns per table, in column order after the writer schema's columns."""

EVENTS_STORED = pa.schema([*EVENTS, *(d.field for d in DERIVED["events"])])
"""The columns a reader of ``events`` sees: ``EVENTS`` then the derived columns."""

PRODUCT_LISTS: dict[str, str] = {
    d.element: d.name for d in DERIVED["events"] if d.source == "products"
}
"""Product field → the derived column listing it (``brand`` → ``product_brands``)."""

TABLES: dict[str, tuple[pa.Schema, tuple[str, ...]]] = {
    # name: (schema, ClickHouse ORDER BY key)
    # Events: by name and time, as segment and tag scans read them; DuckDB gets the same
    # clustering from ``warehouse.compaction``. A warehouse created before keeps its key.
    "events": (EVENTS, ("type", "event", "timestamp")),
    "one_id_aliases": (ONE_ID_ALIASES, ("alias",)),
    "person_keys": (PERSON_KEYS, ("person_key",)),
    "trait_updates": (TRAIT_UPDATES, ("one_id", "key", "timestamp")),
    "tag_values": (TAG_VALUES, ("tag", "one_id")),
    "tag_history": (TAG_VALUES, ("tag", "one_id")),
    "layer_values": (LAYER_VALUES, ("layer", "as_of", "one_id")),
    "segment_members": (SEGMENT_MEMBERS, ("segment_id", "snapshot_at", "one_id")),
    "event_compactions": (EVENT_COMPACTIONS, ("compacted_at",)),
}

MINMAX: dict[str, tuple[str, ...]] = {"events": ("received_at",)}
"""ClickHouse min/max skip indexes: the dedup look-up reads ``events`` by ``received_at``
window, which the sorting key no longer leads with (live events arrive in time order,
so each granule's range is narrow)."""


def _duckdb_type(t: pa.DataType) -> str:
    if pa.types.is_string(t):
        return "VARCHAR"
    if pa.types.is_timestamp(t):
        return "TIMESTAMP"
    if pa.types.is_decimal(t):
        return f"DECIMAL({t.precision}, {t.scale})"
    if pa.types.is_int32(t):
        return "INTEGER"
    if pa.types.is_int64(t):
        return "BIGINT"
    if pa.types.is_float64(t):
        return "DOUBLE"
    if pa.types.is_boolean(t):
        return "BOOLEAN"
    if pa.types.is_date32(t):
        return "DATE"
    if pa.types.is_list(t):
        return f"{_duckdb_type(t.value_type)}[]"
    if pa.types.is_struct(t):
        inner = ", ".join(f'"{f.name}" {_duckdb_type(f.type)}' for f in t)
        return f"STRUCT({inner})"
    raise TypeError(f"no DuckDB type for {t}")


def _clickhouse_type(t: pa.DataType, nullable: bool) -> str:
    def wrap(name: str) -> str:
        return f"Nullable({name})" if nullable else name

    if pa.types.is_string(t):
        return wrap("String")
    if pa.types.is_timestamp(t):
        return wrap("DateTime64(6, 'UTC')")
    if pa.types.is_decimal(t):
        return wrap(f"Decimal({t.precision}, {t.scale})")
    if pa.types.is_int32(t):
        return wrap("Int32")
    if pa.types.is_int64(t):
        return wrap("Int64")
    if pa.types.is_float64(t):
        return wrap("Float64")
    if pa.types.is_boolean(t):
        return wrap("Bool")
    if pa.types.is_date32(t):
        return wrap("Date32")
    if pa.types.is_list(t):
        # ClickHouse arrays cannot be Nullable; an absent list is empty.
        return f"Array({_clickhouse_type(t.value_type, nullable=False)})"
    if pa.types.is_struct(t):
        inner = ", ".join(f"{f.name} {_clickhouse_type(f.type, nullable=True)}" for f in t)
        return f"Tuple({inner})"
    raise TypeError(f"no ClickHouse type for {t}")


def create_table_sql(
    name: str,
    schema: pa.Schema,
    dialect: Dialect,
    order_by: tuple[str, ...],
    derived: tuple[DerivedColumn, ...] = (),
) -> str:
    """``CREATE TABLE IF NOT EXISTS`` for ``schema`` and then ``derived`` in ``dialect``."""
    if dialect == "duckdb":
        cols = ",\n  ".join(
            [
                *(
                    f'"{f.name}" {_duckdb_type(f.type)}' + ("" if f.nullable else " NOT NULL")
                    for f in schema
                ),
                *(f'"{d.name}" {_duckdb_type(d.type)}' for d in derived),
            ]
        )
        return f'CREATE TABLE IF NOT EXISTS "{name}" (\n  {cols}\n)'
    cols = ",\n  ".join(
        [
            *(f"`{f.name}` {_clickhouse_type(f.type, f.nullable)}" for f in schema),
            *(_clickhouse_derived(d) for d in derived),
        ]
    )
    indexes = "".join(
        f",\n  INDEX `{c}_minmax` `{c}` TYPE minmax GRANULARITY 1" for c in MINMAX.get(name, ())
    )
    key = ", ".join(f"`{c}`" for c in order_by)
    nullable_key = any(schema.field(c).nullable for c in order_by if c in schema.names)
    settings = " SETTINGS allow_nullable_key = 1" if nullable_key else ""
    return (
        f"CREATE TABLE IF NOT EXISTS `{name}` (\n  {cols}{indexes}\n) "
        f"ENGINE = MergeTree ORDER BY ({key}){settings}"
    )


def add_column_sql(table: str, column: pa.Field, dialect: Dialect) -> str:
    """``ALTER TABLE … ADD COLUMN`` for a nullable ``column`` a table created earlier lacks."""
    if dialect == "duckdb":
        return f'ALTER TABLE "{table}" ADD COLUMN IF NOT EXISTS "{column.name}" ' + (
            _duckdb_type(column.type)
        )
    kind = _clickhouse_type(column.type, nullable=True)
    return f"ALTER TABLE `{table}` ADD COLUMN IF NOT EXISTS `{column.name}` {kind}"


def _clickhouse_derived(column: DerivedColumn) -> str:
    # Elements keep their NULLs (a product without a brand): a rule's test on it is
    # false, as on the struct field, where an empty string could pass ``neq``.
    assert pa.types.is_list(column.type)
    kind = f"Array({_clickhouse_type(column.type.value_type, nullable=True)})"
    return f"`{column.name}` {kind} MATERIALIZED {column.expression('clickhouse')}"


def add_derived_sql(
    table: str,
    schema: pa.Schema,
    derived: tuple[DerivedColumn, ...],
    missing: tuple[DerivedColumn, ...],
    dialect: Dialect,
) -> list[str]:
    """Statements giving ``table`` (``schema``'s columns, some of ``derived``) its
    ``missing`` derived columns, filled for the stored rows before they return.

    DuckDB: the table is rebuilt in one transaction (a copy with every derived
    column computed, then renamed): an ``UPDATE`` of a list column is a delete
    and an insert of every row in DuckDB, which took as long (53 s of CPU against
    47 s on 20M events), left the rows out of arrival order (time windows prune
    row groups by their timestamps) and the old versions in the file until a
    checkpoint. ClickHouse: ``ADD COLUMN … MATERIALIZED`` and a synchronous
    ``MATERIALIZE COLUMN`` (until it ran, old parts compute the column on read).
    """
    if not missing:
        return []
    if dialect == "duckdb":
        temp = f"__{table}_rebuild"
        cols = ", ".join(f'"{name}"' for name in schema.names)
        values = ", ".join(d.expression(dialect) for d in derived)
        return [
            "BEGIN TRANSACTION",
            f'DROP TABLE IF EXISTS "{temp}"',
            create_table_sql(temp, schema, dialect, (), derived),
            f'INSERT INTO "{temp}" SELECT {cols}, {values} FROM "{table}"',
            f'DROP TABLE "{table}"',
            f'ALTER TABLE "{temp}" RENAME TO "{table}"',
            "COMMIT",
        ]
    added = [
        f"ALTER TABLE `{table}` ADD COLUMN IF NOT EXISTS {_clickhouse_derived(d)}" for d in missing
    ]
    filled = [
        f"ALTER TABLE `{table}` MATERIALIZE COLUMN `{d.name}` SETTINGS mutations_sync = 2"
        for d in missing
    ]
    return [*added, *filled]
