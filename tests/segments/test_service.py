"""Segment definitions, checks, snapshots with entered/exited events, schedules, export."""

from __future__ import annotations

import io
from datetime import timedelta
from typing import Any

import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from tests.segments.helpers import load, load_example
from tests.segments.test_seed_segment import AT, seed_data
from zhiying.clock import ManualClock
from zhiying.errors import Conflict, NotFound, ValidationFailed
from zhiying.runtime import Stores
from zhiying.segments import service
from zhiying.segments.compiler import UnknownName, UnsupportedRule
from zhiying.segments.models import SegmentCreate, SegmentUpdate, parse_rule

SEED_MEMBERS = {"a", "c", "h"}


def _create(stores: Stores, name: str, rule: Any, every: int | None = None) -> service.Segment:
    return service.create_segment(
        stores,
        SegmentCreate(name=name, rule=parse_rule(rule), refresh_every_minutes=every),
    )


@pytest.fixture
def seeded(stores: Stores, clock: ManualClock) -> Stores:
    clock.set(AT)
    load(stores.warehouse, seed_data())
    return stores


def test_segment_is_created_read_updated_and_deleted(
    ops_stores: Stores, clock: ManualClock
) -> None:
    clock.set(AT)
    load(ops_stores.warehouse, seed_data())
    seg = service.create_segment(
        ops_stores, SegmentCreate(name="Loyal", rule=load_example("beijing-loyal.json"))
    )
    assert service.get_segment(ops_stores, seg.segment_id).rule == seg.rule
    assert [s.name for s in service.list_segments(ops_stores)] == ["Loyal"]
    with pytest.raises(Conflict):
        _create(ops_stores, "Loyal", {"type": "trait", "trait": "city", "op": "is_set"})
    new_rule = parse_rule({"type": "trait", "trait": "city", "op": "eq", "value": "Shanghai"})
    updated = service.update_segment(
        ops_stores, seg.segment_id, SegmentUpdate(rule=new_rule, refresh_every_minutes=60)
    )
    assert (updated.version, updated.rule, updated.refresh_every_minutes) == (2, new_rule, 60)
    service.delete_segment(ops_stores, seg.segment_id)
    with pytest.raises(NotFound):
        service.get_segment(ops_stores, seg.segment_id)


def test_unknown_event_and_trait_are_rejected_with_their_path(seeded: Stores) -> None:
    rule = load_example("beijing-loyal.json").model_dump(mode="json", by_alias=True)
    rule["rules"][2]["event"] = "Order Complete"
    with pytest.raises(UnknownName) as event_error:
        service.count(seeded, parse_rule(rule))
    assert event_error.value.field == "rules.2.event"
    assert "Order Complete" in event_error.value.message
    with pytest.raises(UnknownName) as trait_error:
        service.count(seeded, parse_rule({"type": "trait", "trait": "town", "op": "is_set"}))
    assert trait_error.value.field == "trait"


def test_rules_that_cannot_compile_name_the_path_and_reason(seeded: Stores) -> None:
    bad_field = {
        "type": "not",
        "rule": {
            "type": "event",
            "event": "Order Completed",
            "where": [{"property": "properties.products[].colour", "op": "eq", "value": "red"}],
        },
    }
    with pytest.raises(UnsupportedRule) as err:
        service.count(seeded, parse_rule(bad_field))
    assert err.value.field == "rule.where.0.property" and "colour" in err.value.message
    text_sum = {
        "type": "event",
        "event": "Order Completed",
        "measure": {"fn": "sum", "property": "properties.order_id", "op": "gt", "value": 1},
    }
    with pytest.raises(UnsupportedRule) as err:
        service.count(seeded, parse_rule(text_sum))
    assert err.value.field == "measure.property"
    with pytest.raises(ValidationFailed) as invalid:
        parse_rule({"type": "and", "rules": [{"type": "event", "event": "X", "window": {}}]})
    assert invalid.value.field == "rules.0.window"


def test_segments_refer_to_segments_live_and_cycles_are_refused(seeded: Stores) -> None:
    beijing = _create(
        seeded, "Beijing", {"type": "trait", "trait": "city", "op": "eq", "value": "Beijing"}
    )
    buyers = _create(
        seeded,
        "Beijing buyers",
        {
            "type": "and",
            "rules": [
                {"type": "segment", "segment": beijing.segment_id},
                {"type": "event", "event": "Order Completed"},
            ],
        },
    )
    assert service.count(seeded, buyers.rule) == len({"a", "b", "c", "e", "h", "i"})
    with pytest.raises(UnsupportedRule) as err:
        service.update_segment(
            seeded,
            beijing.segment_id,
            SegmentUpdate(rule=parse_rule({"type": "segment", "segment": buyers.segment_id})),
        )
    assert "cycle" in err.value.message
    with pytest.raises(Conflict):
        service.delete_segment(seeded, beijing.segment_id)
    with pytest.raises(UnknownName):
        service.count(seeded, parse_rule({"type": "segment", "segment": "seg_nope"}))


