"""The worked example of docs/tags.md computes what the page shows."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from tests.tags.factories import event, insert_events, insert_traits, trait
from zhiying.profiles.tags import service
from zhiying.runtime import Stores

DOCS = Path(__file__).resolve().parents[2] / "docs" / "tags.md"
AS_OF = datetime(2026, 11, 1, 23, 59, 59, 999999, tzinfo=UTC)


def section(marker: str) -> list[str]:
    lines = DOCS.read_text(encoding="utf-8").splitlines()
    start = lines.index(f"<!-- example: {marker} -->") + 1
    out = []
    for line in lines[start:]:
        if not line.strip() and out:
            break
        out.append(line)
    return out


def before(days: int) -> datetime:
    return datetime(2026, 11, 1, 12, 0) - timedelta(days=days)


def test_worked_example_matches_the_page(wh_stores: Stores) -> None:
    block = section("definitions")
    definitions = json.loads("\n".join(line for line in block if not line.startswith("```")))
    service.define_tags(wh_stores, [service.parse_definition(d) for d in definitions["tags"]])
    insert_traits(wh_stores.warehouse, [trait("u1", "gender", "f", before(30))])
    insert_events(
        wh_stores.warehouse,
        [
            event("u1", before(200), revenue="120.00", coupon="NEW10", products=[("books", 2)]),
            event(
                "u1",
                before(40),
                revenue="80.00",
                coupon="VIP5",
                products=[("books", 1), ("music", 1)],
            ),
            event("u1", before(3), revenue="45.50", products=[("music", 3)]),
        ],
    )
    service.refresh(wh_stores, as_of=AS_OF)
    rows = wh_stores.warehouse.query(
        "SELECT tag, value, number FROM tag_values WHERE one_id = 'u1' ORDER BY tag"
    ).to_pylist()
    shown = [
        [cell.strip() for cell in line.strip("|").split("|")] for line in section("values")[2:]
    ]
    assert [
        [r["tag"], r["value"] or "", "" if r["number"] is None else f"{r['number']:g}"]
        for r in rows
    ] == shown
