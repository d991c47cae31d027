"""Issuing to a saved segment: its current members get one coupon each (SQLite + DuckDB)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pytest
from typer.testing import CliRunner

from tests.coupons.test_api import client
from tests.warehouse_keys import keyed
from zhiying.cli.main import app
from zhiying.config import get_settings
from zhiying.coupons import audience
from zhiying.coupons import service as svc
from zhiying.coupons.models import TemplateSpec
from zhiying.errors import NotFound
from zhiying.runtime import Stores, open_stores
from zhiying.segments import service as segments
from zhiying.segments.models import SegmentCreate, parse_rule
from zhiying.warehouse.schema import TRAIT_UPDATES

FIXED = {"kind": "fixed_amount", "amount": 500}


def _segment_of_chongqing(stores: Stores, now: datetime) -> str:
    when = (now - timedelta(days=1)).astimezone(UTC).replace(tzinfo=None)
    rows = [("a", "Chongqing"), ("b", "Beijing"), ("c", "Chongqing"), ("d", "Chongqing")]
    stores.warehouse.insert(
        "trait_updates",
        keyed(stores.warehouse, pa.Table.from_pylist(
            [
                {"one_id": o, "key": "city", "value": v, "number": None, "timestamp": when,
                 "message_id": f"m{i}"}
                for i, (o, v) in enumerate(rows)
            ]
            # d moved away since: its latest city is Shanghai
            + [{"one_id": "d", "key": "city", "value": "Shanghai", "number": None,
                "timestamp": when + timedelta(hours=1), "message_id": "m9"}],
            schema=TRAIT_UPDATES,
        )),
    )  # fmt: skip
    rule = parse_rule({"type": "trait", "trait": "city", "op": "eq", "value": "Chongqing"})
    return segments.create_segment(stores, SegmentCreate(name="Chongqing", rule=rule)).segment_id


def test_segment_members_get_one_coupon_each_and_a_rerun_issues_nothing(stores: Stores) -> None:
    now = stores.clock.now()
    seg = _segment_of_chongqing(stores, now)
    assert audience.segment_members(stores, seg, now) == ["a", "c"]
    spec = TemplateSpec.model_validate(
        {"name": "five off", "benefit": FIXED, "validity": {"days_after_issue": 3}}
    )
    t = svc.create_template(stores.engine, spec, now).template_id
    c = client(stores)
    r = c.post(f"/api/coupons/templates/{t}/batches", json={"batch_key": "cq", "segment_id": seg})
    assert r.status_code == 200, r.text
    assert (r.json()["issued"], r.json()["events_written"]) == (2, 2)
    assert [x.state for x in svc.wallet(stores.engine, "a")] == ["issued"]
    assert svc.wallet(stores.engine, "b") == [] and svc.wallet(stores.engine, "d") == []
    again = c.post(
        f"/api/coupons/templates/{t}/batches", json={"batch_key": "cq", "segment_id": seg}
    ).json()
    assert (again["issued"], again["already_issued"]) == (0, 2)
    both = c.post(
        f"/api/coupons/templates/{t}/batches",
        json={"batch_key": "x", "segment_id": seg, "one_ids": ["a"]},
    )
    assert both.status_code == 422
    with pytest.raises(NotFound):
        audience.segment_members(stores, "seg_missing", now)


def test_cli_issue_batch_issues_to_a_segment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ZHIYING_DATA_DIR", str(tmp_path / "data"))
    get_settings.cache_clear()
    try:
        s = open_stores(get_settings())
        try:
            now = s.clock.now()
            seg = _segment_of_chongqing(s, now)
            spec = TemplateSpec.model_validate(
                {"name": "five off", "benefit": FIXED, "validity": {"days_after_issue": 3}}
            )
            svc.create_template(s.engine, spec, now, template_id="T")
        finally:
            s.close()
        out = CliRunner().invoke(
            app, ["coupons", "issue-batch", "T", "--batch-key", "cq", "--segment", seg]
        )
        assert out.exit_code == 0, out.output
        assert "2 members" in out.output and "issued 2" in out.output
        s = open_stores(get_settings())
        try:
            assert [c.one_id for c in svc.wallet(s.engine, "c")] == ["c"]
            assert svc.wallet(s.engine, "b") == []
        finally:
            s.close()
    finally:
        get_settings.cache_clear()
