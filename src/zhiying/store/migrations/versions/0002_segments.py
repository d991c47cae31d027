"""Segments: definitions and membership snapshots.

Revision ID: 0002_segments
Revises: 0001_foundation
"""

import sqlalchemy as sa
from alembic import op

from zhiying.store.tables import UtcDateTime

revision = "0002_segments"
down_revision = "0001_foundation"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "segments",
        sa.Column("segment_id", sa.String(40), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("description", sa.Text, nullable=False, server_default=""),
        sa.Column("rule", sa.JSON, nullable=False),
        sa.Column("refresh_every_minutes", sa.Integer, nullable=True),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("updated_at", UtcDateTime(), nullable=False),
        sa.UniqueConstraint("name", name="uq_segments_name"),
    )
    op.create_table(
        "segment_snapshots",
        sa.Column("segment_id", sa.String(40), primary_key=True),
        sa.Column("snapshot_at", UtcDateTime(), primary_key=True),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("member_count", sa.Integer, nullable=False),
        sa.Column("entered", sa.Integer, nullable=False),
        sa.Column("exited", sa.Integer, nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("segment_snapshots")
    op.drop_table("segments")
