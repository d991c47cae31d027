"""Rule → one ibis expression → SQL for DuckDB, ClickHouse, PostgreSQL and PySpark.

Pure: no I/O. The expression reads unbound warehouse tables (``events``,
``one_id_aliases``, ``trait_updates``, ``person_keys``, ``tag_values``,
``layer_values``, ``segment_members``) and returns one column, ``one_id``: the
members as of ``at``.

People are integers. Every row names its person by ``person_key`` (events and
trait updates carry it; tags, layers and snapshots are keyed by ``one_id`` and
are looked up in the ``person_keys`` dictionary, only when a rule reads them).
A person is ``coalesce(one_id_aliases.person_key, person_key)`` with the alias
row matched on ``alias_key``: rows written before a merge count for the
surviving person. All grouping and joining is on that integer (text ONE_IDs
cost DuckDB ~3.5× in ``GROUP BY``); the members' keys are mapped back to
``one_id`` through ``person_keys`` at the very end, and a count needs no
mapping at all (``CompiledRule.count_sql``). A row whose ``person_key`` is
NULL (an event ``append_events`` wrote for a ONE_ID ingestion never stored)
belongs to nobody.

How it is built. Every condition becomes a *feature* (a per-person aggregate:
a filtered count, a sum, the latest trait value…) plus a boolean test of that
feature. Features of one source are computed in one ``GROUP BY person`` pass;
the events are one filtered scan per distinct *row set* (event name, window,
property filters), ``UNION ALL``ed and tagged (see ``_event_scan``). The
per-source feature tables are joined on the person and the rule's boolean
tree filters the result. Which people are candidates:

- when the rule needs some source (an ``and`` holding ``city = Beijing`` needs
  a trait row), that source drives and the others are left-joined. The driver
  aggregates only people with a row passing such a condition's row test
  (``_Compiled.row_test``: a latest value can only be Beijing if some value
  was), and the other sources are read only for the people the driver's own
  conditions keep, through one join on a small key map (``_mapped``);
- when it needs none but is false for a person with no data, the feature
  tables are full-outer-joined;
- when it is true for a person with no data (``not …``, ``did not …``), every
  person the warehouse knows as of ``at`` is a candidate (events, trait
  updates, tags, layers).

Node types map to handler functions in ``_HANDLERS``; a combination the
compiler cannot express raises ``UnsupportedRule`` naming the path inside the
rule.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any, Literal, Protocol, TypeVar

import ibis
import ibis.backends.sql.compilers as sql_compilers
import ibis.backends.sql.rewrites as sql_rewrites
import ibis.expr.datatypes as dt
import ibis.expr.operations as ops
import ibis.expr.types as ir
import sqlglot as sg
import sqlglot.expressions as sge
from ibis.expr.rewrites import flatten_predicates

from zhiying.errors import ValidationFailed
from zhiying.segments import sqlext
from zhiying.segments.models import (
    AndGroup,
    EventCondition,
    EventTimeCondition,
    LayerCondition,
    NotGroup,
    OrGroup,
    PropertyFilter,
    Rule,
    SegmentCondition,
    TagCondition,
    TraitCondition,
    Window,
    _Attribute,
    to_utc,
    value_kind,
)
from zhiying.warehouse.schema import (
    EVENTS_STORED,
    LAYER_VALUES,
    ONE_ID_ALIASES,
    PERSON_KEYS,
    PRODUCT_LISTS,
    SEGMENT_MEMBERS,
    TAG_VALUES,
    TRAIT_UPDATES,
)

SqlDialect = Literal["duckdb", "clickhouse", "postgres", "pyspark"]
DIALECTS: tuple[SqlDialect, ...] = ("duckdb", "clickhouse", "postgres", "pyspark")


class UnsupportedRule(ValidationFailed):
    """The rule is valid JSON but asks for something the compiler cannot express."""

    code = "unsupported_rule"


class UnknownName(ValidationFailed):
    """The rule names a trait, event or segment the system does not know."""

    code = "unknown_name"


class Catalog(Protocol):
    """What the compiler needs to know about other segments."""

    def segment_rule(self, segment_id: str) -> Rule | None:
        """The rule of segment ``segment_id``, or None when there is no such segment."""
        ...

    def latest_snapshot(self, segment_id: str, at: datetime) -> datetime | None:
        """The latest snapshot of ``segment_id`` taken at or before ``at``."""
        ...


class NoSegments:
    """A catalog without segments (compiling a rule that references none)."""

    def segment_rule(self, segment_id: str) -> Rule | None:
        return None

    def latest_snapshot(self, segment_id: str, at: datetime) -> datetime | None:
        return None


# --- unbound warehouse tables ---------------------------------------------------------

_T_EVENTS = ibis.table(ibis.Schema.from_pyarrow(EVENTS_STORED), name="events")
_T_ALIASES = ibis.table(ibis.Schema.from_pyarrow(ONE_ID_ALIASES), name="one_id_aliases")
_T_TRAITS = ibis.table(ibis.Schema.from_pyarrow(TRAIT_UPDATES), name="trait_updates")
_T_KEYS = ibis.table(ibis.Schema.from_pyarrow(PERSON_KEYS), name="person_keys")
_T_TAGS = ibis.table(ibis.Schema.from_pyarrow(TAG_VALUES), name="tag_values")
_T_LAYERS = ibis.table(ibis.Schema.from_pyarrow(LAYER_VALUES), name="layer_values")
_T_MEMBERS = ibis.table(ibis.Schema.from_pyarrow(SEGMENT_MEMBERS), name="segment_members")

FALSE = ibis.literal(False)
"""The literal ``FALSE`` (``x.fill_null(FALSE)``; ``fill_null(False)`` infers the literal's
type anew at every call)."""
ZERO = ibis.literal(0)
"""The literal ``0`` (an ``int8``, as ``fill_null(0)`` would make it)."""

PERSON = "person"
"""Column of the resolved person (an integer key) in rows and feature tables."""
STORED = "stored_key"
"""Column of the key a row was stored under (before merges)."""


_N = TypeVar("_N", bound=ops.Node)


def node(cls: type[_N], **arguments: Any) -> _N:
    """``cls(**arguments)``, for a node this module builds itself.

    ibis validates a node's arguments in two steps: ``inspect.Signature.bind``
    matches them to the signature, then each is checked (and coerced) by its
    annotation. Given every argument by name, the first step is not needed:
    ``__recreate__`` (how ibis copies and unpickles nodes) does the second only,
    about a sixth less per node (a ``Select``: 103 → 86 µs). A missing argument
    still raises, an unknown one would be ignored: the callers here name each one."""
    return cls.__recreate__(arguments)  # type: ignore[no-any-return]


def column(table: ir.Table, name: str) -> ir.Column:
    """``table[name]`` (a ``Field`` node), built as ``node`` builds nodes."""
    return node(ops.Field, rel=table.op(), name=name).to_expr()


def select(
    table: ir.Table, where: Iterable[ir.BooleanValue] = (), /, **values: ir.Value
) -> ir.Table:
    """``SELECT values FROM table WHERE where`` as one relation.

    ``table.filter(*where).select(**values)`` makes two nodes (``Filter``, whose
    columns are a field per column of ``table``: 27 for ``events``, then
    ``Project``), each rewritten into ibis's SQL-level ``Select`` when the
    expression compiles; building that ``Select`` directly costs a third as
    much and gives the SQL engines one query level instead of two. As in
    ``Table.filter``, conjunctions are split and repeated predicates dropped.
    ``where`` and ``values`` read ``table``'s columns and hold no aggregate or
    window function (which ``Table.filter``/``select`` would rewrite into
    subqueries or windows); both are checked.
    """
    parent = table.op()
    selections = {name: value.op() for name, value in values.items()}
    predicates = tuple(flatten_predicates([w.op() for w in where]))
    _check_rowwise(parent, (*selections.values(), *predicates))
    return node(
        sql_rewrites.Select, parent=parent, selections=selections, predicates=predicates
    ).to_expr()


_NOT_ROWWISE = (ops.Reduction, ops.Analytic, ops.WindowFunction)


def _check_rowwise(parent: ops.Relation, values: Iterable[ops.Value]) -> None:
    """Raise ``ValueError`` unless every one of ``values`` reads ``parent`` only and holds
    no aggregate or window function.

    One walk of all the values' expressions, not entering relations (``value.find``
    per value walked shared sub-expressions again, each walk through ibis's pattern
    machinery: a tenth of building a rule's expression)."""
    seen: set[ops.Node] = set()
    pending: list[ops.Node] = []
    for value in values:
        if not value.relations <= {parent}:
            raise ValueError(f"not a row-wise value of {parent!r}: {value!r}")
        pending.append(value)
    while pending:
        each = pending.pop()
        if each in seen:
            continue
        seen.add(each)
        if isinstance(each, _NOT_ROWWISE):
            raise ValueError(f"not a row-wise value of {parent!r}: {each!r}")
        pending.extend(c for c in each.__children__ if isinstance(c, ops.Value))


