"""The coupon engine's public API in one import (a facade; the code lives in the
modules below).

Every state change is one transaction in the operational store that (1) changes the
coupon's row only if it is still in the state the change starts from (row lock +
``version`` check), (2) adjusts the template's counters with a conditional UPDATE
guarded by CHECK constraints (quantity, budget), and (3) writes a ledger row keyed by
``(code, seq)``. Externally triggered writes are idempotent: issuance by
``issuance_key`` (unique per template), lock/redeem/release/refund by an optional
``idempotency_key`` whose first successful answer is stored and replayed.

Where things are (``zhiying.coupons.…``):

* ``templates``    create, read, pause/archive templates; the parsed-spec cache
* ``issuance``     one coupon to one person (issue, claim)
* ``batches``      one coupon to each of many people (segment, list, CSV)
* ``redemption``   lock at checkout, redeem at payment
* ``release``      give locked coupons back (order cancelled, payment failed)
* ``refunds``      undo redemptions of a refunded order, whole or line by line
* ``maintenance``  sweeps (timed-out locks, expiry) and voiding
* ``wallet``       read a coupon, a wallet, a quote over the wallet
* ``results`` / ``errors``  answers and refusals of all of the above
* ``tx`` / ``counters`` / ``idempotency`` / ``codes``  shared machinery: the write
  transaction, template counters, stored answers for replays, code generation
* ``models`` / ``pricing`` / ``abuse`` / ``ledger`` / ``bulk`` / ``audience``  value
  objects, pure pricing, abuse rules, the ledger and its event export, bulk inserts,
  resolving an audience to ONE_IDs
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime

from sqlalchemy import Engine

from zhiying.coupons import batches
from zhiying.coupons.batches import BatchResult
from zhiying.coupons.codes import new_codes
from zhiying.coupons.errors import CouponConflict, CouponNotApplicable, LimitReached
from zhiying.coupons.issuance import issue
from zhiying.coupons.ledger import PUBLISH_PAGE
from zhiying.coupons.maintenance import expire_due, release_timed_out, void
from zhiying.coupons.redemption import lock, redeem
from zhiying.coupons.refunds import refund
from zhiying.coupons.release import release
from zhiying.coupons.results import (
    CouponDiscount,
    CouponView,
    Issued,
    LockResult,
    RedeemResult,
    RefundResult,
    ReleaseResult,
)
from zhiying.coupons.templates import (
    create_template,
    get_template,
    list_templates,
    set_template_status,
)
from zhiying.coupons.tx import write_tx
from zhiying.coupons.wallet import get_coupon, quote_for, wallet
from zhiying.warehouse.base import Warehouse

__all__ = [
    "PUBLISH_PAGE",
    "BatchResult",
    "CouponConflict",
    "CouponDiscount",
    "CouponNotApplicable",
    "CouponView",
    "Issued",
    "LimitReached",
    "LockResult",
    "RedeemResult",
    "RefundResult",
    "ReleaseResult",
    "create_template",
    "expire_due",
    "get_coupon",
    "get_template",
    "issue",
    "issue_batch",
    "list_templates",
    "lock",
    "new_codes",
    "quote_for",
    "redeem",
    "refund",
    "release",
    "release_timed_out",
    "set_template_status",
    "void",
    "wallet",
    "write_tx",
]


def issue_batch(
    engine: Engine,
    warehouse: Warehouse | None,
    template_id: str,
    one_ids: Iterable[str],
    now: datetime,
    *,
    batch_key: str,
    chunk_size: int = 5000,
    progress: Callable[[int], None] | None = None,
    dedup_days: int = 7,
) -> BatchResult:
    """``batches.issue_batch`` with events written once per this module's
    ``PUBLISH_PAGE`` rows, read at each call (so setting it here, as tests do, takes
    effect)."""
    return batches.issue_batch(
        engine,
        warehouse,
        template_id,
        one_ids,
        now,
        batch_key=batch_key,
        chunk_size=chunk_size,
        progress=progress,
        dedup_days=dedup_days,
        page=PUBLISH_PAGE,
    )
