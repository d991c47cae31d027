"""The Segment HTTP tracking API: ``POST /v1/batch``, ``/v1/track``, ``/v1/identify``, ...

Existing Segment and RudderStack SDKs send here unchanged: HTTP Basic auth with
the write key as user name (or ``writeKey`` in the body), optional
``Content-Encoding: gzip``, Segment's size limits (32 KB per event, 500 KB per
batch after decompression).

The routes read the raw body and turn it into an ``EVENTS`` table with
``zhiying.ingest.prepare`` (the hand-written validator of
``zhiying.ingest.models``): large bodies in the server's validation worker
process (``zhiying.ingest.workers``), small ones inline. The pydantic models
below only describe the messages in the OpenAPI document.

Answers: 200 ``{"success": true, "accepted", "duplicates", "rejected": [...]}``
where ``accepted`` counts events stored now, ``duplicates`` events already
stored (same ``messageId``), ``rejected`` the events refused with the field and
reason; the valid events of a request are stored even when others are
refused. When every event is refused: 400 problem details with the same list.
A 200 is sent only once the events are durable (see ``zhiying.ingest.writer``):
in the server's spool mode that is when they are in the spool, and they reach
the stores shortly after; ``POST /api/ingest/flush`` (admin) waits until
everything answered before it is stored.
"""

from __future__ import annotations

import asyncio
import logging
import zlib
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Final, Literal

import orjson
import pyarrow as pa
from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from zhiying.api.deps import AdminKey, StoresDep, basic_user, check_write_key
from zhiying.api.problems import problem
from zhiying.errors import ZhiyingError, redacted
from zhiying.ingest.models import MAX_BATCH_BYTES, MAX_EVENT_BYTES, Rejection
from zhiying.ingest.pipeline import store_events
from zhiying.ingest.prepare import BadBody, Prepared, parse_body, prepare_body, prepare_payload
from zhiying.ingest.writer import EventWriter, WriterBusy, WriterStopped, Written
from zhiying.keys.service import ApiKey
from zhiying.runtime import Stores

log = logging.getLogger(__name__)
_GZIP_SLACK: Final = 1024  # gzip of incompressible data is a little larger than the data


class BadRequest(ZhiyingError):
    code = "bad_request"
    status = 400


class PayloadTooLarge(ZhiyingError):
    code = "payload_too_large"
    status = 413


class UnsupportedEncoding(ZhiyingError):
    code = "unsupported_media_type"
    status = 415


# --- OpenAPI description (documentation only; validation is in models.py) ----------


class Product(BaseModel):
    """One product of an e-commerce event (Segment's e-commerce spec)."""

    model_config = ConfigDict(extra="allow")
    product_id: str | int | None = None
    sku: str | int | None = None
    name: str | None = None
    brand: str | None = None
    category: str | None = None
    price: Decimal | str | None = Field(
        None, description="Currency units, at most 2 decimal places."
    )
    quantity: int | None = None
    coupon: str | None = None


class Properties(BaseModel):
    """Free-form event properties; these keys become typed warehouse columns."""

    model_config = ConfigDict(extra="allow")
    order_id: str | int | None = None
    revenue: Decimal | str | None = Field(
        None, description="Currency units, at most 2 decimal places; number or numeric string."
    )
    currency: str | None = Field(None, description="ISO 4217 code, e.g. CNY.")
    coupon: str | None = None
    products: list[Product] | None = None


