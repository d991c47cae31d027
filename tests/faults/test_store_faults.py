"""Faults injected into real stores while events are stored: nothing half-done survives a retry.

Each test takes one store away at a different step of ``store_events`` (by
renaming a real table, so the failure is the store's own error), checks what
the contract in ``zhiying.ingest.pipeline`` says is left behind, puts the table
back and retries the same messageIds, as a Segment client does after a 5xx.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from tests.identity.events import T0, ev, table
from tests.ingest.conftest import basic, track
from zhiying.api.app import create_app
from zhiying.clock import ManualClock
from zhiying.ingest.pipeline import store_events
from zhiying.keys.service import create_key
from zhiying.runtime import Stores
from zhiying.store.tables import identifiers, one_ids, traits
from zhiying.warehouse.base import WarehouseError
from zhiying.warehouse.events import RESOLVED_EVENTS_SQL

# The store's own error: SQLAlchemy-wrapped, or raw DBAPI where a path uses the driver directly.
_DB_ERRORS = (sa.exc.DBAPIError, sqlite3.DatabaseError, psycopg.Error)


def _batch() -> Any:
    return table(
        [
            ev("m1", anonymous_id="web", minute=0),
            ev(
                "m2",
                "identify",
                user_id="u1",
                anonymous_id="web",
                minute=1,
                traits={"city": "Beijing"},
            ),
            ev("m3", user_id="u1", minute=2),
            ev(
                "m4",
                "identify",
                user_id="u2",
                ids={"phone": "+8613800000002"},
                minute=3,
                traits={"city": "Shanghai"},
            ),
        ]
    )


def _events(stores: Stores) -> int:
    return int(stores.warehouse.query("SELECT count(*) AS n FROM events").column("n")[0].as_py())


def _people(stores: Stores) -> int:
    got = stores.warehouse.query(
        f"SELECT count(DISTINCT person_id) AS n FROM ({RESOLVED_EVENTS_SQL})"
    )
    return int(got.column("n")[0].as_py())


def _count(stores: Stores, t: sa.Table) -> int:
    with stores.engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(t)).scalar_one())


def _ops_rename(stores: Stores, old: str, new: str) -> None:
    with stores.engine.begin() as conn:
        conn.exec_driver_sql(f"ALTER TABLE {old} RENAME TO {new}")


def _latest_city(stores: Stores, user: str) -> str | None:
    with stores.engine.connect() as conn:
        owner = conn.execute(
            sa.select(identifiers.c.one_id).where(
                identifiers.c.kind == "user_id", identifiers.c.value == user
            )
        ).scalar_one()
        value = conn.execute(
            sa.select(traits.c.value).where(traits.c.one_id == owner, traits.c.key == "city")
        ).scalar_one_or_none()
    return None if value is None else str(value).strip('"')


def test_event_append_failure_leaves_no_events_and_the_retry_stores_each_once(
    ops_stores: Stores,
) -> None:
    stores = ops_stores
    stores.warehouse.execute("ALTER TABLE events RENAME TO events_away")
    with pytest.raises(WarehouseError):
        store_events(stores, _batch())
    stores.warehouse.execute("ALTER TABLE events_away RENAME TO events")
    assert _events(stores) == 0

    retry = store_events(stores, _batch())
    assert (retry.inserted, retry.duplicates) == (4, 0)
    assert _count(stores, one_ids) == 2  # whatever the failed attempt committed, no one twice
    assert (_events(stores), _people(stores)) == (4, 2)
    again = store_events(stores, _batch())
    assert (again.inserted, again.duplicates, _events(stores)) == (0, 4, 4)
    assert _latest_city(stores, "u1") == "Beijing"


def test_trait_history_failure_is_retried_without_double_events(ops_stores: Stores) -> None:
    stores = ops_stores
    stores.warehouse.execute("ALTER TABLE trait_updates RENAME TO trait_updates_away")
    with pytest.raises(WarehouseError):
        store_events(stores, _batch())
    stores.warehouse.execute("ALTER TABLE trait_updates_away RENAME TO trait_updates")
    assert _events(stores) == 0
    retry = store_events(stores, _batch())
    assert retry.inserted == 4 and _events(stores) == 4
    cities = (
        stores.warehouse.query("SELECT count(*) AS n FROM trait_updates WHERE key = 'city'")
        .column("n")[0]
        .as_py()
    )
    assert cities == 2


def test_operational_failure_rolls_identity_back_and_the_retry_mints_fresh_one_ids(
    ops_stores: Stores,
) -> None:
    stores = ops_stores
    _ops_rename(stores, "traits", "traits_away")
    with pytest.raises(_DB_ERRORS):
        store_events(stores, _batch())
    _ops_rename(stores, "traits_away", "traits")
    # The whole operational transaction rolled back, and the process's identifier
    # cache did not keep ONE_IDs that were never committed.
    assert (_count(stores, one_ids), _count(stores, identifiers), _events(stores)) == (0, 0, 0)

    retry = store_events(stores, _batch())
    assert retry.inserted == 4
    assert _count(stores, one_ids) == 2
    with stores.engine.connect() as conn:
        owners = set(conn.execute(sa.select(identifiers.c.one_id)).scalars())
    stored = stores.warehouse.query("SELECT DISTINCT one_id FROM events")
    assert set(stored.column("one_id").to_pylist()) <= owners
    assert _latest_city(stores, "u2") == "Shanghai"


@pytest.fixture(autouse=True)
def _receipt_time(clock: ManualClock) -> None:
    """Now is just after the batch was received, so its messageIds are in the dedup window."""
    clock.set(T0.replace(tzinfo=UTC) + timedelta(hours=1))


@pytest.fixture
def client(stores: Stores) -> Iterator[TestClient]:
    # The writer's direct mode (answers after storing). In spool mode a 200 means
    # spooled and a failing store is retried: tests/ingest/test_spool.py.
    direct = replace(stores, settings=stores.settings.model_copy(update={"ingest_spool": False}))
    with TestClient(create_app(direct)) as c:
        yield c


def test_http_batch_answers_503_when_storing_fails_and_the_client_retry_lands_once(
    stores: Stores, client: TestClient, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    clock.set(datetime(2026, 11, 1, 9, 0, tzinfo=UTC))  # the messages are from 08:59
    key = create_key(stores.engine, "write", stores.clock.now(), "app")
    body = {"batch": [track(f"h{i}", user_id=f"u{i % 3}") for i in range(10)]}
    stores.warehouse.execute("ALTER TABLE events RENAME TO events_away")
    failed = client.post("/v1/batch", json=body, headers=basic(key))
    assert failed.status_code == 503
    assert failed.headers["Retry-After"] == "1"
    # Logged with its type and frames, not the store's message (which can quote a row).
    assert "storing 10 events failed: WarehouseError" in caplog.text
    assert "does not exist" not in caplog.text  # DuckDB's message names what it failed on
    stores.warehouse.execute("ALTER TABLE events_away RENAME TO events")
    assert _events(stores) == 0

    ok = client.post("/v1/batch", json=body, headers=basic(key))
    assert ok.status_code == 200, ok.text
    assert _events(stores) == 10
    repeat = client.post("/v1/batch", json=body, headers=basic(key))
    assert repeat.status_code == 200 and _events(stores) == 10
