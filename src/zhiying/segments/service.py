"""Segments with stores: definitions (CRUD), counts and previews, materialised snapshots.

- A segment is a named rule kept in the operational store (``segments``).
- ``count`` / ``preview`` / ``members`` compile a rule as of ``at`` and run it on
  the warehouse, whatever its engine (DuckDB, chdb, a ClickHouse server).
- ``materialise`` writes the members as a snapshot into the warehouse table
  ``segment_members`` and records it in ``segment_snapshots``; the people who
  entered or left since the previous snapshot become ``Segment Entered`` /
  ``Segment Exited`` track events (the journey runtime triggers on them).
  Their ``messageId`` is derived from (segment, previous snapshot, person), so
  a retried materialisation never emits a transition twice.
- ``materialise_due`` materialises every segment whose refresh interval has
  elapsed; a worker loop calls it (none runs yet: call it from cron with
  ``zhiying segment materialise --due``).

Rules are checked before they are stored or run: names of traits and events
must have been seen by the warehouse (``UnknownName``), and the rule must
compile (``UnsupportedRule``); both name the path inside the rule.
"""

from __future__ import annotations

import io
import secrets
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import ibis
import ibis.expr.types as ir
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import sqlalchemy as sa
from sqlalchemy import Connection
from sqlalchemy.exc import IntegrityError

from zhiying.errors import Conflict, NotFound, ZhiyingError
from zhiying.runtime import Stores
from zhiying.segments.compiler import (
    Catalog,
    CompiledRule,
    UnknownName,
    compile_rule,
    instant,
)
from zhiying.segments.models import (
    AndGroup,
    EventCondition,
    EventTimeCondition,
    LayerCondition,
    NotGroup,
    OrGroup,
    PreviewResult,
    ProfileSample,
    Rule,
    SegmentCondition,
    SegmentCreate,
    SegmentUpdate,
    TagCondition,
    TraitCondition,
    parse_rule,
    rule_json,
    to_utc,
)
from zhiying.segments.plans import PLANS, PlannedRule, reads_segments
from zhiying.store.tables import segment_snapshots, segments
from zhiying.warehouse import Warehouse
from zhiying.warehouse.events import append_events, string_literal, timestamp_literal
from zhiying.warehouse.schema import (
    EVENTS,
    ONE_ID_ALIASES,
    PERSON_KEYS,
    SEGMENT_MEMBERS,
    TRAIT_UPDATES,
)

ENTERED = "Segment Entered"
EXITED = "Segment Exited"
ExportFormat = Literal["csv", "parquet"]


@dataclass(frozen=True)
class Segment:
    segment_id: str
    name: str
    description: str
    rule: Rule
    refresh_every_minutes: int | None
    version: int
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class Snapshot:
    segment_id: str
    snapshot_at: datetime
    version: int
    member_count: int
    entered: int
    exited: int


@dataclass(frozen=True)
class DueRun:
    """What ``materialise_due`` did: snapshots taken and segments that failed (id, reason)."""

    done: list[Snapshot]
    failed: list[tuple[str, str]]


# --- catalog of segments for the compiler ------------------------------------------------


class StoreCatalog:
    """Other segments' rules and snapshots, read from the operational store.

    ``overrides`` stands in for rules being saved, so a cycle through the rule
    being updated is found before it is stored.
    """

    def __init__(self, conn: Connection, overrides: dict[str, Rule] | None = None) -> None:
        self._conn = conn
        self._overrides = overrides or {}

    def segment_rule(self, segment_id: str) -> Rule | None:
        if segment_id in self._overrides:
            return self._overrides[segment_id]
        doc = self._conn.execute(
            sa.select(segments.c.rule).where(segments.c.segment_id == segment_id)
        ).scalar()
        return None if doc is None else parse_rule(doc)

    def latest_snapshot(self, segment_id: str, at: datetime) -> datetime | None:
        value = self._conn.execute(
            sa.select(sa.func.max(segment_snapshots.c.snapshot_at)).where(
                segment_snapshots.c.segment_id == segment_id,
                segment_snapshots.c.snapshot_at <= at,
            )
        ).scalar()
        if value is None:
            return None
        # func.max bypasses the column type on some backends: normalise here.
        if isinstance(value, str):
            value = datetime.fromisoformat(value)
        assert isinstance(value, datetime)
        return to_utc(value)


