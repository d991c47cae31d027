"""An in-process cache identifier → ONE_ID for the people a process already resolved.

Most events of a batch come from people already known: every identifier of
the event is cached and all belong to one ONE_ID, so resolution would change
nothing but ``last_seen``. ``resolve_events`` answers such rows ("hits") from
this cache with array operations and no query; only the other rows
("misses") go through the store and the rules.

Validity: the cache only changes owners through merges, and every merge
increments ``identity_generation.generation`` in the merging transaction.
Each batch reads that counter (one tiny query, under the resolution lock) and
drops the whole cache when it moved, so several API processes on one
PostgreSQL stay correct. Entries are added only after the operational
transaction committed (``apply``), so a rolled-back batch leaves no trace.
Even a cached owner that another process merged away a moment ago is safe: the
event carries a ONE_ID that the warehouse's ``one_id_aliases`` maps to its
owner, like any event stored before a merge.

``last_seen`` is coarsened: a hit writes an identifier's times only when the
batch moves ``first_seen`` earlier or ``last_seen`` later by at least
``LAST_SEEN_STEP`` (one hour) past the value this process knows is stored.
Stored ``last_seen`` may therefore lag by up to an hour for returning people.

A batch of this process that merges does not empty the cache: it moved the
generation by exactly one under the resolution lock, and it knows every
ONE_ID it merged away, so ``resolve_events`` announces them
(``expect_merges``) and ``apply`` re-points the entries of those ONE_IDs to
their owner instead of dropping everything. Only a generation moved by
someone else (or by a set-based batch) empties the cache.

Layout: a dict from the identifier's ``key`` (one string) to a slot, and
NumPy arrays of slot → owner code, first seen, last seen (naive-UTC
microseconds). A batch's look-up is one ``map`` of ``dict.get`` (in C) and
array indexing; there is no Python object per identifier to read.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from itertools import islice, repeat
from operator import attrgetter
from typing import Final

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from zhiying.identity.resolver import Ident

LAST_SEEN_STEP: Final = timedelta(hours=1)
LAST_SEEN_STEP_US: Final = LAST_SEEN_STEP // timedelta(microseconds=1)
DEFAULT_CAPACITY: Final = 500_000
"""Identifiers kept (≈ 200 bytes each: ≈ 100 MB when full)."""


def key(kind: str, value: str) -> str:
    """The cache key of an identifier: ``len(kind):kind value`` (injective, one string).

    ``zhiying.identity.batch.row_identifiers`` builds the same strings with Arrow.
    """
    return f"{len(kind)}:{kind}{value}"


def ident(cache_key: str) -> Ident:
    """The identifier a ``key`` was made from."""
    length, _, rest = cache_key.partition(":")
    n = int(length)
    return rest[:n], rest[n:]


def _keys(identifiers: Iterable[Ident]) -> list[str]:
    """``key`` of many identifiers (one prefix per kind, then one concatenation each)."""
    prefix: dict[str, str] = {}
    return [(prefix.get(k) or prefix.setdefault(k, f"{len(k)}:{k}")) + v for k, v in identifiers]


@dataclass(slots=True)
class Seen:
    """What the store holds for one identifier (as far as this process knows).

    Times are naive-UTC microseconds since the epoch.
    """

    one_id: str
    first_us: int
    last_us: int


_ONE_ID = attrgetter("one_id")
_FIRST = attrgetter("first_us")
_LAST = attrgetter("last_us")


@dataclass(frozen=True)
class Found:
    """A batch's look-up, aligned with the keys asked for.

    ``owner`` is a code (``IdentityCache.names``), -1 when the key is not cached;
    two keys have the same owner exactly when their codes are equal.
    ``first_us``/``last_us`` are meaningful where ``owner >= 0``.
    """

    owner: np.ndarray
    first_us: np.ndarray
    last_us: np.ndarray


class IdentityCache:
    """Bounded LRU of identifier → ``Seen``, tagged with the generation it is valid for.

    Locked, normally used by the one event writer of a process (``EVENT_WRITER``).
    """

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        self.capacity = capacity
        self.generation: int | None = None
        self._lock = threading.Lock()
        self._reset()

    def _reset(self) -> None:
        self._pending: tuple[int, dict[str, str]] | None = None
        self._slots: dict[str, int] = {}  # insertion order = LRU order
        self._free: list[int] = []
        self._used = 0  # slots ever handed out
        self._owner = np.zeros(0, dtype=np.int64)
        self._first = np.zeros(0, dtype=np.int64)
        self._last = np.zeros(0, dtype=np.int64)
        self._names: list[str] = []  # owner code → ONE_ID
        self._codes: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._slots)

    def sync(self, generation: int) -> None:
        """Drop everything when the store's merge generation differs from the cache's."""
        with self._lock:
            self._pending = None  # a batch that announced merges did not commit
            if generation != self.generation:
                self._reset()
                self.generation = generation

    def expect_merges(self, base: int, owners: Mapping[str, str]) -> None:
        """Announce that the batch being resolved on this cache at generation ``base``
        merged away ``owners``' keys (each → its current owner), moving the store
        to ``base + 1``. If the next ``apply`` brings ``base + 1`` (the batch
        committed), entries are re-pointed rather than dropped; ``sync`` forgets it.
        """
        with self._lock:
            self._pending = (base, dict(owners)) if base == self.generation else None

    def get(self, identifier: Ident) -> Seen | None:
        """The entry of one identifier (no reordering)."""
        with self._lock:
            slot = self._slots.get(key(*identifier))
            if slot is None:
                return None
            return Seen(
                self._names[self._owner[slot]], int(self._first[slot]), int(self._last[slot])
            )

    def lookup(self, keys: list[str]) -> Found:
        """The entries of ``keys`` (see ``key``) as arrays (no reordering).

        The LRU order is refreshed by ``apply`` only, which every hit that
        moves ``last_seen`` by a step (at least hourly in event time for an
        active person) goes through, so people still active are not evicted.
        """
        with self._lock:
            found = pa.array(list(map(self._slots.get, keys)), pa.int64())
            slots = pc.fill_null(found, -1).to_numpy(zero_copy_only=False)
            cached = slots >= 0
            at = np.where(cached, slots, 0)
            if self._used == 0:
                zeros = np.zeros(len(keys), dtype=np.int64)
                return Found(zeros - 1, zeros, zeros)
            return Found(np.where(cached, self._owner[at], -1), self._first[at], self._last[at])

    def names(self, codes: np.ndarray) -> list[str]:
        """The ONE_IDs of owner ``codes`` from a ``lookup`` (valid until the next ``apply``)."""
        with self._lock:
            return [self._names[c] for c in codes.tolist()]

    def apply(self, generation: int, entries: dict[Ident, Seen]) -> None:
        """Record committed state as of ``generation`` (after the transaction committed)."""
        with self._lock:
            pending, self._pending = self._pending, None
            if generation != self.generation:
                if (
                    pending is not None
                    and pending[0] == self.generation
                    and generation == pending[0] + 1
                ):
                    self._repoint(pending[1])
                else:
                    self._reset()
                self.generation = generation
            if not entries:
                return
            # In bulk (a first import applies every identifier it met): C loops only.
            slots = self._slots
            keys = _keys(entries)
            popped = list(map(slots.pop, keys, repeat(None)))  # re-inserted keys move last
            at = pc.fill_null(pa.array(popped, pa.int64()), -1).to_numpy(zero_copy_only=False)
            at = at.copy()
            new = np.flatnonzero(at < 0)
            if len(new):
                at[new] = self._new_slots(len(new))
            slots.update(zip(keys, at.tolist(), strict=True))
            seen = list(entries.values())
            self._owner[at] = self._codes_of(list(map(_ONE_ID, seen)))
            self._first[at] = np.fromiter(map(_FIRST, seen), np.int64, len(seen))
            self._last[at] = np.fromiter(map(_LAST, seen), np.int64, len(seen))
            excess = len(slots) - self.capacity
            if excess > 0:
                for k in list(islice(slots, excess)):
                    self._free.append(slots.pop(k))
            if len(self._names) > 2 * len(slots) + 1024:
                self._compact_names()

    def _code(self, one_id: str) -> int:
        code = self._codes.get(one_id)
        if code is None:
            code = self._codes[one_id] = len(self._names)
            self._names.append(one_id)
        return code

    def _repoint(self, owners: Mapping[str, str]) -> None:
        """Entries owned by a merged-away ONE_ID now name its owner."""
        moves = [
            (self._codes[loser], self._code(winner))
            for loser, winner in owners.items()
            if loser in self._codes
        ]
        if not moves:
            return
        renumber = np.arange(len(self._names), dtype=np.int64)
        for loser, winner in moves:
            renumber[loser] = winner
        self._owner[: self._used] = renumber[self._owner[: self._used]]

    def _codes_of(self, one_ids: list[str]) -> list[int]:
        """Owner codes of ``one_ids``, numbering the ONE_IDs not seen before."""
        codes = self._codes
        unknown = list(set(one_ids).difference(codes))
        if unknown:
            codes.update(
                zip(unknown, range(len(self._names), len(self._names) + len(unknown)), strict=True)
            )
            self._names.extend(unknown)
        return list(map(codes.__getitem__, one_ids))

    def _new_slots(self, count: int) -> np.ndarray:
        """``count`` free slots: freed ones first, then new ones (the arrays grow)."""
        reused = self._free[len(self._free) - min(count, len(self._free)) :]
        del self._free[len(self._free) - len(reused) :]
        fresh = count - len(reused)
        if self._used + fresh > len(self._owner):
            size = max(1024, 2 * (self._used + fresh))
            for name in ("_owner", "_first", "_last"):
                grown = np.zeros(size, dtype=np.int64)
                grown[: self._used] = getattr(self, name)[: self._used]
                setattr(self, name, grown)
        start = self._used
        self._used += fresh
        return np.concatenate(
            [np.array(reused, dtype=np.int64), np.arange(start, self._used, dtype=np.int64)]
        )

    def _compact_names(self) -> None:
        """Forget the ONE_IDs no entry names any more (evicted people's)."""
        live = np.fromiter(self._slots.values(), dtype=np.int64, count=len(self._slots))
        kept = np.unique(self._owner[live])
        renumber = np.full(len(self._names), -1, dtype=np.int64)
        renumber[kept] = np.arange(len(kept))
        self._owner[live] = renumber[self._owner[live]]
        self._names = [self._names[c] for c in kept.tolist()]
        self._codes = {name: i for i, name in enumerate(self._names)}

    def clear(self) -> None:
        with self._lock:
            self._reset()
            self.generation = None
