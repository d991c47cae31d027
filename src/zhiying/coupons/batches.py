"""Batch issuance: one coupon of a template to each person of a segment, list or CSV.

Why it exists: a campaign issues to hundreds of thousands of people, which one
``issuance.issue`` per person cannot do in reasonable time. The batch keeps the same
guarantees at chunk granularity (one write transaction per chunk):

* exactly once per person: each person's issuance key is ``template/batch_key/one_id``
  (unique index), so re-running a batch (after a crash, or twice by mistake) issues
  only what is missing;
* quantity and budget are taken once per chunk with the same conditional UPDATE as a
  single issue (``counters.take``) under the template's row lock, and the batch stops
  when they run out (``stopped_by``);
* per-user claim limits and ``one_id`` block lists hold as for single issues.

Speed comes from writing rows column by column (``bulk.insert_columns``: ``executemany``
on SQLite, ``COPY`` on PostgreSQL), codes generated per chunk, no look-ups while the
template's only coupons are this run's, and ``Coupon Issued`` events written to the
warehouse by a background thread (``_EventPages``) while the next chunks are stored.
"""

from __future__ import annotations

import secrets
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import pyarrow as pa
import sqlalchemy as sa
from sqlalchemy import Connection, Engine

from zhiying.coupons.bulk import Same, insert_columns
from zhiying.coupons.codes import new_codes
from zhiying.coupons.counters import capacity, lock_template, take
from zhiying.coupons.errors import CouponConflict
from zhiying.coupons.ledger import COLUMNS as LEDGER_COLUMNS
from zhiying.coupons.ledger import (
    PUBLISH_PAGE,
    issued_events_table,
    mark_batch_published,
    template_names,
)
from zhiying.coupons.models import TemplateSpec, identity_hash
from zhiying.coupons.templates import spec_of
from zhiying.coupons.tx import write_tx
from zhiying.errors import ValidationFailed
from zhiying.store.tables import coupon_blocks, coupon_ledger, coupons
from zhiying.warehouse.base import Warehouse
from zhiying.warehouse.events import append_events

_BATCH_COLUMNS = (
    "code", "template_id", "one_id", "state", "face_value", "issued_at", "valid_from",
    "valid_until", "issuance_key", "batch_id", "version", "updated_at",
)  # fmt: skip


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


