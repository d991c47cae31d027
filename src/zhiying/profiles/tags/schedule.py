"""When a tag is due for refresh (pure).

Periods are aligned to UTC boundaries — the top of the hour, midnight, Monday
midnight — so "daily" means once per UTC calendar day however late the
scheduler wakes up, and a missed day is caught up by one refresh, not several.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from zhiying.profiles.tags.models import Refresh


def period_start(refresh: Refresh, now: datetime) -> datetime:
    """Start of the period of ``refresh`` that contains ``now`` (aware UTC in, aware out)."""
    if refresh == "hourly":
        return now.replace(minute=0, second=0, microsecond=0)
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    if refresh == "daily":
        return midnight
    if refresh == "weekly":
        return midnight - timedelta(days=midnight.weekday())
    raise ValueError(f"{refresh} tags have no period")


def is_due(refresh: Refresh, last_as_of: datetime | None, now: datetime) -> bool:
    """True when a ``refresh`` tag last refreshed as of ``last_as_of`` should refresh at ``now``.

    ``manual`` tags are never due; a tag never refreshed is due at once.
    """
    if refresh == "manual":
        return False
    if last_as_of is None:
        return True
    return last_as_of < period_start(refresh, now)
