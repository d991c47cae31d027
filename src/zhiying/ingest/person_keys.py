"""Person keys: the integer every warehouse row of a person carries beside its ONE_ID.

Why: analytical reads group and join rows by person. A text ONE_ID costs DuckDB
about 3.5× an integer in ``GROUP BY`` and 0.3 µs a row to decode (measured on
20M events, ``bench/RESULTS.md``, Segments); pandas already groups on integer
codes. So ``store_events`` writes ``person_key`` on ``events`` and
``trait_updates``, ``alias_key``/``person_key`` on ``one_id_aliases``, and one
row per key to the warehouse dictionary ``person_keys``.

How a key is minted: once per ONE_ID, in the operational table ``person_keys``
(unique ONE_ID, unique key), inside the same transaction as the identity
resolution that needed it. The numbers come from a pool this process reserves
*before* that transaction, in a committed transaction of its own
(``key_blocks``), so a number is never handed out twice — not even when the
transaction that used it rolls back. That is what lets the warehouse
dictionary be written before the operational commit (like ``one_id_aliases``):
a row for a key that never got committed names a number nobody else can get.
A key never changes: a merged-away ONE_ID keeps its key, and ``one_id_aliases``
maps it to the owner's.
"""

from __future__ import annotations

import threading
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
from sqlalchemy import Connection, Engine

from zhiying.store.engine import PerEngine
from zhiying.warehouse.base import Warehouse
from zhiying.warehouse.events import replace_aliases
from zhiying.warehouse.schema import ONE_ID_ALIASES, PERSON_KEYS

BLOCK = 1 << 16
"""Keys reserved per ``key_blocks`` transaction (at least). Unused keys of a
process that stops are gaps, which cost nothing."""

_CACHE_LIMIT = 4_000_000
"""ONE_ID → key pairs kept per process before the map starts over (≈ 150 B each)."""

_LOOKUP_CHUNK = 50_000


Coded = tuple[np.ndarray, list[str | None]]
"""ONE_IDs as ``(codes, names)``: row ``i`` is ``names[codes[i]]``, none when
``codes[i] < 0``; several codes may name one ONE_ID."""


def _distinct_of_codes(coded: Coded) -> tuple[list[str], np.ndarray, pa.Array]:
    """``(distinct ONE_IDs in order of first appearance, slot in that list of each
    dictionary entry, dictionary index of each row)`` of coded ONE_IDs: what
    ``dictionary_encode`` of their text gives, hashing integers instead."""
    codes, names = coded
    encoded = pc.dictionary_encode(pa.array(codes, pa.int64(), mask=codes < 0))
    place: dict[str, int] = {}
    slots = []
    for code in encoded.dictionary.to_numpy().tolist():
        name = names[code]
        if name is None:
            raise ValueError(f"code {code} names no ONE_ID")
        slots.append(place.setdefault(name, len(place)))
    return list(place), np.array(slots, dtype=np.int64), encoded.indices


@dataclass(frozen=True)
class Assigned:
    """Keys for one batch: ``keys`` has one int64 (or null) per input ONE_ID;
    ``minted`` holds the dictionary rows (``PERSON_KEYS``) of keys this
    transaction created; ``learned`` is every pair to remember once it commits."""

    keys: pa.Array
    minted: pa.Table
    learned: dict[str, int]


