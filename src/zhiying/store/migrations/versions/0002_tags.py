"""Tags and layers: tag definitions, refresh runs, layer rules, layer runs.

Revision ID: 0002_tags
Revises: 0001_foundation
"""

import sqlalchemy as sa
from alembic import op

from zhiying.store.tables import UtcDateTime

revision = "0002_tags"
down_revision = "0001_foundation"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "tag_definitions",
        sa.Column("name", sa.String(63), primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("definition", sa.JSON, nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("updated_at", UtcDateTime(), nullable=False),
        sa.Column("last_as_of", UtcDateTime(), nullable=True),
    )
    op.create_table(
        "tag_refresh_runs",
        sa.Column("run_id", sa.String(32), primary_key=True),
        sa.Column("as_of", UtcDateTime(), nullable=False),
        sa.Column("trigger", sa.String(16), nullable=False),
        sa.Column("tags", sa.JSON, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("rows", sa.BigInteger, nullable=True),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("started_at", UtcDateTime(), nullable=False),
        sa.Column("finished_at", UtcDateTime(), nullable=True),
    )
    op.create_index("ix_tag_refresh_runs_as_of", "tag_refresh_runs", ["as_of"])
    op.create_table(
        "layer_definitions",
        sa.Column("name", sa.String(63), primary_key=True),
        sa.Column("rules", sa.JSON, nullable=False),
        sa.Column("updated_at", UtcDateTime(), nullable=False),
    )
    op.create_table(
        "layer_runs",
        sa.Column("layer", sa.String(63), primary_key=True),
        sa.Column("as_of", UtcDateTime(), primary_key=True),
        sa.Column("rules", sa.JSON, nullable=False),
        sa.Column("counts", sa.JSON, nullable=False),
        sa.Column("rows", sa.BigInteger, nullable=False),
        sa.Column("computed_at", UtcDateTime(), nullable=False),
    )


def downgrade() -> None:
    for name in ("layer_runs", "layer_definitions", "tag_refresh_runs", "tag_definitions"):
        op.drop_table(name)
