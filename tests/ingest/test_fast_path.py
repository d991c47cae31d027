"""The validator's fast path (``models._check_fast``) is exact: whenever it accepts a
message, its row is the one ``models._check_message`` (the rules as written) makes.

Messages are generated from pools of ordinary and tricky values for every field
the rules read, so most of them are refused by the fast path for one reason or
another; the test also pins that typical messages do take the fast path (or the
comparison would pass vacuously).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, Final

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from zhiying.ingest.models import (
    BatchContext,
    _check_fast,
    _check_message,
    _Errors,
    _money,
    parse_money,
    validate_batch,
    validate_batch_table,
)

NOW = datetime(2026, 11, 1, 9, 0, tzinfo=UTC)

TEXTS: list[Any] = [
    None,
    "",
    " ",
    "x",
    " padded ",
    "重庆",
    "u" * 257,
    "e" * 1025,
    5,
    5.5,
    True,
    [],
    {},
]
TIMES: list[Any] = [
    None,
    "2026-11-01T08:59:58.123Z",
    "2026-11-01T16:59:58+08:00",
    "2026-11-01T08:59:58",
    "2026-11-01",
    "2026-11-03T00:00:00Z",
    "1960-01-01T00:00:00Z",
    "1997-05-01T00:00:00-05:00",
    "yesterday",
    "2026-02-30T00:00:00Z",
    1700000000,
    "",
]
MONEY: list[Any] = [None, 19.99, 0.1, 0.0, -0.0, 100, "9.90", " 12.5 ", 10.125, "cheap", True, 1e17]
MONEY += [59.97000000000001, -3.5, float("inf"), [1]]
PRODUCT = st.fixed_dictionaries(
    {},
    optional={
        "product_id": st.sampled_from(TEXTS),
        "sku": st.sampled_from(["SKU-1", 7, None, {"a": 1}]),
        "brand": st.sampled_from(["Shiseido", "", None, "b" * 1025]),
        "price": st.sampled_from(MONEY),
        "quantity": st.sampled_from([1, 3, 0, -2, 2.0, 1.5, "3", "3x", None, True, 2**31]),
    },
)
PROPERTIES = st.fixed_dictionaries(
    {},
    optional={
        "order_id": st.sampled_from(["o-1", 12345, 1.5, None, "", [1], "o" * 1025]),
        "revenue": st.sampled_from(MONEY),
        "currency": st.sampled_from(["cny", "CNY", "US", "€€€", 3, None]),
        "coupon": st.sampled_from(["SPRING", 10, None, False]),
        "products": st.one_of(
            st.lists(st.one_of(PRODUCT, st.sampled_from([1, None, "x"])), max_size=3),
            st.sampled_from([None, {"a": 1}, "x"]),
        ),
        "url": st.sampled_from(["https://x.cn/", None]),
    },
)
TRAITS = st.fixed_dictionaries(
    {},
    optional={
        "phone": st.sampled_from(["+8613800138000", "138 0013 8000", "abc", 13800138000, True, ""]),
        "email": st.sampled_from(["A.B@Example.COM", "not-an-email", None, ""]),
        "wechat_openid": st.sampled_from(["o-1", 5, [1]]),
        "city": st.sampled_from(["Beijing", None]),
    },
)
CONTEXT = st.fixed_dictionaries(
    {},
    optional={
        "device": st.one_of(
            st.fixed_dictionaries(
                {}, optional={"id": st.sampled_from(["dev-1", "", 7, None, [1]])}
            ),
            st.sampled_from(["x", None]),
        ),
        "traits": st.one_of(TRAITS, st.sampled_from(["x", None])),
        "externalIds": st.sampled_from(
            [
                [{"type": "Member_Id", "id": "77"}],
                [{"id": 3}],
                ["x"],
                [{"type": "phone", "id": "abc"}],
                "nope",
                None,
            ]
        ),
        "channel": st.sampled_from(["Mobile", "mini_program", "", 3, None]),
        "app": st.sampled_from([{"name": "Shop"}, {}, None]),
        "page": st.sampled_from([{"url": "https://x.cn/"}, None]),
        "userAgent": st.sampled_from(["Mozilla", None]),
    },
)
TRICKY = st.fixed_dictionaries(
    {},
    optional={
        "messageId": st.sampled_from(["m-1", "", None, 7, "m" * 201, "m" * 200, {"a": 1}]),
        "type": st.sampled_from(["track", "identify", "page", "screen", "group", "alias", "x"])
        | st.sampled_from([None, 3, ["track"], {"a": 1}]),
        "userId": st.sampled_from(TEXTS),
        "anonymousId": st.sampled_from(TEXTS),
        "event": st.sampled_from(TEXTS),
        "name": st.sampled_from(TEXTS),
        "groupId": st.sampled_from(["g1", None]),
        "previousId": st.sampled_from(["a1", None]),
        "properties": st.one_of(PROPERTIES, st.sampled_from([None, [], "x"])),
        "traits": st.one_of(TRAITS, st.sampled_from([None, "t"])),
        "context": st.one_of(CONTEXT, st.sampled_from([None, 3])),
        "integrations": st.sampled_from([None, {}, {"All": True}, []]),
        "channel": st.sampled_from([None, "browser", "server", "Store", 7]),
        "timestamp": st.sampled_from(TIMES),
        "originalTimestamp": st.sampled_from(TIMES),
        "sentAt": st.sampled_from(TIMES),
        "_metadata": st.sampled_from([{"bundled": []}]),
    },
)
"""Any value the rules read, good or bad, for every field."""
GOOD_TIMES: Final = [t for t in TIMES if isinstance(t, str) and t[:2] in ("20", "19")]
VALID = st.fixed_dictionaries(
    {
        "messageId": st.sampled_from(["m-1", "m" * 200, " m "]),
        "type": st.sampled_from(["track", "identify", "page", "screen"]),
        "event": st.sampled_from(["Order Completed", "e" * 1024]),
    },
    optional={
        "userId": st.sampled_from(["u1", " padded ", "u" * 256]),
        "anonymousId": st.sampled_from(["a1", "", None]),
        "name": st.sampled_from(["Home", "", None]),
        "properties": PROPERTIES,
        "traits": TRAITS,
        "context": CONTEXT,
        "integrations": st.sampled_from([{}, {"All": True}]),
        "channel": st.sampled_from(["browser", "Store"]),
        "timestamp": st.sampled_from(GOOD_TIMES),
        "originalTimestamp": st.sampled_from(GOOD_TIMES),
        "sentAt": st.sampled_from([*GOOD_TIMES, None]),
    },
)
"""Messages that are mostly valid (the fast path's business); nested parts vary."""
MESSAGE = st.builds(
    lambda base, overrides, few: {**base, **dict(list(overrides.items())[:few])},
    VALID,
    TRICKY,
    st.integers(0, 2),
)
BATCHES = st.builds(
    lambda sent, context: BatchContext(
        received_at=NOW, source="k1", sent_at=sent, context=context, default_region="CN"
    ),
    st.sampled_from([None, NOW - timedelta(seconds=2), datetime(2026, 11, 1, 9, tzinfo=UTC)]),
    st.sampled_from([None, {}, {"app": {"name": "Shop"}, "locale": "zh-CN"}, {"channel": "web"}]),
)


def typical(i: int) -> dict[str, Any]:
    return {
        "messageId": f"m-{i}",
        "type": "track",
        "event": "Order Completed",
        "userId": "u1",
        "anonymousId": "a1",
        "timestamp": "2026-11-01T08:59:58.123Z",
        "properties": {
            "order_id": "o1",
            "revenue": 19.99,
            "currency": "cny",
            "products": [{"product_id": "p1", "price": 9.9, "quantity": 2}],
        },
        "context": {"device": {"id": "dev-1"}, "traits": {"phone": "138 0013 8000"}},
    }


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(msg=MESSAGE, batch=BATCHES)
def test_a_row_from_the_fast_path_is_the_row_of_the_rules(
    msg: dict[str, Any], batch: BatchContext
) -> None:
    fast = _check_fast(msg, batch)
    if fast is not None:
        assert fast == _check_message(msg, 0, batch, None)


@settings(max_examples=200, deadline=None)
@given(messages=st.lists(MESSAGE, max_size=6), batch=BATCHES)
def test_a_batch_gets_the_rows_and_rejections_of_the_rules(
    messages: list[dict[str, Any]], batch: BatchContext
) -> None:
    for msg in messages:  # the rules' own uuid4 for a missing id would differ per call
        if not msg.get("messageId"):
            msg["messageId"] = "given"
    expected_rows = []
    expected_rejections = []
    for index, msg in enumerate(messages):
        result = _check_message(msg, index, batch, None)
        if isinstance(result, list):
            expected_rejections.extend(result)
        else:
            expected_rows.append(result)
    rows, rejections = validate_batch(messages, batch)
    assert [tuple(row.values()) for row in rows] == expected_rows
    assert rejections == expected_rejections
    table, table_rejections = validate_batch_table(messages, batch)
    assert table_rejections == expected_rejections
    assert [tuple(row.values()) for row in table.to_pylist()] == [
        tuple(row.values()) for row in rows
    ]


def test_typical_messages_take_the_fast_path() -> None:
    batch = BatchContext(received_at=NOW, source="k1", sent_at=NOW)
    page = {**typical(2), "type": "page", "name": "Home", "event": None}
    identify = {**typical(3), "type": "identify", "traits": {"email": "x@y.cn", "phone": ""}}
    members = {
        **typical(4),
        "context": {"externalIds": [{"type": "Member_Id", "id": "77"}], "device": {"id": ""}},
    }
    for msg in (typical(1), page, identify, members):
        row = _check_fast(msg, batch)
        assert row is not None
        assert row == _check_message(msg, 0, batch, None)


@given(st.lists(st.sampled_from([*MONEY[1:], 0.0, -0.0, 0.001, 0.5, 1, -1]), max_size=12))
def test_cached_money_is_what_parse_money_says_in_any_order(values: list[Any]) -> None:
    for value in values:
        errors = _Errors()
        got = _money(value, "properties.revenue", errors)
        try:
            expected = parse_money(value)
        except ValueError as exc:
            assert got is None and errors.items == [("properties.revenue", str(exc))]
        else:
            assert got is not None and str(got) == str(expected)  # "-0.00" is not "0.00"
