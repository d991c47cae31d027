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
