"""Set-based ONE_ID resolution of a large batch (pure, vectorised with NumPy).

The rules (``identity.resolver``) are sequential: tuples are observed in time
order and each may change what later ones see. Most tuples of a bulk import,
though, have an outcome that no other tuple of the batch can change and that
changes nothing another tuple reads. ``plan`` finds those with array
operations and decides them without a Python object per tuple; only the rest
(the *residual*) goes through the ``Resolver``, fed the same stored state.

Static classes (no alias call in any of them). *Components* link tuples by
the identifiers they share that the store does not know yet (counting the
identifiers an alias's ``previousId`` may stand for); a *root* is a tuple with
no known identifier whose identifiers all occur here for the first time.

* ``OWNED``: a component whose known identifiers all belong to one stored
  ONE_ID ``O``, with no root and no unknown identifier of a limited kind. In
  time order each tuple meets ``O`` (through a known identifier, or one an
  earlier tuple gave ``O``), so the resolver gives every tuple ``O`` (or what
  ``O`` is merged into by the end of the batch) and ``O`` every unknown
  identifier. Merges move all identifiers of a ONE_ID together, so identifiers
  that share an owner keep sharing one whatever the residual does.
* ``CONFLICT``: one tuple whose known identifiers belong to several ONE_IDs
  that each hold a ``user_id``; its unknown identifiers are *fresh* (of no
  limited kind, in no other tuple). A ONE_ID holding a ``user_id`` never loses
  a merge (the holder wins against a ONE_ID without one, and two holders never
  merge), so these owners are fixed: the tuple goes to the owner of its
  strongest known identifier, each identifier of another owner is a
  ``one_user_id`` conflict, the fresh identifiers go to the target.
* ``NEW``: a component with no known identifier, no limited kind with two
  values, and exactly one root (so every tuple but the earliest shares an
  identifier with an earlier one). The resolver mints one ONE_ID at the earliest tuple and gives it
  every identifier, with no merge and no conflict.
* ``JOINED``: a user's devices first seen before the login. A component with
  exactly one ``user_id`` ``u`` (stored or new) and no other limited kind among
  its unknown identifiers, where every tuple either carries ``u`` (a *user
  tuple*) or is *anonymous*: exactly one identifier; known identifiers only
  when ``u`` is stored, all of them ``u``'s owner's. An anonymous tuple whose
  identifier ``d`` is new mints a ONE_ID holding only ``d``; it meets nothing
  else until the first user tuple carrying ``d``, where the ONE_ID holding ``u``
  wins the merge (it holds a ``user_id``, ``d``'s does not) with a record
  ``via d`` at that tuple. The ONE_ID holding ``u``: a stored ``u``'s owner; for
  a new ``u``, the first user tuple's (``T``) ONE_ID, so at most one identifier
  of ``T`` may have been seen before it (else the resolver would merge those
  devices by age): that device's ONE_ID then takes ``u`` without a merge,
  otherwise ``T`` mints one. Every tuple ends at the user's ONE_ID, no conflict
  is possible (one value per limited kind, and the user's ONE_ID never loses).
* ``EMPTY``: no identifier at all: no ONE_ID.

A static tuple reads only owners the residual cannot change (or follows them
through ``find`` at the end) and writes only identifiers no residual tuple
reads, so the residual resolved alone, in time order, makes the same merges
and conflicts as the whole batch would.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import numpy as np

EMPTY: Final = 0
OWNED: Final = 1
ANCHORED: Final = 2
NEW: Final = 3
RESIDUAL: Final = 4
JOINED: Final = 5


@dataclass(frozen=True)
class Batch:
    """What ``plan`` needs, as arrays.

    Flat identifier rows ``flat_tuple``/``flat_ident`` (sorted by tuple; identifier
    numbers ``0..n_idents-1``), extra rows ``alias_tuple``/``alias_ident`` for the
    identifiers an alias's ``previousId`` may stand for, ``is_alias`` per tuple;
    per identifier: ``limit`` (0 = no limit, 1.. = limited kind), ``is_user`` (a
    ``user_id``), ``rank`` (its place in precedence order: strongest first, all
    distinct) and ``owner`` (index of its stored ONE_ID, -1 when unknown); per
    stored ONE_ID ``anchored`` (it holds a ``user_id``); per tuple ``first_at`` (µs).
    """

    n_tuples: int
    flat_tuple: np.ndarray
    flat_ident: np.ndarray
    alias_tuple: np.ndarray
    alias_ident: np.ndarray
    is_alias: np.ndarray
    limit: np.ndarray
    is_user: np.ndarray
    rank: np.ndarray
    owner: np.ndarray
    anchored: np.ndarray
    first_at: np.ndarray


@dataclass(frozen=True)
class Plan:
    """The decisions for the static tuples.

    A *holder code* names a ONE_ID: below ``n_owners`` a stored one (the index
    ``Batch.owner`` uses), from ``n_owners`` on the new ONE_ID ``code - n_owners``
    of ``mint_created`` (its first-seen time, µs) and ``mint_tuple`` (the tuple
    whose observation mints it: the resolver mints at most one ONE_ID per static
    tuple, so these are distinct and give the mint order). Per tuple: ``klass`` and
    ``target`` (holder code, -1 for EMPTY and RESIDUAL). ``assign_ident`` /
    ``assign_target``: identifiers the store does not know and their holder code.
    ``conflict_tuple`` / ``conflict_ident`` / ``conflict_other``: ``one_user_id``
    conflicts met by static tuples (the ONE_ID refused is ``target[conflict_tuple]``).
    ``merge_winner`` / ``merge_loser`` (holder codes) / ``merge_ident`` /
    ``merge_tuple``: merges made by static (``JOINED``) tuples, in tuple order
    (the resolver's record names the tuple's first event, type and time); a
    loser is always a new ONE_ID, so it is stored as merged into its winner.
    """

    n_owners: int
    klass: np.ndarray
    target: np.ndarray
    mint_created: np.ndarray
    mint_tuple: np.ndarray
    assign_ident: np.ndarray
    assign_target: np.ndarray
    conflict_tuple: np.ndarray
    conflict_ident: np.ndarray
    conflict_other: np.ndarray
    merge_winner: np.ndarray
    merge_loser: np.ndarray
    merge_ident: np.ndarray
    merge_tuple: np.ndarray

    @property
    def residual(self) -> np.ndarray:
        """Tuple numbers (ascending, i.e. time order) that need the rules one by one."""
        return np.flatnonzero(self.klass == RESIDUAL)


def components(n_nodes: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Connected components of an undirected graph: the smallest node of each node's
    component (hooking of roots plus pointer jumping; a few passes over the edges)."""
    label = np.arange(n_nodes, dtype=np.int64)
    if len(a) == 0:
        return label
    while True:
        la, lb = label[a], label[b]
        low = np.minimum(la, lb)
        hooked = label.copy()
        np.minimum.at(hooked, la, low)
        np.minimum.at(hooked, lb, low)
        while True:
            jumped = hooked[hooked]
            if np.array_equal(jumped, hooked):
                break
            hooked = jumped
        if np.array_equal(hooked, label):
            return label
        label = hooked