def aggregate(
    table: ir.Table, groups: dict[str, ir.Value], metrics: dict[str, ir.Value]
) -> ir.Table:
    """``SELECT groups, metrics FROM table GROUP BY groups``: ``metrics`` are aggregates of
    ``table``'s rows, named.

    The node ``table.group_by(**groups).aggregate(**metrics)`` builds when every value
    reads ``table`` itself, without binding (an alias per value, then a map of
    ``table``'s ancestors to re-point each value at ``table``: more than half the
    cost of a two-metric aggregate, metrics included). ibis's ``Aggregate`` still
    checks that the values read ``table`` (``tests/segments/test_lean_compile.py``
    checks the node is the same).
    """
    return node(
        ops.Aggregate,
        parent=table.op(),
        groups={name: value.op() for name, value in groups.items()},
        metrics={name: value.op() for name, value in metrics.items()},
    ).to_expr()


def among(value: ir.Value, column: ir.Table) -> ir.BooleanValue:
    """``value IN (SELECT … FROM column)``; ``column`` is a table of one column.

    ``value.isin(column[name])`` would first wrap ``column`` in a projection of
    that column (one more relation to build and rewrite).
    """
    return node(ops.InSubquery, rel=column.op(), needle=value.op()).to_expr()


def join_refs(*tables: ir.Table) -> list[ir.Table]:
    """``tables`` as the participants of one join (``joined``): build its conditions
    and columns on these."""
    return [
        node(ops.JoinReference, parent=t.op(), identifier=i).to_expr() for i, t in enumerate(tables)
    ]


def joined(
    refs: list[ir.Table],
    links: Iterable[tuple[Literal["inner", "left"], ir.BooleanValue]],
    **values: ir.Value,
) -> ir.Table:
    """``refs[0]`` joined to each next reference (``how``, ``on``), as ``values``.

    The join node ibis's ``Table.join`` + ``select`` would build, without
    re-deriving every column of both sides to disambiguate their names (a
    join cost about 1 ms that way); the ``values`` name every column.
    """
    first, rest = refs[0].op(), refs[1:]
    links_ = tuple(
        node(ops.JoinLink, how=how, table=ref.op(), predicates=(on.op(),))
        for ref, (how, on) in zip(rest, links, strict=True)
    )
    values_ = {name: value.op() for name, value in values.items()}
    return ir.Table(node(ops.JoinChain, first=first, rest=links_, values=values_))


def columns_of(table: ir.Table, names: Iterable[str]) -> dict[str, ir.Value]:
    """``names`` of ``table``, as ``select``'s values."""
    return {name: column(table, name) for name in names}


def keys_of(table: ir.Table) -> ir.Table:
    """``table`` (with a ``one_id`` column) joined to its ONE_IDs' keys, as ``stored_key``.

    Only the dictionary rows of ``table``'s ONE_IDs are read. A ONE_ID with two
    dictionary rows (a key written before an operational commit that failed,
    and the retry's) takes the larger, as ``append_events`` does.
    """
    keys = _T_KEYS
    d = select(
        keys, [keys["one_id"].isin(table["one_id"])], **columns_of(keys, ["one_id", "person_key"])
    )
    d = aggregate(d, {"kid": d["one_id"]}, {"k": d["person_key"].max()})
    t, k = join_refs(table, d)
    return joined(
        [t, k],
        [("inner", t["one_id"] == k["kid"])],
        **columns_of(t, table.columns),
        **{STORED: k["k"]},
    )


def _resolved(rows: ir.Table, columns: Iterable[str]) -> ir.Table:
    """``rows`` (with ``stored_key``) as ``person`` (current owner) and ``columns``."""
    r, a = join_refs(rows, _T_ALIASES)
    return joined(
        [r, a],
        [("left", r[STORED] == a["alias_key"])],
        **{PERSON: ibis.coalesce(a["person_key"], r[STORED])},
        **columns_of(r, columns),
    )


def _mapped(rows: ir.Table, people: ir.Table, columns: Iterable[str]) -> ir.Table:
    """The rows of ``people`` only (a table of distinct ``person`` keys), resolved.

    One inner join on a small map from stored key to person: each person's own
    key and the keys merged into it. It replaces the alias join and a semi-join
    on every scanned row (DuckDB also pushes the map's keys into the scan as a
    filter). Merges are transitively closed, so a person is never itself a
    merged-away key and each stored key appears once in the map.
    """
    own = select(people, raw=people[PERSON], owner=people[PERSON])
    a = _T_ALIASES
    merged = select(
        a,
        [among(a["person_key"], people), a["alias_key"].notnull()],
        raw=a["alias_key"],
        owner=a["person_key"],
    )
    r, m = join_refs(rows, own.union(merged))
    return joined(
        [r, m], [("inner", r[STORED] == m["raw"])], **{PERSON: m["owner"]}, **columns_of(r, columns)
    )


def instant(at: datetime) -> ir.TimestampScalar:
    """A UTC instant literal that means the same on every dialect."""
    return sqlext.utc_instant(to_utc(at).strftime("%Y-%m-%d %H:%M:%S.%f"))


def _pre(path: str) -> str:
    """``path`` as a prefix of a child's path (empty at the root)."""
    return f"{path}." if path else ""


# --- typed event properties -------------------------------------------------------------

# ``properties.X`` paths stored in typed columns (Segment e-commerce spec) and their kind.
TYPED_PROPERTIES: dict[str, tuple[str, str]] = {
    "properties.revenue": ("revenue", "number"),
    "properties.order_id": ("order_id", "string"),
    "properties.currency": ("currency", "string"),
    "properties.coupon": ("coupon", "string"),
    "channel": ("channel", "string"),
    "source": ("source", "string"),
}
PRODUCT_FIELDS: dict[str, str] = {
    "product_id": "string",
    "sku": "string",
    "name": "string",
    "brand": "string",
    "category": "string",
    "price": "number",
    "quantity": "number",
    "coupon": "string",
}
PRODUCTS_PREFIX = "properties.products[]."
ROW_SET = "row_set"
"""Column of the scanned events: which condition's row set a row belongs to."""


# --- comparisons ---------------------------------------------------------------------------


