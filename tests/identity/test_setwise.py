"""The set-based path (``identity.setwise``) resolves exactly like the per-tuple resolver.

Each example resolves one random stream, cut into batches, twice on a fresh
store: once with ``set_based=False`` (every tuple through ``Resolver``) and
once with ``set_based=True``; everything stored must be the same up to the
random ONE_ID names: who is who, per-row ONE_IDs, first/last seen, ONE_IDs
minted and merged, merges and conflicts recorded, alias pairs.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.identity.events import NOW, ev, table
from zhiying.identity import setwise
from zhiying.identity.service import resolve_events
from zhiying.store import make_engine, upgrade
from zhiying.store.tables import identifiers, identity_conflicts, merges, one_ids

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


_TABLES = ("identity_conflicts", "identity_merges", "identifiers", "one_ids", "identity_generation")


def _run(engine: sa.Engine, stream: list[dict[str, Any]], cuts: list[int], set_based: bool) -> Any:
    with engine.begin() as conn:
        for name in _TABLES:
            conn.exec_driver_sql(f"DELETE FROM {name}")
    rows = [ev(f"m{i}", e.pop("type_"), **e) for i, e in enumerate(dict(e) for e in stream)]
    per_row: list[str | None] = []
    aliases: list[tuple[str, str]] = []
    counts = []
    bounds = [0, *sorted(set(cuts)), len(rows)]
    for start, end in itertools.pairwise(bounds):
        if end <= start:
            continue
        with engine.begin() as conn:
            r = resolve_events(conn, table(rows[start:end]), NOW, set_based=set_based)
        per_row += r.one_ids.to_pylist()
        aliases += r.aliases
        counts.append((r.merges, r.conflicts))
    with engine.connect() as conn:
        idents = conn.execute(sa.select(identifiers)).all()
        ids = conn.execute(sa.select(one_ids)).all()
        merged = conn.execute(sa.select(merges)).all()
        conflicts = conn.execute(sa.select(identity_conflicts)).all()
    # Name every ONE_ID by what identifies it: the smallest identifier it ever owned
    # (a loser by the first identifier its merge names), so both runs compare.
    name: dict[str, str] = {}
    for i in idents:
        key = f"{i.kind}:{i.value}"
        name[i.one_id] = min(name.get(i.one_id, key), key)
    for m in merged:
        name.setdefault(m.loser, f"lost:{m.kind}:{m.value}:{m.message_id}")
    for o in ids:
        name.setdefault(o.one_id, f"empty@{o.created_at}")

    def n(one_id: str | None) -> str | None:
        return None if one_id is None else name.get(one_id, "?" + one_id)

    return {
        "rows": [n(o) for o in per_row],
        "identifiers": sorted(
            (i.kind, i.value, n(i.one_id), i.first_seen, i.last_seen) for i in idents
        ),
        "one_ids": sorted((n(o.one_id), o.created_at, n(o.merged_into), o.merged_at) for o in ids),
        "merges": sorted(
            (n(m.winner), n(m.loser), m.kind, m.value, m.reason, m.message_id, m.merged_at)
            for m in merged
        ),
        "conflicts": sorted(
            (n(c.one_id), n(c.other_one_id), c.kind, c.value, c.rule, c.message_id, c.seen_at)
            for c in conflicts
        ),
        "aliases": sorted((n(a), n(b)) for a, b in aliases),
        "counts": counts,
    }


@pytest.fixture
def engine(database_url: str) -> Iterator[sa.Engine]:
    """An operational store of the parametrised backend (emptied by each run)."""
    upgrade(database_url)
    made = make_engine(database_url)
    yield made
    made.dispose()


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
