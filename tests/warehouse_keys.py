"""Person keys for rows tests write straight into the warehouse, as ingestion would give them.

``store_events`` mints a key per ONE_ID (``zhiying.ingest.person_keys``); tests
that insert warehouse rows by hand get theirs here: the dictionary's key when
the ONE_ID has one, else the next free number, written to the dictionary.
"""

from __future__ import annotations

import pyarrow as pa

from zhiying.warehouse import Warehouse
from zhiying.warehouse.events import string_literal
from zhiying.warehouse.schema import PERSON_KEYS


def keys_for(warehouse: Warehouse, one_ids: list[str]) -> dict[str, int]:
    """The key of every ONE_ID of ``one_ids``, minting missing ones into ``person_keys``."""
    wanted = sorted(set(one_ids))
    if not wanted:
        return {}
    quoted = ", ".join(string_literal(warehouse, o) for o in wanted)
    rows = warehouse.query(
        f"SELECT one_id, max(person_key) AS k FROM person_keys WHERE one_id IN ({quoted}) "
        "GROUP BY one_id"
    ).to_pylist()
    found = {str(r["one_id"]): int(r["k"]) for r in rows}
    top = warehouse.query("SELECT max(person_key) AS m FROM person_keys").column(0)[0].as_py()
    start = int(top or 0) + 1
    new = [o for o in wanted if o not in found]
    if new:
        minted = {o: start + i for i, o in enumerate(new)}
        warehouse.insert(
            "person_keys",
            pa.table(
                {"person_key": list(minted.values()), "one_id": list(minted)}, schema=PERSON_KEYS
            ),
        )
        found.update(minted)
    return found


def keyed(warehouse: Warehouse, rows: pa.Table) -> pa.Table:
    """``rows`` (with ``one_id``) with ``person_key`` set from :func:`keys_for`."""
    one_ids = rows.column("one_id").to_pylist()
    keys = keys_for(warehouse, [o for o in one_ids if o is not None])
    column = pa.array([None if o is None else keys[o] for o in one_ids], pa.int64())
    if "person_key" in rows.column_names:
        return rows.set_column(rows.column_names.index("person_key"), "person_key", column)
    return rows.append_column("person_key", column)
