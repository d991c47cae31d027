"""``zhiying import dead-letters``: events the loader set aside are stored again once the
cause is fixed; a file the stores still refuse stays, reported by error class only."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
from typer.testing import CliRunner

from tests.ingest.test_poison import refuse_identifiers
from zhiying.cli.main import app
from zhiying.config import Settings
from zhiying.ingest.models import BatchContext, rows_to_table, validate_batch
from zhiying.ingest.spool import Spool
from zhiying.ingest.writer import spool_directory
from zhiying.runtime import Stores, open_stores

runner = CliRunner()


def _set_aside(stores: Stores, *users: str) -> Path:
    """A dead-letter file holding one identify per user, as the loader writes it."""
    messages = [
        {"type": "identify", "messageId": f"m-{u}", "userId": u, "traits": {"city": "Wuhan"}}
        for u in users
    ]
    rows, rejected = validate_batch(
        messages, BatchContext(received_at=stores.clock.now(), source="test")
    )
    assert not rejected
    table = rows_to_table(rows)
    n = table.num_rows
    table = table.append_column("error_class", pa.array(["IntegrityError"] * n))
    table = table.append_column("error", pa.array(["IntegrityError at …"] * n))
    directory = spool_directory(stores)
    assert directory is not None
    return Spool(directory).dead_letter(table, stores.clock.now())


def _events(data_dir: Path) -> list[str]:
    stores = open_stores(Settings(data_dir=data_dir))
    try:
        ids = stores.warehouse.query("SELECT message_id FROM events ORDER BY 1")
        return [str(m) for m in ids.column(0).to_pylist()]
    finally:
        stores.close()


def test_dead_letters_are_stored_once_and_their_file_moves_aside(data_dir: Path) -> None:
    stores = open_stores(Settings(data_dir=data_dir))
    try:
        path = _set_aside(stores, "u1", "u2")
    finally:
        stores.close()
    result = runner.invoke(app, ["import", "dead-letters"])
    assert result.exit_code == 0, result.output
    assert "stored/" in result.output and "refused" not in result.output
    assert _events(data_dir) == ["m-u1", "m-u2"]
    assert not path.exists() and (path.parent / "stored" / path.name).exists()
    again = runner.invoke(app, ["import", "dead-letters"])
    assert again.exit_code == 0 and "no dead-letter files" in again.output
    # Named explicitly, a stored file is read again and its rows are duplicates.
    named = runner.invoke(app, ["import", "dead-letters", str(path.parent / "stored" / path.name)])
    assert named.exit_code == 0, named.output
    assert _events(data_dir) == ["m-u1", "m-u2"]


def test_a_file_the_stores_still_refuse_stays_and_exits_1(data_dir: Path) -> None:
    stores = open_stores(Settings(data_dir=data_dir))
    try:
        path = _set_aside(stores, "u-bad")
        refuse_identifiers(stores, "u-bad")
    finally:
        stores.close()
    result = runner.invoke(app, ["import", "dead-letters"])
    assert result.exit_code == 1
    assert "refused again (IntegrityError)" in result.output
    assert "u-bad" not in result.output  # error class only, never the row
    assert path.exists() and _events(data_dir) == []
