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
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from operator import itemgetter
from typing import Any, Final

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import sqlalchemy as sa
from sqlalchemy import Connection

from zhiying.errors import NotFound, ValidationFailed
from zhiying.identity import setwise
from zhiying.identity.batch import (
    TupleColumns,
    _codes,
    _pair,
    collapse,
    observations,
    row_identifiers,
    tuple_columns,
)
from zhiying.identity.bulk import BulkSql
from zhiying.identity.cache import LAST_SEEN_STEP_US, IdentityCache, Seen
from zhiying.identity.cache import ident as cache_ident
from zhiying.identity.identifiers import (
    ANONYMOUS_ID,
    USER_ID,
    InvalidIdentifier,
    parse_ref,
)
from zhiying.identity.resolver import (
    _CUSTOM_RANK,
    LIMITED_KINDS,
    PRECEDENCE,
    UNORDERED,
    Ident,
    KnownOneId,
    Resolver,
    merge_reason,
    precedence,
)
from zhiying.store.tables import identifiers, identity_conflicts, one_ids
from zhiying.store.tables import merges as merges_table

LIST_CHUNK: Final = 50_000
"""Values per list parameter (one array / JSON text each): bounds statement size."""

SET_BASED_ROWS: Final = 20_000
"""Batches from this many rows are resolved set-based (``identity.setwise``)."""

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
    residual: int | None = None
    """Set-based batches: distinct tuples that went through the rules one by one."""
    minted: frozenset[str] = frozenset()
    """Set-based batches: the ONE_IDs minted in this transaction (nobody else can have
    seen them yet, so they have no person key: ``PersonKeys.assign`` need not look)."""
    coded: tuple[np.ndarray, list[str | None]] | None = None
    """Set-based batches: ``one_ids`` as ``(codes, names)``, row ``i`` being
    ``names[codes[i]]`` (none for a negative code): person keys from integers."""


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


_MINT_ORDERS: Final = (
    "INSERT INTO identity_generation (id, generation, minted) VALUES (1, 0, ?) "
    "ON CONFLICT (id) DO UPDATE SET minted = identity_generation.minted + excluded.minted "
    "RETURNING minted"
)

_ONE_ID_COLUMNS: Final = ("one_id", "created_at", "merged_into", "merged_at", "mint_order")


def _reserve_mint_orders(db: BulkSql, count: int) -> int:
    """The first of ``count`` consecutive mint orders for the ONE_IDs a batch mints.

    The store counts the ONE_IDs minted (``identity_generation.minted``) and the
    counter moves under the resolution lock, inside the batch's transaction, so
    orders follow the order batches are resolved in and a rolled-back batch
    leaves no gap. Rule 4 of docs/identity.md: between two ONE_IDs first seen at
    the same instant, the lower mint order wins a merge.
    """
    if count == 0:
        return 0
    total = int(db.fetch(_MINT_ORDERS, (count,))[0][0])
    return total - count + 1


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
    orders: dict[str, int] = {}
    redirect: dict[str, str] = {}

    def read_one_ids(ids: list[str]) -> None:
        for chunk in _chunks(ids, LIST_CHUNK):
            test, param = db.in_values(chunk)
            for one_id, created_at, merged_into, order in db.fetch(
                "SELECT one_id, created_at, merged_into, mint_order FROM one_ids "
                f"WHERE one_id {test}",
                (param,),
            ):
                created[one_id] = db.read_time(created_at)
                orders[one_id] = UNORDERED if order is None else int(order)
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
    known = {
        o: KnownOneId(created_at=created[o], limited=limited.get(o, {}), order=orders[o])
        for o in live
    }
    return stored, known


def resolve_events(
    conn: Connection,
    events: pa.Table,
    now: datetime,
    cache: IdentityCache | None = None,
    *,
    set_based: bool | None = None,
    resolved: pa.Array | None = None,
) -> Resolution:
    """Assign a ONE_ID to every row of ``events`` (warehouse EVENTS columns).

    Runs inside the caller's transaction and never commits. ``now`` (aware
    UTC) caps event times from clocks that run ahead. Rules: see
    ``zhiying.identity.resolver`` and docs/identity.md.

    With a ``cache``, rows whose identifiers are all cached to one ONE_ID
    (and that are not alias calls with a ``previousId``) are answered with
    array operations, skipping the store and the rules apart from a
    coarsened ``first_seen``/``last_seen`` update (``_cache_hits``); only the
    other rows go through the rules. The caller applies
    ``Resolution.cache_entries`` after committing (``zhiying.identity.cache``).
    Every merge increments the store's merge generation in this transaction.

    Batches of at least ``SET_BASED_ROWS`` rows (or any batch with
    ``set_based=True``) are resolved set-based (``identity.setwise``): the same
    ONE_IDs, merges and conflicts, with only the tuples that need the rules one
    by one going through the ``Resolver``. That path neither reads nor fills
    the cache (a bulk import would only churn it); its merges still move the
    generation, so the cache stays valid.

    ``resolved`` (aligned with ``events``) holds ONE_IDs the caller already
    resolved in an earlier, committed transaction of its own (a bulk import
    resolves a whole file at once: ``zhiying.ingest.bulk``). Those rows are
    taken as they are: no store read, no rule, no write; rows where it is null
    are resolved here as usual.
    """
    if events.num_rows == 0:
        return Resolution(pa.array([], pa.string()), [], 0, 0)
    db = BulkSql(conn)
    _serialise(conn)
    generation = _generation(db)
    if resolved is not None:
        return _with_resolved(conn, events, now, cache, resolved, generation)
    if set_based is None:
        set_based = events.num_rows >= SET_BASED_ROWS
    if set_based:
        if cache is not None:
            cache.sync(generation)
        with _big_page_cache(db):
            return _resolve_set_based(db, events, now, generation)
    if cache is None:
        rules = _resolve_rules(db, events, now, collect=False)
        if rules.resolver.merges:
            db.conn.exec_driver_sql(_GENERATION_BUMP)
            generation += 1
        return Resolution(
            one_ids=rules.one_ids,
            aliases=rules.aliases,
            merges=len(rules.resolver.merges),
            conflicts=_count_conflicts(rules.resolver),
            generation=generation,
        )

    return _resolve_with_cache(db, events, now, cache, generation)