# --- names the rule uses ----------------------------------------------------------------


def _walk(rule: Rule, path: str) -> Iterator[tuple[Rule, str]]:
    yield rule, path
    prefix = f"{path}." if path else ""
    if isinstance(rule, AndGroup | OrGroup):
        for i, child in enumerate(rule.rules):
            yield from _walk(child, f"{prefix}rules.{i}")
    elif isinstance(rule, NotGroup):
        yield from _walk(rule.rule, f"{prefix}rule")


def referenced_segments(rule: Rule) -> set[str]:
    return {n.segment for n, _ in _walk(rule, "") if isinstance(n, SegmentCondition)}


_known_lock = threading.Lock()
_known: dict[tuple[str, str], set[str]] = {}
"""Names each warehouse has been seen to hold (events and traits are only ever added)."""


def _seen(warehouse: Warehouse, kind: str, names: set[str]) -> set[str]:
    key = (warehouse.url, kind)
    with _known_lock:
        cached = set(_known.get(key, set()))
    missing = sorted(names - cached)
    if missing:
        if kind == "event":
            table = ibis.table(ibis.Schema.from_pyarrow(EVENTS), name="events")
            column = "event"
        else:
            table = ibis.table(ibis.Schema.from_pyarrow(TRAIT_UPDATES), name="trait_updates")
            column = "key"
        # One LIMIT 1 probe per name: it stops at the first row instead of scanning
        # the whole table for DISTINCT names.
        probes = [
            table.filter(table[column] == name).select(name=table[column]).limit(1)
            for name in missing
        ]
        query = probes[0]
        for probe in probes[1:]:
            query = query.union(probe)
        found = warehouse.query(str(ibis.to_sql(query, dialect=warehouse.dialect)))
        hits = {str(v) for v in found.column("name").to_pylist()}
        with _known_lock:
            _known.setdefault(key, set()).update(hits)
        cached |= hits
    return cached


def check_names(warehouse: Warehouse, rule: Rule) -> None:
    """Raise ``UnknownName`` (with the path inside the rule) for a trait key or an
    event name the warehouse has never seen."""
    traits: dict[str, str] = {}
    events: dict[str, str] = {}
    for node, path in _walk(rule, ""):
        prefix = f"{path}." if path else ""
        if isinstance(node, TraitCondition):
            traits.setdefault(node.trait, f"{prefix}trait")
        elif isinstance(node, EventCondition | EventTimeCondition):
            events.setdefault(node.event, f"{prefix}event")
    for kind, wanted in (("trait", traits), ("event", events)):
        if not wanted:
            continue
        known = _seen(warehouse, kind, set(wanted))
        for name, path in wanted.items():
            if name not in known:
                what = "trait" if kind == "trait" else "event"
                raise UnknownName(
                    f"no {what} named {name!r} has been recorded yet"
                    + (
                        " (traits come from identify calls and user imports)"
                        if kind == "trait"
                        else ""
                    ),
                    field=path,
                )


def check_tags_and_layers(stores: Stores, rule: Rule) -> None:
    """Raise ``UnknownName`` (with the path inside the rule) for a tag that is not defined
    or a layer that does not exist: such a condition would silently match nobody."""
    from zhiying.profiles.layers.models import LAYER_NAMES
    from zhiying.profiles.tags.service import list_tags

    defined: set[str] | None = None
    for node, path in _walk(rule, ""):
        prefix = f"{path}." if path else ""
        if isinstance(node, LayerCondition) and node.layer not in LAYER_NAMES:
            raise UnknownName(
                f"no layer named {node.layer!r}; layers are {', '.join(LAYER_NAMES)}",
                field=f"{prefix}layer",
            )
        if isinstance(node, TagCondition):
            if defined is None:
                defined = {t.definition.name for t in list_tags(stores)}
            if node.tag not in defined:
                raise UnknownName(
                    f"no tag named {node.tag!r} is defined (zhiying tags define)",
                    field=f"{prefix}tag",
                )


