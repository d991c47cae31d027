"""The coupon ledger: one row per state transition, and its export as warehouse events.

The ledger row is written in the same transaction as the state change, keyed by
``(code, seq)`` where ``seq`` is the coupon's version after the change, so a
transition can never be recorded twice. The ledger is also the outbox of the
warehouse: rows start ``published = false``; ``publish_pending`` appends them to the
event table as ``track`` events (``Coupon Issued`` …) with the message id
``coupon:<code>:<seq>`` and then marks them published. If the warehouse write fails the
rows stay pending and the next call retries; a row appended twice (crash between the
warehouse write and the mark) is dropped by the event table's message-id dedup.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import sqlalchemy as sa
from sqlalchemy import Connection, Engine

from zhiying.clock import naive_utc
from zhiying.coupons.bulk import bulk_insert
from zhiying.store.tables import coupon_ledger, coupon_templates
from zhiying.warehouse.base import Warehouse
from zhiying.warehouse.events import append_events
from zhiying.warehouse.schema import EVENTS, TS

EVENT_NAMES: dict[str, str] = {
    "issued": "Coupon Issued",
    "locked": "Coupon Locked",
    "redeemed": "Coupon Redeemed",
    "released": "Coupon Released",
    "expired": "Coupon Expired",
    "refunded": "Coupon Refunded",
    # A partial refund is a refund too; ``action`` and ``lines`` tell it apart.
    "partially_refunded": "Coupon Refunded",
    "voided": "Coupon Voided",
}
PUBLISH_PAGE = 100_000


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    """One transition of one coupon. ``amount`` is minor units: the face value for
    ``issued``/``expired``/``voided``, the discount for ``locked``/``redeemed``/``refunded``,
    the discount clawed back for ``partially_refunded`` (whose ``lines`` are the refunded
    line ids)."""

    code: str
    seq: int
    template_id: str
    one_id: str
    action: str
    from_state: str | None
    to_state: str
    at: datetime
    order_id: str | None = None
    amount: int | None = None
    reason: str = ""
    request_key: str | None = None
    batch_id: str | None = None
    lines: tuple[str, ...] | None = None

    def row(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "seq": self.seq,
            "template_id": self.template_id,
            "one_id": self.one_id,
            "action": self.action,
            "from_state": self.from_state,
            "to_state": self.to_state,
            "at": self.at,
            "order_id": self.order_id,
            "amount": self.amount,
            "reason": self.reason,
            "request_key": self.request_key,
            "batch_id": self.batch_id,
            "lines": list(self.lines) if self.lines is not None else None,
            "published": False,
        }


# Statements built once: SQLAlchemy then reuses their cache keys and compiled forms.
_INSERT = coupon_ledger.insert()
COLUMNS = (
    "code", "seq", "template_id", "one_id", "action", "from_state", "to_state", "at",
    "order_id", "amount", "reason", "request_key", "batch_id", "published",
)  # fmt: skip


def record(conn: Connection, entries: Sequence[LedgerEntry]) -> None:
    """Insert ledger rows in the caller's transaction (one ``executemany``)."""
    if len(entries) > 100:
        bulk_insert(
            conn,
            coupon_ledger,
            COLUMNS,
            [
                (e.code, e.seq, e.template_id, e.one_id, e.action, e.from_state, e.to_state,
                 e.at, e.order_id, e.amount, e.reason, e.request_key, e.batch_id, False)
                for e in entries
            ],
        )  # fmt: skip
    elif entries:
        conn.execute(_INSERT, [e.row() for e in entries])


def history(conn: Connection, code: str) -> list[LedgerEntry]:
    """Every transition of coupon ``code``, oldest first."""
    rows = conn.execute(
        sa.select(coupon_ledger).where(coupon_ledger.c.code == code).order_by(coupon_ledger.c.seq)
    ).mappings()
    return [_entry(r) for r in rows]


