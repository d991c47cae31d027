"""Tag definitions → one ibis expression computing every tag for every person.

The result has the shape of ``tag_values``: ``one_id, tag, value, number,
computed_at`` (``computed_at`` = the as-of instant). It is one statement:

* events are grouped by person once, with one filtered aggregate per scalar
  tag (``count``, ``sum``, ``days_since_last``, ...) — the "one warehouse
  pass" of a refresh; ``top`` tags and distinct counts (on ClickHouse: those
  over product fields only) add one grouped sub-query each, joined to it;
* trait-based tags read the latest update of each trait per person once;
* the per-person wide rows are unpivoted with an array of structs that is
  unnested (``UNNEST`` on DuckDB, ``arrayJoin`` on ClickHouse).

Every event person (anyone with an event up to the instant) gets a row for
each event tag whose value is defined: counts are 0 rather than missing,
``days_since_last`` is missing when no event matched. Compilation is a table
from aggregate to function; nothing loops over rows in Python.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import ibis
import ibis.expr.types as ir

from zhiying.profiles.tags.models import (
    Band,
    DynamicTag,
    EventFilter,
    EventSelector,
    SemiStaticTag,
    StaticTag,
    TagDefinition,
)
from zhiying.profiles.tags.sources import (
    instant,
    resolved_events,
    resolved_traits,
    with_one_id,
)
from zhiying.warehouse.schema import PRODUCT_LISTS, Dialect

LONG_COLUMNS = ("one_id", "tag", "value", "number", "computed_at")


@dataclass(frozen=True)
class _Context:
    as_of: datetime
    dialect: Dialect
    aliases: bool = True

    @property
    def now(self) -> ir.TimestampScalar:
        return instant(self.as_of, self.dialect)


# --- predicates -----------------------------------------------------------------


def _filter_predicate(t: ir.Table, f: EventFilter) -> ir.BooleanValue:
    col = t[f.column]
    ops: dict[str, Callable[[], ir.BooleanValue]] = {
        "eq": lambda: col == f.value,
        "ne": lambda: col != f.value,
        "in": lambda: col.isin(list(f.value or [])),  # type: ignore[arg-type]
        "not_in": lambda: ~col.isin(list(f.value or [])),  # type: ignore[arg-type]
        "gt": lambda: col > f.value,
        "gte": lambda: col >= f.value,
        "lt": lambda: col < f.value,
        "lte": lambda: col <= f.value,
        "is_null": lambda: col.isnull(),
        "not_null": lambda: col.notnull(),
    }
    return ops[f.op]()


def selector_predicate(t: ir.Table, selector: EventSelector) -> ir.BooleanValue:
    """Events matching ``selector``; a ``NULL`` comparison counts as no match."""
    preds: list[ir.BooleanValue] = []
    if selector.events:
        preds.append(t.event.isin(selector.events))
    preds.extend(_filter_predicate(t, f) for f in selector.filters)
    if selector.products is not None:
        pf = selector.products
        listed = PRODUCT_LISTS.get(pf.field)
        if listed is not None:
            # The stored list of that field (``product_categories``, schema.DERIVED):
            # DuckDB then decodes one list instead of every field of every product.
            found = [t[listed].contains(value) for value in pf.values]
            preds.append(functools.reduce(operator.or_, found))
        else:
            preds.append(t.products.map(lambda p: p[pf.field].isin(pf.values)).anys())
    if not preds:
        return ibis.literal(True)
    combined = preds[0]
    for p in preds[1:]:
        combined = combined & p
    return combined.fill_null(False)


def _window_predicate(t: ir.Table, tag: DynamicTag, ctx: _Context) -> ir.BooleanValue:
    pred = selector_predicate(t, tag.where)
    if tag.window_days is not None:
        since = instant(ctx.as_of - timedelta(days=tag.window_days), ctx.dialect)
        pred = pred & (t.timestamp > since)
    return pred


def _nullable(col: ir.Value, p: ir.BooleanValue) -> ir.Value:
    """``col`` where ``p`` holds, else NULL.

    ClickHouse's ``-If`` aggregates over a non-nullable column return the
    type's default (1970-01-01, '') when nothing matches; over a nullable one
    they return NULL, as SQL does.
    """
    return ibis.ifelse(p, col, ibis.null(col.type().copy(nullable=True)))


def _items(t: ir.Table) -> ir.IntegerValue:
    """Product quantities in an event (a missing quantity counts as 1)."""
    return t.products.map(lambda p: p.quantity.cast("int64").fill_null(1)).sums().fill_null(0)


# --- output columns -------------------------------------------------------------


def _bands(number: ir.NumericValue, bands: Sequence[Band]) -> ir.StringValue:
    """``CASE`` of ``models.band_label``: the first band with ``min <= x < max``."""
    branches = []
    for band in bands:
        cond: ir.BooleanValue = ibis.literal(True)
        if band.min is not None:
            cond = cond & (number >= band.min)
        if band.max is not None:
            cond = cond & (number < band.max)
        branches.append((cond, ibis.literal(band.label)))
    return ibis.cases(*branches, else_=ibis.null("string"))


@dataclass(frozen=True)
class _Out:
    """A tag's output on the wide per-person table."""

    value: ir.StringValue
    number: ir.FloatingValue


