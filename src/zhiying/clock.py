"""Time as a dependency: domain code never calls ``datetime.now()``.

``SystemClock`` in production; ``ManualClock`` in tests and in the demo, which
runs weeks of simulated time in seconds. All instants are aware UTC datetimes.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Protocol


def naive_utc(at: datetime) -> datetime:
    """``at`` as the naive UTC datetime the warehouse stores; a naive ``at`` is read as UTC."""
    tz = at.tzinfo
    if tz is None:
        return at
    if tz is UTC:  # the common case, no offset arithmetic
        return at.replace(tzinfo=None)
    offset = at.utcoffset()
    return at.replace(tzinfo=None) - offset if offset else at.replace(tzinfo=None)


class Clock(Protocol):
    def now(self) -> datetime:
        """The current instant, timezone-aware, in UTC."""
        ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


class ManualClock:
    """A clock that only moves when told to."""

    def __init__(self, start: datetime) -> None:
        if start.tzinfo is None:
            raise ValueError("ManualClock needs an aware datetime")
        self._now = start.astimezone(UTC)

    def now(self) -> datetime:
        return self._now

    def advance(self, delta: timedelta) -> None:
        self._now += delta

    def set(self, instant: datetime) -> None:
        self._now = instant.astimezone(UTC)