class ExternalId(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: str | int
    type: str = Field(description="Identifier kind, e.g. member_id (lower-case letters, _).")


class Context(BaseModel):
    """Segment context; ``device.id``, ``traits`` and ``externalIds`` feed ONE_ID."""

    model_config = ConfigDict(extra="allow")
    channel: str | None = None
    device: dict[str, Any] | None = None
    traits: dict[str, Any] | None = None
    externalIds: list[ExternalId] | None = None


class MessageBase(BaseModel):
    """Fields common to every message. ``userId`` or ``anonymousId`` is required."""

    model_config = ConfigDict(extra="allow")
    messageId: str | None = Field(
        None, max_length=200, description="Dedup key; a uuid4 is generated when absent."
    )
    userId: str | int | None = None
    anonymousId: str | int | None = None
    timestamp: datetime | None = Field(
        None, description="When it happened (ISO-8601); default: when received."
    )
    originalTimestamp: datetime | None = None
    sentAt: datetime | None = Field(
        None, description="Client clock at send time, for clock-skew correction."
    )
    context: Context | None = None
    integrations: dict[str, Any] | None = None
    channel: str | None = Field(None, description="app, web, server, mini_program, ...")


class TrackMessage(MessageBase):
    type: Literal["track"] = "track"
    event: str
    properties: Properties | None = None


class IdentifyMessage(MessageBase):
    type: Literal["identify"] = "identify"
    traits: dict[str, Any] | None = Field(
        None, description="phone, email, wechat_openid and wechat_unionid feed ONE_ID."
    )


class AliasMessage(MessageBase):
    type: Literal["alias"] = "alias"
    previousId: str | int


class PageMessage(MessageBase):
    type: Literal["page"] = "page"
    name: str | None = None
    properties: Properties | None = None


class ScreenMessage(MessageBase):
    type: Literal["screen"] = "screen"
    name: str | None = None
    properties: Properties | None = None


class GroupMessage(MessageBase):
    type: Literal["group"] = "group"
    groupId: str | int
    traits: dict[str, Any] | None = None


AnyMessage = Annotated[
    TrackMessage | IdentifyMessage | AliasMessage | PageMessage | ScreenMessage | GroupMessage,
    Field(discriminator="type"),
]


class BatchRequest(BaseModel):
    """``POST /v1/batch``: at most 500 KB, each message at most 32 KB."""

    batch: list[AnyMessage]
    sentAt: datetime | None = None
    context: Context | None = Field(None, description="Merged under each message's own context.")
    writeKey: str | None = Field(None, description="Alternative to HTTP Basic auth.")


class RejectedEvent(BaseModel):
    index: int = Field(description="Position of the message in the request (0 for single calls).")
    field: str = Field(
        description="Path of the offending field, e.g. properties.products[3].price."
    )
    reason: str
    messageId: str | None


class IngestResponse(BaseModel):
    success: bool
    accepted: int = Field(description="Events stored by this request.")
    duplicates: int = Field(description="Events already stored (same messageId): not stored again.")
    rejected: list[RejectedEvent]


def _inline_schema(model: type[BaseModel]) -> dict[str, Any]:
    """``model``'s JSON schema with every ``$ref`` inlined (for ``openapi_extra``)."""
    schema = model.model_json_schema(ref_template="#/$defs/{model}")
    defs = schema.pop("$defs", {})

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                rest = {k: v for k, v in node.items() if k != "$ref"}
                return {**walk(defs[ref.removeprefix("#/$defs/")]), **walk(rest)}
            return {
                k: walk(v)
                for k, v in node.items()
                if not (k == "mapping" and "propertyName" in node)
            }
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    result: dict[str, Any] = walk(schema)
    return result


def _body_doc(model: type[BaseModel]) -> dict[str, Any]:
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": _inline_schema(model)}},
        }
    }


_RESPONSES: Final[dict[int | str, dict[str, Any]]] = {
    200: {"model": IngestResponse, "description": "Stored (valid events) and refused events."},
    400: {"description": "Malformed JSON, not UTF-8, or every event refused (problem details)."},
    401: {"description": "Missing or unknown write key."},
    403: {"description": "The key is not a write key (e.g. an admin key)."},
    413: {"description": "Body over 500 KB (batch) or 32 KB (single call), after gunzip."},
    503: {"description": "The writer is saturated or stopping; retry (Retry-After)."},
}

router = APIRouter(prefix="/v1", tags=["ingest"])
admin_router = APIRouter(prefix="/api/ingest", tags=["ingest"])