def _lit(v: Any) -> Any:
    if isinstance(v, bool):
        return "true" if v else "false"
    return v


def exact(v: Any) -> Decimal:
    """A number operand as the decimal it is written as (``999.99`` → ``Decimal("999.99")``):
    money is compared exactly, never as float."""
    return v if isinstance(v, Decimal) else Decimal(repr(v))


def money(v: Any) -> ir.DecimalScalar:
    """A DECIMAL literal of ``v`` with exactly its own digits (precision ≥ 18)."""
    d = exact(v)
    _, digits, exponent = d.as_tuple()
    assert isinstance(exponent, int)
    scale = max(0, -exponent)
    precision = max(18, len(digits) + max(0, exponent), scale + 1)
    return sqlext.money(format(d, "f"), precision, scale)


def money_compare(
    col: ir.Value,
    op: str,
    value: Any,
    values: tuple[Any, ...] | None,
    times: ir.IntegerValue | None = None,
) -> ir.BooleanValue:
    """``compare`` on a DECIMAL (or integer) column with DECIMAL literals: exact.

    ``times``: compare with each operand multiplied by it (an average as a sum).
    An operand with more decimals than money's two (``gte 999.995``) compares
    with the column widened to its scale.
    """
    operands = [exact(v) for v in ([] if value is None else [value]) + list(values or ())]
    scale = max((max(0, -int(d.as_tuple().exponent)) for d in operands), default=0)
    if scale > 2:
        col = col.cast(dt.Decimal(38, scale))

    def lit(v: Any) -> ir.Value:
        return money(v) if times is None else money(v) * times

    return compare(
        col,
        op,
        None if value is None else lit(value),
        None if values is None else tuple(lit(v) for v in values),
    )


def _count_operand(v: Any) -> Any:
    """A count's operand: ``2.0`` as the integer 2, so the count is compared as an
    integer (a float or DECIMAL literal makes the engine cast every group's count)."""
    return int(v) if isinstance(v, float) and v.is_integer() else v


def _count_operands(values: tuple[Any, ...] | None) -> tuple[Any, ...] | None:
    return None if values is None else tuple(_count_operand(v) for v in values)


def compare(col: ir.Value, op: str, value: Any, values: tuple[Any, ...] | None) -> ir.BooleanValue:
    """``col op operand`` as a boolean that is never NULL (missing values per the DSL)."""
    if op == "is_set":
        return col.notnull()
    if op == "is_not_set":
        return col.isnull()
    if op in ("neq", "not_in"):
        return ~compare(col, "eq" if op == "neq" else "in", value, values)
    vals = tuple(_lit(v) for v in values or ())
    v = _lit(value)
    test: ir.BooleanValue
    if op == "eq":
        test = col == v
    elif op == "in":
        test = col.isin(list(vals))
    elif op == "contains":
        test = col.contains(v)
    elif op == "starts_with":
        test = col.startswith(v)
    elif op == "lt":
        test = col < v
    elif op == "lte":
        test = col <= v
    elif op == "gt":
        test = col > v
    elif op == "gte":
        test = col >= v
    elif op == "between":
        test = col.between(vals[0], vals[1])
    else:  # pragma: no cover - the model rejects other ops
        raise UnsupportedRule(f"operator {op!r} is not a comparison", field="op")
    return test.fill_null(FALSE)


def if_any(rows: ir.Table, where: ir.BooleanValue | None, agg: ir.Value) -> ir.Value:
    """``agg`` when some row passes ``where`` (None: every row does; a group has one), else
    NULL.

    ClickHouse's ``minIf``/``maxIf``/``argMaxIf`` return the type's default
    (1970-01-01, ``''``) rather than NULL for a group with no such row; this
    makes "no such row" NULL on every engine (other engines need no extra
    count: ``sqlext.NullIfNoRows``).
    """
    if where is None:
        return agg
    return sqlext.null_if_no_rows(agg, rows.count(where=where))


# --- sources and features --------------------------------------------------------------------

Source = Literal["events", "traits", "tags", "layers", "snapshots"]
RowFn = Callable[[ir.Table], ir.Value]
Test = Callable[[ir.Table], ir.BooleanValue]


@dataclass(frozen=True)
class _RowSet:
    """The events one or more conditions count: ``event`` rows at or after ``start``
    (and before ``end``) passing every one of ``filters`` (the property filters).
    Scanned once, tagged ``number``."""

    number: int
    event: str
    start: datetime | None
    filters: Callable[[ir.Table], list[ir.BooleanValue]]
    # The window's exclusive end (None: up to ``at``) and whether the set has
    # property filters: sets of one bounded window without filters share a scan.
    end: datetime | None = None
    filtered: bool = True


@dataclass
class _Features:
    """Per-source named aggregates, deduplicated by a canonical key."""

    aggs: dict[Source, dict[str, RowFn]] = field(default_factory=dict)
    keys: dict[tuple[Source, str], str] = field(default_factory=dict)
    event_names: set[str] = field(default_factory=set)
    trait_keys: set[str] = field(default_factory=set)
    # Trait columns the aggregates read (``value`` and/or ``number``): only those are
    # scanned (reading ``number`` for nothing cost the lapsed segment ~6 % of its query).
    trait_columns: set[str] = field(default_factory=set)
    tag_names: set[str] = field(default_factory=set)
    layer_names: set[str] = field(default_factory=set)
    snapshots: set[tuple[str, datetime]] = field(default_factory=set)
    # Event columns the aggregates read (beyond the person): measures, timestamps.
    event_columns: set[str] = field(default_factory=set)
    # Distinct row sets of the event conditions, by canonical key: (number, event
    # name, earliest timestamp or None, row test on the stored events).
    event_sets: dict[str, _RowSet] = field(default_factory=dict)
    # Sources read by each node being compiled (innermost last).
    reading: list[set[Source]] = field(default_factory=list)

    def attribute_names(self, source: Source) -> set[str]:
        """The traits, tags or layers the rule reads from ``source``."""
        return {"traits": self.trait_keys, "tags": self.tag_names, "layers": self.layer_names}[
            source
        ]

    def add(self, source: Source, key: str, fn: RowFn) -> str:
        for frame in self.reading:
            frame.add(source)
        name = self.keys.get((source, key))
        if name is None:
            name = f"{source[0]}{len(self.keys)}"
            self.keys[(source, key)] = name
            self.aggs.setdefault(source, {})[name] = fn
        return name


@dataclass(frozen=True)
class _Compiled:
    """A compiled node: its test over the joined feature table, its value for a
    person with no data, the sources every member must appear in, the sources
    its test reads, and (for ``and``) the flattened conjuncts.

    ``row_test``, when set, is a test on the node's source rows (resolved, one
    per stored row) that some row of every person passing ``test`` passes: a
    latest value equal to Beijing was a value equal to Beijing. The driver
    aggregates only people with such a row.
    """

    test: Test
    on_empty: bool
    requires: frozenset[Source]
    reads: frozenset[Source] = frozenset()
    conjuncts: tuple[_Compiled, ...] = ()
    row_test: Test | None = None

    def parts(self) -> tuple[_Compiled, ...]:
        return self.conjuncts or (self,)


