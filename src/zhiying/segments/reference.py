"""A pure-Python evaluator of segment rules: the semantics, written plainly.

It exists to check the compiler: a property test generates random rules over
random people and events and asserts that the SQL on DuckDB and on chdb
returns exactly the members this module finds. It loops over rows in Python,
so it is for small data only; nothing in production calls it.

Input rows are dicts shaped like the warehouse tables (``EVENTS``,
``TRAIT_UPDATES``, …) with naive UTC datetimes and ``Decimal`` money.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from fractions import Fraction
from typing import Any

from zhiying.clock import naive_utc
from zhiying.segments.compiler import (
    PRODUCT_FIELDS,
    PRODUCTS_PREFIX,
    TYPED_PROPERTIES,
    Catalog,
    NoSegments,
    anniversary_days,
)
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

Row = Mapping[str, Any]


@dataclass
class Dataset:
    """The warehouse's tables as lists of rows."""

    events: list[Row] = field(default_factory=list)
    aliases: dict[str, str] = field(default_factory=dict)
    trait_updates: list[Row] = field(default_factory=list)
    tag_values: list[Row] = field(default_factory=list)
    layer_values: list[Row] = field(default_factory=list)
    segment_members: list[Row] = field(default_factory=list)


@dataclass
class _Person:
    events: list[Row] = field(default_factory=list)
    traits: dict[str, tuple[tuple[datetime, str], Row]] = field(default_factory=dict)
    tags: dict[str, tuple[datetime, Row]] = field(default_factory=dict)
    layers: dict[str, tuple[datetime, Row]] = field(default_factory=dict)
    snapshots: set[tuple[str, datetime]] = field(default_factory=set)


def _latest(
    store: dict[str, tuple[Any, Row]], name: str, when: datetime | tuple[datetime, str], row: Row
) -> None:
    old = store.get(name)
    if old is None or when > old[0]:
        store[name] = (when, row)


class _Evaluator:
    def __init__(self, data: Dataset, at: datetime, catalog: Catalog) -> None:
        self.at = naive_utc(at)
        self.at_aware = to_utc(at)
        self.catalog = catalog
        self.people: dict[str, _Person] = {}

        def person(one_id: str) -> _Person:
            pid = data.aliases.get(one_id, one_id)
            return self.people.setdefault(pid, _Person())

        for e in data.events:
            if e["timestamp"] <= self.at:
                person(e["one_id"]).events.append(e)
        for t in data.trait_updates:
            if t["timestamp"] <= self.at:
                # Same instant: the greater message id, as the compiler orders traits.
                order = (t["timestamp"], t["message_id"])
                _latest(person(t["one_id"]).traits, t["key"], order, t)
        for g in data.tag_values:
            _latest(person(g["one_id"]).tags, g["tag"], g["computed_at"], g)
        for lv in data.layer_values:
            if lv["as_of"] <= self.at:
                _latest(person(lv["one_id"]).layers, lv["layer"], lv["as_of"], lv)
        self._members = data.segment_members
        self._aliases = data.aliases
        self._stack: list[str] = []

    def members(self, rule: Rule) -> set[str]:
        for m in self._members:
            one_id = str(m["one_id"])
            owner = self.people.get(self._aliases.get(one_id, one_id))
            if owner is not None:
                owner.snapshots.add((m["segment_id"], m["snapshot_at"]))
        return {pid for pid, p in self.people.items() if self.holds(rule, p)}

    def holds(self, rule: Rule, p: _Person) -> bool:
        return _EVALUATORS[type(rule)](self, rule, p)

    # -- events -------------------------------------------------------------------

    def in_window(self, ts: datetime, window: Window | None) -> bool:
        if window is None:
            return True
        start, end = window.bounds(self.at_aware)
        if ts < naive_utc(start):
            return False
        return end is None or ts < naive_utc(end)

    def matching(
        self, p: _Person, event: str, where: Iterable[PropertyFilter], window: Window | None
    ) -> list[Row]:
        where = tuple(where)
        return [
            e
            for e in p.events
            if e.get("event") == event
            and self.in_window(e["timestamp"], window)
            and all(_filter_holds(f, e) for f in where)
        ]


def _json_at(doc: Any, keys: list[str]) -> Any:
    for k in keys:
        if not isinstance(doc, dict) or k not in doc:
            return None
        doc = doc[k]
    return doc


