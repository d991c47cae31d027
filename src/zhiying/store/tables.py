"""Operational tables (SQLAlchemy Core). The only place that defines them.

Each package's tables live here, grouped by package, so a migration sees the
whole schema. Idempotency is a column: every externally triggered write has a
unique key.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator

metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)


class UtcDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes on every backend (SQLite has no time zones)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# --- api keys -----------------------------------------------------------------

api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("key_id", sa.String(32), primary_key=True),
    sa.Column("kind", sa.String(16), nullable=False),  # "write" | "admin"
    sa.Column("key_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("name", sa.String(200), nullable=False, server_default=""),
    sa.Column("created_at", UtcDateTime(), nullable=False),
    sa.Column("revoked_at", UtcDateTime(), nullable=True),
)

# --- identity (ONE_ID) ----------------------------------------------------------

one_ids = sa.Table(
    "one_ids",
    metadata,
    sa.Column("one_id", sa.String(40), primary_key=True),
    sa.Column("created_at", UtcDateTime(), nullable=False),
    # Set when this ONE_ID was merged into another; it then owns no identifiers.
    sa.Column("merged_into", sa.String(40), nullable=True, index=True),
    sa.Column("merged_at", UtcDateTime(), nullable=True),
    # The order it was minted in (1, 2, ...; migration 0008_one_id_mint_order): between
    # ONE_IDs first seen at the same instant, the lower wins a merge. Null for rows
    # written by other means (they come after the numbered ones).
    sa.Column("mint_order", sa.BigInteger, nullable=True),
)

identifiers = sa.Table(
    "identifiers",
    metadata,
    sa.Column("kind", sa.String(32), primary_key=True),
    sa.Column("value", sa.String(256), primary_key=True),
    sa.Column("one_id", sa.String(40), nullable=False, index=True),
    sa.Column("first_seen", UtcDateTime(), nullable=False),
    sa.Column("last_seen", UtcDateTime(), nullable=False),
)

merges = sa.Table(
    "identity_merges",
    metadata,
    sa.Column("merge_id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("winner", sa.String(40), nullable=False, index=True),
    sa.Column("loser", sa.String(40), nullable=False, index=True),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("value", sa.String(256), nullable=False),
    sa.Column("reason", sa.String(500), nullable=False),
    sa.Column("message_id", sa.String(200), nullable=True),
    sa.Column("merged_at", UtcDateTime(), nullable=False),
)

identity_conflicts = sa.Table(
    "identity_conflicts",
    metadata,
    sa.Column("conflict_id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("one_id", sa.String(40), nullable=False, index=True),
    sa.Column("other_one_id", sa.String(40), nullable=False, index=True),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("value", sa.String(256), nullable=False),
    sa.Column("rule", sa.String(100), nullable=False),
    sa.Column("message_id", sa.String(200), nullable=True),
    sa.Column("seen_at", UtcDateTime(), nullable=False),
)

# --- profiles ---------------------------------------------------------------------

traits = sa.Table(
    "traits",
    metadata,
    sa.Column("one_id", sa.String(40), primary_key=True),
    sa.Column("key", sa.String(200), primary_key=True),
    sa.Column("value", sa.JSON, nullable=True),
    sa.Column("updated_at", UtcDateTime(), nullable=False),
    # The identify call that set the value (migration 0007_trait_message_id): of two
    # values set at the same instant the larger message id wins, everywhere.
    sa.Column("message_id", sa.String(200), nullable=True),
)

# --- identity: idempotency keys (migration 0002_identity) --------------------------

# A ONE_ID is merged away once; a conflict is recorded once per pair, identifier and rule.
sa.Index("uq_identity_merges_loser", merges.c.loser, unique=True)
sa.Index(
    "uq_identity_conflicts_pair",
    identity_conflicts.c.one_id,
    identity_conflicts.c.other_one_id,
    identity_conflicts.c.kind,
    identity_conflicts.c.value,
    identity_conflicts.c.rule,
    unique=True,
)

# --- tags and layers (migration 0002_tags) ----------------------------------------

# One row per tag; ``definition`` is the validated pydantic model as JSON.
# ``last_as_of`` is the instant of the tag's latest successful refresh (the
# scheduler compares it with the tag's period).
tag_definitions = sa.Table(
    "tag_definitions",
    metadata,
    sa.Column("name", sa.String(63), primary_key=True),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("definition", sa.JSON, nullable=False),
    sa.Column("created_at", UtcDateTime(), nullable=False),
    sa.Column("updated_at", UtcDateTime(), nullable=False),
    sa.Column("last_as_of", UtcDateTime(), nullable=True),
)

# Every refresh (manual, API or scheduled): what ran, as of when, how it ended.
tag_refresh_runs = sa.Table(
    "tag_refresh_runs",
    metadata,
    sa.Column("run_id", sa.String(32), primary_key=True),
    sa.Column("as_of", UtcDateTime(), nullable=False, index=True),
    sa.Column("trigger", sa.String(16), nullable=False),  # cli | api | schedule
    sa.Column("tags", sa.JSON, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),  # running | succeeded | failed
    sa.Column("rows", sa.BigInteger, nullable=True),
    sa.Column("error", sa.Text, nullable=True),
    sa.Column("started_at", UtcDateTime(), nullable=False),
    sa.Column("finished_at", UtcDateTime(), nullable=True),
)

# Rules of a built-in layer when they differ from the documented defaults.
layer_definitions = sa.Table(
    "layer_definitions",
    metadata,
    sa.Column("name", sa.String(63), primary_key=True),
    sa.Column("rules", sa.JSON, nullable=False),
    sa.Column("updated_at", UtcDateTime(), nullable=False),
)

# One computation of one layer as of one instant: recomputing replaces it, so
# (layer, as_of) is unique. ``counts`` is the distribution; ``rules`` the rules used.
layer_runs = sa.Table(
    "layer_runs",
    metadata,
    sa.Column("layer", sa.String(63), primary_key=True),
    sa.Column("as_of", UtcDateTime(), primary_key=True),
    sa.Column("rules", sa.JSON, nullable=False),
    sa.Column("counts", sa.JSON, nullable=False),
    sa.Column("rows", sa.BigInteger, nullable=False),
    sa.Column("computed_at", UtcDateTime(), nullable=False),
)

# --- coupons ----------------------------------------------------------------------
# A coupon's state changes only by a conditional UPDATE on its row (state, version);
# template counters only by ``UPDATE … WHERE issued_count + n <= quantity`` and the CHECK
# constraints below, so quantities and budgets hold under any concurrency.

coupon_templates = sa.Table(
    "coupon_templates",
    metadata,
    sa.Column("template_id", sa.String(40), primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("spec", sa.JSON, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),  # active | paused | archived
    sa.Column("face_value", sa.BigInteger, nullable=True),  # minor units; None = unbounded
    sa.Column("quantity", sa.BigInteger, nullable=True),
    sa.Column("budget", sa.BigInteger, nullable=True),  # minor units of face value
    sa.Column("issued_count", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("budget_committed", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("redeemed_count", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("discount_spent", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("created_at", UtcDateTime(), nullable=False),
    sa.Column("updated_at", UtcDateTime(), nullable=False),
    sa.CheckConstraint("quantity IS NULL OR issued_count <= quantity", name="quantity"),
    sa.CheckConstraint("budget IS NULL OR budget_committed <= budget", name="budget"),
)

coupons = sa.Table(
    "coupons",
    metadata,
    sa.Column("code", sa.String(32), primary_key=True),
    sa.Column("template_id", sa.String(40), nullable=False),
    sa.Column("one_id", sa.String(40), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),  # issued|locked|redeemed|expired|voided
    sa.Column("face_value", sa.BigInteger, nullable=True),
    sa.Column("issued_at", UtcDateTime(), nullable=False),
    sa.Column("valid_from", UtcDateTime(), nullable=False),
    sa.Column("valid_until", UtcDateTime(), nullable=False),
    sa.Column("issuance_key", sa.String(200), nullable=True, unique=True),
    sa.Column("batch_id", sa.String(64), nullable=True),
    sa.Column("version", sa.Integer, nullable=False),  # = seq of its last ledger row
    sa.Column("order_id", sa.String(200), nullable=True),
    sa.Column("lock_expires_at", UtcDateTime(), nullable=True),
    sa.Column("discount", sa.BigInteger, nullable=True),  # minor units, set at lock
    sa.Column("allocations", sa.JSON, nullable=True),  # {"lines": {line_id: n}, "shipping": n}
    sa.Column("redeemed_at", UtcDateTime(), nullable=True),
    sa.Column("updated_at", UtcDateTime(), nullable=False),
    sa.Index("ix_coupons_one_id_template_id", "one_id", "template_id"),
    sa.Index("ix_coupons_state_valid_until", "state", "valid_until"),
    sa.Index("ix_coupons_order_id", "order_id"),
)

coupon_ledger = sa.Table(
    "coupon_ledger",
    metadata,
    sa.Column("code", sa.String(32), primary_key=True),
    sa.Column("seq", sa.Integer, primary_key=True),
    sa.Column("template_id", sa.String(40), nullable=False),
    sa.Column("one_id", sa.String(40), nullable=False),
    # issued | locked | released | redeemed | refunded | partially_refunded | voided | expired
    sa.Column("action", sa.String(32), nullable=False),
    sa.Column("from_state", sa.String(16), nullable=True),
    sa.Column("to_state", sa.String(16), nullable=False),
    sa.Column("at", UtcDateTime(), nullable=False),
    sa.Column("order_id", sa.String(200), nullable=True),
    sa.Column("amount", sa.BigInteger, nullable=True),  # face value or discount, minor units
    sa.Column("reason", sa.String(300), nullable=False, server_default=""),
    sa.Column("request_key", sa.String(200), nullable=True),
    sa.Column("batch_id", sa.String(64), nullable=True),
    sa.Column("lines", sa.JSON, nullable=True),  # refunded line ids (partially_refunded)
    # The ledger is the outbox of the warehouse's coupon events.
    sa.Column("published", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Index(
        "ix_coupon_ledger_unpublished",
        "published",
        sqlite_where=sa.text("published = 0"),
        postgresql_where=sa.text("published = false"),
    ),
)

coupon_requests = sa.Table(
    "coupon_requests",
    metadata,
    sa.Column("idempotency_key", sa.String(200), primary_key=True),
    sa.Column("operation", sa.String(32), nullable=False),
    sa.Column("request_hash", sa.String(64), nullable=False),
    sa.Column("response", sa.JSON, nullable=False),
    sa.Column("created_at", UtcDateTime(), nullable=False),
)

coupon_marks = sa.Table(
    "coupon_marks",
    metadata,
    sa.Column(
        "mark_id",
        sa.BigInteger().with_variant(sa.Integer, "sqlite"),
        primary_key=True,
        autoincrement=True,
    ),
    sa.Column("template_id", sa.String(40), nullable=False),
    sa.Column("action", sa.String(16), nullable=False),  # claim | redeem
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("value_hash", sa.String(64), nullable=False),  # sha256, never the raw value
    sa.Column("one_id", sa.String(40), nullable=False),
    sa.Column("code", sa.String(32), nullable=False),
    sa.Column("at", UtcDateTime(), nullable=False),
    sa.Index("ix_coupon_marks_rule", "template_id", "action", "kind", "value_hash", "at"),
)

coupon_blocks = sa.Table(
    "coupon_blocks",
    metadata,
    sa.Column("kind", sa.String(32), primary_key=True),
    sa.Column("value_hash", sa.String(64), primary_key=True),
    sa.Column("reason", sa.String(300), nullable=False),
    sa.Column("created_at", UtcDateTime(), nullable=False),
)

# --- segments -----------------------------------------------------------------------

segments = sa.Table(
    "segments",
    metadata,
    sa.Column("segment_id", sa.String(40), primary_key=True),
    sa.Column("name", sa.String(200), nullable=False, unique=True),
    sa.Column("description", sa.Text, nullable=False, server_default=""),
    sa.Column("rule", sa.JSON, nullable=False),
    # Materialise every N minutes (a worker calls ``materialise_due``); NULL: on demand only.
    sa.Column("refresh_every_minutes", sa.Integer, nullable=True),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("created_at", UtcDateTime(), nullable=False),
    sa.Column("updated_at", UtcDateTime(), nullable=False),
)

# One row per completed membership snapshot; the members themselves are in the
# warehouse table ``segment_members`` under the same (segment_id, snapshot_at).
segment_snapshots = sa.Table(
    "segment_snapshots",
    metadata,
    sa.Column("segment_id", sa.String(40), primary_key=True),
    sa.Column("snapshot_at", UtcDateTime(), primary_key=True),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("member_count", sa.Integer, nullable=False),
    sa.Column("entered", sa.Integer, nullable=False),
    sa.Column("exited", sa.Integer, nullable=False),
    sa.Column("created_at", UtcDateTime(), nullable=False),
)

# --- identity: merge generation (migration 0003_identity_generation) ---------------

# One row (id = 1). Every identity merge increments ``generation`` in its own
# transaction; processes that cache identifier → ONE_ID drop their cache when
# they see it move (``zhiying.identity.cache``). ``minted`` counts the ONE_IDs
# minted: the last ``one_ids.mint_order`` given (migration 0008_one_id_mint_order).
identity_generation = sa.Table(
    "identity_generation",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("generation", sa.BigInteger, nullable=False),
    sa.Column("minted", sa.BigInteger, nullable=False, server_default="0"),
)

# --- worker: job leases (migration 0005_worker_leases) -------------------------------

# One row per scheduled job. A worker runs a job only while it holds the job's
# lease (``holder``, until ``expires_at``); several ``serve``/``worker``
# processes on one PostgreSQL database therefore never run the same job at once.
worker_leases = sa.Table(
    "worker_leases",
    metadata,
    sa.Column("job", sa.String(80), primary_key=True),
    sa.Column("holder", sa.String(80), nullable=False),
    sa.Column("expires_at", UtcDateTime(), nullable=False),
)

# --- identity: person keys (migration 0006_person_keys) ------------------------------

# The warehouse groups people by an integer, not by the text ONE_ID (text keys cost
# several times an integer in every GROUP BY and join: bench/RESULTS.md, Segments).
# One key per ONE_ID, minted by ``zhiying.ingest.person_keys``; keys come from
# ``key_blocks`` in blocks reserved by committed transactions, so a key is never
# handed out twice, even when the transaction that used it rolls back.
person_keys = sa.Table(
    "person_keys",
    metadata,
    sa.Column("one_id", sa.String(40), primary_key=True),
    sa.Column("person_key", sa.BigInteger, nullable=False, unique=True),
)

# One row per key sequence (``person_key``): the next value not yet reserved.
key_blocks = sa.Table(
    "key_blocks",
    metadata,
    sa.Column("name", sa.String(40), primary_key=True),
    sa.Column("next_value", sa.BigInteger, nullable=False),
)
