"""ONE_ID resolution against the operational store, one batch at a time.

``resolve_events`` is called by ingestion inside its own transaction (it never
commits). Per batch it makes a fixed, small number of round trips, never one
per event: collapse the batch to distinct identity tuples (Arrow,
``identity.batch``), load the known identifiers with one list-parameter query
per identifier kind, resolve in memory (``identity.resolver``), then write new
ONE_IDs, identifiers, merges and conflicts in bulk (``identity.bulk``:
``executemany`` on SQLite, ``COPY`` on PostgreSQL).

Resolution is serialised per store: a PostgreSQL transaction-scoped advisory
lock, and on SQLite a write lock taken before the first read, so two
concurrent batches cannot both mint a ONE_ID for the same new identifier.

Store invariants kept here: every identifier points at a live ONE_ID;
``one_ids.merged_into`` always names a live ONE_ID (merges re-point earlier
losers), so following it once gives the current owner and the warehouse's
one-hop ``one_id_aliases`` join stays correct.
"""

from __future__ import annotations

import base64
import secrets
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

import pyarrow as pa
import sqlalchemy as sa
from sqlalchemy import Connection

from zhiying.errors import NotFound, ValidationFailed
from zhiying.identity.batch import collapse
from zhiying.identity.bulk import BulkSql
from zhiying.identity.cache import LAST_SEEN_STEP, IdentityCache, Seen
from zhiying.identity.identifiers import (
    ANONYMOUS_ID,
    USER_ID,
    InvalidIdentifier,
    parse_ref,
)
from zhiying.identity.resolver import (
    LIMITED_KINDS,
    Ident,
    KnownOneId,
    Observation,
    Resolver,
    precedence,
)
from zhiying.store.tables import identifiers, identity_conflicts, one_ids
from zhiying.store.tables import merges as merges_table

LIST_CHUNK: Final = 50_000
"""Values per list parameter (one array / JSON text each): bounds statement size."""

_ADVISORY_LOCK_KEY: Final = 0x7A68_6979  # "zhiy": serialises resolvers on PostgreSQL


@dataclass
class Resolution:
    """What a batch resolved to.

    ``one_ids`` is aligned with the input rows (null for a row with no
    identifier); ``aliases`` are ``(merged-away ONE_ID, current owner)`` pairs for
    the warehouse's ``one_id_aliases``, transitively closed (earlier losers of a
    ONE_ID that lost now point at the new owner); ``merges``/``conflicts`` count
    what this batch merged and the distinct conflicts it met.

    ``cache_entries`` (valid as of merge ``generation``) are what the caller
    hands to ``IdentityCache.apply`` once the transaction has committed.
    """

    one_ids: pa.Array
    aliases: list[tuple[str, str]]
    merges: int
    conflicts: int
    cache_entries: dict[Ident, Seen] = field(default_factory=dict, repr=False)
    generation: int = 0


def new_one_id() -> str:
    """``u_`` + 20 lower-case base32 characters (100 random bits)."""
    return "u_" + base64.b32encode(secrets.token_bytes(13)).decode("ascii")[:20].lower()


class _Minter:
    """``new_one_id`` in bulk: one random draw and one encoding per 512 ONE_IDs."""

    def __init__(self) -> None:
        self._ready: list[str] = []

    def __call__(self) -> str:
        if not self._ready:
            # 15 bytes encode to 24 base32 characters with no padding; keep 20 (100 bits).
            text = base64.b32encode(secrets.token_bytes(15 * 512)).decode("ascii").lower()
            self._ready = ["u_" + text[i : i + 20] for i in range(0, len(text), 24)]
        return self._ready.pop()


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


_GENERATION_BUMP: Final = (
    "INSERT INTO identity_generation (id, generation) VALUES (1, 1) "
    "ON CONFLICT (id) DO UPDATE SET generation = identity_generation.generation + 1"
)


def _generation(db: BulkSql) -> int:
    """The store's merge generation (``zhiying.identity.cache``); 0 before the first merge."""
    rows = db.fetch("SELECT generation FROM identity_generation WHERE id = 1", ())
    return int(rows[0][0]) if rows else 0