class _Compiler:
    def __init__(self, at: datetime, catalog: Catalog) -> None:
        self.at = to_utc(at)
        self.catalog = catalog
        self.f = _Features()
        self._stack: list[str] = []

    def node(self, rule: Rule, path: str) -> _Compiled:
        handler = _HANDLERS.get(type(rule))
        if handler is None:  # pragma: no cover - every model type has a handler
            raise UnsupportedRule(f"no compile rule for {type(rule).__name__}", field=path)
        reads: set[Source] = set()
        self.f.reading.append(reads)
        try:
            compiled = handler(self, rule, path)
        finally:
            self.f.reading.pop()
        return replace(compiled, reads=frozenset(reads))

    # -- event rows ------------------------------------------------------------------

    def property_test(
        self, flt: PropertyFilter, path: str
    ) -> Callable[[ir.Table], ir.BooleanValue]:
        prop = flt.property
        kind = value_kind(flt)
        if prop.startswith(PRODUCTS_PREFIX):
            fld = prop.removeprefix(PRODUCTS_PREFIX)
            fkind = PRODUCT_FIELDS.get(fld)
            if fkind is None:
                raise UnsupportedRule(
                    f"products have no field {fld!r}; known: {', '.join(PRODUCT_FIELDS)}",
                    field=f"{_pre(path)}property",
                )
            self._check_kind(kind, fkind, prop, f"{_pre(path)}value")
            # A field with a derived list column (``product_brands``: the products'
            # brands in order, NULLs kept; ``schema.DERIVED``) is tested on that list:
            # DuckDB then decodes one VARCHAR[] instead of every field of every
            # product (bought Shiseido twice, 20M events, one thread: 0.24 s instead
            # of 0.51 s by hand).
            # Same elements, same tests, so the same NULL semantics as the struct.
            listed = PRODUCT_LISTS.get(fld)

            def field_list(
                r: ir.Table, each: Callable[[ir.Value], ir.Value] | None = None
            ) -> ir.ArrayValue:
                """The products' ``fld`` values, or ``each`` of them when given."""
                if listed is not None:
                    values: ir.ArrayValue = r[listed]
                    return values if each is None else values.map(each)
                fn = each or (lambda v: v)
                return r["products"].map(lambda p: fn(sqlext.element_field(p, fld)))

            if fkind == "string" and flt.op in ("eq", "in"):
                # "Some product's brand is X" as "the list of brands contains X": on
                # DuckDB ``list_contains(list_apply(…))`` takes about 0.75× the CPU of
                # ``list_bool_or(list_apply(… = X))`` on 2M orders; every dialect
                # has it (ClickHouse ``has``, PostgreSQL ``@>``, Spark ``array_contains``).
                wanted = [flt.value] if flt.op == "eq" else list(flt.values or ())

                def has(r: ir.Table) -> ir.BooleanValue:
                    names = field_list(r)
                    out = names.contains(_lit(wanted[0]))
                    for more in wanted[1:]:
                        out = out | names.contains(_lit(more))
                    return out.fill_null(FALSE)

                return has

            # Numbers (``price`` is DECIMAL money, ``quantity`` an integer) compare
            # exactly with DECIMAL literals.
            test = money_compare if fkind == "number" else compare

            def elem(v: ir.Value) -> ir.BooleanValue:
                return test(v, flt.op, flt.value, flt.values)

            return lambda r: field_list(r, elem).anys().fill_null(FALSE)
        if "[]" in prop:
            raise UnsupportedRule(
                "only properties.products[] is an array of objects the warehouse types",
                field=f"{_pre(path)}property",
            )
        typed = TYPED_PROPERTIES.get(prop)
        if typed is not None:
            column, ckind = typed
            self._check_kind(kind, ckind, prop, f"{_pre(path)}value")

            # ``revenue`` is DECIMAL money: compared with DECIMAL literals, exactly.
            typed_compare = money_compare if ckind == "number" else compare

            def typed_test(r: ir.Table) -> ir.BooleanValue:
                return typed_compare(r[column], flt.op, flt.value, flt.values)

            return typed_test
        if not prop.startswith("properties."):
            raise UnsupportedRule(
                f"unknown event field {prop!r}: use properties.NAME, "
                f"properties.products[].FIELD or one of {', '.join(TYPED_PROPERTIES)}",
                field=f"{_pre(path)}property",
            )
        keys = tuple(prop.split(".")[1:])
        if flt.op in ("contains", "starts_with"):
            kind = "string"
        if kind is None:
            # is_set / is_not_set: the "present" scalar is itself the (never NULL) test;
            # comparing it as a value would ask whether the boolean is NULL.
            def present(r: ir.Table) -> ir.BooleanValue:
                found = sqlext.json_scalar(r["properties"], keys, "present")
                return found if flt.op == "is_set" else ~found

            return present
        jkind: sqlext.JsonKind = kind  # type: ignore[assignment]
        return lambda r: compare(
            sqlext.json_scalar(r["properties"], keys, jkind), flt.op, flt.value, flt.values
        )

    @staticmethod
    def _check_kind(kind: str | None, expected: str, prop: str, path: str) -> None:
        if kind is None or kind == expected or (kind == "boolean" and expected == "string"):
            return
        raise UnsupportedRule(
            f"{prop} holds {'numbers' if expected == 'number' else 'text'}; "
            f"compare it with {'a number' if expected == 'number' else 'text'}",
            field=path,
        )

    def measure_column(
        self, prop: str, path: str
    ) -> tuple[Callable[[ir.Table], ir.NumericValue], bool]:
        """The column a measure aggregates, and whether it is DECIMAL money (typed
        ``revenue``: summed, compared and averaged exactly) rather than a JSON number."""
        typed = TYPED_PROPERTIES.get(prop)
        if typed is not None:
            if typed[1] != "number":
                raise UnsupportedRule(f"{prop} is text; aggregate a number", field=path)
            column = typed[0]
            self.f.event_columns.add(column)
            return (lambda r: r[column]), True
        if "[]" in prop:
            raise UnsupportedRule(
                "aggregates over array elements are not supported; "
                "filter on them in `where` and aggregate properties.revenue",
                field=path,
            )
        if not prop.startswith("properties."):
            raise UnsupportedRule(f"{prop} is not a numeric event property", field=path)
        keys = tuple(prop.split(".")[1:])
        self.f.event_columns.add("properties")
        return (lambda r: sqlext.json_scalar(r["properties"], keys, "number")), False

    def event_rows(
        self, event: str, where: tuple[PropertyFilter, ...], window: Window | None, path: str
    ) -> tuple[Callable[[ir.Table], ir.BooleanValue | None], str]:
        """The test "this aggregated row is one of the condition's events" (None: every
        row is, the rule has one row set) and a
        canonical key of that set of events (for deduplication).

        The window and property filters are applied once, where the events are
        scanned (``_event_scan``); every scanned row carries the number of its
        row set, so an aggregate's filter is an integer comparison.
        """
        self.f.event_names.add(event)
        tests = [self.property_test(flt, f"{_pre(path)}where.{i}") for i, flt in enumerate(where)]

        def filters(r: ir.Table) -> list[ir.BooleanValue]:
            return [t(r) for t in tests]

        bounds = window.bounds(self.at) if window else None
        key = json.dumps(
            [event, [w.model_dump(mode="json") for w in where], str(bounds)], sort_keys=True
        )
        row_set = self.f.event_sets.get(key)
        if row_set is None:
            start, end = bounds if bounds else (None, None)
            row_set = _RowSet(len(self.f.event_sets), event, start, filters, end, bool(where))
            self.f.event_sets[key] = row_set
        number = row_set.number
        sets = self.f.event_sets

        def in_set(r: ir.Table) -> ir.BooleanValue | None:
            # Read when the aggregates are built, after every condition: with one row
            # set every scanned row is in it (no tag, no filter on the aggregate).
            return None if len(sets) == 1 else r[ROW_SET] == number

        return in_set, key

    # -- attributes (traits, tags, layers) ----------------------------------------------

    def attribute_test(
        self, source: Source, name: str, cond: _Attribute | LayerCondition, path: str
    ) -> _Compiled:
        op = cond.op
        on_empty = op in ("neq", "not_in", "is_not_set")
        requires: frozenset[Source] = frozenset() if on_empty else frozenset({source})
        kind = value_kind(cond)
        column = "value"
        value_test: Callable[[ir.Value], ir.BooleanValue]
        if op in ("before", "after", "date_between", "within_last", "anniversary_within_next"):
            assert isinstance(cond, _Attribute)
            value_test = self._date_test(cond)
        else:
            if kind == "number" and op not in ("contains", "starts_with"):
                if source == "layers":  # pragma: no cover - layer values are text
                    raise UnsupportedRule("layer levels are text", field=f"{_pre(path)}value")
                column = "number"

            def value_test(v: ir.Value) -> ir.BooleanValue:
                return compare(v, op, cond.value, cond.values)

        feat = self._latest(source, name, column)

        def row_test(r: ir.Table) -> ir.BooleanValue:
            named = self.named(source, name, r)
            test = value_test(r[column])
            return test if named is None else named & test

        return _Compiled(
            lambda t: value_test(t[feat]),
            on_empty,
            requires,
            row_test=None if on_empty else row_test,
        )

    def _latest(self, source: Source, name: str, column: str) -> str:
        """Feature: the latest ``column`` of attribute ``name`` (NULL if that row's is NULL)."""
        order_col = _NAME_COLUMNS[source][1]
        if source == "traits":
            self.f.trait_columns.add(column)

        def order(r: ir.Table) -> ir.Value:
            # Two trait values set at the same instant: the greater message id wins, as in
            # the operational store and on profiles (``profiles.service.upsert_traits``).
            if source == "traits":
                return sqlext.tie_break_key(t=r[order_col], m=r["message_id"])
            return r[order_col]

        def latest(r: ir.Table) -> ir.Value:
            named = self.named(source, name, r)
            return if_any(r, named, sqlext.latest_value(r[column], order(r), where=named))

        return self.f.add(source, f"{name}\x00{column}", latest)

    def named(self, source: Source, name: str, r: ir.Table) -> ir.BooleanValue | None:
        """The test "this row is of attribute ``name``" on ``source``'s rows; None when the
        rule reads that one attribute only (the scan already keeps only its rows, so
        the column is not read at all: a tenth less CPU for the lapsed segment).

        Called when the aggregates are built, after every condition has been seen."""
        if len(self.f.attribute_names(source)) == 1:
            return None
        return r[_NAME_COLUMNS[source][0]] == name

    def _date_test(self, cond: _Attribute) -> Callable[[ir.Value], ir.BooleanValue]:
        op = cond.op
        today = self.at.date()

        def day(v: ir.Value) -> ir.StringValue:
            return v.substr(0, 10)

        def iso(v: ir.Value) -> ir.BooleanValue:
            return v.re_search(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}").fill_null(FALSE)

        if op == "before":
            return lambda v: iso(v) & (day(v) < str(cond.value)).fill_null(FALSE)
        if op == "after":
            return lambda v: iso(v) & (day(v) > str(cond.value)).fill_null(FALSE)
        if op == "date_between":
            lo, hi = (str(v) for v in cond.values or ())
            return lambda v: iso(v) & day(v).between(lo, hi).fill_null(FALSE)
        assert cond.days is not None
        if op == "within_last":
            lo = (today - timedelta(days=cond.days)).isoformat()
            hi = today.isoformat()
            return lambda v: iso(v) & day(v).between(lo, hi).fill_null(FALSE)
        month_days = anniversary_days(today, cond.days)
        return lambda v: iso(v) & v.substr(5, 5).isin(month_days).fill_null(FALSE)