def prepare(
    stores: Stores,
    rule: Rule,
    at: datetime,
    conn: Connection | None = None,
    overrides: dict[str, Rule] | None = None,
) -> CompiledRule | PlannedRule:
    """Check the names ``rule`` uses and compile it as of ``at``.

    A rule that reads no other segment goes through this process's plans
    (``segments.plans``): compiled once, re-aimed at later instants without
    compiling. One that does reads the catalog (snapshots) now.
    """
    check_names(stores.warehouse, rule)
    check_tags_and_layers(stores, rule)
    if not reads_segments(rule):
        return PLANS.compiled(rule, at)
    if conn is not None:
        return compile_rule(rule, at, StoreCatalog(conn, overrides))
    with stores.engine.connect() as own:
        return compile_rule(rule, at, StoreCatalog(own, overrides))


def compile_only(rule: Rule, at: datetime, catalog: Catalog | None = None) -> CompiledRule:
    """Compile without touching the warehouse (``zhiying segment sql``)."""
    return compile_rule(rule, at, catalog)


# --- counting and previewing ------------------------------------------------------------


def _at(stores: Stores, at: datetime | None) -> datetime:
    return to_utc(at) if at is not None else stores.clock.now().astimezone(UTC)


def members(stores: Stores, rule: Rule, at: datetime | None = None) -> pa.Table:
    """The members of ``rule`` as of ``at`` (default now): an Arrow table ``one_id``."""
    compiled = prepare(stores, rule, _at(stores, at))
    return stores.warehouse.query(compiled.sql(stores.warehouse.dialect, pretty=False))


def count(stores: Stores, rule: Rule, at: datetime | None = None) -> int:
    """How many people ``rule`` selects as of ``at`` (default now)."""
    compiled = prepare(stores, rule, _at(stores, at))
    result = stores.warehouse.query(compiled.count_sql(stores.warehouse.dialect))
    return int(result.column(0)[0].as_py())


def preview(
    stores: Stores, rule: Rule, at: datetime | None = None, sample: int = 20
) -> PreviewResult:
    """Count, the first ``sample`` members (by ONE_ID) with their traits as of ``at``, and
    the SQL of the members.

    One query computes the members once and returns both the count and the
    sample (``CompiledRule.sample_sql``); a second reads the sample's traits.
    """
    when = _at(stores, at)
    compiled = prepare(stores, rule, when)
    wh = stores.warehouse
    ids: list[str] = []
    if sample:
        found = wh.query(compiled.sample_sql(wh.dialect, sample))
        ids = [str(v) for v in found.column("one_id").to_pylist()]
        total = int(found.column("members")[0].as_py()) if found.num_rows else 0
    else:
        total = int(wh.query(compiled.count_sql(wh.dialect)).column(0)[0].as_py())
    traits = traits_as_of(wh, ids, when)
    return PreviewResult(
        count=total,
        sample=[ProfileSample(one_id=i, traits=traits.get(i, {})) for i in ids],
        sql=compiled.sql(wh.dialect),
        dialect=wh.dialect,
        at=when,
    )


_T_TRAITS = ibis.table(ibis.Schema.from_pyarrow(TRAIT_UPDATES), name="trait_updates")
_T_ALIASES = ibis.table(ibis.Schema.from_pyarrow(ONE_ID_ALIASES), name="one_id_aliases")
_T_KEYS = ibis.table(ibis.Schema.from_pyarrow(PERSON_KEYS), name="person_keys")


