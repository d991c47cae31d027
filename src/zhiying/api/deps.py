"""``Annotated`` dependencies so routes read as plain functions: stores and the caller's key.

Write keys come as HTTP Basic user name (Segment's way) or ``writeKey`` in
the body (handled by the ingest routes); admin keys as ``Authorization:
Bearer KEY``. A write key can only ingest.
"""

from __future__ import annotations

import base64
import binascii
from typing import Annotated

from fastapi import Depends, HTTPException, Request

from zhiying.keys.service import ApiKey, verify_key
from zhiying.runtime import Stores


def get_stores(request: Request) -> Stores:
    stores = request.app.state.stores
    assert isinstance(stores, Stores)
    return stores


StoresDep = Annotated[Stores, Depends(get_stores)]


def basic_user(request: Request) -> str | None:
    """The user name of an HTTP Basic ``Authorization`` header, if there is one."""
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic" or not value:
        return None
    try:
        decoded = base64.b64decode(value, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return decoded.partition(":")[0] or None


def check_write_key(stores: Stores, plaintext: str | None) -> ApiKey:
    """The write key ``plaintext`` names, or a 401/403 problem."""
    if not plaintext:
        raise HTTPException(
            401,
            "missing write key: send it as the HTTP Basic user name or as writeKey in the body",
            headers={"WWW-Authenticate": 'Basic realm="zhiying"'},
        )
    key = verify_key(stores.engine, plaintext)
    if key is None:
        raise HTTPException(401, "unknown or revoked write key")
    if key.kind != "write":
        raise HTTPException(403, "this key is not a write key; /v1 takes write keys only")
    return key


def require_admin(request: Request, stores: StoresDep) -> ApiKey:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise HTTPException(
            401,
            "missing admin key: send Authorization: Bearer KEY",
            headers={"WWW-Authenticate": "Bearer"},
        )
    key = verify_key(stores.engine, token.strip())
    if key is None:
        raise HTTPException(401, "unknown or revoked key")
    if key.kind != "admin":
        raise HTTPException(403, "a write key can only ingest; /api needs an admin key")
    return key


AdminKey = Annotated[ApiKey, Depends(require_admin)]