def _serialise(conn: Connection) -> None:
    if conn.dialect.name == "postgresql":
        conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_ADVISORY_LOCK_KEY)))
    elif conn.dialect.name == "sqlite":
        # A write statement (even one that changes nothing) takes SQLite's write
        # lock now, so the reads below see what the writes will be based on.
        conn.execute(sa.update(one_ids).where(sa.false()).values(merged_at=one_ids.c.merged_at))


@dataclass
class _Stored:
    """A stored identifier; its times as the driver returned them (``BulkSql.time`` form)."""

    owner: str
    first_seen: Any
    last_seen: Any


def _load(
    db: BulkSql, wanted: Iterable[Ident]
) -> tuple[dict[Ident, _Stored], dict[str, KnownOneId]]:
    """Stored identifiers among ``wanted``, and their owners with created_at and limited ids."""
    by_kind: dict[str, list[str]] = defaultdict(list)
    for kind, value in wanted:
        by_kind[kind].append(value)
    stored: dict[Ident, _Stored] = {}
    for kind, values in by_kind.items():
        for chunk in _chunks(values, LIST_CHUNK):
            test, param = db.in_values(chunk)
            for value, owner, first, last in db.fetch(
                "SELECT value, one_id, first_seen, last_seen FROM identifiers "
                f"WHERE kind = ? AND value {test}",
                (kind, param),
            ):
                stored[(kind, value)] = _Stored(owner, first, last)

    created: dict[str, datetime] = {}
    redirect: dict[str, str] = {}

    def read_one_ids(ids: list[str]) -> None:
        for chunk in _chunks(ids, LIST_CHUNK):
            test, param = db.in_values(chunk)
            for one_id, created_at, merged_into in db.fetch(
                f"SELECT one_id, created_at, merged_into FROM one_ids WHERE one_id {test}",
                (param,),
            ):
                created[one_id] = db.read_time(created_at)
                if merged_into is not None:
                    redirect[one_id] = merged_into

    read_one_ids(sorted({s.owner for s in stored.values()}))
    if redirect:
        # Repair a store written before the invariant held: follow to the owner.
        for s in stored.values():
            s.owner = redirect.get(s.owner, s.owner)
        read_one_ids(sorted(set(redirect.values()) - created.keys()))
    live = sorted({s.owner for s in stored.values()})
    missing = [o for o in live if o not in created]
    if missing:
        raise ValueError(f"identifiers point at unknown ONE_IDs, e.g. {missing[0]}")
    limited: dict[str, dict[str, str]] = defaultdict(dict)
    kinds = ", ".join(f"'{k}'" for k in LIMITED_KINDS)
    # SQLite's planner would rather scan every user_id by the primary key than
    # use the one_id index; a unary + is its documented way to rule out an index.
    kind_column = "+kind" if db.sqlite else "kind"
    for chunk in _chunks(live, LIST_CHUNK):
        test, param = db.in_values(chunk)
        for one_id, kind, value in db.fetch(
            f"SELECT one_id, kind, value FROM identifiers WHERE one_id {test} "
            f"AND {kind_column} IN ({kinds})",
            (param,),
        ):
            limited[one_id][kind] = value
    known = {o: KnownOneId(created_at=created[o], limited=limited.get(o, {})) for o in live}
    return stored, known


