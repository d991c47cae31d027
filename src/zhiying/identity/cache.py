"""An in-process cache identifier → ONE_ID for the people a process already resolved.

Most events of a batch come from people already known: their identity tuple
brings no new identifier and all its identifiers belong to one ONE_ID, so
resolution would change nothing but ``last_seen``. ``resolve_events`` answers
such tuples ("hits") from this cache, with no query; only the other tuples
("misses") go through the store.

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
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import datetime, timedelta
from itertools import islice
from typing import Final

from zhiying.identity.resolver import Ident

LAST_SEEN_STEP: Final = timedelta(hours=1)
DEFAULT_CAPACITY: Final = 500_000
"""Identifiers kept (≈ 300 bytes each: ≈ 150 MB when full)."""


@dataclass(slots=True)
class Seen:
    """What the store holds for one identifier (as far as this process knows)."""

    one_id: str
    first_seen: datetime
    last_seen: datetime


class IdentityCache:
    """Bounded LRU of identifier → ``Seen``, tagged with the generation it is valid for.

    Writes are locked; reads are not (a dict read is atomic under the GIL). It
    is normally used by the one event writer of a process (``EVENT_WRITER``).
    """

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        self.capacity = capacity
        self.generation: int | None = None
        self._entries: dict[Ident, Seen] = {}  # insertion order = LRU order
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def sync(self, generation: int) -> None:
        """Drop everything when the store's merge generation differs from the cache's."""
        with self._lock:
            if generation != self.generation:
                self._entries.clear()
                self.generation = generation

    def get(self, ident: Ident) -> Seen | None:
        """The entry of ``ident``; a plain dict read (no lock, no reordering).

        Called per identifier of a batch, so it stays this cheap: the LRU order
        is refreshed by ``apply`` only, which every hit that moves ``last_seen``
        by a step (at least hourly in event time for an active person) goes
        through, so people still active are not the ones evicted.
        """
        return self._entries.get(ident)

    def apply(self, generation: int, entries: dict[Ident, Seen]) -> None:
        """Record committed state as of ``generation`` (after the transaction committed)."""
        with self._lock:
            if generation != self.generation:
                self._entries.clear()
                self.generation = generation
            # Re-inserted keys move to the end (set operations and update run in C).
            for ident in entries.keys() & self._entries.keys():
                del self._entries[ident]
            self._entries.update(entries)
            excess = len(self._entries) - self.capacity
            if excess > 0:
                for ident in list(islice(self._entries, excess)):
                    del self._entries[ident]

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self.generation = None
