"""``store_event_batches``: each batch's append overlaps the next batch's staging, and
what it stores is what consecutive ``store_events`` calls store."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from tests.conftest import make_stores
from zhiying.clock import ManualClock
from zhiying.ingest import pipeline
from zhiying.ingest.models import BatchContext, rows_to_table, validate_batch
from zhiying.ingest.pipeline import store_event_batches, store_events
from zhiying.runtime import Stores


def _batches(stores: Stores, seed: int) -> list[pa.Table]:
    """Four batches of tracks and identifies from a few people, with messageIds
    repeated inside a batch, in the next batch (still being appended when it is
    staged) and two batches later."""
    rng = random.Random(seed)
    ids = [f"m{i}" for i in range(120)]
    out = []
    for b in range(4):
        messages: list[dict[str, Any]] = []
        for i in range(40):
            pool = ids[max(0, 30 * b - 30) : 30 * b + 30]  # overlaps the batches before
            mid = rng.choice(pool)
            user = f"u{rng.randrange(6)}"
            if rng.random() < 0.2:
                messages.append(
                    {
                        "type": "identify",
                        "messageId": mid,
                        "userId": user,
                        "anonymousId": f"d{rng.randrange(8)}",
                        "traits": {"n": i},
                    }
                )
            else:
                messages.append(
                    {
                        "type": "track",
                        "event": "E",
                        "messageId": mid,
                        "anonymousId": f"d{rng.randrange(8)}",
                    }
                )
        rows, rejected = validate_batch(
            messages, BatchContext(received_at=stores.clock.now(), source="test")
        )
        assert not rejected
        out.append(rows_to_table(rows))
    return out


def _stored(stores: Stores) -> list[tuple[Any, ...]]:
    rows = stores.warehouse.query(
        "SELECT message_id, type, anonymous_id FROM events ORDER BY message_id"
    ).to_pylist()
    return [tuple(r.values()) for r in rows]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_pipelined_batches_store_what_consecutive_calls_store(
    ops_stores: Stores, tmp_path: Path, clock: ManualClock, seed: int
) -> None:
    reference = make_stores(tmp_path / "reference", clock)
    try:
        want = [store_events(reference, b) for b in _batches(reference, seed)]
        want_rows = _stored(reference)
    finally:
        reference.close()
    got = list(store_event_batches(ops_stores, ((b, None) for b in _batches(ops_stores, seed))))
    assert [(r.inserted, r.duplicates) for r in got] == [(r.inserted, r.duplicates) for r in want]
    assert [r.stored.tolist() for r in got] == [r.stored.tolist() for r in want]
    assert sum(r.duplicates for r in got) > 0
    assert _stored(ops_stores) == want_rows
    ids = [m for m, *_ in want_rows]
    assert len(ids) == len(set(ids))


def test_a_failed_append_is_raised_and_no_later_batch_is_appended(
    stores: Stores, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = pipeline._append
    calls = [0]

    def fails_on_the_second(s: Stores, staged: Any) -> None:
        calls[0] += 1
        if calls[0] == 2:
            raise OSError("disk full")
        real(s, staged)

    monkeypatch.setattr(pipeline, "_append", fails_on_the_second)
    batches = _batches(stores, 5)
    results = store_event_batches(stores, ((b, None) for b in batches))
    first = next(results)
    with pytest.raises(OSError, match="disk full"):
        list(results)
    stored = stores.warehouse.query("SELECT count(*) AS n FROM events").column(0)[0].as_py()
    assert stored == first.inserted > 0
    assert calls[0] == 2
