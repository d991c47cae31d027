"""The Alembic migrations build exactly the schema ``zhiying.store.tables`` declares."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from zhiying.runtime import Stores
from zhiying.store.tables import metadata


def _relevant(diff: Any) -> bool:
    # SQLite reflects no server defaults or comments the same way; only structure counts.
    kind = diff[0][0] if isinstance(diff, list) else diff[0]
    return kind not in ("modify_default", "modify_comment")


def test_migrated_store_matches_the_declared_tables(ops_stores: Stores) -> None:
    with ops_stores.engine.connect() as conn:
        # SQLite ignores VARCHAR lengths, and migrations that only widen one skip it.
        types = conn.dialect.name != "sqlite"
        context = MigrationContext.configure(conn, opts={"compare_type": types})
        diffs = [d for d in compare_metadata(context, metadata) if _relevant(d)]
        tables = set(sa.inspect(conn).get_table_names())
    assert {"person_keys", "key_blocks", "traits"} <= tables
    assert diffs == []
