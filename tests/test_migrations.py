"""The Alembic migrations build exactly the schema ``zhiying.store.tables`` declares."""

from __future__ import annotations

from pathlib import Path
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


def test_head_revisions_read_from_the_files_equal_alembics() -> None:
    from alembic.script import ScriptDirectory

    from zhiying.store.engine import alembic_config, head_revisions

    script = ScriptDirectory.from_config(alembic_config("sqlite://"))
    assert head_revisions() == frozenset(script.get_heads())
    assert len(head_revisions()) >= 2  # the packages' branches are not merged


def test_a_current_store_is_recognised_and_an_older_one_is_migrated(tmp_path: Path) -> None:
    """``upgrade`` skips Alembic only when the store is at every head: a store left at an
    older revision, or a new file, is still migrated."""
    from zhiying.store.engine import head_revisions, stored_revisions, upgrade

    url = f"sqlite:///{tmp_path / 'ops.sqlite3'}"
    assert stored_revisions(url) == frozenset()
    upgrade(url, "0007_trait_message_id")
    older = stored_revisions(url)
    assert older and older != head_revisions()
    upgrade(url)
    assert stored_revisions(url) == head_revisions()
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        columns = {c["name"] for c in sa.inspect(conn).get_columns("one_ids")}
    engine.dispose()
    assert "mint_order" in columns  # 0008 ran
    upgrade(url)  # current: nothing to do, nothing breaks
    assert stored_revisions(url) == head_revisions()
