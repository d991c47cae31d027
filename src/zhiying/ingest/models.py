"""Segment messages → rows of the warehouse ``EVENTS`` schema (pure; the ingest hot path).

One function, :func:`validate_message`, turns one decoded JSON value into either a
row dict with every ``EVENTS`` column, or the list of :class:`Rejection` s that say
which field is wrong and why. :func:`validate_batch` does it for a batch and
:func:`rows_to_table` turns rows into one Arrow table, column by column;
:func:`validate_batch_table` (the server's path) does both without building a
dict per row.

The validator is written by hand instead of as a pydantic model per event: it runs
for every event the system receives, and a hand-written pass over the dict is
several times faster (see ``bench/ingest_http.py`` and ``docs/ingestion.md``). The
pydantic models in ``zhiying.ingest.api`` describe the same messages for the
OpenAPI document only.

Rules (``docs/ingestion.md`` is the user-facing version):

- a message is a JSON object with ``userId`` or ``anonymousId`` (strings, or
  numbers turned into strings); ``track`` needs ``event``, ``alias`` needs
  ``previousId``, ``group`` needs ``groupId``; ``messageId`` defaults to a uuid4;
- timestamps are ISO-8601 strings; ``timestamp`` is corrected for the client's
  clock skew as Segment does: ``receivedAt - (sentAt - originalTimestamp)`` when
  ``sentAt`` is given; the result may lie at most :data:`MAX_FUTURE` after
  ``receivedAt`` and not before :data:`EARLIEST`;
- money (``revenue``, product ``price``) becomes ``Decimal`` with 2 places from a
  number or a numeric string, never through binary floating point arithmetic;
- identifiers (device id, phone, e-mail, WeChat ids, ``context.externalIds``) are
  normalised with :func:`zhiying.identity.identifiers.normalize`; an invalid one
  rejects the event, naming the field;
- ``properties``, ``traits`` and ``context`` are kept as compact JSON text.

Timestamps in rows are naive ``datetime`` values meaning UTC (the warehouse's
convention).
"""

from __future__ import annotations

import operator
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from functools import lru_cache
from typing import Any, Final

import orjson
import pyarrow as pa

from zhiying.clock import naive_utc
from zhiying.identity.identifiers import (
    DEVICE_ID,
    EMAIL,
    MAX_VALUE_LENGTH,
    PHONE,
    WECHAT_OPENID,
    WECHAT_UNIONID,
    InvalidIdentifier,
    normalize,
)
from zhiying.warehouse.schema import EVENTS

Row = dict[str, Any]

MESSAGE_TYPES: Final = ("track", "identify", "alias", "page", "screen", "group")
MAX_EVENT_BYTES: Final = 32 * 1024
"""Largest serialised message (Segment: 32 KB per call / per event in a batch)."""
MAX_BATCH_BYTES: Final = 500 * 1024
"""Largest ``/v1/batch`` body after decompression (Segment: 500 KB)."""
MAX_FUTURE: Final = timedelta(hours=24)
"""How far after ``receivedAt`` a (skew-corrected) ``timestamp`` may lie."""
EARLIEST: Final = datetime(1970, 1, 1)
"""Timestamps before the Unix epoch are taken for a default-date bug and rejected."""
MAX_MESSAGE_ID_LENGTH: Final = 200
MAX_TEXT_LENGTH: Final = 1024
"""Longest typed text column value (event name, order id, product name, ...)."""
MONEY_LIMIT: Final = Decimal("1e16")  # DECIMAL(18, 2): 16 integer digits
_CENT: Final = Decimal("0.01")
_FLOAT_NOISE: Final = Decimal("1e-9")
_INT32_MAX: Final = 2**31 - 1

