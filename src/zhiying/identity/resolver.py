"""Identity resolution rules, in memory (pure: no I/O, no clock).

The service loads what the store knows about a batch's identifiers, feeds the
batch's distinct identity tuples to a ``Resolver`` in time order and writes
back what changed. Everything that decides *who is who* lives here, so the
rules are tested without a database.

Rules (``docs/identity.md`` has examples):

1. Identifiers seen on one event belong to one person: their ONE_IDs merge.
   A ``user_id`` + ``anonymous_id`` on an identify/track call, or
   ``previousId`` + ``userId`` on an alias call, link an anonymous device to a
   user; the device's earlier events follow through the merge.
2. Limits: a ONE_ID holds at most one ``user_id`` and at most one
   ``wechat_unionid``. A merge that would break a limit does not happen: the
   shared identifier (a family tablet, a shop's phone) stays with its first
   owner, the event goes to the ONE_ID of its strongest identifier (its
   ``user_id`` if it has one) and a conflict naming the rule is recorded.
3. The winner of a merge is the ONE_ID holding a ``user_id``; otherwise the
   older one (first seen earlier); between two first seen at the same instant,
   the one minted first (stored ONE_IDs by their ``mint_order``, before the
   ONE_IDs this resolver mints, which come in the order it minted them). The
   loser keeps no identifiers.
4. Identifiers are considered strongest first (``PRECEDENCE``): when an
   event's identifiers belong to ONE_IDs that must not merge, the event goes
   with the strongest.
5. An alias's ``previousId`` is read as a ``user_id`` when that user id is
   already known, else as an ``anonymous_id``.

Replaying a tuple that was already resolved changes nothing (merges only
coarsen the partition, and limits that blocked a merge keep blocking it), so
resolving the first occurrence of each distinct tuple in time order is the
same as resolving every event, and a stream gives the same partition whatever
batches it is cut into.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Final

from zhiying.identity.identifiers import (
    ANONYMOUS_ID,
    DEVICE_ID,
    EMAIL,
    PHONE,
    USER_ID,
    WECHAT_OPENID,
    WECHAT_UNIONID,
)

Ident = tuple[str, str]
"""An identifier: ``(kind, normalised value)``."""

LIMITED_KINDS: Final[Mapping[str, str]] = {
    USER_ID: "one_user_id",
    WECHAT_UNIONID: "one_wechat_unionid",
}
"""Kinds a ONE_ID may hold only one value of, with the rule name used in conflicts."""

PRECEDENCE: Final[Mapping[str, int]] = {
    USER_ID: 0,
    WECHAT_UNIONID: 1,
    PHONE: 2,
    EMAIL: 3,
    WECHAT_OPENID: 4,
    # custom kinds (member numbers, ...) rank 5
    DEVICE_ID: 6,
    ANONYMOUS_ID: 7,
}
_CUSTOM_RANK: Final = 5


def precedence(ident: Ident) -> tuple[int, str, str]:
    """Sort key: strongest identifier first (see rule 4)."""
    return (PRECEDENCE.get(ident[0], _CUSTOM_RANK), ident[0], ident[1])


@dataclass(slots=True)
class Observation:
    """One distinct identity tuple of a batch, at its first occurrence.

    ``identifiers`` are distinct; ``previous_id`` is set for alias calls only.
    ``first_at``/``last_at`` bound the events that carried the tuple (UTC).
    Treated as immutable; not declared ``frozen`` because one is built per
    distinct tuple of every batch and a frozen dataclass's ``__init__`` costs
    about five times as much.
    """

    identifiers: tuple[Ident, ...]
    first_at: datetime
    last_at: datetime
    message_id: str
    event_type: str
    previous_id: str | None = None


@dataclass(frozen=True, slots=True)
class KnownOneId:
    """A live ONE_ID loaded from the store: when it was first seen, its limited
    identifiers and its ``mint_order`` (the store's count of ONE_IDs minted up to
    and including it; ``UNORDERED`` for a row written without one)."""

    created_at: datetime
    limited: Mapping[str, str]
    order: int


UNORDERED: Final = 1 << 62
"""``KnownOneId.order`` of a stored ONE_ID with no ``mint_order``: after every numbered one."""


@dataclass(frozen=True, slots=True)
class Merge:
    winner: str
    loser: str
    kind: str
    value: str
    reason: str
    message_id: str
    merged_at: datetime


@dataclass(frozen=True, slots=True)
class IdentityConflict:
    """``one_id`` (where the event went) was refused ``kind:value`` held by ``other_one_id``."""

    one_id: str
    other_one_id: str
    kind: str
    value: str
    rule: str
    message_id: str
    seen_at: datetime


@dataclass(slots=True)
class _Node:
    created_at: datetime
    order: int  # loaded: the stored mint order; new: 1, 2, ... in the order minted
    limited: dict[str, str]
    is_new: bool  # minted here, so after every loaded ONE_ID in mint order


@dataclass(slots=True)
class _PendingConflict:
    ident: Ident
    other: str
    rule: str


@dataclass
class Resolver:
    """Union-find over ONE_IDs with the rules above.

    ``load`` what the store knows about the identifiers to come, then
    ``observe`` tuples in time order. ``new_id`` mints ONE_IDs.
    """

    new_id: Callable[[], str]
    merges: list[Merge] = field(default_factory=list)
    conflicts: list[IdentityConflict] = field(default_factory=list)
    _owner: dict[Ident, str] = field(default_factory=dict)
    _parent: dict[str, str] = field(default_factory=dict)
    _nodes: dict[str, _Node] = field(default_factory=dict)  # live ONE_IDs only
    _created: dict[str, datetime] = field(default_factory=dict)  # new ONE_IDs
    _loaded_ids: set[str] = field(default_factory=set)
    _seen: dict[Ident, tuple[datetime, datetime]] = field(default_factory=dict)
    _seq: int = 0

    # --- state -------------------------------------------------------------------

    def load(self, owners: Mapping[Ident, str], one_ids: Mapping[str, KnownOneId]) -> None:
        """Add stored state: the owner of known identifiers and their (live) ONE_IDs."""
        for one_id, known in one_ids.items():
            if one_id in self._nodes or one_id in self._parent:
                continue
            self._nodes[one_id] = _Node(known.created_at, known.order, dict(known.limited), False)
            self._loaded_ids.add(one_id)
        for ident, one_id in owners.items():
            if one_id not in self._nodes:
                raise ValueError(f"owner {one_id} of {ident[0]} not loaded")
            self._owner[ident] = one_id

    def find(self, one_id: str) -> str:
        """The live ONE_ID that ``one_id`` is (or was merged into)."""
        root = one_id
        while root in self._parent:
            root = self._parent[root]
        while one_id != root:  # path compression
            nxt = self._parent[one_id]
            self._parent[one_id] = root
            one_id = nxt
        return root

    def owner(self, ident: Ident) -> str | None:
        """Current ONE_ID of ``ident``, or None when it was never seen."""
        found = self._owner.get(ident)
        if found is None or found not in self._parent:
            return found
        return self.find(found)

    def holds(self, one_id: str) -> Mapping[str, str]:
        """The limited identifiers (kind → value) of a live ONE_ID."""
        return self._nodes[self.find(one_id)].limited

    @property
    def new_one_ids(self) -> dict[str, datetime]:
        """ONE_IDs minted by ``observe`` (live or already merged), with when first seen,
        in the order they were minted (the order their ``mint_order`` must follow)."""
        return dict(self._created)

    @property
    def minted_count(self) -> int:
        """How many ONE_IDs ``observe`` has minted so far."""
        return self._seq

    @property
    def merged_away(self) -> list[str]:
        """Every ONE_ID (loaded or new) that is no longer live."""
        return list(self._parent)

    def is_loaded(self, one_id: str) -> bool:
        return one_id in self._loaded_ids

    @property
    def seen(self) -> Mapping[Ident, tuple[datetime, datetime]]:
        """First and last time each identifier was observed in this resolver."""
        return self._seen

    def assignments(self) -> dict[Ident, str]:
        """Current owner of every identifier this resolver knows."""
        return {ident: self.find(one_id) for ident, one_id in self._owner.items()}

    # --- rules -------------------------------------------------------------------

    def observe(self, obs: Observation) -> str | None:
        """Resolve one tuple; returns its ONE_ID (None when it carries no identifier)."""
        if obs.previous_id is None and obs.identifiers:
            # Fast path, the common case of a returning person: every identifier
            # already belongs to one ONE_ID, so the rules below change nothing.
            known = self.owner(obs.identifiers[0])
            if known is not None and all(self.owner(i) == known for i in obs.identifiers[1:]):
                self._note_seen(obs.identifiers, obs)
                return known
            if known is None and _all_new_within_limits(self, obs.identifiers):
                # Fast path, a new person (most tuples of a first import): the
                # rules below would mint one ONE_ID and give it every identifier.
                minted = self._mint(obs.first_at)
                limited = self._nodes[minted].limited
                for ident in obs.identifiers:
                    self._owner[ident] = minted
                    if ident[0] in LIMITED_KINDS:
                        limited[ident[0]] = ident[1]
                self._note_seen(obs.identifiers, obs)
                return minted
        idents = sorted(set(obs.identifiers), key=precedence)
        if obs.previous_id is not None:
            as_user = (USER_ID, obs.previous_id)
            prev = as_user if as_user in self._owner else (ANONYMOUS_ID, obs.previous_id)
            if prev not in idents:
                idents.append(prev)  # after the alias's own userId (rule 5)
        if not idents:
            return None
        self._note_seen(idents, obs)

        target: str | None = None
        limits: dict[str, str] = {}
        pending: list[Ident] = []
        refused_new: list[tuple[Ident, str]] = []  # unseen identifiers over a limit
        found: list[_PendingConflict] = []
        for ident in idents:
            kind, value = ident
            holder = self.owner(ident)
            if holder is None:
                if kind in LIMITED_KINDS and limits.get(kind, value) != value:
                    refused_new.append((ident, LIMITED_KINDS[kind]))
                else:
                    if kind in LIMITED_KINDS:
                        limits[kind] = value
                    pending.append(ident)
                continue
            if holder == target:
                continue
            rule = _broken_limit(limits, self._nodes[holder].limited)
            if rule is not None:
                found.append(_PendingConflict(ident, holder, rule))
                continue
            target = holder if target is None else self._merge(target, holder, ident, obs)
            limits.update(self._nodes[target].limited)

        if target is None:
            target = self._mint(obs.first_at)
        node = self._nodes[target]
        for ident in pending:
            self._owner[ident] = target
            if ident[0] in LIMITED_KINDS:
                node.limited[ident[0]] = ident[1]
        for ident, rule in refused_new:
            # It still needs an owner; it gets a ONE_ID of its own.
            other = self._mint(obs.first_at)
            self._owner[ident] = other
            self._nodes[other].limited[ident[0]] = ident[1]
            found.append(_PendingConflict(ident, other, rule))
        for c in found:
            self.conflicts.append(
                IdentityConflict(
                    target, c.other, c.ident[0], c.ident[1], c.rule, obs.message_id, obs.first_at
                )
            )
        return target

    def _note_seen(self, idents: Iterable[Ident], obs: Observation) -> None:
        seen = self._seen
        for ident in idents:
            span = seen.get(ident)
            if span is None:
                seen[ident] = (obs.first_at, obs.last_at)
            elif obs.first_at < span[0] or obs.last_at > span[1]:
                seen[ident] = (min(span[0], obs.first_at), max(span[1], obs.last_at))

    def _mint(self, at: datetime) -> str:
        one_id = self.new_id()
        if one_id in self._nodes or one_id in self._parent:
            raise ValueError(f"ONE_ID {one_id} minted twice")
        self._seq += 1
        self._nodes[one_id] = _Node(at, self._seq, {}, True)
        self._created[one_id] = at
        return one_id

    def _age(self, one_id: str) -> tuple[datetime, bool, int, str]:
        """Merge order between ONE_IDs of which neither or both hold a ``user_id``:
        first seen earlier, then minted earlier (a stored ONE_ID before one minted
        here, stored ones by mint order, new ones in the order minted). Mint orders
        are distinct, so the text (last) only orders a store's unnumbered rows."""
        node = self._nodes[one_id]
        return (node.created_at, node.is_new, node.order, one_id)

    def _merge(self, a: str, b: str, via: Ident, obs: Observation) -> str:
        na, nb = self._nodes[a], self._nodes[b]
        if (USER_ID in na.limited) != (USER_ID in nb.limited):
            winner = a if USER_ID in na.limited else b
        else:
            winner = min(a, b, key=self._age)
        loser = b if winner == a else a
        self._parent[loser] = winner
        self._nodes[winner].limited.update(self._nodes[loser].limited)
        del self._nodes[loser]
        self.merges.append(
            Merge(
                winner,
                loser,
                via[0],
                via[1],
                merge_reason(obs.event_type),
                obs.message_id,
                obs.first_at,
            )
        )
        return winner


