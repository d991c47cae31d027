"""The segment rule DSL: immutable, typed nodes read from and written to JSON.

A rule is a tree. Groups (``and``, ``or``, ``not``) combine conditions; each
condition tests one thing about a person as of an instant ``at``:

- ``trait``: the person's current trait (latest ``identify``/import value);
- ``event``: did / did not perform an event, optionally filtered by property,
  within a window, with a count / sum / avg / min / max compared to a value;
- ``event_time``: when the first or last such event happened;
- ``tag`` / ``layer``: a computed tag's value, a layer's current level;
- ``segment``: membership of another segment (live or its latest snapshot).

Every node has ``type`` as its discriminator, so the JSON Schema in the
OpenAPI document describes exactly what the compiler accepts. The semantics
(what NULL, "not set" and empty windows mean) are stated on each field and
implemented twice: in ``compiler`` (SQL) and in ``reference`` (pure Python),
which a property test keeps in agreement.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta
from typing import Annotated, Any, Literal, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from zhiying.errors import ValidationFailed

Scalar = str | bool | int | float
"""A comparable literal: text, boolean (compared as the text ``true``/``false``) or number."""

CompareOp = Literal[
    "eq",
    "neq",
    "in",
    "not_in",
    "contains",
    "starts_with",
    "lt",
    "lte",
    "gt",
    "gte",
    "between",
    "is_set",
    "is_not_set",
]
DateOp = Literal["before", "after", "date_between", "within_last", "anniversary_within_next"]
TimeUnit = Literal["minutes", "hours", "days"]

_UNIT_SECONDS = {"minutes": 60, "hours": 3600, "days": 86400}
_ISO_DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")
# Property paths: ``properties.a.b`` (JSON), ``properties.products[].brand`` (typed array),
# or a top-level event column such as ``channel``. Keys are identifiers, never quoted.
_PATH = r"^[A-Za-z_][A-Za-z0-9_]*(\[\])?(\.[A-Za-z_][A-Za-z0-9_]*(\[\])?)*$"


class _Node(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def to_utc(value: datetime) -> datetime:
    """An aware UTC datetime; a naive one is read as UTC."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


class Window(_Node):
    """Which events count: the last N units before ``at``, or ``[from, to)``.

    Either ``last`` (with ``unit``) or ``from`` (with an optional ``to``). A
    relative window ends at ``at``; every event condition ignores events after
    ``at`` anyway, so results for a past ``at`` are reproducible.
    """

    last: int | None = Field(default=None, ge=1, le=100_000, description="N units before `at`.")
    unit: TimeUnit = "days"
    from_: datetime | None = Field(
        default=None, alias="from", description="Start (inclusive, UTC if no offset)."
    )
    to: datetime | None = Field(default=None, description="End (exclusive); default `at`.")

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    @model_validator(mode="after")
    def _one_kind(self) -> Self:
        if (self.last is None) == (self.from_ is None):
            raise ValueError("give either `last` (with `unit`) or `from` (with optional `to`)")
        if self.to is not None and self.from_ is None:
            raise ValueError("`to` needs `from`")
        if self.from_ is not None and self.to is not None and to_utc(self.to) <= to_utc(self.from_):
            raise ValueError("`to` must be after `from`")
        return self

    def bounds(self, at: datetime) -> tuple[datetime, datetime | None]:
        """``(start, end_exclusive)`` in aware UTC; ``end`` None means "up to ``at``"."""
        if self.last is not None:
            return at - timedelta(seconds=self.last * _UNIT_SECONDS[self.unit]), None
        assert self.from_ is not None
        return to_utc(self.from_), None if self.to is None else to_utc(self.to)


class _Comparison(_Node):
    """``op`` with its operands: ``value`` for one, ``values`` for a list or a range.

    - ``eq``/``neq``/``lt``/``lte``/``gt``/``gte``/``contains``/``starts_with``: ``value``.
    - ``in``/``not_in``: ``values`` (all of one type); ``between``: ``values`` = [low, high],
      both inclusive.
    - ``is_set``/``is_not_set``: no operand.

    A number is compared with numbers, text with text (lexically for ``lt``…),
    a boolean with the text ``true``/``false``. ``neq`` and ``not_in`` are the
    negations of ``eq`` and ``in``: they hold for a person or event that has no
    value at all. Every other operator is false on a missing value.
    """

    op: CompareOp
    value: Scalar | None = None
    values: tuple[Scalar, ...] | None = None

    @model_validator(mode="after")
    def _operands(self) -> Self:
        check_operands(self.op, self.value, self.values)
        return self


