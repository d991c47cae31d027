"""The simulated business's fixed world: cities, the product catalogue and the people (pure).

Everything here is drawn from one ``numpy.random.Generator``, so a seed gives
the same customers, phones, devices and catalogue every time. Some of what is
drawn is *hidden*: ``SimUser.coupon_sensitivity`` is never sent to Zhiying; it
only steers the simulated behaviour, so later features (promotion-sensitivity
layers, coupon experiments) can be checked against a known truth.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Final, Literal

import numpy as np

Channel = Literal["app", "web", "mini_program"]
CHANNELS: Final[tuple[Channel, ...]] = ("app", "web", "mini_program")
TIME_ZONE: Final = "Asia/Shanghai"

# Local-hour shape of activity: a lunch peak at 12:00, the main peak at 21:00,
# a trough at 04:00. Relative weights; normalised when used.
HOURLY: Final[tuple[float, ...]] = (
    1.3, 0.7, 0.4, 0.25, 0.2, 0.3, 0.6, 1.3, 2.2, 2.8, 3.0, 3.4,
    4.6, 3.9, 3.0, 2.7, 2.8, 3.0, 3.5, 4.3, 5.4, 6.4, 5.0, 2.6,
)  # fmt: skip

# Chongqing is a night city: a later and stronger late-evening peak, a softer morning.
HOURLY_CHONGQING: Final[tuple[float, ...]] = (
    1.9, 1.1, 0.6, 0.3, 0.2, 0.25, 0.4, 0.9, 1.7, 2.3, 2.7, 3.2,
    4.4, 4.0, 3.1, 2.8, 2.8, 3.0, 3.5, 4.3, 5.3, 6.2, 6.6, 3.8,
)  # fmt: skip


@dataclass(frozen=True)
class City:
    """A city of the simulated business.

    ``weight`` is its share of users, ``conversion`` multiplies the order
    probability of a checkout, ``channel_mix`` the chance of each channel
    (app, web, mini_program) being a user's first device.
    """

    name: str
    weight: float
    conversion: float
    channel_mix: tuple[float, float, float]
    hourly: tuple[float, ...] = HOURLY
    time_zone: str = TIME_ZONE


CITIES: Final[tuple[City, ...]] = (
    City("Beijing", 0.17, 1.00, (0.55, 0.20, 0.25)),
    City("Shanghai", 0.18, 1.05, (0.55, 0.20, 0.25)),
    City("Guangzhou", 0.13, 0.98, (0.50, 0.15, 0.35)),
    City("Shenzhen", 0.13, 1.02, (0.55, 0.15, 0.30)),
    City("Chengdu", 0.11, 0.97, (0.45, 0.15, 0.40)),
    # Slightly different: more mini-program shoppers, lower conversion, later hours.
    City("Chongqing", 0.10, 0.90, (0.38, 0.12, 0.50), HOURLY_CHONGQING),
    City("Hangzhou", 0.10, 1.03, (0.55, 0.20, 0.25)),
    City("Wuhan", 0.08, 0.96, (0.48, 0.17, 0.35)),
)
CITY_BY_NAME: Final = {c.name: c for c in CITIES}


@dataclass(frozen=True)
class Product:
    """One catalogue item; ``price_fen`` is the list price in fen (CNY minor units)."""

    product_id: str
    sku: str
    name: str
    brand: str
    category: str
    price_fen: int


# brand, price range in yuan, share of shoppers' attention
BRANDS: Final[tuple[tuple[str, int, int, float], ...]] = (
    ("Shiseido", 230, 980, 1.2),
    ("L'Oréal", 99, 329, 1.6),
    ("Estée Lauder", 320, 1180, 1.3),
    ("Lancôme", 290, 1250, 1.3),
    ("SK-II", 540, 1690, 1.0),
    ("La Mer", 1200, 3600, 0.4),
    ("Dior", 320, 990, 0.9),
    ("Clinique", 210, 520, 0.7),
    ("Kiehl's", 180, 560, 0.8),
    ("Perfect Diary", 59, 169, 1.1),
    ("Florasis", 129, 329, 0.8),
    ("Proya", 99, 399, 1.0),
    ("Winona", 128, 348, 0.7),
)

# category, product types (name, size)
PRODUCT_TYPES: Final[tuple[tuple[str, tuple[tuple[str, str], ...]], ...]] = (
    (
        "Skincare",
        (
            ("Essence", "230ml"),
            ("Serum", "50ml"),
            ("Moisturising Cream", "50ml"),
            ("Eye Cream", "15ml"),
            ("Toner", "200ml"),
            ("Cleanser", "125ml"),
            ("Sheet Mask", "10 pcs"),
        ),
    ),
    (
        "Makeup",
        (
            ("Lipstick", "3.5g"),
            ("Foundation", "30ml"),
            ("Cushion Compact", "14g"),
            ("Eyeshadow Palette", "9 colours"),
        ),
    ),
    ("Suncare", (("Sunscreen SPF50+", "50ml"),)),
    ("Fragrance", (("Eau de Parfum", "50ml"),)),
)

SEARCH_TERMS: Final[tuple[str, ...]] = (
    "精华", "面霜", "口红", "防晒", "粉底液", "眼霜", "卸妆", "面膜", "香水", "爽肤水",
    "神仙水", "小黑瓶", "红腰子", "气垫", "保湿", "美白", "抗老", "敏感肌",
)  # fmt: skip


@dataclass(frozen=True)
class Catalog:
    products: tuple[Product, ...]
    popularity: np.ndarray  # probability of each product being looked at

    def __len__(self) -> int:
        return len(self.products)


def make_catalog(rng: np.random.Generator) -> Catalog:
    """About 12 products per brand, priced inside the brand's range, with Zipf-like popularity."""
    products: list[Product] = []
    weights: list[float] = []
    for b, (brand, low, high, attention) in enumerate(BRANDS):
        code = "".join(ch for ch in brand.upper() if ch.isascii() and ch.isalnum())[:4]
        for category, types in PRODUCT_TYPES:
            for t, (kind, size) in enumerate(types):
                if rng.random() < 0.15:  # not every brand makes everything
                    continue
                yuan = int(rng.integers(low, high + 1))
                # Shelf prices end in 9 or 0, sometimes .90.
                yuan = yuan - yuan % 10 + (9 if rng.random() < 0.6 else 0)
                fen = yuan * 100 - (10 if rng.random() < 0.1 else 0)
                n = len(products)
                products.append(
                    Product(
                        product_id=f"P{10001 + n}",
                        sku=f"{code}-{category[:2].upper()}{t:02d}-{b:02d}",
                        name=f"{brand} {kind} {size}",
                        brand=brand,
                        category=category,
                        price_fen=max(fen, 100),
                    )
                )
                weights.append(attention)
    rank = rng.permutation(len(products)) + 1
    popularity = np.asarray(weights) / rank**0.8
    return Catalog(tuple(products), popularity / popularity.sum())