def test_materialise_keeps_snapshots_and_turns_changes_into_events(
    wh_stores: Stores, clock: ManualClock
) -> None:
    clock.set(AT)
    load(wh_stores.warehouse, seed_data())
    seg = service.create_segment(
        wh_stores, SegmentCreate(name="Loyal", rule=load_example("beijing-loyal.json"))
    )
    first = service.materialise(wh_stores, seg.segment_id)
    assert (first.member_count, first.entered, first.exited) == (3, 3, 0)

    later = AT + timedelta(days=5)  # b enters (see test_seed_segment)
    second = service.materialise(wh_stores, seg.segment_id, later)
    assert (second.member_count, second.entered, second.exited) == (4, 1, 0)
    # Retrying the same snapshot changes nothing and emits nothing twice.
    assert service.materialise(wh_stores, seg.segment_id, later) == second
    with pytest.raises(Conflict):  # no snapshot between two existing ones
        service.materialise(wh_stores, seg.segment_id, AT + timedelta(days=1))

    even_later = AT + timedelta(days=95)  # everyone's visits are older than 90 days
    third = service.materialise(wh_stores, seg.segment_id, even_later)
    assert (third.member_count, third.entered, third.exited) == (0, 0, 4)

    rows = wh_stores.warehouse.query(
        "SELECT event, one_id, count(*) AS n FROM events WHERE event LIKE 'Segment %' "
        "GROUP BY event, one_id ORDER BY event, one_id"
    ).to_pylist()
    assert [(r["event"], r["one_id"], r["n"]) for r in rows] == [
        ("Segment Entered", "a", 1),
        ("Segment Entered", "b", 1),
        ("Segment Entered", "c", 1),
        ("Segment Entered", "h", 1),
        ("Segment Exited", "a", 1),
        ("Segment Exited", "b", 1),
        ("Segment Exited", "c", 1),
        ("Segment Exited", "h", 1),
    ]
    assert [s.member_count for s in service.list_snapshots(wh_stores, seg.segment_id)] == [0, 4, 3]


def test_snapshot_source_reads_the_latest_snapshot_not_the_live_rule(
    seeded: Stores, clock: ManualClock
) -> None:
    seg = _create(
        seeded, "Loyal", load_example("beijing-loyal.json").model_dump(mode="json", by_alias=True)
    )
    snap_rule = parse_rule({"type": "segment", "segment": seg.segment_id, "source": "snapshot"})
    with pytest.raises(UnsupportedRule):  # never materialised
        service.count(seeded, snap_rule)
    service.materialise(seeded, seg.segment_id)
    later = AT + timedelta(days=5)
    live_rule = parse_rule({"type": "segment", "segment": seg.segment_id})
    assert service.count(seeded, live_rule, later) == 4
    assert service.count(seeded, snap_rule, later) == 3


def test_materialise_due_follows_each_segments_interval(seeded: Stores, clock: ManualClock) -> None:
    hourly = _create(seeded, "Hourly", {"type": "trait", "trait": "city", "op": "is_set"}, every=60)
    _create(seeded, "On demand", {"type": "trait", "trait": "city", "op": "is_not_set"})
    assert [s.segment_id for s in service.materialise_due(seeded).done] == [hourly.segment_id]
    clock.advance(timedelta(minutes=59))
    assert service.materialise_due(seeded).done == []
    clock.advance(timedelta(minutes=1))
    run = service.materialise_due(seeded)
    assert [(s.segment_id, s.member_count) for s in run.done] == [(hourly.segment_id, 9)]
    assert run.failed == []


def test_members_export_as_csv_and_parquet(seeded: Stores) -> None:
    seg = _create(
        seeded, "Loyal", load_example("beijing-loyal.json").model_dump(mode="json", by_alias=True)
    )
    with pytest.raises(NotFound):
        service.export_members(seeded, seg.segment_id, "csv")
    service.materialise(seeded, seg.segment_id)
    csv = pacsv.read_csv(io.BytesIO(service.export_members(seeded, seg.segment_id, "csv")))
    assert csv.column("one_id").to_pylist() == sorted(SEED_MEMBERS)
    live = pq.read_table(
        io.BytesIO(service.export_members(seeded, seg.segment_id, "parquet", live=True))
    )
    assert live.column("one_id").to_pylist() == sorted(SEED_MEMBERS)
    assert set(live.column_names) == {"one_id", "segment_id", "as_of"}


def test_preview_gives_count_sample_with_traits_and_sql(seeded: Stores) -> None:
    result = service.preview(seeded, load_example("beijing-loyal.json"), sample=2)
    assert result.count == 3
    assert [(p.one_id, p.traits) for p in result.sample] == [
        ("a", {"city": "Beijing"}),
        ("c", {"city": "Beijing"}),
    ]
    assert "Shiseido" in result.sql and result.dialect == "duckdb"
