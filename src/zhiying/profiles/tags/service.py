"""Tag definitions (operational store) and refreshes (warehouse): the tags' service.

A refresh computes every requested tag for every person in one warehouse
statement (see ``compiler``), as of one instant, then:

1. stores its rows as the current values (``storage.write_refresh``: every
   row is written once; the values they replace become the dynamic tags'
   history — a swap of ``tag_values`` when every defined tag is refreshed,
   an in-place replacement otherwise; a refresh repeated for the same
   instant replaces that instant's rows, so retries do not double history);
2. records the run in ``tag_refresh_runs`` and the instant in
   ``tag_definitions.last_as_of``.

The scheduler's idle ticks fold DuckDB history segments into
``tag_history`` (``storage.fold_history``).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import ibis
import pyarrow as pa
import sqlalchemy as sa
from pydantic import TypeAdapter

from zhiying.errors import NotFound, ValidationFailed
from zhiying.profiles.tags import storage
from zhiying.profiles.tags.compiler import compile_tags
from zhiying.profiles.tags.models import DynamicTag, TagDefinition
from zhiying.profiles.tags.schedule import is_due
from zhiying.profiles.tags.sources import has_aliases, table
from zhiying.runtime import Stores
from zhiying.store.tables import tag_definitions, tag_refresh_runs

Trigger = Literal["cli", "api", "schedule"]
Progress = Callable[[str, int, int], None]
"""``progress(step, done, total)``: called as a refresh moves through its steps."""

_ADAPTER: TypeAdapter[TagDefinition] = TypeAdapter(TagDefinition)


@dataclass(frozen=True)
class TagRecord:
    definition: TagDefinition
    created_at: datetime
    updated_at: datetime
    last_as_of: datetime | None


@dataclass(frozen=True)
class RefreshResult:
    run_id: str
    as_of: datetime
    tags: list[str]
    rows: int
    history_rows: int


@dataclass(frozen=True)
class HistoryPoint:
    computed_at: datetime
    value: str | None
    number: float | None


def parse_definition(data: Any) -> TagDefinition:
    """A definition from JSON-like data; pydantic errors become ``ValidationFailed``."""
    try:
        return _ADAPTER.validate_python(data)
    except ValueError as exc:
        raise ValidationFailed(f"invalid tag definition: {exc}", field="definition") from exc


# --- definitions ----------------------------------------------------------------


def define_tags(stores: Stores, tags: Sequence[TagDefinition]) -> list[TagRecord]:
    """Create or replace definitions (by name) in one transaction; values wait for a refresh."""
    now = stores.clock.now()
    with stores.engine.begin() as conn:
        existing = {
            row.name: row.created_at
            for row in conn.execute(
                sa.select(tag_definitions.c.name, tag_definitions.c.created_at).where(
                    tag_definitions.c.name.in_([t.name for t in tags])
                )
            )
        }
        for tag in tags:
            body = {"kind": tag.kind, "definition": tag.model_dump(mode="json"), "updated_at": now}
            if tag.name in existing:
                conn.execute(
                    tag_definitions.update()
                    .where(tag_definitions.c.name == tag.name)
                    .values(**body, last_as_of=None)
                )
            else:
                conn.execute(tag_definitions.insert().values(name=tag.name, created_at=now, **body))
    return [get_tag(stores, t.name) for t in tags]


def define_tag(stores: Stores, tag: TagDefinition) -> TagRecord:
    return define_tags(stores, [tag])[0]


def _record(row: sa.Row[Any]) -> TagRecord:
    return TagRecord(
        definition=_ADAPTER.validate_python(row.definition),
        created_at=row.created_at,
        updated_at=row.updated_at,
        last_as_of=row.last_as_of,
    )


def list_tags(stores: Stores) -> list[TagRecord]:
    with stores.engine.connect() as conn:
        rows = conn.execute(sa.select(tag_definitions).order_by(tag_definitions.c.name)).all()
    return [_record(r) for r in rows]


def get_tag(stores: Stores, name: str) -> TagRecord:
    with stores.engine.connect() as conn:
        row = conn.execute(sa.select(tag_definitions).where(tag_definitions.c.name == name)).first()
    if row is None:
        raise NotFound(f"no tag named {name!r}", field="name")
    return _record(row)


def delete_tag(stores: Stores, name: str) -> None:
    """Remove a definition and its current values (its history stays, for audits)."""
    record = get_tag(stores, name)
    storage.retire_values(stores.warehouse, name, dynamic=isinstance(record.definition, DynamicTag))
    with stores.engine.begin() as conn:
        conn.execute(tag_definitions.delete().where(tag_definitions.c.name == name))


# --- refresh --------------------------------------------------------------------


def refresh(
    stores: Stores,
    *,
    as_of: datetime | None = None,
    names: Sequence[str] | None = None,
    trigger: Trigger = "cli",
    progress: Progress | None = None,
) -> RefreshResult:
    """Recompute ``names`` (default: every defined tag) for every person as of ``as_of``.

    ``as_of`` defaults to the clock. Idempotent for a given instant.
    """
    report = progress or (lambda _step, _done, _total: None)
    records = list_tags(stores)
    every_tag = {r.definition.name for r in records}
    if names is not None:
        known = {r.definition.name for r in records}
        missing = sorted(set(names) - known)
        if missing:
            raise NotFound(f"no tag named {', '.join(missing)}", field="names")
        records = [r for r in records if r.definition.name in set(names)]
    if not records:
        raise ValidationFailed("there are no tags to refresh; define one first", field="names")
    at = as_of or stores.clock.now()
    defs = [r.definition for r in records]
    tag_names = [d.name for d in defs]
    dynamic = [d.name for d in defs if isinstance(d, DynamicTag)]
    run_id = uuid.uuid4().hex
    with stores.engine.begin() as conn:
        conn.execute(
            tag_refresh_runs.insert().values(
                run_id=run_id,
                as_of=at,
                trigger=trigger,
                tags=tag_names,
                status="running",
                started_at=stores.clock.now(),
            )
        )
    total = 3
    wh = stores.warehouse
    try:
        report(f"computing {len(defs)} tags in one pass and storing them", 0, total)
        merged = has_aliases(wh.query)
        select = str(
            ibis.to_sql(compile_tags(defs, at, wh.dialect, aliases=merged), dialect=wh.dialect)
        )
        written = storage.write_refresh(
            wh,
            select,
            names=tag_names,
            dynamic=dynamic,
            at=at,
            run_id=run_id,
            swap=set(tag_names) == every_tag,
        )
        report("recording the run", 2, total)
    except Exception as exc:
        with stores.engine.begin() as conn:
            conn.execute(
                tag_refresh_runs.update()
                .where(tag_refresh_runs.c.run_id == run_id)
                .values(status="failed", error=str(exc)[:4000], finished_at=stores.clock.now())
            )
        raise
    with stores.engine.begin() as conn:
        conn.execute(
            tag_refresh_runs.update()
            .where(tag_refresh_runs.c.run_id == run_id)
            .values(status="succeeded", rows=written.rows, finished_at=stores.clock.now())
        )
        conn.execute(
            tag_definitions.update()
            .where(tag_definitions.c.name.in_(tag_names))
            .values(last_as_of=at)
        )
    report("done", total, total)
    return RefreshResult(
        run_id=run_id,
        as_of=at,
        tags=tag_names,
        rows=written.rows,
        history_rows=written.history_rows,
    )


def fold_history(stores: Stores) -> int:
    """Fold every DuckDB history segment into ``tag_history``; returns how many were folded."""
    return storage.fold_history(stores.warehouse)


def due_tags(stores: Stores, now: datetime | None = None) -> list[str]:
    """Names of the tags whose refresh period has begun since their last refresh."""
    at = now or stores.clock.now()
    return [
        r.definition.name
        for r in list_tags(stores)
        if is_due(r.definition.refresh, r.last_as_of, at)
    ]


def refresh_due(stores: Stores, progress: Progress | None = None) -> RefreshResult | None:
    """The scheduler's tick: refresh every due tag together (one pass).

    Meant to be called by the worker loop every minute or so. A tick with
    nothing due folds the oldest history segment into ``tag_history``
    instead (DuckDB; see ``storage``), so that copy stays off refreshes —
    unless more than ``MAX_UNFOLDED_SEGMENTS`` wait, then a busy tick folds one too.
    """
    names = due_tags(stores)
    if not names or len(storage.segments(stores.warehouse)) > MAX_UNFOLDED_SEGMENTS:
        storage.fold_history(stores.warehouse, limit=1)
    if not names:
        return None
    return refresh(stores, names=names, trigger="schedule", progress=progress)


MAX_UNFOLDED_SEGMENTS = 4
"""History segments a busy scheduler may leave unfolded: past this, a tick folds the
oldest before refreshing, so a worker that is never idle does not pile up tables."""


@dataclass(frozen=True)
class RunRecord:
    run_id: str
    as_of: datetime
    trigger: str
    tags: list[str]
    status: str
    rows: int | None
    error: str | None
    started_at: datetime
    finished_at: datetime | None


def list_runs(stores: Stores, limit: int = 20) -> list[RunRecord]:
    with stores.engine.connect() as conn:
        rows = conn.execute(
            sa.select(tag_refresh_runs).order_by(tag_refresh_runs.c.started_at.desc()).limit(limit)
        ).all()
    return [
        RunRecord(
            run_id=r.run_id,
            as_of=r.as_of,
            trigger=r.trigger,
            tags=list(r.tags),
            status=r.status,
            rows=r.rows,
            error=r.error,
            started_at=r.started_at,
            finished_at=r.finished_at,
        )
        for r in rows
    ]


# --- reading values -------------------------------------------------------------


def _display(value: str | None, number: float | None) -> str | float | int | None:
    if value is not None:
        return value
    if number is not None and float(number).is_integer():
        return int(number)
    return number


def tags_for(stores: Stores, one_ids: list[str]) -> dict[str, dict[str, Any]]:
    """Current tag values of ``one_ids``: ``{one_id: {tag: label or number}}``.

    A banded or categorical tag shows its label, a plain numeric tag its
    number (whole numbers as ``int``). People without tags are absent.
    """
    if not one_ids:
        return {}
    values = table("tag_values")
    expr = values.filter(values.one_id.isin(list(one_ids))).select(
        "one_id", "tag", "value", "number"
    )
    result = stores.warehouse.query(str(ibis.to_sql(expr, dialect=stores.warehouse.dialect)))
    out: dict[str, dict[str, Any]] = {}
    for row in result.to_pylist():
        out.setdefault(row["one_id"], {})[row["tag"]] = _display(row["value"], row["number"])
    for tags in out.values():
        ordered = dict(sorted(tags.items()))
        tags.clear()
        tags.update(ordered)
    return out


def history(stores: Stores, name: str, one_id: str) -> list[HistoryPoint]:
    """Values a dynamic tag had for one person at each refresh, oldest first."""
    record = get_tag(stores, name)
    dynamic = isinstance(record.definition, DynamicTag)
    sql = storage.history_sql(stores.warehouse, name, one_id, dynamic=dynamic)
    return [_history_point(row) for row in _rows(stores.warehouse.query(sql))]


def _rows(result: pa.Table) -> list[dict[str, Any]]:
    return list(result.to_pylist())


def _history_point(row: dict[str, Any]) -> HistoryPoint:
    at = row["computed_at"]
    if isinstance(at, datetime):
        at = at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)
    return HistoryPoint(computed_at=at, value=row["value"], number=row["number"])


@dataclass(frozen=True)
class ValueCount:
    value: str | float | int | None
    users: int


def value_counts(stores: Stores, name: str, limit: int = 20) -> list[ValueCount]:
    """The most common current values of a tag (labels, or numbers for plain numeric tags)."""
    get_tag(stores, name)
    values = table("tag_values")
    mine = values.filter(values.tag == name)
    expr = (
        mine.group_by(["value", "number"])
        .aggregate(users=mine.count())
        .order_by([ibis.desc("users"), "value", "number"])
        .limit(limit)
    )
    result = stores.warehouse.query(str(ibis.to_sql(expr, dialect=stores.warehouse.dialect)))
    return [
        ValueCount(value=_display(r["value"], r["number"]), users=int(r["users"]))
        for r in result.to_pylist()
    ]
