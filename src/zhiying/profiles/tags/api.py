"""``/api/tags``: define, list, refresh and read tags (admin key)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, Body, Query
from pydantic import BaseModel

from zhiying.api.deps import AdminKey, StoresDep
from zhiying.errors import ValidationFailed
from zhiying.profiles.layers.models import parse_as_of
from zhiying.profiles.tags import service
from zhiying.profiles.tags.models import TagDefinition

router = APIRouter(prefix="/api/tags", tags=["tags"])


class TagPublic(BaseModel):
    definition: TagDefinition
    created_at: datetime
    updated_at: datetime
    last_as_of: datetime | None


class RefreshRequest(BaseModel):
    tags: list[str] | None = None
    as_of: str | None = None


class RefreshPublic(BaseModel):
    run_id: str
    as_of: datetime
    tags: list[str]
    rows: int
    history_rows: int


def _public(r: service.TagRecord) -> TagPublic:
    return TagPublic(
        definition=r.definition,
        created_at=r.created_at,
        updated_at=r.updated_at,
        last_as_of=r.last_as_of,
    )


def as_of_or_none(text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        return parse_as_of(text)
    except ValueError as exc:
        raise ValidationFailed(str(exc), field="as_of") from exc


@router.get("")
def list_tags(stores: StoresDep, _key: AdminKey) -> list[TagPublic]:
    return [_public(r) for r in service.list_tags(stores)]


@router.put("/{name}")
def put_tag(
    name: str, stores: StoresDep, _key: AdminKey, body: dict[str, Any] = Body(...)
) -> TagPublic:
    """Create or replace a tag; the body is a definition (its ``name`` must match the path)."""
    tag = service.parse_definition({**body, "name": body.get("name", name)})
    if tag.name != name:
        raise ValidationFailed("the body's name differs from the path", field="name")
    return _public(service.define_tag(stores, tag))


@router.get("/runs")
def runs(
    stores: StoresDep, _key: AdminKey, limit: int = Query(20, ge=1, le=500)
) -> list[dict[str, Any]]:
    return [r.__dict__ for r in service.list_runs(stores, limit)]


@router.post("/refresh")
def refresh(
    stores: StoresDep, _key: AdminKey, request: RefreshRequest | None = None
) -> RefreshPublic:
    """Refresh the given tags (default: all) for every person, as of ``as_of`` (default: now)."""
    req = request or RefreshRequest()
    result = service.refresh(stores, as_of=as_of_or_none(req.as_of), names=req.tags, trigger="api")
    return RefreshPublic(**result.__dict__)


@router.get("/{name}")
def get_tag(name: str, stores: StoresDep, _key: AdminKey) -> TagPublic:
    return _public(service.get_tag(stores, name))


@router.delete("/{name}", status_code=204)
def delete_tag(name: str, stores: StoresDep, _key: AdminKey) -> None:
    service.delete_tag(stores, name)


@router.get("/{name}/values")
def value_counts(
    name: str, stores: StoresDep, _key: AdminKey, limit: int = Query(20, ge=1, le=1000)
) -> list[dict[str, Any]]:
    """The most common current values and how many people hold each."""
    return [v.__dict__ for v in service.value_counts(stores, name, limit)]


@router.get("/{name}/history/{one_id}")
def history(name: str, one_id: str, stores: StoresDep, _key: AdminKey) -> list[dict[str, Any]]:
    """The values a tag had for one person at each refresh (dynamic tags keep history)."""
    return [p.__dict__ for p in service.history(stores, name, one_id)]
