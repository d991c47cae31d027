"""Segments group people by the integer ``person_key``: what that changes at the edges.

Rows without a key belong to nobody, a count never maps keys back to ONE_IDs,
ONE_ID-keyed tables (tags) find their key through the dictionary, and the
driving trait's row test (a latest value can only be Beijing if some value
was) reads rows stored under merged ids. Each runs on DuckDB and on chdb.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pyarrow as pa

from tests.segments.helpers import RULE, event, load, member_ids, trait
from zhiying.runtime import Stores
from zhiying.segments import service
from zhiying.segments.compiler import compile_rule
from zhiying.segments.reference import Dataset, evaluate
from zhiying.warehouse.events import append_events
from zhiying.warehouse.schema import EVENTS

AT = datetime(2026, 11, 1, 9, 0, tzinfo=UTC)
NOW = AT.replace(tzinfo=None)


def _days(n: float) -> datetime:
    return NOW - timedelta(days=n)


def _count(stores: Stores, doc: dict[str, Any]) -> int:
    sql = compile_rule(RULE.validate_python(doc), AT).count_sql(stores.warehouse.dialect)
    return int(stores.warehouse.query(sql).column(0)[0].as_py())


def _members(stores: Stores, doc: dict[str, Any]) -> set[str]:
    sql = compile_rule(RULE.validate_python(doc), AT).sql(stores.warehouse.dialect)
    return member_ids(stores.warehouse, sql)


OPENED = {"type": "event", "event": "Application Opened"}
NEVER_ORDERED = {"type": "event", "event": "Order Completed", "performed": False}


def test_events_of_a_one_id_ingestion_never_stored_belong_to_nobody(wh_stores: Stores) -> None:
    data = Dataset()
    data.events += [
        event("m1", "a", "Application Opened", _days(1)),
        event("m2", "b", "Order Completed", _days(1)),
    ]
    load(wh_stores.warehouse, data)
    # Written by append_events (as segment transitions are) for a ONE_ID that has no
    # dictionary row: its person_key stays NULL.
    ghost = pa.Table.from_pylist(
        [event("m3", "ghost", "Application Opened", _days(1), identifiers=[])], schema=EVENTS
    )
    append_events(wh_stores.warehouse, ghost, _days(30))
    keys = wh_stores.warehouse.query("SELECT person_key FROM events WHERE one_id = 'ghost'")
    assert keys.column(0).to_pylist() == [None]

    assert _members(wh_stores, OPENED) == {"a"}
    assert _count(wh_stores, OPENED) == 1
    # A rule true for people with no data still only ranges over keyed people.
    assert _members(wh_stores, NEVER_ORDERED) == {"a"}
    assert _count(wh_stores, NEVER_ORDERED) == 1


def test_count_sql_counts_keys_without_reading_the_dictionary(wh_stores: Stores) -> None:
    data = Dataset()
    data.events += [event(f"m{i}", p, "Application Opened", _days(1)) for i, p in enumerate("abc")]
    data.events.append(event("m9", "a_anon", "Application Opened", _days(2)))
    data.aliases = {"a_anon": "a"}
    load(wh_stores.warehouse, data)
    compiled = compile_rule(RULE.validate_python(OPENED), AT)

    assert "person_keys" not in compiled.count_sql(wh_stores.warehouse.dialect)
    assert "person_keys" in compiled.sql(wh_stores.warehouse.dialect)
    assert _count(wh_stores, OPENED) == 3
    assert _members(wh_stores, OPENED) == {"a", "b", "c"}


def test_a_tag_finds_its_person_through_the_dictionary_even_with_an_orphan_key(
    wh_stores: Stores,
) -> None:
    data = Dataset()
    data.events += [
        event("m1", "a", "Order Completed", _days(3)),
        event("m2", "b", "Order Completed", _days(3)),
    ]
    data.tag_values += [
        {"one_id": one_id, "tag": "vip", "value": "yes", "number": None, "computed_at": _days(1)}
        for one_id in ("a", "b", "c")
    ]
    load(wh_stores.warehouse, data)
    # A key handed out for "a" by an operational transaction that then rolled back: a
    # second, smaller dictionary row that no row carries (the larger key wins).
    wh_stores.warehouse.execute("INSERT INTO person_keys VALUES (3, 'a')")
    doc = {
        "type": "and",
        "rules": [
            {"type": "tag", "tag": "vip", "op": "eq", "value": "yes"},
            {"type": "event", "event": "Order Completed"},
        ],
    }

    got = wh_stores.warehouse.query(
        compile_rule(RULE.validate_python(doc), AT).sql(wh_stores.warehouse.dialect)
    )
    assert sorted(got.column("one_id").to_pylist()) == ["a", "b"]
    assert evaluate(RULE.validate_python(doc), data, AT) == {"a", "b"}
    vip = {"type": "tag", "tag": "vip", "op": "eq", "value": "yes"}
    assert _members(wh_stores, vip) == {"a", "b", "c"}
    assert _count(wh_stores, vip) == 3


def test_the_driving_traits_row_test_reads_rows_stored_under_merged_ids(
    wh_stores: Stores,
) -> None:
    data = Dataset()
    data.trait_updates += [
        # a: own row says Shanghai, a later row under the merged id says Beijing.
        trait("a", "city", "Shanghai", _days(10), "t1"),
        trait("a_anon", "city", "Beijing", _days(5), "t2"),
        # b: was Beijing, now Shanghai (the row test admits b; the latest value does not).
        trait("b", "city", "Beijing", _days(10), "t3"),
        trait("b", "city", "Shanghai", _days(5), "t4"),
        trait("c", "city", "Beijing", _days(10), "t5"),
    ]
    data.events += [
        event("m1", "a", "Order Completed", _days(1)),
        event("m2", "b", "Order Completed", _days(1)),
        event("m3", "c_anon", "Order Completed", _days(1)),
    ]
    data.aliases = {"a_anon": "a", "c_anon": "c"}
    load(wh_stores.warehouse, data)
    doc = {
        "type": "and",
        "rules": [
            {"type": "trait", "trait": "city", "op": "eq", "value": "Beijing"},
            {"type": "event", "event": "Order Completed"},
        ],
    }

    assert _members(wh_stores, doc) == {"a", "c"} == evaluate(RULE.validate_python(doc), data, AT)
    assert _count(wh_stores, doc) == 2


def test_preview_counts_and_samples_from_one_evaluation(wh_stores: Stores) -> None:
    data = Dataset()
    people = ["p3", "p1", "p4", "p0", "p2"]
    data.events += [event(f"m{i}", p, "Application Opened", _days(1)) for i, p in enumerate(people)]
    load(wh_stores.warehouse, data)
    rule = RULE.validate_python(OPENED)

    result = service.preview(wh_stores, rule, AT, sample=3)
    assert result.count == 5
    assert [p.one_id for p in result.sample] == ["p0", "p1", "p2"]
    assert service.preview(wh_stores, rule, AT, sample=0).count == 5
    nobody = RULE.validate_python(
        {
            "type": "event",
            "event": "Application Opened",
            "measure": {"fn": "count", "op": "gte", "value": 2},
        }
    )
    empty = service.preview(wh_stores, nobody, AT, sample=3)
    assert (empty.count, empty.sample) == (0, [])


def test_trait_values_set_at_the_same_instant_resolve_by_the_greater_message_id(
    wh_stores: Stores,
) -> None:
    # Same timestamp; the greater message id arrives first for some people and last
    # for others, so neither "first seen" nor "last seen" passes by luck.
    at = _days(1)
    load(
        wh_stores.warehouse,
        Dataset(
            trait_updates=[
                trait("p1", "city", "Shanghai", at, "m-2"),
                trait("p1", "city", "Beijing", at, "m-1"),
                trait("p2", "city", "Beijing", at, "m-1"),
                trait("p2", "city", "Shanghai", at, "m-0"),
                trait("p3", "city", "Shanghai", at, "m-0"),
                trait("p3", "city", "Beijing", at, "m-1"),
                trait("p4", "city", "Beijing", at, "m-1"),
                trait("p4", "city", "Shanghai", at, "m-2"),
            ]
        ),
    )
    doc = {"type": "trait", "trait": "city", "op": "eq", "value": "Beijing"}
    assert _members(wh_stores, doc) == {"p2", "p3"}
    assert _count(wh_stores, doc) == 2
    # The preview's profiles read the same value.
    shown = service.preview(wh_stores, RULE.validate_python(doc), AT)
    assert {(p.one_id, p.traits["city"]) for p in shown.sample} == {
        ("p2", "Beijing"),
        ("p3", "Beijing"),
    }


def test_same_instant_ties_resolve_per_trait_when_a_rule_reads_two_traits(
    wh_stores: Stores,
) -> None:
    # Two traits in one scan: each trait's latest value is taken among its own rows
    # (the name filter), ties again by the greater message id, which comes last for
    # p1's tier and first for p2's (neither arrival order passes by luck).
    at = _days(1)
    load(
        wh_stores.warehouse,
        Dataset(
            trait_updates=[
                trait("p1", "city", "Beijing", at, "m-1"),
                trait("p1", "tier", "gold", at, "m-0"),
                trait("p1", "tier", "silver", at, "m-2"),
                trait("p2", "city", "Beijing", at, "m-1"),
                trait("p2", "tier", "gold", at, "m-2"),
                trait("p2", "tier", "silver", at, "m-0"),
                trait("p3", "city", "Shanghai", at, "m-3"),
                trait("p3", "city", "Beijing", at, "m-1"),
                trait("p3", "tier", "gold", at, "m-0"),
            ]
        ),
    )
    doc = {
        "type": "and",
        "rules": [
            {"type": "trait", "trait": "city", "op": "eq", "value": "Beijing"},
            {"type": "trait", "trait": "tier", "op": "eq", "value": "gold"},
        ],
    }
    assert _members(wh_stores, doc) == {"p2"}
    assert _count(wh_stores, doc) == 1