# --- request handling -----------------------------------------------------------------


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body, gunzipped when ``Content-Encoding: gzip``, at most ``limit`` bytes."""
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("identity", "gzip", ""):
        raise UnsupportedEncoding(
            f"Content-Encoding {encoding!r} is not supported; send gzip or no encoding",
            field="Content-Encoding",
        )
    gzipped = encoding == "gzip"
    cap = limit + _GZIP_SLACK if gzipped else limit
    too_large = f"the body is larger than {limit // 1024} KB"
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > cap:
        raise PayloadTooLarge(too_large, field="body", limit_bytes=limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > cap:
            raise PayloadTooLarge(too_large, field="body", limit_bytes=limit)
        chunks.append(chunk)
    body = b"".join(chunks)
    if not gzipped:
        return body
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        data = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise BadRequest(f"the body is not valid gzip ({exc})", field="body") from exc
    if len(data) > limit or inflater.unconsumed_tail:
        raise PayloadTooLarge(f"{too_large} after decompression", field="body", limit_bytes=limit)
    if not inflater.eof:
        raise BadRequest("the gzip body is truncated", field="body")
    return data


def _writer(request: Request) -> EventWriter | None:
    writer = getattr(request.app.state, "event_writer", None)
    return writer if isinstance(writer, EventWriter) else None


async def _store(
    request: Request, stores: Stores, events: pa.Table, ipc: bytes | None = None
) -> Written:
    writer = _writer(request)
    if writer is not None:
        return await asyncio.wrap_future(writer.submit(events, ipc=ipc))
    # No writer (an app used without its lifespan, e.g. a bare TestClient): store inline.
    try:
        result = await run_in_threadpool(store_events, stores, events)
    except Exception as exc:
        log.error("storing %d events failed: %s", events.num_rows, redacted(exc))
        raise
    return Written(inserted=result.inserted, duplicates=result.duplicates)


def _answer(written: Written | None, rejected: list[Rejection]) -> Response:
    listed = [r.as_dict() for r in rejected]
    if written is None:
        body: dict[str, Any] = {
            "type": "https://zhiying.dev/problems/events_rejected",
            "title": "every event was rejected",
            "status": 400,
            "detail": f"{len(listed)} problem(s) found; nothing was stored",
            "errors": listed,
            "success": False,
            "accepted": 0,
            "duplicates": 0,
            "rejected": listed,
        }
        return Response(orjson.dumps(body), status_code=400, media_type="application/problem+json")
    return Response(
        orjson.dumps(
            {
                "success": True,
                "accepted": written.inserted,
                "duplicates": written.duplicates,
                "rejected": listed,
            }
        ),
        media_type="application/json",
    )


async def _prepare(
    request: Request,
    stores: Stores,
    key: ApiKey | None,
    endpoint_type: str | None,
    received_at: datetime,
) -> Prepared:
    """The request's events and rejections; checks a ``writeKey`` sent in the body."""
    limit = MAX_BATCH_BYTES if endpoint_type is None else MAX_EVENT_BYTES
    body = await _read_body(request, limit)
    region = stores.settings.default_phone_region
    try:
        writer = _writer(request)
        if key is not None and writer is not None and writer.validators.wants(len(body)):
            return await writer.validators.prepare(
                body,
                endpoint_type=endpoint_type,
                received_at=received_at,
                source=key.key_id,
                default_region=region,
            )
        if key is not None:
            return prepare_body(
                body,
                endpoint_type=endpoint_type,
                received_at=received_at,
                source=key.key_id,
                default_region=region,
            )
        # No key in the header: the body must be read for its writeKey first.
        payload = parse_body(body)
        if not isinstance(payload, dict):
            raise BadBody("the body must be a JSON object", "body")
        write_key = payload.get("writeKey")
        if not isinstance(write_key, str) or not write_key:
            # Not Segment's way, but an admin key sent as a bearer token must get
            # a clear 403 rather than "missing write key".
            scheme, _, token = request.headers.get("authorization", "").partition(" ")
            write_key = token.strip() if scheme.lower() == "bearer" else None
        key = check_write_key(stores, write_key)
        return prepare_payload(
            payload,
            endpoint_type=endpoint_type,
            received_at=received_at,
            source=key.key_id,
            default_region=region,
            body_size=len(body),
        )
    except BadBody as exc:
        raise BadRequest(exc.message, field=exc.field) from exc


async def _ingest(request: Request, stores: Stores, endpoint_type: str | None) -> Response:
    received_at = stores.clock.now()
    header_key = basic_user(request)
    # A key in the header is checked before the body is read.
    key = check_write_key(stores, header_key) if header_key else None
    prepared = await _prepare(request, stores, key, endpoint_type, received_at)
    if prepared.events.num_rows == 0:
        return _answer(None, prepared.rejected)
    try:
        written = await _store(request, stores, prepared.events, prepared.ipc)
    except (WriterBusy, WriterStopped) as exc:
        return problem(503, "busy", exc.message, code=exc.code, headers={"Retry-After": "1"})
    except Exception:
        # Logged by the writer; nothing of this request was stored. Segment SDKs retry 5xx.
        return problem(
            503,
            "events not stored",
            "storing the events failed; nothing was stored, retry the request",
            code="store_failed",
            headers={"Retry-After": "1"},
        )
    return _answer(written, prepared.rejected)


