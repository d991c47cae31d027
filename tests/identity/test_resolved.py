"""``resolve_events(..., resolved=...)``: ONE_IDs a caller resolved itself (a bulk import
resolves a whole file first) are taken as given; only rows without one go through the rules."""

from __future__ import annotations

import pyarrow as pa
import pytest
import sqlalchemy as sa

from tests.identity.events import NOW, ev, table
from zhiying.identity.cache import IdentityCache
from zhiying.identity.service import resolve_events
from zhiying.store.tables import identifiers


def _count(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(identifiers)).scalar_one())


def test_given_one_ids_are_kept_and_only_rows_without_one_are_resolved(
    engine: sa.Engine,
) -> None:
    with engine.begin() as conn:
        first = resolve_events(conn, table([ev("m1", user_id="u1", anonymous_id="a1")]), NOW)
    u1 = first.one_ids[0].as_py()
    rows = table(
        [
            ev("m2", user_id="u1", anonymous_id="a9", minute=5),  # given: a9 is not written
            ev("m3", anonymous_id="a2", minute=6),  # not given: a new person
            ev("m4", user_id="u1", minute=7),  # not given: u1's ONE_ID from the store
        ]
    )
    cache = IdentityCache()
    with engine.begin() as conn:
        r = resolve_events(conn, rows, NOW, cache, resolved=pa.array([u1, None, None]))
    got = r.one_ids.to_pylist()
    assert got[0] == u1 and got[2] == u1
    assert got[1] not in (None, u1)
    assert (r.merges, r.conflicts) == (0, 0)
    assert _count(engine) == 3  # u1, a1, a2: the given row wrote nothing


def test_fully_given_batch_touches_no_identity_table_and_keeps_the_cache_generation(
    engine: sa.Engine,
) -> None:
    rows = table([ev("m1", user_id="u1"), ev("m2", anonymous_id="a1")])
    cache = IdentityCache()
    with engine.begin() as conn:
        r = resolve_events(conn, rows, NOW, cache, resolved=pa.array(["u_x", "u_y"]))
    assert r.one_ids.to_pylist() == ["u_x", "u_y"]
    assert (r.aliases, r.merges, r.conflicts, r.generation) == ([], 0, 0, 0)
    assert cache.generation == 0
    assert _count(engine) == 0


def test_resolved_ids_must_match_the_rows(engine: sa.Engine) -> None:
    with engine.begin() as conn, pytest.raises(ValueError, match="2 resolved ONE_IDs for 1"):
        resolve_events(conn, table([ev("m1", user_id="u1")]), NOW, resolved=pa.array(["a", "b"]))
