"""Domain errors: a machine code, the offending field and a reason a person can act on.

They are mapped to HTTP (RFC 9457 problem details) once, in ``zhiying.api``.
"""

from __future__ import annotations

import traceback
from typing import Any


class ZhiyingError(Exception):
    """Base of all domain errors."""

    code: str = "error"
    status: int = 400

    def __init__(self, message: str, *, field: str | None = None, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.details = details


class ValidationFailed(ZhiyingError):
    code = "validation_failed"
    status = 422


class NotFound(ZhiyingError):
    code = "not_found"
    status = 404


class Conflict(ZhiyingError):
    code = "conflict"
    status = 409


class StoreBusy(ZhiyingError):
    """The embedded warehouse is held by another process (usually `zhiying serve`)."""

    code = "store_busy"
    status = 503


def redacted(exc: BaseException) -> str:
    """``exc`` for a log line: its frames and type, never its message.

    A store's error message can quote the row it failed on (a phone number, an
    e-mail), and logs must not carry PII; the frames say where it happened.
    """
    where = "".join(traceback.format_tb(exc.__traceback__))
    return f"{type(exc).__name__}\n{where}".rstrip()
