"""HTTP routes for coupons under ``/api/coupons`` (admin key, ``Authorization: Bearer``).

Money is integer minor units everywhere. Lock, redeem, release and refund accept an
``Idempotency-Key`` header: a replay returns the first answer. After every change the
ledger's pending rows are exported to the warehouse in the background (the ledger stays
the source of truth; ``POST /api/coupons/maintenance`` retries anything left behind).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, BackgroundTasks, Header, Query
from pydantic import BaseModel, Field, model_validator

from zhiying.api.deps import AdminKey, StoresDep
from zhiying.coupons import abuse, audience, ledger
from zhiying.coupons import service as svc
from zhiying.coupons.maintenance import sweep as maintenance_sweep
from zhiying.coupons.models import Cart, CartLine, RequestContext, Template, TemplateSpec
from zhiying.coupons.pricing import Quote
from zhiying.errors import ValidationFailed
from zhiying.runtime import Stores

router = APIRouter(prefix="/api/coupons", tags=["coupons"])

IdempotencyKey = Annotated[
    str | None,
    Header(alias="Idempotency-Key", max_length=200, description="Replays return the first answer."),
]


# --- schemas ------------------------------------------------------------------------------------


class LineIn(BaseModel):
    line_id: str
    product_id: str
    unit_price: int = Field(ge=0, description="Minor units (fen).")
    quantity: int = Field(default=1, gt=0)
    category: str | None = None
    brand: str | None = None


class CartIn(BaseModel):
    lines: list[LineIn] = Field(min_length=1)
    shipping_fee: int = Field(default=0, ge=0)
    store_id: str | None = None
    city: str | None = None
    channel: str | None = None

    def to_cart(self) -> Cart:
        try:
            return Cart(
                tuple(CartLine(**line.model_dump()) for line in self.lines),
                shipping_fee=self.shipping_fee,
                store_id=self.store_id,
                city=self.city,
                channel=self.channel,
            )
        except ValueError as exc:
            raise ValidationFailed(str(exc), field="cart") from exc


class ContextIn(BaseModel):
    """What the shop knows about the customer's request (hashed before storage)."""

    ip: str | None = None
    device_id: str | None = None
    address: str | None = None
    payment_account: str | None = None
    phone: str | None = None

    def to_context(self) -> RequestContext:
        return RequestContext(**self.model_dump())


class TemplateCreate(BaseModel):
    template_id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.-]{1,40}$")
    spec: TemplateSpec


class TemplatePublic(BaseModel):
    template_id: str
    status: str
    created_at: datetime
    spec: TemplateSpec
    face_value: int | None
    issued_count: int
    budget_committed: int
    redeemed_count: int
    discount_spent: int

    @classmethod
    def of(cls, t: Template) -> TemplatePublic:
        return cls(
            template_id=t.template_id,
            status=t.status,
            created_at=t.created_at,
            spec=t.spec,
            face_value=t.spec.face_value,
            issued_count=t.issued_count,
            budget_committed=t.budget_committed,
            redeemed_count=t.redeemed_count,
            discount_spent=t.discount_spent,
        )


class StatusIn(BaseModel):
    status: Literal["active", "paused", "archived"]


class IssueIn(BaseModel):
    one_id: str = Field(min_length=1, max_length=40)
    issuance_key: str | None = Field(default=None, max_length=150)
    source: Literal["issue", "claim", "trigger"] = "issue"
    context: ContextIn = ContextIn()


class BatchIn(BaseModel):
    """Who gets the batch: ``one_ids`` (up to 100,000) or ``segment_id`` (the saved
    segment's current members), exactly one of them."""

    batch_key: str = Field(min_length=1, max_length=64, pattern=r"^[^/]+$")
    one_ids: list[str] | None = Field(default=None, min_length=1, max_length=100_000)
    segment_id: str | None = Field(default=None, min_length=1, max_length=64)

    @model_validator(mode="after")
    def _one_audience(self) -> BatchIn:
        if (self.one_ids is None) == (self.segment_id is None):
            raise ValueError("give exactly one of one_ids or segment_id")
        return self


class BatchOut(BaseModel):
    batch_key: str
    requested: int
    issued: int
    already_issued: int
    over_user_limit: int
    blocked: int
    not_issued: int
    stopped_by: str | None
    events_written: int
    events_pending: int


class QuoteIn(BaseModel):
    one_id: str
    cart: CartIn
    order_id: str | None = Field(default=None, description="Also offer coupons locked for it.")
    at: datetime | None = Field(default=None, description="Price at this instant (default: now).")


class LockIn(BaseModel):
    one_id: str
    codes: list[str] = Field(min_length=1, max_length=20)
    cart: CartIn
    context: ContextIn = ContextIn()


