"""The simulation alone (pure): deterministic, valid Segment messages, the promised behaviours."""

from __future__ import annotations

import uuid
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from functools import cache
from zoneinfo import ZoneInfo

import orjson
import phonenumbers
import pytest
from hypothesis import given
from hypothesis import strategies as st

from zhiying.demo.simulate import (
    Anomaly,
    SimConfig,
    SimMessage,
    SimTruth,
    Simulation,
    iso_ms,
    parse_fen,
    uuid4_text,
)
from zhiying.identity.identifiers import normalize_phone
from zhiying.ingest.models import BatchContext, validate_batch

BEIJING = ZoneInfo("Asia/Shanghai")


@cache
def _run(
    users: int, days: int, seed: int = 7
) -> tuple[Simulation, tuple[SimMessage, ...], SimTruth]:
    sim = Simulation(SimConfig(users=users, days=days, seed=seed))
    truth = SimTruth()
    return sim, tuple(sim.messages(truth)), truth


def _local_hour(at_ms: int) -> int:
    return datetime.fromtimestamp(at_ms / 1000, UTC).astimezone(BEIJING).hour


def test_same_seed_gives_the_same_messages_byte_for_byte() -> None:
    config = SimConfig(users=150, days=3, seed=11)
    first = [orjson.dumps(m.message) for m in Simulation(config).messages()]
    again = [orjson.dumps(m.message) for m in Simulation(config).messages()]
    assert first and first == again


def test_another_seed_gives_another_business() -> None:
    a = [
        m.message["messageId"] for m in Simulation(SimConfig(users=150, days=3, seed=1)).messages()
    ]
    b = [
        m.message["messageId"] for m in Simulation(SimConfig(users=150, days=3, seed=2)).messages()
    ]
    assert not set(a) & set(b)


def test_messages_come_in_time_order_inside_the_period() -> None:
    sim, messages, _ = _run(300, 7)
    start_ms = sim.config.start.timestamp() * 1000
    end_ms = sim.config.end_utc.timestamp() * 1000
    times = [m.at_ms for m in messages]
    assert times == sorted(times)
    assert start_ms <= times[0] and times[-1] < end_ms
    # The timestamp the SDK writes is the event time.
    assert all(
        datetime.fromisoformat(m.message["timestamp"]).timestamp() * 1000 == m.at_ms
        for m in messages[:2000]
    )


def test_every_message_passes_the_ingestion_validator() -> None:
    sim, messages, _ = _run(300, 7)
    received = sim.config.end_utc
    rows, rejections = validate_batch(
        [m.message for m in messages], BatchContext(received_at=received, source="test")
    )
    assert rejections == []
    assert {r["channel"] for r in rows} == {"app", "web", "mini_program"}
    assert {r["type"] for r in rows} == {"track", "identify", "page", "screen"}


def test_phones_are_distinct_valid_mainland_mobile_numbers() -> None:
    users = Simulation(SimConfig(users=3000, days=1, seed=3)).users
    parsed = [phonenumbers.parse(u.phone, "CN") for u in users]
    assert all(phonenumbers.is_valid_number_for_region(p, "CN") for p in parsed)
    assert all(phonenumbers.number_type(p) == phonenumbers.PhoneNumberType.MOBILE for p in parsed)
    assert len({normalize_phone(u.phone) for u in users}) == len(users)


def test_customers_live_in_at_least_six_cities_on_beijing_time() -> None:
    users = Simulation(SimConfig(users=2000, days=1, seed=3)).users
    cities = Counter(u.city for u in users)
    assert len(cities) >= 6
    assert cities["Shanghai"] > cities["Wuhan"]  # weighted, not uniform
    assert {u.time_zone for u in users} == {"Asia/Shanghai"}
    assert any(u.email for u in users) and any(u.email is None for u in users)
    assert all(
        (u.wechat_openid is not None) == any(d.channel == "mini_program" for d in u.devices)
        for u in users
    )


def test_visitors_browse_anonymously_before_an_identify_joins_them_to_their_user_id() -> None:
    _, messages, truth = _run(300, 7)
    by_device: dict[str, list[dict[str, object]]] = {}
    for m in messages:
        by_device.setdefault(str(m.message["anonymousId"]), []).append(m.message)
    logins = 0
    never = 0
    for device_messages in by_device.values():
        if "userId" not in device_messages[0]:
            with_user = [m for m in device_messages if "userId" in m]
            if with_user:
                # The first message that names the user is the login identify.
                assert with_user[0]["type"] == "identify"
                logins += 1
            else:
                never += 1
    assert logins > 20 and never > 20
    assert len(truth.identified_users) > 0


def test_only_logged_in_shoppers_check_out_and_order_totals_add_up() -> None:
    _, messages, truth = _run(300, 7)
    orders = [m.message for m in messages if m.message.get("event") == "Order Completed"]
    assert len(orders) == truth.orders > 10
    assert len({o["properties"]["order_id"] for o in orders}) == len(orders)
    for order in orders:
        props = order["properties"]
        assert "userId" in order
        assert props["currency"] == "CNY"
        subtotal = sum(parse_fen(p["price"]) * p["quantity"] for p in props["products"])
        assert parse_fen(props["subtotal"]) == subtotal
        assert parse_fen(props["revenue"]) == subtotal - parse_fen(props["discount"])
        assert ("coupon" in props) == (parse_fen(props["discount"]) > 0)
    brands = {p["brand"] for o in orders for p in o["properties"]["products"]}
    assert len(brands) >= 5