def _kind(v: Scalar) -> str:
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, int | float):
        return "number"
    return "string"


def check_operands(op: str, value: Scalar | None, values: tuple[Scalar, ...] | None) -> None:
    """Raise ``ValueError`` unless ``op`` has the operands it needs (and only those)."""
    if op in ("is_set", "is_not_set"):
        if value is not None or values is not None:
            raise ValueError(f"`{op}` takes no `value` or `values`")
        return
    if op in ("in", "not_in", "between"):
        if value is not None or not values:
            raise ValueError(f"`{op}` needs a non-empty `values` list and no `value`")
        if op == "between" and len(values) != 2:
            raise ValueError("`between` needs `values`: [low, high]")
        kinds = {_kind(v) for v in values}
        if len(kinds) != 1:
            raise ValueError(f"`values` of `{op}` must all be of one type")
        if op == "between" and kinds == {"boolean"}:
            raise ValueError("`between` compares numbers or text, not booleans")
        return
    if value is None or values is not None:
        raise ValueError(f"`{op}` needs a `value` and no `values`")
    if op in ("contains", "starts_with") and _kind(value) != "string":
        raise ValueError(f"`{op}` needs a text `value`")
    if op in ("lt", "lte", "gt", "gte") and _kind(value) == "boolean":
        raise ValueError(f"`{op}` compares numbers or text, not booleans")


def value_kind(cond: _Comparison | _Attribute | LayerCondition) -> str | None:
    """``string``/``number``/``boolean`` of the operands, None for ``is_set``/``is_not_set``."""
    if cond.value is not None:
        return _kind(cond.value)
    if cond.values:
        return _kind(cond.values[0])
    return None


class PropertyFilter(_Comparison):
    """A test on one property of an event.

    ``property`` is a path: ``properties.revenue``, ``properties.order_id``,
    ``properties.currency``, ``properties.coupon`` and ``channel``/``source``
    read typed columns; ``properties.products[].FIELD`` tests the typed array of
    products (true when *any* product passes, e.g. ``brand`` = ``Shiseido``);
    any other ``properties.a.b`` reads the JSON properties.
    """

    property: str = Field(pattern=_PATH, examples=["properties.products[].brand"])


class _Attribute(_Node):
    """A test on a person's current attribute value (trait, tag or layer).

    Besides the comparisons of ``PropertyFilter`` (``op`` with ``value`` /
    ``values``), dates written as ISO-8601 text (``1990-05-17``,
    ``2024-03-01T10:00:00Z``) are compared by calendar day (UTC):

    - ``before`` / ``after``: ``value`` is a day ``YYYY-MM-DD`` (exclusive);
    - ``date_between``: ``values`` = [first day, last day], inclusive;
    - ``within_last``: the day is within the last ``days`` days up to ``at``'s day;
    - ``anniversary_within_next``: month and day fall within the next ``days``
      days from ``at``'s day, inclusive (birthdays; 29 February counts on
      28 February in other years).
    """

    op: CompareOp | DateOp
    value: Scalar | None = None
    values: tuple[Scalar, ...] | None = None
    days: int | None = Field(default=None, ge=0, le=36_600)

    @model_validator(mode="after")
    def _operands(self) -> Self:
        if self.op in ("within_last", "anniversary_within_next"):
            if self.days is None or self.value is not None or self.values is not None:
                raise ValueError(f"`{self.op}` needs `days` and no `value` or `values`")
            if self.op == "anniversary_within_next" and self.days > 366:
                raise ValueError("`anniversary_within_next` looks at most 366 days ahead")
            return self
        if self.days is not None:
            raise ValueError(
                f"`days` belongs to within_last / anniversary_within_next, not {self.op}"
            )
        if self.op in ("before", "after"):
            if not isinstance(self.value, str) or not _ISO_DAY.match(self.value):
                raise ValueError(f"`{self.op}` needs `value`: a day YYYY-MM-DD")
            date.fromisoformat(self.value)
            return self
        if self.op == "date_between":
            vals = self.values or ()
            if len(vals) != 2 or not all(isinstance(v, str) and _ISO_DAY.match(v) for v in vals):
                raise ValueError(
                    "`date_between` needs `values`: [first day, last day] as YYYY-MM-DD"
                )
            for v in vals:
                date.fromisoformat(str(v))
            return self
        check_operands(self.op, self.value, self.values)
        return self


