"""A simulated consumer business as a stream of Segment-spec messages (pure, no I/O).

``Simulation(SimConfig(...)).messages()`` yields the messages an app, a web
site and a WeChat mini program would send for ``days`` days, in timestamp
order, as plain dicts exactly as an SDK sends them (``type``, ``messageId``,
``anonymousId``/``userId``, ISO-8601 ``timestamp``, ``context``, ``properties``
or ``traits``). The same seed gives the same messages, byte for byte.

What is simulated:

- sessions per user per day: Poisson around the user's activity, more at
  weekends and on shopping festivals (双十二 12 December, New Year), with a
  lunch peak at 12:00 and an evening peak at 21:00 local time (Chongqing peaks
  later, see ``population.CITIES``);
- anonymous browsing first: a device sends with its ``anonymousId`` only;
  at login an ``identify`` joins ``userId`` and ``anonymousId`` (and, on a
  user's second device, makes ONE_ID merge two people into one); users who
  never log in never check out;
- the e-commerce funnel: ``Application Opened``, screen/page views,
  ``Products Searched``, ``Product Viewed``, ``Product Added``,
  ``Checkout Started``, ``Order Completed`` (money in CNY with 2 decimals,
  coupons applied by coupon-sensitive users);
- SDK retries: a small share of messages is sent twice with the same
  ``messageId`` (dedup must store it once);
- ``anomalies``: lower order conversion for a (city, local day, hour range),
  the hook a KPI-watching feature is tested against.

``SimTruth`` records what was sent (orders, revenue per city, …) so a test
can compare what the warehouse holds with what happened.
"""

from __future__ import annotations

import random
from bisect import bisect
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from functools import cache, lru_cache
from itertools import accumulate
from typing import Any, Final, NamedTuple
from zoneinfo import ZoneInfo

import numpy as np

from zhiying.demo.population import (
    CITIES,
    CITY_BY_NAME,
    SEARCH_TERMS,
    TIME_ZONE,
    Catalog,
    Product,
    SimUser,
    make_catalog,
    make_users,
)

# The default period ends at midnight (Beijing time) after 7 January 2022, so a
# 30-day run covers 双十二, New Year and the morning of 5 January 2022 that the
# product story's Chongqing anomaly is about.
DEFAULT_END: Final = datetime(2022, 1, 8, tzinfo=ZoneInfo(TIME_ZONE))
CURRENCY: Final = "CNY"
SPECIAL_DAYS: Final = {(12, 12): 1.5, (11, 11): 1.8, (6, 18): 1.5, (1, 1): 1.15}
WEEKEND_BUMP: Final = 1.25

BASE_ORDER_RATE: Final = 0.62  # P(order | checkout started), before city and coupon effects
COUPON_OFFERED: Final = 0.35  # P(the shopper holds an applicable platform coupon)

# (code, minimum spend, discount) in fen: 满减 (full reduction) and a plain voucher.
COUPONS: Final = (
    ("FULL500-100", 50_000, 10_000),
    ("FULL200-40", 20_000, 4_000),
    ("BEAUTY20", 9_900, 2_000),
)


@dataclass(frozen=True)
class Anomaly:
    """Multiply order conversion by ``conversion_factor`` in ``city`` on the local date ``day``,
    for checkouts whose local hour is in ``[start_hour, end_hour)``."""

    city: str
    day: date
    start_hour: int
    end_hour: int
    conversion_factor: float = 0.3

    def __post_init__(self) -> None:
        if self.city not in CITY_BY_NAME:
            raise ValueError(f"unknown city {self.city!r}; known: {sorted(CITY_BY_NAME)}")
        if not 0 <= self.start_hour < self.end_hour <= 24:
            raise ValueError("need 0 <= start_hour < end_hour <= 24")
        if not self.conversion_factor >= 0:
            raise ValueError("conversion_factor must be >= 0")


@dataclass(frozen=True)
class SimConfig:
    """What to simulate. ``end`` is the instant the period ends (the demo's "now")."""

    users: int = 10_000
    days: int = 30
    seed: int = 42
    end: datetime = DEFAULT_END
    anomalies: tuple[Anomaly, ...] = ()
    retry_rate: float = 0.002

    def __post_init__(self) -> None:
        if self.users < 1 or self.days < 1:
            raise ValueError("users and days must be at least 1")
        if self.end.tzinfo is None:
            raise ValueError("end must be timezone-aware")

    @property
    def start(self) -> datetime:
        """First instant of the period (UTC)."""
        return (self.end - timedelta(days=self.days)).astimezone(UTC)

    @property
    def end_utc(self) -> datetime:
        return self.end.astimezone(UTC)


