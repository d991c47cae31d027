"""Resolution against the operational store, on SQLite and PostgreSQL."""

from __future__ import annotations

import random
import re
from typing import Any

import pyarrow as pa
import pytest
import sqlalchemy as sa

from tests.identity.events import NOW, ev, table
from zhiying.errors import NotFound, ValidationFailed
from zhiying.identity.resolver import partition
from zhiying.identity.service import (
    Resolution,
    _mint_many,
    lookup,
    members,
    new_one_id,
    resolve_events,
)
from zhiying.runtime import Stores
from zhiying.store.tables import identifiers, identity_conflicts, merges, one_ids


def resolve(stores: Stores, rows: list[dict[str, Any]]) -> Resolution:
    with stores.engine.begin() as conn:
        return resolve_events(conn, table(rows), NOW)


def ids_of(r: Resolution) -> list[str | None]:
    return list(r.one_ids.to_pylist())


def stored_partition(stores: Stores) -> frozenset[frozenset[tuple[str, str]]]:
    with stores.engine.connect() as conn:
        rows = conn.execute(
            sa.select(identifiers.c.kind, identifiers.c.value, identifiers.c.one_id)
        )
        return partition({(k, v): o for k, v, o in rows})


def test_one_id_format_is_short_and_random() -> None:
    a, b = new_one_id(), new_one_id()
    assert a != b and a.startswith("u_") and len(a) == 22 and a[2:].isalnum()


def test_one_ids_minted_in_bulk_have_the_same_form_and_use_every_character() -> None:
    minted = _mint_many(5000)
    assert len(set(minted)) == 5000
    assert all(re.fullmatch(r"u_[a-z2-7]{20}", one_id) for one_id in minted)
    assert set("".join(minted)[2::22]) == set("abcdefghijklmnopqrstuvwxyz234567")


def test_batch_writes_one_ids_and_identifiers_with_first_and_last_seen(ops_stores: Stores) -> None:
    r = resolve(
        ops_stores,
        [
            ev("m1", anonymous_id="a1", minute=0),
            ev("m2", anonymous_id="a1", minute=1),
            ev(
                "m3",
                "identify",
                user_id="u1",
                anonymous_id="a1",
                minute=2,
                ids={"phone": "+8613800000000"},
            ),
            ev("m4", user_id="u1", anonymous_id="a1", minute=9),
            ev("m5", anonymous_id="other", minute=3),
        ],
    )
    got = ids_of(r)
    assert len(set(got[:4])) == 1 and got[4] != got[0]
    assert (r.merges, r.conflicts, r.aliases) == (0, 0, [])
    with ops_stores.engine.connect() as conn:
        a1 = conn.execute(sa.select(identifiers).where(identifiers.c.value == "a1")).one()
        assert (a1.one_id, a1.first_seen.minute, a1.last_seen.minute) == (got[0], 0, 9)
        assert conn.execute(sa.select(sa.func.count()).select_from(one_ids)).scalar() == 2


def test_device_that_logs_in_later_is_merged_and_its_one_id_returned_as_alias(
    ops_stores: Stores,
) -> None:
    (user,) = set(ids_of(resolve(ops_stores, [ev("m1", user_id="u1", anonymous_id="app")])))
    (device,) = ids_of(resolve(ops_stores, [ev("m2", anonymous_id="web", minute=5)]))
    r = resolve(ops_stores, [ev("m3", "identify", user_id="u1", anonymous_id="web", minute=6)])
    assert ids_of(r) == [user]
    assert r.aliases == [(device, user)] and r.merges == 1
    with ops_stores.engine.connect() as conn:
        m = conn.execute(sa.select(merges)).one()
        assert (m.winner, m.loser, m.kind, m.value, m.message_id) == (
            user,
            device,
            "anonymous_id",
            "web",
            "m3",
        )
        assert members(conn, device) == [user, device]
        assert lookup(conn, "anonymous_id:web") == user


def test_aliases_are_transitively_closed_across_batches(ops_stores: Stores) -> None:
    first = resolve(
        ops_stores,
        [
            ev("m0", user_id="u1", minute=0),
            ev("m1", anonymous_id="a2", ids={"device_id": "d"}, minute=1),
            ev("m2", anonymous_id="a1", minute=2),
            ev("m3", anonymous_id="a1", ids={"device_id": "d"}, minute=3),
        ],
    )
    user, b, b_again, _ = ids_of(first)
    ((a, winner),) = first.aliases
    # No user id on either side: the older one wins, and rows get the current owner.
    assert winner == b == b_again and a not in (user, b)
    second = resolve(ops_stores, [ev("m4", user_id="u1", anonymous_id="a2", minute=4)])
    assert sorted(second.aliases) == sorted([(a, user), (b, user)])
    with ops_stores.engine.connect() as conn:
        assert sorted(members(conn, a)) == sorted([user, a, b])
        merged_into = dict(conn.execute(sa.select(one_ids.c.one_id, one_ids.c.merged_into)).all())
        assert merged_into == {user: None, a: user, b: user}
        owners = set(conn.execute(sa.select(identifiers.c.one_id)).scalars())
        assert owners == {user}


