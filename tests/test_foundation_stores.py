"""The stores open, migrate and keep what they are given, on every backend."""

from __future__ import annotations

from datetime import UTC, datetime

import pyarrow as pa
import sqlalchemy as sa

from zhiying.keys.service import create_key, verify_key
from zhiying.runtime import Stores
from zhiying.warehouse.events import RESOLVED_EVENTS_SQL, append_events, replace_aliases
from zhiying.warehouse.schema import EVENTS


def test_created_key_verifies_and_only_its_hash_is_stored(ops_stores: Stores) -> None:
    key = create_key(ops_stores.engine, "write", ops_stores.clock.now(), "app")
    found = verify_key(ops_stores.engine, key)
    assert found is not None and found.kind == "write"
    with ops_stores.engine.connect() as conn:
        stored = conn.execute(sa.text("SELECT key_hash FROM api_keys")).scalars().all()
    assert key not in stored and len(stored) == 1
    assert verify_key(ops_stores.engine, key + "x") is None


def _event(message_id: str, one_id: str) -> dict[str, object]:
    at = datetime(2026, 11, 1, 9, 0)
    return {
        "message_id": message_id,
        "type": "track",
        "event": "Order Completed",
        "one_id": one_id,
        "timestamp": at,
        "received_at": at,
        "identifiers": [],
    }


def test_repeated_message_id_is_stored_once_and_aliases_move_events(wh_stores: Stores) -> None:
    wh = wh_stores.warehouse
    batch = pa.Table.from_pylist(
        [_event("m1", "a"), _event("m1", "a"), _event("m2", "b")], schema=EVENTS
    )
    since = datetime(2026, 10, 1, tzinfo=UTC)
    assert append_events(wh, batch, since) == 2
    assert append_events(wh, batch, since) == 0
    replace_aliases(wh, [("a", "b")])
    rows = wh.query(
        f"SELECT person_id, count(*) AS n FROM ({RESOLVED_EVENTS_SQL}) r GROUP BY person_id"
    ).to_pylist()
    assert rows == [{"person_id": "b", "n": 2}]


def test_store_errors_do_not_carry_statement_parameters(ops_stores: Stores) -> None:
    phone = "+8613800000000"
    with ops_stores.engine.begin() as conn:
        conn.execute(
            sa.text("INSERT INTO traits (one_id, key, value, updated_at) VALUES (:o, :k, :v, :t)"),
            {"o": "u1", "k": "phone", "v": '"x"', "t": datetime(2026, 1, 1)},
        )
    try:
        with ops_stores.engine.begin() as conn:
            conn.execute(
                sa.text(
                    "INSERT INTO traits (one_id, key, value, updated_at) VALUES (:o, :k, :v, :t)"
                ),
                {"o": "u1", "k": "phone", "v": f'"{phone}"', "t": datetime(2026, 1, 1)},
            )
    except sa.exc.IntegrityError as exc:
        assert phone not in str(exc)
    else:
        raise AssertionError("a duplicate primary key must fail")