@dataclass
class _Tally:
    """People of the batch so far, by what happened to them."""

    requested: int = 0
    issued: int = 0
    already: int = 0
    over_limit: int = 0
    blocked: int = 0
    not_issued: int = 0


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
    page: int = PUBLISH_PAGE,
) -> BatchResult:
    """Issue one coupon of ``template_id`` to each ONE_ID (a segment, a list, a CSV).

    Idempotent by ``batch_key``: each person's issuance key is ``batch_key/one_id``, so
    re-running a batch (after a crash, or twice by mistake) issues only what is missing.
    Works in chunks of ``chunk_size``: one transaction per chunk, rows written with
    ``executemany``, quantity and budget taken once per chunk. Stops when the template's
    quantity or budget runs out (``stopped_by``). ``progress`` is called with the number
    of people processed so far. Events go to ``warehouse`` once per ``page`` rows
    (default ``ledger.PUBLISH_PAGE``); if that write fails the rows stay in the ledger's
    outbox (``events_pending``) for ``publish_pending``.
    """
    if not batch_key or len(batch_key) > 64 or "/" in batch_key:
        raise ValidationFailed("batch key: 1 to 64 characters, no '/'", field="batch_key")
    seen: set[str] = set()
    tally = _Tally()
    stopped_by: str | None = None
    run = secrets.token_hex(4)
    fresh = True  # every coupon of the template so far is this run's (checked per chunk)

    with engine.connect() as conn:
        any_blocks = conn.execute(
            sa.select(coupon_blocks.c.kind).where(coupon_blocks.c.kind == "one_id").limit(1)
        ).first()
    events = _EventPages(engine, warehouse, now, dedup_days, page)
    try:
        for chunk_no, chunk in enumerate(_chunks(one_ids, chunk_size, seen)):
            tally.requested += len(chunk)
            if stopped_by is not None:
                tally.not_issued += len(chunk)
                continue
            ledger_batch = f"{run}-{chunk_no}"
            with write_tx(engine) as conn:
                if conn.dialect.name == "sqlite":
                    # Random codes land all over the primary-key B-tree: a larger page cache
                    # (256 MiB, this connection only) keeps a million-row batch off the disk.
                    conn.exec_driver_sql("PRAGMA cache_size=-262144")
                tpl, spec, window = _open_template(conn, template_id, now)
                keys = {o: f"{template_id}/{batch_key}/{o}" for o in chunk}
                # A fresh template whose only coupons are this run's needs no look-ups: the
                # run never issues twice to one person (``seen``). Any other issuance (a
                # concurrent run, a claim) shows in the counter, taken under the row lock.
                fresh = fresh and tpl.issued_count == tally.issued
                todo = list(chunk)
                if not fresh:
                    todo = _not_yet_issued(conn, template_id, spec, todo, keys, tally)
                if any_blocks and todo:
                    todo = _not_blocked(conn, todo, tally)
                n, stop = capacity(tpl, len(todo), spec.face_value)
                if stop is not None:
                    stopped_by = stop
                    tally.not_issued += len(todo) - n
                    todo = todo[:n]
                if todo:
                    take(conn, template_id, len(todo), spec.face_value, now)
                    codes = new_codes(len(todo))
                    _write_rows(
                        conn, template_id, spec.face_value, window, batch_key, ledger_batch,
                        codes, todo, keys, now,
                    )  # fmt: skip
                    tally.issued += len(todo)
                events.settle(conn)
            if todo:
                events.add(codes, todo, ledger_batch, template_id, spec.face_value)
            if progress is not None:
                progress(tally.requested)
        events.finish()
    finally:
        events.close()
    return BatchResult(
        batch_key=batch_key,
        requested=tally.requested,
        issued=tally.issued,
        already_issued=tally.already,
        over_user_limit=tally.over_limit,
        blocked=tally.blocked,
        not_issued=tally.not_issued,
        stopped_by=stopped_by,
        events_written=events.written,
        events_pending=events.pending,
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


def _open_template(
    conn: Connection, template_id: str, now: datetime
) -> tuple[Any, TemplateSpec, tuple[datetime, datetime]]:
    """Lock the template's row for this chunk; refuse if it cannot issue now."""
    tpl = lock_template(conn, template_id)
    spec = spec_of(conn, template_id, tpl.spec)
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
    return tpl, spec, window


def _not_yet_issued(
    conn: Connection,
    template_id: str,
    spec: TemplateSpec,
    todo: list[str],
    keys: dict[str, str],
    tally: _Tally,
) -> list[str]:
    """Drop the people this batch already issued to, and those at their claim limit."""
    done = set(
        conn.execute(
            sa.select(coupons.c.issuance_key).where(coupons.c.issuance_key.in_(list(keys.values())))
        ).scalars()
    )
    kept = [o for o in todo if keys[o] not in done]
    tally.already += len(todo) - len(kept)
    todo = kept
    limit = spec.limits.per_user_claim
    if limit is not None and todo:
        held: dict[str, int] = {
            o: n
            for o, n in conn.execute(
                sa.select(coupons.c.one_id, sa.func.count())
                .where(coupons.c.template_id == template_id, coupons.c.one_id.in_(todo))
                .group_by(coupons.c.one_id)
            )
        }
        kept = [o for o in todo if held.get(o, 0) < limit]
        tally.over_limit += len(todo) - len(kept)
        todo = kept
    return todo


def _not_blocked(conn: Connection, todo: list[str], tally: _Tally) -> list[str]:
    """Drop the people on the ``one_id`` block list."""
    hashes = {identity_hash("one_id", o): o for o in todo}
    bad = set(
        conn.execute(
            sa.select(coupon_blocks.c.value_hash).where(
                coupon_blocks.c.kind == "one_id",
                coupon_blocks.c.value_hash.in_(list(hashes)),
            )
        ).scalars()
    )
    tally.blocked += len(bad)
    return [o for o in todo if identity_hash("one_id", o) not in bad]


def _write_rows(
    conn: Connection,
    template_id: str,
    face: int | None,
    window: tuple[datetime, datetime],
    batch_key: str,
    ledger_batch: str,
    codes: list[str],
    todo: list[str],
    keys: dict[str, str],
    now: datetime,
) -> None:
    """The chunk's coupon rows and their ``issued`` ledger rows (unpublished)."""
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


class _EventPages:
    """The batch's ``Coupon Issued`` events, a page of ``page`` rows at a time.

    Pages are written by one background thread while the next chunks go to the
    operational store. A page's ledger rows are marked published (in a later chunk's
    transaction, or at the end) only once its events are stored; after a failed write
    every later row stays in the ledger's outbox (``pending``) for ``publish_pending``.
    """

    def __init__(
        self,
        engine: Engine,
        warehouse: Warehouse | None,
        now: datetime,
        dedup_days: int,
        page: int,
    ) -> None:
        self.engine, self.warehouse, self.now, self.page = engine, warehouse, now, page
        self.since = now - timedelta(days=dedup_days)
        self.writer = (
            ThreadPoolExecutor(1, thread_name_prefix="coupon-events") if warehouse else None
        )
        self.inflight: deque[tuple[Future[int], list[str], int]] = deque()
        self.tables: list[pa.Table] = []
        self.rows = 0
        self.batches: list[str] = []
        self.names: dict[str, tuple[str, str]] | None = None
        self.written = 0  # events stored in the warehouse
        self.pending = 0  # rows left in the ledger's outbox
        self.failed = False

    def add(
        self,
        codes: list[str],
        one_ids: list[str],
        ledger_batch: str,
        template_id: str,
        face: int | None,
    ) -> None:
        """Queue a committed chunk's events; write a page once it is full."""
        if self.warehouse is not None and not self.failed:
            if self.names is None:
                with self.engine.connect() as conn:
                    self.names = template_names(conn)
            name = self.names.get(template_id, ("", ""))
            self.tables.append(
                issued_events_table(codes, one_ids, template_id, name, face, self.now, self.now)
            )
        self.rows += len(one_ids)
        self.batches.append(ledger_batch)
        if self.rows >= self.page:
            self.flush()

    def flush(self) -> None:
        """Hand the queued rows to the writer (or count them pending)."""
        if not self.rows:
            return
        if self.warehouse is None or self.writer is None or self.failed:
            self.pending += self.rows
        else:
            if len(self.inflight) >= 2:  # at most two pages in memory
                with self.engine.begin() as conn:
                    self.settle(conn, keep=1)
            table = pa.concat_tables(self.tables)
            future = self.writer.submit(append_events, self.warehouse, table, self.since)
            self.inflight.append((future, list(self.batches), self.rows))
        self.tables.clear()
        self.batches.clear()
        self.rows = 0

    def settle(self, conn: Connection, keep: int | None = None) -> None:
        """Mark the pages whose events are written; wait until ``keep`` remain in flight
        (``None``: take only the finished ones)."""
        while self.inflight and (
            self.inflight[0][0].done() if keep is None else len(self.inflight) > keep
        ):
            future, batches, rows = self.inflight.popleft()
            try:
                self.written += future.result()
            except Exception:
                # The ledger keeps the rows unpublished: publish_pending retries them.
                self.failed = True
                self.pending += rows
                continue
            mark_batch_published(conn, batches)

    def finish(self) -> None:
        """Write the last page and wait for every page in flight."""
        self.flush()
        if self.inflight:
            with self.engine.begin() as conn:
                self.settle(conn, keep=0)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.shutdown(wait=True)