@dataclass(frozen=True)
class Device:
    """A device (or browser, or mini-program install) of one user, with its anonymous id.

    ``context`` is the Segment ``context`` object its SDK sends with every message.
    """

    anonymous_id: str
    channel: Channel
    context: dict[str, object]


@dataclass(frozen=True)
class SimUser:
    """A simulated customer.

    ``logs_in`` False: only ever browses anonymously. ``existing``: signed up
    before the simulated period (``signup_at`` is set); new users sign up at
    their first login, on or after ``first_active_day`` (index into the period).
    ``coupon_sensitivity`` (0..1) is hidden: never sent, it shapes behaviour only.
    """

    index: int
    user_id: str
    city: str
    time_zone: str
    gender: str | None
    birthday: date
    phone: str  # as the app sends it (formats vary); normalises to E.164
    email: str | None
    wechat_openid: str | None
    existing: bool
    signup_at: datetime | None
    first_active_day: int
    logs_in: bool
    activity: float  # expected sessions per day
    coupon_sensitivity: float
    devices: tuple[Device, ...]
    device_weights: tuple[float, ...]

    @property
    def promotion_class(self) -> str:
        """The hidden truth a promotion-sensitivity layer should recover."""
        s = self.coupon_sensitivity
        if s >= 0.75:
            return "fanatic"
        if s >= 0.45:
            return "sensitive"
        if s >= 0.15:
            return "neutral"
        return "indifferent"