_NAME_COLUMNS: dict[Source, tuple[str, str]] = {
    "traits": ("key", "timestamp"),
    "tags": ("tag", "computed_at"),
    "layers": ("layer", "as_of"),
}
"""Per attribute source: the column naming the attribute and the one ordering its values."""


def anniversary_days(today: date, days: int) -> list[str]:
    """``MM-DD`` of ``today`` and the next ``days`` days; ``02-29`` joins ``02-28``
    in years without 29 February."""
    out: list[str] = []
    for k in range(days + 1):
        d = today + timedelta(days=k)
        out.append(d.strftime("%m-%d"))
        if d.month == 2 and d.day == 28 and not _leap(d.year):
            out.append("02-29")
    return sorted(set(out))


def _leap(year: int) -> bool:
    return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)


# --- node handlers ----------------------------------------------------------------------


def _and(c: _Compiler, rule: AndGroup, path: str) -> _Compiled:
    parts = [c.node(r, f"{_pre(path)}rules.{i}") for i, r in enumerate(rule.rules)]

    def test(t: ir.Table) -> ir.BooleanValue:
        out = parts[0].test(t)
        for p in parts[1:]:
            out = out & p.test(t)
        return out

    requires = frozenset().union(*(p.requires for p in parts))
    conjuncts = tuple(c for p in parts for c in p.parts())
    return _Compiled(test, all(p.on_empty for p in parts), requires, conjuncts=conjuncts)


def _or(c: _Compiler, rule: OrGroup, path: str) -> _Compiled:
    parts = [c.node(r, f"{_pre(path)}rules.{i}") for i, r in enumerate(rule.rules)]

    def test(t: ir.Table) -> ir.BooleanValue:
        out = parts[0].test(t)
        for p in parts[1:]:
            out = out | p.test(t)
        return out

    requires = frozenset.intersection(*(p.requires for p in parts))
    return _Compiled(test, any(p.on_empty for p in parts), requires)


def _not(c: _Compiler, rule: NotGroup, path: str) -> _Compiled:
    inner = c.node(rule.rule, f"{_pre(path)}rule")
    return _Compiled(lambda t: ~inner.test(t), not inner.on_empty, frozenset())


def _trait(c: _Compiler, rule: TraitCondition, path: str) -> _Compiled:
    c.f.trait_keys.add(rule.trait)
    return c.attribute_test("traits", rule.trait, rule, path)


def _tag(c: _Compiler, rule: TagCondition, path: str) -> _Compiled:
    c.f.tag_names.add(rule.tag)
    return c.attribute_test("tags", rule.tag, rule, path)


def _layer(c: _Compiler, rule: LayerCondition, path: str) -> _Compiled:
    c.f.layer_names.add(rule.layer)
    return c.attribute_test("layers", rule.layer, rule, path)


