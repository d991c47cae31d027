"""Tag definitions: immutable, validated value objects (pure, no I/O).

Three kinds, as marketers know them (标签):

* **static** (静态标签) — a descriptive attribute that rarely changes, read
  from a trait: gender, city, birthday month. Optional ``value_map`` renames
  raw values (``"m"`` → ``"male"``).
* **semi_static** (半静态标签) — a quantity that changes now and then where
  only the latest value matters: account balance, membership level. Read from
  a trait, or from the latest matching event's typed column. Optional
  ``bands`` turn a number into a label.
* **dynamic** (动态标签) — computed from events with a filter and a time
  window: orders in the last 90 days, coupons used in the last 3 months, days
  since the last visit, favourite category, average order value. The values
  a refresh replaces are kept as the tag's history (see ``storage``).

Values land in the warehouse table ``tag_values`` (one row per user and tag):
``value`` holds a label (categorical tags and banded numeric tags) and
``number`` the figure of numeric tags. All tags are evaluated *as of* an
instant, so a refresh is reproducible.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

TagName = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,62}$")]
"""Lower-case identifier: it is used in segment rules and API paths."""

TagKind = Literal["static", "semi_static", "dynamic"]

Refresh = Literal["hourly", "daily", "weekly", "manual"]
"""How often the scheduler refreshes a tag (UTC-aligned periods; weeks start on Monday)."""

StringColumn = Literal[
    "type", "event", "name", "channel", "source", "order_id", "coupon", "currency", "user_id"
]
"""Typed string columns of the event table a filter or aggregate may read."""

EventColumn = Literal[
    "type",
    "event",
    "name",
    "channel",
    "source",
    "order_id",
    "coupon",
    "currency",
    "user_id",
    "revenue",
]

ProductField = Literal["product_id", "sku", "name", "brand", "category"]

FilterOp = Literal["eq", "ne", "in", "not_in", "gt", "gte", "lt", "lte", "is_null", "not_null"]

Aggregate = Literal[
    "count",
    "distinct_count",
    "sum",
    "avg",
    "min",
    "max",
    "days_since_last",
    "days_since_first",
    "top",
]
"""``count``: matching events; ``distinct_count``: distinct values of ``of``;
``sum``/``avg``/``min``/``max``: of ``revenue`` or ``items`` (product quantities
per event); ``days_since_last``/``days_since_first``: whole UTC calendar days
between the latest/earliest matching event and the as-of instant; ``top``: the
most frequent value of ``of`` (a string column, or ``products.<field>``
weighted by quantity), ties broken by the smallest value."""

Measure = Literal["revenue", "items"]

_NUMERIC_OPS = {"gt", "gte", "lt", "lte"}
_NULL_OPS = {"is_null", "not_null"}
_LIST_OPS = {"in", "not_in"}


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class EventFilter(_Frozen):
    """One condition on a typed event column, e.g. ``coupon not_null`` or ``revenue gte 100``."""

    column: EventColumn
    op: FilterOp
    value: str | float | list[str] | None = None

    @model_validator(mode="after")
    def _check(self) -> EventFilter:
        numeric = self.column == "revenue"
        if self.op in _NULL_OPS:
            if self.value is not None:
                raise ValueError(f"{self.op} takes no value")
        elif self.op in _LIST_OPS:
            if numeric or not isinstance(self.value, list) or not self.value:
                raise ValueError(f"{self.op} needs a non-empty list of strings on a text column")
        elif self.op in _NUMERIC_OPS:
            if not numeric or isinstance(self.value, (list, str)) or self.value is None:
                raise ValueError(f"{self.op} compares revenue with a number")
        elif numeric:
            if isinstance(self.value, (list, str)) or self.value is None:
                raise ValueError(f"{self.op} on revenue needs a number")
        elif not isinstance(self.value, str):
            raise ValueError(f"{self.op} on {self.column} needs a string")
        return self


class ProductFilter(_Frozen):
    """Keeps events in which at least one product's ``field`` is one of ``values``."""

    field: ProductField
    values: list[str] = Field(min_length=1)


class EventSelector(_Frozen):
    """Which events a tag reads: names (empty = any event), column filters, a product filter."""

    events: list[str] = Field(default_factory=list)
    filters: list[EventFilter] = Field(default_factory=list)
    products: ProductFilter | None = None


