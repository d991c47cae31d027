"""Coupons: partial refunds. The ledger names the refunded lines of a
``partially_refunded`` row, and its ``action`` column is wide enough for that name.

Revision ID: 0004_coupon_partial_refunds
Revises: 0002_coupons
"""

import sqlalchemy as sa
from alembic import op

revision = "0004_coupon_partial_refunds"
down_revision = "0002_coupons"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("coupon_ledger", sa.Column("lines", sa.JSON, nullable=True))
    # SQLite does not enforce VARCHAR lengths; PostgreSQL does.
    if op.get_bind().dialect.name != "sqlite":
        op.alter_column("coupon_ledger", "action", type_=sa.String(32), existing_type=sa.String(16))


def downgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        op.alter_column("coupon_ledger", "action", type_=sa.String(16), existing_type=sa.String(32))
    op.drop_column("coupon_ledger", "lines")