def _event(c: _Compiler, rule: EventCondition, path: str) -> _Compiled:
    rows, key = c.event_rows(rule.event, rule.where, rule.window, path)
    measure = rule.measure
    if not rule.performed or measure is None or measure.fn == "count":
        feat = c.f.add("events", f"count\x00{key}", lambda r: r.count(where=rows(r)))
        if not rule.performed:
            return _Compiled(lambda t: t[feat].fill_null(ZERO) == 0, True, frozenset())
        if measure is None:
            return _Compiled(lambda t: t[feat].fill_null(ZERO) >= 1, False, frozenset({"events"}))
        m = measure
        on_empty = _holds(0.0, m.op, m.value, m.values)
        value, values = _count_operand(m.value), _count_operands(m.values)
        return _Compiled(
            lambda t: compare(t[feat].fill_null(ZERO), m.op, value, values),
            on_empty,
            frozenset() if on_empty else frozenset({"events"}),
        )
    assert measure.property is not None
    prop = measure.property
    column, is_money = c.measure_column(prop, f"{_pre(path)}measure.property")
    fn = measure.fn
    m = measure
    # Money (``revenue``, DECIMAL) is summed and compared as DECIMAL with DECIMAL
    # literals, never as float; JSON numbers are float64.
    measure_compare = money_compare if is_money else compare
    if is_money and fn == "avg":
        # avg op v  ⟺  sum op v × n, over n > 0 values: exact, no division (a DECIMAL
        # average is DOUBLE on DuckDB and a rounded quotient elsewhere).
        total = c.f.add("events", f"sum\x00{prop}\x00{key}", lambda r: column(r).sum(where=rows(r)))
        n = c.f.add("events", f"n\x00{prop}\x00{key}", lambda r: column(r).count(where=rows(r)))

        def avg_test(t: ir.Table) -> ir.BooleanValue:
            count = t[n].fill_null(ZERO)
            return (count > 0) & money_compare(t[total], m.op, m.value, m.values, times=count)

        return _Compiled(avg_test, False, frozenset({"events"}))

    def agg(r: ir.Table) -> ir.Value:
        col = column(r)
        where = rows(r)
        out = {
            "sum": col.sum(where=where),
            "avg": col.mean(where=where),
            "min": col.min(where=where),
            "max": col.max(where=where),
        }[fn]
        out = out if is_money else out.cast("float64")
        # A sum over no rows is NULL on most engines and 0 on ClickHouse: the test
        # reads it as 0 either way (``fill_null``), so no "any row?" count is needed.
        return out if fn == "sum" else if_any(r, where, out)

    feat = c.f.add("events", f"{fn}\x00{prop}\x00{key}", agg)
    if fn == "sum":
        on_empty = _holds(0.0, m.op, m.value, m.values)
        return _Compiled(
            lambda t: measure_compare(t[feat].fill_null(ZERO), m.op, m.value, m.values),
            on_empty,
            frozenset() if on_empty else frozenset({"events"}),
        )
    # avg/min/max of nothing is undefined: false, even for ``neq``.
    return _Compiled(
        lambda t: t[feat].notnull() & measure_compare(t[feat], m.op, m.value, m.values),
        False,
        frozenset({"events"}),
    )


def _holds(x: float, op: str, value: float | None, values: tuple[float, float] | None) -> bool:
    """The measure comparison on a plain number (used for a person with no events)."""
    if op == "between":
        assert values is not None
        return values[0] <= x <= values[1]
    assert value is not None
    return {
        "eq": x == value,
        "neq": x != value,
        "lt": x < value,
        "lte": x <= value,
        "gt": x > value,
        "gte": x >= value,
    }[op]


def _event_time(c: _Compiler, rule: EventTimeCondition, path: str) -> _Compiled:
    rows, key = c.event_rows(rule.event, rule.where, None, path)
    c.f.event_columns.add("timestamp")
    which = rule.which

    def agg(r: ir.Table) -> ir.Value:
        ts = r["timestamp"]
        where = rows(r)
        return if_any(r, where, ts.min(where=where) if which == "first" else ts.max(where=where))

    feat = c.f.add("events", f"{which}\x00{key}", agg)
    op = rule.op
    if op in ("before", "after"):
        assert rule.value is not None
        bound = instant(rule.value)

        def cmp_test(t: ir.Table) -> ir.BooleanValue:
            cond = t[feat] < bound if op == "before" else t[feat] > bound
            return cond.fill_null(FALSE)

        return _Compiled(cmp_test, False, frozenset({"events"}))
    assert rule.window is not None
    start, end = rule.window.bounds(c.at)

    def win_test(t: ir.Table) -> ir.BooleanValue:
        inside = t[feat] >= instant(start)
        inside = inside & (t[feat] < instant(end) if end is not None else t[feat] <= instant(c.at))
        if op == "within":
            return inside.fill_null(FALSE)
        return t[feat].notnull() & ~inside.fill_null(FALSE)

    return _Compiled(win_test, False, frozenset({"events"}))


def _segment(c: _Compiler, rule: SegmentCondition, path: str) -> _Compiled:
    seg = rule.segment
    if rule.source == "snapshot":
        taken = c.catalog.latest_snapshot(seg, c.at)
        if taken is None:
            if c.catalog.segment_rule(seg) is None:
                raise UnknownName(f"no segment {seg!r}", field=f"{_pre(path)}segment")
            raise UnsupportedRule(
                f"segment {seg!r} has no snapshot at or before {c.at.isoformat()}; "
                'materialise it or use "source": "live"',
                field=f"{_pre(path)}source",
            )
        taken = to_utc(taken)
        c.f.snapshots.add((seg, taken))
        feat = c.f.add(
            "snapshots",
            f"{seg}\x00{taken.isoformat()}",
            lambda r: r.count(
                where=(r["segment_id"] == seg) & (r["snapshot_at"] == instant(taken))
            ),
        )
        return _Compiled(lambda t: t[feat].fill_null(ZERO) > 0, False, frozenset({"snapshots"}))
    if seg in c._stack:
        chain = " → ".join([*c._stack, seg])
        raise UnsupportedRule(
            f"segments refer to each other in a cycle: {chain}",
            field=f"{_pre(path)}segment",
        )
    other = c.catalog.segment_rule(seg)
    if other is None:
        raise UnknownName(f"no segment {seg!r}", field=f"{_pre(path)}segment")
    c._stack.append(seg)
    try:
        # Errors inside the other segment name its path there, prefixed by ours.
        inner = c.node(other, f"{_pre(path)}segment({seg})")
    finally:
        c._stack.pop()
    return inner


_HANDLERS: dict[type, Callable[[_Compiler, Any, str], _Compiled]] = {
    AndGroup: _and,
    OrGroup: _or,
    NotGroup: _not,
    TraitCondition: _trait,
    TagCondition: _tag,
    LayerCondition: _layer,
    EventCondition: _event,
    EventTimeCondition: _event_time,
    SegmentCondition: _segment,
}
"""Node type → compile function. A new node type adds one entry here and one in
``reference._EVALUATORS``."""


# --- assembling the query --------------------------------------------------------------------


def _event_scan(f: _Features, at: datetime) -> ir.Table:
    """The events the conditions count: one filtered scan per distinct row set.

    Each scan's ``event = '…'`` and ``timestamp`` between its window's start
    and ``at`` are plain column predicates that the engine applies inside its
    scan (DuckDB also prunes row groups by their min/max, so a time window
    reads only the recent part of a table written in arrival order). The
    window and property tests run there, once per row; other columns are
    decoded for matching rows only (``products`` only for the rows of a
    7-day window, not for every order). DuckDB applies ``event IN (a, b)`` to
    prune row groups but not row by row, hence a ``UNION ALL`` of scans
    rather than one scan with an ``OR`` of tests. A row in several sets
    appears once per set, tagged with the set's number (``ROW_SET``; no tag when
    there is one set).

    Sets of different events over the same bounded window and without property
    filters (*viewed in the last 7 days*, *ordered in the last 7 days*) are one
    scan of that window with ``event IN (…)``, tagged by event name: the time
    bounds already limit the scan to the window's row groups, and one pass over
    them costs less than one per event.
    """
    ev = _T_EVENTS
    at_lit = instant(at)
    columns = sorted(f.event_columns)
    tagged = len(f.event_sets) > 1
    groups: dict[tuple[Any, ...], list[_RowSet]] = {}
    for row_set in f.event_sets.values():
        shared = row_set.start is not None and not row_set.filtered
        key = ("window", row_set.start, row_set.end) if shared else ("set", row_set.number)
        groups.setdefault(key, []).append(row_set)
    scans: list[ir.Table] = []
    timestamp = ev["timestamp"]
    for sets in groups.values():
        first = sets[0]
        # ``event = …`` (or ``IN``), ``timestamp`` within the window and up to ``at``, then
        # the property filters, each built once (the order of the SQL's predicates).
        preds: list[ir.BooleanValue] = [
            ev["event"] == first.event
            if len(sets) == 1
            else ev["event"].isin([s.event for s in sets]),
            timestamp <= at_lit,
        ]
        if first.start is not None:
            preds.append(timestamp >= instant(first.start))
        if first.end is not None:
            preds.append(timestamp < instant(first.end))
        tags: dict[str, ir.Value] = {}
        if len(sets) == 1:
            preds.extend(first.filters(ev))
            if tagged:
                tags[ROW_SET] = ibis.literal(first.number, "int32")
        elif tagged:
            tags[ROW_SET] = ibis.cases(
                *((ev["event"] == s.event, s.number) for s in sets[:-1]), else_=sets[-1].number
            ).cast("int32")
        scans.append(
            select(ev, preds, **columns_of(ev, columns), **{STORED: ev["person_key"]}, **tags)
        )
    out = scans[0]
    for more in scans[1:]:
        out = out.union(more)
    return out


