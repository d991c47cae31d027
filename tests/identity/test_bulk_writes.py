"""The cheaper bulk writes of a large batch store exactly what the plain ones store.

* SQLite: a large insert into a table holding fewer rows drops the table's non-unique
  indexes and creates them again from their stored definitions (``BulkSql.insert(...,
  rebuild_indexes=True)``), inside the caller's transaction.
* Identifier kinds the store holds none of are not probed (``_known``).
* ONE_IDs minted in the transaction are keyed without a look-up (``Resolution.minted``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.identity.events import NOW, ev, table
from tests.identity.test_setwise import _run, streams
from zhiying.identity import bulk
from zhiying.identity.bulk import BulkSql
from zhiying.identity.service import resolve_events
from zhiying.ingest.person_keys import PersonKeys


def _indexes(conn: sa.Connection, name: str) -> list[tuple[str, str]]:
    rows = conn.exec_driver_sql(
        "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = ? ORDER BY name",
        (name,),
    ).all()
    return [(str(n), str(s)) for n, s in rows]


def _identifier_rows(start: int, count: int) -> list[tuple[Any, ...]]:
    at = "2026-01-01 00:00:00.000000"
    return [
        ("anonymous_id", f"a{i:06d}", f"u_{i % 7}", at, at) for i in range(start, start + count)
    ]


_COLUMNS = ("kind", "value", "one_id", "first_seen", "last_seen")


@pytest.fixture
def sqlite_engine(tmp_path: Any) -> Any:
    from zhiying.store import make_engine, upgrade

    url = f"sqlite:///{tmp_path / 'ops.sqlite3'}"
    upgrade(url)
    made = make_engine(url)
    yield made
    made.dispose()


def test_a_large_insert_into_a_small_table_leaves_the_same_indexes_and_uses_them(
    sqlite_engine: sa.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bulk, "REBUILD_MIN_ROWS", 10)
    with sqlite_engine.begin() as conn:
        before = _indexes(conn, "identifiers")
        db = BulkSql(conn)
        assert db._worth_rebuilding("identifiers", 10)
        dropped: list[list[tuple[str, str]]] = []
        real = db.many

        def many(sql: str, rows: list[tuple[Any, ...]]) -> None:
            dropped.append(_indexes(conn, "identifiers"))
            real(sql, rows)

        db.many = many  # type: ignore[method-assign]
        db.insert("identifiers", _COLUMNS, _identifier_rows(0, 100), rebuild_indexes=True)
        # During the insert only the primary key's index was left.
        assert [name for name, _ in dropped[0]] == ["sqlite_autoindex_identifiers_1"]
        assert _indexes(conn, "identifiers") == before
        plan = conn.exec_driver_sql(
            "EXPLAIN QUERY PLAN SELECT kind FROM identifiers WHERE one_id = 'u_3'"
        ).all()
        assert "ix_identifiers_one_id" in " ".join(str(row[-1]) for row in plan)
        assert conn.exec_driver_sql(
            "SELECT count(*) FROM identifiers WHERE one_id = 'u_3'"
        ).scalar_one() == len([i for i in range(100) if i % 7 == 3])
    # Committed: still there for every other connection.
    with sqlite_engine.connect() as conn:
        assert _indexes(conn, "identifiers") == before


def test_indexes_are_kept_when_the_table_already_holds_more_rows(
    sqlite_engine: sa.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bulk, "REBUILD_MIN_ROWS", 10)
    with sqlite_engine.begin() as conn:
        db = BulkSql(conn)
        db.insert("identifiers", _COLUMNS, _identifier_rows(0, 100))
        assert not db._worth_rebuilding("identifiers", 50)
        assert db._worth_rebuilding("identifiers", 100)
    with sqlite_engine.begin() as conn:
        assert not BulkSql(conn)._worth_rebuilding("identifiers", 9)  # under the minimum


def test_a_failed_insert_leaves_the_indexes_in_place(
    sqlite_engine: sa.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bulk, "REBUILD_MIN_ROWS", 10)
    with sqlite_engine.begin() as conn:
        before = _indexes(conn, "identifiers")
        db = BulkSql(conn)
        rows = _identifier_rows(0, 20)
        with pytest.raises(sa.exc.IntegrityError):
            db.insert("identifiers", _COLUMNS, rows + rows[:1], rebuild_indexes=True)
        assert _indexes(conn, "identifiers") == before


def test_unique_indexes_are_not_dropped(
    sqlite_engine: sa.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``person_keys.person_key`` is unique: it must refuse a repeated key during the insert."""
    monkeypatch.setattr(bulk, "REBUILD_MIN_ROWS", 1)
    with sqlite_engine.begin() as conn:
        db = BulkSql(conn)
        with db._without_plain_indexes("person_keys"), pytest.raises(sa.exc.IntegrityError):
            db.many(
                "INSERT INTO person_keys (one_id, person_key) VALUES (?, ?)",
                [("u_a", 1), ("u_b", 1)],
            )


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(stream=streams, cuts=st.lists(st.integers(0, 60), min_size=1, max_size=4))
def test_set_based_path_with_index_rebuilds_stores_what_the_resolver_stores(
    engine: sa.Engine,
    monkeypatch: pytest.MonkeyPatch,
    stream: list[dict[str, Any]],
    cuts: list[int],
) -> None:
    """Every batch that adds at least as many rows as a table holds rebuilds its indexes
    (SQLite; PostgreSQL copies as before): the stores end the same.

    One event per minute: two ONE_IDs created at the same instant that later merge are
    ordered by their random text (``Resolver._merge``), so with ties two runs of the
    same path may already differ."""
    monkeypatch.setattr(bulk, "REBUILD_MIN_ROWS", 1)
    stream = [{**e, "minute": i} for i, e in enumerate(stream)]
    one = _run(engine, stream, cuts, set_based=False)
    other = _run(engine, stream, cuts, set_based=True)
    assert other == one


