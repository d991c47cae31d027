"""Identifier kinds and their normalisation (pure).

Two spellings of one phone number or e-mail address must become one
identifier, or ONE_ID would see two people: phones become E.164
(``+8613800000000``), e-mail addresses are lower-cased after validation.
"""

from __future__ import annotations

import re
from typing import Final

import phonenumbers
from email_validator import EmailNotValidError, validate_email

USER_ID: Final = "user_id"
ANONYMOUS_ID: Final = "anonymous_id"
DEVICE_ID: Final = "device_id"
PHONE: Final = "phone"
EMAIL: Final = "email"
WECHAT_OPENID: Final = "wechat_openid"
WECHAT_UNIONID: Final = "wechat_unionid"

BUILT_IN_KINDS: Final = frozenset(
    {USER_ID, ANONYMOUS_ID, DEVICE_ID, PHONE, EMAIL, WECHAT_OPENID, WECHAT_UNIONID}
)
CUSTOM_KIND = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
MAX_VALUE_LENGTH: Final = 256


class InvalidIdentifier(ValueError):
    """An identifier value that cannot be normalised; ``reason`` says why."""

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(f"{kind}: {reason}")
        self.kind = kind
        self.reason = reason


def normalize_phone(raw: str, default_region: str = "CN") -> str:
    """E.164 form of ``raw``; numbers without ``+country`` are read in ``default_region``."""
    try:
        number = phonenumbers.parse(raw, default_region)
    except phonenumbers.NumberParseException as exc:
        raise InvalidIdentifier(PHONE, f"not a phone number ({exc})") from exc
    if not phonenumbers.is_possible_number(number):
        raise InvalidIdentifier(PHONE, "not a possible phone number")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def normalize_email(raw: str) -> str:
    """Lower-cased, syntax-checked e-mail address (no DNS lookups)."""
    try:
        result = validate_email(raw, check_deliverability=False)
    except EmailNotValidError as exc:
        raise InvalidIdentifier(EMAIL, str(exc)) from exc
    return result.normalized.lower()


def normalize(kind: str, raw: object, default_region: str = "CN") -> str:
    """The normalised value of identifier ``kind``; raises ``InvalidIdentifier``."""
    if kind not in BUILT_IN_KINDS and not CUSTOM_KIND.match(kind):
        raise InvalidIdentifier(kind, "kind must be lower-case letters, digits and _ (≤ 32)")
    if isinstance(raw, bool) or not isinstance(raw, str | int):
        raise InvalidIdentifier(kind, "must be a string")
    value = str(raw).strip()
    if not value:
        raise InvalidIdentifier(kind, "must not be empty")
    if len(value) > MAX_VALUE_LENGTH:
        raise InvalidIdentifier(kind, f"longer than {MAX_VALUE_LENGTH} characters")
    if kind == PHONE:
        return normalize_phone(value, default_region)
    if kind == EMAIL:
        return normalize_email(value)
    return value


def parse_ref(ref: str, default_region: str = "CN") -> tuple[str, str]:
    """Split ``kind:value`` (e.g. ``phone:+8613800000000``) and normalise the value."""
    kind, sep, value = ref.partition(":")
    if not sep:
        raise InvalidIdentifier(ref, "expected kind:value, e.g. user_id:42")
    return kind, normalize(kind, value, default_region)
