"""A bulk import's store pass trusts the whole-file dedup only while nothing else could have
stored one of its messageIds: a repeated messageId is still stored once, whoever sent it.

``resolve_import`` deduplicates the file under the event-writer hold and marks that dedup;
``store_event_batches`` skips its own dedup for ``ImportBatch`` es carrying a mark that is
still exclusive (``warehouse.events.WriterHold``), and deduplicates them like any batch
otherwise (another append under the hold, the hold over, a warehouse other processes write).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pytest

from tests.conftest import make_stores
from zhiying.clock import ManualClock
from zhiying.ingest import bulk, pipeline
from zhiying.ingest.bulk import ImportIdentity, import_file, resolve_import
from zhiying.ingest.models import BatchContext, rows_to_table, validate_batch
from zhiying.ingest.pipeline import ImportBatch, StoreResult, store_event_batches, store_events
from zhiying.runtime import Stores
from zhiying.warehouse import events as wh_events
from zhiying.warehouse.events import _epoch_day, _hashes, _recent_ids, hold_event_writer


def _messages(ids: list[str], user: str = "u1") -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for n, mid in enumerate(ids):
        if n % 5 == 0:
            out.append({"type": "identify", "messageId": mid, "userId": user, "traits": {"n": n}})
        else:
            out.append({"type": "track", "event": "E", "messageId": mid, "anonymousId": f"a{n}"})
    return out


def _table(stores: Stores, ids: list[str], user: str = "u1") -> pa.Table:
    rows, rejected = validate_batch(
        _messages(ids, user), BatchContext(received_at=stores.clock.now(), source="test")
    )
    assert not rejected
    return rows_to_table(rows)


def _file(path: Path, ids: list[str]) -> Path:
    path.write_bytes(b"\n".join(orjson.dumps(m) for m in _messages(ids)) + b"\n")
    return path


def _stored_ids(stores: Stores) -> list[str]:
    table = stores.warehouse.query("SELECT message_id FROM events ORDER BY message_id")
    return [str(v) for v in table.column(0).to_pylist()]


def _import_batches(rows: pa.Table, identity: ImportIdentity, size: int) -> list[ImportBatch]:
    keys, hashes = identity.keys, identity.hashes
    return [
        ImportBatch(
            rows.slice(at, size),
            identity.one_ids.slice(at, size),
            None if keys is None else keys.slice(at, size),
            identity.mark,
            None if hashes is None else hashes[at : at + size],
        )
        for at in range(0, rows.num_rows, size)
    ]


class _CountDedups:
    """Counts the store pass's own dedups (``pipeline.unseen_rows``)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        real = pipeline.unseen_rows

        def counted(*args: Any) -> Any:
            self.calls += 1
            return real(*args)

        monkeypatch.setattr(pipeline, "unseen_rows", counted)


# Repeats inside the file (m3, m7 twice) and across its store batches.
FILE_IDS = [f"m{i}" for i in range(40)] + ["m3", "m7", "m7", "m39"]


def test_an_import_is_deduplicated_once_and_stores_each_message_id_once(
    ops_stores: Stores, tmp_path: Path, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bulk, "FIRST_STORE_BATCH", 4)  # several batches, a short first one
    dedups = _CountDedups(monkeypatch)
    store_events(ops_stores, _table(ops_stores, ["m5", "m6", "x1"]))  # stored before
    assert dedups.calls == 1
    report = import_file(ops_stores, _file(tmp_path / "a.jsonl", FILE_IDS), store_batch=9)
    assert dedups.calls == 1  # the store pass trusted resolve_import's dedup
    assert (report.inserted, report.duplicates) == (38, 6)
    assert _stored_ids(ops_stores) == sorted({*FILE_IDS, "x1"})
    # The stored ids are known to later dedups (their hashes came from resolve_import).
    again = store_events(ops_stores, _table(ops_stores, ["m0", "m20", "m39", "new"]))
    assert (again.inserted, again.duplicates) == (1, 3)


