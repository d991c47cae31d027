"""A batch whose warehouse alias write fails converges when it is retried."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from tests.identity.events import ev, table
from zhiying.ingest.pipeline import store_events
from zhiying.runtime import Stores
from zhiying.store.tables import merges
from zhiying.warehouse.base import WarehouseError
from zhiying.warehouse.events import RESOLVED_EVENTS_SQL


def test_a_failed_alias_write_rolls_the_merge_back_and_the_retry_writes_it(
    ops_stores: Stores,
) -> None:
    stores = ops_stores
    store_events(
        stores,
        table(
            [
                ev("m1", "identify", user_id="u1", anonymous_id="app"),
                ev("m2", anonymous_id="web", minute=1),
            ]
        ),
    )
    login = table([ev("m3", "identify", user_id="u1", anonymous_id="web", minute=2)])
    # The warehouse loses its alias table for a moment: the alias write fails.
    stores.warehouse.execute("ALTER TABLE one_id_aliases RENAME TO one_id_aliases_away")
    with pytest.raises(WarehouseError):
        store_events(stores, login)
    stores.warehouse.execute("ALTER TABLE one_id_aliases_away RENAME TO one_id_aliases")
    with stores.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(merges)).scalar_one() == 0

    result = store_events(stores, login)  # the client retries the same messageIds
    assert (result.inserted, result.merges) == (1, 1)
    people = stores.warehouse.query(f"SELECT DISTINCT person_id FROM ({RESOLVED_EVENTS_SQL})")
    assert people.num_rows == 1  # the web device's first event follows the merge