class PersonKeys:
    """This process's ONE_ID → key map for one operational store, and its pool of
    reserved numbers. Thread-safe; one instance per engine (:func:`person_keys`)."""

    def __init__(self) -> None:
        self._known: dict[str, int] = {}
        self._next = 0
        self._end = 0
        self._lock = threading.Lock()

    def reserve(self, engine: Engine, count: int) -> None:
        """Make sure at least ``count`` numbers are in the pool.

        Call outside any open transaction on ``engine``: the reservation commits
        on its own (on SQLite a second writer would wait for the first).
        """
        with self._lock:
            if self._end - self._next >= count:
                return
            size = max(count, BLOCK)
            with engine.begin() as conn:
                end = _reserve(conn, size)
            # A fresh block replaces what is left of the old one (those numbers are gaps).
            self._next, self._end = end - size, end

    def assign(
        self,
        conn: Connection,
        one_ids: pa.Array | pa.ChunkedArray,
        also: list[str] | None = None,
        fresh: AbstractSet[str] = frozenset(),
        coded: Coded | None = None,
    ) -> Assigned:
        """The key of every ONE_ID of ``one_ids`` (nulls stay null), minting missing ones
        in ``conn``'s transaction from the reserved pool. ONE_IDs in ``also`` (merge
        owners) get keys too, found in ``learned``. ONE_IDs in ``fresh`` were created
        in ``conn``'s transaction (``Resolution.minted``): no other transaction can
        have keyed them, so they are not looked up (a bulk import mints 100k+).
        ``coded``: the same ONE_IDs as integer codes into a list of names
        (``Resolution.coded``), which spares hashing every row's text; the keys are the
        same either way (numbers are handed out in order of first appearance).

        Raises ``RuntimeError`` when the pool is smaller than the number of new
        ONE_IDs: callers reserve first (``store_events`` reserves two numbers
        per row: a row mints at most one ONE_ID and names at most one merge owner).
        """
        slot: np.ndarray | None = None
        if coded is None:
            encoded = pc.dictionary_encode(one_ids)
            if isinstance(encoded, pa.ChunkedArray):
                encoded = encoded.combine_chunks()
            distinct: list[str] = encoded.dictionary.to_pylist()
            indices = encoded.indices
        else:
            distinct, slot, indices = _distinct_of_codes(coded)
        wanted = distinct + sorted(set(also or ()).difference(distinct))
        found = self.lookup(conn, [o for o in wanted if o not in fresh] if fresh else wanted)
        missing = [one_id for one_id in wanted if one_id not in found]
        minted_ids: list[str] = []
        minted_keys: list[int] = []
        if missing:
            numbers = self._take(len(missing))
            inserted = _insert(conn, missing, numbers)
            for one_id, key in zip(missing, numbers, strict=True):
                if one_id in inserted:
                    found[one_id] = key
                    minted_ids.append(one_id)
                    minted_keys.append(key)
            late = [one_id for one_id in missing if one_id not in inserted]
            if late:  # minted by a concurrent transaction that committed first
                found.update(_select(conn, late))
        by_position = np.fromiter((found[one_id] for one_id in distinct), np.int64, len(distinct))
        if slot is not None:
            by_position = by_position[slot]
        keys = pa.array(by_position, pa.int64()).take(indices)
        minted = pa.table(
            {
                "person_key": pa.array(minted_keys, pa.int64()),
                "one_id": pa.array(minted_ids, pa.string()),
            },
            schema=PERSON_KEYS,
        )
        return Assigned(keys=keys, minted=minted, learned=found)

    def lookup(self, conn: Connection, one_ids: list[str]) -> dict[str, int]:
        """Keys already minted for ``one_ids`` (absent ones are left out); never mints."""
        known = self._known
        found = {one_id: known[one_id] for one_id in one_ids if one_id in known}
        if len(found) < len(one_ids):
            found.update(_select(conn, [one_id for one_id in one_ids if one_id not in found]))
        return found

    def remember(self, pairs: dict[str, int]) -> None:
        """Cache pairs whose transaction committed (keys never change once committed)."""
        with self._lock:
            if len(self._known) + len(pairs) > _CACHE_LIMIT:
                self._known.clear()
            self._known.update(pairs)

    def _take(self, count: int) -> list[int]:
        with self._lock:
            if self._end - self._next < count:
                raise RuntimeError(
                    f"person key pool holds {self._end - self._next} numbers, {count} needed: "
                    "reserve() before the transaction"
                )
            start = self._next
            self._next += count
        return list(range(start, start + count))


person_keys = PerEngine(PersonKeys)
"""This process's :class:`PersonKeys` for the operational store behind an engine."""


def keyed_aliases(
    conn: Connection, keys: PersonKeys, pairs: list[tuple[str, str]], assigned: Assigned
) -> pa.Table:
    """``ONE_ID_ALIASES`` rows for ``(merged-away ONE_ID, owner)`` pairs, with their keys.

    Owners were keyed by ``assign(…, also=owners)``. A merged-away ONE_ID that
    never had a key has no warehouse rows to redirect: its ``alias_key`` is null.
    """
    latest = dict(pairs)
    aliases = list(latest)
    had = keys.lookup(conn, aliases)
    learned = assigned.learned
    return pa.table(
        {
            "alias": pa.array(aliases, pa.string()),
            "one_id": pa.array([latest[a] for a in aliases], pa.string()),
            "alias_key": pa.array([had.get(a) for a in aliases], pa.int64()),
            "person_key": pa.array([learned[latest[a]] for a in aliases], pa.int64()),
        },
        schema=ONE_ID_ALIASES,
    )


