"""Coupon codes: unguessable, generated in bulk.

Why it exists: a code is the only thing a customer shows to redeem a coupon, so it must
not be guessable (80 random bits from ``secrets``), and batch issuance needs hundreds
of thousands at once, so they are encoded with numpy rather than one by one. Codes are
the primary key of ``coupons``: a (vanishingly unlikely) duplicate is refused by the
database, never silently merged.
"""

from __future__ import annotations

import secrets

import numpy as np

_B32 = np.frombuffer(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", dtype=np.uint8)
_BYTE_SHIFTS = np.array([32, 24, 16, 8, 0], dtype=np.uint64)
_CHAR_SHIFTS = np.array([35, 30, 25, 20, 15, 10, 5, 0], dtype=np.uint64)


def new_codes(n: int) -> list[str]:
    """``n`` unguessable codes: 80 random bits each from ``secrets``, 16 base32 characters
    (RFC 4648 alphabet; the same text as ``base64.b32encode`` of the 10 bytes), encoded
    for all ``n`` at once."""
    if n <= 0:
        return []
    # every 5 bytes are one 40-bit number, written as 8 characters of 5 bits
    raw = np.frombuffer(secrets.token_bytes(10 * n), dtype=np.uint8).reshape(2 * n, 5)
    v = raw.astype(np.uint64) << _BYTE_SHIFTS
    v = np.bitwise_or.reduce(v, axis=1)
    groups = (v[:, None] >> _CHAR_SHIFTS) & np.uint64(31)
    text = _B32[groups].tobytes().decode("ascii")
    return [text[i : i + 16] for i in range(0, 16 * n, 16)]
