"""Traits remember the identify call that set them, to break same-instant ties.

Revision ID: 0007_trait_message_id
Revises: 0006_person_keys
"""

import sqlalchemy as sa
from alembic import op

revision = "0007_trait_message_id"
down_revision = "0006_person_keys"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("traits") as batch:
        batch.add_column(sa.Column("message_id", sa.String(200), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("traits") as batch:
        batch.drop_column("message_id")
