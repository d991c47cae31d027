"""Person keys: one integer per ONE_ID for the warehouse, from never-reused blocks.

Revision ID: 0006_person_keys
Revises: 0003_identity_generation
"""

import sqlalchemy as sa
from alembic import op

revision = "0006_person_keys"
down_revision = "0003_identity_generation"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "person_keys",
        sa.Column("one_id", sa.String(40), primary_key=True),
        sa.Column("person_key", sa.BigInteger, nullable=False, unique=True),
    )
    op.create_table(
        "key_blocks",
        sa.Column("name", sa.String(40), primary_key=True),
        sa.Column("next_value", sa.BigInteger, nullable=False),
    )
    op.execute("INSERT INTO key_blocks (name, next_value) VALUES ('person_key', 1)")


def downgrade() -> None:
    op.drop_table("key_blocks")
    op.drop_table("person_keys")
