"""Coupon templates: create, read, pause/archive, and the parsed-spec cache.

Why it exists: a template is what every coupon is issued from and priced by. Its spec
(benefit, scope, validity, limits, abuse rules, refund policy) is immutable once
stored: to change an offer, pause the template and create another. That is what makes
the per-database spec cache below safe: a spec is parsed once and reused by every
issue, lock and quote.

The template's counters (issued, budget committed, redeemed, discount spent) are not
changed here but in ``counters.py``, inside the transaction of the coupon change they
count.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from datetime import datetime
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy import Connection, Engine
from sqlalchemy.exc import IntegrityError

from zhiying.coupons.models import Template, TemplateSpec
from zhiying.errors import Conflict, NotFound
from zhiying.store.tables import coupon_templates


def create_template(
    engine: Engine, spec: TemplateSpec, now: datetime, template_id: str | None = None
) -> Template:
    """Store a new active template; its spec is immutable from now on (pause it instead)."""
    template_id = template_id or "tpl_" + secrets.token_hex(8)
    values = {
        "template_id": template_id,
        "name": spec.name,
        "kind": spec.benefit.kind,
        "spec": spec.model_dump(mode="json"),
        "status": "active",
        "face_value": spec.face_value,
        "quantity": spec.limits.quantity,
        "budget": spec.limits.budget,
        "issued_count": 0,
        "budget_committed": 0,
        "redeemed_count": 0,
        "discount_spent": 0,
        "created_at": now,
        "updated_at": now,
    }
    try:
        with engine.begin() as conn:
            conn.execute(coupon_templates.insert().values(**values))
    except IntegrityError as exc:
        raise Conflict(f"template {template_id} exists", field="template_id") from exc
    return Template(template_id=template_id, spec=spec, status="active", created_at=now)


def get_template(engine: Engine, template_id: str) -> Template:
    with engine.connect() as conn:
        row = conn.execute(
            sa.select(coupon_templates).where(coupon_templates.c.template_id == template_id)
        ).first()
        if row is None:
            raise NotFound(f"no coupon template {template_id}", field="template_id")
        return _template(row, spec_of(conn, template_id, row.spec))


def list_templates(engine: Engine) -> list[Template]:
    with engine.connect() as conn:
        rows = conn.execute(sa.select(coupon_templates).order_by(coupon_templates.c.created_at))
        return [_template(r, spec_of(conn, r.template_id, r.spec)) for r in rows]


def set_template_status(
    engine: Engine, template_id: str, status: Literal["active", "paused", "archived"], now: datetime
) -> Template:
    """Pause or archive a template (stops issuance; issued coupons stay usable)."""
    with engine.begin() as conn:
        n = conn.execute(
            coupon_templates.update()
            .where(coupon_templates.c.template_id == template_id)
            .values(status=status, updated_at=now)
        ).rowcount
    if not n:
        raise NotFound(f"no coupon template {template_id}", field="template_id")
    return get_template(engine, template_id)


def _template(row: Any, spec: TemplateSpec) -> Template:
    return Template(
        template_id=row.template_id,
        spec=spec,
        status=row.status,
        created_at=row.created_at,
        issued_count=row.issued_count,
        budget_committed=row.budget_committed,
        redeemed_count=row.redeemed_count,
        discount_spent=row.discount_spent,
    )


# --- the spec cache -------------------------------------------------------------------------

_specs: dict[tuple[str, str], TemplateSpec] = {}


def spec_of(conn: Connection, template_id: str, raw: Any) -> TemplateSpec:
    """The parsed spec of ``template_id`` whose stored JSON is ``raw``.

    Specs never change after creation: each is parsed once per database.
    """
    key = (str(conn.engine.url), template_id)
    spec = _specs.get(key)
    if spec is None:
        spec = TemplateSpec.model_validate(raw)
        _specs[key] = spec
    return spec


def load_spec(conn: Connection, template_id: str) -> TemplateSpec:
    """The spec of ``template_id``, read from the store only on a cache miss."""
    spec = _specs.get((str(conn.engine.url), template_id))
    if spec is not None:
        return spec
    raw = conn.execute(
        sa.select(coupon_templates.c.spec).where(coupon_templates.c.template_id == template_id)
    ).scalar()
    if raw is None:
        raise NotFound(f"no coupon template {template_id}", field="template_id")
    return spec_of(conn, template_id, raw)


def specs_of(conn: Connection, template_ids: Iterable[str]) -> dict[str, TemplateSpec]:
    """``load_spec`` of each distinct template id, in template-id order."""
    return {t: load_spec(conn, t) for t in sorted(set(template_ids))}
