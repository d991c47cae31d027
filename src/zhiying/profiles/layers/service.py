"""Layers: rules (operational store), computation, distribution and migration matrix (warehouse).

``compute`` writes the layer of every customer as of an instant into
``layer_values`` (replacing an earlier computation for the same layer and
instant, so it is idempotent) and records the distribution in
``layer_runs``. ``migration`` compares two computed instants: how many
customers moved from each value to each other value — the figure an alert
can watch (``MigrationMatrix.moved``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import ibis
import ibis.expr.types as ir
import sqlalchemy as sa
from pydantic import TypeAdapter

from zhiying.errors import NotFound, ValidationFailed
from zhiying.profiles.layers import compute
from zhiying.profiles.layers.models import (
    DEFAULT_RULES,
    LAYER_NAMES,
    LAYER_VALUES,
    NONE,
    LayerRules,
    LifecycleRules,
    PromotionSensitivityRules,
    ValueFrequencyRules,
    cut_points,
)
from zhiying.profiles.tags.sources import instant, table
from zhiying.runtime import Stores
from zhiying.store.tables import layer_definitions, layer_runs
from zhiying.warehouse.events import string_literal, timestamp_literal
from zhiying.warehouse.schema import LAYER_VALUES as LAYER_VALUES_SCHEMA

AnyRules = LifecycleRules | ValueFrequencyRules | PromotionSensitivityRules
Progress = Callable[[str, int, int], None]

_ADAPTER: TypeAdapter[AnyRules] = TypeAdapter(LayerRules)
_EMPTY = LAYER_VALUES_SCHEMA.empty_table()


def _check_layer(name: str) -> None:
    if name not in LAYER_NAMES:
        raise NotFound(
            f"no layer named {name!r}; layers are {', '.join(LAYER_NAMES)}", field="layer"
        )


# --- rules ----------------------------------------------------------------------


def parse_rules(data: Any) -> AnyRules:
    try:
        return _ADAPTER.validate_python(data)
    except ValueError as exc:
        raise ValidationFailed(f"invalid layer rules: {exc}", field="rules") from exc


def rules_for(stores: Stores, name: str) -> AnyRules:
    """The rules a layer uses: the stored ones, or the documented defaults."""
    _check_layer(name)
    with stores.engine.connect() as conn:
        stored = conn.execute(
            sa.select(layer_definitions.c.rules).where(layer_definitions.c.name == name)
        ).scalar()
    return DEFAULT_RULES[name] if stored is None else parse_rules(stored)


def set_rules(stores: Stores, rules: AnyRules) -> AnyRules:
    """Store ``rules`` for their layer (replacing earlier ones); later computations use them."""
    body = {"rules": rules.model_dump(mode="json"), "updated_at": stores.clock.now()}
    with stores.engine.begin() as conn:
        updated = conn.execute(
            layer_definitions.update().where(layer_definitions.c.name == rules.layer).values(**body)
        ).rowcount
        if not updated:
            conn.execute(layer_definitions.insert().values(name=rules.layer, **body))
    return rules


def reset_rules(stores: Stores, name: str) -> AnyRules:
    """Go back to the documented defaults."""
    _check_layer(name)
    with stores.engine.begin() as conn:
        conn.execute(layer_definitions.delete().where(layer_definitions.c.name == name))
    return DEFAULT_RULES[name]


# --- compute --------------------------------------------------------------------


@dataclass(frozen=True)
class LayerRun:
    layer: str
    as_of: datetime
    rows: int
    counts: dict[str, int]
    rules: AnyRules


def _sql(stores: Stores, expr: ir.Table) -> str:
    return str(ibis.to_sql(expr, dialect=stores.warehouse.dialect))


def _histogram(stores: Stores, metrics: ir.Table, column: str) -> tuple[list[int], list[int]]:
    result = stores.warehouse.query(_sql(stores, compute.histogram_expr(metrics, column)))
    return (
        [int(v) for v in result.column("x").to_pylist()],
        [int(v) for v in result.column("n").to_pylist()],
    )


def layer_expr(stores: Stores, rules: AnyRules, as_of: datetime) -> ir.Table:
    """The expression computing ``rules``' layer as of ``as_of`` (cut points are read first)."""
    dialect = stores.warehouse.dialect
    if isinstance(rules, LifecycleRules):
        return compute.lifecycle_expr(rules, as_of, dialect)
    if isinstance(rules, PromotionSensitivityRules):
        return compute.promotion_expr(rules, as_of, dialect)
    metrics = compute.value_frequency_metrics(rules, as_of, dialect)
    f_cuts = cut_points(*_histogram(stores, metrics, "frequency"), rules.bins)
    m_cuts = cut_points(*_histogram(stores, metrics, "monetary"), rules.bins)
    return compute.value_frequency_expr(rules, as_of, dialect, f_cuts, m_cuts)


