"""Segment routes: CRUD, preview, SQL, snapshots and member export. Admin key required.

A rule that does not validate, names an unknown trait or event, or cannot be
compiled is answered with 422 problem details whose ``errors[0].field`` is
the path inside the rule (``rule.rules.2.window.last``) and ``reason`` says why.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field

from zhiying.api.deps import AdminKey, StoresDep
from zhiying.errors import ValidationFailed
from zhiying.segments import service
from zhiying.segments.compiler import SqlDialect
from zhiying.segments.models import (
    PreviewRequest,
    PreviewResult,
    Rule,
    SegmentCreate,
    SegmentPublic,
    SegmentUpdate,
    SnapshotPublic,
    rule_path,
)


class _RulePaths(APIRoute):
    """Report request validation errors with paths inside the rule (no union tags)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                return await handler(request)
            except RequestValidationError as exc:
                first = exc.errors()[0]
                loc = tuple(first["loc"])
                if loc and loc[0] == "body":
                    loc = loc[1:]
                raise ValidationFailed(
                    f"invalid request: {first['msg']}", field=rule_path(loc) or "body"
                ) from exc

        return route


router = APIRouter(prefix="/api/segments", tags=["segments"], route_class=_RulePaths)


def _public(seg: service.Segment, last: service.Snapshot | None) -> SegmentPublic:
    return SegmentPublic(
        segment_id=seg.segment_id,
        name=seg.name,
        description=seg.description,
        rule=seg.rule,
        refresh_every_minutes=seg.refresh_every_minutes,
        version=seg.version,
        created_at=seg.created_at,
        updated_at=seg.updated_at,
        last_snapshot_at=last.snapshot_at if last else None,
        last_member_count=last.member_count if last else None,
    )


def _snap(s: service.Snapshot) -> SnapshotPublic:
    return SnapshotPublic(
        segment_id=s.segment_id,
        snapshot_at=s.snapshot_at,
        version=s.version,
        member_count=s.member_count,
        entered=s.entered,
        exited=s.exited,
    )


@router.post("", status_code=201, response_model=SegmentPublic)
def create(body: SegmentCreate, stores: StoresDep, _: AdminKey) -> SegmentPublic:
    """Create a segment (its rule is checked against the warehouse and compiled)."""
    return _public(service.create_segment(stores, body), None)


@router.get("", response_model=list[SegmentPublic])
def list_(stores: StoresDep, _: AdminKey) -> list[SegmentPublic]:
    last = service.last_snapshots(stores)
    return [_public(s, last.get(s.segment_id)) for s in service.list_segments(stores)]


@router.post("/preview", response_model=PreviewResult)
def preview(body: PreviewRequest, stores: StoresDep, _: AdminKey) -> PreviewResult:
    """A rule in; its member count, a sample of profiles and the SQL that ran out."""
    return service.preview(stores, body.rule, body.at, body.sample)


class SqlRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rule: Rule
    dialect: SqlDialect = "duckdb"
    at: datetime | None = Field(default=None, description="Relative windows end here.")


class SqlResult(BaseModel):
    dialect: str
    at: datetime
    sql: str


@router.post("/sql", response_model=SqlResult)
def sql(body: SqlRequest, stores: StoresDep, _: AdminKey) -> SqlResult:
    """The SQL a rule compiles to, for any of duckdb, clickhouse, postgres, pyspark."""
    at = body.at or stores.clock.now()
    compiled = service.prepare(stores, body.rule, at)
    return SqlResult(dialect=body.dialect, at=compiled.at, sql=compiled.sql(body.dialect))


@router.get("/{segment_id}", response_model=SegmentPublic)
def get(segment_id: str, stores: StoresDep, _: AdminKey) -> SegmentPublic:
    seg = service.get_segment(stores, segment_id)
    return _public(seg, service.last_snapshots(stores).get(segment_id))


@router.patch("/{segment_id}", response_model=SegmentPublic)
def update(segment_id: str, body: SegmentUpdate, stores: StoresDep, _: AdminKey) -> SegmentPublic:
    seg = service.update_segment(stores, segment_id, body)
    return _public(seg, service.last_snapshots(stores).get(segment_id))


@router.delete("/{segment_id}", status_code=204)
def delete(segment_id: str, stores: StoresDep, _: AdminKey) -> Response:
    service.delete_segment(stores, segment_id)
    return Response(status_code=204)


@router.post("/{segment_id}/materialise", response_model=SnapshotPublic)
def materialise(
    segment_id: str,
    stores: StoresDep,
    _: AdminKey,
    at: Annotated[datetime | None, Query(description="Snapshot as of (default now).")] = None,
) -> SnapshotPublic:
    """Take a membership snapshot now; entered/exited people become events."""
    return _snap(service.materialise(stores, segment_id, at))


@router.get("/{segment_id}/snapshots", response_model=list[SnapshotPublic])
def snapshots(segment_id: str, stores: StoresDep, _: AdminKey) -> list[SnapshotPublic]:
    """Snapshots, newest first."""
    return [_snap(s) for s in service.list_snapshots(stores, segment_id)]


_MEDIA = {"csv": "text/csv", "parquet": "application/vnd.apache.parquet"}


@router.get("/{segment_id}/members")
def export(
    segment_id: str,
    stores: StoresDep,
    _: AdminKey,
    format: Annotated[Literal["csv", "parquet"], Query()] = "csv",
    live: Annotated[bool, Query(description="Evaluate now instead of the last snapshot.")] = False,
) -> Response:
    """Members as CSV or Parquet (``one_id, segment_id, as_of``)."""
    body = service.export_members(stores, segment_id, format, live=live)
    return Response(
        body,
        media_type=_MEDIA[format],
        headers={"Content-Disposition": f'attachment; filename="{segment_id}.{format}"'},
    )
