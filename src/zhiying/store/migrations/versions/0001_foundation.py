"""Foundation: api keys, ONE_ID identity map, merges, conflicts, traits.

Revision ID: 0001_foundation
Revises:
"""

import sqlalchemy as sa
from alembic import op

from zhiying.store.tables import UtcDateTime

revision = "0001_foundation"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("key_id", sa.String(32), primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("key_hash", sa.String(64), nullable=False),
        sa.Column("name", sa.String(200), nullable=False, server_default=""),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("revoked_at", UtcDateTime(), nullable=True),
        sa.UniqueConstraint("key_hash", name="uq_api_keys_key_hash"),
    )
    op.create_table(
        "one_ids",
        sa.Column("one_id", sa.String(40), primary_key=True),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("merged_into", sa.String(40), nullable=True),
        sa.Column("merged_at", UtcDateTime(), nullable=True),
    )
    op.create_index("ix_one_ids_merged_into", "one_ids", ["merged_into"])
    op.create_table(
        "identifiers",
        sa.Column("kind", sa.String(32), primary_key=True),
        sa.Column("value", sa.String(256), primary_key=True),
        sa.Column("one_id", sa.String(40), nullable=False),
        sa.Column("first_seen", UtcDateTime(), nullable=False),
        sa.Column("last_seen", UtcDateTime(), nullable=False),
    )
    op.create_index("ix_identifiers_one_id", "identifiers", ["one_id"])
    op.create_table(
        "identity_merges",
        sa.Column("merge_id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("winner", sa.String(40), nullable=False),
        sa.Column("loser", sa.String(40), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("value", sa.String(256), nullable=False),
        sa.Column("reason", sa.String(500), nullable=False),
        sa.Column("message_id", sa.String(200), nullable=True),
        sa.Column("merged_at", UtcDateTime(), nullable=False),
    )
    op.create_index("ix_identity_merges_winner", "identity_merges", ["winner"])
    op.create_index("ix_identity_merges_loser", "identity_merges", ["loser"])
    op.create_table(
        "identity_conflicts",
        sa.Column("conflict_id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("one_id", sa.String(40), nullable=False),
        sa.Column("other_one_id", sa.String(40), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("value", sa.String(256), nullable=False),
        sa.Column("rule", sa.String(100), nullable=False),
        sa.Column("message_id", sa.String(200), nullable=True),
        sa.Column("seen_at", UtcDateTime(), nullable=False),
    )
    op.create_index("ix_identity_conflicts_one_id", "identity_conflicts", ["one_id"])
    op.create_index("ix_identity_conflicts_other_one_id", "identity_conflicts", ["other_one_id"])
    op.create_table(
        "traits",
        sa.Column("one_id", sa.String(40), primary_key=True),
        sa.Column("key", sa.String(200), primary_key=True),
        sa.Column("value", sa.JSON, nullable=True),
        sa.Column("updated_at", UtcDateTime(), nullable=False),
    )


def downgrade() -> None:
    for name in ("traits", "identity_conflicts", "identity_merges", "identifiers", "one_ids"):
        op.drop_table(name)
    op.drop_table("api_keys")