def resolve_events(
    conn: Connection, events: pa.Table, now: datetime, cache: IdentityCache | None = None
) -> Resolution:
    """Assign a ONE_ID to every row of ``events`` (warehouse EVENTS columns).

    Runs inside the caller's transaction and never commits. ``now`` (aware
    UTC) caps event times from clocks that run ahead. Rules: see
    ``zhiying.identity.resolver`` and docs/identity.md.

    With a ``cache``, tuples whose identifiers are all cached to one ONE_ID
    (and that are not alias calls) skip the store entirely, apart from a
    coarsened ``first_seen``/``last_seen`` update; the caller applies
    ``Resolution.cache_entries`` after committing (``zhiying.identity.cache``).
    Every merge increments the store's merge generation in this transaction.
    """
    if events.num_rows == 0:
        return Resolution(pa.array([], pa.string()), [], 0, 0)
    db = BulkSql(conn)
    _serialise(conn)
    generation = _generation(db)
    tuples = collapse(events, now)
    observations = tuples.observations

    hits: dict[int, str] = {}
    touched: dict[Ident, Seen] = {}
    misses = observations
    if cache is not None:
        cache.sync(generation)
        misses = []
        for i, obs in enumerate(observations):
            cached = _cached_owner(cache, obs, touched)
            if cached is None:
                misses.append(obs)
            else:
                hits[i] = cached
    wanted: set[Ident] = set()
    for obs in misses:
        wanted.update(obs.identifiers)
        if obs.previous_id is not None:
            wanted.add((USER_ID, obs.previous_id))
            wanted.add((ANONYMOUS_ID, obs.previous_id))
    stored, known = _load(db, wanted) if wanted else ({}, {})

    resolver = Resolver(new_id=_Minter())
    resolver.load({ident: s.owner for ident, s in stored.items()}, known)
    observed = iter([resolver.observe(obs) for obs in misses])
    targets = [hits[i] if i in hits else next(observed) for i in range(len(observations))]
    per_tuple = pa.array([None if t is None else resolver.find(t) for t in targets], pa.string())
    aliases, entries = _write(db, resolver, stored, collect=cache is not None)
    if touched:
        # Coarsened seen-times of cache hits; min/max keep any later stored value.
        low, high = ("min", "max") if db.sqlite else ("LEAST", "GREATEST")
        db.many(
            f"UPDATE identifiers SET first_seen = {low}(first_seen, ?), "
            f"last_seen = {high}(last_seen, ?) WHERE kind = ? AND value = ?",
            [
                (db.time(seen.first_seen), db.time(seen.last_seen), kind, value)
                for (kind, value), seen in touched.items()
            ],
        )
    if resolver.merges:
        db.conn.exec_driver_sql(_GENERATION_BUMP)
        generation += 1  # under the resolution lock: nobody else moved it meanwhile
    else:
        entries = {**touched, **entries}
    conflicts = {
        (resolver.find(c.one_id), resolver.find(c.other_one_id), c.kind, c.value, c.rule)
        for c in resolver.conflicts
    }
    return Resolution(
        one_ids=per_tuple.take(tuples.codes),
        aliases=aliases,
        merges=len(resolver.merges),
        conflicts=len(conflicts),
        cache_entries=entries if cache is not None else {},
        generation=generation,
    )


def _cached_owner(cache: IdentityCache, obs: Observation, touched: dict[Ident, Seen]) -> str | None:
    """The cached ONE_ID of a tuple that resolution would not change, else None.

    Records in ``touched`` the identifiers whose stored times this tuple moves
    earlier, or later by at least ``LAST_SEEN_STEP``.
    """
    if obs.previous_id is not None or not obs.identifiers:
        return None
    found: list[tuple[Ident, Seen]] = []
    owner: str | None = None
    for ident in obs.identifiers:
        seen = touched.get(ident) or cache.get(ident)
        if seen is None or (owner is not None and seen.one_id != owner):
            return None
        owner = seen.one_id
        found.append((ident, seen))
    for ident, seen in found:
        if obs.first_at < seen.first_seen or obs.last_at - seen.last_seen >= LAST_SEEN_STEP:
            touched[ident] = Seen(
                seen.one_id, min(seen.first_seen, obs.first_at), max(seen.last_seen, obs.last_at)
            )
    return owner


