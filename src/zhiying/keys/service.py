"""Creating and checking API keys.

Only a SHA-256 of each key is stored; the plaintext is shown once at
creation. A write key can only ingest (``/v1/...``); an admin key opens
``/api/...``. Verified keys are cached in memory for a short time so the
ingest path makes no database round trip per request.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

import sqlalchemy as sa
from sqlalchemy import Engine

from zhiying.store.tables import api_keys

KeyKind = Literal["write", "admin"]
_PREFIX: dict[KeyKind, str] = {"write": "zyw_", "admin": "zya_"}
_CACHE_SECONDS = 30.0


@dataclass(frozen=True)
class ApiKey:
    key_id: str
    kind: KeyKind
    name: str


def _hash(plaintext: str) -> str:
    return hashlib.sha256(plaintext.encode("utf-8")).hexdigest()


def create_key(engine: Engine, kind: KeyKind, now: datetime, name: str = "") -> str:
    """Create a key of ``kind`` and return its plaintext (shown once, never stored)."""
    secret = secrets.token_urlsafe(24)
    plaintext = _PREFIX[kind] + secret
    key_id = secret[:8]
    with engine.begin() as conn:
        conn.execute(
            api_keys.insert().values(
                key_id=key_id, kind=kind, key_hash=_hash(plaintext), name=name, created_at=now
            )
        )
    return plaintext


def revoke_key(engine: Engine, key_id: str, now: datetime) -> bool:
    with engine.begin() as conn:
        result = conn.execute(
            api_keys.update()
            .where(api_keys.c.key_id == key_id, api_keys.c.revoked_at.is_(None))
            .values(revoked_at=now)
        )
    _cache.clear()
    return result.rowcount > 0


def list_keys(engine: Engine) -> list[dict[str, object]]:
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(
                api_keys.c.key_id,
                api_keys.c.kind,
                api_keys.c.name,
                api_keys.c.created_at,
                api_keys.c.revoked_at,
            ).order_by(api_keys.c.created_at)
        ).mappings()
        return [dict(r) for r in rows]


_cache: dict[str, tuple[float, ApiKey | None]] = {}


def verify_key(engine: Engine, plaintext: str) -> ApiKey | None:
    """The key for ``plaintext``, or None when unknown or revoked."""
    digest = _hash(plaintext)
    hit = _cache.get(digest)
    if hit is not None and time.monotonic() - hit[0] < _CACHE_SECONDS:
        return hit[1]
    with engine.connect() as conn:
        row = conn.execute(
            sa.select(api_keys.c.key_id, api_keys.c.kind, api_keys.c.name).where(
                api_keys.c.key_hash == digest, api_keys.c.revoked_at.is_(None)
            )
        ).first()
    key = ApiKey(key_id=row.key_id, kind=row.kind, name=row.name) if row else None
    _cache[digest] = (time.monotonic(), key)
    return key