def _with_resolved(
    conn: Connection,
    events: pa.Table,
    now: datetime,
    cache: IdentityCache | None,
    resolved: pa.Array,
    generation: int,
) -> Resolution:
    """``resolve_events`` for rows that mostly come with their ONE_ID."""
    if isinstance(resolved, pa.ChunkedArray):
        resolved = resolved.combine_chunks()
    if len(resolved) != events.num_rows:
        raise ValueError(f"{len(resolved)} resolved ONE_IDs for {events.num_rows} rows")
    resolved = resolved.cast(pa.string())
    if resolved.null_count == 0:
        if cache is not None:
            cache.sync(generation)
        return Resolution(resolved, [], 0, 0, generation=generation)
    missing = resolved.is_null().to_numpy(zero_copy_only=False)
    rest = resolve_events(conn, events.filter(pa.array(missing)), now, cache)
    taken = resolved.filter(pa.array(~missing))
    rest.one_ids = _interleave(~missing, taken, rest.one_ids)
    return rest


def _resolve_with_cache(
    db: BulkSql, events: pa.Table, now: datetime, cache: IdentityCache, generation: int
) -> Resolution:
    """``resolve_events`` with a cache: hits from the cache, the other rows by the rules."""
    cache.sync(generation)
    hits = _cache_hits(cache, events, now)
    missed = ~hits.rows
    resolver: Resolver | None = None
    aliases: list[tuple[str, str]] = []
    entries: dict[Ident, Seen] = {}
    miss_ids = pa.array([], pa.string())
    if missed.any():
        misses = events if not hits.rows.any() else events.filter(pa.array(missed))
        rules = _resolve_rules(db, misses, now, collect=True)
        resolver, aliases, entries, miss_ids = (
            rules.resolver,
            rules.aliases,
            rules.entries,
            rules.one_ids,
        )
    owners = hits.owners
    if resolver is not None and resolver.merges:
        # A hit's ONE_ID may have lost a merge made by a row that went through the rules.
        owners = pa.array([resolver.find(o) for o in owners.to_pylist()], pa.string())
    hit_ids = owners.take(pa.array(hits.codes))
    if hits.touched:
        # Coarsened seen-times of cache hits; min/max keep any later stored value.
        low, high = ("min", "max") if db.sqlite else ("LEAST", "GREATEST")
        moved = list(hits.touched.items())
        firsts = db.times_of_micros(np.array([seen.first_us for _, seen in moved], np.int64))
        lasts = db.times_of_micros(np.array([seen.last_us for _, seen in moved], np.int64))
        db.many(
            f"UPDATE identifiers SET first_seen = {low}(first_seen, ?), "
            f"last_seen = {high}(last_seen, ?) WHERE kind = ? AND value = ?",
            [
                (first, last, kind, value)
                for ((kind, value), _), first, last in zip(moved, firsts, lasts, strict=True)
            ],
        )
    merges = len(resolver.merges) if resolver is not None else 0
    touched = hits.touched
    if resolver is not None and merges:
        db.conn.exec_driver_sql(_GENERATION_BUMP)
        # Under the resolution lock nobody else moved the generation meanwhile, so
        # the cache may re-point this batch's losers instead of starting empty.
        cache.expect_merges(generation, {o: resolver.find(o) for o in resolver.merged_away})
        generation += 1
        find = resolver.find
        touched = {k: Seen(find(s.one_id), s.first_us, s.last_us) for k, s in touched.items()}
    entries = {**touched, **entries}
    return Resolution(
        one_ids=_interleave(hits.rows, hit_ids, miss_ids),
        aliases=aliases,
        merges=merges,
        conflicts=0 if resolver is None else _count_conflicts(resolver),
        cache_entries=entries,
        generation=generation,
    )


@dataclass
class _Rules:
    """The per-tuple rule path's outcome for some rows (``one_ids`` aligned with them)."""

    one_ids: pa.Array
    resolver: Resolver
    aliases: list[tuple[str, str]]
    entries: dict[Ident, Seen]


def _resolve_rules(db: BulkSql, events: pa.Table, now: datetime, collect: bool) -> _Rules:
    """Every distinct tuple of ``events`` through the ``Resolver``, in time order, on the
    stored state of its identifiers; the changes are written. ``collect``: also return
    the cache entries of every identifier the resolver saw."""
    tuples = collapse(events, now)
    wanted: set[Ident] = set()
    for obs in tuples.observations:
        wanted.update(obs.identifiers)
        if obs.previous_id is not None:
            wanted.add((USER_ID, obs.previous_id))
            wanted.add((ANONYMOUS_ID, obs.previous_id))
    stored, known = _load(db, wanted) if wanted else ({}, {})

    resolver = Resolver(new_id=_Minter())
    resolver.load({ident: s.owner for ident, s in stored.items()}, known)
    targets = [resolver.observe(obs) for obs in tuples.observations]
    per_tuple = pa.array([None if t is None else resolver.find(t) for t in targets], pa.string())
    aliases, entries = _write(db, resolver, stored, collect)
    return _Rules(per_tuple.take(tuples.codes), resolver, aliases, entries)