def _write(
    db: BulkSql, resolver: Resolver, stored: dict[Ident, _Stored], collect: bool
) -> tuple[list[tuple[str, str]], dict[Ident, Seen]]:
    """Persist the resolver's changes; returns the closed alias pairs and, when
    ``collect``, what the store now holds for every identifier the resolver saw
    (for the cache)."""
    merged_at = {m.loser: m.merged_at for m in resolver.merges}
    aliases: dict[str, str] = {}

    new_rows: list[tuple[Any, ...]] = []
    minted = resolver.new_one_ids
    for one_id, created_at in zip(minted, db.times(list(minted.values())), strict=True):
        now_in = resolver.find(one_id)
        if now_in == one_id:
            new_rows.append((one_id, created_at, None, None))
        else:
            new_rows.append((one_id, created_at, now_in, db.time(merged_at[one_id])))
            aliases[one_id] = now_in
    db.insert("one_ids", ("one_id", "created_at", "merged_into", "merged_at"), new_rows)

    old_losers = {o: resolver.find(o) for o in resolver.merged_away if resolver.is_loaded(o)}
    if old_losers:
        # Earlier losers of a ONE_ID that lost now point at the new owner.
        for chunk in _chunks(sorted(old_losers), LIST_CHUNK):
            test, param = db.in_values(chunk)
            for one_id, merged_into in db.fetch(
                f"SELECT one_id, merged_into FROM one_ids WHERE merged_into {test}", (param,)
            ):
                aliases[one_id] = old_losers[merged_into]
        pairs = [(w, lo) for lo, w in old_losers.items()]
        db.many("UPDATE one_ids SET merged_into = ? WHERE merged_into = ?", pairs)
        db.many(
            "UPDATE one_ids SET merged_into = ?, merged_at = ? WHERE one_id = ?",
            [(w, db.time(merged_at[lo]), lo) for lo, w in old_losers.items()],
        )
        db.many("UPDATE identifiers SET one_id = ? WHERE one_id = ?", pairs)
        aliases.update(old_losers)

    inserts: list[tuple[Any, ...]] = []
    updates: list[tuple[Any, ...]] = []
    entries: dict[Ident, Seen] = {}
    seen = list(resolver.seen.items())
    firsts = db.times([span[0] for _, span in seen])
    lasts = db.times([span[1] for _, span in seen])
    for (ident, (first, last)), first_db, last_db in zip(seen, firsts, lasts, strict=True):
        owner = resolver.owner(ident)
        assert owner is not None
        before = stored.get(ident)
        # Compared in the driver's form (SQLite's fixed-width text sorts like time).
        if before is None:
            inserts.append((ident[0], ident[1], owner, first_db, last_db))
            if collect:
                entries[ident] = Seen(owner, first, last)
            continue
        moved = old_losers.get(before.owner, before.owner)
        first_db = min(first_db, before.first_seen)
        last_db = max(last_db, before.last_seen)
        if collect:
            entries[ident] = Seen(
                owner,
                min(first, db.read_time(before.first_seen)),
                max(last, db.read_time(before.last_seen)),
            )
        if owner != moved or first_db != before.first_seen or last_db != before.last_seen:
            updates.append((owner, first_db, last_db, ident[0], ident[1]))
    db.insert("identifiers", ("kind", "value", "one_id", "first_seen", "last_seen"), inserts)
    db.update_identifiers(updates)
    db.insert(
        "identity_merges",
        ("winner", "loser", "kind", "value", "reason", "message_id", "merged_at"),
        [
            (m.winner, m.loser, m.kind, m.value, m.reason, m.message_id, db.time(m.merged_at))
            for m in resolver.merges
        ],
    )
    _record_conflicts(db, resolver)
    return sorted(aliases.items()), entries


def _record_conflicts(db: BulkSql, resolver: Resolver) -> None:
    """One row per (ONE_ID, other ONE_ID, identifier, rule): repeats are not recorded again."""
    rows: dict[tuple[str, str, str, str, str], tuple[Any, ...]] = {}
    for c in resolver.conflicts:
        key = (resolver.find(c.one_id), resolver.find(c.other_one_id), c.kind, c.value, c.rule)
        rows.setdefault(key, (*key, c.message_id, db.time(c.seen_at)))
    if not rows:
        return
    existing: set[tuple[Any, ...]] = set()
    for chunk in _chunks(sorted({k[0] for k in rows}), LIST_CHUNK):
        test, param = db.in_values(chunk)
        existing.update(
            db.fetch(
                "SELECT one_id, other_one_id, kind, value, rule FROM identity_conflicts "
                f"WHERE one_id {test}",
                (param,),
            )
        )
    db.insert(
        "identity_conflicts",
        ("one_id", "other_one_id", "kind", "value", "rule", "message_id", "seen_at"),
        [row for key, row in rows.items() if key not in existing],
    )


