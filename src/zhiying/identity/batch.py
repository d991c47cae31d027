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

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from zhiying.identity.identifiers import ANONYMOUS_ID, USER_ID
from zhiying.identity.resolver import Ident, Observation

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


def _aware(stamps: pa.Array | pa.ChunkedArray) -> list[datetime]:
    """Aware UTC datetimes from naive UTC timestamps (NumPy's conversion is the fast one)."""
    naive = np.asarray(stamps.to_numpy(), dtype="datetime64[us]").tolist()
    return [at.replace(tzinfo=UTC) for at in naive]


def _column(events: pa.Table, name: str) -> pa.Array:
    return events.column(name).combine_chunks()


def collapse(events: pa.Table, now: datetime) -> Tuples:
    """Distinct identity tuples of ``events`` (EVENTS columns), first occurrence first.

    Event times later than ``now`` (a client with a wrong clock) are read as
    ``now``. Rows without any identifier get a tuple with no identifiers.
    """
    user_id = _column(events, "user_id")
    anonymous_id = _column(events, "anonymous_id")
    is_alias = pc.fill_null(pc.equal(_column(events, "type"), "alias"), False)
    previous_id = pc.if_else(is_alias, _column(events, "previous_id"), pa.scalar(None, pa.string()))
    identifiers = _column(events, "identifiers")
    key = pc.binary_join_element_wise(
        _enc(user_id), _enc(anonymous_id), _enc(previous_id), _identifiers_key(identifiers), ""
    )
    cap = pa.scalar(now.astimezone(UTC).replace(tzinfo=None), _TS)
    stamps = pc.min_element_wise(pc.cast(_column(events, "timestamp"), _TS), cap)
    # Rows in time order (stable: ties keep input order); dictionary codes are
    # handed out in order of first appearance, so code order is time order.
    order = pc.sort_indices(stamps).to_numpy()
    sorted_codes = (
        pc.dictionary_encode(key.take(order))
        .indices.to_numpy(zero_copy_only=False)
        .astype(np.int64)
    )
    _, first_pos = np.unique(sorted_codes, return_index=True)
    firsts = pa.array(order[first_pos])
    sorted_stamps = stamps.take(order)
    first_ts = _aware(sorted_stamps.take(pa.array(first_pos)))
    last_ts = (
        pa.table({"code": sorted_codes, "ts": sorted_stamps})
        .group_by("code", use_threads=False)
        .aggregate([("ts", "max")])
        .sort_by("code")
        .column("ts_max")
    )
    last_ts = _aware(last_ts)
    codes = np.empty(events.num_rows, dtype=np.int64)
    codes[order] = sorted_codes
    user_ids = user_id.take(firsts).to_pylist()
    anonymous_ids = anonymous_id.take(firsts).to_pylist()
    previous_ids = previous_id.take(firsts).to_pylist()
    message_ids = _column(events, "message_id").take(firsts).to_pylist()
    types = _column(events, "type").take(firsts).to_pylist()
    # Identifier lists as flat (kind, value) pairs plus offsets: no dict per element.
    lists = identifiers.take(firsts)
    ends = np.cumsum(pc.fill_null(pc.list_value_length(lists), 0).to_numpy(zero_copy_only=False))
    flat = pc.list_flatten(lists)
    pairs = list(
        zip(
            pc.struct_field(flat, "kind").to_pylist(),
            pc.struct_field(flat, "value").to_pylist(),
            strict=True,
        )
    )

    observations: list[Observation] = []
    append = observations.append
    start = 0
    for user, anonymous, end, first, last, message_id, type_, previous in zip(
        user_ids,
        anonymous_ids,
        ends.tolist(),
        first_ts,
        last_ts,
        message_ids,
        types,
        previous_ids,
        strict=True,
    ):
        idents: list[Ident] = []
        if user:
            idents.append((USER_ID, user))
        if anonymous:
            idents.append((ANONYMOUS_ID, anonymous))
        if end > start:
            idents.extend(p for p in pairs[start:end] if p[0] and p[1])
            idents = list(dict.fromkeys(idents))
        start = end
        # Positional: this runs once per distinct tuple of every batch.
        append(Observation(tuple(idents), first, last, message_id, type_, previous or None))
    return Tuples(observations=observations, codes=pa.array(codes))