def _count_conflicts(resolver: Resolver) -> int:
    """Distinct conflicts met (as recorded: per pair of current ONE_IDs, identifier, rule)."""
    return len(
        {
            (resolver.find(c.one_id), resolver.find(c.other_one_id), c.kind, c.value, c.rule)
            for c in resolver.conflicts
        }
    )


@dataclass
class _Hits:
    """Rows answered by the cache.

    ``rows`` marks them; ``codes`` (one per marked row, in row order) index
    ``owners``, the distinct cached ONE_IDs; ``touched`` are the identifiers
    whose stored seen-times these rows move (earlier, or a step later).
    """

    rows: np.ndarray
    owners: pa.Array
    codes: np.ndarray
    touched: dict[Ident, Seen]


def _cache_hits(cache: IdentityCache, events: pa.Table, now: datetime) -> _Hits:
    """The rows whose resolution the cache already knows, found with array operations.

    A row is a hit when it is not an alias call with a ``previousId``, has at
    least one identifier, and every identifier is cached with one and the same
    ONE_ID: the ``Resolver`` would return that ONE_ID and change nothing but
    seen-times (its fast path), so the row needs neither the store nor the
    rules. Rows repeating a tuple are simply looked up again: on the HTTP path
    nearly every row is a distinct tuple, so collapsing first would cost more.
    """
    ids = row_identifiers(events, now)
    found = cache.lookup(ids.keys)
    n = events.num_rows
    low = np.full(n, np.iinfo(np.int64).max, dtype=np.int64)
    high = np.full(n, -1, dtype=np.int64)
    np.minimum.at(low, ids.rows, found.owner)
    np.maximum.at(high, ids.rows, found.owner)
    hit = (low == high) & (low >= 0) & ~ids.linking

    # Seen-times: an identifier is touched when a hit row is earlier than its
    # first_seen or at least a step later than its last_seen; it then takes
    # the earliest and latest of those rows (the contract: last_seen lags by
    # less than a step).
    at = ids.at[ids.rows]
    moved = np.flatnonzero(
        hit[ids.rows] & ((at < found.first_us) | (at - found.last_us >= LAST_SEEN_STEP_US))
    )
    touched: dict[Ident, Seen] = {}
    if len(moved):
        # One entry per distinct identifier: rows grouped with Arrow and NumPy, so only
        # distinct identifiers reach Python (a day of a busy person moves many rows).
        encoded = pa.array(ids.keys, pa.string()).take(pa.array(moved)).dictionary_encode()
        group = encoded.indices.to_numpy(zero_copy_only=False)
        size = len(encoded.dictionary)
        first = np.full(size, np.iinfo(np.int64).max, dtype=np.int64)
        last = np.full(size, np.iinfo(np.int64).min, dtype=np.int64)
        np.minimum.at(first, group, np.minimum(at[moved], found.first_us[moved]))
        np.maximum.at(last, group, np.maximum(at[moved], found.last_us[moved]))
        owner = np.empty(size, dtype=np.int64)
        owner[group] = found.owner[moved]
        for text, one_id, f, last_us in zip(
            encoded.dictionary.to_pylist(),
            cache.names(owner),
            first.tolist(),
            last.tolist(),
            strict=True,
        ):
            touched[cache_ident(text)] = Seen(one_id, f, last_us)
    codes, rows_code = np.unique(low[hit], return_inverse=True)
    owners = pa.array(cache.names(codes), pa.string())
    return _Hits(hit, owners, rows_code.astype(np.int64), touched)


def _interleave(chosen: np.ndarray, picked: pa.Array, others: pa.Array) -> pa.Array:
    """One array in row order: ``picked`` at the rows ``chosen`` marks, ``others`` elsewhere."""
    if len(others) == 0:
        return picked
    if len(picked) == 0:
        return others
    position = np.empty(len(chosen), dtype=np.int64)
    position[chosen] = np.arange(len(picked))
    position[~chosen] = len(picked) + np.arange(len(others))
    return pa.concat_arrays([picked, others]).take(pa.array(position))


def _resolver_one_id_rows(
    db: BulkSql,
    resolver: Resolver,
    merged_at: dict[str, datetime],
    aliases: dict[str, str],
    orders: Sequence[int],
) -> list[tuple[Any, ...]]:
    """``one_ids`` rows (``_ONE_ID_COLUMNS``) of the ONE_IDs the resolver minted, with
    ``orders`` (aligned with ``resolver.new_one_ids``, i.e. in the order minted); those
    already merged away point at their owner and are added to ``aliases``."""
    rows: list[tuple[Any, ...]] = []
    minted = resolver.new_one_ids
    for one_id, created_at, order in zip(
        minted, db.times(list(minted.values())), orders, strict=True
    ):
        now_in = resolver.find(one_id)
        if now_in == one_id:
            rows.append((one_id, created_at, None, None, order))
        else:
            rows.append((one_id, created_at, now_in, db.time(merged_at[one_id]), order))
            aliases[one_id] = now_in
    return rows


def _repoint_stored_losers(
    db: BulkSql, resolver: Resolver, merged_at: dict[str, datetime], aliases: dict[str, str]
) -> dict[str, str]:
    """Stored ONE_IDs that lost a merge now point at the winner, and so do the
    ONE_IDs that had earlier merged into them; all of them are added to ``aliases``.
    Returns the stored losers with their winners."""
    old_losers = {o: resolver.find(o) for o in resolver.merged_away if resolver.is_loaded(o)}
    if not old_losers:
        return old_losers
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
    return old_losers


