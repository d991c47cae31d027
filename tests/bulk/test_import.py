"""Bulk import through the store path: rejects, idempotency, orders, formats, progress, CLI."""

from __future__ import annotations

import csv
import gzip
from decimal import Decimal
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from zhiying.config import get_settings
from zhiying.errors import ValidationFailed
from zhiying.ingest.bulk import Progress, import_file
from zhiying.ingest.mapping import load_mapping, parse_mapping
from zhiying.runtime import Stores


def rows(stores: Stores, sql: str) -> list[dict[str, object]]:
    return list(stores.warehouse.query(sql).to_pylist())


def write_jsonl(path: Path, messages: list[object]) -> Path:
    path.write_bytes(b"\n".join(orjson.dumps(m) for m in messages) + b"\n")
    return path


MESSAGES: list[object] = [
    {"type": "track", "event": "Product Viewed", "userId": "u1", "messageId": "a"},
    {"type": "track", "userId": "u1", "messageId": "b"},  # no event
    {"type": "page", "anonymousId": "x1", "name": "Home", "messageId": "c"},
    {"type": "identify", "userId": "u2", "traits": {"email": "U2@Example.com"}, "messageId": "d"},
    {"type": "track", "event": "x", "messageId": "e"},  # nobody
]


def test_jsonl_import_stores_valid_messages_and_lists_every_rejected_row_in_a_csv(
    stores: Stores, tmp_path: Path
) -> None:
    src = write_jsonl(tmp_path / "events.jsonl", MESSAGES)
    (tmp_path / "events.jsonl").write_text(src.read_text() + "{not json\n")
    rejects = tmp_path / "rejects.csv"
    report = import_file(stores, src, rejects_path=rejects)
    assert (report.rows_read, report.inserted, report.rejected) == (6, 3, 3)
    stored = rows(stores, "SELECT message_id FROM events ORDER BY message_id")
    assert [r["message_id"] for r in stored] == ["a", "c", "d"]
    with rejects.open(newline="") as fh:
        listed = [(r["row"], r["field"], r["reason"]) for r in csv.DictReader(fh)]
    assert listed == [
        ("2", "event", "track needs an event name"),
        ("5", "userId", "userId or anonymousId is required"),
        ("6", "", "not valid JSON"),
    ]


def test_rejects_file_in_jsonl_carries_the_raw_row(stores: Stores, tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "events.jsonl", MESSAGES)
    rejects = tmp_path / "rejects.jsonl"
    import_file(stores, src, rejects_path=rejects)
    lines = [orjson.loads(line) for line in rejects.read_bytes().splitlines()]
    assert [(x["row"], x["field"]) for x in lines] == [(2, "event"), (5, "userId")]
    assert orjson.loads(lines[0]["raw"]) == MESSAGES[1]


def test_reimporting_a_csv_without_message_ids_stores_nothing_new_but_keeps_identical_rows(
    stores: Stores, tmp_path: Path
) -> None:
    src = tmp_path / "orders.csv"
    src.write_text(
        "customer,day,amount\n"
        "c1,2026-01-02,10.00\n"
        "c1,2026-01-02,10.00\n"  # a second, identical purchase: must not collapse
        "c2,2026-01-03,5.5\n"
    )
    mapping = parse_mapping(
        {
            "kind": "orders",
            "user_id": "customer",
            "timestamp": {"column": "day", "format": "%Y-%m-%d"},
            "revenue": "amount",
            "currency": {"value": "CNY"},
        }
    )
    first = import_file(stores, src, kind="orders", mapping=mapping, chunk_size=2)
    again = import_file(stores, src, kind="orders", mapping=mapping, chunk_size=1)
    assert (first.inserted, again.inserted, again.duplicates) == (3, 0, 3)
    ids = rows(stores, "SELECT message_id, revenue FROM events ORDER BY message_id")
    assert len({r["message_id"] for r in ids}) == 3
    assert sum(r["revenue"] for r in ids) == pytest.approx(25.5)
    assert sum(1 for r in ids if str(r["message_id"]).endswith("-2")) == 1


def test_order_lines_are_grouped_into_one_order_completed_event_per_order_id(
    stores: Stores, tmp_path: Path
) -> None:
    src = tmp_path / "lines.csv"
    src.write_text(
        "order,customer,at,sku,price,qty,pay\n"
        "o1,c1,2026-03-01T10:00:00Z,s1,19.90,2,voucher\n"
        "o2,c2,2026-03-01T11:00:00Z,s9,5.00,1,credit_card\n"
        "o1,c1,2026-03-01T10:00:00Z,s2,0.20,,credit_card\n"
    )
    mapping = parse_mapping(
        {
            "kind": "orders",
            "order_id": "order",
            "user_id": "customer",
            "timestamp": "at",
            "currency": {"value": "CNY"},
            "payment_type": "pay",
            "products": {
                "sku": "sku",
                "price": "price",
                "quantity": {"column": "qty", "type": "integer"},
            },
        }
    )
    report = import_file(stores, src, kind="orders", mapping=mapping)
    assert (report.rows_read, report.events, report.inserted) == (3, 2, 2)
    o1 = rows(
        stores,
        "SELECT event, revenue, products, properties ->> '$.payment_types' AS pays "
        "FROM events WHERE order_id = 'o1'",
    )[0]
    assert o1["event"] == "Order Completed"
    assert str(o1["revenue"]) == "40.00"  # 19.90 × 2 + 0.20 × 1, in exact decimals
    assert [(p["sku"], str(p["price"]), p["quantity"]) for p in o1["products"]] == [
        ("s1", "19.90", 2),
        ("s2", "0.20", None),
    ]
    assert orjson.loads(str(o1["pays"])) == ["credit_card", "voucher"]