# --- backfill: rows written before person keys existed --------------------------------

_UNKEYED = {
    "events": "SELECT DISTINCT one_id FROM events WHERE person_key IS NULL AND one_id IS NOT NULL",
    "trait_updates": "SELECT DISTINCT one_id FROM trait_updates WHERE person_key IS NULL",
    "one_id_aliases": (
        "SELECT alias AS one_id FROM one_id_aliases WHERE alias_key IS NULL "
        "UNION ALL SELECT one_id FROM one_id_aliases WHERE person_key IS NULL"
    ),
}


def key_resolution(
    conn: Connection,
    keys: PersonKeys,
    warehouse: Warehouse,
    one_ids: pa.Array | pa.ChunkedArray,
    aliases: list[tuple[str, str]],
    fresh: AbstractSet[str] = frozenset(),
    coded: Coded | None = None,
) -> Assigned:
    """Key every resolved ONE_ID and merge owner in ``conn``'s transaction, and write what
    the warehouse must hold before that transaction commits: the dictionary rows of the
    keys minted here and the merged-away ONE_IDs' keyed ``one_id_aliases`` (so committed
    merges never lack their aliases; see ``zhiying.ingest.pipeline``). ``aliases`` are
    ``Resolution.aliases``; ``fresh`` and ``coded``: its ``minted`` and ``coded`` (see
    ``PersonKeys.assign``); the caller remembers ``learned`` after the commit."""
    owners = [owner for _, owner in aliases]
    assigned = keys.assign(conn, one_ids, also=owners, fresh=fresh, coded=coded)
    keyed = keyed_aliases(conn, keys, aliases, assigned)
    if assigned.minted.num_rows:
        warehouse.insert("person_keys", assigned.minted)
    replace_aliases(warehouse, keyed)
    return assigned


def backfill(engine: Engine, warehouse: Warehouse) -> int:
    """Key the warehouse rows that have a ONE_ID but no key; returns the ONE_IDs keyed.

    Rows stored before person keys existed, and rows ``append_events`` wrote for
    a ONE_ID ingestion never stored, are the only unkeyed ones, so on an
    up-to-date warehouse this is three queries that find nothing. Runs when the
    stores open with migrations (``zhiying.runtime.open_stores``).
    """
    wanted: set[str] = set()
    for sql in _UNKEYED.values():
        wanted.update(str(v) for v in warehouse.query(sql).column(0).to_pylist() if v)
    if not wanted:
        return 0
    keys = person_keys(engine)
    ordered = sorted(wanted)
    keys.reserve(engine, len(ordered))
    with engine.begin() as conn:
        assigned = keys.assign(conn, pa.array(ordered, pa.string()))
        if assigned.minted.num_rows:
            warehouse.insert("person_keys", assigned.minted)
    keys.remember(assigned.learned)
    _fill(warehouse)
    return len(ordered)


def _fill(warehouse: Warehouse) -> None:
    """Copy keys from the dictionary into every unkeyed row (the larger key of a
    ONE_ID with two dictionary rows, as ``append_events`` does)."""
    targets = [
        ("events", "person_key", "one_id", "person_key IS NULL AND one_id IS NOT NULL"),
        ("trait_updates", "person_key", "one_id", "person_key IS NULL"),
        ("one_id_aliases", "alias_key", "alias", "alias_key IS NULL"),
        ("one_id_aliases", "person_key", "one_id", "person_key IS NULL"),
    ]
    if warehouse.dialect == "duckdb":
        latest = "SELECT one_id AS o, max(person_key) AS k FROM person_keys GROUP BY one_id"
        for table, column, source, unkeyed in targets:
            warehouse.execute(
                f"UPDATE {table} SET {column} = d.k FROM ({latest}) AS d "
                f"WHERE {table}.{source} = d.o AND {unkeyed}"
            )
        return
    # ClickHouse: mutations read other tables only through joinGet on a Join table.
    warehouse.execute("DROP TABLE IF EXISTS person_keys_fill")
    warehouse.execute(
        "CREATE TABLE person_keys_fill (one_id String, k Int64) ENGINE = Join(ANY, LEFT, one_id)"
    )
    try:
        warehouse.execute(
            "INSERT INTO person_keys_fill SELECT one_id, max(person_key) FROM person_keys "
            "GROUP BY one_id"
        )
        database = warehouse.query("SELECT currentDatabase() AS d").column(0)[0].as_py()
        for table, column, source, unkeyed in targets:
            warehouse.execute(
                f"ALTER TABLE {table} UPDATE {column} = "
                f"joinGetOrNull('{database}.person_keys_fill', 'k', assumeNotNull({source})) "
                f"WHERE {unkeyed} SETTINGS mutations_sync = 2"
            )
    finally:
        warehouse.execute("DROP TABLE IF EXISTS person_keys_fill")


