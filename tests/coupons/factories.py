"""Small builders for coupon tests: templates and candidates in a line each."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from zhiying.coupons.models import Candidate, TemplateSpec, Validity

T0 = datetime(2026, 11, 1, 9, 0, tzinfo=UTC)


def spec(benefit: dict[str, Any], **kw: Any) -> TemplateSpec:
    data: dict[str, Any] = {
        "name": kw.pop("name", benefit["kind"]),
        "benefit": benefit,
        "validity": kw.pop("validity", Validity(days_after_issue=30)),
    }
    data.update(kw)
    return TemplateSpec.model_validate(data)


def cand(code: str, s: TemplateSpec, start: datetime = T0, days: int = 30) -> Candidate:
    return Candidate(code, f"t-{code}", s, start - timedelta(days=1), start + timedelta(days=days))
