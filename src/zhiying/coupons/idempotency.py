"""Idempotent requests: lock, redeem, release and refund answered once, replayed after.

Why it exists: checkouts and payment callbacks retry, sometimes concurrently. A request
carrying an ``idempotency_key`` runs in one write transaction that also stores its
first successful answer in ``coupon_requests`` (the key is the primary key, so two
answers can never be stored); a replay returns that answer instead of acting twice.

Invariants:

* the stored answer belongs to one request: the key with another operation or another
  request body (a SHA-256 of both) is refused (``Conflict``, rule
  ``idempotency_key_reuse``);
* a refusal is not stored: it changed nothing, so a replay evaluates it again;
* a replay that lost the race to a concurrent first call (unique-key violation, or the
  coupon it wanted already changed) answers as the winner did.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar

import orjson
import sqlalchemy as sa
from pydantic import BaseModel
from sqlalchemy import Connection, Engine
from sqlalchemy.exc import IntegrityError

from zhiying.coupons.tx import write_tx
from zhiying.errors import Conflict, ValidationFailed, ZhiyingError
from zhiying.store.tables import coupon_requests

M = TypeVar("M", bound=BaseModel)


def idempotent(
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