def _entry(r: Any) -> LedgerEntry:
    return LedgerEntry(
        code=r["code"],
        seq=r["seq"],
        template_id=r["template_id"],
        one_id=r["one_id"],
        action=r["action"],
        from_state=r["from_state"],
        to_state=r["to_state"],
        at=r["at"],
        order_id=r["order_id"],
        amount=r["amount"],
        reason=r["reason"],
        request_key=r["request_key"],
        batch_id=r["batch_id"],
        lines=tuple(r["lines"]) if r["lines"] is not None else None,
    )


def events_table(
    entries: Iterable[LedgerEntry], templates: dict[str, tuple[str, str]], received_at: datetime
) -> pa.Table:
    """Ledger entries as ``EVENTS`` rows (pure). ``templates`` maps id → (name, benefit kind).

    Properties follow Segment's coupon events (``coupon_id``, ``coupon_name``,
    ``order_id``) plus ``template_id``, ``benefit``, ``action``, ``from_state``,
    ``to_state``, ``reason`` and money as integers in minor units (``face_value_minor``
    or ``discount_minor``); a partial refund adds ``lines`` (the refunded line ids).
    """
    recv = naive_utc(received_at)
    cols: dict[str, list[Any]] = {
        n: [] for n in ("message_id", "event", "one_id", "timestamp", "order_id", "coupon")
    }
    props_col: list[str] = []
    # A batch repeats everything but the code: serialise the rest once per shape.
    shapes: dict[tuple[Any, ...], str] = {}
    times: dict[datetime, datetime] = {}
    for e in entries:
        shape = (
            e.template_id, e.action, e.from_state, e.to_state, e.order_id, e.amount, e.reason,
            e.lines,
        )  # fmt: skip
        tail = shapes.get(shape)
        if tail is None:
            name, kind = templates.get(e.template_id, ("", ""))
            props: dict[str, Any] = {
                "coupon_name": name,
                "template_id": e.template_id,
                "benefit": kind,
                "action": e.action,
                "from_state": e.from_state,
                "to_state": e.to_state,
            }
            if e.order_id:
                props["order_id"] = e.order_id
            if e.amount is not None:
                face = e.action in ("issued", "expired") or (
                    e.action == "voided" and e.from_state != "redeemed"
                )
                props["face_value_minor" if face else "discount_minor"] = e.amount
            if e.reason:
                props["reason"] = e.reason
            if e.lines is not None:
                props["lines"] = list(e.lines)
            tail = shapes[shape] = orjson.dumps(props).decode()[1:]
        at = times.get(e.at)
        if at is None:
            at = times[e.at] = naive_utc(e.at)
        cols["message_id"].append(f"coupon:{e.code}:{e.seq}")
        cols["event"].append(EVENT_NAMES[e.action])
        cols["one_id"].append(e.one_id)
        cols["timestamp"].append(at)
        cols["order_id"].append(e.order_id)
        cols["coupon"].append(e.code)
        props_col.append(f'{{"coupon_id":"{e.code}",{tail}')
    cols["properties"] = props_col
    n = len(cols["message_id"])
    data: dict[str, Any] = dict(cols)
    data["type"] = ["track"] * n
    data["received_at"] = [recv] * n
    data["source"] = ["coupons"] * n
    data["channel"] = ["server"] * n
    arrays = []
    for f in EVENTS:
        if f.name in data:
            arrays.append(pa.array(data[f.name], f.type))
        else:
            arrays.append(pa.nulls(n, f.type))
    return pa.Table.from_arrays(arrays, schema=EVENTS)