def _per_tuple(n: int, tuples: np.ndarray, flags: np.ndarray) -> np.ndarray:
    """Per tuple: does any of its rows have ``flags``?"""
    return np.bincount(tuples[flags], minlength=n) > 0


_BIG: Final = np.iinfo(np.int64).max
_MAX_DEPTH: Final = 64


def plan(batch: Batch) -> Plan:
    """Classify every tuple (see the module docstring) and decide the static ones."""
    n = batch.n_tuples
    ft, fi = batch.flat_tuple, batch.flat_ident
    n_idents = len(batch.limit)
    n_owners = len(batch.anchored)
    all_t = np.concatenate([ft, batch.alias_tuple])
    all_i = np.concatenate([fi, batch.alias_ident])

    owner_f = batch.owner[fi]
    known = owner_f >= 0
    has_idents = np.bincount(ft, minlength=n) > 0
    has_known = _per_tuple(n, ft, known)
    low_owner = np.full(n, _BIG, dtype=np.int64)
    high_owner = np.full(n, -1, dtype=np.int64)
    np.minimum.at(low_owner, ft[known], owner_f[known])
    np.maximum.at(high_owner, ft[known], owner_f[known])
    several = has_known & (low_owner != high_owner)
    anchored_owner = np.concatenate([batch.anchored, [False]])[owner_f]  # -1: the pad
    unanchored = _per_tuple(n, ft, known & ~anchored_owner)

    # Components of tuples (0..n-1) linked by unknown identifiers (n..n+n_idents-1).
    unknown_rows = batch.owner[all_i] < 0
    label = components(n + n_idents, all_t[unknown_rows], n + all_i[unknown_rows])
    t_label = label[:n]
    size = n + n_idents

    def per_component(flags: np.ndarray) -> np.ndarray:
        return np.bincount(t_label, weights=flags.astype(np.float64), minlength=size)

    first_t = np.full(n_idents, _BIG, dtype=np.int64)
    np.minimum.at(first_t, all_i, all_t)
    first_here = first_t[fi] == ft
    root = has_idents & ~has_known & ~_per_tuple(n, ft, ~first_here)
    roots = per_component(root)
    alias_or_several = per_component(batch.is_alias | several) > 0
    with_known = per_component(has_known)
    limited_unknown = ~known & (batch.limit[fi] > 0)

    klass = np.full(n, RESIDUAL, dtype=np.int8)
    klass[~batch.is_alias & ~has_idents] = EMPTY
    target = np.full(n, -1, dtype=np.int64)

    # OWNED: one stored owner for the whole component, no root, no limited unknown.
    comp_low = np.full(size, _BIG, dtype=np.int64)
    comp_high = np.full(size, -1, dtype=np.int64)
    np.minimum.at(comp_low, t_label[has_known], low_owner[has_known])
    np.maximum.at(comp_high, t_label[has_known], high_owner[has_known])
    owned_comp = (
        ~alias_or_several
        & (with_known > 0)
        & (comp_low == comp_high)
        & (roots == 0)
        & (per_component(_per_tuple(n, ft, limited_unknown)) == 0)
    )
    owned = has_idents & owned_comp[t_label]
    klass[owned] = OWNED
    target[owned] = comp_low[t_label[owned]]

    # NEW: nothing known, one root, at most one value per limited kind.
    one_value = np.ones(size, dtype=bool)
    for kind in np.unique(batch.limit[batch.limit > 0]):
        unknown_of_kind = np.flatnonzero((batch.limit == kind) & (batch.owner < 0))
        one_value &= np.bincount(label[n + unknown_of_kind], minlength=size) <= 1
    new_comp = ~alias_or_several & (with_known == 0) & (roots == 1) & one_value
    new = has_idents & ~owned & new_comp[t_label]
    klass[new] = NEW
    new_comps, new_mint = np.unique(t_label[new], return_inverse=True)
    target[new] = n_owners + new_mint
    # Each new ONE_ID's minting tuple (tuples are numbered in time order: its
    # first-seen time is that tuple's); a NEW component's is its root, the earliest.
    mint_tuple = np.full(len(new_comps), _BIG, dtype=np.int64)
    np.minimum.at(mint_tuple, new_mint, np.flatnonzero(new))

    # ANCHORED: every owner met holds a user_id (stored, or a new user's ONE_ID).
    user_f = batch.is_user[fi]
    unknown_user = ~known & user_f
    has_unknown_user = _per_tuple(n, ft, unknown_user)
    users = np.bincount(ft[user_f], minlength=n)
    fit = (
        has_idents
        & ~batch.is_alias
        & ~unanchored
        & ~_per_tuple(n, ft, limited_unknown & ~user_f)
        & ~(has_unknown_user & (users > 1))
        & ~(root & ~has_unknown_user)
    )
    # An alias call spoils its component even with no identifier of its own (its
    # previousId links it).
    spoils = ~fit & (has_idents | batch.is_alias)
    candidate = (per_component(spoils) == 0)[t_label] & fit & ~owned & ~new
    # A tuple with a new user id goes to that user's new ONE_ID (code: n_owners + n_idents
    # + identifier, renumbered below); any other to the holder of its strongest
    # identifier held before it: a stored owner, or the target of the first tuple
    # that carried an unknown one.
    pending_code = n_owners + n_idents
    new_user_rows = np.flatnonzero(candidate[ft] & unknown_user)
    target[ft[new_user_rows]] = pending_code + fi[new_user_rows]
    held = known | ~first_here
    strongest = np.full(n, _BIG, dtype=np.int64)
    rows = np.flatnonzero(candidate[ft] & held & ~has_unknown_user[ft])
    np.minimum.at(strongest, ft[rows], batch.rank[fi[rows]])
    by_rank = np.empty(n_idents, dtype=np.int64)
    by_rank[batch.rank] = np.arange(n_idents)
    others = np.flatnonzero(candidate & ~has_unknown_user)
    via = by_rank[strongest[others]]
    via_owner = batch.owner[via]
    target[others] = via_owner
    chained = others[via_owner < 0]
    source = first_t[by_rank[strongest[chained]]]
    for _ in range(_MAX_DEPTH):
        target[chained] = target[source]
        if (target[chained] >= 0).all():
            break
    candidate &= (per_component(candidate & (target < 0)) == 0)[t_label]
    klass[candidate] = ANCHORED

    # JOINED: one user in the component, every other tuple anonymous with one identifier.
    has_user = users > 0
    u_low = np.full(size, _BIG, dtype=np.int64)
    u_high = np.full(size, -1, dtype=np.int64)
    np.minimum.at(u_low, t_label[ft[user_f]], fi[user_f])
    np.maximum.at(u_high, t_label[ft[user_f]], fi[user_f])
    one_user = (u_high >= 0) & (u_low == u_high)
    the_user = np.where(one_user, u_low, n_idents)  # per component; n_idents: none
    user_owner = np.concatenate([batch.owner, [-1]])[the_user]
    first_user_t = np.concatenate([first_t, [n]])[the_user]  # its first tuple (n: none)
    seen_before = np.bincount(ft[~known & ~first_here], minlength=n + 1)
    joined_comp = (
        ~alias_or_several
        & one_user
        & (per_component(~has_user & (np.bincount(ft, minlength=n) != 1)) == 0)
        & (per_component(_per_tuple(n, ft, limited_unknown & ~user_f)) == 0)
        & (per_component(klass != RESIDUAL) == 0)
        & np.where(  # a stored user: every known identifier is its owner's
            user_owner >= 0,
            (comp_low == user_owner) & (comp_high == user_owner),
            (with_known == 0) & (seen_before[first_user_t] <= 1),
        )
    )
    joined = has_idents & joined_comp[t_label]
    klass[joined] = JOINED
    # Devices: unknown identifiers first carried by an anonymous tuple (each mints a
    # ONE_ID), and the first user tuple that carries each (where it merges).
    j_rows = np.flatnonzero(joined[ft] & ~known)
    firsts_t = first_t[fi[j_rows]]
    device_rows = j_rows[(firsts_t == ft[j_rows]) & ~has_user[ft[j_rows]]]
    device = fi[device_rows]
    meet = np.full(n_idents, _BIG, dtype=np.int64)
    u_rows = j_rows[has_user[ft[j_rows]]]
    np.minimum.at(meet, fi[u_rows], ft[u_rows])
    # A new user's first user tuple T: the one device seen before it (if any) gives
    # the user's ONE_ID (created when that device was first seen), else T mints it.
    device_comp = t_label[ft[device_rows]]
    adopted = (user_owner[device_comp] < 0) & (meet[device] == first_user_t[device_comp])
    born = np.full(n, _BIG, dtype=np.int64)
    np.minimum.at(born, ft[j_rows], firsts_t)
    j_comps = np.unique(t_label[joined])
    j_new = j_comps[user_owner[j_comps] < 0]

    # Holders met by ANCHORED tuples, their one_user_id conflicts, and the
    # identifiers they (or OWNED/NEW/JOINED tuples) are first to carry.
    a_rows = np.flatnonzero(candidate[ft])
    holder = np.where(known[a_rows], owner_f[a_rows], target[first_t[fi[a_rows]]])
    clash = held[a_rows] & (holder != target[ft[a_rows]])
    static = (klass == OWNED) | (klass == NEW) | (klass == ANCHORED) | (klass == JOINED)
    firsts = np.flatnonzero(static[ft] & ~known & first_here)
    idents, once = np.unique(fi[firsts], return_index=True)
    firsts = firsts[once]

    # New users' ONE_IDs, numbered after the NEW components'.
    user_codes = np.unique(target[candidate])
    user_codes = user_codes[user_codes >= pending_code]
    renumber = np.full(n_idents, -1, dtype=np.int64)
    renumber[user_codes - pending_code] = n_owners + len(new_comps) + np.arange(len(user_codes))
    mint_tuple = np.concatenate([mint_tuple, first_t[user_codes - pending_code]])

    def final(codes: np.ndarray) -> np.ndarray:
        mapped = codes.copy()
        late = codes >= pending_code
        mapped[late] = renumber[codes[late] - pending_code]
        return mapped

    decided = final(target)
    # JOINED: new users' ONE_IDs next, then one per merged device.
    comp_code = np.full(size, -1, dtype=np.int64)
    comp_code[j_comps] = user_owner[j_comps]
    comp_code[j_new] = n_owners + len(mint_tuple) + np.arange(len(j_new))
    mint_tuple = np.concatenate([mint_tuple, born[first_user_t[j_new]]])
    decided[joined] = comp_code[t_label[joined]]
    lost = np.flatnonzero(~adopted)
    lost = lost[np.lexsort((batch.rank[device[lost]], meet[device[lost]]))]
    loser = n_owners + len(mint_tuple) + np.arange(len(lost))
    mint_tuple = np.concatenate([mint_tuple, ft[device_rows[lost]]])

    conflict_rows = a_rows[clash]
    return Plan(
        n_owners=n_owners,
        klass=klass,
        target=decided,
        mint_created=batch.first_at[mint_tuple],
        mint_tuple=mint_tuple,
        assign_ident=idents,
        assign_target=decided[ft[firsts]],
        conflict_tuple=ft[conflict_rows],
        conflict_ident=fi[conflict_rows],
        conflict_other=final(holder[clash]),
        merge_winner=decided[ft[device_rows[lost]]],
        merge_loser=loser,
        merge_ident=device[lost],
        merge_tuple=meet[device[lost]],
    )