def test_an_http_writer_waits_for_the_import_and_its_repeats_are_dropped(
    stores: Stores, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An HTTP batch sent while the import stores (other thread, same process) waits for
    the event-writer lock; its dedup then sees every imported id."""
    monkeypatch.setattr(bulk, "FIRST_STORE_BATCH", 5)
    http_batch = _table(stores, ["m2", "m30", "h1"], user="u9")
    answers: list[StoreResult] = []
    started = threading.Event()
    sender = threading.Thread(
        target=lambda: (started.set(), answers.append(store_events(stores, http_batch)))
    )
    real = pipeline._append
    seen_waiting: list[bool] = []

    def append_with_a_sender(s: Stores, staged: Any) -> None:
        if not sender.is_alive() and not answers:
            sender.start()
            started.wait(5)
            sender.join(0.3)
            seen_waiting.append(sender.is_alive())  # blocked behind the import
        real(s, staged)

    monkeypatch.setattr(pipeline, "_append", append_with_a_sender)
    report = import_file(stores, _file(tmp_path / "a.jsonl", FILE_IDS), store_batch=10)
    sender.join(10)
    assert seen_waiting == [True]
    assert report.inserted == 40
    assert [(a.inserted, a.duplicates) for a in answers] == [(1, 2)]
    assert _stored_ids(stores) == sorted({*FILE_IDS, "h1"})


@pytest.mark.parametrize("other", ["store_events", "append_events"])
def test_a_write_after_the_whole_file_dedup_makes_the_store_pass_deduplicate_again(
    stores: Stores, clock: ManualClock, monkeypatch: pytest.MonkeyPatch, other: str
) -> None:
    """Under the same hold (same thread), rows appended by another writer after the
    file's dedup void its mark: the batches are deduplicated like any other."""
    dedups = _CountDedups(monkeypatch)
    rows = _table(stores, FILE_IDS)
    with hold_event_writer():
        identity = resolve_import(stores, rows)
        assert identity.mark is not None and identity.mark.hold.exclusive(identity.mark)
        late = _table(stores, ["m1", "m12", "m40"], user="u5")
        if other == "store_events":
            store_events(stores, late)
        else:
            since = clock.now().replace(tzinfo=None)
            wh_events.append_events(stores.warehouse, late, since)
        assert not identity.mark.hold.exclusive(identity.mark)
        calls = dedups.calls
        results = list(store_event_batches(stores, _import_batches(rows, identity, 10)))
    assert dedups.calls - calls == len(results) == 5
    assert sum(r.inserted for r in results) == 38
    assert _stored_ids(stores) == sorted({*FILE_IDS, "m40"})


def test_a_dedup_made_outside_the_store_pass_hold_is_not_trusted(
    stores: Stores, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``resolve_import`` on its own ends its hold on return: an HTTP batch may be stored
    before the store pass takes the lock again, so that pass deduplicates again."""
    dedups = _CountDedups(monkeypatch)
    rows = _table(stores, FILE_IDS)
    identity = resolve_import(stores, rows)
    assert identity.mark is not None and not identity.mark.hold.active
    store_events(stores, _table(stores, ["m3", "m25", "h1"], user="u5"))  # meanwhile, HTTP
    calls = dedups.calls
    results = list(store_event_batches(stores, _import_batches(rows, identity, 15)))
    assert dedups.calls - calls == 3
    assert sum(r.inserted for r in results) == 38
    assert _stored_ids(stores) == sorted({*FILE_IDS, "h1"})


def test_a_warehouse_other_processes_write_is_deduplicated_again(
    stores: Stores, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a ClickHouse server (not this process's alone) the mark is never trusted."""
    monkeypatch.setattr(pipeline, "single_writer", lambda warehouse: False)
    dedups = _CountDedups(monkeypatch)
    report = import_file(stores, _file(tmp_path / "a.jsonl", FILE_IDS), store_batch=20)
    assert dedups.calls == 3
    assert (report.inserted, report.duplicates) == (40, 4)
    assert _stored_ids(stores) == sorted(set(FILE_IDS))


def test_a_trusted_batch_after_an_untrusted_one_is_checked_against_it_in_flight(
    stores: Stores, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A plain batch still being appended may hold the import's ids: the next, trusted
    batch is checked against it (the mark is only voided once that append returns)."""
    real_append, real_stage = pipeline._append, pipeline._stage_deduplicated
    staged_while_appending: list[bool] = []
    appending = threading.Event()
    trusted_staged = threading.Event()

    def slow_append(s: Stores, staged: Any) -> None:
        appending.set()
        trusted_staged.wait(5)  # the plain batch is in flight while the next is staged
        real_append(s, staged)

    def stage(s: Stores, item: ImportBatch, in_flight: Any) -> Any:
        staged_while_appending.append(appending.is_set() and in_flight is not None)
        try:
            return real_stage(s, item, in_flight)
        finally:
            trusted_staged.set()

    monkeypatch.setattr(pipeline, "_append", slow_append)
    monkeypatch.setattr(pipeline, "_stage_deduplicated", stage)
    rows = _table(stores, FILE_IDS)
    with hold_event_writer():
        identity = resolve_import(stores, rows)
        plain = _table(stores, ["m0", "m1", "p1"], user="u7")
        batches: list[Any] = [(plain, None), *_import_batches(rows, identity, 50)]
        results = list(store_event_batches(stores, batches))
    assert staged_while_appending == [True]  # trusted, and checked against the plain batch
    assert [(r.inserted, r.duplicates) for r in results] == [(3, 0), (38, 6)]
    assert _stored_ids(stores) == sorted({*FILE_IDS, "p1"})


def test_stored_person_keys_are_the_ones_resolve_import_minted(
    stores: Stores, tmp_path: Path
) -> None:
    import_file(stores, _file(tmp_path / "a.jsonl", FILE_IDS), store_batch=7)
    pairs = stores.warehouse.query(
        "SELECT e.person_key, k.one_id = e.one_id AS same FROM events e "
        "LEFT JOIN person_keys k ON k.person_key = e.person_key"
    ).to_pylist()
    assert len(pairs) == 40 and all(p["person_key"] is not None and p["same"] for p in pairs)


def test_hashes_handed_to_remember_stored_are_those_of_the_ids(
    stores: Stores, clock: ManualClock
) -> None:
    since = clock.now().replace(tzinfo=None)
    batch = _table(stores, ["r1", "r2"])
    with pytest.raises(ValueError, match="1 message id hashes for 2 rows"):
        wh_events.remember_stored(stores.warehouse, batch, since, hashes=_hashes(["r1"]))
    wh_events.remember_stored(stores.warehouse, batch, since, hashes=_hashes(["r1", "r2"]))
    recent = _recent_ids(stores.warehouse, since)
    assert recent is not None
    assert recent.maybe_seen(["r1", "r2", "r3"], _epoch_day(since)).tolist() == [
        True,
        True,
        False,
    ]


def test_unseen_rows_hands_back_the_batch_itself_when_every_row_is_new(
    stores: Stores, clock: ManualClock
) -> None:
    """No copy of every column for the usual batch (1M events: about a second)."""
    batch = _table(stores, ["n1", "n2", "n3"])
    fresh, rows, hashes = wh_events.unseen_rows_hashed(
        stores.warehouse, batch, clock.now().replace(tzinfo=None)
    )
    assert fresh is batch and rows.tolist() == [0, 1, 2]
    assert hashes is not None and np.array_equal(hashes, _hashes(["n1", "n2", "n3"]))


def test_an_import_with_a_short_first_batch_stores_what_one_batch_stores(
    tmp_path: Path, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = _file(tmp_path / "a.jsonl", FILE_IDS)
    one = make_stores(tmp_path / "one", clock)
    split = make_stores(tmp_path / "split", clock)
    try:
        whole = import_file(one, src)
        monkeypatch.setattr(bulk, "FIRST_STORE_BATCH", 3)
        seen: list[int] = []
        real = pipeline._stage_deduplicated

        def sizes(s: Stores, item: ImportBatch, in_flight: Any) -> Any:
            seen.append(item.events.num_rows)
            return real(s, item, in_flight)

        monkeypatch.setattr(pipeline, "_stage_deduplicated", sizes)
        parts = import_file(split, src, store_batch=30)
        assert seen == [3, 27, 14]
        assert (parts.inserted, parts.duplicates) == (whole.inserted, whole.duplicates)
        query = "SELECT message_id, type, person_key IS NULL AS unkeyed FROM events ORDER BY 1"
        assert split.warehouse.query(query).to_pylist() == one.warehouse.query(query).to_pylist()
    finally:
        one.close()
        split.close()