def _write(
    db: BulkSql, resolver: Resolver, stored: dict[Ident, _Stored], collect: bool
) -> tuple[list[tuple[str, str]], dict[Ident, Seen]]:
    """Persist the resolver's changes; returns the closed alias pairs and, when
    ``collect``, what the store now holds for every identifier the resolver saw
    (for the cache)."""
    merged_at = {m.loser: m.merged_at for m in resolver.merges}
    aliases: dict[str, str] = {}

    first_order = _reserve_mint_orders(db, resolver.minted_count)
    orders = range(first_order, first_order + resolver.minted_count)
    new_rows = _resolver_one_id_rows(db, resolver, merged_at, aliases, orders)
    db.insert("one_ids", _ONE_ID_COLUMNS, new_rows)
    old_losers = _repoint_stored_losers(db, resolver, merged_at, aliases)

    inserts: list[tuple[Any, ...]] = []
    updates: list[tuple[Any, ...]] = []
    seen = list(resolver.seen.items())
    owners: list[str] = []
    first_us = last_us = np.zeros(0, dtype=np.int64)
    if db.sqlite or collect:
        first_us = _micros_of([span[0] for _, span in seen])
        last_us = _micros_of([span[1] for _, span in seen])
    if db.sqlite:  # the stored text straight from the microseconds: one conversion
        firsts, lasts = db.times_of_micros(first_us), db.times_of_micros(last_us)
    else:
        firsts = db.times([span[0] for _, span in seen])
        lasts = db.times([span[1] for _, span in seen])
    for (ident, _), first_db, last_db in zip(seen, firsts, lasts, strict=True):
        owner = resolver.owner(ident)
        assert owner is not None
        owners.append(owner)
        before = stored.get(ident)
        # Compared in the driver's form (SQLite's fixed-width text sorts like time).
        if before is None:
            inserts.append((ident[0], ident[1], owner, first_db, last_db))
            continue
        moved = old_losers.get(before.owner, before.owner)
        first_db = min(first_db, before.first_seen)
        last_db = max(last_db, before.last_seen)
        if owner != moved or first_db != before.first_seen or last_db != before.last_seen:
            updates.append((owner, first_db, last_db, ident[0], ident[1]))
    entries = _cache_entries(db, seen, owners, stored, first_us, last_us) if collect else {}
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


def _cache_entries(
    db: BulkSql,
    seen: list[tuple[Ident, tuple[datetime, datetime]]],
    owners: list[str],
    stored: dict[Ident, _Stored],
    first: np.ndarray,
    last: np.ndarray,
) -> dict[Ident, Seen]:
    """What the store holds, once written, for each identifier the resolver saw:
    its owner and its seen-times (``first``/``last``, aligned with ``seen``)
    widened by the stored ones, in bulk."""
    known = [i for i, (ident, _) in enumerate(seen) if ident in stored]
    if known:
        at = np.array(known, dtype=np.int64)
        before = [stored[seen[i][0]] for i in known]
        first[at] = np.minimum(first[at], db.micros([b.first_seen for b in before]))
        last[at] = np.maximum(last[at], db.micros([b.last_seen for b in before]))
    return {
        ident: Seen(owner, f, la)
        for (ident, _), owner, f, la in zip(
            seen, owners, first.tolist(), last.tolist(), strict=True
        )
    }


def _micros_of(values: list[datetime]) -> np.ndarray:
    """Aware datetimes as naive-UTC microseconds (one Arrow conversion)."""
    stamps = pa.array(values, pa.timestamp("us", tz="UTC")).cast(pa.int64())
    micros: np.ndarray = stamps.to_numpy(zero_copy_only=False).copy()
    return micros


_CONFLICT_COLUMNS: Final = (
    "one_id",
    "other_one_id",
    "kind",
    "value",
    "rule",
    "message_id",
    "seen_at",
)
_CONFLICT_TYPES: Final = ("text", "text", "text", "text", "text", "text", "timestamptz")


def _record_conflicts(db: BulkSql, resolver: Resolver) -> None:
    """One row per (ONE_ID, other ONE_ID, identifier, rule): repeats are not recorded again."""
    rows: dict[tuple[str, str, str, str, str], tuple[Any, ...]] = {}
    for c in resolver.conflicts:
        key = (resolver.find(c.one_id), resolver.find(c.other_one_id), c.kind, c.value, c.rule)
        rows.setdefault(key, (*key, c.message_id, db.time(c.seen_at)))
    # The unique index uq_identity_conflicts_pair keeps the first recording.
    db.insert_new("identity_conflicts", _CONFLICT_COLUMNS, list(rows.values()), _CONFLICT_TYPES)


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


# --- set-based resolution of large batches ----------------------------------------------


_PAGE_CACHE_KIB: Final = 262_144


@contextmanager
def _big_page_cache(db: BulkSql) -> Iterator[None]:
    """SQLite: a 256 MiB page cache for this batch (the default is 2 MiB).

    Hundreds of thousands of inserts into the identifier and ONE_ID indexes
    touch pages all over them; with the default cache most of those are
    re-read from the file, which made the inserts several times slower.
    """
    if not db.sqlite:
        yield
        return
    before = db.fetch("PRAGMA cache_size", ())[0][0]
    db.conn.exec_driver_sql(f"PRAGMA cache_size = -{_PAGE_CACHE_KIB}")
    try:
        yield
    finally:
        db.conn.exec_driver_sql(f"PRAGMA cache_size = {int(before)}")


_BASE32: Final = np.frombuffer(b"abcdefghijklmnopqrstuvwxyz234567", dtype=np.uint8)


