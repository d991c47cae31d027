"""Identity: a ONE_ID is merged away once; a conflict is recorded once.

Revision ID: 0002_identity
Revises: 0001_foundation
"""

from alembic import op

revision = "0002_identity"
down_revision = "0001_foundation"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("uq_identity_merges_loser", "identity_merges", ["loser"], unique=True)
    op.create_index(
        "uq_identity_conflicts_pair",
        "identity_conflicts",
        ["one_id", "other_one_id", "kind", "value", "rule"],
        unique=True,
    )


def downgrade() -> None:
    op.drop_index("uq_identity_conflicts_pair", table_name="identity_conflicts")
    op.drop_index("uq_identity_merges_loser", table_name="identity_merges")