PHONE_PREFIXES: Final = (
    "130", "131", "132", "133", "135", "136", "137", "138", "139", "150", "151", "152",
    "155", "156", "157", "158", "159", "166", "173", "177", "180", "181", "182", "183",
    "185", "186", "187", "188", "189", "198", "199",
)  # fmt: skip
SURNAMES: Final = ("wang", "li", "zhang", "liu", "chen", "yang", "huang", "zhao", "wu", "zhou")
GIVEN: Final = ("wei", "fang", "na", "min", "jing", "li", "qiang", "lei", "jun", "yan", "ying")
MAIL_DOMAINS: Final = ("qq.com", "163.com", "126.com", "foxmail.com", "gmail.com", "outlook.com")
OPENID_ALPHABET: Final = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def _uuid4(rng: np.random.Generator) -> str:
    return str(uuid.UUID(bytes=rng.bytes(16), version=4))


def _uuid4s(rng: np.random.Generator, n: int) -> list[str]:
    raw = rng.bytes(16 * n)
    return [str(uuid.UUID(bytes=raw[16 * i : 16 * i + 16], version=4)) for i in range(n)]


def _phone_numbers(rng: np.random.Generator, n: int) -> list[str]:
    """``n`` distinct valid mainland mobile numbers (11 digits), so no two people share one."""
    seen: set[str] = set()
    out: list[str] = []
    while len(out) < n:
        prefixes = rng.integers(0, len(PHONE_PREFIXES), size=n)
        tails = rng.integers(0, 10**8, size=n)
        for p, t in zip(prefixes, tails, strict=True):
            number = f"{PHONE_PREFIXES[p]}{t:08d}"
            if number not in seen:
                seen.add(number)
                out.append(number)
                if len(out) == n:
                    break
    return out


def _phone_as_sent(number: str, style: int) -> str:
    """The spellings apps really send; all normalise to one E.164 number."""
    if style == 0:
        return f"+86 {number[:3]} {number[3:7]} {number[7:]}"
    if style == 1:
        return f"+86{number}"
    return number


def _device_context(rng: np.random.Generator, channel: Channel, tz: str) -> dict[str, object]:
    if channel == "app":
        if rng.random() < 0.7:
            maker, model = (("Xiaomi", "2211133C"), ("HUAWEI", "NOH-AN00"), ("OPPO", "PGT110"))[
                int(rng.integers(0, 3))
            ]
            os_name, os_version, library = "Android", str(int(rng.integers(10, 15))), "android"
        else:
            maker, model = (
                "Apple",
                ("iPhone14,2", "iPhone15,3", "iPhone13,1")[int(rng.integers(0, 3))],
            )
            os_name, os_version, library = "iOS", f"{int(rng.integers(15, 18))}.1", "ios"
        return {
            "library": {"name": f"analytics-{library}", "version": "4.11.3"},
            "app": {"name": "Zhiying Beauty", "version": "5.2.0", "build": "520"},
            "device": {"id": _uuid4(rng), "manufacturer": maker, "model": model},
            "os": {"name": os_name, "version": os_version},
            "locale": "zh-CN",
            "timezone": tz,
        }
    if channel == "web":
        return {
            "library": {"name": "analytics.js", "version": "next-1.70.0"},
            "userAgent": "Mozilla/5.0 (Windows NT 10.0; Win64; x64) Chrome/120.0",
            "locale": "zh-CN",
            "timezone": tz,
        }
    return {
        "library": {"name": "analytics-miniprogram", "version": "1.4.0"},
        "app": {"name": "Zhiying Beauty mini program", "version": "3.8.1"},
        "os": {"name": "WeChat", "version": "8.0.44"},
        "locale": "zh-CN",
        "timezone": tz,
    }