def test_a_kind_the_store_holds_is_still_looked_up(engine: sa.Engine) -> None:
    """A second batch finds the stored identifiers of the first (and only those kinds
    are probed): the same person keeps one ONE_ID."""
    first = table([ev("m1", user_id="u1", ids={"phone": "+8613800000001"})])
    second = table(
        [ev("m2", anonymous_id="a1", ids={"phone": "+8613800000001"}, minute=1)]
        + [ev(f"n{i}", anonymous_id=f"x{i}", minute=2) for i in range(5)]
    )
    with engine.begin() as conn:
        a = resolve_events(conn, first, NOW, set_based=True)
    with engine.begin() as conn:
        b = resolve_events(conn, second, NOW, set_based=True)
    assert b.one_ids.to_pylist()[0] == a.one_ids.to_pylist()[0]
    assert len(set(b.one_ids.to_pylist())) == 6


def test_minted_lists_exactly_the_one_ids_a_set_based_batch_created(engine: sa.Engine) -> None:
    rows = [
        ev("m0", user_id="u0", anonymous_id="a0"),
        ev("m1", anonymous_id="a1", minute=1),
        ev("m2", user_id="u0", anonymous_id="a1", minute=2),  # a1's ONE_ID merges into u0's
        ev("m3", "alias", user_id="u2", previous_id="a0", minute=3),  # through the Resolver
    ]
    with engine.begin() as conn:
        r = resolve_events(conn, table(rows), NOW, set_based=True)
        created = {row[0] for row in conn.exec_driver_sql("SELECT one_id FROM one_ids").all()}
    assert r.merges >= 1 and r.residual
    assert r.minted == created


def test_keys_of_minted_one_ids_are_the_keys_a_look_up_would_give(engine: sa.Engine) -> None:
    """Same ONE_IDs, same order: the same numbers with and without ``minted``."""
    with engine.begin() as conn:
        conn.exec_driver_sql("INSERT INTO person_keys (one_id, person_key) VALUES ('u_old', 7)")
    ids = pa.array(["u_new1", "u_old", None, "u_new2", "u_new1"], pa.string())
    results = []
    for minted in (frozenset(), frozenset({"u_new1", "u_new2"})):
        keys = PersonKeys()
        keys.reserve(engine, 10)
        with engine.connect() as conn:
            trans = conn.begin()
            assigned = keys.assign(conn, ids, fresh=minted)
            trans.rollback()
        got = assigned.keys.to_pylist()
        base = min(k for k in got if k not in (None, 7))  # each instance reserves its block
        results.append([k if k in (None, 7) else k - base for k in got])
    assert results[0] == results[1] == [0, 7, None, 1, 0]


def test_coded_one_ids_get_the_keys_their_text_gets(engine: sa.Engine) -> None:
    """Codes 1 and 3 name the same ONE_ID (a merge winner held twice), -1 is a row
    without one: keys numbered in order of first appearance, as for the text."""
    names: list[str | None] = ["u_a", "u_b", None, "u_b", "u_c"]
    codes = np.array([3, 0, -1, 1, 4, 0, 3], dtype=np.int64)
    text = pa.array([None if c < 0 else names[c] for c in codes.tolist()], pa.string())
    results = []
    for coded in (None, (codes, names)):
        keys = PersonKeys()
        keys.reserve(engine, 10)
        with engine.connect() as conn:
            trans = conn.begin()
            assigned = keys.assign(conn, text, also=["u_z"], coded=coded)
            trans.rollback()
        got = assigned.keys.to_pylist()
        base = min(k for k in got if k is not None)
        results.append(([None if k is None else k - base for k in got], assigned.minted.num_rows))
    assert results[0] == results[1] == ([0, 1, None, 0, 2, 1, 0], 4)