class _Item(NamedTuple):
    """A message with what the truth needs to count it once it is actually sent."""

    at_ms: int
    seq: int
    message: dict[str, Any]
    channel: str
    city: str
    retry: bool


class SimMessage(NamedTuple):
    """A message and its event time in milliseconds since the epoch (UTC)."""

    at_ms: int
    message: dict[str, Any]


@dataclass
class SimTruth:
    """What the simulation sent, counted while it sends (for checks, never for the summary)."""

    messages: int = 0  # distinct messages (retries not counted)
    retries: int = 0  # extra copies of a message already sent
    orders: int = 0
    revenue_fen_by_city: Counter[str] = field(default_factory=Counter)
    messages_by_channel: Counter[str] = field(default_factory=Counter)
    messages_by_type: Counter[str] = field(default_factory=Counter)
    orders_by_city: Counter[str] = field(default_factory=Counter)
    identified_users: set[str] = field(default_factory=set)

    def count(self, item: _Item) -> None:
        if item.retry:
            self.retries += 1
            return
        message = item.message
        self.messages += 1
        self.messages_by_channel[item.channel] += 1
        self.messages_by_type[message["type"]] += 1
        if message["type"] == "identify" and "userId" in message:
            self.identified_users.add(message["userId"])
        elif message.get("event") == "Order Completed":
            self.orders += 1
            self.orders_by_city[item.city] += 1
            self.revenue_fen_by_city[item.city] += parse_fen(message["properties"]["revenue"])

    @property
    def revenue_fen(self) -> int:
        return sum(self.revenue_fen_by_city.values())


def money(fen: int, *, as_number: bool = False) -> str | float:
    """Fen as an SDK sends money: a decimal string with 2 decimals (``"299.00"``), or
    with ``as_number`` a JSON number (``299.0``; mobile SDKs serialise doubles).

    Both are exact on the wire: a double's shortest form of a whole number of
    fen has at most 2 decimals, which ingestion reads back as that decimal.
    """
    if as_number:
        return fen / 100
    sign = "-" if fen < 0 else ""
    fen = abs(fen)
    return f"{sign}{fen // 100}.{fen % 100:02d}"


def parse_fen(value: str | float) -> int:
    """Inverse of ``money``: the amount in fen."""
    return int(Decimal(value if isinstance(value, str) else repr(value)) * 100)


def iso_ms(at_ms: int) -> str:
    """ISO-8601 UTC with milliseconds, as Segment SDKs write ``timestamp``."""
    minute, rest = divmod(at_ms, 60_000)
    return f"{_iso_minute(minute)}{rest // 1000:02d}.{rest % 1000:03d}Z"


@lru_cache(maxsize=8192)
def _iso_minute(epoch_minute: int) -> str:
    """``YYYY-MM-DDTHH:MM:`` of a minute; a session's events share a few minutes."""
    return datetime.fromtimestamp(epoch_minute * 60, UTC).strftime("%Y-%m-%dT%H:%M:")


def uuid4_text(random_bytes: bytes) -> str:
    """A version-4 UUID string from 16 random bytes (what ``uuid.uuid4()`` prints)."""
    h = random_bytes.hex()
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{'89ab'[int(h[16], 16) & 3]}{h[17:20]}-{h[20:]}"


def _day_factor(day: date) -> float:
    factor = WEEKEND_BUMP if day.weekday() >= 5 else 1.0
    return factor * SPECIAL_DAYS.get((day.month, day.day), 1.0)


@dataclass
class _State:
    """What the stream remembers from day to day."""

    logged_in: list[list[bool]]
    seen_device: list[list[bool]]
    sent_traits: list[list[bool]]
    signup_ms: list[int | None]
    seq: int = 0
    checkouts: int = 0