def test_apps_send_money_as_numbers_and_the_web_as_two_decimal_strings() -> None:
    _, messages, _ = _run(300, 7)
    orders = [m.message for m in messages if m.message.get("event") == "Order Completed"]
    kinds = {(o["channel"], type(o["properties"]["revenue"])) for o in orders}
    assert kinds == {("mobile", float), ("browser", str), ("mini_program", str)}
    for o in orders:
        revenue = o["properties"]["revenue"]
        text = revenue if isinstance(revenue, str) else repr(revenue)
        assert len(text.partition(".")[2]) <= 2


@given(st.binary(min_size=16, max_size=16))
def test_message_ids_are_version_4_uuids(raw: bytes) -> None:
    text = uuid4_text(raw)
    parsed = uuid.UUID(text)
    assert str(parsed) == text and parsed.version == 4 and parsed.variant == uuid.RFC_4122


@given(st.integers(min_value=0, max_value=2**42))
def test_timestamps_are_iso_8601_utc_with_milliseconds(at_ms: int) -> None:
    expected = datetime.fromtimestamp(at_ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")
    assert iso_ms(at_ms) == expected[:-3] + "Z"


def test_evening_is_busier_than_the_small_hours() -> None:
    _, messages, _ = _run(300, 7)
    hours = Counter(_local_hour(m.at_ms) for m in messages)
    assert hours[21] > 5 * hours[4]
    assert hours[12] > hours[10]  # the lunch peak


def test_weekends_are_busier_than_weekdays() -> None:
    _, messages, _ = _run(300, 14)
    per_day = Counter(
        datetime.fromtimestamp(m.at_ms / 1000, UTC).astimezone(BEIJING).date() for m in messages
    )
    weekend = [n for d, n in per_day.items() if d.weekday() >= 5]
    weekday = [n for d, n in per_day.items() if d.weekday() < 5 and (d.month, d.day) != (1, 1)]
    assert sum(weekend) / len(weekend) > 1.1 * sum(weekday) / len(weekday)


def test_some_messages_are_sent_twice_with_the_same_message_id() -> None:
    _, messages, truth = _run(300, 7)
    ids = Counter(m.message["messageId"] for m in messages)
    repeats = sum(n - 1 for n in ids.values())
    assert repeats == truth.retries > 0
    assert len(ids) == truth.messages


def test_coupon_sensitivity_is_hidden_but_shapes_who_uses_coupons() -> None:
    sim, messages, _ = _run(2000, 14)
    assert not any(b"sensitivity" in orjson.dumps(m.message) for m in messages)
    sensitivity = {u.user_id: u.coupon_sensitivity for u in sim.users}
    used: dict[bool, list[bool]] = {True: [], False: []}
    for m in messages:
        if m.message.get("event") == "Order Completed":
            s = sensitivity[str(m.message["userId"])]
            if s >= 0.5 or s < 0.2:
                used[s >= 0.5].append("coupon" in m.message["properties"])
    rate = {k: sum(v) / len(v) for k, v in used.items()}
    assert rate[True] > 2 * rate[False]


def _orders_in(
    messages: tuple[SimMessage, ...] | list[SimMessage],
    city_of: dict[str, str],
    city: str,
    day: date,
    hours: range,
) -> int:
    n = 0
    for m in messages:
        if m.message.get("event") != "Order Completed" or city_of[str(m.message["userId"])] != city:
            continue
        local = datetime.fromtimestamp(m.at_ms / 1000, UTC).astimezone(BEIJING)
        if local.date() == day and local.hour in hours:
            n += 1
    return n


def test_an_anomaly_stops_orders_in_its_city_and_hours_only() -> None:
    days = 7
    base = SimConfig(users=1500, days=days, seed=5)
    first_day = base.end.date() - timedelta(days=days)
    window = range(14, 24)
    anomalies = tuple(
        Anomaly("Chongqing", first_day + timedelta(days=d), 14, 24, 0.0) for d in range(days)
    )
    normal = Simulation(base)
    city_of = {u.user_id: u.city for u in normal.users}
    plain = list(normal.messages())
    hit = list(Simulation(SimConfig(users=1500, days=days, seed=5, anomalies=anomalies)).messages())

    def total(messages: list[SimMessage], city: str, hours: range) -> int:
        return sum(
            _orders_in(messages, city_of, city, first_day + timedelta(days=d), hours)
            for d in range(days)
        )

    assert total(plain, "Chongqing", window) > 0
    assert total(hit, "Chongqing", window) == 0
    assert total(hit, "Chongqing", range(0, 14)) > 0
    assert total(hit, "Shanghai", window) > 0


def test_anomaly_rejects_an_unknown_city() -> None:
    with pytest.raises(ValueError, match="unknown city"):
        Anomaly("Atlantis", date(2022, 1, 5), 9, 10)
