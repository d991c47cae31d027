"""The bulk path (SQL) and the HTTP validator (Python) agree on every message.

Same messages through ``zhiying.ingest.models.validate_batch`` and through
``zhiying.ingest.bulk.check_file``: the same (field, reason) rejections, and
for valid messages the same ``EVENTS`` row.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from zhiying.ingest.bulk import check_file
from zhiying.ingest.models import BatchContext, rows_to_table, validate_batch

NOW = datetime(2026, 11, 1, 9, 0, tzinfo=UTC)

GOOD: list[Any] = [
    {
        "type": "track",
        "event": "Order Completed",
        "userId": "u1",
        "messageId": "m1",
        "timestamp": "2026-10-01T10:00:00.123Z",
        "properties": {
            "order_id": "o1",
            "revenue": 19.99,
            "currency": "cny",
            "coupon": "SPRING",
            "products": [
                {"product_id": "p1", "price": "9.90", "quantity": 2, "brand": "Shiseido"},
                {"sku": 5, "price": 0.1, "quantity": "3"},
            ],
        },
        "context": {"device": {"id": "dev-1"}, "traits": {"email": "A.B+c@Example.COM"}},
    },
    {
        "type": "identify",
        "userId": 42,
        "messageId": 7,
        "traits": {"email": "x@y.com", "phone": "13800138000", "city": "重庆"},
    },
    {
        "type": "page",
        "anonymousId": "a1",
        "name": "Home",
        "context": {"userAgent": "Mozilla"},
        "sentAt": "2026-10-01T10:00:05Z",
        "originalTimestamp": "2026-10-01T10:00:00Z",
    },
    {"type": "screen", "userId": " padded ", "name": "Cart", "channel": "Mobile"},
    {"type": "group", "userId": "u2", "groupId": "g1", "context": {"channel": "mini_program"}},
    {"type": "alias", "userId": "u3", "previousId": "anon-3"},
    {
        "type": "track",
        "event": "Coupon Applied",
        "anonymousId": "a2",
        "timestamp": "2026-10-31T23:00:00+08:00",
        "properties": {"revenue": "12.5", "order_id": 12345, "coupon": 1.5, "products": []},
        "context": {"externalIds": [{"type": "Member_Id", "id": "77"}], "app": {"name": "x"}},
    },
    {
        "type": "track",
        "event": "Noise",
        "userId": "u4",
        "properties": {"revenue": 59.97000000000001},
    },
    {"type": "track", "event": "Old", "userId": "u5", "timestamp": "1997-01-01"},
]

BAD: list[Any] = [
    {"type": "track", "userId": "u1"},
    {"type": "bogus", "userId": "u1"},
    {"userId": "u1"},
    {"type": "track", "event": "x"},
    {"type": "track", "event": "x", "userId": "  "},
    {"type": "track", "event": 5, "userId": True},
    {"type": "track", "event": "x", "userId": "u", "timestamp": "yesterday"},
    {"type": "track", "event": "x", "userId": "u", "timestamp": 1700000000},
    {"type": "track", "event": "x", "userId": "u", "timestamp": "2030-01-01T00:00:00Z"},
    {"type": "track", "event": "x", "userId": "u", "timestamp": "1960-01-01T00:00:00.5Z"},
    {"type": "track", "event": "x", "userId": "u", "originalTimestamp": "2026-02-30T00:00:00Z"},
    {
        "type": "track",
        "event": "x",
        "userId": "u",
        "properties": {
            "revenue": 10.125,
            "currency": "US",
            "products": [1, {"price": True, "quantity": 1.5}, {"quantity": "3x"}, None],
        },
    },
    {"type": "track", "event": "x", "userId": "u", "properties": {"revenue": "1e17"}},
    {"type": "track", "event": "x", "userId": "u", "properties": {"products": {"a": 1}}},
    {
        "type": "track",
        "event": "x",
        "userId": "u",
        "properties": {"products": [{"quantity": 3e10}]},
    },
    {"type": "track", "event": "x", "userId": "u", "properties": []},
    {"type": "track", "event": "x", "userId": "u", "traits": "t", "context": 3, "integrations": []},
    {"type": "group", "userId": "u"},
    {"type": "alias", "userId": "u", "previousId": {"x": 1}},
    {
        "type": "track",
        "event": "x",
        "userId": "u",
        "context": {
            "externalIds": [
                {"type": "Member_Id", "id": "77"},
                {"id": 3},
                "x",
                {"type": "phone", "id": "abc"},
            ]
        },
    },
    {"type": "track", "event": "x", "userId": "u", "context": {"externalIds": "nope"}},
    {"type": "identify", "userId": "u", "traits": {"email": "not-an-email", "phone": True}},
    {"type": "track", "event": "x", "userId": "u", "messageId": {"a": 1}},
    {"type": "track", "event": "x", "userId": "u", "messageId": "m" * 201},
    {"type": "screen", "userId": "u", "name": 3, "channel": 7},
    {"type": "track", "event": "e" * 1025, "userId": "u"},
    {"type": "track", "event": "x", "userId": "u" * 257},
    {"type": "track", "event": "", "userId": "u"},
    {"type": "track", "event": "x", "userId": "u", "properties": {"blob": "x" * 40_000}},
    [1, 2],
    "a string",
    None,
]


def both_paths(tmp_path: Path, messages: list[Any]) -> tuple[Any, Any, Any, Any]:
    path = tmp_path / "messages.jsonl"
    path.write_bytes(b"\n".join(orjson.dumps(m) for m in messages) + b"\n")
    checked = check_file(path, received_at=NOW)
    rows, rejections = validate_batch(
        messages, BatchContext(received_at=NOW, source="import:messages.jsonl")
    )
    http_rejections = sorted((r.index + 1, r.field, r.reason) for r in rejections)
    bulk_rejections = sorted(
        zip(
            checked.rejections.column("row").to_pylist(),
            checked.rejections.column("field").to_pylist(),
            checked.rejections.column("reason").to_pylist(),
            strict=True,
        )
    )
    http_rows = rows_to_table(rows).to_pylist()
    bulk_rows = checked.events.drop_columns(["__row"]).to_pylist()
    return http_rejections, bulk_rejections, http_rows, bulk_rows


def comparable(rows: list[dict[str, Any]], sent: list[Any]) -> list[dict[str, Any]]:
    """Rows without the messageIds each path invents for messages that had none."""
    out = []
    for row in rows:
        row = dict(row)
        if not any(
            isinstance(m, dict) and str(m.get("messageId")) == row["message_id"] for m in sent
        ):
            row["message_id"] = None
        out.append(row)
    return out


def test_bulk_rejects_every_bad_message_with_the_http_validators_field_and_reason(
    tmp_path: Path,
) -> None:
    http, bulk, _, _ = both_paths(tmp_path, BAD)
    assert len({row for row, _, _ in http}) == len(BAD)  # every case is rejected
    assert bulk == http


def test_bulk_builds_the_same_events_rows_as_the_http_path(tmp_path: Path) -> None:
    http_rej, bulk_rej, http_rows, bulk_rows = both_paths(tmp_path, GOOD + BAD)
    assert bulk_rej == http_rej
    assert len(http_rows) == len(GOOD)
    assert comparable(bulk_rows, GOOD) == comparable(http_rows, GOOD)


_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**40), max_value=2**40),
    st.floats(allow_nan=False, allow_infinity=False, width=32),
    st.sampled_from(["", " ", "u1", "track", "2026-10-01T10:00:00Z", "12.50", "abc", "cny"]),
    st.text(max_size=8),
    st.just([]),
    st.just({}),
)
_messages = st.fixed_dictionaries(
    {},
    optional={
        "type": st.one_of(
            st.sampled_from(["track", "identify", "page", "group", "alias"]), _values
        ),
        "userId": _values,
        "anonymousId": _values,
        "event": _values,
        "name": _values,
        "messageId": _values,
        "timestamp": _values,
        "sentAt": _values,
        "channel": _values,
        "properties": st.one_of(
            _values,
            st.fixed_dictionaries(
                {},
                optional={
                    "revenue": _values,
                    "currency": _values,
                    "order_id": _values,
                    "products": st.one_of(
                        _values,
                        st.lists(
                            st.one_of(
                                _values,
                                st.fixed_dictionaries(
                                    {},
                                    optional={
                                        "price": _values,
                                        "quantity": _values,
                                        "sku": _values,
                                    },
                                ),
                            ),
                            max_size=3,
                        ),
                    ),
                },
            ),
        ),
        "context": st.one_of(
            _values,
            st.fixed_dictionaries(
                {},
                optional={"device": st.fixed_dictionaries({"id": _values}), "userAgent": _values},
            ),
        ),
    },
)


@settings(
    max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(_messages, min_size=40, max_size=40))
def test_random_messages_get_the_same_verdict_on_both_paths(
    tmp_path: Path, messages: list[Any]
) -> None:
    http_rej, bulk_rej, http_rows, bulk_rows = both_paths(tmp_path, messages)
    assert bulk_rej == http_rej
    assert comparable(bulk_rows, messages) == comparable(http_rows, messages)
