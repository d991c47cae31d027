"""The set-based path (``identity.setwise``) resolves exactly like the per-tuple resolver.

Each example resolves one random stream, cut into batches, twice on a fresh
store: once with ``set_based=False`` (every tuple through ``Resolver``) and
once with ``set_based=True``; everything stored must be the same up to the
random ONE_ID names: who is who, per-row ONE_IDs, first/last seen, ONE_IDs
minted and merged, merges and conflicts recorded, alias pairs.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.identity.events import NOW
from tests.identity.replay import replay
from zhiying.identity import setwise
from zhiying.identity.service import Resolution, resolve_events

USERS = [f"u{i}" for i in range(4)]
ANONS = [f"a{i}" for i in range(6)]
PHONES = ["+8613800000001", "+8613800000002", "+8613800000003"]
UNIONIDS = ["w1", "w2", "w3"]


@st.composite
def events(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(["track", "track", "identify", "alias", "page"]))
    user = draw(st.none() | st.sampled_from(USERS))
    anon = draw(st.none() | st.sampled_from(ANONS))
    ids: dict[str, str] = {}
    if draw(st.integers(0, 3)) == 0:
        ids["phone"] = draw(st.sampled_from(PHONES))
    if draw(st.integers(0, 5)) == 0:
        ids["wechat_unionid"] = draw(st.sampled_from(UNIONIDS))
    previous = draw(st.sampled_from(USERS + ANONS)) if kind == "alias" else None
    return {
        "type_": kind,
        "user_id": user,
        "anonymous_id": anon,
        "ids": ids,
        "previous_id": previous,
        "minute": draw(st.integers(0, 40)),
    }


streams = st.lists(events(), min_size=1, max_size=60)


def _run(engine: sa.Engine, stream: list[dict[str, Any]], cuts: list[int], set_based: bool) -> Any:
    def resolve(conn: sa.Connection, rows: pa.Table) -> Resolution:
        return resolve_events(conn, rows, NOW, set_based=set_based)

    return replay(engine, stream, cuts, resolve)


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(stream=streams, cuts=st.lists(st.integers(0, 60), min_size=1, max_size=4))
def test_set_based_path_stores_what_the_per_tuple_resolver_stores(
    engine: sa.Engine, stream: list[dict[str, Any]], cuts: list[int]
) -> None:
    one = _run(engine, stream, cuts, set_based=False)
    other = _run(engine, stream, cuts, set_based=True)
    assert other == one


def test_components_join_nodes_linked_through_any_path() -> None:
    label = setwise.components(6, np.array([0, 3, 4]), np.array([1, 4, 5]))
    assert label.tolist() == [0, 0, 2, 3, 3, 3]


def _e(kind: str = "track", minute: int = 0, **fields: Any) -> dict[str, Any]:
    return {
        "type_": kind,
        "user_id": fields.get("user_id"),
        "anonymous_id": fields.get("anonymous_id"),
        "ids": fields.get("ids", {}),
        "previous_id": fields.get("previous_id"),
        "minute": minute,
    }


# Hand-written streams for the situations the classes hinge on; the cut is after the first event.
SITUATIONS = {
    # a new device seen alone, then with a known user: a merge, not a plain assignment
    "root_then_known_user": [
        _e(user_id="u1", anonymous_id="a1"),
        _e(minute=1, anonymous_id="a9"),
        _e(minute=2, user_id="u1", anonymous_id="a9"),
    ],
    # a new device shared by two known users: the first keeps it, the second conflicts
    "new_device_shared_by_two_known_users": [
        _e(user_id="u1", anonymous_id="a1"),
        _e(user_id="u2", anonymous_id="a2"),
        _e(minute=3, user_id="u2", anonymous_id="a9"),
        _e(minute=4, user_id="u1", anonymous_id="a9"),
    ],
    # two new users meeting on a new device, and a new person over two tuples
    "new_users_on_one_new_device": [
        _e(user_id="u0"),
        _e(minute=1, user_id="u1", anonymous_id="a9"),
        _e(minute=2, user_id="u2", anonymous_id="a9"),
        _e(minute=3, anonymous_id="a5", ids={"phone": PHONES[0]}),
        _e(minute=4, anonymous_id="a5"),
    ],
    # a new user and an alias naming it (no identifier of its own) in one batch
    "alias_without_identifiers_after_a_new_user": [
        _e(minute=0, user_id="u9"),
        _e(minute=1, user_id="u0"),
        _e("alias", minute=1, previous_id="u0"),
    ],
    # a known anonymous person seen with a known user, and two union ids on one person
    "known_anonymous_and_union_ids": [
        _e(anonymous_id="a1", ids={"wechat_unionid": "w1"}),
        _e(minute=1, user_id="u1", anonymous_id="a1"),
        _e(minute=2, anonymous_id="a2", ids={"wechat_unionid": "w2"}),
        _e(minute=3, anonymous_id="a2", ids={"wechat_unionid": "w1"}),
    ],
}


@pytest.mark.parametrize("situation", sorted(SITUATIONS))
def test_set_based_path_matches_the_resolver_in_hand_written_situations(
    engine: sa.Engine, situation: str
) -> None:
    stream = SITUATIONS[situation]
    one = _run(engine, stream, [1], set_based=False)
    other = _run(engine, stream, [1], set_based=True)
    assert other == one


def test_set_based_path_matches_the_resolver_on_batches_large_enough_for_copy(
    engine: sa.Engine,
) -> None:
    """Hundreds of rows per batch: PostgreSQL writes through COPY and temporary tables."""
    rng = np.random.default_rng(3)
    stream = [
        _e(
            str(rng.choice(["track", "identify", "page"])),
            int(rng.integers(0, 2000)),
            user_id=f"u{rng.integers(0, 150)}" if rng.random() < 0.7 else None,
            anonymous_id=f"a{rng.integers(0, 300)}",
            ids={"phone": f"+86138{rng.integers(0, 200):08d}"} if rng.random() < 0.2 else {},
        )
        for _ in range(900)
    ]
    one = _run(engine, stream, [450], set_based=False)
    other = _run(engine, stream, [450], set_based=True)
    assert other == one
    assert len(one["conflicts"]) > 200 and len(one["identifiers"]) > 200


# --- JOINED: a user's devices first seen before the login ---------------------------------

# Each stream is cut after its first ``cut`` events (so a user or device may be stored);
# ``static`` says whether the set-based path must decide every tuple without the Resolver.
JOINED = {
    # two devices browse before the login; the first one seen at the login takes the user
    "two_devices_then_logins": (
        0,
        True,
        [
            _e(minute=0, anonymous_id="a1"),
            _e(minute=1, anonymous_id="a2"),
            _e(minute=2, anonymous_id="a1"),
            _e("identify", minute=3, user_id="u1", anonymous_id="a1"),
            _e(minute=4, anonymous_id="a2"),
            _e("page", minute=5, user_id="u1", anonymous_id="a2"),
            _e(minute=6, anonymous_id="a2"),
        ],
    ),
    # the first user tuple carries no device seen before: it mints the user's ONE_ID
    "login_on_a_new_device_first": (
        0,
        True,
        [
            _e(minute=0, anonymous_id="a1"),
            _e(minute=1, anonymous_id="a2"),
            _e("identify", minute=2, user_id="u1", ids={"email": "x@example.com"}),
            _e(minute=3, user_id="u1", anonymous_id="a2"),
            _e(minute=3, user_id="u1", anonymous_id="a1"),
        ],
    ),
    # a stored user; two new devices merge into it at one event, in precedence order
    "stored_user_two_devices_at_one_event": (
        1,
        True,
        [
            _e("identify", minute=0, user_id="u1", anonymous_id="a0"),
            _e(minute=1, anonymous_id="a2"),
            _e(minute=2, anonymous_id="a1"),
            _e(minute=3, ids={"device_id": "d7"}),
            _e(minute=4, user_id="u1", anonymous_id="a1", ids={"device_id": "d7"}),
            _e(minute=5, user_id="u1", anonymous_id="a2"),
        ],
    ),
    # a stored user whose stored device comes back with a new one
    "stored_user_stored_device_and_a_new_one": (
        1,
        True,
        [
            _e("identify", minute=0, user_id="u1", anonymous_id="a0"),
            _e(minute=1, anonymous_id="a3"),
            _e(minute=2, user_id="u1", anonymous_id="a0", ids={"phone": PHONES[0]}),
            _e(minute=3, user_id="u1", anonymous_id="a3", ids={"phone": PHONES[0]}),
        ],
    ),
    # two devices seen before the login event that carries both: merged by age first
    "two_earlier_devices_at_the_login": (
        0,
        False,
        [
            _e(minute=0, ids={"device_id": "d2"}),
            _e(minute=1, anonymous_id="a1"),
            _e(minute=2, user_id="u1", anonymous_id="a1", ids={"device_id": "d2"}),
            _e(minute=3, anonymous_id="a3"),
            _e(minute=4, user_id="u1", anonymous_id="a3"),
        ],
    ),
    # one device seen before two users' logins: never merges both users
    "a_device_shared_by_two_users": (
        0,
        False,
        [
            _e(minute=0, anonymous_id="a1"),
            _e(minute=1, anonymous_id="a2"),
            _e(minute=2, user_id="u1", anonymous_id="a1"),
            _e(minute=3, user_id="u2", anonymous_id="a1"),
            _e(minute=4, user_id="u2", anonymous_id="a2"),
        ],
    ),
    # a stored user and a new one meet a new device
    "a_new_device_of_a_stored_and_a_new_user": (
        1,
        False,
        [
            _e(minute=0, user_id="u1", anonymous_id="a0"),
            _e(minute=1, anonymous_id="a1"),
            _e(minute=2, anonymous_id="a2"),
            _e(minute=3, user_id="u2", anonymous_id="a2"),
            _e(minute=4, user_id="u1", anonymous_id="a1"),
            _e(minute=5, user_id="u2", anonymous_id="a1"),
        ],
    ),
    # an anonymous event with two identifiers, an alias, a union id on a device
    "anonymous_tuples_the_class_leaves_to_the_rules": (
        0,
        False,
        [
            _e(minute=0, anonymous_id="a1", ids={"phone": PHONES[1]}),
            _e(minute=1, anonymous_id="a2"),
            _e(minute=2, user_id="u1", anonymous_id="a2"),
            _e(minute=3, user_id="u1", anonymous_id="a1"),
            _e(minute=4, anonymous_id="a4"),
            _e(minute=5, anonymous_id="a5"),
            _e("alias", minute=6, user_id="u2", previous_id="a4"),
            _e(minute=7, user_id="u2", anonymous_id="a5"),
            _e(minute=8, anonymous_id="a6", ids={"wechat_unionid": "w1"}),
            _e(minute=9, anonymous_id="a7"),
            _e(minute=10, user_id="u3", anonymous_id="a7"),
            _e(minute=11, user_id="u3", anonymous_id="a6"),
        ],
    ),
    # a union id seen alone, then with a user who already holds another one
    "a_union_id_device_meets_a_user_holding_another": (
        0,
        False,
        [
            _e(minute=0, ids={"wechat_unionid": "w1"}),
            _e(minute=1, user_id="u1", ids={"wechat_unionid": "w2"}),
            _e(minute=2, user_id="u1", ids={"wechat_unionid": "w1"}),
        ],
    ),
    # a stored anonymous device meets a new user after another device browsed
    "a_stored_anonymous_device_logs_in": (
        1,
        False,
        [
            _e(minute=0, anonymous_id="a1"),
            _e(minute=1, anonymous_id="a2"),
            _e(minute=2, user_id="u1", anonymous_id="a1"),
            _e(minute=3, user_id="u1", anonymous_id="a2"),
        ],
    ),
}


def _run_counting(
    engine: sa.Engine, stream: list[dict[str, Any]], cuts: list[int], residual: list[int]
) -> Any:
    def resolve(conn: sa.Connection, rows: pa.Table) -> Resolution:
        r = resolve_events(conn, rows, NOW, set_based=True)
        residual.append(r.residual or 0)
        return r

    return replay(engine, stream, cuts, resolve)


@pytest.mark.parametrize("situation", sorted(JOINED))
def test_devices_seen_before_the_login_resolve_as_the_resolver_does(
    engine: sa.Engine, situation: str
) -> None:
    cut, static, stream = JOINED[situation]
    one = _run(engine, stream, [cut], set_based=False)
    residual: list[int] = []
    other = _run_counting(engine, stream, [cut], residual)
    assert other == one
    assert (sum(residual) == 0) == static, residual
    if static:
        assert one["merges"], "the situation must merge a device into its user"


@st.composite
def logins(draw: st.DrawFn) -> dict[str, Any]:
    """Users with their own devices browsing before and after logging in, and now and
    then what the JOINED class must leave to the rules: a device of another user, an
    alias, a union id, an anonymous event with two identifiers, a shared phone."""
    user = draw(st.integers(0, 4))
    device = f"a{user}-{draw(st.integers(0, 3))}"
    odd = draw(st.integers(0, 60))
    if odd == 0:
        device = f"a{draw(st.integers(0, 4))}-0"  # another user's device
    kind = draw(st.sampled_from(["track", "page", "identify"]))
    ids: dict[str, str] = {}
    if odd == 1:
        ids["wechat_unionid"] = draw(st.sampled_from(UNIONIDS))
    if odd in (2, 3) or (kind == "identify" and draw(st.booleans())):
        ids["phone"] = f"+86138000000{user:02d}" if odd != 3 else PHONES[0]
    if odd == 4:
        return _e("alias", draw(st.integers(0, 40)), user_id=f"u{user}", previous_id=device)
    logged_in = draw(st.booleans())
    return _e(
        kind,
        draw(st.integers(0, 40)),
        user_id=f"u{user}" if logged_in else None,
        anonymous_id=device,
        ids=ids if logged_in or odd in (1, 2, 3) else {},
    )


@settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(stream=st.lists(logins(), min_size=8, max_size=50), cut=st.integers(0, 50))
def test_set_based_path_with_logins_stores_what_the_per_tuple_resolver_stores(
    engine: sa.Engine, stream: list[dict[str, Any]], cut: int
) -> None:
    one = _run(engine, stream, [cut], set_based=False)
    other = _run(engine, stream, [cut], set_based=True)
    assert other == one


def test_set_based_path_matches_the_resolver_on_a_stream_of_logins(engine: sa.Engine) -> None:
    """Like the bulk-import benchmark: each user has two devices, a fifth of the events
    come before the login; a few shared devices, aliases and union ids. Most devices'
    merges are decided by the JOINED class, the rest by the Resolver."""
    rng = np.random.default_rng(11)
    stream = []
    for _ in range(3000):
        user = int(rng.integers(0, 120))
        device = f"a{user}-{rng.integers(0, 2)}"
        odd = rng.random()
        if odd < 0.01:
            device = f"a{rng.integers(0, 120)}-0"
        ids = {"phone": f"+86139{user:08d}"} if rng.random() < 0.1 else {}
        if odd > 0.995:
            ids["wechat_unionid"] = f"w{rng.integers(0, 3)}"
        kind = str(rng.choice(["track", "page", "identify"]))
        at = int(rng.integers(0, 3000))
        if 0.01 <= odd < 0.015:
            stream.append(_e("alias", at, user_id=f"u{user}", previous_id=device))
        elif rng.random() < 0.2:
            stream.append(_e(kind, at, anonymous_id=device))
        else:
            stream.append(_e(kind, at, user_id=f"u{user}", anonymous_id=device, ids=ids))
    one = _run(engine, stream, [1400], set_based=False)
    residual: list[int] = []
    other = _run_counting(engine, stream, [1400], residual)
    assert other == one
    assert len(one["merges"]) > 20 and one["conflicts"]
    assert sum(residual) < 130, residual  # 199 without the JOINED class


def test_the_joined_example_of_the_docs(engine: sa.Engine) -> None:
    """docs/identity.md, "Example of a joined component"."""
    stream = [
        _e(minute=0, anonymous_id="a1"),
        _e(minute=5, anonymous_id="a2"),
        _e(minute=10, user_id="u1", anonymous_id="a1"),
        _e(minute=20, user_id="u1", anonymous_id="a2"),
    ]
    residual: list[int] = []
    stored = _run_counting(engine, stream, [], residual)
    assert residual == [0]
    (merge,) = stored["merges"]
    winner, loser, kind, value, reason, message_id, merged_at = merge
    assert (winner, kind, value, message_id) == ("anonymous_id:a1", "anonymous_id", "a2", "m3")
    assert reason == "track: one event carried identifiers of both"
    assert merged_at.minute == 20
    created = {name: at for name, at, _, _, _ in stored["one_ids"]}
    assert created["anonymous_id:a1"].minute == 0 and created[loser].minute == 5
