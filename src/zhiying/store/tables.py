"""Operational tables (SQLAlchemy Core). The only place that defines them.

Each package's tables live here, grouped by package, so a migration sees the
whole schema. Idempotency is a column: every externally triggered write has a
unique key.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator

metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)


class UtcDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes on every backend (SQLite has no time zones)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# --- api keys -----------------------------------------------------------------

api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("key_id", sa.String(32), primary_key=True),
    sa.Column("kind", sa.String(16), nullable=False),  # "write" | "admin"
    sa.Column("key_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("name", sa.String(200), nullable=False, server_default=""),
    sa.Column("created_at", UtcDateTime(), nullable=False),
    sa.Column("revoked_at", UtcDateTime(), nullable=True),
)

# --- identity (ONE_ID) ----------------------------------------------------------

one_ids = sa.Table(
    "one_ids",
    metadata,
    sa.Column("one_id", sa.String(40), primary_key=True),
    sa.Column("created_at", UtcDateTime(), nullable=False),
    # Set when this ONE_ID was merged into another; it then owns no identifiers.
    sa.Column("merged_into", sa.String(40), nullable=True, index=True),
    sa.Column("merged_at", UtcDateTime(), nullable=True),
)

identifiers = sa.Table(
    "identifiers",
    metadata,
    sa.Column("kind", sa.String(32), primary_key=True),
    sa.Column("value", sa.String(256), primary_key=True),
    sa.Column("one_id", sa.String(40), nullable=False, index=True),
    sa.Column("first_seen", UtcDateTime(), nullable=False),
    sa.Column("last_seen", UtcDateTime(), nullable=False),
)

merges = sa.Table(
    "identity_merges",
    metadata,
    sa.Column("merge_id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("winner", sa.String(40), nullable=False, index=True),
    sa.Column("loser", sa.String(40), nullable=False, index=True),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("value", sa.String(256), nullable=False),
    sa.Column("reason", sa.String(500), nullable=False),
    sa.Column("message_id", sa.String(200), nullable=True),
    sa.Column("merged_at", UtcDateTime(), nullable=False),
)

identity_conflicts = sa.Table(
    "identity_conflicts",
    metadata,
    sa.Column("conflict_id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("one_id", sa.String(40), nullable=False, index=True),
    sa.Column("other_one_id", sa.String(40), nullable=False, index=True),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("value", sa.String(256), nullable=False),
    sa.Column("rule", sa.String(100), nullable=False),
    sa.Column("message_id", sa.String(200), nullable=True),
    sa.Column("seen_at", UtcDateTime(), nullable=False),
)

# --- profiles ---------------------------------------------------------------------

traits = sa.Table(
    "traits",
    metadata,
    sa.Column("one_id", sa.String(40), primary_key=True),
    sa.Column("key", sa.String(200), primary_key=True),
    sa.Column("value", sa.JSON, nullable=True),
    sa.Column("updated_at", UtcDateTime(), nullable=False),
)
