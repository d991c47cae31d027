"""Migration 0008_one_id_mint_order numbers the ONE_IDs a store already holds by (first
seen, ONE_ID), the tie-break they were merged by before, so no earlier decision changes,
and new ONE_IDs are numbered after them (SQLite and PostgreSQL)."""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa

from tests.identity.events import NOW, ev, table
from zhiying.identity.service import resolve_events
from zhiying.store import make_engine, upgrade
from zhiying.store.tables import identifiers, identity_generation, merges, one_ids

AT = datetime(2026, 10, 1, 8, 0, tzinfo=UTC)
LATER = datetime(2026, 10, 1, 9, 0, tzinfo=UTC)


def test_existing_one_ids_are_numbered_by_first_seen_then_text(database_url: str) -> None:
    upgrade(database_url, "0007_trait_message_id")
    engine = make_engine(database_url)
    try:
        with engine.begin() as conn:
            for one_id, at in [("u_c", AT), ("u_b", LATER), ("u_z", AT), ("u_a", AT)]:
                conn.execute(one_ids.insert().values(one_id=one_id, created_at=at))
            conn.execute(
                identifiers.insert(),
                [
                    {"kind": k, "value": v, "one_id": o, "first_seen": AT, "last_seen": AT}
                    for k, v, o in [("phone", "+8613800000001", "u_z"), ("email", "x@e.cn", "u_c")]
                ],
            )
        upgrade(database_url)
        with engine.connect() as conn:
            numbered = dict(conn.execute(sa.select(one_ids.c.one_id, one_ids.c.mint_order)).all())
            minted = conn.execute(sa.select(identity_generation.c.minted)).scalar_one()
        assert numbered == {"u_a": 1, "u_c": 2, "u_z": 3, "u_b": 4}
        assert minted == 4

        # u_c and u_z were first seen at the same instant: u_c sorted first, and still wins.
        rows = [
            ev("m1", ids={"phone": "+8613800000001", "email": "x@e.cn"}, minute=5),
            ev("m2", anonymous_id="a-new", minute=5),
        ]
        with engine.begin() as conn:
            resolve_events(conn, table(rows), NOW)
        with engine.connect() as conn:
            (merge,) = conn.execute(sa.select(merges.c.winner, merges.c.loser)).all()
            new = conn.execute(
                sa.select(one_ids.c.mint_order).where(
                    one_ids.c.one_id.notin_(["u_a", "u_b", "u_c", "u_z"])
                )
            ).scalar_one()
            minted = conn.execute(sa.select(identity_generation.c.minted)).scalar_one()
        assert tuple(merge) == ("u_c", "u_z")
        assert (new, minted) == (5, 5)
    finally:
        engine.dispose()
