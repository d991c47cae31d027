"""Job leases in the operational store: at most one holder per job at a time.

A lease is one row per job. Taking it is a single conditional ``UPDATE`` (free
when expired or already ours), which both SQLite and PostgreSQL apply
atomically, so two processes racing for a job get exactly one winner. A
crashed holder's lease simply expires after its time to live.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError

from zhiying.store.tables import worker_leases


def acquire(engine: Engine, job: str, holder: str, now: datetime, ttl: timedelta) -> bool:
    """Take the lease of ``job`` for ``holder`` until ``now + ttl``; False if someone holds it."""
    _ensure_row(engine, job, now)
    with engine.begin() as conn:
        taken = conn.execute(
            worker_leases.update()
            .where(
                worker_leases.c.job == job,
                sa.or_(worker_leases.c.expires_at <= now, worker_leases.c.holder == holder),
            )
            .values(holder=holder, expires_at=now + ttl)
        )
        return taken.rowcount == 1


def release(engine: Engine, job: str, holder: str, now: datetime) -> None:
    """Give the lease of ``job`` back (only if ``holder`` still holds it)."""
    with engine.begin() as conn:
        conn.execute(
            worker_leases.update()
            .where(worker_leases.c.job == job, worker_leases.c.holder == holder)
            .values(expires_at=now)
        )


def holder_of(engine: Engine, job: str, now: datetime) -> str | None:
    """Who holds ``job``'s lease at ``now`` (None when nobody does)."""
    with engine.connect() as conn:
        row = conn.execute(
            sa.select(worker_leases.c.holder).where(
                worker_leases.c.job == job, worker_leases.c.expires_at > now
            )
        ).first()
    return None if row is None else str(row.holder)


def _ensure_row(engine: Engine, job: str, now: datetime) -> None:
    with engine.connect() as conn:
        exists = conn.execute(
            sa.select(worker_leases.c.job).where(worker_leases.c.job == job)
        ).first()
    if exists is not None:
        return
    try:
        with engine.begin() as conn:
            # Created expired: whoever inserts it still has to win the UPDATE.
            conn.execute(worker_leases.insert().values(job=job, holder="", expires_at=now))
    except IntegrityError:
        pass  # another process created it first
