"""``/api/layers``: rules, computation, distribution and migration matrix (admin key)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, Body, Query
from pydantic import BaseModel

from zhiying.api.deps import AdminKey, StoresDep
from zhiying.errors import ValidationFailed
from zhiying.profiles.layers import service
from zhiying.profiles.layers.models import LAYER_NAMES, parse_as_of

router = APIRouter(prefix="/api/layers", tags=["layers"])


def _as_of(text: str, field: str = "as_of") -> datetime:
    try:
        return parse_as_of(text)
    except ValueError as exc:
        raise ValidationFailed(str(exc), field=field) from exc


class ComputeRequest(BaseModel):
    as_of: str | None = None
    layers: list[str] | None = None


@router.get("")
def list_layers(stores: StoresDep, _key: AdminKey) -> list[dict[str, Any]]:
    """Every layer with the rules it uses and the instants it was computed for."""
    return [
        {
            "name": name,
            "rules": service.rules_for(stores, name).model_dump(mode="json"),
            "computed": [d.isoformat() for d in service.computed_dates(stores, name)],
        }
        for name in LAYER_NAMES
    ]


@router.put("/{name}/rules")
def put_rules(
    name: str, stores: StoresDep, _key: AdminKey, body: dict[str, Any] = Body(...)
) -> dict[str, Any]:
    """Replace a layer's rules (fields left out keep their documented defaults)."""
    rules = service.parse_rules({**body, "layer": name})
    return service.set_rules(stores, rules).model_dump(mode="json")


@router.delete("/{name}/rules")
def reset_rules(name: str, stores: StoresDep, _key: AdminKey) -> dict[str, Any]:
    return service.reset_rules(stores, name).model_dump(mode="json")


@router.post("/compute")
def compute(
    stores: StoresDep, _key: AdminKey, request: ComputeRequest | None = None
) -> list[dict[str, Any]]:
    req = request or ComputeRequest()
    at = _as_of(req.as_of) if req.as_of else None
    runs = service.compute_layers(stores, as_of=at, layers=req.layers)
    return [
        {"layer": r.layer, "as_of": r.as_of.isoformat(), "rows": r.rows, "counts": r.counts}
        for r in runs
    ]


@router.get("/{name}/distribution")
def distribution(
    name: str, stores: StoresDep, _key: AdminKey, as_of: str = Query(...)
) -> dict[str, Any]:
    d = service.distribution(stores, name, _as_of(as_of))
    return {"layer": d.layer, "as_of": d.as_of.isoformat(), "total": d.total, "counts": d.counts}


@router.get("/{name}/migration")
def migration(
    name: str,
    stores: StoresDep,
    _key: AdminKey,
    from_: str = Query(..., alias="from"),
    to: str = Query(...),
) -> dict[str, Any]:
    """Customers by value at ``from`` (rows) and at ``to`` (columns)."""
    matrix = service.migration(stores, name, _as_of(from_, "from"), _as_of(to, "to"))
    return matrix.as_json()