def compute_layers(
    stores: Stores,
    *,
    as_of: datetime | None = None,
    layers: Sequence[str] | None = None,
    progress: Progress | None = None,
) -> list[LayerRun]:
    """Classify every customer in ``layers`` (default: all) as of ``as_of`` (default: the clock)."""
    report = progress or (lambda _s, _d, _t: None)
    names = list(layers or LAYER_NAMES)
    for name in names:
        _check_layer(name)
    at = as_of or stores.clock.now()
    wh = stores.warehouse
    runs = []
    for i, name in enumerate(names):
        report(f"computing {name}", i, len(names))
        rules = rules_for(stores, name)
        select = _sql(stores, layer_expr(stores, rules, at))
        wh.execute(
            f"DELETE FROM layer_values WHERE layer = {string_literal(wh, name)} "
            f"AND as_of = {timestamp_literal(wh, at)}"
        )
        rows = wh.insert_select("layer_values", _EMPTY, select)
        counts = _counts(stores, name, at)
        with stores.engine.begin() as conn:
            conn.execute(
                layer_runs.delete().where(layer_runs.c.layer == name, layer_runs.c.as_of == at)
            )
            conn.execute(
                layer_runs.insert().values(
                    layer=name,
                    as_of=at,
                    rules=rules.model_dump(mode="json"),
                    counts=counts,
                    rows=rows,
                    computed_at=stores.clock.now(),
                )
            )
        runs.append(LayerRun(layer=name, as_of=at, rows=rows, counts=counts, rules=rules))
    report("done", len(names), len(names))
    return runs


def _counts(stores: Stores, name: str, at: datetime) -> dict[str, int]:
    lv = table("layer_values")
    mine = lv.filter(lv.layer == name, lv.as_of == timestamp_scalar(stores, at))
    expr = mine.group_by("value").aggregate(users=mine.count())
    result = stores.warehouse.query(_sql(stores, expr)).to_pylist()
    found = {r["value"]: int(r["users"]) for r in result}
    ordered = {v: found.pop(v, 0) for v in LAYER_VALUES[name]}
    ordered.update(sorted(found.items()))
    return ordered


def timestamp_scalar(stores: Stores, at: datetime) -> ir.TimestampScalar:
    return instant(at, stores.warehouse.dialect)


# --- reading --------------------------------------------------------------------


@dataclass(frozen=True)
class Distribution:
    layer: str
    as_of: datetime
    counts: dict[str, int]

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def share(self, value: str) -> float:
        return self.counts.get(value, 0) / self.total if self.total else 0.0


def computed_dates(stores: Stores, name: str) -> list[datetime]:
    _check_layer(name)
    with stores.engine.connect() as conn:
        rows = conn.execute(
            sa.select(layer_runs.c.as_of)
            .where(layer_runs.c.layer == name)
            .order_by(layer_runs.c.as_of)
        ).scalars()
        return list(rows)


def _require_computed(stores: Stores, name: str, at: datetime) -> None:
    with stores.engine.connect() as conn:
        found = conn.execute(
            sa.select(layer_runs.c.layer).where(
                layer_runs.c.layer == name, layer_runs.c.as_of == at
            )
        ).first()
    if found is None:
        raise NotFound(
            f"{name} has not been computed as of {at.isoformat()}; run `zhiying layers compute "
            f"--as-of ...` (or POST /api/layers/compute) first",
            field="as_of",
        )


def distribution(stores: Stores, name: str, as_of: datetime) -> Distribution:
    """How many customers hold each value of a computed layer (documented value order)."""
    _check_layer(name)
    _require_computed(stores, name, as_of)
    return Distribution(layer=name, as_of=as_of, counts=_counts(stores, name, as_of))


@dataclass(frozen=True)
class MigrationMatrix:
    """Customers by (value at ``from_as_of``, value at ``to_as_of``); ``none``: not a customer."""

    layer: str
    from_as_of: datetime
    to_as_of: datetime
    from_values: tuple[str, ...]
    to_values: tuple[str, ...]
    counts: dict[tuple[str, str], int]

    def moved(self, from_value: str, to_value: str) -> int:
        """Customers who were ``from_value`` at the first date and ``to_value`` at the second."""
        return self.counts.get((from_value, to_value), 0)

    def rows(self) -> list[list[int]]:
        return [[self.moved(f, t) for t in self.to_values] for f in self.from_values]

    def as_json(self) -> dict[str, Any]:
        return {
            "layer": self.layer,
            "from_as_of": self.from_as_of.isoformat(),
            "to_as_of": self.to_as_of.isoformat(),
            "from_values": list(self.from_values),
            "to_values": list(self.to_values),
            "matrix": self.rows(),
        }


def migration(
    stores: Stores, name: str, from_as_of: datetime, to_as_of: datetime
) -> MigrationMatrix:
    """The migration matrix of a layer between two computed instants."""
    _check_layer(name)
    if from_as_of >= to_as_of:
        raise ValidationFailed("from must be before to", field="from")
    _require_computed(stores, name, from_as_of)
    _require_computed(stores, name, to_as_of)
    lv = table("layer_values")
    before = lv.filter(lv.layer == name, lv.as_of == timestamp_scalar(stores, from_as_of))
    after = lv.filter(lv.layer == name, lv.as_of == timestamp_scalar(stores, to_as_of))
    before = before.select(a_id=before.one_id, a=before.value)
    after = after.select(b_id=after.one_id, b=after.value)
    joined = before.outer_join(after, before.a_id == after.b_id)
    pairs = joined.select(a=joined.a.fill_null(NONE), b=joined.b.fill_null(NONE))
    expr = pairs.group_by(["a", "b"]).aggregate(users=pairs.count())
    result = stores.warehouse.query(_sql(stores, expr)).to_pylist()
    counts = {(r["a"], r["b"]): int(r["users"]) for r in result}
    known = LAYER_VALUES[name]

    def axis(seen: set[str]) -> tuple[str, ...]:
        extra = sorted(seen - set(known) - {NONE})
        return (*known, *extra, *([NONE] if NONE in seen else []))

    return MigrationMatrix(
        layer=name,
        from_as_of=from_as_of.astimezone(UTC),
        to_as_of=to_as_of.astimezone(UTC),
        from_values=axis({a for a, _ in counts}),
        to_values=axis({b for _, b in counts}),
        counts=counts,
    )
