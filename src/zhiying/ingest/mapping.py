"""Column mappings for bulk import: which source column becomes which part of an event (pure).

A mapping file (TOML or JSON) tells ``zhiying import`` how a flat file
(CSV, whitespace-separated text, Parquet, or JSONL read as rows) becomes
Segment messages. Each target is a *value spec*: a bare string names a
column; a table gives a column, a constant (``value``) or the data row
number (``row_number = true``), plus small transforms (``zfill``,
``prefix``, ``lower``, ``upper``, ``strip``) and a ``type`` to convert to.
The reference with examples is docs/import.md; the shipped mappings for the
real data sets are in docs/mappings/.

This module only parses and checks mappings; ``zhiying.ingest.bulk_sql``
compiles them to DuckDB SQL.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from zhiying.errors import ValidationFailed
from zhiying.identity.identifiers import ANONYMOUS_ID, BUILT_IN_KINDS, CUSTOM_KIND, USER_ID
from zhiying.ingest.formats import FileFormat, ImportKind

ValueType = Literal["string", "integer", "number", "decimal", "boolean", "timestamp", "json"]

ROW_NUMBER_NAME = "$row"
"""Written as a column name (``user_id = "$row"``): the 1-based data row number."""


def _shorthand(raw: Any) -> Any:
    """A bare string is a column name (``"$row"`` is the data row number)."""
    if isinstance(raw, str):
        return {"row_number": True} if raw == ROW_NUMBER_NAME else {"column": raw}
    return raw


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ValueSpecModel(_Frozen):
    """Where one value comes from, and how it is cleaned before use.

    Exactly one of ``column``, ``value`` or ``row_number``. Transforms apply in
    this order: ``strip``, ``lower``/``upper``, ``zfill`` (left-pad with zeros
    to a width, like ``str.zfill``), ``prefix``; then ``type`` converts
    (``timestamp`` uses ``format``, a strptime pattern such as ``%Y%m%d``;
    without it ISO 8601 is expected).
    """

    column: str | None = None
    value: str | int | float | bool | None = None
    row_number: bool = False
    type: ValueType | None = None
    format: str | None = None
    zfill: int | None = Field(default=None, ge=1, le=64)
    prefix: str = ""
    lower: bool = False
    upper: bool = False
    strip: bool = False

    @model_validator(mode="after")
    def _one_source(self) -> ValueSpecModel:
        given = sum([self.column is not None, self.value is not None, self.row_number])
        if given != 1:
            raise ValueError("give exactly one of column, value or row_number")
        if self.lower and self.upper:
            raise ValueError("lower and upper are exclusive")
        return self

    @property
    def is_text_transformed(self) -> bool:
        return bool(self.strip or self.lower or self.upper or self.zfill or self.prefix)


ValueSpec = Annotated[ValueSpecModel, BeforeValidator(_shorthand)]


class SourceOptions(_Frozen):
    """How to read the file. ``format`` defaults to the file name's suffix."""

    format: FileFormat | None = None
    delimiter: str = ","
    header: bool = True
    quote: str = '"'
    timezone: str = Field(
        default="UTC",
        description="Time zone of timestamps written without an offset (IANA name).",
    )
    null_values: tuple[str, ...] = ("",)


class LineItemSpec(_Frozen):
    """One product line per source row; rows of one order are grouped by ``order_id``."""

    product_id: ValueSpec | None = None
    sku: ValueSpec | None = None
    name: ValueSpec | None = None
    brand: ValueSpec | None = None
    category: ValueSpec | None = None
    price: ValueSpec | None = None
    quantity: ValueSpec | None = None
    coupon: ValueSpec | None = None


def _products_form(raw: Any) -> Any:
    # ``products = "col"`` names a column that already holds the product list
    # (Parquet list<struct> or JSON text); a table describes line-item columns.
    if isinstance(raw, str):
        return {"column": raw}
    return raw


class ProductsColumn(_Frozen):
    column: str