def traits_as_of(warehouse: Warehouse, ids: list[str], at: datetime) -> dict[str, dict[str, Any]]:
    """Latest value of every trait of each person in ``ids`` as of ``at`` (one query).

    The rows are found by key: the people's own keys (``person_keys``) and the
    keys merged into them (``one_id_aliases``), so the trait table is read by
    an integer filter and never joined on text.
    """
    if not ids:
        return {}
    own = _T_KEYS.filter(_T_KEYS["one_id"].isin(ids))
    merged = _T_ALIASES.filter(_T_ALIASES["one_id"].isin(ids), _T_ALIASES["alias_key"].notnull())
    key_map = own.select(raw=own["person_key"].cast("int64"), owner=own["one_id"]).union(
        merged.select(raw=merged["alias_key"], owner=merged["one_id"])
    )
    tr = _T_TRAITS.filter(_T_TRAITS["timestamp"] <= instant(at))
    j = tr.join(key_map, tr["person_key"] == key_map["raw"])
    # Latest by (timestamp, message id), as the compiler and the profile order them.
    order = ibis.struct({"t": j["timestamp"], "m": j["message_id"]})
    latest = j.group_by(["owner", "key"]).aggregate(
        value=j["value"].argmax(order), number=j["number"].argmax(order)
    )
    out: dict[str, dict[str, Any]] = {}
    table = warehouse.query(str(ibis.to_sql(latest, dialect=warehouse.dialect)))
    for row in table.to_pylist():
        value: Any = row["number"] if row["number"] is not None else row["value"]
        out.setdefault(str(row["owner"]), {})[str(row["key"])] = value
    return {k: dict(sorted(v.items())) for k, v in out.items()}


# --- definitions (CRUD) ----------------------------------------------------------------


