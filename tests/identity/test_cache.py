"""The identifier cache of ``store_events`` (``identity.cache``) on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa

from tests.identity.events import NOW, T0, ev, table
from zhiying.identity.service import resolve_events
from zhiying.ingest.pipeline import identity_cache, store_events
from zhiying.runtime import Stores
from zhiying.store.engine import make_engine
from zhiying.store.tables import identifiers, identity_generation


def one_ids_of(stores: Stores, message_ids: list[str]) -> list[str]:
    quoted = ", ".join(f"'{m}'" for m in message_ids)
    rows = stores.warehouse.query(
        f"SELECT message_id, one_id FROM events WHERE message_id IN ({quoted})"
    ).to_pylist()
    by_id = {r["message_id"]: r["one_id"] for r in rows}
    return [by_id[m] for m in message_ids]


def owner_of(stores: Stores, kind: str, value: str) -> str:
    with stores.engine.connect() as conn:
        return str(
            conn.execute(
                sa.select(identifiers.c.one_id).where(
                    identifiers.c.kind == kind, identifiers.c.value == value
                )
            ).scalar_one()
        )


def test_a_merge_by_another_process_invalidates_the_cache(ops_stores: Stores) -> None:
    stores = ops_stores
    store_events(
        stores,
        table(
            [
                ev("m1", "identify", user_id="u1", anonymous_id="a1"),
                ev("m2", anonymous_id="a2", minute=1),
            ]
        ),
    )
    device = owner_of(stores, "anonymous_id", "a2")
    cache = identity_cache(stores.engine)
    assert cache.get(("anonymous_id", "a2")) is not None  # known people are now cached
    store_events(stores, table([ev("m3", anonymous_id="a2", minute=2)]))
    assert one_ids_of(stores, ["m3"]) == [device]

    # Another process (its own engine on the same database) links a2 to u1.
    other = make_engine(stores.engine.url.render_as_string(hide_password=False))
    try:
        with other.begin() as conn:
            merged = resolve_events(
                conn, table([ev("m4", "identify", user_id="u1", anonymous_id="a2", minute=3)]), NOW
            )
        assert merged.merges == 1
        with other.connect() as conn:
            assert conn.execute(sa.select(identity_generation.c.generation)).scalar_one() == 1
    finally:
        other.dispose()
    user = owner_of(stores, "user_id", "u1")
    assert owner_of(stores, "anonymous_id", "a2") == user != device

    # This process still caches a2 → device; the generation moved, so it must not use it.
    store_events(stores, table([ev("m5", anonymous_id="a2", minute=4)]))
    assert one_ids_of(stores, ["m5"]) == [user]


def last_seen(stores: Stores, value: str) -> datetime:
    with stores.engine.connect() as conn:
        at = conn.execute(
            sa.select(identifiers.c.last_seen).where(identifiers.c.value == value)
        ).scalar_one()
    assert isinstance(at, datetime)
    return at.replace(tzinfo=None)


def test_cached_people_move_last_seen_only_by_steps_of_an_hour(ops_stores: Stores) -> None:
    stores = ops_stores
    store_events(stores, table([ev("m1", "identify", user_id="u1", anonymous_id="a1")]))
    store_events(stores, table([ev("m2", user_id="u1", anonymous_id="a1", minute=30)]))
    assert last_seen(stores, "u1") == T0  # a cache hit 30 minutes later writes nothing
    store_events(stores, table([ev("m3", user_id="u1", anonymous_id="a1", minute=75)]))
    assert last_seen(stores, "u1") == T0.replace(hour=9, minute=15)
    assert len(set(one_ids_of(stores, ["m1", "m2", "m3"]))) == 1


def test_a_new_identifier_next_to_cached_ones_is_resolved_in_the_store(
    ops_stores: Stores,
) -> None:
    stores = ops_stores
    store_events(stores, table([ev("m1", "identify", user_id="u1", anonymous_id="a1")]))
    rows = [ev("m2", "identify", user_id="u1", anonymous_id="a1", ids={"phone": "+8613800138000"})]
    store_events(stores, table(rows))
    user = owner_of(stores, "user_id", "u1")
    assert owner_of(stores, "phone", "+8613800138000") == user
    assert one_ids_of(stores, ["m1", "m2"]) == [user, user]
