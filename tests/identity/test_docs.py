"""The worked example of docs/identity.md is what the code does."""

from __future__ import annotations

import json
import re
from pathlib import Path

import sqlalchemy as sa

from tests.identity.events import NOW, ev, table
from zhiying.identity.service import resolve_events
from zhiying.runtime import Stores
from zhiying.store.tables import identifiers, identity_conflicts, merges

DOC = Path(__file__).resolve().parents[2] / "docs" / "identity.md"


def _block(text: str, lang: str) -> str:
    example = text[text.index("## Worked example") :]
    match = re.search(rf"```{lang}\n(.*?)```", example, re.S)
    assert match, f"no {lang} block in the worked example"
    return match.group(1)


def test_worked_example_in_the_docs_resolves_as_documented(stores: Stores) -> None:
    text = DOC.read_text(encoding="utf-8")
    rows = [
        ev(
            f"m{i}",
            e["type"],
            user_id=e.get("userId"),
            anonymous_id=e.get("anonymousId"),
            previous_id=e.get("previousId"),
            ids=e.get("identifiers"),
            event=e.get("event"),
            minute=i,
        )
        for i, e in enumerate(json.loads(_block(text, "json")))
    ]
    with stores.engine.begin() as conn:
        resolve_events(conn, table(rows), NOW)
    lines = []
    with stores.engine.connect() as conn:
        people: dict[str, list[str]] = {}
        for kind, value, one_id in conn.execute(
            sa.select(identifiers.c.kind, identifiers.c.value, identifiers.c.one_id)
        ):
            people.setdefault(one_id, []).append(f"{kind}:{value}")
        lines += sorted("person: " + " ".join(sorted(p)) for p in people.values())
        by_message = {r["message_id"]: r["type"] for r in rows}
        for m in conn.execute(sa.select(merges).order_by(merges.c.merge_id)):
            lines.append(f"merge: {m.kind}:{m.value} by {by_message[m.message_id]}")
        for c in conn.execute(sa.select(identity_conflicts)):
            lines.append(f"conflict: {c.kind}:{c.value} {c.rule}")
    assert "\n".join(lines) + "\n" == _block(text, "text")