class TraitCondition(_Attribute):
    """The person's current value of trait ``trait`` (latest update as of ``at``)."""

    type: Literal["trait"] = "trait"
    trait: str = Field(min_length=1, max_length=200, examples=["city"])


class TagCondition(_Attribute):
    """The person's current value of computed tag ``tag``."""

    type: Literal["tag"] = "tag"
    tag: str = Field(min_length=1, max_length=200)


class LayerCondition(_Node):
    """The person's level in layer ``layer`` (latest assignment as of ``at``)."""

    type: Literal["layer"] = "layer"
    layer: str = Field(min_length=1, max_length=200, examples=["lifecycle"])
    op: Literal["eq", "neq", "in", "not_in", "is_set", "is_not_set"]
    value: str | None = None
    values: tuple[str, ...] | None = None

    @model_validator(mode="after")
    def _operands(self) -> Self:
        check_operands(self.op, self.value, self.values)
        return self


class Measure(_Node):
    """What to compare about the matching events: their count, or an aggregate of a property.

    ``count`` and ``sum`` of no events are 0; ``avg``/``min``/``max`` of no events
    (or of a property that is never set) are undefined, so the condition is false.
    ``property`` must be numeric: ``properties.revenue`` or a JSON number.
    """

    fn: Literal["count", "sum", "avg", "min", "max"] = "count"
    property: str | None = Field(default=None, pattern=_PATH)
    op: Literal["eq", "neq", "lt", "lte", "gt", "gte", "between"] = "gte"
    value: float | None = None
    values: tuple[float, float] | None = None

    @model_validator(mode="after")
    def _operands(self) -> Self:
        if (self.fn == "count") != (self.property is None):
            raise ValueError("`count` takes no `property`; sum/avg/min/max need one")
        if self.op == "between":
            if self.values is None or self.value is not None:
                raise ValueError("`between` needs `values`: [low, high] and no `value`")
        elif self.value is None or self.values is not None:
            raise ValueError(f"`{self.op}` needs a `value` and no `values`")
        return self


class EventCondition(_Node):
    """Did (or did not) the person perform ``event``?

    Only ``track`` events named ``event`` that pass every ``where`` filter,
    fall in ``window`` (default: ever) and happened at or before ``at`` count.
    With ``performed`` true (the default) the condition holds when ``measure``
    holds (default: count ≥ 1); with ``performed`` false it holds when no such
    event exists (a ``measure`` is then not allowed: wrap it in ``not``).
    """

    type: Literal["event"] = "event"
    event: str = Field(min_length=1, max_length=200, examples=["Order Completed"])
    performed: bool = True
    where: tuple[PropertyFilter, ...] = ()
    window: Window | None = None
    measure: Measure | None = None

    @model_validator(mode="after")
    def _measure(self) -> Self:
        if not self.performed and self.measure is not None:
            raise ValueError("`performed: false` takes no `measure`; use a `not` group")
        return self


class EventTimeCondition(_Node):
    """When did the person first (or last) perform ``event`` (with ``where`` filters)?

    - ``within``: that moment is inside ``window``;
    - ``not_within``: it exists and is outside ``window`` (e.g. the last order
      was more than 90 days ago: ``{"last": 90}``);
    - ``before`` / ``after``: it is before / after the instant ``value``.

    A person who never performed the event fails every ``event_time`` test.
    """

    type: Literal["event_time"] = "event_time"
    event: str = Field(min_length=1, max_length=200)
    which: Literal["first", "last"]
    where: tuple[PropertyFilter, ...] = ()
    op: Literal["within", "not_within", "before", "after"]
    window: Window | None = None
    value: datetime | None = None

    @model_validator(mode="after")
    def _operands(self) -> Self:
        if self.op in ("within", "not_within"):
            if self.window is None or self.value is not None:
                raise ValueError(f"`{self.op}` needs a `window` and no `value`")
        elif self.value is None or self.window is not None:
            raise ValueError(f"`{self.op}` needs `value` (an instant) and no `window`")
        return self


class SegmentCondition(_Node):
    """Membership of another segment.

    ``live`` (default) evaluates that segment's rule as of ``at``; ``snapshot``
    uses its latest materialised membership at or before ``at``.
    """

    type: Literal["segment"] = "segment"
    segment: str = Field(min_length=1, max_length=40, examples=["seg_1a2b3c4d5e6f"])
    source: Literal["live", "snapshot"] = "live"


class AndGroup(_Node):
    """All of ``rules`` hold."""

    type: Literal["and"] = "and"
    rules: tuple[Rule, ...] = Field(min_length=1)