def make_users(
    rng: np.random.Generator, n: int, days: int, period_start: datetime
) -> tuple[SimUser, ...]:
    """``n`` customers spread over the weighted cities; see ``SimUser`` for what is drawn."""
    weights = np.array([c.weight for c in CITIES])
    city_idx = rng.choice(len(CITIES), size=n, p=weights / weights.sum())
    phones = _phone_numbers(rng, n)
    phone_style = rng.integers(0, 3, size=n)
    gender_draw = rng.random(size=n)
    age = np.clip(rng.normal(31, 7, size=n), 18, 60).astype(int)
    day_of_year = rng.integers(0, 365, size=n)
    has_email = rng.random(size=n) < 0.4
    existing = rng.random(size=n) < 0.7
    signup_days_ago = rng.integers(1, 3 * 365, size=n)
    signup_seconds = rng.integers(0, 86_400, size=n)
    first_active = rng.integers(0, max(days, 1), size=n)
    logs_in = rng.random(size=n) < 0.85
    activity = np.clip(rng.lognormal(np.log(0.125), 0.8, size=n), 0.01, 2.5)
    sensitivity = rng.beta(1.3, 2.2, size=n)
    second_device = rng.random(size=n) < 0.38
    third_device = rng.random(size=n) < 0.08
    channel_draw = rng.random(size=(n, 3))
    anonymous_ids = _uuid4s(rng, 3 * n)
    openid_chars = rng.integers(0, len(OPENID_ALPHABET), size=(n, 27))
    mail_domain = rng.integers(0, len(MAIL_DOMAINS), size=n)
    ref_year = period_start.year

    users: list[SimUser] = []
    for i in range(n):
        city = CITIES[int(city_idx[i])]
        mix = city.channel_mix
        draw = channel_draw[i, 0]
        first = 0 if draw < mix[0] else 1 if draw < mix[0] + mix[1] else 2
        channels: list[Channel] = [CHANNELS[first]]
        for k, extra in enumerate((second_device[i], third_device[i]), start=1):
            if extra:
                others = [c for c in CHANNELS if c not in channels]
                channels.append(others[int(channel_draw[i, k] * len(others))])
        devices = tuple(
            Device(anonymous_ids[3 * i + k], ch, _device_context(rng, ch, city.time_zone))
            for k, ch in enumerate(channels)
        )
        device_weights = (0.7, 0.2, 0.1)[: len(devices)]
        total = sum(device_weights)
        g = gender_draw[i]
        gender = "female" if g < 0.72 else "male" if g < 0.97 else None
        birthday = date(ref_year - int(age[i]), 1, 1) + timedelta(days=int(day_of_year[i]))
        email = None
        if has_email[i]:
            name = f"{GIVEN[i % len(GIVEN)]}.{SURNAMES[(i // 7) % len(SURNAMES)]}{i}"
            email = f"{name}@{MAIL_DOMAINS[int(mail_domain[i])]}"
        openid = None
        if "mini_program" in channels:
            openid = "o" + "".join(OPENID_ALPHABET[c] for c in openid_chars[i])
        signup_at = None
        if existing[i]:
            signup_at = (
                period_start
                - timedelta(days=int(signup_days_ago[i]))
                + timedelta(seconds=int(signup_seconds[i]))
            ).astimezone(UTC)
        users.append(
            SimUser(
                index=i,
                user_id=f"m{100001 + i}",
                city=city.name,
                time_zone=city.time_zone,
                gender=gender,
                birthday=birthday,
                phone=_phone_as_sent(phones[i], int(phone_style[i])),
                email=email,
                wechat_openid=openid,
                existing=bool(existing[i]),
                signup_at=signup_at,
                first_active_day=0 if existing[i] else int(first_active[i]),
                logs_in=bool(logs_in[i]),
                activity=float(activity[i]),
                coupon_sensitivity=float(sensitivity[i]),
                devices=devices,
                device_weights=tuple(w / total for w in device_weights),
            )
        )
    return tuple(users)