@router.post(
    "/batch",
    summary="Send a batch of messages (Segment batch API)",
    responses=_RESPONSES,
    openapi_extra=_body_doc(BatchRequest),
)
async def batch(request: Request, stores: StoresDep) -> Response:
    """Identify, track, page, screen, group and alias messages in one request."""
    return await _ingest(request, stores, None)


def _single(kind: str, model: type[BaseModel]) -> None:
    async def endpoint(request: Request, stores: StoresDep) -> Response:
        return await _ingest(request, stores, kind)

    endpoint.__name__ = kind
    endpoint.__doc__ = f"One {kind} message (Segment `{kind}` call); at most 32 KB."

    class Body(model):  # type: ignore[misc, valid-type]
        writeKey: str | None = Field(None, description="Alternative to HTTP Basic auth.")

    Body.__name__ = f"{model.__name__}Request"
    router.add_api_route(
        f"/{kind}",
        endpoint,
        methods=["POST"],
        summary=f"Send one {kind} message",
        responses=_RESPONSES,
        openapi_extra=_body_doc(Body),
    )


for _kind, _model in (
    ("track", TrackMessage),
    ("identify", IdentifyMessage),
    ("alias", AliasMessage),
    ("page", PageMessage),
    ("screen", ScreenMessage),
    ("group", GroupMessage),
):
    _single(_kind, _model)


class FlushResponse(BaseModel):
    stored: bool = Field(description="Every event answered before the call is stored.")
    backlog: int = Field(description="Events answered and not stored yet, after the wait.")
    dead_letters: int = Field(
        description="Events set aside since the server started because the stores kept "
        "refusing them while accepting others (files in `<spool>/dead/`; docs/ingestion.md)."
    )


@admin_router.post(
    "/flush",
    summary="Wait until every event answered so far is stored (read-your-writes)",
    response_model=FlushResponse,
    responses={503: {"description": "Not stored within `timeout` seconds (problem details)."}},
)
async def flush(
    request: Request,
    _key: AdminKey,
    timeout: Annotated[float, Query(gt=0, le=300)] = 30.0,
) -> Response:
    """In spool mode, a 200 on ``/v1`` means the events are durable in the spool; the
    loader stores them within about a second. This waits until every event answered
    before the call is in the warehouse and the operational store (profiles,
    segments and counts see it), or set aside as refused by the stores (counted in
    ``dead_letters``). Immediate when the server stores before answering."""
    writer = _writer(request)
    done = True if writer is None else await run_in_threadpool(writer.flush, timeout)
    backlog = 0 if writer is None else writer.backlog_rows
    dead = 0 if writer is None else writer.dead_letters
    if not done:
        return problem(
            503,
            "not stored yet",
            f"{backlog} answered events are still waiting to be stored after {timeout} s",
            code="flush_timeout",
            headers={"Retry-After": "1"},
        )
    return Response(
        orjson.dumps({"stored": True, "backlog": backlog, "dead_letters": dead}),
        media_type="application/json",
    )


class IngestStatus(BaseModel):
    mode: Literal["spool", "direct", "inline"] = Field(
        description="spool: answers once events are in the spool, a loader stores them; "
        "direct: answers after storing; inline: no writer (an app without its lifespan)."
    )
    backlog: int = Field(description="Events answered (spooled) and not stored yet.")
    stored_by_loader: int = Field(description="Events the loader stored since the start.")
    failed_loads: int = Field(description="Failed store attempts of the loader since the start.")
    dead_letters: int = Field(
        description="Events set aside since the start (`zhiying import dead-letters`)."
    )


@admin_router.get(
    "/status",
    summary="How ingestion is doing: mode, backlog, failures, dead letters",
    response_model=IngestStatus,
)
def status(request: Request, _key: AdminKey) -> IngestStatus:
    """What an operator watches: a growing backlog or failure count means the
    stores are slow or down (requests get 503 past the backlog limit)."""
    writer = _writer(request)
    if writer is None:
        return IngestStatus(
            mode="inline", backlog=0, stored_by_loader=0, failed_loads=0, dead_letters=0
        )
    loader = writer.loader
    return IngestStatus(
        mode="spool" if loader is not None else "direct",
        backlog=writer.backlog_rows,
        stored_by_loader=0 if loader is None else loader.inserted,
        failed_loads=0 if loader is None else loader.failures,
        dead_letters=writer.dead_letters,
    )
