"""Coupons: templates with counters, coupons, ledger (outbox), idempotent requests,
abuse marks and block lists.

Revision ID: 0002_coupons
Revises: 0001_foundation
"""

import sqlalchemy as sa
from alembic import op

from zhiying.store.tables import UtcDateTime

revision = "0002_coupons"
down_revision = "0001_foundation"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "coupon_templates",
        sa.Column("template_id", sa.String(40), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("spec", sa.JSON, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("face_value", sa.BigInteger, nullable=True),
        sa.Column("quantity", sa.BigInteger, nullable=True),
        sa.Column("budget", sa.BigInteger, nullable=True),
        sa.Column("issued_count", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("budget_committed", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("redeemed_count", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("discount_spent", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("updated_at", UtcDateTime(), nullable=False),
        sa.CheckConstraint(
            "quantity IS NULL OR issued_count <= quantity", name="ck_coupon_templates_quantity"
        ),
        sa.CheckConstraint(
            "budget IS NULL OR budget_committed <= budget", name="ck_coupon_templates_budget"
        ),
    )
    op.create_table(
        "coupons",
        sa.Column("code", sa.String(32), primary_key=True),
        sa.Column("template_id", sa.String(40), nullable=False),
        sa.Column("one_id", sa.String(40), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("face_value", sa.BigInteger, nullable=True),
        sa.Column("issued_at", UtcDateTime(), nullable=False),
        sa.Column("valid_from", UtcDateTime(), nullable=False),
        sa.Column("valid_until", UtcDateTime(), nullable=False),
        sa.Column("issuance_key", sa.String(200), nullable=True),
        sa.Column("batch_id", sa.String(64), nullable=True),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("order_id", sa.String(200), nullable=True),
        sa.Column("lock_expires_at", UtcDateTime(), nullable=True),
        sa.Column("discount", sa.BigInteger, nullable=True),
        sa.Column("allocations", sa.JSON, nullable=True),
        sa.Column("redeemed_at", UtcDateTime(), nullable=True),
        sa.Column("updated_at", UtcDateTime(), nullable=False),
        sa.UniqueConstraint("issuance_key", name="uq_coupons_issuance_key"),
    )
    op.create_index("ix_coupons_one_id_template_id", "coupons", ["one_id", "template_id"])
    op.create_index("ix_coupons_state_valid_until", "coupons", ["state", "valid_until"])
    op.create_index("ix_coupons_order_id", "coupons", ["order_id"])
    op.create_table(
        "coupon_ledger",
        sa.Column("code", sa.String(32), primary_key=True),
        sa.Column("seq", sa.Integer, primary_key=True),
        sa.Column("template_id", sa.String(40), nullable=False),
        sa.Column("one_id", sa.String(40), nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("from_state", sa.String(16), nullable=True),
        sa.Column("to_state", sa.String(16), nullable=False),
        sa.Column("at", UtcDateTime(), nullable=False),
        sa.Column("order_id", sa.String(200), nullable=True),
        sa.Column("amount", sa.BigInteger, nullable=True),
        sa.Column("reason", sa.String(300), nullable=False, server_default=""),
        sa.Column("request_key", sa.String(200), nullable=True),
        sa.Column("batch_id", sa.String(64), nullable=True),
        sa.Column("published", sa.Boolean, nullable=False, server_default=sa.false()),
    )
    op.create_index(
        "ix_coupon_ledger_unpublished",
        "coupon_ledger",
        ["published"],
        sqlite_where=sa.text("published = 0"),
        postgresql_where=sa.text("published = false"),
    )
    op.create_table(
        "coupon_requests",
        sa.Column("idempotency_key", sa.String(200), primary_key=True),
        sa.Column("operation", sa.String(32), nullable=False),
        sa.Column("request_hash", sa.String(64), nullable=False),
        sa.Column("response", sa.JSON, nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
    )
    op.create_table(
        "coupon_marks",
        sa.Column(
            "mark_id",
            sa.BigInteger().with_variant(sa.Integer, "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column("template_id", sa.String(40), nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("value_hash", sa.String(64), nullable=False),
        sa.Column("one_id", sa.String(40), nullable=False),
        sa.Column("code", sa.String(32), nullable=False),
        sa.Column("at", UtcDateTime(), nullable=False),
    )
    op.create_index(
        "ix_coupon_marks_rule",
        "coupon_marks",
        ["template_id", "action", "kind", "value_hash", "at"],
    )
    op.create_table(
        "coupon_blocks",
        sa.Column("kind", sa.String(32), primary_key=True),
        sa.Column("value_hash", sa.String(64), primary_key=True),
        sa.Column("reason", sa.String(300), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
    )


def downgrade() -> None:
    for name in (
        "coupon_blocks",
        "coupon_marks",
        "coupon_requests",
        "coupon_ledger",
        "coupons",
        "coupon_templates",
    ):
        op.drop_table(name)