def test_shared_device_conflict_is_recorded_once_and_the_event_goes_to_its_user(
    ops_stores: Stores,
) -> None:
    alice = ids_of(resolve(ops_stores, [ev("m1", user_id="alice", ids={"device_id": "pad"})]))[0]
    rows = [ev("m2", user_id="bob", ids={"device_id": "pad"}, minute=1)]
    bob = ids_of(resolve(ops_stores, rows))[0]
    again = resolve(ops_stores, [ev("m3", user_id="bob", ids={"device_id": "pad"}, minute=2)])
    assert bob != alice and ids_of(again) == [bob] and again.conflicts == 1
    with ops_stores.engine.connect() as conn:
        (c,) = conn.execute(sa.select(identity_conflicts)).all()
        assert (c.one_id, c.other_one_id, c.kind, c.value, c.rule, c.message_id) == (
            bob,
            alice,
            "device_id",
            "pad",
            "one_user_id",
            "m2",
        )
        assert lookup(conn, "device_id:pad") == alice
        assert conn.execute(sa.select(sa.func.count()).select_from(merges)).scalar() == 0


def test_resolving_the_same_batch_again_changes_nothing(ops_stores: Stores) -> None:
    rows = [
        ev("m1", anonymous_id="web", minute=0),
        ev("m0", user_id="u1", anonymous_id="app", minute=-5),
        ev("m2", "identify", user_id="u1", anonymous_id="web", minute=1),
        ev("m3", user_id="u2", anonymous_id="web", minute=2),
    ]
    first = resolve(ops_stores, rows)
    before = stored_partition(ops_stores)
    second = resolve(ops_stores, rows)
    assert ids_of(second) == ids_of(first)
    assert second.merges == 0 and stored_partition(ops_stores) == before
    with ops_stores.engine.connect() as conn:
        assert (
            conn.execute(sa.select(sa.func.count()).select_from(identity_conflicts)).scalar() == 1
        )


def _stream(n_users: int, seed: int) -> list[dict[str, Any]]:
    rnd = random.Random(seed)
    rows: list[dict[str, Any]] = []
    for u in range(n_users):
        start = rnd.randint(0, 500)
        anon = f"anon-{u}"
        for k in range(rnd.randint(0, 3)):
            rows.append(ev(f"{u}-pre{k}", anonymous_id=anon, minute=start + k))
        ids = {"phone": f"+86138{rnd.randint(0, n_users // 2):08d}"} if rnd.random() < 0.5 else {}
        if rnd.random() < 0.2:
            ids["device_id"] = f"shared-{rnd.randint(0, 3)}"
        rows.append(
            ev(
                f"{u}-id",
                "identify",
                user_id=f"user-{u}",
                anonymous_id=anon,
                ids=ids,
                minute=start + 5,
            )
        )
        for k in range(rnd.randint(0, 3)):
            rows.append(
                ev(f"{u}-post{k}", user_id=f"user-{u}", anonymous_id=anon, minute=start + 6 + k)
            )
    rows.sort(key=lambda r: r["timestamp"])
    return rows


def test_cutting_a_stream_into_batches_gives_the_same_partition(
    ops_stores: Stores, tmp_path: Any, clock: Any
) -> None:
    from tests.conftest import make_stores

    rows = _stream(120, seed=7)
    resolve(ops_stores, rows)
    whole = stored_partition(ops_stores)
    other = make_stores(tmp_path / "split", clock)
    try:
        for start in range(0, len(rows), 37):
            resolve(other, rows[start : start + 37])
        assert stored_partition(other) == whole
    finally:
        other.close()
    assert any(len(group) > 2 for group in whole)


def test_a_large_batch_takes_a_few_statements_not_one_per_event(ops_stores: Stores) -> None:
    rows = _stream(600, seed=3)
    statements: list[str] = []

    def count(*args: Any) -> None:
        statements.append(args[2])

    sa.event.listen(ops_stores.engine, "before_cursor_execute", count)
    try:
        r = resolve(ops_stores, rows)
    finally:
        sa.event.remove(ops_stores.engine, "before_cursor_execute", count)
    assert len(rows) > 1500 and r.one_ids.null_count == 0
    assert len(statements) <= 15, statements


def test_lookup_names_the_missing_identifier_and_rejects_malformed_refs(
    ops_stores: Stores,
) -> None:
    (owner,) = ids_of(
        resolve(ops_stores, [ev("m1", user_id="42", ids={"phone": "+8613800000000"})])
    )
    with ops_stores.engine.connect() as conn:
        assert lookup(conn, "phone:138 0000 0000") == owner  # normalised like at ingest
        assert lookup(conn, owner) == owner
        with pytest.raises(NotFound, match="user_id 43"):
            lookup(conn, "user_id:43")
        with pytest.raises(NotFound, match="u_nobody"):
            lookup(conn, "u_nobody")
        with pytest.raises(ValidationFailed):
            lookup(conn, "phone:not-a-number")


def test_rows_without_identifiers_get_no_one_id(ops_stores: Stores) -> None:
    r = resolve(ops_stores, [ev("m1"), ev("m2", anonymous_id="a")])
    assert r.one_ids.null_count == 1 and r.one_ids[0].as_py() is None


def test_empty_batch_resolves_to_nothing(ops_stores: Stores) -> None:
    with ops_stores.engine.begin() as conn:
        r = resolve_events(conn, table([]), NOW)
    assert len(r.one_ids) == 0 and r.one_ids.type == pa.string()


def test_identifiers_seen_again_get_their_last_seen_moved_in_bulk(ops_stores: Stores) -> None:
    users = range(300)
    resolve(ops_stores, [ev(f"a{u}", user_id=f"u{u}", anonymous_id=f"d{u}") for u in users])
    later = resolve(
        ops_stores, [ev(f"b{u}", user_id=f"u{u}", anonymous_id=f"d{u}", minute=90) for u in users]
    )
    assert later.merges == 0
    with ops_stores.engine.connect() as conn:
        spans = conn.execute(
            sa.select(identifiers.c.first_seen, identifiers.c.last_seen).distinct()
        ).all()
    assert [(f.minute, (last - f).total_seconds()) for f, last in spans] == [(0, 5400.0)]
