"""RFC 9457 problem details: every error a client sees, in one shape.

``{"type", "title", "status", "detail", "errors": [{"field", "reason", ...}]}``
with media type ``application/problem+json``.
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from zhiying.errors import ZhiyingError

MEDIA_TYPE = "application/problem+json"


def problem(
    status: int,
    title: str,
    detail: str,
    *,
    code: str = "error",
    errors: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    body: dict[str, Any] = {
        "type": f"https://zhiying.dev/problems/{code}",
        "title": title,
        "status": status,
        "detail": detail,
    }
    if errors:
        body["errors"] = errors
    return Response(orjson.dumps(body), status_code=status, media_type=MEDIA_TYPE, headers=headers)


def install(app: FastAPI) -> None:
    """Map domain errors, validation errors and HTTP errors to problem details."""

    @app.exception_handler(ZhiyingError)
    async def _domain(_: Request, exc: ZhiyingError) -> Response:
        errors = [{"field": exc.field, "reason": exc.message, **exc.details}] if exc.field else None
        return problem(
            exc.status, exc.code.replace("_", " "), exc.message, code=exc.code, errors=errors
        )

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> Response:
        errors = [
            {"field": ".".join(str(p) for p in e["loc"]), "reason": e["msg"]} for e in exc.errors()
        ]
        return problem(
            422,
            "invalid request",
            "the request did not validate",
            code="validation_failed",
            errors=errors,
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> Response:
        headers = dict(exc.headers) if exc.headers else None
        return problem(
            exc.status_code,
            str(exc.detail),
            str(exc.detail),
            code=f"http_{exc.status_code}",
            headers=headers,
        )
