"""Identity: each ONE_ID's mint order, to break same-instant ties in merges.

Between two ONE_IDs first seen at the same instant, the one minted first wins a
merge (docs/identity.md, rule 4). ``one_ids.mint_order`` numbers ONE_IDs in the
order they were minted; ``identity_generation.minted`` counts them (the next
ONE_ID gets ``minted + 1``). Existing rows are numbered by (first seen, ONE_ID):
the order the rule used before (the ONE_ID text between twins), so every merge
winner decided earlier stays the one this rule gives.

Revision ID: 0008_one_id_mint_order
Revises: 0007_trait_message_id
"""

import sqlalchemy as sa
from alembic import op

revision = "0008_one_id_mint_order"
down_revision = "0007_trait_message_id"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("one_ids", sa.Column("mint_order", sa.BigInteger, nullable=True))
    op.add_column(
        "identity_generation",
        sa.Column("minted", sa.BigInteger, nullable=False, server_default="0"),
    )
    # UPDATE ... FROM: PostgreSQL, and SQLite from 3.33.
    op.execute(
        "UPDATE one_ids SET mint_order = r.n FROM (SELECT one_id AS id, "
        "row_number() OVER (ORDER BY created_at, one_id) AS n FROM one_ids) AS r "
        "WHERE one_ids.one_id = r.id"
    )
    # ``WHERE true``: SQLite's parser needs it between a SELECT and ON CONFLICT.
    op.execute(
        "INSERT INTO identity_generation (id, generation, minted) "
        "SELECT 1, 0, count(*) FROM one_ids WHERE true "
        "ON CONFLICT (id) DO UPDATE SET minted = excluded.minted"
    )


def downgrade() -> None:
    with op.batch_alter_table("identity_generation") as batch:
        batch.drop_column("minted")
    with op.batch_alter_table("one_ids") as batch:
        batch.drop_column("mint_order")
