"""Identity: a generation counter bumped by every merge (invalidates in-process caches).

Revision ID: 0003_identity_generation
Revises: 0002_identity
"""

import sqlalchemy as sa
from alembic import op

revision = "0003_identity_generation"
down_revision = "0002_identity"
branch_labels = None
depends_on = None


def upgrade() -> None:
    table = op.create_table(
        "identity_generation",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("generation", sa.BigInteger, nullable=False),
    )
    op.bulk_insert(table, [{"id": 1, "generation": 0}])


def downgrade() -> None:
    op.drop_table("identity_generation")
