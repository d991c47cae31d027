"""Batch issuance's bulk paths: column-built events, COPY text escaping, the look-up-free
path of a fresh template and its fallback when someone else issued meanwhile."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from zhiying.coupons import service as svc
from zhiying.coupons.ledger import (
    LedgerEntry,
    events_table,
    issued_events_table,
    publish_pending,
)
from zhiying.coupons.models import TemplateSpec
from zhiying.runtime import Stores

NOW = datetime(2026, 11, 11, 4, tzinfo=UTC)


def _template(s: Stores) -> str:
    spec = TemplateSpec.model_validate(
        {"name": "five off", "benefit": {"kind": "fixed_amount", "amount": 500},
         "validity": {"days_after_issue": 3}}
    )  # fmt: skip
    return svc.create_template(s.engine, spec, s.clock.now()).template_id


def test_batch_events_equal_the_events_of_the_ledger_entries() -> None:
    codes, people = ["AAAA", "BBBB"], ["o1", "o\t2"]
    entries = [
        LedgerEntry(c, 1, "T1", o, "issued", None, "issued", NOW, amount=500, reason="batch")
        for c, o in zip(codes, people, strict=True)
    ]
    names = ("满减", "fixed_amount")
    assert issued_events_table(codes, people, "T1", names, 500, NOW, NOW).equals(
        events_table(entries, {"T1": names}, NOW)
    )


def test_codes_are_the_base32_text_of_80_random_bits() -> None:
    codes = svc.new_codes(1000)
    assert len(set(codes)) == 1000
    assert all(len(base64.b32decode(c)) == 10 for c in codes)


def test_odd_one_ids_survive_the_bulk_insert(ops_stores: Stores) -> None:
    s, t = ops_stores, _template(ops_stores)
    odd = ["tab\there", "back\\slash", "new\nline", "引号\"'", "cr\rx"]
    r = svc.issue_batch(s.engine, s.warehouse, t, odd, s.clock.now(), batch_key="odd")
    assert r.issued == 5
    for o in odd:
        assert [c.one_id for c in svc.wallet(s.engine, o)] == [o]


def test_a_claim_between_chunks_is_seen_and_the_per_user_limit_holds(ops_stores: Stores) -> None:
    s, t = ops_stores, _template(ops_stores)
    now = s.clock.now()

    def people() -> Iterator[str]:
        yield from ("p0", "p1")
        svc.issue(s.engine, t, "p3", now)  # someone claims while the batch runs
        yield from ("p2", "p3", "p4")

    r = svc.issue_batch(s.engine, s.warehouse, t, people(), now, batch_key="b", chunk_size=2)
    assert (r.issued, r.over_user_limit) == (4, 1)
    assert len(svc.wallet(s.engine, "p3")) == 1


def test_events_of_every_page_are_written_and_marked_while_chunks_go_on(
    stores: Stores, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(svc, "PUBLISH_PAGE", 2)
    s, t = stores, _template(stores)
    people = [f"p{i}" for i in range(7)]
    r = svc.issue_batch(s.engine, s.warehouse, t, people, NOW, batch_key="pages", chunk_size=1)
    assert (r.issued, r.events_written, r.events_pending) == (7, 7, 0)
    assert publish_pending(s.engine, s.warehouse, NOW).published == 0
    got = s.warehouse.query("SELECT one_id FROM events WHERE event = 'Coupon Issued'")
    assert sorted(got.column("one_id").to_pylist()) == people


def test_events_wait_in_the_outbox_when_the_warehouse_write_fails(
    stores: Stores, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(svc, "PUBLISH_PAGE", 2)
    s, t = stores, _template(stores)
    s.warehouse.execute("ALTER TABLE events RENAME TO events_away")
    r = svc.issue_batch(s.engine, s.warehouse, t, ["a", "b", "c"], NOW, batch_key="w")
    assert (r.issued, r.events_written, r.events_pending) == (3, 0, 3)
    s.warehouse.execute("ALTER TABLE events_away RENAME TO events")
    assert publish_pending(s.engine, s.warehouse, NOW).published == 3