def _mint_many(count: int) -> list[str]:
    """``count`` fresh ONE_IDs (``new_one_id`` form: ``u_`` + 20 lower-case base32
    characters, 100 random bits) from one random draw: each random byte's low five
    bits pick a character (256 is a multiple of 32, so every character is equally
    likely), without Python's per-byte base32 encoder. Returned in text order (sorted
    by Arrow here, rows keyed by them need no sort of Python tuples later); nothing
    depends on that order but the cost of writing them in key order."""
    if count == 0:
        return []
    text = np.empty((count, 22), dtype=np.uint8)
    text[:, 0], text[:, 1] = ord("u"), ord("_")
    random = np.frombuffer(secrets.token_bytes(20 * count), dtype=np.uint8)
    text[:, 2:] = _BASE32[random.reshape(count, 20) & 31]
    offsets = np.arange(0, 22 * (count + 1), 22, dtype=np.int32)
    strings = pa.Array.from_buffers(
        pa.string(), count, [None, pa.py_buffer(offsets), pa.py_buffer(text)]
    )
    ids: list[str] = strings.take(pc.sort_indices(strings)).to_pylist()
    return ids


@dataclass
class _Known:
    """Stored facts about a batch's identifiers, aligned with the identifier numbers."""

    owner: np.ndarray  # index into ``one_ids`` or -1
    raw_owner: list[str | None]  # as stored (before following merged_into)
    first: np.ndarray  # µs, stored first_seen (unknown: 0)
    last: np.ndarray
    one_ids: list[str]  # live stored owners
    created: list[Any]  # their created_at, driver form
    orders: list[int]  # their mint_order (``UNORDERED`` when stored without one)
    limited: dict[str, dict[str, str]]


def _known(db: BulkSql, kinds: pa.Array, values: pa.Array) -> _Known:
    """Look up every identifier (one list query per kind), then their owners."""
    n = len(kinds)
    found: list[tuple[str, str, str, Any, Any]] = []
    for kind in pc.unique(kinds).to_pylist():
        if not db.fetch("SELECT 1 FROM identifiers WHERE kind = ? LIMIT 1", (kind,)):
            continue  # e.g. a first import: probing 700k values would cost ≈ 0.5 s
        wanted = values.filter(pc.equal(kinds, kind)).to_pylist()
        for chunk in _chunks(wanted, LIST_CHUNK):
            test, param = db.in_values(chunk)
            found.extend(
                (kind, *row)
                for row in db.fetch(
                    "SELECT value, one_id, first_seen, last_seen FROM identifiers "
                    f"WHERE kind = ? AND value {test}",
                    (kind, param),
                )
            )
    raw_owner: list[str | None] = [None] * n
    first = np.zeros(n, dtype=np.int64)
    last = np.zeros(n, dtype=np.int64)
    if found:
        k, v, o, f, la = (list(c) for c in zip(*found, strict=True))
        probe = pa.table({"kind": pa.array(k, pa.string()), "value": pa.array(v, pa.string())})
        probe = probe.append_column("at", pa.array(np.arange(len(k))))
        ident = pa.table({"kind": kinds, "value": values, "ident": pa.array(np.arange(n))})
        joined = probe.join(ident, ["kind", "value"])
        at = joined.column("at").to_numpy()
        to = joined.column("ident").to_numpy()
        first[to] = db.micros(f)[at]
        last[to] = db.micros(la)[at]
        owners_found = np.array(o, dtype=object)[at]
        for i, owner in zip(to.tolist(), owners_found.tolist(), strict=True):
            raw_owner[i] = owner
    distinct = sorted({o for o in raw_owner if o is not None})
    created: dict[str, Any] = {}
    orders: dict[str, int] = {}
    redirect: dict[str, str] = {}

    def read_one_ids(ids: list[str]) -> None:
        for chunk in _chunks(ids, LIST_CHUNK):
            test, param = db.in_values(chunk)
            for one_id, created_at, merged_into, order in db.fetch(
                "SELECT one_id, created_at, merged_into, mint_order FROM one_ids "
                f"WHERE one_id {test}",
                (param,),
            ):
                created[one_id] = created_at
                orders[one_id] = UNORDERED if order is None else int(order)
                if merged_into is not None:
                    redirect[one_id] = merged_into

    read_one_ids(distinct)
    if redirect:
        # Repair a store written before the invariant held: follow to the owner.
        read_one_ids(sorted(set(redirect.values()) - created.keys()))
    live = sorted({redirect.get(o, o) for o in distinct})
    missing = [o for o in live if o not in created]
    if missing:
        raise ValueError(f"identifiers point at unknown ONE_IDs, e.g. {missing[0]}")
    index = {o: i for i, o in enumerate(live)}
    owner = np.array(
        [-1 if o is None else index[redirect.get(o, o)] for o in raw_owner], dtype=np.int64
    )
    limited: dict[str, dict[str, str]] = defaultdict(dict)
    kinds_sql = ", ".join(f"'{k}'" for k in LIMITED_KINDS)
    kind_column = "+kind" if db.sqlite else "kind"  # see ``_load``
    for chunk in _chunks(live, LIST_CHUNK):
        test, param = db.in_values(chunk)
        for one_id, kind, value in db.fetch(
            f"SELECT one_id, kind, value FROM identifiers WHERE one_id {test} "
            f"AND {kind_column} IN ({kinds_sql})",
            (param,),
        ):
            limited[one_id][kind] = value
    return _Known(
        owner,
        raw_owner,
        first,
        last,
        live,
        [created[o] for o in live],
        [orders[o] for o in live],
        limited,
    )


def _precedence_rank(kinds: pa.Array, values: pa.Array) -> np.ndarray:
    """Each identifier's place in ``precedence`` order (0 = strongest), all distinct."""
    distinct = pc.unique(kinds)
    # (precedence rank, kind) as one integer: the kind's place among the distinct
    # kinds orders like the kind itself, and integers compare cheaper than strings.
    place = np.empty(len(distinct), dtype=np.int64)
    place[pc.sort_indices(distinct).to_numpy()] = np.arange(len(distinct))
    ranks = np.array([PRECEDENCE.get(k, _CUSTOM_RANK) for k in distinct.to_pylist()], np.int64)
    group = ranks * max(len(distinct), 1) + place
    kind_at = pc.index_in(kinds, value_set=distinct).to_numpy(zero_copy_only=False)
    indices = pc.sort_indices(
        pa.table({"g": group[kind_at], "v": values}),
        sort_keys=[("g", "ascending"), ("v", "ascending")],
    ).to_numpy()
    rank = np.empty(len(kinds), dtype=np.int64)
    rank[indices] = np.arange(len(kinds))
    return rank