def merge_reason(event_type: str) -> str:
    """The ``reason`` recorded for a merge made by a tuple whose first event has ``event_type``."""
    if event_type == "alias":
        return "alias: previousId linked to userId"
    return f"{event_type}: one event carried identifiers of both"


def _all_new_within_limits(resolver: Resolver, idents: tuple[Ident, ...]) -> bool:
    """No identifier is known and no limited kind occurs twice (distinct values would conflict)."""
    limited = [kind for kind, _ in idents if kind in LIMITED_KINDS]
    if len(limited) != len(set(limited)):
        return False
    owner = resolver._owner  # plain reads: no merges can be involved for unknown identifiers
    return all(ident not in owner for ident in idents)


def _broken_limit(limits: Mapping[str, str], held: Mapping[str, str]) -> str | None:
    # Kinds in their fixed order, so the rule named never depends on how ``held``
    # was built (the set-based path relies on a user_id clash naming one_user_id).
    for kind, rule in LIMITED_KINDS.items():
        value = held.get(kind)
        have = limits.get(kind)
        if value is not None and have is not None and have != value:
            return rule
    return None


def partition(assignments: Mapping[Ident, str]) -> frozenset[frozenset[Ident]]:
    """Identifiers grouped by owner, without the ONE_IDs themselves (for comparisons)."""
    groups: dict[str, set[Ident]] = {}
    for ident, one_id in assignments.items():
        groups.setdefault(one_id, set()).add(ident)
    return frozenset(frozenset(g) for g in groups.values())


def union_find_partition(tuples: Iterable[Iterable[Ident]]) -> frozenset[frozenset[Ident]]:
    """Plain connected components of ``tuples`` with no limits (the bench's floor)."""
    parent: dict[Ident, Ident] = {}

    def find(x: Ident) -> Ident:
        root = x
        while parent.get(root, root) != root:
            root = parent[root]
        while x != root:
            parent[x], x = root, parent[x]
        return root

    for t in tuples:
        items = list(t)
        if not items:
            continue
        first = find(items[0])
        parent.setdefault(first, first)
        for other in items[1:]:
            r = find(other)
            parent.setdefault(r, r)
            if r != first:
                parent[r] = first
    groups: dict[Ident, set[Ident]] = {}
    for x in parent:
        groups.setdefault(find(x), set()).add(x)
    return frozenset(frozenset(g) for g in groups.values())