class OrGroup(_Node):
    """At least one of ``rules`` holds."""

    type: Literal["or"] = "or"
    rules: tuple[Rule, ...] = Field(min_length=1)


class NotGroup(_Node):
    """``rule`` does not hold."""

    type: Literal["not"] = "not"
    rule: Rule


Condition = (
    TraitCondition
    | EventCondition
    | EventTimeCondition
    | TagCondition
    | LayerCondition
    | SegmentCondition
)

Rule = Annotated[
    AndGroup
    | OrGroup
    | NotGroup
    | TraitCondition
    | EventCondition
    | EventTimeCondition
    | TagCondition
    | LayerCondition
    | SegmentCondition,
    Field(discriminator="type"),
]
"""Any node of the DSL; ``type`` says which."""

AndGroup.model_rebuild()
OrGroup.model_rebuild()
NotGroup.model_rebuild()

NODE_TYPES = frozenset(
    {"and", "or", "not", "trait", "event", "event_time", "tag", "layer", "segment"}
)


def rule_path(loc: tuple[int | str, ...]) -> str:
    """A pydantic error location as a path inside the rule (``rules.2.window.last``).

    Discriminated unions put the node type into ``loc`` (``rules, 2, event, window``);
    it is dropped where it stands first, after a list index or after a ``rule`` field.
    """
    out: list[str] = []
    for i, part in enumerate(loc):
        before = loc[i - 1] if i else None
        is_tag = (
            isinstance(part, str)
            and part in NODE_TYPES
            and (i == 0 or isinstance(before, int) or before == "rule")
        )
        if not is_tag:
            out.append(str(part))
    return ".".join(out)


# --- documents the API speaks ----------------------------------------------------------


class SegmentCreate(BaseModel):
    """A new segment: a unique name, the rule and an optional refresh interval."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    description: str = Field(default="", max_length=2000)
    rule: Rule
    refresh_every_minutes: int | None = Field(
        default=None,
        ge=5,
        le=525_600,
        description="Materialise on this interval (minutes); null: only on demand.",
    )

    @field_validator("name")
    @classmethod
    def _strip(cls, v: str) -> str:
        v = v.strip()
        if not v:
            raise ValueError("name must not be blank")
        return v


class SegmentUpdate(BaseModel):
    """Fields to change; absent fields keep their value."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, min_length=1, max_length=200)
    description: str | None = Field(default=None, max_length=2000)
    rule: Rule | None = None
    refresh_every_minutes: int | None = Field(default=None, ge=5, le=525_600)


class SegmentPublic(BaseModel):
    segment_id: str
    name: str
    description: str
    rule: Rule
    refresh_every_minutes: int | None
    version: int
    created_at: datetime
    updated_at: datetime
    last_snapshot_at: datetime | None = None
    last_member_count: int | None = None


class PreviewRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rule: Rule
    at: datetime | None = Field(default=None, description="Evaluate as of (default: now).")
    sample: int = Field(default=20, ge=0, le=500, description="How many profiles to return.")


class ProfileSample(BaseModel):
    one_id: str
    traits: dict[str, Any]


class PreviewResult(BaseModel):
    count: int
    sample: list[ProfileSample]
    sql: str
    dialect: str
    at: datetime


class SnapshotPublic(BaseModel):
    segment_id: str
    snapshot_at: datetime
    version: int
    member_count: int
    entered: int
    exited: int


def parse_rule_document(doc: Any) -> tuple[Any, dict[str, Any]]:
    """Split a JSON document into (rule, metadata): either a bare rule or
    ``{"name": ..., "description": ..., "rule": {...}}``."""
    if isinstance(doc, dict) and "rule" in doc and "type" not in doc:
        meta = {k: v for k, v in doc.items() if k != "rule"}
        return doc["rule"], meta
    return doc, {}


_RULE_ADAPTER: TypeAdapter[Rule] = TypeAdapter(Rule)


def parse_rule(doc: Any) -> Rule:
    """Validate a rule from JSON data; a bad rule raises ``ValidationFailed`` whose
    ``field`` is the path inside the rule (``rules.2.window.last``)."""
    try:
        return _RULE_ADAPTER.validate_python(doc)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise ValidationFailed(
            f"invalid rule: {first['msg']}", field=rule_path(tuple(first["loc"])) or "rule"
        ) from exc


def rule_json(rule: Rule) -> Any:
    """The JSON data of ``rule`` (``from`` spelled as in the DSL, unset fields omitted)."""
    return _RULE_ADAPTER.dump_python(rule, mode="json", by_alias=True, exclude_none=True)
