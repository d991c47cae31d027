"""``upsert_traits`` writes each trait's time as text (SQLite's ``UtcDateTime`` form) with
Arrow's cast, which must spell every instant as ``strftime`` did and read back exact."""

from __future__ import annotations

from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.compute as pc
import sqlalchemy as sa
from hypothesis import given, settings
from hypothesis import strategies as st

from zhiying.profiles.service import upsert_traits
from zhiying.runtime import Stores
from zhiying.store.tables import traits
from zhiying.warehouse.schema import TRAIT_UPDATES

INSTANTS = st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31, 23, 59))


@settings(deadline=None)
@given(st.lists(INSTANTS | st.none(), max_size=30))
def test_the_cast_spells_every_instant_as_strftime_did(instants: list[datetime | None]) -> None:
    stamps = pa.array(instants, pa.timestamp("us"))
    want = pc.strftime(stamps, "%Y-%m-%d %H:%M:%S")  # seconds with six decimals
    assert pc.cast(stamps, pa.string()).to_pylist() == want.to_pylist()


def test_trait_times_read_back_to_the_microsecond(ops_stores: Stores) -> None:
    instants = [
        datetime(2026, 3, 4, 5, 6, 7, 891011),
        datetime(2026, 3, 4, 5, 6, 7),
        datetime(1969, 12, 31, 23, 59, 59, 999999),
        datetime(999, 5, 5, 1, 2, 3, 500000),
    ]
    rows = pa.table(
        {
            "one_id": [f"o{i}" for i in range(len(instants))],
            "key": ["city"] * len(instants),
            "value": ["Chongqing"] * len(instants),
            "number": pa.nulls(len(instants), pa.float64()),
            "timestamp": pa.array(instants, pa.timestamp("us")),
            "message_id": [f"m{i}" for i in range(len(instants))],
            "person_key": pa.nulls(len(instants), pa.int64()),
        },
        schema=TRAIT_UPDATES,
    )
    with ops_stores.engine.begin() as conn:
        assert upsert_traits(conn, rows) == len(instants)
    with ops_stores.engine.connect() as conn:
        stored = dict(conn.execute(sa.select(traits.c.one_id, traits.c.updated_at)).all())
    assert [stored[f"o{i}"] for i in range(len(instants))] == [
        t.replace(tzinfo=UTC) for t in instants
    ]
