"""Collapse an event batch to its distinct identity tuples (vectorised, pure).

A bulk import hands over millions of rows that repeat a few hundred thousand
identity tuples (the same user on the same device). The tuple of a row is
``(user_id, anonymous_id, previous_id of alias calls, identifiers)``; rows
are grouped by an injective string key built with Arrow compute kernels (each
part length-prefixed, so no separator can be forged by a value), so only the
distinct tuples reach Python.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from zhiying.identity.identifiers import ANONYMOUS_ID, USER_ID
from zhiying.identity.resolver import Observation

_TS = pa.timestamp("us")


@dataclass(frozen=True)
class Tuples:
    """The distinct tuples of a batch, in time order of their first event.

    ``codes[i]`` is the position in ``observations`` of row ``i``'s tuple.
    """

    observations: list[Observation]
    codes: pa.Array


def _enc(values: pa.Array) -> pa.Array:
    """``len:value`` per element, ``~`` for null: concatenations stay injective."""
    lengths = pc.cast(pc.utf8_length(values), pa.string())
    return pc.fill_null(pc.binary_join_element_wise(lengths, values, ":"), "~")


def _identifiers_key(column: pa.Array) -> pa.Array:
    lengths = pc.fill_null(pc.list_value_length(column), 0)
    flat = pc.list_flatten(column)
    parts = pc.binary_join_element_wise(
        _enc(pc.struct_field(flat, "kind")), _enc(pc.struct_field(flat, "value")), ""
    )
    offsets = pa.array([0], pa.int64())
    if len(lengths):
        offsets = pa.concat_arrays([offsets, pc.cumulative_sum(pc.cast(lengths, pa.int64()))])
    rebuilt = pa.LargeListArray.from_arrays(offsets, parts)
    return pc.binary_join(rebuilt, "")


def _column(events: pa.Table, name: str) -> pa.Array:
    return events.column(name).combine_chunks()


@dataclass(frozen=True)
class TupleColumns:
    """The distinct tuples of a batch as columns (no Python object per tuple).

    Tuples are numbered in time order of their first event; ``codes[i]`` is the
    tuple of row ``i``. ``first_at``/``last_at`` are naive-UTC microseconds.
    ``previous_id`` (null unless an alias call) comes from each tuple's first event
    (row ``first_rows[t]`` of ``events``), and so do ``message_ids``/``event_types``
    (taken only for the tuples asked: most tuples never need theirs). The
    identifiers are flat rows (``flat_tuple``,
    ``flat_kind``, ``flat_value``) sorted by tuple, each tuple's in the order an
    ``Observation`` lists them (user id, anonymous id, then the event's list),
    without repeats and without empty kinds or values.
    """

    n: int
    codes: pa.Array
    first_at: np.ndarray
    last_at: np.ndarray
    previous_id: pa.Array
    flat_tuple: np.ndarray
    flat_kind: pa.Array
    flat_value: pa.Array
    first_rows: pa.Array
    events: pa.Table

    def message_ids(self, which: np.ndarray) -> pa.Array:
        """The message id of the first event of each tuple of ``which``."""
        return self._of_first("message_id", which)

    def event_types(self, which: np.ndarray) -> pa.Array:
        """The type of the first event of each tuple of ``which``."""
        return self._of_first("type", which)

    def _of_first(self, column: str, which: np.ndarray) -> pa.Array:
        rows = self.first_rows.take(pa.array(which, pa.int64()))
        return self.events.column(column).take(rows).combine_chunks()


def _present(values: pa.Array) -> np.ndarray:
    """Positions of non-null, non-empty strings."""
    ok = pc.fill_null(pc.greater(pc.utf8_length(values), 0), False)
    return np.flatnonzero(ok.to_numpy(zero_copy_only=False))


def _capped_micros(events: pa.Table, now: datetime) -> np.ndarray:
    """Each row's event time as naive-UTC microseconds, times after ``now`` read as ``now``."""
    cap = pa.scalar(now.astimezone(UTC).replace(tzinfo=None), _TS)
    stamps = pc.min_element_wise(pc.cast(_column(events, "timestamp"), _TS), cap)
    micros: np.ndarray = pc.cast(stamps, pa.int64()).to_numpy(zero_copy_only=False)
    return micros


@dataclass(frozen=True)
class RowIdentifiers:
    """Every row's identifiers, flat, with no grouping into tuples (for cache look-ups).

    ``keys[j]`` is the cache key (``zhiying.identity.cache.key``) of an
    identifier of row ``rows[j]``: the row's user id, its anonymous id and its
    list's items, without empty kinds or values (a row may list one identifier
    twice). ``at`` is each row's event time (naive-UTC microseconds, capped at
    ``now``); ``linking`` marks alias calls with a ``previousId``, which always
    need the rules.
    """

    keys: list[str]
    rows: np.ndarray
    at: np.ndarray
    linking: np.ndarray


def _keys(kind: pa.Array | str, values: pa.Array) -> list[str]:
    """``cache.key`` of each (kind, value), built by Arrow kernels."""
    prefix = f"{len(kind)}:{kind}" if isinstance(kind, str) else _enc(kind)
    keys: list[str] = pc.binary_join_element_wise(prefix, values, "").to_pylist()
    return keys


def row_identifiers(events: pa.Table, now: datetime) -> RowIdentifiers:
    """The flat identifiers of every row of ``events`` (EVENTS columns).

    The same identifiers, per row, as ``tuple_columns`` gives per tuple, built
    with Arrow kernels; the only Python objects are the key strings.
    """
    user_id = _column(events, "user_id")
    anonymous_id = _column(events, "anonymous_id")
    lists = _column(events, "identifiers")
    flat = pc.list_flatten(lists)
    kinds, values = pc.struct_field(flat, "kind"), pc.struct_field(flat, "value")
    keep = np.intersect1d(_present(kinds), _present(values), assume_unique=True)
    parents = pc.list_parent_indices(lists).to_numpy(zero_copy_only=False)
    u_at, a_at = _present(user_id), _present(anonymous_id)
    picked = pa.array(keep)
    keys = _keys(USER_ID, user_id.take(pa.array(u_at)))
    keys += _keys(ANONYMOUS_ID, anonymous_id.take(pa.array(a_at)))
    keys += _keys(kinds.take(picked), values.take(picked))
    rows = np.concatenate([u_at, a_at, parents[keep].astype(np.int64)])
    previous = _column(events, "previous_id")
    has_previous = pc.fill_null(pc.greater(pc.utf8_length(previous), 0), False)
    is_alias = pc.fill_null(pc.equal(_column(events, "type"), "alias"), False)
    linking = pc.and_(is_alias, has_previous).to_numpy(zero_copy_only=False)
    return RowIdentifiers(keys, rows, _capped_micros(events, now), linking)


def _codes(values: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, int]:
    """Dense codes of ``values`` (0 for null, 1.. per distinct value) and how many there are."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    encoded = pc.dictionary_encode(values)
    codes = pc.fill_null(encoded.indices, -1).to_numpy(zero_copy_only=False).astype(np.int64)
    return codes + 1, len(encoded.dictionary) + 1


_CODE_LIMIT: Final = 1 << 62


def _pair(a: np.ndarray, na: int, b: np.ndarray, nb: int) -> tuple[np.ndarray, int]:
    """One code per (a, b) pair, injective; renumbered densely when the product would overflow."""
    if na * nb < _CODE_LIMIT:
        return a * nb + b, na * nb
    da, a = np.unique(a, return_inverse=True)
    db, b = np.unique(b, return_inverse=True)
    return _pair(a.astype(np.int64), len(da), b.astype(np.int64), len(db))


def tuple_columns(events: pa.Table, now: datetime) -> TupleColumns:
    """Distinct identity tuples of ``events`` (EVENTS columns), first occurrence first.

    Event times later than ``now`` (a client with a wrong clock) are read as
    ``now``. Rows without any identifier get a tuple with no identifiers.

    A row's tuple is the combination of four dense codes (user id, anonymous id,
    alias ``previousId``, identifier list; null and empty lists alike), so only
    the rows with a non-empty list build a string key.
    """
    # Chunked as they come: a whole-column copy costs more than the kernels below.
    user_id = events.column("user_id")
    anonymous_id = events.column("anonymous_id")
    is_alias = pc.fill_null(pc.equal(events.column("type"), "alias"), False)
    previous_id = pc.if_else(is_alias, events.column("previous_id"), pa.scalar(None, pa.string()))
    identifiers = events.column("identifiers")
    listed = np.flatnonzero(
        pc.fill_null(pc.greater(pc.list_value_length(identifiers), 0), False).to_numpy(
            zero_copy_only=False
        )
    )
    list_code = np.zeros(events.num_rows, dtype=np.int64)
    n_lists = 1
    if len(listed):
        some = identifiers.take(pa.array(listed)).combine_chunks()
        codes, n_lists = _codes(_identifiers_key(some))
        list_code[listed] = codes
    key, size = _pair(*_codes(user_id), *_codes(anonymous_id))
    if pc.any(is_alias).as_py():  # else every previous_id code is 0: the key stays
        key, size = _pair(key, size, *_codes(previous_id))
    key, size = _pair(key, size, list_code, n_lists)
    micros = _capped_micros(events, now)
    # Tuples are numbered in time order of their first event, ties in input order:
    # by (earliest time, earliest row at that time), found per tuple with no sort
    # of the rows (the same numbers as a stable sort of the rows by time would give).
    found = pc.dictionary_encode(pa.array(key))
    seen = found.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    n = len(found.dictionary)
    big = np.iinfo(np.int64).max
    earliest = np.full(n, big, dtype=np.int64)
    np.minimum.at(earliest, seen, micros)
    latest = np.full(n, np.iinfo(np.int64).min, dtype=np.int64)
    np.maximum.at(latest, seen, micros)
    at_earliest = np.flatnonzero(micros == earliest[seen])
    first_row = np.full(n, big, dtype=np.int64)
    np.minimum.at(first_row, seen[at_earliest], at_earliest)
    # lexsort((first_row, earliest)), cheaper: the tuples by first row (distinct row
    # numbers: a scatter, no sort), then a stable sort by time.
    by_row = np.full(len(micros), -1, dtype=np.int64)
    by_row[first_row] = np.arange(n, dtype=np.int64)
    by_row = by_row[by_row >= 0]
    in_time = by_row[np.argsort(earliest[by_row], kind="stable")]
    number = np.empty(n, dtype=np.int64)
    number[in_time] = np.arange(n, dtype=np.int64)
    codes = number[seen]
    firsts = pa.array(first_row[in_time])
    first_at = earliest[in_time]
    last_at = latest[in_time]

    # Flat identifier rows: user id (position 0), anonymous id (1), list items (2 + i).
    users = user_id.take(firsts).combine_chunks()
    anons = anonymous_id.take(firsts).combine_chunks()
    lists = identifiers.take(firsts).combine_chunks()
    parents = pc.list_parent_indices(lists).to_numpy(zero_copy_only=False).astype(np.int64)
    flat = pc.list_flatten(lists)
    kinds, values = pc.struct_field(flat, "kind"), pc.struct_field(flat, "value")
    keep = np.intersect1d(_present(kinds), _present(values), assume_unique=True)
    u_at, a_at = _present(users), _present(anons)
    tup = np.concatenate([u_at, a_at, parents[keep]])
    # By tuple, each tuple's identifiers in Observation order: user id, anonymous id,
    # list items. Each of the three parts is in tuple order and, within a tuple, the
    # items in list order, so a stable sort by tuple alone gives that order (three
    # sorted runs: one merge).
    ranked = np.argsort(tup, kind="stable")
    tup = tup[ranked]
    # Each column gathered once, from its parts laid end to end.
    n_users, n_anons = len(users), len(anons)
    kind_source = pa.concat_arrays(
        [pa.array([USER_ID, ANONYMOUS_ID], pa.string()), kinds.cast(pa.string())]
    )
    kind_at = np.concatenate(
        [np.zeros(len(u_at), np.int64), np.ones(len(a_at), np.int64), 2 + keep]
    )
    kind_col = kind_source.take(pa.array(kind_at[ranked]))
    value_source = pa.concat_arrays(
        [users.cast(pa.string()), anons.cast(pa.string()), values.cast(pa.string())]
    )
    value_at = np.concatenate([u_at, n_users + a_at, n_users + n_anons + keep])
    value_col = value_source.take(pa.array(value_at[ranked]))
    # The same identifier twice in one tuple (only a list item can repeat one): keep
    # its first position.
    with_list = np.zeros(n, dtype=bool)
    with_list[parents[keep]] = True
    rows = np.flatnonzero(with_list[tup])
    if len(rows):
        at = pa.array(rows)
        ident = (
            pc.dictionary_encode(
                pc.binary_join_element_wise(_enc(kind_col.take(at)), _enc(value_col.take(at)), "")
            )
            .indices.to_numpy(zero_copy_only=False)
            .astype(np.int64)
        )
        _, unique_at = np.unique(
            tup[rows] * (int(ident.max(initial=0)) + 1) + ident, return_index=True
        )
        if len(unique_at) < len(rows):
            kept = np.ones(len(tup), dtype=bool)
            kept[rows] = False
            kept[rows[unique_at]] = True
            unique = np.flatnonzero(kept)
            tup = tup[unique]
            kind_col, value_col = kind_col.take(pa.array(unique)), value_col.take(pa.array(unique))
    return TupleColumns(
        n=n,
        codes=pa.array(codes),
        first_at=first_at,
        last_at=last_at,
        previous_id=previous_id.take(firsts).combine_chunks(),
        flat_tuple=tup,
        flat_kind=kind_col,
        flat_value=value_col,
        first_rows=firsts,
        events=events,
    )


def _aware_micros(micros: np.ndarray) -> list[datetime]:
    naive = micros.astype("datetime64[us]").tolist()
    return [at.replace(tzinfo=UTC) for at in naive]


def observations(cols: TupleColumns, which: np.ndarray) -> list[Observation]:
    """``Observation`` s of the tuples ``which`` (ascending tuple numbers)."""
    if len(which) == 0:
        return []
    starts = np.searchsorted(cols.flat_tuple, which, side="left")
    ends = np.searchsorted(cols.flat_tuple, which, side="right")
    rows = (
        np.concatenate(
            [np.arange(s, e) for s, e in zip(starts.tolist(), ends.tolist(), strict=True)]
        )
        if len(which)
        else np.zeros(0, np.int64)
    )
    take = pa.array(rows.astype(np.int64))
    pairs = list(
        zip(
            cols.flat_kind.take(take).to_pylist(),
            cols.flat_value.take(take).to_pylist(),
            strict=True,
        )
    )
    counts = (ends - starts).tolist()
    picked = pa.array(which)
    out: list[Observation] = []
    append = out.append
    at = 0
    for count, first, last, message_id, type_, previous in zip(
        counts,
        _aware_micros(cols.first_at[which]),
        _aware_micros(cols.last_at[which]),
        cols.message_ids(which).to_pylist(),
        cols.event_types(which).to_pylist(),
        cols.previous_id.take(picked).to_pylist(),
        strict=True,
    ):
        # Positional: this runs once per distinct tuple that needs the rules.
        append(
            Observation(
                tuple(pairs[at : at + count]), first, last, message_id, type_, previous or None
            )
        )
        at += count
    return out


def collapse(events: pa.Table, now: datetime) -> Tuples:
    """Distinct identity tuples of ``events`` (EVENTS columns), first occurrence first.

    Event times later than ``now`` (a client with a wrong clock) are read as
    ``now``. Rows without any identifier get a tuple with no identifiers.
    """
    cols = tuple_columns(events, now)
    return Tuples(observations(cols, np.arange(cols.n)), cols.codes)
