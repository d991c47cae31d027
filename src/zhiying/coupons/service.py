"""Coupon transactions: templates, issuance, lock → redeem → release/refund, expiry, wallet.

Every state change is one transaction in the operational store that (1) changes the
coupon's row only if it is still in the state the change starts from (row lock +
``version`` check), (2) adjusts the template's counters with a conditional UPDATE
guarded by CHECK constraints (quantity, budget), and (3) writes a ledger row keyed by
``(code, seq)``. Concurrency correctness comes from the database, never from Python
locks:

* SQLite: each write transaction starts with ``BEGIN IMMEDIATE``, so it holds the
  database's write lock before it reads anything it decides on.
* PostgreSQL: rows are read ``FOR UPDATE`` (coupons first, ordered by code, then
  templates), so two transactions touching one coupon or one template's counters
  serialise; claims and redemptions of one template queue on its row, which makes
  per-user and per-identifier counts exact.

Externally triggered writes are idempotent: issuance by ``issuance_key`` (unique per
template), lock/redeem/release/refund by an optional ``idempotency_key`` whose first
successful answer is stored and returned again for a replay. A refusal is not stored:
it changed nothing, so a replay evaluates it again.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any, Literal, TypeVar

import numpy as np
import orjson
import pyarrow as pa
import sqlalchemy as sa
from pydantic import BaseModel
from sqlalchemy import Connection, Engine
from sqlalchemy.exc import IntegrityError, OperationalError

from zhiying.coupons import abuse
from zhiying.coupons.bulk import Same, insert_columns
from zhiying.coupons.ledger import COLUMNS as LEDGER_COLUMNS
from zhiying.coupons.ledger import (
    PUBLISH_PAGE,
    LedgerEntry,
    issued_events_table,
    mark_batch_published,
    record,
    template_names,
)
from zhiying.coupons.models import (
    Candidate,
    Cart,
    RequestContext,
    Template,
    TemplateSpec,
    identity_hash,
)
from zhiying.coupons.pricing import Quote, price_combination, quote
from zhiying.errors import Conflict, NotFound, ValidationFailed, ZhiyingError
from zhiying.store.tables import (
    coupon_blocks,
    coupon_ledger,
    coupon_requests,
    coupon_templates,
    coupons,
)
from zhiying.warehouse.base import Warehouse
from zhiying.warehouse.events import append_events

# --- errors ------------------------------------------------------------------------------


class CouponConflict(Conflict):
    """The coupon is not in a state that allows the operation (already redeemed, locked …)."""

    code = "coupon_conflict"


class LimitReached(Conflict):
    """A quantity, budget or per-user limit would be exceeded; ``rule`` names it."""

    code = "coupon_limit"


class CouponNotApplicable(ValidationFailed):
    """Pricing refused the coupon for this cart; ``rule`` and the message say why."""

    code = "coupon_not_applicable"


# --- results ------------------------------------------------------------------------------


class CouponView(BaseModel):
    """One coupon as its owner and the operator see it (money in minor units)."""

    code: str
    template_id: str
    template_name: str = ""
    one_id: str
    state: str
    face_value: int | None
    issued_at: datetime
    valid_from: datetime
    valid_until: datetime
    order_id: str | None = None
    lock_expires_at: datetime | None = None
    discount: int | None = None
    redeemed_at: datetime | None = None


class Issued(BaseModel):
    coupon: CouponView
    created: bool  # False: the issuance key had already issued this coupon


class CouponDiscount(BaseModel):
    """A coupon's discount on an order and where it lands: ``lines`` maps line id →
    minor units, ``shipping`` is the part that waived shipping."""

    code: str
    template_id: str
    discount: int
    lines: dict[str, int]
    shipping: int


class LockResult(BaseModel):
    order_id: str
    one_id: str
    coupons: list[CouponDiscount]
    total_discount: int
    payable: int
    expires_at: datetime


class RedeemResult(BaseModel):
    order_id: str
    one_id: str
    coupons: list[CouponDiscount]
    total_discount: int
    redeemed_at: datetime


class ReleaseResult(BaseModel):
    order_id: str
    released: list[str]


class RefundResult(BaseModel):
    """``clawed_back`` maps code → discount given back (minor units); a partial refund's
    coupons that stay redeemed are listed in ``partially_refunded``."""

    order_id: str
    restored: list[str]
    voided: list[str]
    discount_returned: int
    partially_refunded: list[str] = []
    clawed_back: dict[str, int] = {}


@dataclass(frozen=True)
class BatchResult:
    """Outcome of ``issue_batch``. ``stopped_by`` is ``quantity`` or ``budget`` when the
    template ran out before every person got a coupon."""

    batch_key: str
    requested: int
    issued: int
    already_issued: int
    over_user_limit: int
    blocked: int
    not_issued: int
    stopped_by: str | None
    events_written: int
    events_pending: int


# --- transactions and small helpers ----------------------------------------------------------


@contextmanager
def write_tx(engine: Engine) -> Iterator[Connection]:
    """A write transaction that holds the write lock before its first read on SQLite."""
    with engine.begin() as conn:
        if conn.dialect.name == "sqlite":
            _begin_immediate(conn)
        yield conn


def _begin_immediate(conn: Connection, patience: float = 300.0) -> None:
    # SQLite's busy handler is not fair: with many writers one can wait past
    # busy_timeout while others keep winning the lock. A failed BEGIN did nothing,
    # so asking again is safe.
    deadline = time.monotonic() + patience
    while True:
        try:
            conn.exec_driver_sql("BEGIN IMMEDIATE")
            return
        except OperationalError as exc:
            if "locked" not in str(exc.orig) or time.monotonic() > deadline:
                raise


_B32 = np.frombuffer(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", dtype=np.uint8)
_BYTE_SHIFTS = np.array([32, 24, 16, 8, 0], dtype=np.uint64)
_CHAR_SHIFTS = np.array([35, 30, 25, 20, 15, 10, 5, 0], dtype=np.uint64)


def new_codes(n: int) -> list[str]:
    """``n`` unguessable codes: 80 random bits each from ``secrets``, 16 base32 characters
    (RFC 4648 alphabet; the same text as ``base64.b32encode`` of the 10 bytes), encoded
    for all ``n`` at once."""
    if n <= 0:
        return []
    # every 5 bytes are one 40-bit number, written as 8 characters of 5 bits
    raw = np.frombuffer(secrets.token_bytes(10 * n), dtype=np.uint8).reshape(2 * n, 5)
    v = raw.astype(np.uint64) << _BYTE_SHIFTS
    v = np.bitwise_or.reduce(v, axis=1)
    groups = (v[:, None] >> _CHAR_SHIFTS) & np.uint64(31)
    text = _B32[groups].tobytes().decode("ascii")
    return [text[i : i + 16] for i in range(0, 16 * n, 16)]


def _new_id(prefix: str) -> str:
    return prefix + secrets.token_hex(8)


_specs: dict[tuple[str, str], TemplateSpec] = {}


def _spec(conn: Connection, template_id: str, raw: Any) -> TemplateSpec:
    # Specs never change after creation: parse each once per database.
    key = (str(conn.engine.url), template_id)
    spec = _specs.get(key)
    if spec is None:
        spec = TemplateSpec.model_validate(raw)
        _specs[key] = spec
    return spec


def _template(row: Any, spec: TemplateSpec) -> Template:
    return Template(
        template_id=row.template_id,
        spec=spec,
        status=row.status,
        created_at=row.created_at,
        issued_count=row.issued_count,
        budget_committed=row.budget_committed,
        redeemed_count=row.redeemed_count,
        discount_spent=row.discount_spent,
    )


def _view(row: Any, names: dict[str, tuple[str, str]] | None = None) -> CouponView:
    return CouponView(
        code=row.code,
        template_id=row.template_id,
        template_name=(names or {}).get(row.template_id, ("", ""))[0],
        one_id=row.one_id,
        state=row.state,
        face_value=row.face_value,
        issued_at=row.issued_at,
        valid_from=row.valid_from,
        valid_until=row.valid_until,
        order_id=row.order_id,
        lock_expires_at=row.lock_expires_at,
        discount=row.discount,
        redeemed_at=row.redeemed_at,
    )


# --- templates ---------------------------------------------------------------------------------


def create_template(
    engine: Engine, spec: TemplateSpec, now: datetime, template_id: str | None = None
) -> Template:
    """Store a new active template; its spec is immutable from now on (pause it instead)."""
    template_id = template_id or _new_id("tpl_")
    values = {
        "template_id": template_id,
        "name": spec.name,
        "kind": spec.benefit.kind,
        "spec": spec.model_dump(mode="json"),
        "status": "active",
        "face_value": spec.face_value,
        "quantity": spec.limits.quantity,
        "budget": spec.limits.budget,
        "issued_count": 0,
        "budget_committed": 0,
        "redeemed_count": 0,
        "discount_spent": 0,
        "created_at": now,
        "updated_at": now,
    }
    try:
        with engine.begin() as conn:
            conn.execute(coupon_templates.insert().values(**values))
    except IntegrityError as exc:
        raise Conflict(f"template {template_id} exists", field="template_id") from exc
    return Template(template_id=template_id, spec=spec, status="active", created_at=now)


def get_template(engine: Engine, template_id: str) -> Template:
    with engine.connect() as conn:
        row = conn.execute(
            sa.select(coupon_templates).where(coupon_templates.c.template_id == template_id)
        ).first()
        if row is None:
            raise NotFound(f"no coupon template {template_id}", field="template_id")
        return _template(row, _spec(conn, template_id, row.spec))


def list_templates(engine: Engine) -> list[Template]:
    with engine.connect() as conn:
        rows = conn.execute(sa.select(coupon_templates).order_by(coupon_templates.c.created_at))
        return [_template(r, _spec(conn, r.template_id, r.spec)) for r in rows]


def set_template_status(
    engine: Engine, template_id: str, status: Literal["active", "paused", "archived"], now: datetime
) -> Template:
    """Pause or archive a template (stops issuance; issued coupons stay usable)."""
    with engine.begin() as conn:
        n = conn.execute(
            coupon_templates.update()
            .where(coupon_templates.c.template_id == template_id)
            .values(status=status, updated_at=now)
        ).rowcount
    if not n:
        raise NotFound(f"no coupon template {template_id}", field="template_id")
    return get_template(engine, template_id)


def _lock_template(conn: Connection, template_id: str) -> Any:
    row = conn.execute(
        sa.select(coupon_templates)
        .where(coupon_templates.c.template_id == template_id)
        .with_for_update()
    ).first()
    if row is None:
        raise NotFound(f"no coupon template {template_id}", field="template_id")
    return row


def _capacity(tpl: Any, wanted: int, face: int | None) -> tuple[int, str | None]:
    """How many of ``wanted`` coupons the template can still issue, and what stops it."""
    n, stop = wanted, None
    if tpl.quantity is not None and tpl.issued_count + n > tpl.quantity:
        n, stop = max(0, tpl.quantity - tpl.issued_count), "quantity"
    if tpl.budget is not None and face:
        room = max(0, (tpl.budget - tpl.budget_committed) // face)
        if room < n:
            n, stop = room, "budget"
    return n, stop


_t = coupon_templates.c
_TAKE = (
    coupon_templates.update()
    .where(
        _t.template_id == sa.bindparam("b_template_id"),
        _t.status == "active",
        sa.or_(_t.quantity.is_(None), _t.issued_count + sa.bindparam("b_n") <= _t.quantity),
        sa.or_(_t.budget.is_(None), _t.budget_committed + sa.bindparam("b_committed") <= _t.budget),
    )
    .values(
        issued_count=_t.issued_count + sa.bindparam("b_n"),
        budget_committed=_t.budget_committed + sa.bindparam("b_committed"),
        updated_at=sa.bindparam("b_now", type_=_t.updated_at.type),
    )
)
_HELD = sa.select(sa.func.count()).where(
    coupons.c.one_id == sa.bindparam("b_one_id"),
    coupons.c.template_id == sa.bindparam("b_template_id"),
)
_BY_KEY = sa.select(coupons).where(coupons.c.issuance_key == sa.bindparam("b_key"))
_INSERT_COUPON = coupons.insert()
_BATCH_COLUMNS = (
    "code", "template_id", "one_id", "state", "face_value", "issued_at", "valid_from",
    "valid_until", "issuance_key", "batch_id", "version", "updated_at",
)  # fmt: skip


def _take(conn: Connection, template_id: str, n: int, face: int | None, now: datetime) -> None:
    """Count ``n`` issued coupons against quantity and budget, or refuse naming the rule.

    One conditional UPDATE: it takes the template's row lock and can never overshoot
    (the CHECK constraints would refuse even a wrong WHERE).
    """
    t = coupon_templates.c
    params = {"b_template_id": template_id, "b_n": n, "b_committed": n * (face or 0), "b_now": now}
    if conn.execute(_TAKE, params).rowcount == 1:
        return
    tpl = conn.execute(sa.select(coupon_templates).where(t.template_id == template_id)).first()
    if tpl is None:
        raise NotFound(f"no coupon template {template_id}", field="template_id")
    if tpl.status != "active":
        raise CouponConflict(
            f"template {template_id} is {tpl.status}", field="template_id", rule="status"
        )
    raise _refuse_capacity(_capacity(tpl, n, face)[1] or "quantity", tpl)


def _load_spec(conn: Connection, template_id: str) -> TemplateSpec:
    spec = _specs.get((str(conn.engine.url), template_id))
    if spec is not None:
        return spec
    raw = conn.execute(
        sa.select(coupon_templates.c.spec).where(coupon_templates.c.template_id == template_id)
    ).scalar()
    if raw is None:
        raise NotFound(f"no coupon template {template_id}", field="template_id")
    return _spec(conn, template_id, raw)


def _refuse_capacity(stop: str, tpl: Any) -> LimitReached:
    if stop == "quantity":
        return LimitReached(
            f"all {tpl.quantity} coupons of this template are issued",
            field="template_id",
            rule="quantity",
        )
    return LimitReached(
        "the template's face-value budget is used up", field="template_id", rule="budget"
    )


# --- issuance ------------------------------------------------------------------------------------


def _issuance_key(template_id: str, key: str) -> str:
    if len(key) > 150:
        raise ValidationFailed("issuance key longer than 150 characters", field="issuance_key")
    return f"{template_id}/{key}"


def _coupon_row(conn: Connection, **where: Any) -> Any:
    q = sa.select(coupons)
    for name, value in where.items():
        q = q.where(coupons.c[name] == value)
    return conn.execute(q).first()


def issue(
    engine: Engine,
    template_id: str,
    one_id: str,
    now: datetime,
    *,
    issuance_key: str | None = None,
    context: RequestContext | None = None,
    source: Literal["issue", "claim", "trigger"] = "issue",
) -> Issued:
    """Issue one coupon of ``template_id`` to ``one_id`` (a claim when ``source="claim"``).

    Idempotent by ``issuance_key`` (per template): a repeat returns the coupon the first
    call issued with ``created=False``. Refuses with ``LimitReached`` (quantity, budget,
    per_user_claim), ``AbuseRefused`` (block list, identity limits, velocity) or
    ``CouponConflict`` (template not active, window closed).
    """
    key = _issuance_key(template_id, issuance_key) if issuance_key else None
    try:
        with write_tx(engine) as conn:
            if key is not None:
                existing = conn.execute(_BY_KEY, {"b_key": key}).first()
                if existing is not None:
                    return Issued(coupon=_view(existing), created=False)
            spec = _load_spec(conn, template_id)
            window = spec.validity.window(now)
            if window is None:
                raise CouponConflict(
                    "the template's validity window has closed", field="template_id", rule="window"
                )
            # Reads that need no serialisation come before the template's row lock.
            fp = abuse.fingerprint(conn, one_id, context)
            abuse.check_blocks(conn, fp)
            code = new_codes(1)[0]
            row = {
                "code": code,
                "template_id": template_id,
                "one_id": one_id,
                "state": "issued",
                "face_value": spec.face_value,
                "issued_at": now,
                "valid_from": window[0],
                "valid_until": window[1],
                "issuance_key": key,
                "batch_id": None,
                "version": 1,
                "updated_at": now,
            }
            entry = LedgerEntry(
                code,
                1,
                template_id,
                one_id,
                "issued",
                None,
                "issued",
                now,
                amount=spec.face_value,
                reason=source,
                request_key=issuance_key,
            )
            # Rows first, then the template's row lock: the lock is held only for the
            # counter, the limit checks and the commit. The counts below run after the
            # lock is taken, so they see every earlier claim (and include our own row).
            conn.execute(_INSERT_COUPON, row)
            record(conn, [entry])
            _take(conn, template_id, 1, spec.face_value, now)
            limit = spec.limits.per_user_claim
            if limit is not None:
                held = conn.execute(
                    _HELD, {"b_one_id": one_id, "b_template_id": template_id}
                ).scalar_one()
                if held > limit:
                    raise LimitReached(
                        f"at most {limit} coupon(s) of this template per person; "
                        f"this person has {held - 1}",
                        field="one_id",
                        rule="per_user_claim",
                    )
            abuse.check_rules(conn, template_id, spec, "claim", fp, now)
            abuse.write_marks(conn, template_id, "claim", fp, spec, one_id, code, now)
            return Issued(coupon=CouponView(**row, template_name=spec.name), created=True)
    except IntegrityError:
        if key is not None:
            with engine.connect() as conn:
                existing = _coupon_row(conn, issuance_key=key)
            if existing is not None:
                return Issued(coupon=_view(existing), created=False)
        raise


def issue_batch(
    engine: Engine,
    warehouse: Warehouse | None,
    template_id: str,
    one_ids: Iterable[str],
    now: datetime,
    *,
    batch_key: str,
    chunk_size: int = 5000,
    progress: Callable[[int], None] | None = None,
    dedup_days: int = 7,
) -> BatchResult:
    """Issue one coupon of ``template_id`` to each ONE_ID (a segment, a list, a CSV).

    Idempotent by ``batch_key``: each person's issuance key is ``batch_key/one_id``, so
    re-running a batch (after a crash, or twice by mistake) issues only what is missing.
    Works in chunks of ``chunk_size``: one transaction per chunk, rows written with
    ``executemany``, quantity and budget taken once per chunk. Stops when the template's
    quantity or budget runs out (``stopped_by``). ``progress`` is called with the number
    of people processed so far. Events go to ``warehouse`` once per ``PUBLISH_PAGE``
    rows; if that write fails the rows stay in the ledger's outbox (``events_pending``)
    for ``publish_pending``.
    """
    if not batch_key or len(batch_key) > 64 or "/" in batch_key:
        raise ValidationFailed("batch key: 1 to 64 characters, no '/'", field="batch_key")
    seen: set[str] = set()
    requested = issued = already = over_limit = blocked = not_issued = 0
    stopped_by: str | None = None
    run = secrets.token_hex(4)
    pending_tables: list[pa.Table] = []
    pending_rows = 0
    pending_batches: list[str] = []
    fresh = True  # every coupon of the template so far is this run's (checked per chunk)
    written = pending = 0
    publish_failed = False
    names: dict[str, tuple[str, str]] | None = None

    # Events are written by one background thread while the next chunks go to the
    # operational store; a page's ledger rows are marked published (in a later chunk's
    # transaction, or at the end) only once its events are stored.
    writer = ThreadPoolExecutor(1, thread_name_prefix="coupon-events") if warehouse else None
    inflight: deque[tuple[Future[int], list[str], int]] = deque()

    def flush() -> None:
        nonlocal pending, pending_rows
        if not pending_rows:
            return
        if warehouse is None or writer is None or publish_failed:
            pending += pending_rows
        else:
            if len(inflight) >= 2:  # at most two pages in memory
                with engine.begin() as conn:
                    settle(conn, keep=1)
            table = pa.concat_tables(pending_tables)
            since = now - timedelta(days=dedup_days)
            future = writer.submit(append_events, warehouse, table, since)
            inflight.append((future, list(pending_batches), pending_rows))
        pending_tables.clear()
        pending_batches.clear()
        pending_rows = 0

    def settle(conn: Connection, keep: int | None = None) -> None:
        """Mark the pages whose events are written; wait until ``keep`` remain in flight
        (``None``: take only the finished ones)."""
        nonlocal written, pending, publish_failed
        while inflight and (inflight[0][0].done() if keep is None else len(inflight) > keep):
            future, batches, rows = inflight.popleft()
            try:
                written += future.result()
            except Exception:
                # The ledger keeps the rows unpublished: publish_pending retries them.
                publish_failed = True
                pending += rows
                continue
            mark_batch_published(conn, batches)

    with engine.connect() as conn:
        any_blocks = conn.execute(
            sa.select(coupon_blocks.c.kind).where(coupon_blocks.c.kind == "one_id").limit(1)
        ).first()
    try:
        for chunk_no, chunk in enumerate(_chunks(one_ids, chunk_size, seen)):
            requested += len(chunk)
            if stopped_by is not None:
                not_issued += len(chunk)
                continue
            ledger_batch = f"{run}-{chunk_no}"
            with write_tx(engine) as conn:
                if conn.dialect.name == "sqlite":
                    # Random codes land all over the primary-key B-tree: a larger page cache
                    # (256 MiB, this connection only) keeps a million-row batch off the disk.
                    conn.exec_driver_sql("PRAGMA cache_size=-262144")
                tpl = _lock_template(conn, template_id)
                spec = _spec(conn, template_id, tpl.spec)
                if tpl.status != "active":
                    raise CouponConflict(
                        f"template {template_id} is {tpl.status}",
                        field="template_id",
                        rule="status",
                    )
                window = spec.validity.window(now)
                if window is None:
                    raise CouponConflict(
                        "the template's validity window has closed",
                        field="template_id",
                        rule="window",
                    )
                keys = {o: f"{template_id}/{batch_key}/{o}" for o in chunk}
                todo = list(chunk)
                # A fresh template whose only coupons are this run's needs no look-ups: the
                # run never issues twice to one person (``seen``). Any other issuance (a
                # concurrent run, a claim) shows in the counter, taken under the row lock.
                fresh = fresh and tpl.issued_count == issued
                if not fresh:
                    done = set(
                        conn.execute(
                            sa.select(coupons.c.issuance_key).where(
                                coupons.c.issuance_key.in_(list(keys.values()))
                            )
                        ).scalars()
                    )
                    todo = [o for o in todo if keys[o] not in done]
                    already += len(chunk) - len(todo)
                    limit = spec.limits.per_user_claim
                    if limit is not None and todo:
                        held: dict[str, int] = {
                            o: n
                            for o, n in conn.execute(
                                sa.select(coupons.c.one_id, sa.func.count())
                                .where(
                                    coupons.c.template_id == template_id, coupons.c.one_id.in_(todo)
                                )
                                .group_by(coupons.c.one_id)
                            )
                        }
                        kept = [o for o in todo if held.get(o, 0) < limit]
                        over_limit += len(todo) - len(kept)
                        todo = kept
                if any_blocks and todo:
                    hashes = {identity_hash("one_id", o): o for o in todo}
                    bad = set(
                        conn.execute(
                            sa.select(coupon_blocks.c.value_hash).where(
                                coupon_blocks.c.kind == "one_id",
                                coupon_blocks.c.value_hash.in_(list(hashes)),
                            )
                        ).scalars()
                    )
                    blocked += len(bad)
                    todo = [o for o in todo if identity_hash("one_id", o) not in bad]
                n, stop = _capacity(tpl, len(todo), spec.face_value)
                if stop is not None:
                    stopped_by = stop
                    not_issued += len(todo) - n
                    todo = todo[:n]
                if todo:
                    _take(conn, template_id, len(todo), spec.face_value, now)
                    codes = new_codes(len(todo))
                    face = spec.face_value
                    insert_columns(
                        conn,
                        coupons,
                        _BATCH_COLUMNS,
                        [
                            codes, Same(template_id), todo, Same("issued"), Same(face), Same(now),
                            Same(window[0]), Same(window[1]), [keys[o] for o in todo],
                            Same(batch_key), Same(1), Same(now),
                        ],
                    )  # fmt: skip
                    insert_columns(
                        conn,
                        coupon_ledger,
                        LEDGER_COLUMNS,
                        [
                            codes, Same(1), Same(template_id), todo, Same("issued"), Same(None),
                            Same("issued"), Same(now), Same(None), Same(face), Same("batch"),
                            Same(batch_key), Same(ledger_batch), Same(False),
                        ],
                    )  # fmt: skip
                    issued += len(todo)
                settle(conn)
            if todo and warehouse is not None and not publish_failed:
                if names is None:
                    with engine.connect() as conn:
                        names = template_names(conn)
                pending_tables.append(
                    issued_events_table(
                        codes, todo, template_id, names.get(template_id, ("", "")), face, now, now
                    )
                )
            if todo:
                pending_rows += len(todo)
                pending_batches.append(ledger_batch)
                if pending_rows >= PUBLISH_PAGE:
                    flush()
            if progress is not None:
                progress(requested)
        flush()
        if inflight:
            with engine.begin() as conn:
                settle(conn, keep=0)
    finally:
        if writer is not None:
            writer.shutdown(wait=True)
    return BatchResult(
        batch_key=batch_key,
        requested=requested,
        issued=issued,
        already_issued=already,
        over_user_limit=over_limit,
        blocked=blocked,
        not_issued=not_issued,
        stopped_by=stopped_by,
        events_written=written,
        events_pending=pending,
    )


def _chunks(items: Iterable[str], size: int, seen: set[str]) -> Iterator[list[str]]:
    chunk: list[str] = []
    for item in items:
        item = item.strip()
        if not item or item in seen:
            continue
        seen.add(item)
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


# --- idempotent requests --------------------------------------------------------------------------

M = TypeVar("M", bound=BaseModel)


def _idempotent(
    engine: Engine,
    key: str | None,
    operation: str,
    request: dict[str, Any],
    now: datetime,
    model: type[M],
    run: Callable[[Connection], M],
) -> M:
    """Run ``run`` in a write transaction; with ``key``, store its answer and replay it."""
    if key is None:
        with write_tx(engine) as conn:
            return run(conn)
    if len(key) > 200:
        raise ValidationFailed(
            "idempotency key longer than 200 characters", field="idempotency_key"
        )
    digest = hashlib.sha256(
        orjson.dumps([operation, request], option=orjson.OPT_SORT_KEYS, default=str)
    ).hexdigest()

    def stored(conn: Connection) -> M | None:
        row = conn.execute(
            sa.select(coupon_requests).where(coupon_requests.c.idempotency_key == key)
        ).first()
        if row is None:
            return None
        if row.operation != operation or row.request_hash != digest:
            raise Conflict(
                "this idempotency key was used for a different request",
                field="idempotency_key",
                rule="idempotency_key_reuse",
            )
        return model.model_validate(row.response)

    try:
        with write_tx(engine) as conn:
            first = stored(conn)
            if first is not None:
                return first
            result = run(conn)
            conn.execute(
                coupon_requests.insert().values(
                    idempotency_key=key,
                    operation=operation,
                    request_hash=digest,
                    response=result.model_dump(mode="json"),
                    created_at=now,
                )
            )
            return result
    except (IntegrityError, ZhiyingError):
        # A concurrent request with the same key may have committed first (we then lost
        # the race for the coupon, or for the key's row): answer as it did.
        with engine.connect() as conn:
            first = stored(conn)
        if first is not None:
            return first
        raise


# --- lock, redeem, release, refund ------------------------------------------------------------


def _discounts(applied: Iterable[Any]) -> list[CouponDiscount]:
    return [
        CouponDiscount(
            code=a.code,
            template_id=a.template_id,
            discount=a.discount,
            lines={x.line_id: x.amount for x in a.lines},
            shipping=a.shipping,
        )
        for a in applied
    ]


def _specs_of(conn: Connection, template_ids: Iterable[str]) -> dict[str, TemplateSpec]:
    return {t: _load_spec(conn, t) for t in sorted(set(template_ids))}


# Hot-path statements, built once (SQLAlchemy reuses their cache keys and compiled forms).
_CODES_FOR_UPDATE = (
    sa.select(coupons)
    .where(coupons.c.code.in_(sa.bindparam("b_codes", expanding=True)))
    .order_by(coupons.c.code)
    .with_for_update()
)
_LOCKED_FOR_ORDER = (
    sa.select(coupons)
    .where(coupons.c.order_id == sa.bindparam("b_order_id"), coupons.c.state == "locked")
    .order_by(coupons.c.code)
    .with_for_update()
)
_LOCKED_CODES = sa.select(coupons.c.code).where(
    coupons.c.order_id == sa.bindparam("b_order_id"), coupons.c.state == "locked"
)
_LOCK = (
    coupons.update()
    .where(coupons.c.code == sa.bindparam("b_code"), coupons.c.version == sa.bindparam("b_version"))
    .values(
        state="locked",
        order_id=sa.bindparam("b_order_id"),
        lock_expires_at=sa.bindparam("b_expires", type_=coupons.c.lock_expires_at.type),
        discount=sa.bindparam("b_discount"),
        allocations=sa.bindparam("b_allocations", type_=coupons.c.allocations.type),
        version=sa.bindparam("b_seq"),
        updated_at=sa.bindparam("b_now", type_=coupons.c.updated_at.type),
    )
)
_USED = sa.select(sa.func.count()).where(
    coupons.c.one_id == sa.bindparam("b_one_id"),
    coupons.c.template_id == sa.bindparam("b_template_id"),
    coupons.c.state == "redeemed",
)


def _lock_in_tx(
    conn: Connection,
    *,
    order_id: str,
    one_id: str,
    codes: Sequence[str],
    cart: Cart,
    now: datetime,
    context: RequestContext | None,
    request_key: str | None,
) -> LockResult:
    codes = sorted(set(codes))
    if not codes:
        raise ValidationFailed("give at least one coupon code", field="codes")
    rows = conn.execute(_CODES_FOR_UPDATE, {"b_codes": codes}).all()
    found = {r.code: r for r in rows if r.one_id == one_id}
    for code in codes:
        if code not in found:
            raise NotFound(
                f"coupon {code} is not in this person's wallet", field="codes", code=code
            )
    entries: list[LedgerEntry] = []
    seqs: dict[str, int] = {}  # ledger seq before this lock's own entry
    relock: set[str] = set()
    for r in rows:
        seq = r.version
        if r.state == "locked" and r.order_id == order_id:
            relock.add(r.code)
        elif r.state == "locked":
            if r.lock_expires_at is not None and r.lock_expires_at <= now:
                seq += 1
                entries.append(
                    LedgerEntry(
                        r.code,
                        seq,
                        r.template_id,
                        r.one_id,
                        "released",
                        "locked",
                        "issued",
                        now,
                        order_id=r.order_id,
                        amount=r.discount,
                        reason="lock timed out",
                    )
                )
            else:
                raise CouponConflict(
                    f"coupon {r.code} is locked by another order until "
                    f"{r.lock_expires_at:%Y-%m-%d %H:%M:%S} UTC",
                    field="codes",
                    rule="locked",
                    code=r.code,
                )
        elif r.state != "issued":
            raise CouponConflict(
                f"coupon {r.code} is {r.state}", field="codes", rule=r.state, code=r.code
            )
        seqs[r.code] = seq
    version_of = {r.code: r.version for r in rows}
    specs = _specs_of(conn, (r.template_id for r in rows))
    candidates = [
        Candidate(r.code, r.template_id, specs[r.template_id], r.valid_from, r.valid_until)
        for r in rows
    ]
    priced = price_combination(cart, candidates, now)
    if priced.refused:
        why = priced.refused[0]
        raise CouponNotApplicable(
            f"coupon {why.code}: {why.message}",
            field="codes",
            rule=why.rule,
            code=why.code,
            needed=why.needed,
            actual=why.actual,
        )
    fp = abuse.fingerprint(conn, one_id, context)
    abuse.check_blocks(conn, fp)
    for template_id, spec in specs.items():
        _check_per_user_use(
            conn, template_id, spec, one_id, sum(1 for r in rows if r.template_id == template_id)
        )
        abuse.check_rules(conn, template_id, spec, "redeem", fp, now)
    ttl = min(specs[r.template_id].lock_ttl_seconds for r in rows)
    expires = now + timedelta(seconds=ttl)
    for a in priced.applied:
        seq = seqs[a.code] + 1
        allocations = {"lines": {x.line_id: x.amount for x in a.lines}, "shipping": a.shipping}
        params = {
            "b_code": a.code,
            "b_version": version_of[a.code],
            "b_order_id": order_id,
            "b_expires": expires,
            "b_discount": a.discount,
            "b_allocations": allocations,
            "b_seq": seq,
            "b_now": now,
        }
        n = conn.execute(_LOCK, params).rowcount
        if n != 1:
            raise CouponConflict(
                f"coupon {a.code} changed meanwhile", field="codes", rule="version"
            )
        before = "locked" if a.code in relock else "issued"
        entries.append(
            LedgerEntry(
                a.code,
                seq,
                a.template_id,
                one_id,
                "locked",
                before,
                "locked",
                now,
                order_id=order_id,
                amount=a.discount,
                request_key=request_key,
            )
        )
    record(conn, entries)
    return LockResult(
        order_id=order_id,
        one_id=one_id,
        coupons=_discounts(priced.applied),
        total_discount=priced.total_discount,
        payable=priced.payable,
        expires_at=expires,
    )


def _check_per_user_use(
    conn: Connection, template_id: str, spec: TemplateSpec, one_id: str, adding: int
) -> None:
    limit = spec.limits.per_user_use
    if limit is None:
        return
    used = conn.execute(_USED, {"b_one_id": one_id, "b_template_id": template_id}).scalar_one()
    if used + adding > limit:
        raise LimitReached(
            f"at most {limit} use(s) of this template per person; this would be use "
            f"number {used + adding}",
            field="one_id",
            rule="per_user_use",
        )


_REDEEM = (
    coupons.update()
    .where(coupons.c.code == sa.bindparam("b_code"), coupons.c.version == sa.bindparam("b_version"))
    .values(
        state="redeemed",
        redeemed_at=sa.bindparam("b_now", type_=coupons.c.redeemed_at.type),
        version=coupons.c.version + 1,
        updated_at=sa.bindparam("b_now", type_=coupons.c.updated_at.type),
    )
)
_COUNT_REDEMPTION = (
    coupon_templates.update()
    .where(_t.template_id == sa.bindparam("b_template_id"))
    .values(
        redeemed_count=_t.redeemed_count + sa.bindparam("b_n"),
        discount_spent=_t.discount_spent + sa.bindparam("b_discount"),
        updated_at=sa.bindparam("b_now", type_=_t.updated_at.type),
    )
)


def _redeem_in_tx(
    conn: Connection,
    *,
    order_id: str,
    now: datetime,
    context: RequestContext | None,
    request_key: str | None,
) -> RedeemResult:
    rows = conn.execute(_LOCKED_FOR_ORDER, {"b_order_id": order_id}).all()
    if not rows:
        done = conn.execute(
            sa.select(coupons.c.code).where(
                coupons.c.order_id == order_id, coupons.c.state == "redeemed"
            )
        ).first()
        if done is not None:
            raise CouponConflict(
                f"order {order_id} is already redeemed", field="order_id", rule="redeemed"
            )
        raise NotFound(f"no coupon is locked for order {order_id}", field="order_id")
    one_id = rows[0].one_id
    specs = _specs_of(conn, (r.template_id for r in rows))
    fp = abuse.fingerprint(conn, one_id, context)
    abuse.check_blocks(conn, fp)
    entries = []
    for r in rows:
        n = conn.execute(_REDEEM, {"b_code": r.code, "b_version": r.version, "b_now": now}).rowcount
        if n != 1:
            raise CouponConflict(
                f"coupon {r.code} changed meanwhile", field="order_id", rule="version"
            )
        entries.append(
            LedgerEntry(
                r.code,
                r.version + 1,
                r.template_id,
                one_id,
                "redeemed",
                "locked",
                "redeemed",
                now,
                order_id=order_id,
                amount=r.discount,
                request_key=request_key,
            )
        )
    record(conn, entries)
    for template_id in sorted(specs):
        mine = [r for r in rows if r.template_id == template_id]
        # Locks the template's row: redemptions of one template queue here, so the
        # per-user and per-identifier counts that follow are exact (and include ours).
        conn.execute(
            _COUNT_REDEMPTION,
            {
                "b_template_id": template_id,
                "b_n": len(mine),
                "b_discount": sum(r.discount or 0 for r in mine),
                "b_now": now,
            },
        )
        _check_per_user_use(conn, template_id, specs[template_id], one_id, 0)
        abuse.check_rules(conn, template_id, specs[template_id], "redeem", fp, now)
    for r in rows:
        abuse.write_marks(
            conn, r.template_id, "redeem", fp, specs[r.template_id], one_id, r.code, now
        )
    return RedeemResult(
        order_id=order_id,
        one_id=one_id,
        coupons=[
            CouponDiscount(
                code=r.code,
                template_id=r.template_id,
                discount=r.discount or 0,
                lines=dict((r.allocations or {}).get("lines", {})),
                shipping=int((r.allocations or {}).get("shipping", 0)),
            )
            for r in rows
        ],
        total_discount=sum(r.discount or 0 for r in rows),
        redeemed_at=now,
    )


def _cart_dict(cart: Cart | None) -> Any:
    return asdict(cart) if cart is not None else None


def lock(
    engine: Engine,
    order_id: str,
    one_id: str,
    codes: Sequence[str],
    cart: Cart,
    now: datetime,
    *,
    idempotency_key: str | None = None,
    context: RequestContext | None = None,
) -> LockResult:
    """Reserve ``codes`` for ``order_id`` at checkout (all or none), priced on ``cart``.

    The lock lasts the templates' ``lock_ttl_seconds`` (the shortest); an expired lock
    is released by ``release_timed_out`` or taken over by the next lock of the coupon.
    """
    request = {
        "order_id": order_id,
        "one_id": one_id,
        "codes": sorted(codes),
        "cart": _cart_dict(cart),
    }
    return _idempotent(
        engine,
        idempotency_key,
        "lock",
        request,
        now,
        LockResult,
        lambda conn: _lock_in_tx(
            conn,
            order_id=order_id,
            one_id=one_id,
            codes=codes,
            cart=cart,
            now=now,
            context=context,
            request_key=idempotency_key,
        ),
    )


def redeem(
    engine: Engine,
    order_id: str,
    now: datetime,
    *,
    one_id: str | None = None,
    codes: Sequence[str] | None = None,
    cart: Cart | None = None,
    idempotency_key: str | None = None,
    context: RequestContext | None = None,
) -> RedeemResult:
    """Redeem the coupons locked for ``order_id`` (at payment).

    With ``one_id``, ``codes`` and ``cart`` the coupons are locked and redeemed in one
    transaction (a point-of-sale scan). Of concurrent redemptions of one coupon exactly
    one succeeds; the others get ``CouponConflict``.
    """
    request = {
        "order_id": order_id,
        "one_id": one_id,
        "codes": sorted(codes) if codes else None,
        "cart": _cart_dict(cart),
    }

    def run(conn: Connection) -> RedeemResult:
        if codes:
            if one_id is None or cart is None:
                raise ValidationFailed("one_id and cart are needed with codes", field="cart")
            held = conn.execute(_LOCKED_CODES, {"b_order_id": order_id}).scalars()
            if set(held) != set(codes):
                _lock_in_tx(
                    conn,
                    order_id=order_id,
                    one_id=one_id,
                    codes=codes,
                    cart=cart,
                    now=now,
                    context=context,
                    request_key=idempotency_key,
                )
        return _redeem_in_tx(
            conn, order_id=order_id, now=now, context=context, request_key=idempotency_key
        )

    return _idempotent(engine, idempotency_key, "redeem", request, now, RedeemResult, run)


def release(
    engine: Engine,
    order_id: str,
    now: datetime,
    *,
    reason: str = "order cancelled",
    idempotency_key: str | None = None,
) -> ReleaseResult:
    """Give back the coupons locked for ``order_id`` (order cancelled or payment failed)."""

    def run(conn: Connection) -> ReleaseResult:
        rows = conn.execute(
            sa.select(coupons)
            .where(coupons.c.order_id == order_id, coupons.c.state == "locked")
            .order_by(coupons.c.code)
            .with_for_update()
        ).all()
        if not rows:
            raise NotFound(f"no coupon is locked for order {order_id}", field="order_id")
        _release_rows(conn, rows, now, reason[:300], idempotency_key)
        return ReleaseResult(order_id=order_id, released=[r.code for r in rows])

    return _idempotent(
        engine, idempotency_key, "release", {"order_id": order_id}, now, ReleaseResult, run
    )


def _release_rows(
    conn: Connection, rows: Sequence[Any], now: datetime, reason: str, request_key: str | None
) -> None:
    entries = []
    for r in rows:
        n = conn.execute(
            coupons.update()
            .where(coupons.c.code == r.code, coupons.c.version == r.version)
            .values(
                state="issued",
                order_id=None,
                lock_expires_at=None,
                discount=None,
                allocations=None,
                version=r.version + 1,
                updated_at=now,
            )
        ).rowcount
        if n != 1:
            raise CouponConflict(f"coupon {r.code} changed meanwhile", rule="version")
        entries.append(
            LedgerEntry(
                r.code,
                r.version + 1,
                r.template_id,
                r.one_id,
                "released",
                "locked",
                "issued",
                now,
                order_id=r.order_id,
                amount=r.discount,
                reason=reason,
                request_key=request_key,
            )
        )
    record(conn, entries)


def refund(
    engine: Engine,
    order_id: str,
    now: datetime,
    *,
    reason: str = "order refunded",
    idempotency_key: str | None = None,
    lines: Sequence[str] | None = None,
) -> RefundResult:
    """Undo the redemptions of a refunded order: each coupon is restored (usable again)
    or voided, as its template's ``refund`` policy says. Money counters follow.

    With ``lines`` (line ids, whole lines) only those lines are refunded: each coupon
    gives back the discount those lines carried (its allocations; the customer gets
    the lines' paid amounts minus that) and stays ``redeemed``, with a
    ``partially_refunded`` ledger row; a coupon left carrying nothing is refunded in full
    as above. A line id no coupon of the order carried is ``ValidationFailed``; a line
    refunded before is ``CouponConflict`` (a replay with the same idempotency key gets
    the first answer instead).
    """
    wanted = None if lines is None else sorted(set(lines))
    if wanted is not None and not wanted:
        raise ValidationFailed("give at least one line id to refund", field="lines")

    def run(conn: Connection) -> RefundResult:
        rows = conn.execute(
            sa.select(coupons)
            .where(coupons.c.order_id == order_id, coupons.c.state == "redeemed")
            .order_by(coupons.c.code)
            .with_for_update()
        ).all()
        if not rows:
            raise NotFound(f"no redeemed coupon for order {order_id}", field="order_id")
        specs = _specs_of(conn, (r.template_id for r in rows))
        out = _Refunds(order_id, now, reason[:300], idempotency_key)
        if wanted is None:
            for r in rows:
                out.full(conn, r, specs[r.template_id].refund)
        else:
            _refund_lines(conn, out, rows, specs, wanted)
        out.settle(conn)
        return RefundResult(
            order_id=order_id,
            restored=out.restored,
            voided=out.voided,
            partially_refunded=out.partial,
            discount_returned=sum(out.clawed_back.values()),
            clawed_back=out.clawed_back,
        )

    request: dict[str, Any] = {"order_id": order_id}
    if wanted is not None:
        request["lines"] = wanted
    return _idempotent(engine, idempotency_key, "refund", request, now, RefundResult, run)


class _Refunds:
    """What one refund did: coupon rows changed, ledger entries and template counters."""

    def __init__(self, order_id: str, now: datetime, reason: str, key: str | None) -> None:
        self.order_id, self.now, self.reason, self.key = order_id, now, reason, key
        self.restored: list[str] = []
        self.voided: list[str] = []
        self.partial: list[str] = []
        self.clawed_back: dict[str, int] = {}
        self.entries: list[LedgerEntry] = []
        # template id → [redemptions undone, discount given back, face value freed]
        self.counters: dict[str, list[int]] = {}

    def _count(self, template_id: str, redeemed: int, discount: int, face: int) -> None:
        c = self.counters.setdefault(template_id, [0, 0, 0])
        c[0] += redeemed
        c[1] += discount
        c[2] += face

    def _update(self, conn: Connection, r: Any, **values: Any) -> None:
        n = conn.execute(
            coupons.update()
            .where(coupons.c.code == r.code, coupons.c.version == r.version)
            .values(version=r.version + 1, updated_at=self.now, **values)
        ).rowcount
        if n != 1:
            raise CouponConflict(f"coupon {r.code} changed meanwhile", rule="version")

    def _entry(self, r: Any, action: str, to_state: str, amount: int, lines: Any) -> None:
        self.entries.append(
            LedgerEntry(
                r.code,
                r.version + 1,
                r.template_id,
                r.one_id,
                action,
                "redeemed",
                to_state,
                self.now,
                order_id=self.order_id,
                amount=amount,
                reason=self.reason,
                request_key=self.key,
                lines=lines,
            )
        )

    def full(self, conn: Connection, r: Any, policy: str, lines: Any = None) -> None:
        """Undo ``r``'s redemption: restore it or void it (``policy``)."""
        restore = policy == "restore"
        to_state = "issued" if restore else "voided"
        self._update(
            conn,
            r,
            state=to_state,
            order_id=None if restore else r.order_id,
            lock_expires_at=None,
            discount=None if restore else r.discount,
            allocations=None if restore else r.allocations,
            redeemed_at=None if restore else r.redeemed_at,
        )
        (self.restored if restore else self.voided).append(r.code)
        discount = r.discount or 0
        self.clawed_back[r.code] = discount
        self._count(r.template_id, 1, discount, 0 if restore else r.face_value or 0)
        self._entry(r, "refunded", to_state, discount, lines)

    def part(self, conn: Connection, r: Any, allocations: Any, amount: int, lines: Any) -> None:
        """``r`` stays redeemed, ``amount`` less discount, with ``allocations``."""
        self._update(conn, r, discount=(r.discount or 0) - amount, allocations=allocations)
        self.partial.append(r.code)
        self.clawed_back[r.code] = amount
        self._count(r.template_id, 0, amount, 0)
        self._entry(r, "partially_refunded", "redeemed", amount, lines)

    def settle(self, conn: Connection) -> None:
        t = coupon_templates.c
        for template_id in sorted(self.counters):
            redeemed, discount, face = self.counters[template_id]
            conn.execute(
                coupon_templates.update()
                .where(t.template_id == template_id)
                .values(
                    redeemed_count=t.redeemed_count - redeemed,
                    discount_spent=t.discount_spent - discount,
                    budget_committed=t.budget_committed - face,
                    updated_at=self.now,
                )
            )
        record(conn, self.entries)


def _refund_lines(
    conn: Connection,
    out: _Refunds,
    rows: Sequence[Any],
    specs: dict[str, TemplateSpec],
    wanted: list[str],
) -> None:
    """Refund the order's ``wanted`` lines (see ``refund``). Every redeemed coupon of the
    order keeps, under ``allocations["refunded"]``, the order's refunded lines (line →
    discount clawed back from it), so a line is never refunded twice."""
    allocs = [dict(r.allocations or {}) for r in rows]
    known: set[str] = set()
    done: set[str] = set()
    for a in allocs:
        known.update(a.get("lines", {}))
        done.update(a.get("refunded", {}))
    unknown = [x for x in wanted if x not in known and x not in done]
    if unknown:
        raise ValidationFailed(
            f"no coupon of order {out.order_id} carried a discount on line(s) {', '.join(unknown)}",
            field="lines",
            rule="unknown_line",
            lines=unknown,
        )
    again = [x for x in wanted if x in done]
    if again:
        raise CouponConflict(
            f"line(s) {', '.join(again)} of order {out.order_id} already refunded",
            field="lines",
            rule="already_refunded",
            lines=again,
        )
    for r, a in zip(rows, allocs, strict=True):
        kept = {k: int(v) for k, v in a.get("lines", {}).items() if k not in wanted}
        taken = {k: int(v) for k, v in a.get("lines", {}).items() if k in wanted}
        refunded = {**a.get("refunded", {}), **{x: taken.get(x, 0) for x in wanted}}
        shipping = int(a.get("shipping", 0))
        if not taken:
            # Not affected: only remember the refunded lines (no transition, no version).
            conn.execute(
                coupons.update()
                .where(coupons.c.code == r.code)
                .values(allocations={**a, "refunded": refunded}, updated_at=out.now)
            )
            continue
        lines = tuple(sorted(taken))
        if not kept and not shipping:
            out.full(conn, r, specs[r.template_id].refund, lines)
        else:
            new = {**a, "lines": kept, "shipping": shipping, "refunded": refunded}
            out.part(conn, r, new, sum(taken.values()), lines)


def void(engine: Engine, code: str, now: datetime, *, reason: str) -> CouponView:
    """Cancel an issued (or locked) coupon, e.g. one found in an abuse cluster."""
    with write_tx(engine) as conn:
        r = conn.execute(sa.select(coupons).where(coupons.c.code == code).with_for_update()).first()
        if r is None:
            raise NotFound(f"no coupon {code}", field="code")
        if r.state not in ("issued", "locked"):
            raise CouponConflict(f"coupon {code} is {r.state}", field="code", rule=r.state)
        conn.execute(
            coupons.update()
            .where(coupons.c.code == code, coupons.c.version == r.version)
            .values(state="voided", version=r.version + 1, updated_at=now, lock_expires_at=None)
        )
        t = coupon_templates.c
        conn.execute(
            coupon_templates.update()
            .where(t.template_id == r.template_id)
            .values(budget_committed=t.budget_committed - (r.face_value or 0), updated_at=now)
        )
        record(
            conn,
            [
                LedgerEntry(
                    code,
                    r.version + 1,
                    r.template_id,
                    r.one_id,
                    "voided",
                    r.state,
                    "voided",
                    now,
                    order_id=r.order_id,
                    amount=r.face_value,
                    reason=reason[:300],
                )
            ],
        )
        return _view(_coupon_row(conn, code=code))


# --- sweeps ---------------------------------------------------------------------------------------


def release_timed_out(engine: Engine, now: datetime, *, chunk: int = 1000) -> int:
    """Release every lock older than its expiry (the order never paid); returns how many."""
    total = 0
    while True:
        with write_tx(engine) as conn:
            rows = conn.execute(
                sa.select(coupons)
                .where(coupons.c.state == "locked", coupons.c.lock_expires_at <= now)
                .order_by(coupons.c.code)
                .limit(chunk)
                .with_for_update(skip_locked=True)
            ).all()
            if rows:
                _release_rows(conn, rows, now, "lock timed out", None)
        total += len(rows)
        if len(rows) < chunk:
            return total


def expire_due(engine: Engine, now: datetime, *, chunk: int = 5000) -> int:
    """Expire issued coupons whose window has ended; their face value leaves the budget."""
    total = 0
    while True:
        with write_tx(engine) as conn:
            rows = conn.execute(
                sa.select(
                    coupons.c.code,
                    coupons.c.version,
                    coupons.c.template_id,
                    coupons.c.one_id,
                    coupons.c.face_value,
                )
                .where(coupons.c.state == "issued", coupons.c.valid_until <= now)
                .order_by(coupons.c.code)
                .limit(chunk)
                .with_for_update(skip_locked=True)
            ).all()
            if rows:
                conn.execute(
                    coupons.update()
                    .where(
                        coupons.c.code == sa.bindparam("b_code"),
                        coupons.c.version == sa.bindparam("b_version"),
                    )
                    .values(state="expired", version=coupons.c.version + 1, updated_at=now),
                    [{"b_code": r.code, "b_version": r.version} for r in rows],
                )
                faces: dict[str, int] = {}
                for r in rows:
                    faces[r.template_id] = faces.get(r.template_id, 0) + (r.face_value or 0)
                t = coupon_templates.c
                for template_id in sorted(faces):
                    conn.execute(
                        coupon_templates.update()
                        .where(t.template_id == template_id)
                        .values(
                            budget_committed=t.budget_committed - faces[template_id],
                            updated_at=now,
                        )
                    )
                record(
                    conn,
                    [
                        LedgerEntry(
                            r.code,
                            r.version + 1,
                            r.template_id,
                            r.one_id,
                            "expired",
                            "issued",
                            "expired",
                            now,
                            amount=r.face_value,
                            reason="validity ended",
                        )
                        for r in rows
                    ],
                )
        total += len(rows)
        if len(rows) < chunk:
            return total


# --- reading --------------------------------------------------------------------------------------


def get_coupon(engine: Engine, code: str) -> CouponView:
    with engine.connect() as conn:
        row = _coupon_row(conn, code=code)
        if row is None:
            raise NotFound(f"no coupon {code}", field="code")
        return _view(row, template_names(conn))


def wallet(engine: Engine, one_id: str, *, states: Sequence[str] | None = None) -> list[CouponView]:
    """A person's coupons, soonest to expire first."""
    with engine.connect() as conn:
        q = sa.select(coupons).where(coupons.c.one_id == one_id)
        if states:
            q = q.where(coupons.c.state.in_(list(states)))
        rows = conn.execute(q.order_by(coupons.c.valid_until, coupons.c.code)).all()
        names = template_names(conn) if rows else {}
        return [_view(r, names) for r in rows]


def quote_for(
    engine: Engine, one_id: str, cart: Cart, now: datetime, *, order_id: str | None = None
) -> Quote:
    """``pricing.quote`` over the person's usable coupons (issued, or locked by
    ``order_id``, or locked with an expired lock)."""
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(coupons).where(
                coupons.c.one_id == one_id, coupons.c.state.in_(["issued", "locked"])
            )
        ).all()
        usable = [
            r
            for r in rows
            if r.state == "issued"
            or (order_id is not None and r.order_id == order_id)
            or (r.lock_expires_at is not None and r.lock_expires_at <= now)
        ]
        specs = _specs_of(conn, (r.template_id for r in usable)) if usable else {}
    candidates = [
        Candidate(r.code, r.template_id, specs[r.template_id], r.valid_from, r.valid_until)
        for r in usable
    ]
    return quote(cart, candidates, now)