class Simulation:
    """The world of one seed: ``users``, ``catalog`` and the message stream ``messages()``."""

    def __init__(self, config: SimConfig) -> None:
        self.config = config
        population, catalog, events = np.random.SeedSequence(config.seed).spawn(3)
        self.catalog: Catalog = make_catalog(np.random.default_rng(catalog))
        self.users: tuple[SimUser, ...] = make_users(
            np.random.default_rng(population), config.users, config.days, config.start
        )
        self._events_seed = events
        self._cum_popularity = list(accumulate(float(p) for p in self.catalog.popularity))
        # [as_number][product]: app SDKs send money as JSON numbers, web and mini program
        # as decimal strings (ingestion must read both exactly).
        self.product_properties = (
            [_product_properties(p, as_number=False) for p in self.catalog.products],
            [_product_properties(p, as_number=True) for p in self.catalog.products],
        )

    def messages(self, truth: SimTruth | None = None) -> Iterator[SimMessage]:
        """Every message of the period, in timestamp order; deterministic for the seed.

        ``truth``, when given, is filled with what was sent as the stream is consumed.
        """
        truth = truth if truth is not None else SimTruth()
        rng = np.random.default_rng(self._events_seed)
        state = _State(
            logged_in=[[False] * len(u.devices) for u in self.users],
            seen_device=[[False] * len(u.devices) for u in self.users],
            sent_traits=[[False] * len(u.devices) for u in self.users],
            signup_ms=[None] * len(self.users),
        )
        # Existing members were already logged in on some devices before the period.
        for u in self.users:
            if u.existing and u.logs_in:
                for d in range(len(u.devices)):
                    state.logged_in[u.index][d] = bool(rng.random() < 0.5)

        end_ms = int(self.config.end_utc.timestamp() * 1000)
        carry: list[_Item] = []
        for day in range(self.config.days):
            out = carry
            self._simulate_day(day, rng, state, out)
            out.sort(key=lambda item: (item.at_ms, item.seq))
            boundary = int((self.config.start + timedelta(days=day + 1)).timestamp() * 1000)
            # Sessions that would run past the end of the period are cut at "now".
            boundary = min(boundary, end_ms)
            cut = bisect([item.at_ms for item in out], boundary - 1)
            for item in out[:cut]:
                truth.count(item)
                yield SimMessage(item.at_ms, item.message)
            carry = out[cut:]

    # --- one day -------------------------------------------------------------------

    def _simulate_day(
        self,
        day: int,
        rng: np.random.Generator,
        state: _State,
        out: list[_Item],
    ) -> None:
        users = self.users
        start = self.config.start
        local_date = (start + timedelta(days=day, hours=12)).astimezone(ZoneInfo(TIME_ZONE)).date()
        factor = _day_factor(local_date)
        lam = np.array([u.activity * factor if u.first_active_day <= day else 0.0 for u in users])
        sessions = rng.poisson(lam)
        user_of_session = np.repeat(np.arange(len(users)), sessions)
        n = len(user_of_session)
        city_of_user = np.array([_CITY_INDEX[u.city] for u in users])
        hours = np.empty(n, dtype=np.int64)
        session_city = city_of_user[user_of_session]
        for c, city in enumerate(CITIES):
            mask = session_city == c
            k = int(mask.sum())
            if k:
                p = np.asarray(city.hourly) / sum(city.hourly)
                hours[mask] = rng.choice(24, size=k, p=p)
        offsets_ms = rng.integers(0, 3_600_000, size=n)
        device_draw = rng.random(size=n)
        prng = random.Random(int(rng.integers(0, 2**63)))

        # Local midnight of this day per time zone (all cities share one today).
        midnight: dict[str, int] = {}
        for tz in {u.time_zone for u in users}:
            local = datetime.combine(local_date, datetime.min.time(), ZoneInfo(tz))
            midnight[tz] = int(local.timestamp() * 1000)

        order = np.argsort(hours * 3_600_000 + offsets_ms, kind="stable")
        for s in order:
            u = users[int(user_of_session[s])]
            cum = 0.0
            device = len(u.devices) - 1
            for i, w in enumerate(u.device_weights):
                cum += w
                if device_draw[s] < cum:
                    device = i
                    break
            start_ms = midnight[u.time_zone] + int(hours[s]) * 3_600_000 + int(offsets_ms[s])
            _Session(self, u, device, start_ms, local_date, prng, state, out).run()

    # --- helpers used by sessions ----------------------------------------------------

    def pick_product(self, prng: random.Random) -> int:
        return bisect(self._cum_popularity, prng.random() * self._cum_popularity[-1])

    def conversion_factor(self, city: str, local_day: date, local_hour: int) -> float:
        factor = CITY_BY_NAME[city].conversion
        for a in self.config.anomalies:
            if a.city == city and a.day == local_day and a.start_hour <= local_hour < a.end_hour:
                factor *= a.conversion_factor
        return factor


