"""Worker: one lease row per scheduled job, so two processes never run a job at once.

Revision ID: 0005_worker_leases
Revises: 0001_foundation
"""

import sqlalchemy as sa
from alembic import op

from zhiying.store.tables import UtcDateTime

revision = "0005_worker_leases"
down_revision = "0001_foundation"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "worker_leases",
        sa.Column("job", sa.String(80), primary_key=True),
        sa.Column("holder", sa.String(80), nullable=False),
        sa.Column("expires_at", UtcDateTime(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("worker_leases")
