"""Abuse control (防薅羊毛): block lists, limits across accounts, velocity rules, risk report.

Identifiers come from two places: the person's ONE_ID identifiers (``device_id``,
``phone``, ``email``, ``user_id`` from the operational ``identifiers`` table, read
only) and the request context of a claim or redemption (``ip``, ``device_id``,
``address``, ``payment_account``, ``phone``). Only SHA-256 hashes of values are
stored (``coupon_marks``, ``coupon_blocks``).

Counting is exact under concurrency because the caller has already locked the
template's row (claims and redemptions of one template are serialised by the
database), so the marks counted here include every committed claim before ours.
Every refusal names its rule (``block_list``, ``identity_limit:device_id``,
``velocity:ip``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from sqlalchemy import Connection, Engine

from zhiying.coupons.models import (
    Action,
    RequestContext,
    TemplateSpec,
    identity_hash,
    normalise_context_value,
)
from zhiying.errors import ZhiyingError
from zhiying.identity.identifiers import InvalidIdentifier, normalize
from zhiying.store.tables import coupon_blocks, coupon_ledger, coupon_marks, identifiers, one_ids

USER_KINDS = ("user_id", "device_id", "phone", "email")


class AbuseRefused(ZhiyingError):
    """A claim or redemption refused by an abuse rule; ``rule`` names it."""

    code = "coupon_refused"
    status = 403


@dataclass(frozen=True)
class Fingerprint:
    """Hashed identifiers of one request: ``(kind, sha256)`` pairs, ONE_ID first."""

    pairs: tuple[tuple[str, str], ...]

    def of_kind(self, kind: str) -> list[str]:
        return [h for k, h in self.pairs if k == kind]


# Statements built once: SQLAlchemy then reuses their cache keys and compiled forms.
_IDENTIFIERS = sa.select(identifiers.c.kind, identifiers.c.value).where(
    identifiers.c.one_id == sa.bindparam("b_one_id"), identifiers.c.kind.in_(USER_KINDS)
)
_BLOCKS = sa.select(coupon_blocks.c.kind, coupon_blocks.c.value_hash).where(
    coupon_blocks.c.value_hash.in_(sa.bindparam("b_hashes", expanding=True))
)
_MARKS = coupon_marks.insert()
_COUNT = sa.select(sa.func.count()).where(
    coupon_marks.c.template_id == sa.bindparam("b_template_id"),
    coupon_marks.c.action == sa.bindparam("b_action"),
    coupon_marks.c.kind == sa.bindparam("b_kind"),
    coupon_marks.c.value_hash == sa.bindparam("b_hash"),
    coupon_marks.c.at > sa.bindparam("b_since", type_=coupon_marks.c.at.type),
)


def fingerprint(conn: Connection, one_id: str, context: RequestContext | None) -> Fingerprint:
    """The person's identifiers plus the request's, hashed and de-duplicated."""
    pairs: dict[tuple[str, str], None] = {("one_id", identity_hash("one_id", one_id)): None}
    for kind, value in conn.execute(_IDENTIFIERS, {"b_one_id": one_id}):
        pairs[(kind, identity_hash(kind, value))] = None
    for kind, value in context.pairs() if context else []:
        if kind == "phone":
            with contextlib.suppress(InvalidIdentifier):
                value = normalize("phone", value)
        pairs[(kind, identity_hash(kind, value))] = None
    return Fingerprint(tuple(pairs))


def check_blocks(conn: Connection, fp: Fingerprint) -> None:
    """Raise ``AbuseRefused(rule="block_list")`` when any identifier is blocked."""
    rows = conn.execute(_BLOCKS, {"b_hashes": [h for _, h in fp.pairs]}).all()
    blocked = {(r.kind, r.value_hash) for r in rows} & set(fp.pairs)
    if blocked:
        kind = sorted(blocked)[0][0]
        raise AbuseRefused(
            f"refused by the block list ({kind})", field=kind, rule="block_list", kind=kind
        )


def check_rules(
    conn: Connection,
    template_id: str,
    spec: TemplateSpec,
    action: Action,
    fp: Fingerprint,
    now: datetime,
) -> None:
    """Apply the template's identity limits and velocity rules for ``action``."""
    for limit in spec.abuse.identity_limits:
        if limit.action != action:
            continue
        for h in fp.of_kind(limit.kind):
            n = _count(conn, template_id, action, limit.kind, h, None)
            if n >= limit.max_count:
                raise AbuseRefused(
                    f"at most {limit.max_count} {action}s of this coupon per {limit.kind} "
                    f"(across accounts); this {limit.kind} has {n}",
                    field=limit.kind,
                    rule=f"identity_limit:{limit.kind}",
                    limit=limit.max_count,
                    count=n,
                )
    for v in spec.abuse.velocity:
        if v.action != action:
            continue
        since = now - timedelta(seconds=v.window_seconds)
        for h in fp.of_kind(v.kind):
            n = _count(conn, template_id, action, v.kind, h, since)
            if n >= v.max_count:
                raise AbuseRefused(
                    f"at most {v.max_count} {action}s per {v.kind} within "
                    f"{v.window_seconds} s; this {v.kind} has {n}",
                    field=v.kind,
                    rule=f"velocity:{v.kind}",
                    limit=v.max_count,
                    count=n,
                )