def _resolve_set_based(db: BulkSql, events: pa.Table, now: datetime, generation: int) -> Resolution:
    """``resolve_events`` for a large batch (see ``identity.setwise``)."""
    cols = tuple_columns(events, now)
    n = cols.n
    prev = cols.previous_id
    alias_t = _present_at(prev)
    is_alias = np.zeros(n, dtype=bool)
    is_alias[alias_t] = True
    prev_values = prev.take(pa.array(alias_t)).cast(pa.string())
    n_flat = len(cols.flat_tuple)
    all_kinds = pa.concat_arrays(
        [
            cols.flat_kind,
            pa.array([USER_ID] * len(alias_t), pa.string()),
            pa.array([ANONYMOUS_ID] * len(alias_t), pa.string()),
        ]
    )
    all_values = pa.concat_arrays([cols.flat_value, prev_values, prev_values])
    pair, _ = _pair(*_codes(all_kinds), *_codes(all_values))  # one number per identifier
    encoded = (
        pc.dictionary_encode(pa.array(pair)).indices.to_numpy(zero_copy_only=False).astype(np.int64)
    )
    _, first_row = np.unique(encoded, return_index=True)
    taken = pa.array(first_row)
    kinds, values = all_kinds.take(taken), all_values.take(taken)
    flat_ident = encoded[:n_flat]
    alias_ident = encoded[n_flat:]
    alias_tuple = np.concatenate([alias_t, alias_t])

    known = _known(db, kinds, values)
    limit = np.zeros(len(kinds), dtype=np.int64)
    for code, kind in enumerate(LIMITED_KINDS, start=1):
        limit[pc.equal(kinds, kind).to_numpy(zero_copy_only=False)] = code
    anchored = np.array([USER_ID in known.limited.get(o, {}) for o in known.one_ids], dtype=bool)
    rank = _precedence_rank(kinds, values)
    decided = setwise.plan(
        setwise.Batch(
            n_tuples=n,
            flat_tuple=cols.flat_tuple,
            flat_ident=flat_ident,
            alias_tuple=alias_tuple,
            alias_ident=alias_ident,
            is_alias=is_alias,
            limit=limit,
            is_user=pc.equal(kinds, USER_ID).to_numpy(zero_copy_only=False),
            rank=rank,
            owner=known.owner,
            anchored=anchored,
            first_at=cols.first_at,
        )
    )

    # The residual, one by one, on the stored state of its identifiers.
    residual = decided.residual
    in_residual = np.zeros(n, dtype=bool)
    in_residual[residual] = True
    r_rows = np.concatenate(
        [flat_ident[in_residual[cols.flat_tuple]], alias_ident[in_residual[alias_tuple]]]
    )
    r_idents = np.unique(r_rows)
    resolver = Resolver(new_id=_Minter())
    r_owners: dict[Ident, str] = {}
    r_known: dict[str, KnownOneId] = {}
    r_stored = r_idents[known.owner[r_idents] >= 0]
    for i, kind, value in zip(r_stored.tolist(), *_pylists(r_stored, kinds, values), strict=True):
        o = int(known.owner[i])
        one_id = known.one_ids[o]
        r_owners[(kind, value)] = one_id
        if one_id not in r_known:
            r_known[one_id] = KnownOneId(
                created_at=db.read_time(known.created[o]),
                limited=known.limited.get(one_id, {}),
                order=known.orders[o],
            )
    resolver.load(r_owners, r_known)
    r_targets: list[str | None] = []
    minted_after: list[int] = []  # ONE_IDs the resolver minted up to each residual tuple
    for obs in observations(cols, residual):
        r_targets.append(resolver.observe(obs))
        minted_after.append(resolver.minted_count)
    # The tuple that minted each of the resolver's ONE_IDs (in the order minted).
    r_mint_tuple = residual[
        np.searchsorted(
            np.array(minted_after, dtype=np.int64),
            np.arange(resolver.minted_count),
            side="right",
        )
    ]

    # Every tuple's ONE_ID, current as of the end of the batch: a holder code per tuple
    # (the residual's ONE_IDs appended after the holders), one take per row.
    minted = _mint_many(len(decided.mint_created))
    holders = [resolver.find(o) for o in known.one_ids] + minted
    codes = decided.target.copy()
    r_found = [None if t is None else resolver.find(t) for t in r_targets]
    codes[residual] = len(holders) + np.arange(len(residual))
    codes[residual[[t is None for t in r_found]]] = -1
    code_names: list[str | None] = [*holders, *r_found]
    names = pa.array(code_names, pa.string())
    row_codes = codes[cols.codes.to_numpy(zero_copy_only=False)]

    aliases, n_conflicts = _write_set_based(
        db,
        cols,
        known,
        decided,
        resolver,
        minted,
        r_mint_tuple,
        holders,
        flat_ident,
        alias_ident,
        kinds,
        values,
        rank,
    )
    n_merges = len(resolver.merges) + len(decided.merge_loser)
    if n_merges:
        db.conn.exec_driver_sql(_GENERATION_BUMP)
        generation += 1
    return Resolution(
        one_ids=names.take(pa.array(row_codes, mask=row_codes < 0)),
        aliases=aliases,
        merges=n_merges,
        conflicts=n_conflicts,
        generation=generation,
        residual=len(residual),
        minted=frozenset(minted).union(resolver.new_one_ids),
        coded=(row_codes, code_names),
    )