# --- reading ---------------------------------------------------------------------------


def current(conn: Connection, one_id: str) -> str:
    """The live ONE_ID that ``one_id`` is or was merged into; NotFound if never minted."""
    seen: set[str] = set()
    while True:
        row = conn.execute(
            sa.select(one_ids.c.merged_into).where(one_ids.c.one_id == one_id)
        ).first()
        if row is None:
            raise NotFound(f"no ONE_ID {one_id}", field="one_id", value=one_id)
        if row.merged_into is None or row.merged_into in seen:
            return one_id
        seen.add(one_id)
        one_id = row.merged_into


def lookup(conn: Connection, ref: str, default_region: str = "CN") -> str:
    """Current ONE_ID of ``ref``: a ONE_ID or ``kind:value`` (``phone:13800000000``).

    Values are normalised as at ingest (phones to E.164 read in
    ``default_region``). Raises NotFound naming the identifier, or
    ValidationFailed for a malformed reference.
    """
    ref = ref.strip()
    if ":" not in ref:
        return current(conn, ref)
    try:
        kind, value = parse_ref(ref, default_region)
    except InvalidIdentifier as exc:
        raise ValidationFailed(f"cannot read {ref!r}: {exc.reason}", field="ref") from exc
    row = conn.execute(
        sa.select(identifiers.c.one_id).where(
            identifiers.c.kind == kind, identifiers.c.value == value
        )
    ).first()
    if row is None:
        raise NotFound(f"no person with {kind} {value}", field="ref", kind=kind)
    return current(conn, row.one_id)


def members(conn: Connection, one_id: str) -> list[str]:
    """The current owner of ``one_id`` first, then every ONE_ID merged into it (sorted)."""
    owner = current(conn, one_id)
    merged = conn.execute(
        sa.select(one_ids.c.one_id).where(one_ids.c.merged_into == owner).order_by(one_ids.c.one_id)
    ).scalars()
    return [owner, *merged]


@dataclass(frozen=True)
class IdentifierRow:
    kind: str
    value: str
    first_seen: datetime
    last_seen: datetime


def identifiers_of(conn: Connection, one_id: str) -> list[IdentifierRow]:
    """Identifiers owned by the live ``one_id``, strongest kind first."""
    rows = conn.execute(
        sa.select(
            identifiers.c.kind,
            identifiers.c.value,
            identifiers.c.first_seen,
            identifiers.c.last_seen,
        ).where(identifiers.c.one_id == one_id)
    )
    found = [IdentifierRow(r.kind, r.value, r.first_seen, r.last_seen) for r in rows]
    return sorted(found, key=lambda r: precedence((r.kind, r.value)))


@dataclass(frozen=True)
class MergeRow:
    winner: str
    loser: str
    kind: str
    value: str
    reason: str
    message_id: str | None
    merged_at: datetime


@dataclass(frozen=True)
class ConflictRow:
    one_id: str
    other_one_id: str
    kind: str
    value: str
    rule: str
    message_id: str | None
    seen_at: datetime


def merges_of(conn: Connection, ids: Sequence[str]) -> list[MergeRow]:
    """Merges where any of ``ids`` won or lost, oldest first."""
    rows = conn.execute(
        sa.select(merges_table)
        .where(sa.or_(merges_table.c.winner.in_(ids), merges_table.c.loser.in_(ids)))
        .order_by(merges_table.c.merged_at, merges_table.c.merge_id)
    )
    return [
        MergeRow(r.winner, r.loser, r.kind, r.value, r.reason, r.message_id, r.merged_at)
        for r in rows
    ]


def conflicts_of(conn: Connection, ids: Sequence[str]) -> list[ConflictRow]:
    """Conflicts on either side of which any of ``ids`` stands, oldest first."""
    t = identity_conflicts
    rows = conn.execute(
        sa.select(t)
        .where(sa.or_(t.c.one_id.in_(ids), t.c.other_one_id.in_(ids)))
        .order_by(t.c.seen_at, t.c.conflict_id)
    )
    return [
        ConflictRow(r.one_id, r.other_one_id, r.kind, r.value, r.rule, r.message_id, r.seen_at)
        for r in rows
    ]