def _count(
    conn: Connection,
    template_id: str,
    action: str,
    kind: str,
    value_hash: str,
    since: datetime | None,
) -> int:
    params = {
        "b_template_id": template_id,
        "b_action": action,
        "b_kind": kind,
        "b_hash": value_hash,
        "b_since": since or datetime(1970, 1, 1, tzinfo=UTC),
    }
    return int(conn.execute(_COUNT, params).scalar_one())


def write_marks(
    conn: Connection,
    template_id: str,
    action: Action,
    fp: Fingerprint,
    spec: TemplateSpec,
    one_id: str,
    code: str,
    now: datetime,
) -> None:
    """Record the request's identifiers for later limits and the risk report.

    The ONE_ID itself is recorded only when a rule counts by it.
    """
    by_one_id = any(r.kind == "one_id" for r in spec.abuse.identity_limits) or any(
        r.kind == "one_id" for r in spec.abuse.velocity
    )
    rows = [
        {
            "template_id": template_id,
            "action": action,
            "kind": kind,
            "value_hash": h,
            "one_id": one_id,
            "code": code,
            "at": now,
        }
        for kind, h in fp.pairs
        if kind != "one_id" or by_one_id
    ]
    if rows:
        conn.execute(_MARKS, rows)


# --- block list ---------------------------------------------------------------------------


def _normalised(kind: str, value: str) -> str:
    if kind in ("phone", "email"):
        try:
            return normalize(kind, value)
        except InvalidIdentifier:
            return value.strip()
    return normalise_context_value(kind, value)


def block(engine: Engine, kind: str, value: str, reason: str, now: datetime) -> str:
    """Block ``kind:value`` from claiming and redeeming; returns the stored hash."""
    h = identity_hash(kind, _normalised(kind, value))
    with engine.begin() as conn:
        exists = conn.execute(
            sa.select(coupon_blocks.c.kind).where(
                coupon_blocks.c.kind == kind, coupon_blocks.c.value_hash == h
            )
        ).first()
        if exists is None:
            conn.execute(
                coupon_blocks.insert().values(
                    kind=kind, value_hash=h, reason=reason, created_at=now
                )
            )
    return h


def unblock(engine: Engine, kind: str, value: str) -> bool:
    h = identity_hash(kind, _normalised(kind, value))
    with engine.begin() as conn:
        result = conn.execute(
            coupon_blocks.delete().where(
                coupon_blocks.c.kind == kind, coupon_blocks.c.value_hash == h
            )
        )
    return result.rowcount > 0


def list_blocks(engine: Engine) -> list[dict[str, object]]:
    with engine.connect() as conn:
        rows = conn.execute(sa.select(coupon_blocks).order_by(coupon_blocks.c.created_at))
        return [dict(r._mapping) for r in rows]


# --- risk report ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Cluster:
    """Accounts that share one identifier value (hash prefix only, never the value)."""

    kind: str
    value_hash: str
    accounts: int
    new_accounts: int
    claims: int
    redemptions: int
    one_shot_accounts: int


