"""A request body → the ``EVENTS`` table of its valid messages and its rejections (pure).

Everything ``/v1/batch`` and the single-message endpoints do between reading the
body and storing: JSON parsing, the envelope rules (``batch`` is a non-empty
array, ``sentAt`` a date-time, ``context`` an object) and the per-message rules
of :mod:`zhiying.ingest.models`. It has no I/O and takes everything it needs as
arguments, so the server can run it in a worker process
(:mod:`zhiying.ingest.workers`) and the result is the same wherever it runs.

Envelope problems raise :class:`BadBody` (the API answers 400 with its field).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
import pyarrow as pa

from zhiying.ingest.models import (
    MAX_EVENT_BYTES,
    BatchContext,
    Rejection,
    parse_timestamp,
    validate_batch_table,
)


class BadBody(ValueError):
    """The body as a whole is unusable: ``message`` says why, ``field`` where.

    A plain ``ValueError`` (message and field as ``args``) so that it crosses a
    process boundary intact."""

    def __init__(self, message: str, field: str) -> None:
        super().__init__(message, field)
        self.message = message
        self.field = field


@dataclass(frozen=True)
class Prepared:
    """One request's valid events (``EVENTS`` schema) and rejected events (input order).

    ``ipc``: the events as Arrow IPC stream bytes when they already exist in that
    form (the validation worker sends them so): the spool writes them as they are
    instead of encoding the table again."""

    events: pa.Table
    rejected: list[Rejection]
    ipc: bytes | None = None


def parse_body(body: bytes) -> Any:
    """The decoded JSON of ``body``; :class:`BadBody` when empty, not UTF-8 or malformed."""
    if not body:
        raise BadBody("the body is empty; send a JSON object", "body")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        try:
            body.decode("utf-8")
        except UnicodeDecodeError as bad:
            raise BadBody(
                f"the body is not valid UTF-8 (byte {bad.start}); JSON must be UTF-8", "body"
            ) from exc
        raise BadBody(f"malformed JSON: {exc}", "body") from exc


def prepare_payload(
    payload: Any,
    *,
    endpoint_type: str | None,
    received_at: datetime,
    source: str | None,
    default_region: str,
    body_size: int,
) -> Prepared:
    """Validate a decoded body (a JSON object) of ``/v1/batch`` (``endpoint_type`` None)
    or of a single-message endpoint (``/v1/track`` → ``"track"``)."""
    if not isinstance(payload, dict):
        raise BadBody("the body must be a JSON object", "body")
    if endpoint_type is not None:
        batch = BatchContext(received_at=received_at, source=source, default_region=default_region)
        events, rejected = validate_batch_table(
            [payload], batch, endpoint_type=endpoint_type, check_size=False
        )
        return Prepared(events, rejected)
    messages = payload.get("batch")
    if not isinstance(messages, list):
        raise BadBody("batch must be an array of messages", "batch")
    if not messages:
        raise BadBody("batch is empty; send at least one message", "batch")
    sent_at = None
    if payload.get("sentAt") is not None:
        try:
            sent_at = parse_timestamp(payload["sentAt"]).replace(tzinfo=UTC)
        except ValueError as exc:
            raise BadBody(str(exc), "sentAt") from exc
    context = payload.get("context")
    if context is not None and not isinstance(context, dict):
        raise BadBody("context must be an object", "context")
    batch = BatchContext(
        received_at=received_at,
        source=source,
        sent_at=sent_at,
        context=context or None,
        default_region=default_region,
    )
    # A body under the per-message limit cannot hold a message over it.
    events, rejected = validate_batch_table(messages, batch, check_size=body_size > MAX_EVENT_BYTES)
    return Prepared(events, rejected)


def prepare_body(
    body: bytes,
    *,
    endpoint_type: str | None,
    received_at: datetime,
    source: str | None,
    default_region: str,
) -> Prepared:
    """:func:`parse_body` then :func:`prepare_payload` (the worker's whole job)."""
    return prepare_payload(
        parse_body(body),
        endpoint_type=endpoint_type,
        received_at=received_at,
        source=source,
        default_region=default_region,
        body_size=len(body),
    )