# Trait keys that are identifiers, with the identifier kind they feed.
TRAIT_IDENTIFIERS: Final = (
    ("phone", PHONE),
    ("email", EMAIL),
    (WECHAT_OPENID, WECHAT_OPENID),
    (WECHAT_UNIONID, WECHAT_UNIONID),
)
# Segment's own values of the top-level ``channel`` field, mapped to ours.
_SEGMENT_CHANNELS: Final = {"browser": "web", "mobile": "app", "server": "server"}


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why the message at ``index`` of a request was not stored.

    ``field`` is a path into the message (``properties.products[3].price``);
    ``reason`` is a sentence a person can act on.
    """

    index: int
    field: str
    reason: str
    message_id: str | None

    def as_dict(self) -> dict[str, Any]:
        """The wire form: ``{"index", "field", "reason", "messageId"}``."""
        return {
            "index": self.index,
            "field": self.field,
            "reason": self.reason,
            "messageId": self.message_id,
        }


@dataclass(frozen=True, slots=True)
class BatchContext:
    """What one request adds to each of its messages.

    ``received_at`` is the server's clock when the request arrived (aware UTC);
    ``source`` is the write key id (or ``import:<file>``); ``sent_at`` and
    ``context`` come from the top level of a ``/v1/batch`` body (a message's own
    ``sentAt``/``context`` keys win).
    """

    received_at: datetime
    source: str | None = None
    sent_at: datetime | None = None
    context: Mapping[str, Any] | None = None
    default_region: str = "CN"
    received_utc: datetime = field(init=False)
    sent_utc: datetime | None = field(init=False)
    latest_utc: datetime = field(init=False)

    def __post_init__(self) -> None:
        if self.received_at.tzinfo is None:
            raise ValueError("received_at must be an aware datetime")
        object.__setattr__(
            self, "received_utc", self.received_at.astimezone(UTC).replace(tzinfo=None)
        )
        object.__setattr__(self, "latest_utc", self.received_utc + MAX_FUTURE)
        sent = self.sent_at
        object.__setattr__(self, "sent_utc", None if sent is None else naive_utc(sent))


def _json(value: object) -> str:
    return orjson.dumps(value).decode()


def _type_name(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


class _Errors:
    """Collects the problems of one message; the happy path never touches the list."""

    __slots__ = ("items",)

    def __init__(self) -> None:
        self.items: list[tuple[str, str]] = []

    def add(self, field: str, reason: str) -> None:
        self.items.append((field, reason))

    def has(self, field: str) -> bool:
        return any(f == field for f, _ in self.items)


def parse_timestamp(value: object) -> datetime:
    """An ISO-8601 string as a naive UTC datetime (no offset means UTC); raises ValueError."""
    if not isinstance(value, str):
        raise ValueError(f"must be an ISO-8601 date-time string, got {_type_name(value)}")
    try:
        at = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(
            f"not an ISO-8601 date-time: {value[:40]!r} (e.g. 2026-11-01T09:00:00.000Z)"
        ) from None
    return naive_utc(at)


def _timestamp(msg: Mapping[str, Any], key: str, errors: _Errors) -> datetime | None:
    value = msg.get(key)
    if value is None:
        return None
    try:
        return parse_timestamp(value)
    except ValueError as exc:
        errors.add(key, str(exc))
        return None


def _text(value: object, field: str, errors: _Errors, *, numbers: bool = True) -> str | None:
    """A string (numbers allowed as text when ``numbers``); None/absent stays None."""
    if value is None:
        return None
    if isinstance(value, str):
        if len(value) > MAX_TEXT_LENGTH:
            errors.add(field, f"longer than {MAX_TEXT_LENGTH} characters")
            return None
        return value
    if numbers and isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    expected = "a string or a number" if numbers else "a string"
    errors.add(field, f"must be {expected}, got {_type_name(value)}")
    return None


def _object(msg: Mapping[str, Any], key: str, errors: _Errors) -> dict[str, Any] | None:
    value = msg.get(key)
    if value is None or isinstance(value, dict):
        return value
    errors.add(key, f"must be an object, got {_type_name(value)}")
    return None


def parse_money(value: object) -> Decimal:
    """Currency units with 2 decimal places from a JSON number or a numeric string.

    Numbers arrive as binary doubles; their shortest round-trip form (``repr``) is
    the decimal the client wrote whenever it has at most 15 significant digits, so
    ``0.1`` becomes ``0.10`` exactly. Sub-cent amounts (``10.125``) are refused
    rather than rounded; only floating-point noise below 1e-9 (``59.97000000000001``,
    JavaScript's ``19.99 * 3``) is dropped. Raises ValueError.
    """
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"must be a number or a numeric string, got {_type_name(value)}")
    try:
        amount = Decimal(value.strip() if isinstance(value, str) else repr(value))
    except InvalidOperation:
        raise ValueError(f"not a number: {str(value)[:40]!r}") from None
    if not amount.is_finite():
        raise ValueError("must be a finite number")
    # Checked before quantize: a huge amount (1e26) has more digits than the
    # decimal context holds and would make quantize raise instead of refusing.
    if abs(amount) >= MONEY_LIMIT:
        raise ValueError("too large (at most 16 digits before the decimal point)")
    cents = amount.quantize(_CENT, rounding=ROUND_HALF_EVEN)
    if abs(cents - amount) > _FLOAT_NOISE:
        raise ValueError(f"has more than 2 decimal places ({value}); send whole cents")
    if abs(cents) >= MONEY_LIMIT:
        raise ValueError("too large (at most 16 digits before the decimal point)")
    return cents


_FLOAT_MONEY: dict[float, Decimal] = {}
""":func:`parse_money` of JSON numbers seen before (prices repeat: a catalogue)."""
_FLOAT_MONEY_SIZE: Final = 16384


def _money(value: object, field: str, errors: _Errors) -> Decimal | None:
    if value is None:
        return None
    # 0.0 and -0.0 are one dict key but not one Decimal: zero is not cached.
    if type(value) is float and value != 0:
        hit = _FLOAT_MONEY.get(value)
        if hit is not None:
            return hit
        try:
            amount = parse_money(value)
        except ValueError as exc:
            errors.add(field, str(exc))
            return None
        if len(_FLOAT_MONEY) >= _FLOAT_MONEY_SIZE:
            _FLOAT_MONEY.clear()
        _FLOAT_MONEY[value] = amount
        return amount
    try:
        return parse_money(value)
    except ValueError as exc:
        errors.add(field, str(exc))
        return None


def _quantity(value: object, field: str, errors: _Errors) -> int | None:
    if value is None:
        return None
    number: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif (isinstance(value, float) and value.is_integer()) or (
        isinstance(value, str) and value.strip().lstrip("-").isdigit()
    ):
        number = int(value)
    if number is None:
        errors.add(field, f"must be a whole number, got {str(value)[:40]!r}")
        return None
    if abs(number) > _INT32_MAX:
        errors.add(field, "out of range")
        return None
    return number


_PRODUCT_TEXT: Final = ("product_id", "sku", "name", "brand", "category", "coupon")


def _products(value: object, errors: _Errors) -> list[dict[str, Any]] | None:
    if value is None:
        return None
    if not isinstance(value, list):
        errors.add("properties.products", f"must be an array, got {_type_name(value)}")
        return None
    products: list[dict[str, Any]] = []
    for i, item in enumerate(value):
        if not isinstance(item, dict):
            errors.add(f"properties.products[{i}]", f"must be an object, got {_type_name(item)}")
            continue
        product: dict[str, Any] = {}
        for key in _PRODUCT_TEXT:
            text = item.get(key)
            # Fast path: absent or a short string; anything else is checked (and named).
            if text is not None and not (type(text) is str and len(text) <= MAX_TEXT_LENGTH):
                text = _text(text, f"properties.products[{i}].{key}", errors)
            product[key] = text
        price = item.get("price")
        product["price"] = (
            None if price is None else _money(price, f"properties.products[{i}].price", errors)
        )
        quantity = item.get("quantity")
        product["quantity"] = (
            quantity
            if type(quantity) is int and -_INT32_MAX <= quantity <= _INT32_MAX
            else _quantity(quantity, f"properties.products[{i}].quantity", errors)
        )
        products.append(product)
    return products


def _currency(value: object, errors: _Errors) -> str | None:
    if value is None:
        return None
    if isinstance(value, str) and len(value) == 3 and value.isascii() and value.isalpha():
        return value.upper()
    errors.add("properties.currency", "must be a 3-letter ISO 4217 code such as CNY or USD")
    return None


@lru_cache(maxsize=65536)
def _normalized(kind: str, raw: str | int, region: str) -> str:
    # Phone and e-mail parsing costs tens of microseconds; one person's
    # identifiers repeat across their events, so the pure result is cached.
    return normalize(kind, raw, region)


def _identifier_value(
    kind: str, raw: object, field: str, region: str, errors: _Errors
) -> str | None:
    if isinstance(raw, bool) or not isinstance(raw, str | int):
        errors.add(field, f"must be a string, got {_type_name(raw)}")
        return None
    try:
        return _normalized(kind, raw, region)
    except InvalidIdentifier as exc:
        errors.add(field, exc.reason)
        return None


def _identity(msg: Mapping[str, Any], key: str, errors: _Errors) -> str | None:
    """userId / anonymousId / previousId / groupId: a string or a number, "" means absent.

    Trimmed and at most ``MAX_VALUE_LENGTH`` characters, as
    :func:`zhiying.identity.identifiers.normalize` makes every identifier.
    """
    raw = msg.get(key)
    if raw is None or raw == "":
        return None
    if isinstance(raw, str):
        value = raw.strip()
    elif isinstance(raw, int | float) and not isinstance(raw, bool):
        value = str(raw)
    else:
        errors.add(key, f"must be a string or a number, got {_type_name(raw)}")
        return None
    if not value:
        errors.add(key, "must not be blank")
        return None
    if len(value) > MAX_VALUE_LENGTH:
        errors.add(key, f"longer than {MAX_VALUE_LENGTH} characters")
        return None
    return value


def _identifiers(
    traits: Mapping[str, Any] | None,
    context: Mapping[str, Any] | None,
    region: str,
    errors: _Errors,
) -> list[dict[str, str]]:
    # (kind, raw value, field path) of every identifier the message carries.
    candidates: list[tuple[str, object, str]] = []
    if context:
        device = context.get("device")
        if isinstance(device, dict) and "id" in device:
            candidates.append((DEVICE_ID, device["id"], "context.device.id"))
    if traits:
        for key, kind in TRAIT_IDENTIFIERS:
            if key in traits:
                candidates.append((kind, traits[key], f"traits.{key}"))
    if context:
        context_traits = context.get("traits")
        if isinstance(context_traits, dict):
            for key, kind in TRAIT_IDENTIFIERS:
                if key in context_traits:
                    candidates.append((kind, context_traits[key], f"context.traits.{key}"))
        external = context.get("externalIds")
        if external is not None:
            _external_ids(external, candidates, errors)
    if not candidates:
        return []
    found: dict[tuple[str, str], None] = {}  # ordered set
    for kind, raw, field_path in candidates:
        if raw is None or raw == "":
            continue
        value = _identifier_value(kind, raw, field_path, region, errors)
        if value is not None:
            found[(kind, value)] = None
    return [{"kind": kind, "value": value} for kind, value in found]


def _external_ids(
    external: object, candidates: list[tuple[str, object, str]], errors: _Errors
) -> None:
    """Segment's ``context.externalIds`` ``[{id, type}]``: ``type`` is the identifier kind."""
    if not isinstance(external, list):
        errors.add("context.externalIds", f"must be an array, got {_type_name(external)}")
        return
    for i, item in enumerate(external):
        where = f"context.externalIds[{i}]"
        if not isinstance(item, dict):
            errors.add(where, f"must be an object, got {_type_name(item)}")
            continue
        id_type = item.get("type")
        if not isinstance(id_type, str) or not id_type:
            errors.add(f"{where}.type", "must be a non-empty string")
            continue
        candidates.append((id_type.lower(), item.get("id"), f"{where}.id"))


def derive_channel(channel: object, context: Mapping[str, Any] | None) -> str:
    """The ``channel`` column: where the event came from (app, web, server, ...).

    An explicit top-level ``channel`` or ``context.channel`` wins (Segment's own
    values ``browser``/``mobile``/``server`` become ``web``/``app``/``server``;
    anything else, e.g. ``mini_program``, ``wechat``, ``store``, is kept
    lower-cased). Otherwise: ``app`` when the context describes an app or a
    device (``context.app`` / ``context.device``), ``web`` when it describes a
    page or a browser (``context.page`` / ``context.userAgent``), else ``server``.
    """
    if not (isinstance(channel, str) and channel) and context:
        channel = context.get("channel")
    if isinstance(channel, str) and channel:
        lowered = channel.strip().lower()
        return _SEGMENT_CHANNELS.get(lowered, lowered)
    if context:
        if context.get("app") or context.get("device"):
            return "app"
        if context.get("page") or context.get("userAgent"):
            return "web"
    return "server"


def validate_message(
    msg: object, index: int, batch: BatchContext, *, endpoint_type: str | None = None
) -> Row | list[Rejection]:
    """One Segment message as an ``EVENTS`` row, or the reasons it is refused.

    ``endpoint_type`` is the type implied by a single-message endpoint
    (``/v1/track`` → ``track``); a message whose own ``type`` disagrees is refused.
    Unknown top-level keys are ignored, as Segment does (SDKs add private ones).
    """
    result = _check_message(msg, index, batch, endpoint_type)
    if isinstance(result, list):
        return result
    return dict(zip(EVENTS.names, result, strict=True))


def _check_message(
    msg: object, index: int, batch: BatchContext, endpoint_type: str | None
) -> tuple[Any, ...] | list[Rejection]:
    """:func:`validate_message` with the row as a tuple in ``EVENTS`` column order
    (cheaper to build and to turn into columns than a dict)."""
    if not isinstance(msg, dict):
        return [Rejection(index, "", f"must be a JSON object, got {_type_name(msg)}", None)]
    errors = _Errors()

    raw_id = msg.get("messageId")
    message_id: str | None
    if raw_id is None or raw_id == "":
        message_id = str(uuid.uuid4())
    elif isinstance(raw_id, str) and len(raw_id) <= MAX_MESSAGE_ID_LENGTH:
        message_id = raw_id
    elif isinstance(raw_id, int) and not isinstance(raw_id, bool):
        message_id = str(raw_id)
    else:
        message_id = None
        errors.add("messageId", f"must be a string of at most {MAX_MESSAGE_ID_LENGTH} characters")

    kind = msg.get("type", endpoint_type)
    if endpoint_type is not None and kind != endpoint_type:
        errors.add("type", f"{kind!r} sent to the /v1/{endpoint_type} endpoint")
    elif kind not in MESSAGE_TYPES:
        if kind is None:
            errors.add("type", "missing; one of " + ", ".join(MESSAGE_TYPES))
        else:
            errors.add("type", f"{str(kind)[:40]!r} is not one of " + ", ".join(MESSAGE_TYPES))

    user_id = _identity(msg, "userId", errors)
    anonymous_id = _identity(msg, "anonymousId", errors)
    missing_ids = user_id is None and anonymous_id is None
    if missing_ids and not (errors.has("userId") or errors.has("anonymousId")):
        errors.add("userId", "userId or anonymousId is required")

    event = name = group_id = previous_id = None
    if kind == "track":
        event = _text(msg.get("event"), "event", errors, numbers=False)
        if not event and not errors.has("event"):
            errors.add("event", "track needs an event name")
    elif kind in ("page", "screen"):
        name = _text(msg.get("name"), "name", errors, numbers=False)
    elif kind == "group":
        group_id = _identity(msg, "groupId", errors)
        if group_id is None and not errors.has("groupId"):
            errors.add("groupId", "group needs a groupId")
    elif kind == "alias":
        previous_id = _identity(msg, "previousId", errors)
        if previous_id is None and not errors.has("previousId"):
            errors.add("previousId", "alias needs a previousId")

    properties = _object(msg, "properties", errors)
    traits = _object(msg, "traits", errors)
    context = _object(msg, "context", errors)
    _object(msg, "integrations", errors)
    if batch.context:
        context = {**batch.context, **context} if context else dict(batch.context)

    channel = msg.get("channel")
    if channel is not None and not isinstance(channel, str):
        errors.add("channel", f"must be a string, got {_type_name(channel)}")
        channel = None

    # Timestamps, with Segment's clock-skew correction.
    received = batch.received_utc
    original = _timestamp(msg, "originalTimestamp", errors)
    if original is None:
        original = _timestamp(msg, "timestamp", errors)
    sent_at = _timestamp(msg, "sentAt", errors)
    if sent_at is None and "sentAt" not in msg:
        sent_at = batch.sent_utc
    if original is None:
        timestamp = received
    elif sent_at is None:
        timestamp = original
    else:
        timestamp = received - (sent_at - original)
    if timestamp > batch.latest_utc:
        errors.add(
            "timestamp",
            f"{timestamp.isoformat()}Z is more than {MAX_FUTURE.total_seconds() / 3600:.0f} "
            "hours after the server received it (after clock-skew correction)",
        )
    elif timestamp < EARLIEST:
        errors.add("timestamp", f"{timestamp.isoformat()}Z is before 1970-01-01")

    order_id = revenue = currency = coupon = products = None
    if properties:
        order_id = _text(properties.get("order_id"), "properties.order_id", errors)
        revenue = _money(properties.get("revenue"), "properties.revenue", errors)
        currency = _currency(properties.get("currency"), errors)
        coupon = _text(properties.get("coupon"), "properties.coupon", errors)
        products = _products(properties.get("products"), errors)

    identifiers = _identifiers(
        traits if kind == "identify" else None, context, batch.default_region, errors
    )

    if errors.items:
        sent_id = message_id if raw_id not in (None, "") else None
        return [Rejection(index, f, reason, sent_id) for f, reason in errors.items]

    # In EVENTS column order (checked by _check_column_order below).
    return (
        message_id,
        kind,
        event,
        name,
        user_id,
        anonymous_id,
        None,  # one_id: set by identity resolution
        timestamp,
        received,
        sent_at,
        original,
        batch.source,
        derive_channel(channel, context),
        order_id,
        revenue,
        currency,
        coupon,
        products,
        group_id,
        previous_id,
        identifiers,
        None if properties is None else _json(properties),
        None if traits is None else _json(traits),
        None if context is None else _json(context),
        None,  # person_key: set by store_events
    )


_FAST_KINDS: Final = frozenset(("track", "identify", "page", "screen"))


def _fast_timestamp(value: object) -> datetime:
    """A plain ISO-8601 string as :func:`parse_timestamp` reads it; raises ValueError."""
    if type(value) is not str:
        raise ValueError
    at = datetime.fromisoformat(value)
    tz = at.tzinfo
    if tz is None:
        return at
    if tz is UTC:
        return at.replace(tzinfo=None)
    return naive_utc(at)


def _fast_identifier(
    found: dict[tuple[str, str], None], kind: str, raw: object, region: str
) -> bool:
    """Add ``raw`` as a ``kind`` identifier to ``found`` as :func:`_identifiers` does;
    False when it would be an error (the caller gives up)."""
    if raw is None or raw == "":
        return True
    if type(raw) is not str and type(raw) is not int:
        return False
    try:
        found[(kind, _normalized(kind, raw, region))] = None
    except InvalidIdentifier:
        return False
    return True


def _fast_identifiers(
    traits: dict[str, Any] | None, context: Mapping[str, Any] | None, region: str
) -> list[dict[str, str]] | None:
    """:func:`_identifiers` without field paths for errors: None when any identifier
    is wrong (the caller gives up), in the same order otherwise."""
    found: dict[tuple[str, str], None] = {}  # ordered set
    if context:
        device = context.get("device")
        if (
            isinstance(device, dict)
            and "id" in device
            and not _fast_identifier(found, DEVICE_ID, device["id"], region)
        ):
            return None
    if traits:
        for key, kind in TRAIT_IDENTIFIERS:
            if key in traits and not _fast_identifier(found, kind, traits[key], region):
                return None
    if context:
        context_traits = context.get("traits")
        if isinstance(context_traits, dict):
            for key, kind in TRAIT_IDENTIFIERS:
                if key in context_traits and not _fast_identifier(
                    found, kind, context_traits[key], region
                ):
                    return None
        external = context.get("externalIds")
        if external is not None:
            if type(external) is not list:
                return None
            for item in external:
                if type(item) is not dict:
                    return None
                id_type = item.get("type")
                if type(id_type) is not str or not id_type:
                    return None
                if not _fast_identifier(found, id_type.lower(), item.get("id"), region):
                    return None
    return [{"kind": kind, "value": value} for kind, value in found]


def _check_fast(msg: dict[str, Any], batch: BatchContext) -> tuple[Any, ...] | None:
    """:func:`_check_message` for the common, valid ``/v1/batch`` message, or None.

    Most messages are a valid track / identify / page / screen with string ids: this
    pass takes the straight road for them and gives up (None) at the first thing
    that is unusual or wrong, so the caller runs :func:`_check_message`, which
    alone says what is wrong and how. Whatever it returns is exactly the row
    ``_check_message`` returns (``tests/ingest/test_models.py`` checks that on
    generated messages): the same helpers compute products, money and
    identifiers; only the reading of the top-level fields is inlined.
    """
    get = msg.get
    message_id = get("messageId")
    if type(message_id) is not str or not message_id or len(message_id) > MAX_MESSAGE_ID_LENGTH:
        return None
    kind = get("type")
    if type(kind) is not str or kind not in _FAST_KINDS:
        return None
    user_id = get("userId")
    if user_id is not None and user_id != "":
        if type(user_id) is not str:
            return None
        user_id = user_id.strip()
        if not user_id or len(user_id) > MAX_VALUE_LENGTH:
            return None
    else:
        user_id = None
    anonymous_id = get("anonymousId")
    if anonymous_id is not None and anonymous_id != "":
        if type(anonymous_id) is not str:
            return None
        anonymous_id = anonymous_id.strip()
        if not anonymous_id or len(anonymous_id) > MAX_VALUE_LENGTH:
            return None
    elif user_id is None:
        return None
    else:
        anonymous_id = None
    event = name = None
    if kind == "track":
        event = get("event")
        if type(event) is not str or not event or len(event) > MAX_TEXT_LENGTH:
            return None
    elif kind != "identify":
        name = get("name")
        if name is not None and (type(name) is not str or len(name) > MAX_TEXT_LENGTH):
            return None
    properties = get("properties")
    traits = get("traits")
    context = get("context")
    integrations = get("integrations")
    if (
        (properties is not None and type(properties) is not dict)
        or (traits is not None and type(traits) is not dict)
        or (context is not None and type(context) is not dict)
        or (integrations is not None and type(integrations) is not dict)
    ):
        return None
    if batch.context:
        context = {**batch.context, **context} if context else dict(batch.context)
    channel = get("channel")
    if channel is not None and type(channel) is not str:
        return None

    try:
        original = get("originalTimestamp")
        if original is not None:
            original = _fast_timestamp(original)
        else:
            original = get("timestamp")
            if original is not None:
                original = _fast_timestamp(original)
        sent_at = get("sentAt")
        if sent_at is not None:
            sent_at = _fast_timestamp(sent_at)
        elif "sentAt" not in msg:
            sent_at = batch.sent_utc
    except ValueError:
        return None
    received = batch.received_utc
    if original is None:
        timestamp = received
    elif sent_at is None:
        timestamp = original
    else:
        timestamp = received - (sent_at - original)
    if timestamp > batch.latest_utc or timestamp < EARLIEST:
        return None

    errors = _Errors()
    order_id = revenue = currency = coupon = products = None
    if properties:
        order_id = properties.get("order_id")
        if order_id is not None and not (
            type(order_id) is str and len(order_id) <= MAX_TEXT_LENGTH
        ):
            order_id = _text(order_id, "properties.order_id", errors)
        revenue = properties.get("revenue")
        if revenue is not None:
            revenue = _money(revenue, "properties.revenue", errors)
        currency = properties.get("currency")
        if currency is not None:
            currency = _currency(currency, errors)
        coupon = properties.get("coupon")
        if coupon is not None and not (type(coupon) is str and len(coupon) <= MAX_TEXT_LENGTH):
            coupon = _text(coupon, "properties.coupon", errors)
        products = properties.get("products")
        if products is not None:
            products = _products(products, errors)
    if errors.items:
        return None
    if context or (traits and kind == "identify"):
        identifiers = _fast_identifiers(
            traits if kind == "identify" else None, context, batch.default_region
        )
        if identifiers is None:
            return None
    else:
        identifiers = []
    return (
        message_id,
        kind,
        event,
        name,
        user_id,
        anonymous_id,
        None,  # one_id
        timestamp,
        received,
        sent_at,
        original,
        batch.source,
        derive_channel(channel, context),
        order_id,
        revenue,
        currency,
        coupon,
        products,
        None,  # group_id: group messages take the rules
        None,  # previous_id: alias messages take the rules
        identifiers,
        None if properties is None else _json(properties),
        None if traits is None else _json(traits),
        None if context is None else _json(context),
        None,  # person_key
    )


def _check_column_order() -> None:
    expected = (  # noqa: SIM905
        "message_id type event name user_id anonymous_id one_id timestamp received_at sent_at "
        "original_timestamp source channel order_id revenue currency coupon products group_id "
        "previous_id identifiers properties traits context person_key"
    ).split()
    if EVENTS.names != expected:  # pragma: no cover - guards a schema edit
        raise RuntimeError("EVENTS columns changed: update _check_message's row tuple")


_check_column_order()


def validate_batch(
    messages: Sequence[object],
    batch: BatchContext,
    *,
    endpoint_type: str | None = None,
    check_size: bool = True,
) -> tuple[list[Row], list[Rejection]]:
    """Every message of a request: the valid rows and the rejections (in input order).

    With ``check_size``, a message whose compact JSON exceeds
    :data:`MAX_EVENT_BYTES` is refused (the caller skips it when the whole body
    is already smaller than the limit).
    """
    tuples, rejections = _check_batch(messages, batch, endpoint_type, check_size)
    names = EVENTS.names
    return [dict(zip(names, values, strict=True)) for values in tuples], rejections


def validate_batch_table(
    messages: Sequence[object],
    batch: BatchContext,
    *,
    endpoint_type: str | None = None,
    check_size: bool = True,
) -> tuple[pa.Table, list[Rejection]]:
    """:func:`validate_batch` with the valid rows as one ``EVENTS`` Arrow table (the
    server's path: no row dicts, columns built straight from the checked values)."""
    tuples, rejections = _check_batch(messages, batch, endpoint_type, check_size)
    return _tuples_to_table(tuples, batch), rejections


def _check_batch(
    messages: Sequence[object],
    batch: BatchContext,
    endpoint_type: str | None,
    check_size: bool,
) -> tuple[list[tuple[Any, ...]], list[Rejection]]:
    rows: list[tuple[Any, ...]] = []
    rejections: list[Rejection] = []
    for index, msg in enumerate(messages):
        if check_size and isinstance(msg, dict):
            size = len(orjson.dumps(msg))
            if size > MAX_EVENT_BYTES:
                raw_id = msg.get("messageId")
                rejections.append(
                    Rejection(
                        index,
                        "",
                        f"message is {size} bytes; the limit is {MAX_EVENT_BYTES} bytes (32 KB)",
                        raw_id if isinstance(raw_id, str) else None,
                    )
                )
                continue
        if endpoint_type is None and type(msg) is dict:
            fast = _check_fast(msg, batch)
            if fast is not None:
                rows.append(fast)
                continue
        result = _check_message(msg, index, batch, endpoint_type)
        if isinstance(result, list):
            rejections.extend(result)
        else:
            rows.append(result)
    return rows, rejections


_UNSET: Final = (EVENTS.get_field_index("one_id"), EVENTS.get_field_index("person_key"))
_RECEIVED_AT: Final = EVENTS.get_field_index("received_at")
_SOURCE: Final = EVENTS.get_field_index("source")
_SENT_AT: Final = EVENTS.get_field_index("sent_at")


def _tuples_to_table(rows: Sequence[tuple[Any, ...]], batch: BatchContext) -> pa.Table:
    """Rows of :func:`_check_message` as an ``EVENTS`` table. Columns every row of a
    request shares (``received_at``, ``source``, the unset keys, usually ``sent_at``)
    are repeated from one value instead of converted row by row."""
    if not rows:
        return EVENTS.empty_table()
    n = len(rows)
    shared = {
        _RECEIVED_AT: batch.received_utc,
        _SOURCE: batch.source,
        _UNSET[0]: None,
        _UNSET[1]: None,
    }
    sent = batch.sent_utc
    if sent is not None and all(row[_SENT_AT] is sent for row in rows):
        shared[_SENT_AT] = sent
    arrays = []
    for i, (values, f) in enumerate(zip(zip(*rows, strict=True), EVENTS, strict=True)):
        if i in shared:
            arrays.append(pa.repeat(pa.scalar(shared[i], f.type), n))
        else:
            arrays.append(pa.array(values, f.type))
    return pa.Table.from_arrays(arrays, schema=EVENTS)


_ROW_VALUES: Final = operator.itemgetter(*EVENTS.names)


def rows_to_table(rows: Sequence[Row]) -> pa.Table:
    """Rows from :func:`validate_message` as one ``EVENTS`` Arrow table."""
    if not rows:
        return EVENTS.empty_table()
    columns = zip(*map(_ROW_VALUES, rows), strict=True)
    return pa.Table.from_arrays(
        [pa.array(values, f.type) for values, f in zip(columns, EVENTS, strict=True)],
        schema=EVENTS,
    )