class Mapping(_Frozen):
    """A whole mapping file. Keys not listed here are an error (typos fail loudly)."""

    kind: ImportKind | None = None
    source: SourceOptions = SourceOptions()
    id_namespace: str = Field(
        default="",
        description="Salt for derived messageIds, so two mappings of one file never collide.",
    )
    message_id: ValueSpec | None = None
    type: ValueSpec | None = None
    event: ValueSpec | None = None
    name: ValueSpec | None = None
    user_id: ValueSpec | None = None
    anonymous_id: ValueSpec | None = None
    group_id: ValueSpec | None = None
    timestamp: ValueSpec | None = None
    channel: ValueSpec | None = None
    order_id: ValueSpec | None = None
    revenue: ValueSpec | None = None
    currency: ValueSpec | None = None
    coupon: ValueSpec | None = None
    payment_type: ValueSpec | None = None
    products: Annotated[ProductsColumn | LineItemSpec | None, BeforeValidator(_products_form)] = (
        None
    )
    properties_json: str | None = Field(
        default=None, description="A column holding a JSON object of properties (merged first)."
    )
    traits_json: str | None = Field(default=None, description="A column holding traits JSON.")
    context_json: str | None = Field(default=None, description="A column holding context JSON.")
    identifiers: dict[str, ValueSpec] = Field(default_factory=dict)
    properties: dict[str, ValueSpec] = Field(default_factory=dict)
    traits: dict[str, ValueSpec] = Field(default_factory=dict)
    context: dict[str, ValueSpec] = Field(default_factory=dict)
    traits_from_all_columns: bool = Field(
        default=False,
        description="Every column not used elsewhere becomes a trait named after it.",
    )
    properties_from_other_columns: bool = Field(
        default=False,
        description="Every column not used elsewhere becomes a property named after it.",
    )
    infer_types: bool = Field(
        default=True,
        description="For *_from_*_columns: a text column whose every value is a number or "
        "boolean is stored as one (CSV reads all columns as text).",
    )

    @model_validator(mode="after")
    def _check(self) -> Mapping:
        for kind in self.identifiers:
            if kind in (USER_ID, ANONYMOUS_ID):
                raise ValueError(f"identifiers.{kind}: map it with the top-level key {kind}")
            if kind not in BUILT_IN_KINDS and not CUSTOM_KIND.match(kind):
                raise ValueError(
                    f"identifiers.{kind}: a kind is lower-case letters, digits and _ (≤ 32)"
                )
        return self

    def used_columns(self) -> set[str]:
        """Source columns this mapping reads explicitly."""
        specs: list[ValueSpecModel | None] = [
            self.message_id,
            self.type,
            self.event,
            self.name,
            self.user_id,
            self.anonymous_id,
            self.group_id,
            self.timestamp,
            self.channel,
            self.order_id,
            self.revenue,
            self.currency,
            self.coupon,
            self.payment_type,
            *self.identifiers.values(),
            *self.properties.values(),
            *self.traits.values(),
            *self.context.values(),
        ]
        if isinstance(self.products, LineItemSpec):
            specs.extend(getattr(self.products, f) for f in LineItemSpec.model_fields)
        cols = {s.column for s in specs if s is not None and s.column is not None}
        if isinstance(self.products, ProductsColumn):
            cols.add(self.products.column)
        cols.update(c for c in (self.properties_json, self.traits_json, self.context_json) if c)
        return cols

    def identity_columns(self) -> set[str]:
        """Columns that say who the row is about (never turned into traits)."""
        specs = [self.message_id, self.user_id, self.anonymous_id, *self.identifiers.values()]
        return {s.column for s in specs if s is not None and s.column is not None}


def parse_mapping(data: dict[str, Any], where: str = "mapping") -> Mapping:
    """Check ``data`` (a parsed TOML/JSON document) and return a ``Mapping``.

    Raises ``ValidationFailed`` with the dotted path of the first wrong key.
    """
    from pydantic import ValidationError

    try:
        return Mapping.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        path = ".".join(str(p) for p in first["loc"] if not str(p).startswith("function-"))
        raise ValidationFailed(
            f"{where}: {path or 'mapping'}: {first['msg']}", field=path or "mapping"
        ) from exc


def load_mapping(path: Path) -> Mapping:
    """Read a mapping file: ``.toml`` or ``.json``."""
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise ValidationFailed(
            f"cannot read mapping {path}: {exc.strerror}", field="mapping"
        ) from exc
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            data = tomllib.loads(text.decode("utf-8"))
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        raise ValidationFailed(
            f"{path}: not valid {path.suffix[1:] or 'TOML'}: {exc}", field="mapping"
        ) from exc
    if not isinstance(data, dict):
        raise ValidationFailed(f"{path}: a mapping is a table/object", field="mapping")
    return parse_mapping(data, where=str(path))


def guess_format(path: Path) -> FileFormat:
    """The format implied by the file name (``.csv.gz`` → csv, ``.ndjson`` → jsonl, ...)."""
    name = path.name.lower()
    for suffix in (".gz", ".zst"):
        name = name.removesuffix(suffix)
    if name.endswith(".parquet") or name.endswith(".pq"):
        return "parquet"
    if name.endswith((".jsonl", ".ndjson", ".json")):
        return "jsonl"
    if name.endswith((".txt", ".dat")):
        return "whitespace"
    return "csv"