def _json_typed(raw: Any, kind: str | None) -> Any:
    """The JSON value when its type matches ``kind`` (text/number/bool-as-text), else None."""
    if kind is None:
        return raw
    if kind == "string":
        return raw if isinstance(raw, str) else None
    if kind == "number":
        return float(raw) if isinstance(raw, int | float) and not isinstance(raw, bool) else None
    if kind == "boolean":
        return ("true" if raw else "false") if isinstance(raw, bool) else None
    return None


def _exact(v: Any) -> Any:
    """A typed number (DECIMAL money, an integer) or operand as an exact Decimal."""
    if v is None or isinstance(v, bool | str):
        return v
    return v if isinstance(v, Decimal) else Decimal(repr(v))


def _exact_cmp(v: Any, op: str, value: Any, values: tuple[Any, ...] | None) -> bool:
    """``cmp`` on typed numbers: value and operands as exact decimals (money is never float)."""
    exact_values = None if values is None else tuple(_exact(x) for x in values)
    return cmp(_exact(v), op, _exact(value), exact_values)


def _filter_holds(flt: PropertyFilter, e: Row) -> bool:
    prop = flt.property
    if prop.startswith(PRODUCTS_PREFIX):
        fld = prop.removeprefix(PRODUCTS_PREFIX)
        test = _exact_cmp if PRODUCT_FIELDS[fld] == "number" else cmp
        return any(
            test(item.get(fld), flt.op, flt.value, flt.values) for item in e.get("products") or []
        )
    typed = TYPED_PROPERTIES.get(prop)
    if typed is not None:
        test = _exact_cmp if typed[1] == "number" else cmp
        return test(e.get(typed[0]), flt.op, flt.value, flt.values)
    keys = prop.split(".")[1:]
    doc = json.loads(e["properties"]) if e.get("properties") else None
    raw = _json_at(doc, keys)
    kind = "string" if flt.op in ("contains", "starts_with") else value_kind(flt)
    if kind is None:  # is_set / is_not_set: present and not null
        return cmp(raw, flt.op, None, None)
    return cmp(_json_typed(raw, kind), flt.op, flt.value, flt.values)


def _lit(v: Any) -> Any:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return float(v)
    return v


def cmp(v: Any, op: str, value: Any, values: tuple[Any, ...] | None) -> bool:
    """The DSL's comparison on a Python value (None = missing)."""
    if op == "is_set":
        return v is not None
    if op == "is_not_set":
        return v is None
    if op == "neq":
        return not cmp(v, "eq", value, values)
    if op == "not_in":
        return not cmp(v, "in", value, values)
    if v is None:
        return False
    x = _lit(value)
    xs = [_lit(a) for a in values or ()]
    tests: dict[str, Callable[[], bool]] = {
        "eq": lambda: bool(v == x),
        "in": lambda: v in xs,
        "contains": lambda: isinstance(v, str) and x in v,
        "starts_with": lambda: isinstance(v, str) and v.startswith(x),
        "lt": lambda: bool(v < x),
        "lte": lambda: bool(v <= x),
        "gt": lambda: bool(v > x),
        "gte": lambda: bool(v >= x),
        "between": lambda: bool(xs[0] <= v <= xs[1]),
    }
    return tests[op]()


# --- node evaluators -----------------------------------------------------------------


def _and(ev: _Evaluator, rule: AndGroup, p: _Person) -> bool:
    return all(ev.holds(r, p) for r in rule.rules)


def _or(ev: _Evaluator, rule: OrGroup, p: _Person) -> bool:
    return any(ev.holds(r, p) for r in rule.rules)


def _not(ev: _Evaluator, rule: NotGroup, p: _Person) -> bool:
    return not ev.holds(rule.rule, p)


_ISO = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}")


def _attribute(ev: _Evaluator, row: Row | None, cond: _Attribute | LayerCondition) -> bool:
    text = None if row is None else row.get("value")
    op = cond.op
    if op in ("before", "after", "date_between", "within_last", "anniversary_within_next"):
        assert isinstance(cond, _Attribute)
        if text is None or not _ISO.match(text):
            return False
        day: str = text[:10]
        today = ev.at.date()
        if op == "before":
            return day < str(cond.value)
        if op == "after":
            return day > str(cond.value)
        if op == "date_between":
            lo, hi = (str(v) for v in cond.values or ())
            return lo <= day <= hi
        assert cond.days is not None
        if op == "within_last":
            return (today - timedelta(days=cond.days)).isoformat() <= day <= today.isoformat()
        return text[5:10] in anniversary_days(today, cond.days)
    if value_kind(cond) == "number" and op not in ("contains", "starts_with"):
        number = None if row is None else row.get("number")
        return cmp(number, op, cond.value, cond.values)
    return cmp(text, op, cond.value, cond.values)