def _numeric_out(number: ir.NumericValue, bands: Sequence[Band]) -> _Out:
    as_float = number.cast("float64")
    value = _bands(as_float, bands) if bands else ibis.null("string")
    return _Out(value=value, number=as_float)


def _text_out(value: ir.StringValue) -> _Out:
    return _Out(value=value, number=ibis.null("float64"))


# --- events ---------------------------------------------------------------------


def _is_product_path(of: str | None) -> bool:
    return of is not None and of.startswith("products.")


def _needs_subquery(tag: DynamicTag, dialect: Dialect) -> bool:
    """``top`` tags and distinct counts of product fields get a grouped sub-query.

    On DuckDB every distinct count does: a ``COUNT(DISTINCT ...)`` inside the
    main aggregate makes DuckDB materialise the whole event input (products
    lists included) to run the distinct part separately, while a sub-query
    over ``(person, value)`` reads two columns. ClickHouse's ``uniqExact``
    stays in the main aggregate.
    """
    if tag.aggregate == "top":
        return True
    return tag.aggregate == "distinct_count" and (dialect == "duckdb" or _is_product_path(tag.of))


def _scalar_metrics(t: ir.Table, tag: DynamicTag, ctx: _Context, col: str) -> dict[str, ir.Value]:
    """Aggregates of one scalar tag, named ``col`` (a second pass turns them into output)."""
    p = _window_predicate(t, tag, ctx)
    measure: ir.NumericValue = _items(t) if tag.of == "items" else t.revenue
    aggregates: dict[str, Callable[[], ir.Value]] = {
        "count": lambda: t.count(where=p),
        "distinct_count": lambda: t[str(tag.of)].nunique(where=p),
        "sum": lambda: measure.sum(where=p).fill_null(0),
        "avg": lambda: measure.mean(where=p),
        "min": lambda: measure.min(where=p),
        "max": lambda: measure.max(where=p),
        "days_since_last": lambda: _nullable(t.timestamp, p).max(),
        "days_since_first": lambda: _nullable(t.timestamp, p).min(),
    }
    return {col: aggregates[tag.aggregate]()}


def _scalar_out(wide: ir.Table, tag: DynamicTag, ctx: _Context, col: str) -> _Out:
    metric = wide[col]
    if tag.aggregate in ("days_since_last", "days_since_first"):
        return _numeric_out(ctx.now.delta(metric, unit="day"), tag.bands)
    return _numeric_out(metric, tag.bands)


def _product_values(t: ir.Table, tag: DynamicTag, ctx: _Context) -> ir.Table:
    """``(person, v, w)``: one row per product of a matching event; ``w`` = its quantity."""
    field = str(tag.of).removeprefix("products.")
    matched = t.filter(_window_predicate(t, tag, ctx))
    unnested = matched.select(person=matched.person, product=matched.products.unnest())
    rows = unnested.select(
        person=unnested.person,
        v=unnested["product"][field],
        w=unnested["product"].quantity.cast("int64").fill_null(1),
    )
    return rows.filter(rows.v.notnull())


def _subquery(t: ir.Table, tag: DynamicTag, ctx: _Context, col: str) -> ir.Table:
    """``(person, <col>)`` for a ``top`` tag or a distinct count."""
    if _is_product_path(tag.of):
        rows = _product_values(t, tag, ctx)
    else:
        matched = t.filter(_window_predicate(t, tag, ctx) & t[str(tag.of)].notnull())
        rows = matched.select(person=matched.person, v=matched[str(tag.of)], w=ibis.literal(1))
    if tag.aggregate == "distinct_count":
        return (
            rows.group_by(rows.person)
            .aggregate(**{col: rows.v.nunique()})
            .rename({f"{col}_person": "person"})
        )
    weights = rows.group_by([rows.person, rows.v]).aggregate(w=rows.w.sum())
    # The heaviest value, ties to the smallest: arg-min over the key (-weight, value).
    # (An aggregate, not a row_number() window: half the cost on DuckDB.)
    key = ibis.struct({"neg_weight": -weights.w, "value": weights.v})
    return (
        weights.group_by(weights.person)
        .aggregate(**{col: weights.v.argmin(key)})
        .rename({f"{col}_person": "person"})
    )