def issued_events_table(
    codes: Sequence[str],
    one_ids: Sequence[str],
    template_id: str,
    template: tuple[str, str],
    face_value: int | None,
    at: datetime,
    received_at: datetime,
) -> pa.Table:
    """``Coupon Issued`` events of a batch, built column by column (pure).

    The same rows ``events_table`` makes from the batch's ledger entries (action
    ``issued``, seq 1, reason ``batch``), without a Python object per coupon.
    """
    n = len(codes)
    name, kind = template
    props: dict[str, Any] = {
        "coupon_name": name,
        "template_id": template_id,
        "benefit": kind,
        "action": "issued",
        "from_state": None,
        "to_state": "issued",
    }
    if face_value is not None:
        props["face_value_minor"] = face_value
    props["reason"] = "batch"
    tail = '",' + orjson.dumps(props).decode()[1:]
    code_arr = pa.array(codes, pa.string())

    def around(before: str, after: str) -> pa.Array:
        return pc.binary_join_element_wise(before, code_arr, after, "")

    data: dict[str, pa.Array] = {
        "message_id": around("coupon:", ":1"),
        "event": pa.repeat("Coupon Issued", n),
        "one_id": pa.array(one_ids, pa.string()),
        "coupon": code_arr,
        "properties": around('{"coupon_id":"', tail),
        "type": pa.repeat("track", n),
        "source": pa.repeat("coupons", n),
        "channel": pa.repeat("server", n),
        "timestamp": pa.repeat(pa.scalar(naive_utc(at), TS), n),
        "received_at": pa.repeat(pa.scalar(naive_utc(received_at), TS), n),
    }
    arrays = []
    for f in EVENTS:
        if f.name in data:
            arrays.append(data[f.name].cast(f.type))
        else:
            arrays.append(pa.nulls(n, f.type))
    return pa.Table.from_arrays(arrays, schema=EVENTS)


def template_names(conn: Connection) -> dict[str, tuple[str, str]]:
    rows = conn.execute(
        sa.select(coupon_templates.c.template_id, coupon_templates.c.name, coupon_templates.c.kind)
    )
    return {r.template_id: (r.name, r.kind) for r in rows}


# One publisher at a time per process: correctness does not depend on it (message-id
# dedup), it only keeps two threads from exporting the same rows.
_publish_lock = threading.Lock()


@dataclass(frozen=True)
class PublishResult:
    published: int
    written: int  # rows the warehouse stored (the rest were already there)


def write_events(
    warehouse: Warehouse,
    entries: Sequence[LedgerEntry],
    templates: dict[str, tuple[str, str]],
    now: datetime,
    dedup_days: int = 7,
) -> int:
    """Append ``entries`` to the warehouse event table; returns rows written."""
    if not entries:
        return 0
    table = events_table(entries, templates, now)
    return append_events(warehouse, table, now - timedelta(days=dedup_days))


def publish_pending(
    engine: Engine,
    warehouse: Warehouse,
    now: datetime,
    *,
    page: int = PUBLISH_PAGE,
    dedup_days: int = 7,
) -> PublishResult:
    """Export every unpublished ledger row to the warehouse (one write per ``page`` rows)."""
    published = written = 0
    with _publish_lock:
        while True:
            with engine.connect() as conn:
                rows = conn.execute(
                    sa.select(coupon_ledger)
                    .where(coupon_ledger.c.published == sa.false())
                    .limit(page)
                ).mappings()
                entries = [_entry(r) for r in rows]
                if not entries:
                    break
                templates = template_names(conn)
            written += write_events(warehouse, entries, templates, now, dedup_days)
            with engine.begin() as conn:
                conn.execute(
                    coupon_ledger.update()
                    .where(
                        coupon_ledger.c.code == sa.bindparam("b_code"),
                        coupon_ledger.c.seq == sa.bindparam("b_seq"),
                    )
                    .values(published=True),
                    [{"b_code": e.code, "b_seq": e.seq} for e in entries],
                )
            published += len(entries)
            if len(entries) < page:
                break
    return PublishResult(published, written)


def mark_batch_published(conn: Connection, batch_ids: Sequence[str]) -> None:
    """Mark every ledger row of ``batch_ids`` published (after their events were written)."""
    for start in range(0, len(batch_ids), 500):
        conn.execute(
            coupon_ledger.update()
            .where(
                coupon_ledger.c.published == sa.false(),
                coupon_ledger.c.batch_id.in_(batch_ids[start : start + 500]),
            )
            .values(published=True)
        )
