"""Traits: flattened from identify calls, current value per key kept in the store."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pyarrow as pa
import sqlalchemy as sa

from tests.identity.events import ev, table
from zhiying.profiles.service import traits_of, upsert_traits
from zhiying.profiles.traits import trait_updates
from zhiying.runtime import Stores
from zhiying.store.tables import traits
from zhiying.warehouse.schema import TRAIT_UPDATES


def test_identify_traits_are_flattened_one_level_with_numbers_typed() -> None:
    rows = [
        ev(
            "m1",
            "identify",
            user_id="u1",
            traits={
                "city": "Chongqing",
                "age": 31,
                "balance": 12.5,
                "vip": True,
                "code": "42",
                "address": {"street": "解放碑"},
                "cleared": None,
            },
        ),
        ev("m2", "track", user_id="u1", traits={"ignored": 1}),
        ev("m3", "identify", user_id="u2", traits={"no_one_id": 1}),
    ]
    events = table(rows)
    one_ids = pa.array(["o1", "o1", None], pa.string())
    events = events.set_column(events.schema.get_field_index("one_id"), "one_id", one_ids)
    out = trait_updates(events)
    assert out.schema == TRAIT_UPDATES
    got = {r["key"]: (r["value"], r["number"]) for r in out.to_pylist()}
    assert got == {
        "city": ("Chongqing", None),
        "age": ("31", 31.0),
        "balance": ("12.5", 12.5),
        "vip": ("true", None),
        "code": ("42", None),
        "address": ('{"street":"解放碑"}', None),
        "cleared": (None, None),
    }
    assert set(out.column("message_id").to_pylist()) == {"m1"}


def updates(rows: list[tuple[str, str, str | None, float | None, int]]) -> pa.Table:
    base = datetime(2026, 10, 1)
    return pa.Table.from_pylist(
        [
            {
                "one_id": o,
                "key": k,
                "value": v,
                "number": n,
                "timestamp": base + timedelta(minutes=m),
                "message_id": f"m{i}",
            }
            for i, (o, k, v, n, m) in enumerate(rows)
        ],
        schema=TRAIT_UPDATES,
    )


def current(stores: Stores) -> dict[tuple[str, str], Any]:
    with stores.engine.connect() as conn:
        return {(r.one_id, r.key): r.value for r in conn.execute(sa.select(traits))}


def test_newer_trait_wins_and_older_never_overwrites(ops_stores: Stores) -> None:
    with ops_stores.engine.begin() as conn:
        n = upsert_traits(
            conn,
            updates(
                [
                    ("o1", "city", "Beijing", None, 5),
                    ("o1", "city", "Chongqing", None, 9),  # latest in the batch
                    ("o1", "city", "Shanghai", None, 7),
                    ("o1", "age", "31", 31.0, 5),
                ]
            ),
        )
    assert n == 2
    assert current(ops_stores) == {("o1", "city"): "Chongqing", ("o1", "age"): 31}
    with ops_stores.engine.begin() as conn:
        upsert_traits(
            conn,
            updates([("o1", "city", "Harbin", None, 1), ("o1", "age", "32", 32.0, 10)]),
        )
    assert current(ops_stores) == {("o1", "city"): "Chongqing", ("o1", "age"): 32}


def test_profile_traits_come_from_every_merged_one_id_latest_wins(ops_stores: Stores) -> None:
    with ops_stores.engine.begin() as conn:
        upsert_traits(
            conn,
            updates(
                [
                    ("user", "city", "Beijing", None, 5),
                    ("device", "city", "Chongqing", None, 9),
                    ("device", "os", "iOS", None, 1),
                ]
            ),
        )
        got = {t.key: (t.value, t.one_id) for t in traits_of(conn, ["user", "device"])}
        assert got == {"city": ("Chongqing", "device"), "os": ("iOS", "device")}
        (city,) = [t for t in traits_of(conn, ["user"]) if t.key == "city"]
        assert city.updated_at == datetime(2026, 10, 1, 0, 5, tzinfo=UTC)


def _tied(rows: list[tuple[str, str]]) -> pa.Table:
    """``(message_id, city)`` updates of o1's city, all at the same instant."""
    at = datetime(2026, 10, 1, 12, 0)
    return pa.Table.from_pylist(
        [
            {"one_id": "o1", "key": "city", "value": v, "number": None, "timestamp": at,
             "message_id": m}
            for m, v in rows
        ],
        schema=TRAIT_UPDATES,
    )  # fmt: skip


def test_values_set_at_the_same_instant_resolve_by_message_id_not_arrival(
    ops_stores: Stores,
) -> None:
    # The greater message id wins whatever the order, inside a batch and across batches,
    # as the warehouse's latest-value readers order them.
    with ops_stores.engine.begin() as conn:
        upsert_traits(conn, _tied([("m-b", "Beijing"), ("m-a", "Chongqing")]))
    assert current(ops_stores) == {("o1", "city"): "Beijing"}
    with ops_stores.engine.begin() as conn:
        upsert_traits(conn, _tied([("m-a", "Chongqing")]))  # arrives later, loses the tie
    assert current(ops_stores) == {("o1", "city"): "Beijing"}
    with ops_stores.engine.begin() as conn:
        upsert_traits(conn, _tied([("m-c", "Harbin")]))
    assert current(ops_stores) == {("o1", "city"): "Harbin"}


def test_profile_ties_across_merged_one_ids_resolve_by_message_id(ops_stores: Stores) -> None:
    at = datetime(2026, 10, 1, 12, 0)
    rows = [("a-first", "zz", "Beijing"), ("z-last", "aa", "Chongqing")]
    table_ = pa.Table.from_pylist(
        [
            {"one_id": o, "key": "city", "value": v, "number": None, "timestamp": at,
             "message_id": m}
            for m, o, v in rows
        ],
        schema=TRAIT_UPDATES,
    )  # fmt: skip
    with ops_stores.engine.begin() as conn:
        upsert_traits(conn, table_)
        (city,) = traits_of(conn, ["zz", "aa"])
    assert (city.value, city.one_id) == ("Chongqing", "aa")