def _stored_rows(source: Source, f: _Features, at: datetime) -> tuple[ir.Table, list[str]]:
    """Rows of ``source`` the rule reads as of ``at``, with ``stored_key``, and the
    columns the aggregates need."""
    at_lit = instant(at)
    if source == "events":
        tags = [ROW_SET] if len(f.event_sets) > 1 else []
        return _event_scan(f, at), [*sorted(f.event_columns), *tags]
    if source == "traits":
        t = _T_TRAITS
        named = ["key"] if len(f.trait_keys) > 1 else []
        columns = [*named, *sorted(f.trait_columns), "timestamp", "message_id"]
        preds = [t["timestamp"] <= at_lit, t["key"].isin(sorted(f.trait_keys))]
        return select(t, preds, **columns_of(t, columns), **{STORED: t["person_key"]}), columns
    raw: ir.Table
    where: list[ir.BooleanValue]
    if source == "tags":
        raw = _T_TAGS
        where = [raw["tag"].isin(sorted(f.tag_names))]
        columns = ["tag", "value", "number", "computed_at"]
    elif source == "layers":
        raw = _T_LAYERS
        where = [raw["as_of"] <= at_lit, raw["layer"].isin(sorted(f.layer_names))]
        columns = ["layer", "value", "as_of"]
    else:
        raw = _T_MEMBERS
        where = [raw["segment_id"].isin(sorted({s for s, _ in f.snapshots}))]
        columns = ["segment_id", "snapshot_at"]
    return keys_of(select(raw, where, **columns_of(raw, ["one_id", *columns]))), columns


def _source_rows(
    source: Source, f: _Features, at: datetime, people: ir.Table | None = None
) -> ir.Table:
    """Resolved rows of ``source`` (``person`` and the columns the rule reads) as of
    ``at``; only those of ``people`` when given."""
    rows, columns = _stored_rows(source, f, at)
    if people is not None:
        return _mapped(rows, people, columns)
    return _resolved(rows, columns)


def _everyone(at: datetime) -> ir.Table:
    """Every person the warehouse knows as of ``at``."""
    at_lit = instant(at)
    ev, tr = _T_EVENTS, _T_TRAITS
    parts = [
        select(ev, [ev["timestamp"] <= at_lit], **{STORED: ev["person_key"]}),
        select(tr, [tr["timestamp"] <= at_lit], **{STORED: tr["person_key"]}),
        keys_of(_T_TAGS.select("one_id")).select(STORED),
        keys_of(_T_LAYERS.filter(_T_LAYERS["as_of"] <= at_lit).select("one_id")).select(STORED),
    ]
    stored = parts[0]
    for p in parts[1:]:
        stored = stored.union(p, distinct=True)
    return _resolved(stored.distinct(), []).distinct()


@dataclass(frozen=True)
class CompiledRule:
    """A rule compiled as of ``at``.

    ``keys`` has one column, ``person_key``: the members' keys. Every SQL text
    embeds the keys' query, written once per dialect and layout (``_parts``):

    - ``sql``: one column ``one_id``, the members mapped back through
      ``person_keys`` (one join, on the members only);
    - ``count_sql``: the number of members, no mapping;
    - ``sample_sql``: the first members by ONE_ID with the count beside them.
    """

    keys: ir.Table
    at: datetime
    event_names: frozenset[str]
    trait_keys: frozenset[str]
    _parts: dict[tuple[SqlDialect, bool], _KeysText] = field(
        default_factory=dict, compare=False, repr=False
    )

    def sql(self, dialect: SqlDialect, *, pretty: bool = True) -> str:
        """The members' ONE_IDs (``pretty``: formatted for people; off, a little faster)."""
        query = _members()
        query = query.select(sge.column("one_id", table="k", quoted=True), copy=False)
        return self._text(dialect, query, pretty)

    def count_sql(self, dialect: SqlDialect) -> str:
        """One row, one column ``n``: the number of members (no mapping to ONE_IDs)."""
        query = _wrapped()
        # ``count(person_key)``, not ``count(*)``: the keys may hold one NULL (see
        # ``compile_rule``), which is nobody.
        key = sge.column("person_key", table="m", quoted=True)
        count = sge.alias_(sge.Count(this=key), "n", quoted=True)
        return self._text(dialect, query.select(count, copy=False), False)

    def sample_sql(self, dialect: SqlDialect, sample: int) -> str:
        """Up to ``sample`` members, first by ONE_ID, each with ``members``: how many
        there are in all. The members are computed once for both."""
        query = _members()
        one_id = sge.column("one_id", table="k", quoted=True)
        total = sge.Window(this=sge.Count(this=sge.Star()))
        query = query.select(one_id, sge.alias_(total, "members", quoted=True), copy=False)
        query = query.order_by(sge.Ordered(this=one_id.copy()), copy=False).limit(
            sample, copy=False
        )
        return self._text(dialect, query, False)

    def _keys_text(self, dialect: SqlDialect, pretty: bool) -> _KeysText:
        """The keys' query written for ``dialect``: compiled, written and kept as text.

        Texts are immutable, so a compiled rule may be shared by threads
        (``segments.plans``); two threads asking at once both compile, and
        either result is kept. The tree sqlglot writes is this call's own (the
        generator may change it), so nothing is copied: the first text of a
        dialect costs one compile and one write of the keys, each further text
        in that layout only its few outer lines. (Until session 8 the compiled
        tree was kept and copied for every text: a tenth of a compile.)"""
        found = self._parts.get((dialect, pretty))
        if found is None:
            with_, body = sqlext.to_sqlglot(self.keys, dialect)
            if dialect == "duckdb" and with_ is not None:
                _inline_plain_ctes(with_)
            write = _dialect(dialect)
            ctes = "" if with_ is None else write.generate(with_, copy=False, pretty=pretty)
            found = self._parts[(dialect, pretty)] = _KeysText(
                ctes, write.generate(body, copy=False, pretty=pretty)
            )
        return found

    def _text(self, dialect: SqlDialect, query: sge.Select, pretty: bool) -> str:
        """``query`` (built on ``_wrapped``) with the keys' query in place of the
        placeholder and the keys' CTEs first: the text sqlglot writes for the whole
        tree (``tests/segments/test_lean_compile.py`` checks they are equal)."""
        keys = self._keys_text(dialect, pretty)
        outer = _dialect(dialect).generate(query, copy=False, pretty=pretty)
        at = outer.index(_KEYS_PLACEHOLDER)
        # sqlglot writes a subquery at the root, then indents each of its lines by the
        # subquery's depth: the placeholder's own indentation, in ``pretty`` text.
        indent = outer[outer.rfind("\n", 0, at) + 1 : at] if pretty else ""
        if indent.strip():  # pragma: no cover - the placeholder stands on its own line
            raise AssertionError(f"unexpected text before the keys: {indent!r}")
        body = keys.body.replace("\n", "\n" + indent) if indent else keys.body
        text = outer[:at] + body + outer[at + len(_KEYS_PLACEHOLDER) :]
        if keys.ctes:
            text = keys.ctes + ("\n" if pretty else " ") + text
        return text