class RedeemIn(BaseModel):
    """Empty body: redeem what is locked for the order. With ``one_id``, ``codes`` and
    ``cart``: lock and redeem in one step (point of sale)."""

    one_id: str | None = None
    codes: list[str] | None = Field(default=None, max_length=20)
    cart: CartIn | None = None
    context: ContextIn = ContextIn()


class ReasonIn(BaseModel):
    reason: str = Field(default="", max_length=300)


class RefundIn(ReasonIn):
    """Without ``lines`` the whole order is refunded; with them only those lines."""

    lines: list[str] | None = Field(default=None, min_length=1, max_length=1000)


class BlockIn(BaseModel):
    kind: str = Field(pattern=r"^[a-z_]{2,32}$")
    value: str = Field(min_length=1, max_length=256)
    reason: str = Field(min_length=1, max_length=300)


class LedgerRow(BaseModel):
    seq: int
    action: str
    from_state: str | None
    to_state: str
    at: datetime
    order_id: str | None
    amount: int | None
    reason: str


class MaintenanceOut(BaseModel):
    locks_released: int
    expired: int
    events_published: int


def _publish(stores: Stores) -> None:
    ledger.publish_pending(
        stores.engine,
        stores.warehouse,
        stores.clock.now(),
        dedup_days=stores.settings.dedup_window_days,
    )


# --- templates --------------------------------------------------------------------------------


@router.post("/templates", status_code=201)
def create_template(body: TemplateCreate, stores: StoresDep, _: AdminKey) -> TemplatePublic:
    """Create a template (满减, 折扣, 代金, 买N送M, 包邮) with scope, validity, limits, rules."""
    t = svc.create_template(stores.engine, body.spec, stores.clock.now(), body.template_id)
    return TemplatePublic.of(svc.get_template(stores.engine, t.template_id))


@router.get("/templates")
def list_templates(stores: StoresDep, _: AdminKey) -> list[TemplatePublic]:
    return [TemplatePublic.of(t) for t in svc.list_templates(stores.engine)]


@router.get("/templates/{template_id}")
def get_template(template_id: str, stores: StoresDep, _: AdminKey) -> TemplatePublic:
    return TemplatePublic.of(svc.get_template(stores.engine, template_id))


@router.post("/templates/{template_id}/status")
def set_status(template_id: str, body: StatusIn, stores: StoresDep, _: AdminKey) -> TemplatePublic:
    t = svc.set_template_status(stores.engine, template_id, body.status, stores.clock.now())
    return TemplatePublic.of(t)


# --- issuance ------------------------------------------------------------------------------------


@router.post("/templates/{template_id}/issue")
def issue(
    template_id: str, body: IssueIn, stores: StoresDep, _: AdminKey, tasks: BackgroundTasks
) -> svc.Issued:
    """Issue (or let a user claim) one coupon; idempotent by ``issuance_key``."""
    result = svc.issue(
        stores.engine,
        template_id,
        body.one_id,
        stores.clock.now(),
        issuance_key=body.issuance_key,
        context=body.context.to_context(),
        source=body.source,
    )
    tasks.add_task(_publish, stores)
    return result


@router.post("/templates/{template_id}/batches")
def issue_batch(template_id: str, body: BatchIn, stores: StoresDep, _: AdminKey) -> BatchOut:
    """Issue to a list of ONE_IDs (up to 100,000 per call) or to the current members of a
    saved segment (``segment_id``; ``zhiying coupons issue-batch --segment`` shows progress).
    Idempotent by ``batch_key``."""
    now = stores.clock.now()
    people = (
        body.one_ids
        if body.one_ids is not None
        else audience.segment_members(stores, str(body.segment_id), now)
    )
    r = svc.issue_batch(
        stores.engine,
        stores.warehouse,
        template_id,
        people,
        now,
        batch_key=body.batch_key,
        dedup_days=stores.settings.dedup_window_days,
    )
    return BatchOut(**r.__dict__)


# --- pricing and orders --------------------------------------------------------------------------


@router.post("/quote")
def quote(body: QuoteIn, stores: StoresDep, _: AdminKey) -> Quote:
    """Which of the person's coupons apply to the cart, the best combination with the
    discount per line, and for every other coupon the rule that refused it."""
    return svc.quote_for(
        stores.engine,
        body.one_id,
        body.cart.to_cart(),
        body.at or stores.clock.now(),
        order_id=body.order_id,
    )


@router.post("/orders/{order_id}/lock")
def lock(
    order_id: str,
    body: LockIn,
    stores: StoresDep,
    _: AdminKey,
    tasks: BackgroundTasks,
    idempotency_key: IdempotencyKey = None,
) -> svc.LockResult:
    result = svc.lock(
        stores.engine,
        order_id,
        body.one_id,
        body.codes,
        body.cart.to_cart(),
        stores.clock.now(),
        idempotency_key=idempotency_key,
        context=body.context.to_context(),
    )
    tasks.add_task(_publish, stores)
    return result