class Band(_Frozen):
    """A label for numbers in ``[min, max)``; ``None`` means unbounded on that side."""

    label: str = Field(min_length=1, max_length=200)
    min: float | None = None
    max: float | None = None

    @model_validator(mode="after")
    def _check(self) -> Band:
        if self.min is not None and self.max is not None and self.min >= self.max:
            raise ValueError("band min must be below max")
        return self


class _TagBase(_Frozen):
    name: TagName
    description: str = Field(default="", max_length=2000)
    refresh: Refresh = "daily"


class StaticTag(_TagBase):
    """The latest value of a trait as of the instant, optionally renamed by ``value_map``."""

    kind: Literal["static"] = "static"
    trait: str = Field(min_length=1, max_length=200)
    value_map: dict[str, str] = Field(default_factory=dict)


class SemiStaticTag(_TagBase):
    """The latest value of a trait, or of ``column`` in the latest event matching ``where``."""

    kind: Literal["semi_static"] = "semi_static"
    trait: str | None = Field(default=None, min_length=1, max_length=200)
    where: EventSelector | None = None
    column: EventColumn | None = None
    bands: list[Band] = Field(default_factory=list)

    @model_validator(mode="after")
    def _check(self) -> SemiStaticTag:
        from_trait = self.trait is not None
        from_event = self.where is not None or self.column is not None
        if from_trait == from_event:
            raise ValueError("give either trait, or where and column (the latest event's column)")
        if from_event and (self.where is None or self.column is None):
            raise ValueError("an event-sourced semi-static tag needs both where and column")
        if self.bands and self.column is not None and self.column != "revenue":
            raise ValueError("bands apply to numbers: a numeric trait or the revenue column")
        return self


class DynamicTag(_TagBase):
    """An aggregate over the events matching ``where`` in the last ``window_days`` days."""

    kind: Literal["dynamic"] = "dynamic"
    where: EventSelector = Field(default_factory=EventSelector)
    window_days: int | None = Field(default=None, ge=1, le=36500)
    aggregate: Aggregate
    of: str | None = None
    bands: list[Band] = Field(default_factory=list)

    @model_validator(mode="after")
    def _check(self) -> DynamicTag:
        of = self.of
        agg = self.aggregate
        if agg in ("count", "days_since_last", "days_since_first"):
            if of is not None:
                raise ValueError(f"{agg} takes no 'of'")
        elif agg in ("sum", "avg", "min", "max"):
            if of not in ("revenue", "items"):
                raise ValueError(f"{agg} needs of = 'revenue' or 'items'")
        elif of is None or not (of in _STRING_COLUMNS or of in _PRODUCT_PATHS):
            raise ValueError(
                f"{agg} needs of = a text column ({', '.join(sorted(_STRING_COLUMNS))}) "
                f"or products.<{'|'.join(sorted(_PRODUCT_FIELDS))}>"
            )
        if self.bands and agg == "top":
            raise ValueError("bands apply to numeric aggregates, not top")
        return self

    @property
    def numeric(self) -> bool:
        return self.aggregate != "top"


_STRING_COLUMNS = frozenset(StringColumn.__args__)  # type: ignore[attr-defined]
_PRODUCT_FIELDS = frozenset(ProductField.__args__)  # type: ignore[attr-defined]
_PRODUCT_PATHS = frozenset(f"products.{f}" for f in _PRODUCT_FIELDS)

TagDefinition = Annotated[StaticTag | SemiStaticTag | DynamicTag, Field(discriminator="kind")]


class TagSet(_Frozen):
    """Several definitions in one file (``zhiying tags define FILE``)."""

    tags: list[TagDefinition] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique(self) -> TagSet:
        names = [t.name for t in self.tags]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"tag names repeat: {', '.join(dupes)}")
        return self


def band_label(bands: list[Band], x: float | None) -> str | None:
    """The label of the first band containing ``x`` (``min <= x < max``), or ``None``.

    The same rule the compiler emits as a SQL ``CASE``; kept here so it can be
    tested without a database.
    """
    if x is None:
        return None
    for band in bands:
        if (band.min is None or x >= band.min) and (band.max is None or x < band.max):
            return band.label
    return None