@dataclass(frozen=True)
class _KeysText:
    """The keys' query as SQL text: its CTEs (``WITH …``, empty when none) and the
    query that reads them."""

    ctes: str
    body: str


_KEYS_PLACEHOLDER = "zhiying_keys_placeholder"
"""The name the outer query's skeleton reads instead of the keys' query (written
unquoted by every dialect, appearing nowhere else)."""


def _dialect(dialect: SqlDialect) -> sg.Dialect:
    """sqlglot's dialect of ``dialect`` (the one ibis compiles for), as
    ``Expression.sql(dialect=…)`` makes it."""
    return sg.Dialect.get_or_raise(getattr(sql_compilers, dialect).compiler.dialect)


def _wrapped() -> sge.Select:
    """``SELECT … FROM (keys) AS "m"``, the keys' query a placeholder (``CompiledRule._text``)."""
    keys = sge.Table(this=sge.to_identifier(_KEYS_PLACEHOLDER, quoted=False))
    alias = sge.TableAlias(this=sge.to_identifier("m", quoted=True))
    return sge.Select().from_(sge.Subquery(this=keys, alias=alias), copy=False)


def _members() -> sge.Select:
    """The wrapped keys joined to ``person_keys`` (as ``"k"``), nothing selected yet."""
    query = _wrapped()
    on = sge.EQ(
        this=sge.column("person_key", table="m", quoted=True),
        expression=sge.column("person_key", table="k", quoted=True),
    )
    table = sge.Table(
        this=sge.to_identifier("person_keys", quoted=True),
        alias=sge.TableAlias(this=sge.to_identifier("k", quoted=True)),
    )
    # The join node itself: ``query.join(table, on=on, join_type="inner")`` parses
    # "inner" with sqlglot's parser at every call.
    return query.join(sge.Join(this=table, kind="INNER", on=on), copy=False)


def _inline_plain_ctes(with_: sge.With) -> None:
    """Mark the CTEs that only scan, filter and join (no aggregate, ``DISTINCT`` or
    window) ``NOT MATERIALIZED``, for DuckDB.

    ibis makes a CTE of every subquery used twice; DuckDB materialises such a CTE
    by default, every column of every row. The driver's resolved rows are one
    (read by the "has some Beijing row" semi-join and by the aggregate): a
    million trait rows with their message ids copied into a buffer and read
    back twice. Inlined, each use scans only the columns it needs and the
    semi-join's side reads two columns: lapsed segment 0.35 → 0.30 s CPU on
    one thread. CTEs that aggregate stay materialised (computed once).
    """
    for cte in with_.expressions:
        body = cte.this
        if body.find(sge.Group, sge.AggFunc, sge.Window, sge.Distinct) is None:
            cte.set("materialized", False)


_ORDER: tuple[Source, ...] = ("traits", "layers", "tags", "snapshots", "events")


def compile_rule(rule: Rule, at: datetime, catalog: Catalog | None = None) -> CompiledRule:
    """Compile ``rule`` as of ``at`` (aware, or naive meaning UTC): one ibis expression of
    the members' keys, from which ``CompiledRule`` derives every dialect's SQL.

    Raises ``UnsupportedRule`` / ``UnknownName`` with the path inside the rule.
    """
    c = _Compiler(at, catalog or NoSegments())
    root = c.node(rule, "")
    at_utc = c.at
    sources = [s for s in _ORDER if c.f.aggs.get(s)]

    def features(source: Source, rows: ir.Table) -> ir.Table:
        aggs = c.f.aggs[source]
        return aggregate(rows, {PERSON: rows[PERSON]}, {n: fn(rows) for n, fn in aggs.items()})

    tables: dict[Source, ir.Table] = {}
    driver = _driver(root, sources)
    keep: ir.Table | None = None
    if driver is not None:
        # The conjuncts that read only the driving source are decided by it alone:
        # aggregate only people with a row that can pass them, apply them, and
        # aggregate the other sources for the people kept only.
        own = [p for p in root.parts() if p.reads == {driver} and not p.on_empty]
        rows = _source_rows(driver, c.f, at_utc)
        for p in own:
            if p.row_test is not None:
                passing = select(rows, [p.row_test(rows)], **{PERSON: rows[PERSON]})
                rows = select(
                    rows, [among(rows[PERSON], passing)], **columns_of(rows, rows.columns)
                )
        table = features(driver, rows)
        # (With no other source to narrow, the rule's own filter below is enough.)
        if own and len(sources) > 1:
            cond = own[0].test(table)
            for p in own[1:]:
                cond = cond & p.test(table)
            table = select(table, [cond], **columns_of(table, table.columns))
            keep = select(table, **{PERSON: table[PERSON]})
        tables[driver] = table
    for source in sources:
        if source not in tables:
            tables[source] = features(source, _source_rows(source, c.f, at_utc, keep))

    if not tables:
        # Only constant-like nodes are impossible; every condition reads a source.
        raise UnsupportedRule("the rule reads nothing", field="")  # pragma: no cover

    joined = _join(tables, root, at_utc)
    # No ``person IS NOT NULL`` filter: DuckDB pushes it below the alias join and
    # evaluates it on every scanned row (≈ 7 % of "viewed ≥ 2 in 7 days"). A NULL
    # person (rows of nobody) is dropped where the keys are used instead: by the
    # inner join with ``person_keys`` and by ``count(person_key)``.
    keys = select(joined, [root.test(joined)], person_key=joined[PERSON])
    return CompiledRule(
        keys=keys,
        at=at_utc,
        event_names=frozenset(c.f.event_names),
        trait_keys=frozenset(c.f.trait_keys),
    )


def _driver(root: _Compiled, sources: list[Source]) -> Source | None:
    """The source every member must appear in (candidates come from it), if any."""
    if root.on_empty:
        return None
    required = [s for s in _ORDER if s in root.requires and s in sources]
    return required[0] if required else None


def _join(tables: dict[Source, ir.Table], root: _Compiled, at: datetime) -> ir.Table:
    """One row per candidate person with every feature column (NULL when absent)."""
    driver = _driver(root, list(tables))
    others = dict(tables)
    if root.on_empty:
        base = _everyone(at)
    elif driver is not None:
        base = others.pop(driver)
    else:
        ids = [select(t, **{PERSON: t[PERSON]}) for t in tables.values()]
        base = ids[0]
        for more in ids[1:]:
            base = base.union(more, distinct=True)
    if not others:
        return base
    refs = join_refs(base, *others.values())
    features = columns_of(refs[0], base.columns)
    for ref in refs[1:]:
        features.update(columns_of(ref, [c for c in ref.columns if c != PERSON]))
    return joined(refs, [("left", refs[0][PERSON] == ref[PERSON]) for ref in refs[1:]], **features)


def now_utc(at: datetime | None, clock_now: datetime) -> datetime:
    """``at`` if given, else the clock's now, as aware UTC."""
    return to_utc(at) if at is not None else clock_now.astimezone(UTC)
