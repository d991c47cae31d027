"""Rows answered from the identity cache (``resolve_events``' fast path) resolve
exactly as the rules would, on SQLite and PostgreSQL.

The property test resolves one random stream, cut into batches, twice on a
fresh store: once with no cache (every tuple through the ``Resolver``) and once
with a cache filled after each committed batch, as ``store_events`` does (so
later batches mix cached rows, new people and rows that link or conflict).
Everything must be the same up to the random ONE_ID names, except that a
cached person's ``last_seen`` may lag by less than ``LAST_SEEN_STEP``.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pyarrow as pa
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.identity.events import NOW, T0, ev, table
from tests.identity.replay import replay
from zhiying.identity.batch import row_identifiers
from zhiying.identity.cache import LAST_SEEN_STEP, IdentityCache, Seen, ident, key
from zhiying.identity.service import Resolution, resolve_events
from zhiying.runtime import Stores
from zhiying.store.tables import identifiers, identity_conflicts, one_ids

USERS = [f"u{i}" for i in range(4)]
ANONS = [f"a{i}" for i in range(6)]
PHONES = ["+8613800000001", "+8613800000002", "+8613800000003"]
UNIONIDS = ["w1", "w2"]
DEVICES = ["d1", "d2", "d3"]


@st.composite
def identities(draw: st.DrawFn) -> dict[str, Any]:
    ids: dict[str, str] = {}
    if draw(st.integers(0, 3)) == 0:
        ids["phone"] = draw(st.sampled_from(PHONES))
    if draw(st.integers(0, 3)) == 0:
        ids["device_id"] = draw(st.sampled_from(DEVICES))
    if draw(st.integers(0, 6)) == 0:
        ids["wechat_unionid"] = draw(st.sampled_from(UNIONIDS))
    return {
        "user_id": draw(st.none() | st.sampled_from(USERS)),
        "anonymous_id": draw(st.none() | st.sampled_from(ANONS)),
        "ids": ids,
    }


@st.composite
def streams(draw: st.DrawFn) -> list[dict[str, Any]]:
    """Events that mostly repeat a few identity tuples (so later batches hit the cache),
    mixed with fresh combinations, alias calls and limit clashes."""
    regulars = draw(st.lists(identities(), min_size=1, max_size=6))
    stream = []
    for _ in range(draw(st.integers(1, 50))):
        kind = draw(st.sampled_from(["track", "track", "track", "identify", "alias", "page"]))
        who = draw(st.sampled_from(regulars) if draw(st.integers(0, 3)) else identities())
        previous = draw(st.sampled_from([*USERS, *ANONS, ""])) if kind == "alias" else None
        stream.append(
            {
                "type_": kind,
                **who,
                "previous_id": previous,
                "minute": draw(st.integers(0, 300)),
            }
        )
    return stream


def _run(engine: sa.Engine, stream: list[dict[str, Any]], cuts: list[int], cached: bool) -> Any:
    cache = IdentityCache() if cached else None

    def resolve(conn: sa.Connection, rows: pa.Table) -> Resolution:
        return resolve_events(conn, rows, NOW, cache)

    def committed(r: Resolution) -> None:
        if cache is not None:
            cache.apply(r.generation, r.cache_entries)  # after the commit, as store_events does

    return replay(engine, stream, cuts, resolve, committed)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    stream=streams(),
    cuts=st.lists(st.integers(0, 50), min_size=1, max_size=8),
)
def test_cached_rows_resolve_exactly_as_the_rules_do(
    engine: sa.Engine, stream: list[dict[str, Any]], cuts: list[int]
) -> None:
    rules = _run(engine, stream, cuts, cached=False)
    fast = _run(engine, stream, cuts, cached=True)
    rules_last, fast_last = rules.pop("last_seen"), fast.pop("last_seen")
    assert fast == rules
    assert rules_last.keys() == fast_last.keys()
    for identifier, exact in rules_last.items():
        assert timedelta(0) <= exact - fast_last[identifier] < LAST_SEEN_STEP, identifier


def _resolve(stores: Stores, rows: list[dict[str, Any]], cache: IdentityCache) -> Resolution:
    with stores.engine.begin() as conn:
        r = resolve_events(conn, table(rows), NOW, cache)
    cache.apply(r.generation, r.cache_entries)
    return r


def test_rows_whose_identifiers_are_all_cached_are_answered_without_the_store(
    ops_stores: Stores,
) -> None:
    cache = IdentityCache()
    (person,) = set(
        _resolve(ops_stores, [ev("m1", user_id="u1", anonymous_id="a1")], cache).one_ids.to_pylist()
    )
    # Behind the cache's back (no merge, so the generation stays): the store forgets u1.
    with ops_stores.engine.begin() as conn:
        conn.execute(sa.delete(identifiers))
        conn.execute(sa.delete(one_ids))
    rows = [ev("m2", user_id="u1", minute=1), ev("m3", user_id="u1", anonymous_id="a1", minute=2)]
    r = _resolve(ops_stores, rows, cache)
    assert r.one_ids.to_pylist() == [person, person]  # from the cache: nothing was minted
    with ops_stores.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(one_ids)).scalar() == 0
    # One uncached identifier sends the row to the store, which mints a new person.
    r = _resolve(ops_stores, [ev("m4", user_id="u1", ids={"phone": PHONES[0]}, minute=3)], cache)
    assert r.one_ids.to_pylist() != [person]


def test_a_cached_row_follows_a_merge_made_by_a_linking_row_of_the_same_batch(
    ops_stores: Stores,
) -> None:
    cache = IdentityCache()
    first = _resolve(
        ops_stores, [ev("m1", anonymous_id="a1"), ev("m2", user_id="u1", minute=1)], cache
    )
    device, user = first.one_ids.to_pylist()
    assert device != user and cache.get(("anonymous_id", "a1")) is not None
    rows = [
        ev("m3", anonymous_id="a1", minute=2),  # cached: a1 → device
        ev("m4", "identify", user_id="u1", anonymous_id="a1", minute=3),  # links a1 to u1
        ev("m5", user_id="u1", minute=4),  # cached: u1 → user
        ev("m6", anonymous_id="a9", minute=5),  # new
    ]
    r = _resolve(ops_stores, rows, cache)
    got = r.one_ids.to_pylist()
    assert got[:3] == [user, user, user] and got[3] not in (None, user, device)
    assert (r.merges, r.aliases) == (1, [(device, user)])
    linked = cache.get(("anonymous_id", "a1"))
    assert cache.generation == r.generation == 1 and linked is not None and linked.one_id == user


def test_the_cache_example_of_the_docs(ops_stores: Stores) -> None:
    cache = IdentityCache()
    u1, u2 = _resolve(
        ops_stores,
        [ev("m1", user_id="u1", anonymous_id="a1"), ev("m2", user_id="u2", minute=1)],
        cache,
    ).one_ids.to_pylist()
    rows = [
        ev("m3", user_id="u1", anonymous_id="a1", minute=2),
        ev("m4", anonymous_id="a9", minute=3),
        ev("m5", "identify", user_id="u2", anonymous_id="a1", minute=4),
    ]
    r = _resolve(ops_stores, rows, cache)
    assert r.one_ids.to_pylist()[::2] == [u1, u2] and r.one_ids[1].as_py() not in (u1, u2)
    assert (r.merges, r.conflicts) == (0, 1)
    with ops_stores.engine.connect() as conn:
        c = conn.execute(sa.select(identity_conflicts)).one()
    assert (c.one_id, c.other_one_id, c.kind, c.value, c.rule) == (
        u2,
        u1,
        "anonymous_id",
        "a1",
        "one_user_id",
    )


def test_a_merge_generation_change_invalidates_the_fast_path(ops_stores: Stores) -> None:
    cache = IdentityCache()
    (device,) = _resolve(ops_stores, [ev("m1", anonymous_id="a2")], cache).one_ids.to_pylist()
    _resolve(ops_stores, [ev("m2", user_id="u1", minute=1)], cache)
    assert cache.get(("anonymous_id", "a2")) is not None and cache.generation == 0
    # Another writer without this cache links a2 to u1: the generation moves.
    with ops_stores.engine.begin() as conn:
        merged = resolve_events(
            conn, table([ev("m3", "identify", user_id="u1", anonymous_id="a2", minute=2)]), NOW
        )
    assert merged.merges == 1 and merged.generation == 1
    (user,) = set(merged.one_ids.to_pylist())
    # The cache still says a2 → device, for generation 0: it must not be used.
    assert cache.get(("anonymous_id", "a2")).one_id == device  # type: ignore[union-attr]
    r = _resolve(ops_stores, [ev("m4", anonymous_id="a2", minute=3)], cache)
    assert r.one_ids.to_pylist() == [user] != [device]
    assert cache.generation == 1 and cache.get(("anonymous_id", "a2")).one_id == user  # type: ignore[union-attr]


def test_a_merge_made_by_this_process_keeps_the_cache_and_re_points_the_loser(
    ops_stores: Stores,
) -> None:
    cache = IdentityCache()
    first = _resolve(
        ops_stores,
        [
            ev("m1", anonymous_id="a1", ids={"device_id": "d1"}),
            ev("m2", user_id="u1", minute=1),
            ev("m3", user_id="u2", minute=2),
        ],
        cache,
    )
    device, user, other = first.one_ids.to_pylist()
    linking = [ev("m4", "identify", user_id="u1", anonymous_id="a1", minute=3)]
    assert _resolve(ops_stores, linking, cache).aliases == [(device, user)]
    # Not emptied: u2 is still cached, and d1 (not in the merging batch) follows a1.
    assert cache.generation == 1 and len(cache) == 4
    assert [cache.get(i).one_id for i in (("device_id", "d1"), ("user_id", "u2"))] == [  # type: ignore[union-attr]
        user,
        other,
    ]
    # Proof that d1 is answered from the cache: the store forgets it, the answer stays.
    with ops_stores.engine.begin() as conn:
        conn.execute(sa.delete(identifiers).where(identifiers.c.value == "d1"))
    r = _resolve(ops_stores, [ev("m5", ids={"device_id": "d1"}, minute=4)], cache)
    assert r.one_ids.to_pylist() == [user]


def test_a_rolled_back_merge_is_not_applied_to_the_cache(ops_stores: Stores) -> None:
    cache = IdentityCache()
    device, _ = _resolve(
        ops_stores, [ev("m1", anonymous_id="a1"), ev("m2", user_id="u1", minute=1)], cache
    ).one_ids.to_pylist()
    linking = table([ev("m3", "identify", user_id="u1", anonymous_id="a1", minute=2)])
    with pytest.raises(RuntimeError), ops_stores.engine.begin() as conn:
        assert resolve_events(conn, linking, NOW, cache).merges == 1
        raise RuntimeError("the batch fails after resolution: the transaction rolls back")
    # Meanwhile another writer (no cache) merges someone else: the generation becomes
    # 1, the number the rolled-back batch announced; its merge must not be replayed.
    with ops_stores.engine.begin() as conn:
        rows = [ev("m4", anonymous_id="b1", minute=3), ev("m5", user_id="u7", minute=3)]
        resolve_events(conn, table(rows), NOW)
    with ops_stores.engine.begin() as conn:
        rows = [ev("m6", "identify", user_id="u7", anonymous_id="b1", minute=4)]
        assert resolve_events(conn, table(rows), NOW).generation == 1
    r = _resolve(ops_stores, [ev("m7", anonymous_id="a1", minute=5)], cache)
    assert r.one_ids.to_pylist() == [device]
    assert cache.get(("anonymous_id", "a1")) == Seen(device, *_span_us(ops_stores, "a1"))


def _span_us(stores: Stores, value: str) -> tuple[int, int]:
    with stores.engine.connect() as conn:
        first, last = conn.execute(
            sa.select(identifiers.c.first_seen, identifiers.c.last_seen).where(
                identifiers.c.value == value
            )
        ).one()
    micro = timedelta(microseconds=1)
    epoch = datetime(1970, 1, 1)
    return (_naive_utc(first) - epoch) // micro, (_naive_utc(last) - epoch) // micro


def _seen_span(stores: Stores) -> tuple[datetime, datetime]:
    with stores.engine.connect() as conn:
        first, last = conn.execute(
            sa.select(identifiers.c.first_seen, identifiers.c.last_seen)
        ).one()
    return _naive_utc(first), _naive_utc(last)


def _naive_utc(at: datetime) -> datetime:
    return at if at.tzinfo is None else at.astimezone(UTC).replace(tzinfo=None)


def test_cached_seen_times_move_first_seen_exactly_and_last_seen_by_steps(
    ops_stores: Stores,
) -> None:
    def minute(m: int) -> datetime:
        return T0 + timedelta(minutes=m)

    cache = IdentityCache()
    _resolve(ops_stores, [ev("m1", user_id="u1", minute=60)], cache)
    both = [ev("m2", user_id="u1", minute=30), ev("m3", user_id="u1", minute=100)]
    _resolve(ops_stores, both, cache)
    assert _seen_span(ops_stores) == (minute(30), minute(60))  # 100 - 60 is under a step
    later = [ev("m4", user_id="u1", minute=125), ev("m5", user_id="u1", minute=130)]
    _resolve(ops_stores, later, cache)
    assert _seen_span(ops_stores) == (minute(30), minute(130))  # the latest row that moved it
    seen = cache.get(("user_id", "u1"))
    assert seen is not None and seen.last_us == (minute(130) - datetime(1970, 1, 1)) // timedelta(
        microseconds=1
    )


# --- the cache itself (pure) -----------------------------------------------------------


@given(st.text(max_size=8), st.text(max_size=8), st.text(max_size=8), st.text(max_size=8))
def test_cache_keys_are_injective(k1: str, v1: str, k2: str, v2: str) -> None:
    assert ident(key(k1, v1)) == (k1, v1)
    assert (key(k1, v1) == key(k2, v2)) == ((k1, v1) == (k2, v2))


def test_arrow_built_keys_are_the_cache_keys() -> None:
    rows = [
        ev("m1", user_id="u:1", anonymous_id="a1", ids={"phone": "+86138", "member_no": "7"}),
        ev("m2", anonymous_id="", ids={"device_id": "", "wechat_unionid": "w"}),
        ev("m3", "alias", user_id="u2", previous_id="a1"),
        ev("m4", "alias", user_id="u3", previous_id=""),
    ]
    got = row_identifiers(table(rows), NOW)
    assert sorted(zip(got.rows.tolist(), got.keys, strict=True)) == sorted(
        [
            (0, key("user_id", "u:1")),
            (0, key("anonymous_id", "a1")),
            (0, key("phone", "+86138")),
            (0, key("member_no", "7")),
            (1, key("wechat_unionid", "w")),
            (2, key("user_id", "u2")),
            (3, key("user_id", "u3")),
        ]
    )
    assert got.linking.tolist() == [False, False, True, False]


def test_the_cache_evicts_least_recently_applied_entries_and_keeps_owners_right() -> None:
    cache = IdentityCache(capacity=3)
    cache.apply(0, {("user_id", f"u{i}"): Seen(f"o{i}", i, i + 1) for i in range(3)})
    cache.apply(0, {("user_id", "u0"): Seen("o0", 0, 5)})  # refreshed: now the newest
    cache.apply(0, {("user_id", "u3"): Seen("o0", 3, 4)})  # evicts u1, the oldest
    assert len(cache) == 3 and cache.get(("user_id", "u1")) is None
    found = cache.lookup([key("user_id", v) for v in ("u0", "u1", "u2", "u3")])
    assert found.owner[1] == -1 and found.owner[0] == found.owner[3] != found.owner[2]
    assert cache.names(found.owner[[0, 2]]) == ["o0", "o2"]
    assert (found.first_us[0], found.last_us[0]) == (0, 5)
    # Many owners passing through: forgotten names are compacted, live ones stay right.
    for i in range(3000):
        cache.apply(0, {("anonymous_id", f"a{i}"): Seen(f"p{i}", i, i)})
    assert cache.get(("anonymous_id", "a2999")) == Seen("p2999", 2999, 2999)
    assert cache.get(("anonymous_id", "a2997")) == Seen("p2997", 2997, 2997)
    assert len(cache) == 3
    cache.apply(1, {})  # another generation: everything goes
    assert len(cache) == 0 and cache.lookup([key("anonymous_id", "a2999")]).owner.tolist() == [-1]