def _event_wide(
    tags: Sequence[DynamicTag | SemiStaticTag], ctx: _Context
) -> tuple[ir.Table, dict[str, _Out]]:
    t = resolved_events(ctx.as_of, ctx.dialect, aliases=ctx.aliases)
    metrics: dict[str, ir.Value] = {}
    subqueries: list[tuple[str, ir.Table]] = []
    for i, tag in enumerate(tags):
        col = f"m{i}"
        if isinstance(tag, SemiStaticTag):
            assert tag.where is not None and tag.column is not None
            p = selector_predicate(t, tag.where) & t[tag.column].notnull()
            metrics[col] = _nullable(t[tag.column], p).argmax(t.timestamp, where=p)
        elif _needs_subquery(tag, ctx.dialect):
            subqueries.append((col, _subquery(t, tag, ctx, col)))
        else:
            metrics.update(_scalar_metrics(t, tag, ctx, col))
    wide = t.group_by(t.person).aggregate(**metrics) if metrics else t.select(t.person).distinct()
    for col, sub in subqueries:
        joined = wide.left_join(sub, wide.person == sub[f"{col}_person"])
        wide = joined.drop(f"{col}_person")
    outs: dict[str, _Out] = {}
    for i, tag in enumerate(tags):
        col = f"m{i}"
        if isinstance(tag, SemiStaticTag):
            if tag.column == "revenue":
                outs[tag.name] = _numeric_out(wide[col], tag.bands)
            else:
                outs[tag.name] = _text_out(wide[col])
        elif tag.aggregate == "top":
            outs[tag.name] = _text_out(wide[col])
        elif tag.aggregate == "distinct_count" and _needs_subquery(tag, ctx.dialect):
            outs[tag.name] = _numeric_out(wide[col].fill_null(0), tag.bands)
        else:
            outs[tag.name] = _scalar_out(wide, tag, ctx, col)
    return wide, outs


# --- traits ---------------------------------------------------------------------


def _trait_wide(
    tags: Sequence[StaticTag | SemiStaticTag], ctx: _Context
) -> tuple[ir.Table, dict[str, _Out]]:
    keys = sorted({str(tag.trait) for tag in tags})
    latest = resolved_traits(ctx.as_of, ctx.dialect, keys)
    metrics: dict[str, ir.Value] = {}
    for i, key in enumerate(keys):
        metrics[f"v{i}"] = latest.value.max(where=latest.key == key)
        metrics[f"n{i}"] = latest.number.max(where=latest.key == key)
    wide = latest.group_by(latest.person).aggregate(**metrics)
    outs: dict[str, _Out] = {}
    for tag in tags:
        i = keys.index(str(tag.trait))
        value: ir.StringValue = wide[f"v{i}"]
        number: ir.FloatingValue = wide[f"n{i}"]
        if isinstance(tag, StaticTag):
            if tag.value_map:
                branches = [
                    (value == raw, ibis.literal(label)) for raw, label in tag.value_map.items()
                ]
                value = ibis.cases(*branches, else_=value)
            outs[tag.name] = _Out(value=value, number=number)
        elif tag.bands:
            outs[tag.name] = _numeric_out(number, tag.bands)
        else:
            outs[tag.name] = _Out(value=value, number=number)
    return wide, outs


# --- unpivot --------------------------------------------------------------------


def _long(wide: ir.Table, outs: dict[str, _Out], ctx: _Context) -> ir.Table:
    entries = [
        ibis.struct({"tag": ibis.literal(name), "value": out.value, "number": out.number})
        for name, out in outs.items()
    ]
    # Back to ONE_IDs on the wide table (one row per person), before the unnest multiplies it.
    keyed = with_one_id(wide)
    unnested = keyed.select(one_id=keyed.one_id, entry=ibis.array(entries).unnest())
    rows = unnested.select(
        one_id=unnested.one_id,
        tag=unnested.entry["tag"],
        value=unnested.entry["value"],
        number=unnested.entry["number"],
        computed_at=ctx.now,
    )
    return rows.filter(rows.value.notnull() | rows.number.notnull())


def is_event_tag(tag: TagDefinition) -> bool:
    return isinstance(tag, DynamicTag) or (isinstance(tag, SemiStaticTag) and tag.trait is None)


def compile_tags(
    tags: Sequence[TagDefinition], as_of: datetime, dialect: Dialect, *, aliases: bool = True
) -> ir.Table:
    """One expression with the ``tag_values`` rows of ``tags`` for every person as of ``as_of``.

    ``aliases=False`` may be passed when ``one_id_aliases`` is empty (see
    ``sources.resolved_events``); event rows then skip the alias join.
    """
    if not tags:
        raise ValueError("compile_tags needs at least one tag")
    ctx = _Context(as_of=as_of, dialect=dialect, aliases=aliases)
    parts: list[ir.Table] = []
    event_tags = [t for t in tags if is_event_tag(t)]
    trait_tags = [t for t in tags if not is_event_tag(t)]
    if event_tags:
        wide, outs = _event_wide(event_tags, ctx)  # type: ignore[arg-type]
        parts.append(_long(wide, outs, ctx))
    if trait_tags:
        wide, outs = _trait_wide(trait_tags, ctx)  # type: ignore[arg-type]
        parts.append(_long(wide, outs, ctx))
    result = parts[0] if len(parts) == 1 else parts[0].union(parts[1], distinct=False)
    return result.select(*LONG_COLUMNS)


def tags_sql(
    tags: Sequence[TagDefinition], as_of: datetime, dialect: Dialect, *, aliases: bool = True
) -> str:
    """The SQL of ``compile_tags`` in ``dialect``."""
    return str(ibis.to_sql(compile_tags(tags, as_of, dialect, aliases=aliases), dialect=dialect))