@router.post("/orders/{order_id}/redeem")
def redeem(
    order_id: str,
    body: RedeemIn,
    stores: StoresDep,
    _: AdminKey,
    tasks: BackgroundTasks,
    idempotency_key: IdempotencyKey = None,
) -> svc.RedeemResult:
    result = svc.redeem(
        stores.engine,
        order_id,
        stores.clock.now(),
        one_id=body.one_id,
        codes=body.codes,
        cart=body.cart.to_cart() if body.cart else None,
        idempotency_key=idempotency_key,
        context=body.context.to_context(),
    )
    tasks.add_task(_publish, stores)
    return result


@router.post("/orders/{order_id}/release")
def release(
    order_id: str,
    body: ReasonIn,
    stores: StoresDep,
    _: AdminKey,
    tasks: BackgroundTasks,
    idempotency_key: IdempotencyKey = None,
) -> svc.ReleaseResult:
    result = svc.release(
        stores.engine,
        order_id,
        stores.clock.now(),
        reason=body.reason or "order cancelled",
        idempotency_key=idempotency_key,
    )
    tasks.add_task(_publish, stores)
    return result


@router.post("/orders/{order_id}/refund")
def refund(
    order_id: str,
    body: RefundIn,
    stores: StoresDep,
    _: AdminKey,
    tasks: BackgroundTasks,
    idempotency_key: IdempotencyKey = None,
) -> svc.RefundResult:
    result = svc.refund(
        stores.engine,
        order_id,
        stores.clock.now(),
        reason=body.reason or "order refunded",
        idempotency_key=idempotency_key,
        lines=body.lines,
    )
    tasks.add_task(_publish, stores)
    return result


# --- wallets, coupons, ledger -------------------------------------------------------------------


@router.get("/wallets/{one_id}")
def wallet(
    one_id: str,
    stores: StoresDep,
    _: AdminKey,
    state: Annotated[list[str] | None, Query()] = None,
) -> list[svc.CouponView]:
    return svc.wallet(stores.engine, one_id, states=state)


@router.get("/codes/{code}")
def get_coupon(code: str, stores: StoresDep, _: AdminKey) -> svc.CouponView:
    return svc.get_coupon(stores.engine, code)


@router.get("/codes/{code}/ledger")
def coupon_ledger(code: str, stores: StoresDep, _: AdminKey) -> list[LedgerRow]:
    """Every transition of one coupon, oldest first."""
    svc.get_coupon(stores.engine, code)
    with stores.engine.connect() as conn:
        entries = ledger.history(conn, code)
    return [
        LedgerRow(
            seq=e.seq,
            action=e.action,
            from_state=e.from_state,
            to_state=e.to_state,
            at=e.at,
            order_id=e.order_id,
            amount=e.amount,
            reason=e.reason,
        )
        for e in entries
    ]


@router.post("/codes/{code}/void")
def void(
    code: str, body: ReasonIn, stores: StoresDep, _: AdminKey, tasks: BackgroundTasks
) -> svc.CouponView:
    result = svc.void(stores.engine, code, stores.clock.now(), reason=body.reason or "voided")
    tasks.add_task(_publish, stores)
    return result


# --- abuse control ------------------------------------------------------------------------------


@router.post("/blocks", status_code=201)
def add_block(body: BlockIn, stores: StoresDep, _: AdminKey) -> dict[str, str]:
    h = abuse.block(stores.engine, body.kind, body.value, body.reason, stores.clock.now())
    return {"kind": body.kind, "value_hash": h}


@router.get("/blocks")
def list_blocks(stores: StoresDep, _: AdminKey) -> list[dict[str, object]]:
    return abuse.list_blocks(stores.engine)


@router.get("/risk-report")
def risk_report(
    stores: StoresDep,
    _: AdminKey,
    min_accounts: Annotated[int, Query(ge=2)] = 3,
    new_account_days: Annotated[int, Query(ge=1)] = 7,
    quiet_days: Annotated[int, Query(ge=1)] = 30,
) -> abuse.RiskReport:
    """Clusters of accounts behind one device, phone, IP, address or payment account."""
    return abuse.risk_report(
        stores.engine,
        stores.clock.now(),
        min_accounts=min_accounts,
        new_account_days=new_account_days,
        quiet_days=quiet_days,
    )


@router.post("/maintenance")
def maintenance(stores: StoresDep, _: AdminKey) -> MaintenanceOut:
    """Release timed-out locks, expire ended coupons, export pending ledger rows."""
    done = maintenance_sweep(stores)
    return MaintenanceOut(
        locks_released=done.locks_released,
        expired=done.expired,
        events_published=done.events_published,
    )