def _mint_places(static_tuple: np.ndarray, resolver_tuple: np.ndarray, n: int) -> np.ndarray:
    """Each ONE_ID a set-based batch minted (the static ones, then the resolver's), its
    place in the order the resolver would have minted them all: by minting tuple (of
    ``n``, numbered in time order). A static tuple mints one ONE_ID; the residual tuples
    are others, and a residual tuple's ONE_IDs come in the order minted
    (``resolver_tuple`` is non-decreasing). A counting sort: no comparison sort."""
    both = np.concatenate([static_tuple, resolver_tuple])
    counts = np.bincount(both, minlength=n)
    place: np.ndarray = (np.cumsum(counts) - counts)[both]
    if len(resolver_tuple):
        rank_in_tuple = np.arange(len(resolver_tuple)) - np.searchsorted(
            resolver_tuple, resolver_tuple, side="left"
        )
        place[len(static_tuple) :] += rank_in_tuple
    return place


def _present_at(values: pa.Array) -> np.ndarray:
    ok = pc.fill_null(pc.greater(pc.utf8_length(values), 0), False)
    return np.flatnonzero(ok.to_numpy(zero_copy_only=False))


def _write_set_based(
    db: BulkSql,
    cols: TupleColumns,
    known: _Known,
    decided: setwise.Plan,
    resolver: Resolver,
    minted: list[str],
    r_mint_tuple: np.ndarray,
    holders: list[str],
    flat_ident: np.ndarray,
    alias_ident: np.ndarray,
    kinds: pa.Array,
    values: pa.Array,
    rank: np.ndarray,
) -> tuple[list[tuple[str, str]], int]:
    """Persist a set-based batch; returns the closed alias pairs (as ``_write``) and
    the number of distinct conflicts met."""
    merged_at = {m.loser: m.merged_at for m in resolver.merges}
    aliases: dict[str, str] = {}

    # ONE_IDs: the static path's (devices that merged into their user point at it),
    # then the resolver's.
    into: list[str | None] = [None] * len(minted)
    lost_at: list[Any] = [None] * len(minted)
    static_at = db.times_of_micros(cols.first_at[decided.merge_tuple])
    for lo, w, at in zip(
        (decided.merge_loser - decided.n_owners).tolist(),
        decided.merge_winner.tolist(),
        static_at,
        strict=True,
    ):
        into[lo], lost_at[lo] = holders[w], at
        aliases[minted[lo]] = holders[w]
    place = _mint_places(decided.mint_tuple, r_mint_tuple, cols.n)
    orders = _reserve_mint_orders(db, len(place)) + place
    rows: list[tuple[Any, ...]] = list(
        zip(
            minted,
            db.times_of_micros(decided.mint_created),
            into,
            lost_at,
            orders[: len(minted)].tolist(),
            strict=True,
        )
    )
    rows.extend(
        _resolver_one_id_rows(db, resolver, merged_at, aliases, orders[len(minted) :].tolist())
    )
    # In key order: index pages are filled one after the other. ``minted`` comes in
    # text order, so this sort merges the resolver's few rows into one sorted run.
    rows.sort(key=itemgetter(0))
    db.insert("one_ids", _ONE_ID_COLUMNS, rows, rebuild_indexes=True)
    _repoint_stored_losers(db, resolver, merged_at, aliases)

    # Seen times of every identifier: its tuples' first/last, then the resolver's
    # (which adds the identifier an alias's previousId was read as).
    n_idents = len(kinds)
    in_residual = decided.klass == setwise.RESIDUAL
    big = np.iinfo(np.int64).max
    first = np.full(n_idents, big, dtype=np.int64)
    last = np.full(n_idents, np.iinfo(np.int64).min, dtype=np.int64)
    np.minimum.at(first, flat_ident, cols.first_at[cols.flat_tuple])
    np.maximum.at(last, flat_ident, cols.last_at[cols.flat_tuple])
    # Each identifier's owner as a holder code; owners only the resolver knows (new
    # identifiers of residual tuples) are named after the holders.
    owner_code = np.full(n_idents, -1, dtype=np.int64)
    owner_code[decided.assign_ident] = decided.assign_target
    extra: list[str | None] = []
    if resolver.seen:
        # Only residual tuples' identifiers are in the resolver.
        in_r = np.unique(np.concatenate([flat_ident[in_residual[cols.flat_tuple]], alias_ident]))
        at = pa.array(in_r)
        number = dict(
            zip(
                zip(kinds.take(at).to_pylist(), values.take(at).to_pylist(), strict=True),
                in_r.tolist(),
                strict=True,
            )
        )
        epoch = datetime(1970, 1, 1, tzinfo=UTC)
        for ident, (f, la) in resolver.seen.items():
            i = number[ident]
            first[i] = min(first[i], (f - epoch) // _MICRO)
            last[i] = max(last[i], (la - epoch) // _MICRO)
            if known.owner[i] < 0:
                owner_code[i] = len(holders) + len(extra)
                extra.append(resolver.owner(ident))
    seen = first != big
    stored = known.owner >= 0
    owner_code[stored] = known.owner[stored]
    names = pa.array(holders + extra, pa.string())

    def columns(rows: np.ndarray) -> tuple[list[Any], list[Any], list[Any]]:
        at = pa.array(rows)
        owners = names.take(pa.array(owner_code[rows]))
        return owners.to_pylist(), kinds.take(at).to_pylist(), values.take(at).to_pylist()

    in_key_order = _key_rank(kinds, rank)
    new_rows = _key_order(in_key_order, np.flatnonzero(seen & ~stored))
    owners, kind_col, value_col = columns(new_rows)
    f_text = db.times_of_micros(first[new_rows])
    l_text = db.times_of_micros(last[new_rows])
    db.insert(
        "identifiers",
        ("kind", "value", "one_id", "first_seen", "last_seen"),
        list(zip(kind_col, value_col, owners, f_text, l_text, strict=True)),
        rebuild_indexes=True,
    )
    moved_first = np.minimum(first, known.first)
    moved_last = np.maximum(last, known.last)
    changed = seen & stored & ((moved_first != known.first) | (moved_last != known.last))
    owner_changed = np.zeros(n_idents, dtype=bool)
    was = np.flatnonzero(seen & stored)
    if len(was):
        before = pa.array(known.raw_owner, pa.string()).take(pa.array(was))
        now_in = names.take(pa.array(owner_code[was]))
        owner_changed[was] = pc.not_equal(now_in, before).to_numpy(zero_copy_only=False)
    upd = _key_order(in_key_order, np.flatnonzero(changed | owner_changed))
    firsts, lasts = db.times_of_micros(moved_first[upd]), db.times_of_micros(moved_last[upd])
    moves = owner_changed[upd]
    owners, kind_col, value_col = columns(upd)
    db.update_identifiers(
        [
            (o, f, la, k, v)
            for o, f, la, k, v, move in zip(
                owners, firsts, lasts, kind_col, value_col, moves.tolist(), strict=True
            )
            if move
        ]
    )
    db.update_seen(
        [
            (f, la, k, v)
            for f, la, k, v, move in zip(
                firsts, lasts, kind_col, value_col, moves.tolist(), strict=True
            )
            if not move
        ]
    )
    merge_rows = [
        (m.winner, m.loser, m.kind, m.value, m.reason, m.message_id, db.time(m.merged_at))
        for m in resolver.merges
    ]
    if len(decided.merge_tuple):
        merge_rows.extend(
            (holders[w], holders[lo], kind, value, merge_reason(t), m, when)
            for w, lo, kind, value, t, m, when in zip(
                decided.merge_winner.tolist(),
                decided.merge_loser.tolist(),
                *_pylists(decided.merge_ident, kinds, values),
                cols.event_types(decided.merge_tuple).to_pylist(),
                cols.message_ids(decided.merge_tuple).to_pylist(),
                static_at,
                strict=True,
            )
        )
        merge_rows.sort(key=lambda row: row[6])  # in time order, as made (stable)
    db.insert(
        "identity_merges",
        ("winner", "loser", "kind", "value", "reason", "message_id", "merged_at"),
        merge_rows,
        rebuild_indexes=True,
    )

    # Conflicts: the static ones and the resolver's, each key's first occurrence (in
    # time order) kept. Static rows come in tuple order: np.unique keeps the first.
    c_key = np.stack(
        [decided.target[decided.conflict_tuple], decided.conflict_other, decided.conflict_ident]
    )
    _, once = np.unique(c_key, axis=1, return_index=True)
    once.sort()
    c_t = decided.conflict_tuple[once]
    recorded: dict[tuple[str, str, str, str, str], tuple[tuple[int, int], tuple[Any, ...]]] = {}
    for t, at_us, code, o, kind, value, m, at in zip(
        c_t.tolist(),
        cols.first_at[c_t].tolist(),
        decided.target[c_t].tolist(),
        decided.conflict_other[once].tolist(),
        *_pylists(decided.conflict_ident[once], kinds, values),
        cols.message_ids(c_t).to_pylist(),
        db.times_of_micros(cols.first_at[c_t]),
        strict=True,
    ):
        key = (holders[code], holders[o], kind, value, "one_user_id")
        recorded[key] = ((at_us, t), (*key, m, at))
    if resolver.conflicts:
        epoch = datetime(1970, 1, 1, tzinfo=UTC)
        residual = decided.residual
        tuple_of: dict[str, int] = {}
        for t, m in zip(
            reversed(residual.tolist()),
            reversed(cols.message_ids(residual).to_pylist()),
            strict=True,
        ):
            tuple_of[m] = t  # the earliest tuple of a message id wins
        for c in resolver.conflicts:
            key = (resolver.find(c.one_id), resolver.find(c.other_one_id), c.kind, c.value, c.rule)
            order = ((c.seen_at - epoch) // _MICRO, tuple_of.get(c.message_id, -1))
            have = recorded.get(key)
            if have is None or order < have[0]:
                recorded[key] = (order, (*key, c.message_id, db.time(c.seen_at)))
    db.insert_new(
        "identity_conflicts",
        _CONFLICT_COLUMNS,
        sorted(row for _, row in recorded.values()),
        _CONFLICT_TYPES,
    )
    return sorted(aliases.items()), len(recorded)


_MICRO: Final = timedelta(microseconds=1)


def _pylists(rows: np.ndarray, *columns: pa.Array) -> list[list[Any]]:
    """``columns`` at ``rows``, as Python lists (only those rows reach Python)."""
    at = pa.array(rows, pa.int64())
    return [column.take(at).to_pylist() for column in columns]


def _key_rank(kinds: pa.Array, rank: np.ndarray) -> np.ndarray:
    """Each identifier's place in (kind, value) order, from its ``_precedence_rank``:
    within one kind that rank is value order, so only the few kinds need sorting
    (not every value again)."""
    distinct = pc.unique(kinds)
    place = np.empty(len(distinct), dtype=np.int64)
    place[pc.sort_indices(distinct).to_numpy()] = np.arange(len(distinct))
    kind_at = pc.index_in(kinds, value_set=distinct).to_numpy(zero_copy_only=False)
    keyed: np.ndarray = place[kind_at] * max(len(rank), 1) + rank
    return keyed


def _key_order(key_rank: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``rows`` sorted by (kind, value) (``_key_rank``): writes walk the primary key's
    pages in order."""
    ordered: np.ndarray = rows[np.argsort(key_rank[rows])]
    return ordered
