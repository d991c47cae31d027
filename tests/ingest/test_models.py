"""Validation of single Segment messages into EVENTS rows (pure, no stores)."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from zhiying.ingest.models import (
    BatchContext,
    Rejection,
    Row,
    parse_money,
    rows_to_table,
    validate_batch,
    validate_message,
)
from zhiying.warehouse.schema import EVENTS

RECEIVED = datetime(2026, 11, 1, 9, 0, tzinfo=UTC)
BATCH = BatchContext(received_at=RECEIVED, source="key1")


def ok(msg: dict[str, Any], batch: BatchContext = BATCH, **kw: Any) -> Row:
    result = validate_message(msg, 0, batch, **kw)
    assert not isinstance(result, list), result
    return result


def rejected(msg: object, **kw: Any) -> dict[str, str]:
    result = validate_message(msg, 0, BATCH, **kw)
    assert isinstance(result, list), result
    return {r.field: r.reason for r in result}


def test_order_completed_fills_typed_commerce_columns_exactly() -> None:
    row = ok(
        {
            "type": "track",
            "userId": 42,
            "event": "Order Completed",
            "properties": {
                "order_id": 1001,
                "revenue": 0.1,
                "currency": "cny",
                "coupon": "SPRING40",
                "products": [
                    {"product_id": 7, "sku": "S-7", "price": "19.99", "quantity": 2},
                    {"product_id": "8", "price": 59.97000000000001, "quantity": 1.0},
                ],
            },
        }
    )
    assert row["user_id"] == "42"
    assert row["order_id"] == "1001"
    assert row["revenue"] == Decimal("0.10") and str(row["revenue"]) == "0.10"
    assert row["currency"] == "CNY"
    assert [(p["product_id"], p["price"], p["quantity"]) for p in row["products"]] == [
        ("7", Decimal("19.99"), 2),
        ("8", Decimal("59.97"), 1),
    ]


def test_identifiers_are_extracted_and_normalised() -> None:
    row = ok(
        {
            "type": "identify",
            "anonymousId": "a-1",
            "traits": {"phone": "138 0013 8000", "email": "Li.Lei@Example.COM", "city": "重庆"},
            "context": {
                "device": {"id": "dev-9"},
                "traits": {"wechat_openid": "oX1", "email": "li.lei@example.com"},
                "externalIds": [{"id": "M-77", "type": "Member_ID", "collection": "users"}],
            },
        }
    )
    assert row["identifiers"] == [
        {"kind": "device_id", "value": "dev-9"},
        {"kind": "phone", "value": "+8613800138000"},
        {"kind": "email", "value": "li.lei@example.com"},
        {"kind": "wechat_openid", "value": "oX1"},
        {"kind": "member_id", "value": "M-77"},
    ]


def test_group_traits_are_not_taken_as_the_users_identifiers() -> None:
    row = ok({"type": "group", "userId": "u1", "groupId": "g1", "traits": {"email": "x@corp.cn"}})
    assert row["identifiers"] == []
    assert row["group_id"] == "g1"


def test_invalid_phone_rejects_the_event_naming_the_field() -> None:
    errors = rejected(
        {"type": "track", "userId": "u1", "event": "E", "context": {"traits": {"phone": "12"}}}
    )
    assert list(errors) == ["context.traits.phone"]


def test_invalid_email_in_identify_traits_is_named() -> None:
    errors = rejected({"type": "identify", "userId": "u1", "traits": {"email": "not-an-email"}})
    assert list(errors) == ["traits.email"]


def test_bad_product_price_names_its_position() -> None:
    products = [{"price": 1}, {"price": 2}, {"price": 3}, {"price": "12,50"}]
    errors = rejected(
        {"type": "track", "userId": "u", "event": "E", "properties": {"products": products}}
    )
    assert list(errors) == ["properties.products[3].price"]


@pytest.mark.parametrize(
    ("msg", "field"),
    [
        ({"type": "track", "userId": "u", "event": 5}, "event"),
        ({"type": "track", "userId": "u", "event": "E", "properties": [1]}, "properties"),
        ({"type": "identify", "userId": "u", "traits": "vip"}, "traits"),
        ({"type": "track", "userId": "u", "event": "E", "context": 1}, "context"),
        ({"type": "track", "userId": {"id": 1}, "event": "E"}, "userId"),
        ({"type": "track", "userId": "u", "event": "E", "timestamp": 1730000000}, "timestamp"),
        ({"type": "track", "userId": "u", "event": "E", "timestamp": "yesterday"}, "timestamp"),
        ({"type": "track", "userId": "u", "event": "E", "messageId": ["m"]}, "messageId"),
        (
            {"type": "track", "userId": "u", "event": "E", "properties": {"products": {}}},
            "properties.products",
        ),
        (
            {"type": "track", "userId": "u", "event": "E", "properties": {"revenue": True}},
            "properties.revenue",
        ),
        (
            {"type": "track", "userId": "u", "event": "E", "properties": {"currency": "RMB$"}},
            "properties.currency",
        ),
        (
            {
                "type": "track",
                "userId": "u",
                "event": "E",
                "properties": {"products": [{"quantity": 1.5}]},
            },
            "properties.products[0].quantity",
        ),
        (
            {
                "type": "track",
                "userId": "u",
                "event": "E",
                "context": {"externalIds": [{"id": "x"}]},
            },
            "context.externalIds[0].type",
        ),
    ],
)
def test_wrong_types_are_rejected_naming_the_field(msg: dict[str, Any], field: str) -> None:
    assert field in rejected(msg)


@pytest.mark.parametrize(
    ("msg", "field"),
    [
        ({"type": "track", "event": "E"}, "userId"),
        ({"type": "track", "userId": "", "anonymousId": "  ", "event": "E"}, "anonymousId"),
        ({"type": "track", "userId": "u"}, "event"),
        ({"type": "alias", "userId": "u"}, "previousId"),
        ({"type": "group", "userId": "u"}, "groupId"),
        ({"userId": "u"}, "type"),
        ({"type": "purchase", "userId": "u"}, "type"),
    ],
)
def test_required_fields_are_enforced(msg: dict[str, Any], field: str) -> None:
    assert field in rejected(msg)


def test_a_message_that_is_not_an_object_is_rejected() -> None:
    assert rejected(["track"]) == {"": "must be a JSON object, got array"}


def test_type_comes_from_the_endpoint_and_must_not_contradict_it() -> None:
    row = ok({"userId": "u", "name": "Home"}, endpoint_type="page")
    assert row["type"] == "page" and row["name"] == "Home"
    assert "type" in rejected({"type": "track", "userId": "u", "event": "E"}, endpoint_type="page")


def test_clock_skew_is_corrected_with_sent_at() -> None:
    # The device clock runs 1 hour fast: it says it sent at 10:00 an event it
    # recorded at 09:58; the server received it at 09:00.
    row = ok(
        {
            "type": "track",
            "userId": "u",
            "event": "E",
            "timestamp": "2026-11-01T09:58:00Z",
            "sentAt": "2026-11-01T10:00:00Z",
        }
    )
    assert row["timestamp"] == datetime(2026, 11, 1, 8, 58)
    assert row["original_timestamp"] == datetime(2026, 11, 1, 9, 58)
    assert row["received_at"] == datetime(2026, 11, 1, 9, 0)


def test_batch_sent_at_applies_to_messages_without_their_own() -> None:
    batch = BatchContext(received_at=RECEIVED, sent_at=datetime(2026, 11, 1, 9, 30, tzinfo=UTC))
    msg = {"type": "track", "userId": "u", "event": "E", "timestamp": "2026-11-01T17:20:00+08:00"}
    assert ok(msg, batch)["timestamp"] == datetime(2026, 11, 1, 8, 50)  # 09:00 - 10 min


def test_timestamp_defaults_to_received_at_and_offsets_become_utc() -> None:
    assert ok({"type": "track", "userId": "u", "event": "E"})["timestamp"] == datetime(
        2026, 11, 1, 9, 0
    )
    row = ok({"type": "track", "userId": "u", "event": "E", "timestamp": "2026-10-01T08:00+08:00"})
    assert row["timestamp"] == datetime(2026, 10, 1, 0, 0)


def test_timestamp_more_than_24_hours_ahead_is_rejected() -> None:
    future = {"type": "track", "userId": "u", "event": "E", "timestamp": "2026-11-02T09:00:01Z"}
    assert "timestamp" in rejected(future)
    ok({**future, "timestamp": "2026-11-02T08:59:59Z"})


def test_timestamp_before_1970_is_rejected_but_history_is_accepted() -> None:
    assert "timestamp" in rejected(
        {"type": "track", "userId": "u", "event": "E", "timestamp": "0001-01-01T00:00:00Z"}
    )
    ok({"type": "track", "userId": "u", "event": "E", "timestamp": "2012-12-02T00:30:08.276Z"})


def test_missing_message_id_gets_a_uuid4_and_a_given_one_is_kept() -> None:
    generated = ok({"type": "track", "userId": "u", "event": "E"})["message_id"]
    assert len(generated) == 36 and generated[14] == "4"
    assert (
        ok({"type": "track", "userId": "u", "event": "E", "messageId": "m-1"})["message_id"]
        == "m-1"
    )


def test_unknown_top_level_keys_are_ignored_like_segment() -> None:
    row = ok({"type": "track", "userId": "u", "event": "E", "_metadata": {"x": 1}, "foo": 2})
    assert "foo" not in (row["properties"] or "") and "foo" not in (row["context"] or "")


def test_json_columns_are_compact_text() -> None:
    row = ok({"type": "track", "userId": "u", "event": "E", "properties": {"a": 1, "b": "两"}})
    assert row["properties"] == '{"a":1,"b":"两"}'


@pytest.mark.parametrize(
    ("extra", "channel"),
    [
        ({"channel": "mini_program"}, "mini_program"),
        ({"channel": "browser"}, "web"),
        ({"channel": "mobile"}, "app"),
        ({"context": {"channel": "WeChat"}}, "wechat"),
        ({"context": {"device": {"id": "d1"}}}, "app"),
        ({"context": {"app": {"name": "Shop"}}}, "app"),
        ({"context": {"page": {"url": "https://x.cn"}}}, "web"),
        ({"context": {"userAgent": "Mozilla/5.0"}}, "web"),
        ({"context": {"library": {"name": "analytics-python"}}}, "server"),
        ({}, "server"),
    ],
)
def test_channel_is_given_or_derived(extra: dict[str, Any], channel: str) -> None:
    assert ok({"type": "track", "userId": "u", "event": "E", **extra})["channel"] == channel


def test_batch_context_is_merged_under_the_message_context() -> None:
    batch = BatchContext(
        received_at=RECEIVED, context={"device": {"id": "d-batch"}, "locale": "zh-CN"}
    )
    row = ok({"type": "track", "userId": "u", "event": "E", "context": {"locale": "en"}}, batch)
    assert row["context"] == '{"device":{"id":"d-batch"},"locale":"en"}'
    assert row["identifiers"] == [{"kind": "device_id", "value": "d-batch"}]


def test_oversize_message_in_a_batch_is_rejected_alone() -> None:
    big = {"type": "track", "userId": "u", "event": "E", "properties": {"blob": "x" * 33_000}}
    rows, rejections = validate_batch([{"type": "track", "userId": "u", "event": "E"}, big], BATCH)
    assert len(rows) == 1
    assert [(r.index, r.field) for r in rejections] == [(1, "")]
    assert "32 KB" in rejections[0].reason


def test_rejections_carry_index_and_the_sent_message_id() -> None:
    _, rejections = validate_batch(
        [{"type": "track", "userId": "u", "event": "E"}, {"type": "track", "messageId": "m2"}],
        BATCH,
    )
    assert rejections == [
        Rejection(1, "userId", "userId or anonymousId is required", "m2"),
        Rejection(1, "event", "track needs an event name", "m2"),
    ]


def test_rows_become_an_arrow_table_of_the_events_schema() -> None:
    rows, _ = validate_batch(
        [
            {
                "type": "track",
                "userId": "u",
                "event": "Order Completed",
                "properties": {"revenue": "12.30", "products": [{"price": 1, "quantity": 2}]},
            },
            {"type": "page", "anonymousId": "a", "name": "Home"},
        ],
        BATCH,
    )
    table = rows_to_table(rows)
    assert table.schema == EVENTS
    assert table.column("revenue").to_pylist() == [Decimal("12.30"), None]


@given(
    st.decimals(
        min_value=Decimal("-9999999999999.99"),
        max_value=Decimal("9999999999999.99"),
        places=2,
        allow_nan=False,
        allow_infinity=False,
    )
)
def test_money_round_trips_exactly_from_strings_and_json_numbers(amount: Decimal) -> None:
    # 15 significant digits survive a double, so JSON numbers are exact up to 13+2.
    assert parse_money(str(amount)) == amount
    assert parse_money(float(amount)) == amount


@pytest.mark.parametrize(
    "value",
    ["10.125", 10.125, "1e20", 1.0000000253776429e26, "1e400", "NaN", "Infinity", "", "abc"],
)
def test_money_refuses_sub_cent_huge_and_non_numbers(value: object) -> None:
    with pytest.raises(ValueError):
        parse_money(value)