# --- driver-level statements (a bulk import mints hundreds of thousands at once) ------


def _reserve(conn: Connection, size: int) -> int:
    """Advance ``key_blocks`` by ``size``; returns the end of the reserved range."""
    raw: Any = conn.connection.dbapi_connection
    cursor = raw.cursor()
    try:
        mark = "?" if conn.dialect.name == "sqlite" else "%s"
        cursor.execute(
            f"UPDATE key_blocks SET next_value = next_value + {mark} "
            f"WHERE name = 'person_key' RETURNING next_value",
            (size,),
        )
        row = cursor.fetchone()
    finally:
        cursor.close()
    if row is None:
        raise RuntimeError("key_blocks has no 'person_key' row: run `zhiying db upgrade`")
    return int(row[0])


def _select(conn: Connection, one_ids: list[str]) -> dict[str, int]:
    raw: Any = conn.connection.dbapi_connection
    found: dict[str, int] = {}
    cursor = raw.cursor()
    try:
        for start in range(0, len(one_ids), _LOOKUP_CHUNK):
            chunk = one_ids[start : start + _LOOKUP_CHUNK]
            if conn.dialect.name == "sqlite":
                cursor.execute(
                    "SELECT one_id, person_key FROM person_keys "
                    "WHERE one_id IN (SELECT value FROM json_each(?))",
                    (orjson.dumps(chunk).decode(),),
                )
            else:
                cursor.execute(
                    "SELECT one_id, person_key FROM person_keys WHERE one_id = ANY(%s)", (chunk,)
                )
            found.update((str(o), int(k)) for o, k in cursor.fetchall())
    finally:
        cursor.close()
    return found


def _insert(conn: Connection, one_ids: list[str], keys: list[int]) -> set[str]:
    """Insert the pairs that no committed row has yet; returns the ONE_IDs inserted.

    Another process may have minted the same ONE_ID since this transaction
    looked (SQLite runs a ``SELECT`` outside any write transaction, PostgreSQL
    reads committed rows): ``ON CONFLICT DO NOTHING``, and the caller reads the
    winner's key. PostgreSQL says which rows it inserted (``RETURNING``);
    SQLite's ``executemany`` cannot, so the pairs are read back and compared.
    """
    raw: Any = conn.connection.dbapi_connection
    cursor = raw.cursor()
    try:
        if conn.dialect.name == "sqlite":
            cursor.executemany(
                "INSERT INTO person_keys (one_id, person_key) VALUES (?, ?) "
                "ON CONFLICT (one_id) DO NOTHING",
                zip(one_ids, keys, strict=True),
            )
            if cursor.rowcount == len(one_ids):
                return set(one_ids)
            stored = _select(conn, one_ids)
            return {o for o, k in zip(one_ids, keys, strict=True) if stored.get(o) == k}
        inserted: set[str] = set()
        for start in range(0, len(one_ids), _LOOKUP_CHUNK):
            end = start + _LOOKUP_CHUNK
            cursor.execute(
                "INSERT INTO person_keys (one_id, person_key) "
                "SELECT * FROM unnest(%s::text[], %s::bigint[]) "
                "ON CONFLICT (one_id) DO NOTHING RETURNING one_id",
                (one_ids[start:end], keys[start:end]),
            )
            inserted.update(str(row[0]) for row in cursor.fetchall())
        return inserted
    finally:
        cursor.close()