_CITY_INDEX: Final = {c.name: i for i, c in enumerate(CITIES)}
# The top-level ``channel`` each SDK sets (Segment's own values for app and web).
_SDK_CHANNEL: Final = {"app": "mobile", "web": "browser", "mini_program": "mini_program"}


@cache
def _utc_offset_ms(tz: str) -> int:
    """Offset of ``tz`` from UTC; the simulated cities keep one all year (no DST in China)."""
    offset = ZoneInfo(tz).utcoffset(datetime(2022, 1, 1))
    assert offset is not None
    return int(offset.total_seconds() * 1000)


def _product_properties(p: Product, *, as_number: bool) -> dict[str, Any]:
    return {
        "product_id": p.product_id,
        "sku": p.sku,
        "name": p.name,
        "brand": p.brand,
        "category": p.category,
        "price": money(p.price_fen, as_number=as_number),
        "currency": CURRENCY,
    }


class _Session:
    """One visit of one user on one device: builds its messages into ``out``."""

    def __init__(
        self,
        sim: Simulation,
        user: SimUser,
        device: int,
        start_ms: int,
        local_date: date,
        prng: random.Random,
        state: _State,
        out: list[_Item],
    ) -> None:
        self.sim = sim
        self.user = user
        self.device_index = device
        self.device = user.devices[device]
        self.t = start_ms
        self.local_date = local_date
        self.prng = prng
        self.state = state
        self.out = out
        self.view_kind = "screen" if self.device.channel == "app" else "page"
        self.numbers = self.device.channel == "app"
        self.products = sim.product_properties[self.numbers]

    @property
    def logged_in(self) -> bool:
        return self.state.logged_in[self.user.index][self.device_index]

    def emit(self, message: dict[str, Any]) -> None:
        message["messageId"] = uuid4_text(self.prng.randbytes(16))
        message["anonymousId"] = self.device.anonymous_id
        if self.logged_in:
            message["userId"] = self.user.user_id
        message["timestamp"] = iso_ms(self.t)
        message["context"] = self.device.context
        message["channel"] = _SDK_CHANNEL[self.device.channel]
        channel, city = self.device.channel, self.user.city
        self.state.seq += 1
        self.out.append(_Item(self.t, self.state.seq, message, channel, city, False))
        if self.prng.random() < self.sim.config.retry_rate:
            # The SDK did not see the response and sends the same message again.
            self.state.seq += 1
            self.out.append(_Item(self.t, self.state.seq, message, channel, city, True))
        self.t += 1_500 + int(self.prng.expovariate(1 / 18_000))

    def track(self, event: str, properties: dict[str, Any]) -> None:
        self.emit({"type": "track", "event": event, "properties": properties})

    def view(self, name: str, properties: dict[str, Any] | None = None) -> None:
        props = dict(properties or {})
        if self.view_kind == "page":
            path = "/" + name.lower().replace(" ", "-")
            props.setdefault("path", path)
            if self.device.channel == "web":
                props.setdefault("url", f"https://shop.zhiying.example{path}")
        self.emit({"type": self.view_kind, "name": name, "properties": props})

    def traits(self) -> dict[str, Any]:
        u = self.user
        signup = u.signup_at
        traits: dict[str, Any] = {
            "phone": u.phone,
            "city": u.city,
            "timezone": u.time_zone,
            "birthday": u.birthday.isoformat(),
        }
        if u.gender:
            traits["gender"] = u.gender
        if u.email:
            traits["email"] = u.email
        if u.wechat_openid and self.device.channel == "mini_program":
            traits["wechat_openid"] = u.wechat_openid
        if signup is not None:
            traits["createdAt"] = signup.strftime("%Y-%m-%dT%H:%M:%SZ")
        else:
            signup_ms = self.state.signup_ms[u.index]
            if signup_ms is not None:
                traits["createdAt"] = iso_ms(signup_ms)
        return traits

    def identify(self) -> None:
        u = self.user
        if u.signup_at is None and self.state.signup_ms[u.index] is None:
            self.state.signup_ms[u.index] = self.t  # a new user signs up at first login
        self.emit({"type": "identify", "traits": self.traits()})
        self.state.sent_traits[u.index][self.device_index] = True

    def login(self) -> None:
        self.state.logged_in[self.user.index][self.device_index] = True
        self.identify()

    def run(self) -> None:
        u, prng, state = self.user, self.prng, self.state
        first_visit = not state.seen_device[u.index][self.device_index]
        state.seen_device[u.index][self.device_index] = True

        if self.device.channel == "app":
            self.track("Application Opened", {"from_background": False, "version": "5.2.0"})
        self.view("Home")
        openid = u.wechat_openid
        if first_visit and openid and self.device.channel == "mini_program" and not self.logged_in:
            # wx.login gives the openid silently before the shopper logs in.
            self.emit({"type": "identify", "traits": {"wechat_openid": openid}})
        if self.logged_in and not state.sent_traits[u.index][self.device_index]:
            self.identify()  # apps re-identify a remembered member on launch
        elif not self.logged_in and u.logs_in and prng.random() < (0.45 if first_visit else 0.25):
            self.login()

        if prng.random() < 0.55:
            query = SEARCH_TERMS[int(prng.random() * len(SEARCH_TERMS))]
            self.track("Products Searched", {"query": query})
            self.view("Search Results", {"query": query})

        cart: list[tuple[int, int]] = []
        views = 1 + min(int(prng.expovariate(1 / 1.6)), 6)
        for _ in range(views):
            p = self.sim.pick_product(prng)
            props = self.products[p]
            self.view("Product Detail", {"product_id": props["product_id"]})
            self.track("Product Viewed", dict(props))
            if prng.random() < 0.2:
                quantity = 1 if prng.random() < 0.85 else 2
                cart.append((p, quantity))
                self.track("Product Added", {**props, "quantity": quantity})
        if not cart or prng.random() >= 0.5:
            return
        if not self.logged_in:
            if not u.logs_in:
                return  # a browser who never logs in leaves at the login wall
            self.login()
        self.checkout(cart)

    def checkout(self, cart: list[tuple[int, int]]) -> None:
        u, prng, state = self.user, self.prng, self.state
        catalog = self.sim.catalog.products
        subtotal = sum(catalog[p].price_fen * q for p, q in cart)
        state.checkouts += 1
        # The order number is given at checkout; an abandoned checkout leaves a gap.
        order_id = f"O{self.local_date:%Y%m%d}{state.checkouts:07d}"
        products = [{**self.products[p], "quantity": q} for p, q in cart]
        for item in products:
            del item["currency"]
        self.view("Checkout")
        self.track(
            "Checkout Started",
            {
                "order_id": order_id,
                "value": money(subtotal, as_number=self.numbers),
                "currency": CURRENCY,
                "products": products,
            },
        )
        s = u.coupon_sensitivity
        coupon = None
        if prng.random() < COUPON_OFFERED and prng.random() < s:
            coupon = next((c for c in COUPONS if subtotal >= c[1]), None)
        # Coupon lovers buy when they have one and hesitate when they do not.
        effect = 0.85 + 0.5 * s if coupon else 1.0 - 0.3 * s
        local_hour = ((self.t + _utc_offset_ms(u.time_zone)) // 3_600_000) % 24
        p_order = (
            BASE_ORDER_RATE
            * effect
            * self.sim.conversion_factor(u.city, self.local_date, int(local_hour))
        )
        if prng.random() >= p_order:
            return
        discount = coupon[2] if coupon else 0
        total = subtotal - discount
        props: dict[str, Any] = {
            "checkout_id": f"C{order_id[1:]}",
            "order_id": order_id,
            "affiliation": self.device.channel,
            "subtotal": money(subtotal, as_number=self.numbers),
            "discount": money(discount, as_number=self.numbers),
            "shipping": money(0, as_number=self.numbers),
            "tax": money(0, as_number=self.numbers),
            "total": money(total, as_number=self.numbers),
            "revenue": money(total, as_number=self.numbers),
            "currency": CURRENCY,
            "products": products,
        }
        if coupon:
            props["coupon"] = coupon[0]
        self.track("Order Completed", props)
