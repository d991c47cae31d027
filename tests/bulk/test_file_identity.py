"""A bulk import resolves identities once for the whole file (``resolve_import``), then
stores the events batch by batch with those ONE_IDs. It must store exactly what one
``store_events`` call over the whole file stores: the same people, per-event persons,
seen-times, merges and conflicts (on SQLite and PostgreSQL), whatever the batch sizes;
importing again changes nothing, and an import that died half-way converges when run again.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import orjson
import pytest
import sqlalchemy as sa

from tests.conftest import make_stores
from zhiying.clock import ManualClock
from zhiying.identity import service
from zhiying.ingest import pipeline
from zhiying.ingest.bulk import import_file
from zhiying.runtime import Stores
from zhiying.store.tables import identifiers, identity_conflicts, merges, one_ids

USERS = [f"u{i}" for i in range(8)]
DEVICES = [f"a{i}" for i in range(14)]


def _stream(seed: int, n: int = 160) -> list[dict[str, Any]]:
    """Random messages, not in time order: shared devices (conflicts), logins (merges),
    aliases, member numbers, exact repeats and reused messageIds."""
    rng = random.Random(seed)
    out: list[dict[str, Any]] = []
    for i in range(n):
        if out and rng.random() < 0.06:
            out.append(dict(rng.choice(out)))  # an exact repeat: dropped as a duplicate
            continue
        kind = rng.choice(["track", "track", "page", "identify", "identify", "alias"])
        m: dict[str, Any] = {
            "type": kind,
            "messageId": f"m{i}" if rng.random() > 0.04 else f"m{rng.randrange(max(i, 1))}",
            "timestamp": f"2026-10-{1 + rng.randrange(20):02d}T{rng.randrange(24):02d}:"
            f"{rng.randrange(60):02d}:00Z",
        }
        if kind == "alias":
            m["userId"] = rng.choice(USERS)
            m["previousId"] = rng.choice(DEVICES + USERS)
        else:
            if rng.random() < 0.6:
                m["userId"] = rng.choice(USERS)
            if "userId" not in m or rng.random() < 0.7:
                m["anonymousId"] = rng.choice(DEVICES)
        if kind == "track":
            m["event"] = "Product Viewed"
        if kind == "page":
            m["name"] = "Home"
        if rng.random() < 0.15:
            m["context"] = {"externalIds": [{"type": "member_no", "id": f"c{rng.randrange(6)}"}]}
        out.append(m)
    return out


def _write(path: Path, messages: list[dict[str, Any]]) -> Path:
    path.write_bytes(b"\n".join(orjson.dumps(m) for m in messages) + b"\n")
    return path


def _snapshot(stores: Stores) -> dict[str, Any]:
    """What both stores hold, every ONE_ID named by the smallest identifier it owns."""
    with stores.engine.connect() as conn:
        idents = conn.execute(sa.select(identifiers)).all()
        merged = conn.execute(sa.select(merges)).all()
        conflicts = conn.execute(sa.select(identity_conflicts)).all()
        live = conn.execute(sa.select(sa.func.count()).select_from(one_ids)).scalar_one()
    name: dict[str, str] = {}
    for i in idents:
        key = f"{i.kind}:{i.value}"
        name[i.one_id] = min(name.get(i.one_id, key), key)
    events = stores.warehouse.query(
        "SELECT e.message_id, coalesce(a.one_id, e.one_id) AS person, e.person_key, "
        "k.one_id AS keyed FROM events e "
        "LEFT JOIN one_id_aliases a ON a.alias = e.one_id "
        "LEFT JOIN person_keys k ON k.person_key = e.person_key"
    ).to_pylist()
    stored_one_ids = stores.warehouse.query("SELECT one_id FROM events").column(0).to_pylist()
    assert sorted(e["keyed"] for e in events) == sorted(stored_one_ids)  # keys name the ONE_ID
    return {
        "events": sorted((e["message_id"], name.get(e["person"], "?")) for e in events),
        "identifiers": sorted(
            (i.kind, i.value, name[i.one_id], i.first_seen, i.last_seen) for i in idents
        ),
        "merges": sorted(
            (name.get(m.winner, "?"), m.kind, m.value, m.reason, m.message_id, m.merged_at)
            for m in merged
        ),
        "conflicts": sorted(
            (name.get(c.one_id, "?"), name.get(c.other_one_id, "?"), c.kind, c.value, c.rule)
            for c in conflicts
        ),
        "one_ids": live,
    }


def _reference(tmp_path: Path, clock: ManualClock, src: Path) -> tuple[Any, dict[str, Any]]:
    """The whole file through ONE ``store_events`` call (identity resolved inside it)."""
    ref = make_stores(tmp_path / "reference", clock)
    try:
        report = import_file(ref, src, identity_per_batch=True, chunk_size=10**6)
        return report, _snapshot(ref)
    finally:
        ref.close()


@pytest.mark.parametrize("set_based", [False, True], ids=["per-tuple", "set-based"])
@pytest.mark.parametrize("seed", [1, 2])
def test_whole_file_identity_stores_what_one_store_events_call_stores(
    ops_stores: Stores,
    tmp_path: Path,
    clock: ManualClock,
    monkeypatch: pytest.MonkeyPatch,
    seed: int,
    set_based: bool,
) -> None:
    if set_based:
        monkeypatch.setattr(service, "SET_BASED_ROWS", 1)
    src = _write(tmp_path / "events.jsonl", _stream(seed))
    want_report, want = _reference(tmp_path, clock, src)
    got_report = import_file(ops_stores, src, chunk_size=60, store_batch=25)
    assert (got_report.inserted, got_report.duplicates, got_report.rejected) == (
        want_report.inserted,
        want_report.duplicates,
        want_report.rejected,
    )
    assert got_report.duplicates > 0 and got_report.rejected == 0
    assert (got_report.merges, got_report.conflicts) == (want_report.merges, want_report.conflicts)
    assert want_report.merges > 0 and want_report.conflicts > 0  # the stream exercises both
    assert _snapshot(ops_stores) == want


def test_importing_the_same_file_again_changes_nothing(ops_stores: Stores, tmp_path: Path) -> None:
    src = _write(tmp_path / "events.jsonl", _stream(7))
    first = import_file(ops_stores, src, chunk_size=60, store_batch=35)
    before = _snapshot(ops_stores)
    again = import_file(ops_stores, src, chunk_size=60, store_batch=35)
    assert first.inserted > 0 and first.merges > 0
    assert (again.inserted, again.merges, again.conflicts) == (0, 0, 0)
    assert again.duplicates == first.inserted + first.duplicates
    assert _snapshot(ops_stores) == before


def test_an_import_that_died_after_resolving_converges_when_run_again(
    ops_stores: Stores, tmp_path: Path, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = _write(tmp_path / "events.jsonl", _stream(11))
    want_report, want = _reference(tmp_path, clock, src)
    real = pipeline._append
    calls = [0]

    def dies_appending_the_third_batch(stores: Stores, staged: Any) -> None:
        # The fourth batch is staged (its operational transaction committed) while
        # the third one's append runs: the failure is seen after that.
        calls[0] += 1
        if calls[0] == 3:
            raise OSError("disk full")
        real(stores, staged)

    monkeypatch.setattr(pipeline, "_append", dies_appending_the_third_batch)
    with pytest.raises(OSError, match="disk full"):
        import_file(ops_stores, src, store_batch=20)
    count = "SELECT count(*) AS n FROM events"
    stored = int(ops_stores.warehouse.query(count).column(0)[0].as_py())
    assert 0 < stored < want_report.inserted
    assert calls[0] == 3  # no batch was appended after the failure
    monkeypatch.setattr(pipeline, "_append", real)
    report = import_file(ops_stores, src, store_batch=20)
    assert report.merges == 0  # the first run committed every merge
    assert report.inserted == want_report.inserted - stored
    assert _snapshot(ops_stores) == want
