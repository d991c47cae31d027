"""The example of docs/profiles.md is what the API answers."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from tests.identity.events import ev, table
from zhiying.api.app import create_app
from zhiying.ingest.pipeline import store_events
from zhiying.keys.service import create_key
from zhiying.runtime import Stores

DOCS = Path(__file__).resolve().parents[2] / "docs"


def _json_blocks(path: Path, after: str) -> list[Any]:
    text = path.read_text(encoding="utf-8")
    text = text[text.index(after) :]
    return [json.loads(b) for b in re.findall(r"```json\n(.*?)```", text, re.S)]


def test_profile_and_merges_examples_match_the_api(stores: Stores) -> None:
    (events,) = _json_blocks(DOCS / "identity.md", "## Worked example")
    rows = [
        ev(
            f"m{i}",
            e["type"],
            user_id=e.get("userId"),
            anonymous_id=e.get("anonymousId"),
            previous_id=e.get("previousId"),
            ids=e.get("identifiers"),
            event=e.get("event"),
            traits=e.get("traits"),
            minute=i,
        )
        for i, e in enumerate(events)
    ]
    store_events(stores, table(rows))
    key = create_key(stores.engine, "admin", stores.clock.now())
    with TestClient(create_app(stores), headers={"Authorization": f"Bearer {key}"}) as c:
        profile = c.get("/api/profiles/user_id:1001").json()
        history = c.get("/api/profiles/user_id:1001/merges").json()
        other = c.get("/api/profiles/user_id:2002").json()["one_id"]
    documented_profile, documented_history = _json_blocks(DOCS / "profiles.md", "## Example")
    names = {
        profile["one_id"]: documented_profile["one_id"],
        profile["merged"][0]: documented_profile["merged"][0],
        other: documented_history["conflicts"][0]["other_one_id"],
    }
    text = json.dumps([profile, history])
    for actual, shown in names.items():
        text = text.replace(actual, shown)
    assert json.loads(text) == [documented_profile, documented_history]