def _trait(ev: _Evaluator, rule: TraitCondition, p: _Person) -> bool:
    hit = p.traits.get(rule.trait)
    return _attribute(ev, hit[1] if hit else None, rule)


def _tag(ev: _Evaluator, rule: TagCondition, p: _Person) -> bool:
    hit = p.tags.get(rule.tag)
    return _attribute(ev, hit[1] if hit else None, rule)


def _layer(ev: _Evaluator, rule: LayerCondition, p: _Person) -> bool:
    hit = p.layers.get(rule.layer)
    return _attribute(ev, hit[1] if hit else None, rule)


def _event(ev: _Evaluator, rule: EventCondition, p: _Person) -> bool:
    rows = ev.matching(p, rule.event, rule.where, rule.window)
    if not rule.performed:
        return not rows
    m = rule.measure
    if m is None:
        return bool(rows)
    x: float | None
    if m.fn == "count":
        x = float(len(rows))
    elif m.property in TYPED_PROPERTIES:
        # Money: summed, averaged and compared exactly (the average as a fraction).
        money = [
            Decimal(v)
            for v in (r.get(TYPED_PROPERTIES[m.property][0]) for r in rows)
            if v is not None
        ]
        exact: Fraction | None
        if m.fn == "sum":
            exact = Fraction(sum(money, Decimal(0)))
        elif not money:
            exact = None
        elif m.fn == "avg":
            exact = Fraction(sum(money, Decimal(0))) / len(money)
        else:
            exact = Fraction(min(money) if m.fn == "min" else max(money))
        if exact is None:
            return False
        operands = None if m.values is None else tuple(Fraction(_exact(v)) for v in m.values)
        return cmp(exact, m.op, None if m.value is None else Fraction(_exact(m.value)), operands)
    else:
        assert m.property is not None
        vals = [v for v in (_measure_value(m.property, r) for r in rows) if v is not None]
        if m.fn == "sum":
            x = float(sum(vals, Decimal(0)))
        elif not vals:
            x = None
        elif m.fn == "avg":
            x = float(sum(vals, Decimal(0)) / len(vals))
        else:
            x = float(min(vals) if m.fn == "min" else max(vals))
    if x is None:
        return False
    return cmp(x, m.op, m.value, m.values)


def _measure_value(prop: str, e: Row) -> Decimal | None:
    typed = TYPED_PROPERTIES.get(prop)
    if typed is not None:
        raw = e.get(typed[0])
        return None if raw is None else Decimal(raw)
    doc = json.loads(e["properties"]) if e.get("properties") else None
    raw = _json_typed(_json_at(doc, prop.split(".")[1:]), "number")
    return None if raw is None else Decimal(repr(raw))


def _event_time(ev: _Evaluator, rule: EventTimeCondition, p: _Person) -> bool:
    rows = ev.matching(p, rule.event, rule.where, None)
    if not rows:
        return False
    times: list[datetime] = [r["timestamp"] for r in rows]
    ts = min(times) if rule.which == "first" else max(times)
    if rule.op == "before":
        assert rule.value is not None
        return ts < naive_utc(rule.value)
    if rule.op == "after":
        assert rule.value is not None
        return ts > naive_utc(rule.value)
    inside = ev.in_window(ts, rule.window)
    return inside if rule.op == "within" else not inside


def _segment(ev: _Evaluator, rule: SegmentCondition, p: _Person) -> bool:
    if rule.source == "snapshot":
        taken = ev.catalog.latest_snapshot(rule.segment, ev.at_aware)
        return taken is not None and (rule.segment, naive_utc(taken)) in p.snapshots
    other = ev.catalog.segment_rule(rule.segment)
    if other is None or rule.segment in ev._stack:
        raise ValueError(f"cannot evaluate segment {rule.segment!r}")
    ev._stack.append(rule.segment)
    try:
        return ev.holds(other, p)
    finally:
        ev._stack.pop()


_EVALUATORS: dict[type, Callable[[_Evaluator, Any, _Person], bool]] = {
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


def evaluate(rule: Rule, data: Dataset, at: datetime, catalog: Catalog | None = None) -> set[str]:
    """The ONE_IDs ``rule`` selects from ``data`` as of ``at``."""
    return _Evaluator(data, at, catalog or NoSegments()).members(rule)
