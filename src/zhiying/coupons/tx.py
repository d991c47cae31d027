"""The write transaction every coupon state change runs in.

Why it exists: correctness under concurrency comes from the database, never from
Python locks, and that needs every writer to take the database's locks the same way:

* SQLite: the transaction starts with ``BEGIN IMMEDIATE``, so it holds the database's
  write lock before it reads anything it decides on (a plain ``BEGIN`` would read
  first and fail or decide on stale rows when it later needs to write).
* PostgreSQL: callers read the rows they change ``FOR UPDATE`` (coupons first, ordered
  by code, then templates), so two transactions touching one coupon or one template's
  counters serialise.

Open every coupon write with ``write_tx``; the caller owns the transaction (helpers
never commit behind its back).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import OperationalError


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
