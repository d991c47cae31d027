"""Person keys: every stored row of a person carries one integer key, minted once, never reused."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
import sqlalchemy as sa

from tests.conftest import make_stores
from tests.identity.events import ev, table
from zhiying.clock import ManualClock
from zhiying.ingest.person_keys import PersonKeys, backfill
from zhiying.ingest.pipeline import store_events
from zhiying.runtime import Stores
from zhiying.store.tables import key_blocks, person_keys
from zhiying.warehouse.base import WarehouseError
from zhiying.warehouse.events import append_events
from zhiying.warehouse.schema import EVENTS


def _rows(stores: Stores, sql: str) -> list[dict[str, Any]]:
    return list(stores.warehouse.query(sql).to_pylist())


def _ops_keys(stores: Stores) -> dict[str, int]:
    with stores.engine.connect() as conn:
        return {str(o): int(k) for o, k in conn.execute(sa.select(person_keys)).all()}


def _batch_two_people() -> pa.Table:
    return table(
        [
            ev("m1", anonymous_id="d1", minute=0),
            ev("m2", "identify", user_id="u1", minute=1, traits={"city": "Beijing"}),
            ev("m3", user_id="u1", minute=2),
            ev("m4", anonymous_id="d1", minute=3),
        ]
    )


def test_every_event_and_trait_row_carries_the_key_of_its_one_id(ops_stores: Stores) -> None:
    store_events(ops_stores, _batch_two_people())

    events = _rows(ops_stores, "SELECT message_id, one_id, person_key FROM events")
    by_message = {r["message_id"]: r for r in events}
    assert all(r["person_key"] is not None for r in events)
    assert by_message["m1"]["person_key"] == by_message["m4"]["person_key"]
    assert by_message["m2"]["person_key"] == by_message["m3"]["person_key"]
    assert by_message["m1"]["person_key"] != by_message["m2"]["person_key"]

    ops = _ops_keys(ops_stores)
    assert {r["one_id"]: r["person_key"] for r in events} == ops
    dictionary = _rows(ops_stores, "SELECT person_key, one_id FROM person_keys")
    assert {r["one_id"]: r["person_key"] for r in dictionary} == ops
    assert len(dictionary) == len(ops)

    traits = _rows(ops_stores, "SELECT one_id, person_key FROM trait_updates")
    assert traits and all(r["person_key"] == ops[r["one_id"]] for r in traits)


def test_a_known_one_id_keeps_its_key_in_later_batches(ops_stores: Stores) -> None:
    store_events(ops_stores, _batch_two_people())
    first = _ops_keys(ops_stores)
    store_events(ops_stores, table([ev("m5", user_id="u1", minute=5)]))

    row = _rows(ops_stores, "SELECT one_id, person_key FROM events WHERE message_id = 'm5'")[0]
    assert row["person_key"] == first[row["one_id"]]
    assert _ops_keys(ops_stores) == first
    assert len(_rows(ops_stores, "SELECT * FROM person_keys")) == len(first)


def test_a_merge_points_the_merged_key_at_the_owners_key(wh_stores: Stores) -> None:
    store_events(wh_stores, table([ev("m1", anonymous_id="d1"), ev("m2", user_id="u1")]))
    before = _ops_keys(wh_stores)
    assert len(before) == 2

    store_events(
        wh_stores, table([ev("m3", "identify", user_id="u1", anonymous_id="d1", minute=5)])
    )

    aliases = _rows(wh_stores, "SELECT alias, one_id, alias_key, person_key FROM one_id_aliases")
    assert len(aliases) == 1
    alias = aliases[0]
    assert alias["alias_key"] == before[alias["alias"]]
    assert alias["person_key"] == before[alias["one_id"]]
    # Every event resolves, by key alone, to the owner's key.
    resolved = _rows(
        wh_stores,
        "SELECT DISTINCT coalesce(a.person_key, e.person_key) AS k FROM events AS e "
        "LEFT JOIN one_id_aliases AS a ON a.alias_key = e.person_key",
    )
    assert [r["k"] for r in resolved] == [alias["person_key"]]


def test_a_rolled_back_batch_never_hands_its_numbers_to_anyone_else(stores: Stores) -> None:
    store_events(stores, table([ev("m1", anonymous_id="d1"), ev("m2", user_id="u1")]))
    merge_and_new = table(
        [
            ev("m3", "identify", user_id="u1", anonymous_id="d1", minute=5),
            ev("m4", user_id="u2", minute=6),
        ]
    )
    # The alias write fails after u2's key was minted and written to the dictionary.
    stores.warehouse.execute("ALTER TABLE one_id_aliases RENAME TO aliases_away")
    with pytest.raises(WarehouseError):
        store_events(stores, merge_and_new)
    assert len(_ops_keys(stores)) == 2  # u2's key rolled back with the transaction
    dictionary = {r["person_key"] for r in _rows(stores, "SELECT person_key FROM person_keys")}
    orphans = dictionary - set(_ops_keys(stores).values())
    assert len(orphans) == 1  # written before the commit that failed, naming no event

    stores.warehouse.execute("ALTER TABLE aliases_away RENAME TO one_id_aliases")
    store_events(stores, merge_and_new)

    committed = set(_ops_keys(stores).values())
    assert len(committed) == 3 and not committed & orphans
    carried = {r["person_key"] for r in _rows(stores, "SELECT person_key FROM events")}
    assert carried <= committed and not carried & orphans


def test_processes_minting_the_same_one_ids_at_once_agree_on_one_key_each(
    ops_stores: Stores,
) -> None:
    one_ids = pa.array([f"u_{i:04d}" for i in range(300)], pa.string())
    results: list[dict[str, int]] = []
    errors: list[BaseException] = []

    def mint() -> None:
        keys = PersonKeys()  # a process of its own: its own pool and map
        try:
            keys.reserve(ops_stores.engine, len(one_ids))
            with ops_stores.engine.begin() as conn:
                assigned = keys.assign(conn, one_ids)
            results.append(dict(zip(one_ids.to_pylist(), assigned.keys.to_pylist(), strict=True)))
        except BaseException as exc:  # SQLite: a writer may time out; report, do not hide
            errors.append(exc)

    threads = [threading.Thread(target=mint) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert not errors
    stored = _ops_keys(ops_stores)
    assert len(stored) == 300 and len(set(stored.values())) == 300
    assert all(result == stored for result in results)


def test_reserved_blocks_never_overlap(ops_stores: Stores) -> None:
    a, b = PersonKeys(), PersonKeys()
    a.reserve(ops_stores.engine, 10)
    b.reserve(ops_stores.engine, 10)
    with ops_stores.engine.begin() as conn:
        ka = a.assign(conn, pa.array(["u_a"])).keys.to_pylist()
        kb = b.assign(conn, pa.array(["u_b"])).keys.to_pylist()
        nxt = conn.execute(sa.select(key_blocks.c.next_value)).scalar_one()
    assert ka != kb
    assert max(ka + kb) < nxt


def test_assign_without_a_reserve_is_refused() -> None:
    keys = PersonKeys()
    with pytest.raises(RuntimeError, match="reserve"):
        keys._take(1)


def test_append_events_takes_the_key_from_the_dictionary(wh_stores: Stores) -> None:
    store_events(wh_stores, table([ev("m1", user_id="u1")]))
    owner = _rows(wh_stores, "SELECT one_id, person_key FROM events")[0]
    extra = table([ev("c1", event="Coupon Issued"), ev("c2", event="Coupon Issued")])
    extra = extra.set_column(
        EVENTS.get_field_index("one_id"),
        EVENTS.field("one_id"),
        pa.array([owner["one_id"], "u_never_stored"]),
    )
    assert append_events(wh_stores.warehouse, extra, wh_stores.clock.now()) == 2

    rows = {
        r["message_id"]: r["person_key"]
        for r in _rows(wh_stores, "SELECT message_id, person_key FROM events")
    }
    assert rows["c1"] == owner["person_key"]
    assert rows["c2"] is None


def test_opening_an_older_warehouse_adds_the_columns_and_keys_its_rows(
    tmp_path: Path, clock: ManualClock, warehouse_url: str
) -> None:
    stores = make_stores(tmp_path, clock, warehouse_url=warehouse_url)
    store_events(stores, _batch_two_people())
    store_events(stores, table([ev("m9", "identify", user_id="u1", anonymous_id="d1")]))
    expected = {
        r["message_id"]: r["person_key"]
        for r in _rows(stores, "SELECT message_id, person_key FROM events")
    }
    wh = stores.warehouse
    # What an older version left: no key columns, no dictionary, no operational keys.
    for name, columns in (
        ("events", ["person_key"]),
        ("trait_updates", ["person_key"]),
        ("one_id_aliases", ["alias_key", "person_key"]),
    ):
        for column in columns:
            wh.execute(f"ALTER TABLE {name} DROP COLUMN {column}")
    wh.execute("DROP TABLE person_keys")
    with stores.engine.begin() as conn:
        conn.execute(sa.delete(person_keys))
    stores.close()

    reopened = make_stores(tmp_path, clock, warehouse_url=warehouse_url)
    try:
        ops = _ops_keys(reopened)
        events = _rows(reopened, "SELECT message_id, one_id, person_key FROM events")
        assert len(events) == len(expected)
        assert all(r["person_key"] == ops[r["one_id"]] for r in events)
        traits = _rows(reopened, "SELECT one_id, person_key FROM trait_updates")
        assert traits and all(r["person_key"] == ops[r["one_id"]] for r in traits)
        aliases = _rows(reopened, "SELECT * FROM one_id_aliases")
        assert aliases
        assert all(
            r["alias_key"] == ops[r["alias"]] and r["person_key"] == ops[r["one_id"]]
            for r in aliases
        )
        # Nothing left to do the second time.
        assert backfill(reopened.engine, reopened.warehouse) == 0
    finally:
        reopened.close()


def test_db_upgrade_brings_an_older_warehouse_up_to_date(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from zhiying.cli.main import app
    from zhiying.config import Settings, get_settings
    from zhiying.runtime import open_stores

    data = tmp_path / "data"
    for name in ("ZHIYING_DATABASE_URL", "ZHIYING_WAREHOUSE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ZHIYING_DATA_DIR", str(data))
    get_settings.cache_clear()
    stores = open_stores(Settings(data_dir=data))
    store_events(stores, _batch_two_people())
    stores.warehouse.execute("ALTER TABLE events DROP COLUMN person_key")
    stores.close()

    result = CliRunner().invoke(app, ["db", "upgrade"])

    assert result.exit_code == 0, result.output
    assert "rows of 2 ONE_IDs given their person keys" in result.output
    reopened = open_stores(Settings(data_dir=data), migrate=False)
    try:
        keyed = _rows(reopened, "SELECT count(person_key) AS n FROM events")[0]["n"]
        assert keyed == 4
    finally:
        reopened.close()
        get_settings.cache_clear()