def _segment(row: Any) -> Segment:
    return Segment(
        segment_id=row.segment_id,
        name=row.name,
        description=row.description,
        rule=parse_rule(row.rule),
        refresh_every_minutes=row.refresh_every_minutes,
        version=row.version,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def _get(conn: Connection, segment_id: str) -> Segment:
    row = conn.execute(sa.select(segments).where(segments.c.segment_id == segment_id)).first()
    if row is None:
        raise NotFound(f"no segment {segment_id!r}", field="segment_id")
    return _segment(row)


def _name_taken(conn: Connection, name: str, other_than: str | None = None) -> None:
    query = sa.select(segments.c.segment_id).where(segments.c.name == name)
    if other_than is not None:
        query = query.where(segments.c.segment_id != other_than)
    if conn.execute(query).first() is not None:
        raise Conflict(f"a segment named {name!r} exists already", field="name")


def create_segment(stores: Stores, data: SegmentCreate) -> Segment:
    """Store a new segment after checking its rule (names known, compiles)."""
    now = stores.clock.now()
    segment_id = "seg_" + secrets.token_hex(6)
    with stores.engine.begin() as conn:
        _name_taken(conn, data.name)
        prepare(stores, data.rule, now, conn)
        try:
            conn.execute(
                segments.insert().values(
                    segment_id=segment_id,
                    name=data.name,
                    description=data.description,
                    rule=rule_json(data.rule),
                    refresh_every_minutes=data.refresh_every_minutes,
                    version=1,
                    created_at=now,
                    updated_at=now,
                )
            )
        except IntegrityError as exc:
            raise Conflict(f"a segment named {data.name!r} exists already", field="name") from exc
        return _get(conn, segment_id)


def get_segment(stores: Stores, segment_id: str) -> Segment:
    with stores.engine.connect() as conn:
        return _get(conn, segment_id)


def list_segments(stores: Stores) -> list[Segment]:
    with stores.engine.connect() as conn:
        rows = conn.execute(sa.select(segments).order_by(segments.c.name)).all()
    return [_segment(r) for r in rows]


def update_segment(stores: Stores, segment_id: str, data: SegmentUpdate) -> Segment:
    """Change a segment; a new rule is checked (including cycles through other
    segments) and bumps ``version``."""
    now = stores.clock.now()
    changes: dict[str, Any] = {}
    fields = data.model_fields_set
    with stores.engine.begin() as conn:
        current = _get(conn, segment_id)
        if "name" in fields and data.name is not None and data.name != current.name:
            _name_taken(conn, data.name.strip(), segment_id)
            changes["name"] = data.name.strip()
        if "description" in fields and data.description is not None:
            changes["description"] = data.description
        if "refresh_every_minutes" in fields:
            changes["refresh_every_minutes"] = data.refresh_every_minutes
        if "rule" in fields and data.rule is not None and data.rule != current.rule:
            prepare(stores, data.rule, now, conn, overrides={segment_id: data.rule})
            changes["rule"] = rule_json(data.rule)
            changes["version"] = current.version + 1
        if changes:
            changes["updated_at"] = now
            conn.execute(
                segments.update().where(segments.c.segment_id == segment_id).values(**changes)
            )
        return _get(conn, segment_id)


def delete_segment(stores: Stores, segment_id: str) -> None:
    """Delete a segment, its snapshots and their members; refused while another
    segment's rule refers to it."""
    with stores.engine.begin() as conn:
        _get(conn, segment_id)
        for other in conn.execute(sa.select(segments.c.segment_id, segments.c.rule)).all():
            if other.segment_id != segment_id and segment_id in referenced_segments(
                parse_rule(other.rule)
            ):
                raise Conflict(
                    f"segment {other.segment_id!r} refers to {segment_id!r}; change it first",
                    field="segment_id",
                )
        conn.execute(segment_snapshots.delete().where(segment_snapshots.c.segment_id == segment_id))
        conn.execute(segments.delete().where(segments.c.segment_id == segment_id))
        _delete_members(stores.warehouse, segment_id, None)


# --- snapshots ------------------------------------------------------------------------------


_T_MEMBERS = ibis.table(ibis.Schema.from_pyarrow(SEGMENT_MEMBERS), name="segment_members")


def _sql(warehouse: Warehouse, expr: ir.Table) -> str:
    return str(ibis.to_sql(expr, dialect=warehouse.dialect))


def _snapshot_rows(segment_id: str, at: datetime) -> ir.Table:
    m = _T_MEMBERS
    return m.filter(m["segment_id"] == segment_id, m["snapshot_at"] == instant(at)).select("one_id")


def _delete_members(warehouse: Warehouse, segment_id: str, after: datetime | None) -> None:
    """Delete members of ``segment_id``'s snapshots (only those after ``after``, if given)."""
    where = f"segment_id = {string_literal(warehouse, segment_id)}"
    if after is not None:
        where += f" AND snapshot_at > {timestamp_literal(warehouse, after)}"
    warehouse.execute(f"DELETE FROM segment_members WHERE {where}")


def _snapshot(row: Any) -> Snapshot:
    return Snapshot(
        segment_id=row.segment_id,
        snapshot_at=row.snapshot_at,
        version=row.version,
        member_count=row.member_count,
        entered=row.entered,
        exited=row.exited,
    )


def list_snapshots(stores: Stores, segment_id: str) -> list[Snapshot]:
    """Snapshots of a segment, newest first."""
    with stores.engine.connect() as conn:
        _get(conn, segment_id)
        rows = conn.execute(
            sa.select(segment_snapshots)
            .where(segment_snapshots.c.segment_id == segment_id)
            .order_by(segment_snapshots.c.snapshot_at.desc())
        ).all()
    return [_snapshot(r) for r in rows]


def _transition_events(
    ids: pa.Array, event: str, segment: Segment, at: datetime, previous: datetime | None
) -> pa.Table:
    n = len(ids)
    since = previous.strftime("%Y%m%dT%H%M%S%f") if previous else "none"
    kind = "in" if event == ENTERED else "out"
    prefix = f"seg:{segment.segment_id}:{since}:{kind}:"
    message_ids = pc.binary_join_element_wise(pa.repeat(pa.scalar(prefix), n), ids, "")
    naive = at.astimezone(UTC).replace(tzinfo=None)
    props = orjson.dumps(
        {
            "segment_id": segment.segment_id,
            "segment_name": segment.name,
            "snapshot_at": at.astimezone(UTC).isoformat().replace("+00:00", "Z"),
        }
    ).decode()
    columns: dict[str, pa.Array] = {
        "message_id": message_ids,
        "type": pa.repeat(pa.scalar("track"), n),
        "event": pa.repeat(pa.scalar(event), n),
        "one_id": ids,
        "timestamp": pa.repeat(pa.scalar(naive, pa.timestamp("us")), n),
        "received_at": pa.repeat(pa.scalar(naive, pa.timestamp("us")), n),
        "source": pa.repeat(pa.scalar("segments"), n),
        "channel": pa.repeat(pa.scalar("server"), n),
        "properties": pa.repeat(pa.scalar(props), n),
    }
    arrays = [
        columns[f.name].cast(f.type) if f.name in columns else pa.nulls(n, f.type) for f in EVENTS
    ]
    return pa.Table.from_arrays(arrays, schema=EVENTS)


def materialise(stores: Stores, segment_id: str, at: datetime | None = None) -> Snapshot:
    """Take a membership snapshot of ``segment_id`` as of ``at`` (default now).

    Idempotent per ``(segment_id, at)``; after a crash, a retry replaces the
    partial members and re-emits transitions under the same messageIds
    (deduplicated by the event table).
    """
    when = _at(stores, at)
    wh = stores.warehouse
    with stores.engine.connect() as conn:
        segment = _get(conn, segment_id)
        done = conn.execute(
            sa.select(segment_snapshots).where(
                segment_snapshots.c.segment_id == segment_id,
                segment_snapshots.c.snapshot_at == when,
            )
        ).first()
        if done is not None:
            return _snapshot(done)
        prev_row = conn.execute(
            sa.select(segment_snapshots.c.snapshot_at)
            .where(
                segment_snapshots.c.segment_id == segment_id,
                segment_snapshots.c.snapshot_at < when,
            )
            .order_by(segment_snapshots.c.snapshot_at.desc())
            .limit(1)
        ).first()
        previous = prev_row.snapshot_at if prev_row else None
        newer = conn.execute(
            sa.select(sa.func.count()).where(
                segment_snapshots.c.segment_id == segment_id,
                segment_snapshots.c.snapshot_at > when,
            )
        ).scalar()
        if newer:
            raise Conflict(
                f"segment {segment_id!r} has a snapshot after {when.isoformat()}; "
                "snapshots only move forward in time",
                field="at",
            )
        compiled = prepare(stores, segment.rule, when, conn)

    # Leftovers of an attempt that crashed before it was recorded.
    _delete_members(wh, segment_id, previous)
    wh.execute(
        "INSERT INTO segment_members (segment_id, one_id, snapshot_at) "
        f"SELECT {string_literal(wh, segment_id)}, m.one_id, {timestamp_literal(wh, when)} "
        f"FROM ({compiled.sql(wh.dialect, pretty=False)}) AS m"
    )
    current = _snapshot_rows(segment_id, when)
    if previous is not None:
        before = _snapshot_rows(segment_id, previous)
        entered_q = current.anti_join(before, "one_id")
        exited_q = before.anti_join(current, "one_id")
        entered = wh.query(_sql(wh, entered_q)).column("one_id")
        exited = wh.query(_sql(wh, exited_q)).column("one_id")
    else:
        entered = wh.query(_sql(wh, current)).column("one_id")
        exited = pa.chunked_array([], pa.string())
    member_count = int(wh.query(_sql(wh, current.count().as_table())).column(0)[0].as_py())

    dedup_since = when - timedelta(days=stores.settings.dedup_window_days)
    for ids, event in ((entered, ENTERED), (exited, EXITED)):
        flat = ids.combine_chunks() if isinstance(ids, pa.ChunkedArray) else ids
        if len(flat):
            append_events(wh, _transition_events(flat, event, segment, when, previous), dedup_since)

    snapshot = Snapshot(
        segment_id=segment_id,
        snapshot_at=when,
        version=segment.version,
        member_count=member_count,
        entered=len(entered),
        exited=len(exited),
    )
    try:
        with stores.engine.begin() as conn:
            conn.execute(
                segment_snapshots.insert().values(
                    segment_id=segment_id,
                    snapshot_at=when,
                    version=segment.version,
                    member_count=member_count,
                    entered=snapshot.entered,
                    exited=snapshot.exited,
                    created_at=stores.clock.now(),
                )
            )
    except IntegrityError:
        # Another process recorded the same snapshot first: theirs stands.
        with stores.engine.connect() as conn:
            row = conn.execute(
                sa.select(segment_snapshots).where(
                    segment_snapshots.c.segment_id == segment_id,
                    segment_snapshots.c.snapshot_at == when,
                )
            ).one()
        return _snapshot(row)
    return snapshot


def due_segments(stores: Stores, now: datetime) -> list[str]:
    """Segments with a refresh interval whose last snapshot is older than it (or missing)."""
    last = (
        sa.select(
            segment_snapshots.c.segment_id,
            sa.func.max(segment_snapshots.c.snapshot_at).label("last_at"),
        )
        .group_by(segment_snapshots.c.segment_id)
        .subquery()
    )
    with stores.engine.connect() as conn:
        rows = conn.execute(
            sa.select(segments.c.segment_id, segments.c.refresh_every_minutes, last.c.last_at)
            .select_from(segments.outerjoin(last, last.c.segment_id == segments.c.segment_id))
            .where(segments.c.refresh_every_minutes.is_not(None))
            .order_by(segments.c.segment_id)
        ).all()
    due = []
    for row in rows:
        last_at = row.last_at
        if isinstance(last_at, str):
            last_at = datetime.fromisoformat(last_at)
        if last_at is None or to_utc(last_at) + timedelta(minutes=row.refresh_every_minutes) <= now:
            due.append(row.segment_id)
    return due


def materialise_due(stores: Stores) -> DueRun:
    """Materialise every segment whose refresh interval has elapsed, as of the clock's now.

    One failing segment does not stop the others; its reason is returned.
    """
    now = stores.clock.now().astimezone(UTC)
    done: list[Snapshot] = []
    failed: list[tuple[str, str]] = []
    for segment_id in due_segments(stores, now):
        try:
            done.append(materialise(stores, segment_id, now))
        except ZhiyingError as exc:
            failed.append((segment_id, exc.message))
    return DueRun(done=done, failed=failed)


def last_snapshots(stores: Stores) -> dict[str, Snapshot]:
    """The latest snapshot of every segment that has one."""
    out: dict[str, Snapshot] = {}
    with stores.engine.connect() as conn:
        rows = conn.execute(
            sa.select(segment_snapshots).order_by(
                segment_snapshots.c.segment_id, segment_snapshots.c.snapshot_at
            )
        ).all()
    for row in rows:
        out[row.segment_id] = _snapshot(row)
    return out


# --- export -------------------------------------------------------------------------------


def export_members(
    stores: Stores,
    segment_id: str,
    fmt: ExportFormat,
    *,
    live: bool = False,
    at: datetime | None = None,
) -> bytes:
    """The members as CSV or Parquet: of the latest snapshot (default), or evaluated
    live as of ``at`` when ``live``. Columns: ``one_id``, ``segment_id``, ``as_of``."""
    segment = get_segment(stores, segment_id)
    wh = stores.warehouse
    if live:
        when = _at(stores, at)
        ids = members(stores, segment.rule, when).column("one_id")
    else:
        snaps = list_snapshots(stores, segment_id)
        if not snaps:
            raise NotFound(
                f"segment {segment_id!r} has no snapshot yet; materialise it or export live",
                field="segment_id",
            )
        when = snaps[0].snapshot_at
        ids = wh.query(_sql(wh, _snapshot_rows(segment_id, when))).column("one_id")
    n = len(ids)
    table = pa.table(
        {
            "one_id": ids,
            "segment_id": pa.repeat(pa.scalar(segment_id), n),
            "as_of": pa.repeat(pa.scalar(to_utc(when)), n),
        }
    )
    table = table.sort_by("one_id")
    sink = io.BytesIO()
    if fmt == "csv":
        pacsv.write_csv(table, sink)
    else:
        pq.write_table(table, sink)
    return sink.getvalue()
