"""CSV audiences resolve through the identity map; ``zhiying coupons issue`` issues them."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from zhiying.cli.main import app
from zhiying.config import get_settings
from zhiying.coupons import audience
from zhiying.coupons import service as svc
from zhiying.runtime import Stores
from zhiying.store.tables import identifiers, one_ids


def test_csv_refs_resolve_to_current_one_ids_in_batches(stores: Stores, tmp_path: Path) -> None:
    now = stores.clock.now()
    with stores.engine.begin() as conn:
        conn.execute(
            one_ids.insert(),
            [
                {"one_id": "A", "created_at": now, "merged_into": None},
                {"one_id": "B", "created_at": now, "merged_into": "A"},
            ],
        )
        seen = {"first_seen": now, "last_seen": now}
        conn.execute(
            identifiers.insert(),
            [
                {"kind": "user_id", "value": "42", "one_id": "A", **seen},
                {"kind": "phone", "value": "+8613800000001", "one_id": "C", **seen},
            ],
        )
    csv = tmp_path / "people.csv"
    csv.write_text("ref\n42\nphone:138 0000 0001\none_id:B\nuser_id:nobody\nphone:x\n")
    got = audience.resolve(stores.engine, audience.read_refs(csv))
    assert got.one_ids == ["A", "C"]  # B was merged into A: one coupon per person
    assert got.unresolved == ["user_id:nobody"] and got.invalid == ["phone:x"]


def test_cli_issues_a_batch_from_a_one_id_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ZHIYING_DATA_DIR", str(tmp_path / "data"))
    get_settings.cache_clear()
    spec = tmp_path / "t.json"
    spec.write_text(
        '{"name": "five off", "benefit": {"kind": "fixed_amount", "amount": 500},'
        ' "validity": {"days_after_issue": 3}, "limits": {"quantity": 3}}'
    )
    ids = tmp_path / "ids.txt"
    ids.write_text("o1\no2\no3\no4\n")
    runner = CliRunner()
    try:
        assert (
            runner.invoke(app, ["coupons", "templates", "create", str(spec), "--id", "T"]).exit_code
            == 0
        )
        out = runner.invoke(
            app, ["coupons", "issue", "T", "--batch-key", "b", "--one-ids", str(ids)]
        )
        assert out.exit_code == 0, out.output
        assert "issued 3" in out.output and "stopped: quantity used up" in out.output
        settings = get_settings()
        from zhiying.runtime import open_stores

        s = open_stores(settings)
        try:
            assert [c.state for c in svc.wallet(s.engine, "o1")] == ["issued"]
        finally:
            s.close()
    finally:
        get_settings.cache_clear()
