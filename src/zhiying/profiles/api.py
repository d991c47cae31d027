"""Profile routes: a person by ONE_ID or identifier, their events and merge history.

``{ref}`` is a ONE_ID (``u_…``, a merged-away one too) or ``kind:value``
(``user_id:42``, ``phone:+8613800000000`` URL-encoded as ``phone:%2B86…``).
All routes need an admin key.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from zhiying.api.deps import AdminKey, StoresDep
from zhiying.profiles import service

router = APIRouter(tags=["profiles"])


class IdentifierPublic(BaseModel):
    kind: str
    value: str
    first_seen: str
    last_seen: str


class TraitPublic(BaseModel):
    key: str
    value: Any = Field(description="As last set: a number, or text (nested values as JSON text).")
    updated_at: str
    one_id: str = Field(description="The ONE_ID the identify call that set it was resolved to.")


class CountsPublic(BaseModel):
    total: int
    by_type: dict[str, int]
    by_event: dict[str, int] = Field(description="Track events by name, most frequent first.")


class ProfilePublic(BaseModel):
    one_id: str = Field(description="The person's current ONE_ID.")
    merged: list[str] = Field(description="ONE_IDs merged into it.")
    identifiers: list[IdentifierPublic]
    traits: list[TraitPublic]
    counts: CountsPublic
    first_seen: str | None
    last_seen: str | None
    tags: dict[str, Any] = Field(
        default_factory=dict, description="Current computed tags: label or number."
    )


class EventsPublic(BaseModel):
    one_id: str
    events: list[dict[str, Any]] = Field(description="Newest first.")


class MergePublic(BaseModel):
    winner: str
    loser: str
    kind: str
    value: str
    reason: str
    message_id: str | None
    merged_at: str


class ConflictPublic(BaseModel):
    one_id: str = Field(description="Where the event went.")
    other_one_id: str = Field(description="Who keeps the shared identifier.")
    kind: str
    value: str
    rule: str = Field(description="one_user_id or one_wechat_unionid.")
    message_id: str | None
    seen_at: str


class HistoryPublic(BaseModel):
    one_id: str
    merges: list[MergePublic]
    conflicts: list[ConflictPublic]


class EventCountPublic(BaseModel):
    event: str | None
    count: int


@router.get("/api/profiles/{ref}", response_model=ProfilePublic)
def get_profile(ref: str, stores: StoresDep, _key: AdminKey) -> dict[str, Any]:
    """A person's identifiers, current traits, event counts and first/last seen."""
    return service.get_profile(stores, ref).as_dict()


@router.get("/api/profiles/{ref}/events", response_model=EventsPublic)
def get_profile_events(
    ref: str,
    stores: StoresDep,
    _key: AdminKey,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
) -> dict[str, Any]:
    """The person's latest events, across every ONE_ID merged into them."""
    one_id, events = service.latest_events(stores, ref, limit)
    return {"one_id": one_id, "events": events}


@router.get("/api/profiles/{ref}/merges", response_model=HistoryPublic)
def get_profile_merges(ref: str, stores: StoresDep, _key: AdminKey) -> dict[str, Any]:
    """Merges and identity conflicts involving the person's ONE_IDs, oldest first."""
    return service.merges(stores, ref).as_dict()


@router.get("/api/events/count", response_model=EventCountPublic, tags=["events"])
def count_events(
    stores: StoresDep,
    _key: AdminKey,
    event: Annotated[str | None, Query(description="Only track events of this name.")] = None,
) -> dict[str, Any]:
    """Number of events stored in the warehouse."""
    return {"event": event, "count": service.count_events(stores, event)}