def test_parquet_events_with_segment_named_columns_need_no_mapping(
    stores: Stores, tmp_path: Path
) -> None:
    src = tmp_path / "events.parquet"
    pq.write_table(
        pa.table(
            {
                "messageId": ["p1", "p2"],
                "type": ["track", "track"],
                "event": ["Order Completed", None],
                "userId": ["u1", "u2"],
                "timestamp": pa.array(
                    [1_700_000_000_000_000, 1_700_000_000_000_000], pa.timestamp("us")
                ),
                "revenue": pa.array([Decimal("19.99"), None], pa.decimal128(18, 2)),
                "properties.path": ["/a", "/b"],
                "plan": ["gold", "free"],
            }
        ),
        src,
    )
    report = import_file(stores, src)
    assert (report.inserted, report.rejected) == (1, 1)
    got = rows(stores, "SELECT revenue, properties FROM events")[0]
    assert str(got["revenue"]) == "19.99"
    assert orjson.loads(str(got["properties"])) == {"path": "/a", "plan": "gold", "revenue": 19.99}


def test_progress_reports_rows_read_stored_and_rejected_per_chunk(
    stores: Stores, tmp_path: Path
) -> None:
    src = write_jsonl(tmp_path / "events.jsonl", MESSAGES * 3)
    seen: list[Progress] = []
    import_file(stores, src, chunk_size=4, progress=seen.append)
    assert seen[-1] == Progress(rows_read=15, stored=3, duplicates=6, rejected=6)
    assert [p.rows_read for p in seen] == sorted(p.rows_read for p in seen)


def test_a_mapping_with_an_unknown_key_or_a_missing_column_is_refused(
    stores: Stores, tmp_path: Path
) -> None:
    with pytest.raises(ValidationFailed, match="userid"):
        parse_mapping({"userid": "x"})
    src = tmp_path / "u.csv"
    src.write_text("id,city\n1,Chongqing\n")
    with pytest.raises(ValidationFailed, match="does not have: email"):
        import_file(stores, src, kind="users", mapping=parse_mapping({"user_id": "email"}))


def test_cli_imports_users_with_a_mapping_file_and_gzip_input(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from zhiying.cli.main import app

    monkeypatch.setenv("ZHIYING_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.chdir(tmp_path)
    get_settings.cache_clear()
    src = tmp_path / "members.csv.gz"
    with gzip.open(src, "wt") as fh:
        fh.write("member,phone,city\nm1,13800138000,Chongqing\nm2,not-a-phone,Beijing\n")
    mapping = tmp_path / "members.toml"
    mapping.write_text(
        'kind = "users"\nuser_id = "member"\n[identifiers]\nphone = "phone"\n'
        '[traits]\ncity = "city"\n'
    )
    try:
        result = CliRunner().invoke(
            app, ["import", "users", str(src), "--mapping", str(mapping)], catch_exceptions=False
        )
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 0, result.output
    assert "rejected" in result.output
    listed = (tmp_path / "members.csv.gz.rejects.csv").read_text()
    assert "context.externalIds[0].id" in listed and "not a phone number" in listed
    assert load_mapping(mapping).kind == "users"


def test_products_and_identifiers_stay_with_their_own_rows_across_small_chunks(
    stores: Stores, tmp_path: Path
) -> None:
    """Product lines and identifiers are checked apart from the main rules and put back
    by row number: with chunks of 2 rows, every event keeps its own."""
    messages: list[object] = []
    for i in range(7):
        messages.append(
            {
                "type": "track",
                "event": "Order Completed",
                "userId": f"u{i}",
                "messageId": f"o{i}",
                "properties": {"order_id": f"#{i}", "products": [{"sku": f"s{i}", "price": i}]},
            }
        )
        messages.append(
            {
                "type": "identify",
                "userId": f"u{i}",
                "messageId": f"i{i}",
                "traits": {"email": f"P{i}@Example.com"},
            }
        )
    messages.append(
        {
            "type": "track",
            "event": "Order Completed",
            "userId": "bad",
            "messageId": "bad",
            "properties": {"products": [{"sku": "ok"}, {"price": "1.001"}]},
        }
    )
    src = write_jsonl(tmp_path / "mixed.jsonl", messages)
    report = import_file(stores, src, chunk_size=2)
    assert (report.inserted, report.rejected) == (14, 1)
    assert report.first_rejections[0][:2] == (15, "properties.products[1].price")
    got = rows(
        stores,
        "SELECT message_id, user_id, products[1].sku AS sku, products[1].price AS price, "
        "identifiers FROM events ORDER BY message_id",
    )
    for row in got:
        i = str(row["message_id"])[1:]
        if str(row["message_id"]).startswith("o"):
            assert (row["sku"], row["price"], row["user_id"]) == (f"s{i}", Decimal(i), f"u{i}")
        else:
            assert row["identifiers"] == [{"kind": "email", "value": f"p{i}@example.com"}]