@dataclass(frozen=True)
class RiskReport:
    since: datetime
    clusters: tuple[Cluster, ...]
    one_shot_accounts: int  # redeemed exactly once, then no coupon activity for quiet_days
    one_shot_share: float  # of the accounts that redeemed anything


def risk_report(
    engine: Engine,
    now: datetime,
    *,
    since: datetime | None = None,
    min_accounts: int = 3,
    new_account_days: int = 7,
    quiet_days: int = 30,
    kinds: Sequence[str] = (
        "device_id",
        "phone",
        "ip",
        "address",
        "payment_account",
    ),
) -> RiskReport:
    """Suspicious clusters: many (new) accounts behind one device, phone, IP, address or
    payment account, and accounts that redeem once and never come back.

    "New" means the ONE_ID was created at most ``new_account_days`` before its claim;
    "one-shot" means exactly one redemption, at least ``quiet_days`` ago, and no coupon
    activity of the person's own since (a claim, lock or redemption; coupons the
    operator pushed do not count as a return).
    """
    since = since or now - timedelta(days=90)
    m = coupon_marks
    with engine.connect() as conn:
        one_shot = _one_shot_accounts(conn, now, quiet_days)
        grouped = conn.execute(
            sa.select(
                m.c.kind,
                m.c.value_hash,
                sa.func.count(sa.distinct(m.c.one_id)).label("accounts"),
            )
            .where(m.c.at >= since, m.c.kind.in_(list(kinds)), m.c.action == "claim")
            .group_by(m.c.kind, m.c.value_hash)
            .having(sa.func.count(sa.distinct(m.c.one_id)) >= min_accounts)
            .order_by(sa.func.count(sa.distinct(m.c.one_id)).desc())
            .limit(1000)
        ).all()
        clusters = []
        for g in grouped:
            members = conn.execute(
                sa.select(m.c.one_id, m.c.action, m.c.at, one_ids.c.created_at)
                .select_from(m.outerjoin(one_ids, one_ids.c.one_id == m.c.one_id))
                .where(m.c.kind == g.kind, m.c.value_hash == g.value_hash, m.c.at >= since)
            ).all()
            new = {
                r.one_id
                for r in members
                if r.action == "claim"
                and r.created_at is not None
                and r.created_at >= r.at - timedelta(days=new_account_days)
            }
            accounts = {r.one_id for r in members}
            clusters.append(
                Cluster(
                    kind=g.kind,
                    value_hash=g.value_hash[:12],
                    accounts=len(accounts),
                    new_accounts=len(new),
                    claims=sum(1 for r in members if r.action == "claim"),
                    redemptions=sum(1 for r in members if r.action == "redeem"),
                    one_shot_accounts=len(accounts & one_shot),
                )
            )
        redeemers = conn.execute(
            sa.select(sa.func.count(sa.distinct(coupon_ledger.c.one_id))).where(
                coupon_ledger.c.action == "redeemed"
            )
        ).scalar_one()
    share = len(one_shot) / redeemers if redeemers else 0.0
    clusters.sort(key=lambda c: (-c.accounts, -c.new_accounts, c.kind, c.value_hash))
    return RiskReport(since, tuple(clusters), len(one_shot), share)


def _one_shot_accounts(conn: Connection, now: datetime, quiet_days: int) -> set[str]:
    led = coupon_ledger
    redeemed = (
        sa.select(
            led.c.one_id,
            sa.func.count().label("n"),
            sa.func.max(led.c.at).label("last_redeem"),
        )
        .where(led.c.action == "redeemed")
        .group_by(led.c.one_id)
        .subquery()
    )
    later = (
        sa.select(led.c.one_id)
        .where(
            led.c.one_id == redeemed.c.one_id,
            led.c.at > redeemed.c.last_redeem,
            sa.or_(
                led.c.action.in_(["locked", "redeemed"]),
                sa.and_(led.c.action == "issued", led.c.reason == "claim"),
            ),
        )
        .exists()
    )
    rows = conn.execute(
        sa.select(redeemed.c.one_id).where(
            redeemed.c.n == 1,
            redeemed.c.last_redeem <= now - timedelta(days=quiet_days),
            ~later,
        )
    ).scalars()
    return set(rows)
