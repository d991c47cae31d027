"""The import driver stores a chunk in several ``store_events`` batches without changing
what is stored: events, people and the merges between them."""

from __future__ import annotations

from pathlib import Path

import orjson
import sqlalchemy as sa

from tests.conftest import make_stores
from zhiying.clock import ManualClock
from zhiying.identity.resolver import partition
from zhiying.ingest.bulk import import_file
from zhiying.runtime import Stores
from zhiying.store.tables import identifiers


def _stream(path: Path) -> Path:
    messages = []
    for i in range(300):
        user = f"u{i % 40}" if i % 3 else None
        messages.append(
            {
                "type": "identify" if i % 7 == 0 else "track",
                "event": None if i % 7 == 0 else "Product Viewed",
                "userId": user,
                "anonymousId": f"a{(i * 13) % 70}",
                "messageId": f"m{i}",
                "timestamp": f"2026-10-01T{8 + i // 60:02d}:{i % 60:02d}:00Z",  # in file order
            }
        )
    path.write_bytes(b"\n".join(orjson.dumps({k: v for k, v in m.items() if v}) for m in messages))
    return path


def _people(stores: Stores) -> frozenset[frozenset[tuple[str, str]]]:
    with stores.engine.connect() as conn:
        rows = conn.execute(
            sa.select(identifiers.c.kind, identifiers.c.value, identifiers.c.one_id)
        )
        return partition({(k, v): o for k, v, o in rows})


def test_small_store_batches_store_the_same_events_and_people_as_one_batch(
    tmp_path: Path, clock: ManualClock
) -> None:
    src = _stream(tmp_path / "events.jsonl")
    one = make_stores(tmp_path / "one", clock)
    many = make_stores(tmp_path / "many", clock)
    try:
        whole = import_file(one, src)
        split = import_file(many, src, store_batch=23)
        assert (split.inserted, split.rejected) == (whole.inserted, whole.rejected) == (300, 0)
        assert split.merges == whole.merges and split.conflicts >= whole.conflicts > 0
        assert _people(many) == _people(one)
        count = "SELECT count(*) AS n FROM events WHERE one_id IS NOT NULL"
        assert many.warehouse.query(count).to_pylist() == one.warehouse.query(count).to_pylist()
    finally:
        one.close()
        many.close()
