"""Profiles read across merged ONE_IDs, through the ingest pipeline, the service and the API."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.identity.events import ev, table
from zhiying.api.app import create_app
from zhiying.ingest.pipeline import store_events
from zhiying.keys.service import create_key
from zhiying.profiles.service import count_events, get_profile, latest_events
from zhiying.runtime import Stores


def store(stores: Stores, rows: list[dict[str, Any]]) -> None:
    store_events(stores, table(rows))


def test_events_before_the_login_belong_to_the_user(wh_stores: Stores) -> None:
    # The user is known from the app; the web device browses anonymously, then logs in.
    store(
        wh_stores,
        [
            ev(
                "app-1",
                "identify",
                user_id="u1",
                anonymous_id="app",
                minute=0,
                traits={"city": "Beijing"},
            )
        ],
    )
    store(
        wh_stores,
        [
            ev(f"web-{i}", anonymous_id="web", minute=10 + i, event="Product Viewed")
            for i in range(3)
        ],
    )
    before = get_profile(wh_stores, "user_id:u1")
    assert before.counts.total == 1
    store(
        wh_stores,
        [
            ev(
                "web-login",
                "identify",
                user_id="u1",
                anonymous_id="web",
                minute=20,
                traits={"city": "Chongqing"},
            ),
            ev("web-order", user_id="u1", anonymous_id="web", minute=21, event="Order Completed"),
        ],
    )
    profile = get_profile(wh_stores, "user_id:u1")
    assert profile.counts.total == 6
    assert profile.counts.by_event == {"Product Viewed": 3, "Order Completed": 1}
    assert profile.counts.by_type == {"identify": 2, "track": 4}
    assert len(profile.merged) == 1
    assert {t.key: t.value for t in profile.traits} == {"city": "Chongqing"}
    assert profile.first_seen is not None and profile.first_seen.minute == 0
    assert profile.last_seen is not None and profile.last_seen.minute == 21
    # The merged-away ONE_ID still finds the person.
    assert get_profile(wh_stores, profile.merged[0]).one_id == profile.one_id
    one_id, events = latest_events(wh_stores, "anonymous_id:web", limit=4)
    assert one_id == profile.one_id
    assert [e["message_id"] for e in events] == ["web-order", "web-login", "web-2", "web-1"]
    assert count_events(wh_stores) == 6 and count_events(wh_stores, "Product Viewed") == 3


def test_anonymous_events_in_the_same_batch_as_the_login_belong_to_the_user(
    stores: Stores,
) -> None:
    store(
        stores,
        [
            ev("a1", anonymous_id="anon", minute=0),
            ev("a2", anonymous_id="anon", minute=1),
            ev("login", "identify", user_id="u9", anonymous_id="anon", minute=2),
        ],
    )
    assert get_profile(stores, "user_id:u9").counts.total == 3


@pytest.fixture
def client(stores: Stores) -> Iterator[TestClient]:
    key = create_key(stores.engine, "admin", stores.clock.now(), "test")
    with TestClient(create_app(stores), headers={"Authorization": f"Bearer {key}"}) as c:
        yield c


def _shared_device_story(stores: Stores) -> None:
    store(
        stores,
        [
            ev(
                "m1",
                "identify",
                user_id="alice",
                anonymous_id="a-phone",
                minute=0,
                ids={"device_id": "family-pad", "phone": "+8613800000001"},
                traits={"name": "Alice", "age": 30},
            ),
            ev("m2", anonymous_id="web", minute=1),
            ev("m3", "identify", user_id="alice", anonymous_id="web", minute=2),
            ev(
                "m4",
                "identify",
                user_id="bob",
                anonymous_id="b-phone",
                minute=3,
                ids={"device_id": "family-pad"},
            ),
        ],
    )


def test_profile_api_shows_identifiers_traits_and_counts(
    client: TestClient, stores: Stores
) -> None:
    _shared_device_story(stores)
    r = client.get("/api/profiles/phone:%2B8613800000001")
    assert r.status_code == 200, r.text
    body = r.json()
    kinds = [(i["kind"], i["value"]) for i in body["identifiers"]]
    assert kinds[0] == ("user_id", "alice")
    assert ("device_id", "family-pad") in kinds and ("anonymous_id", "web") in kinds
    assert {t["key"]: t["value"] for t in body["traits"]} == {"name": "Alice", "age": 30}
    assert body["counts"]["total"] == 3 and len(body["merged"]) == 1
    assert body["first_seen"].endswith("Z")


def test_merges_api_lists_merges_and_conflicts(client: TestClient, stores: Stores) -> None:
    _shared_device_story(stores)
    alice = client.get("/api/profiles/user_id:alice/merges").json()
    (merge,) = alice["merges"]
    assert (merge["kind"], merge["value"], merge["message_id"]) == ("anonymous_id", "web", "m3")
    (conflict,) = alice["conflicts"]
    assert (conflict["other_one_id"], conflict["rule"]) == (alice["one_id"], "one_user_id")
    bob = client.get("/api/profiles/user_id:bob").json()
    assert conflict["one_id"] == bob["one_id"]
    assert ("device_id", "family-pad") not in [(i["kind"], i["value"]) for i in bob["identifiers"]]


def test_events_api_limits_and_validates(client: TestClient, stores: Stores) -> None:
    _shared_device_story(stores)
    r = client.get("/api/profiles/user_id:alice/events", params={"limit": 2})
    assert [e["message_id"] for e in r.json()["events"]] == ["m3", "m2"]
    for bad in (0, 1001):
        r = client.get("/api/profiles/user_id:alice/events", params={"limit": bad})
        assert r.status_code == 422 and r.headers["content-type"] == "application/problem+json"


def test_unknown_person_is_a_404_naming_the_identifier(client: TestClient) -> None:
    r = client.get("/api/profiles/user_id:nobody")
    assert r.status_code == 404
    assert "user_id nobody" in r.json()["detail"]
    assert client.get("/api/profiles/phone:abc").status_code == 422


def test_event_count_api(client: TestClient, stores: Stores) -> None:
    _shared_device_story(stores)
    assert client.get("/api/events/count").json() == {"event": None, "count": 4}
    r = client.get("/api/events/count", params={"event": "Product Viewed"})
    assert r.json() == {"event": "Product Viewed", "count": 1}


def test_profile_routes_need_an_admin_key(stores: Stores) -> None:
    write = create_key(stores.engine, "write", stores.clock.now())
    with TestClient(create_app(stores)) as c:
        assert c.get("/api/profiles/user_id:x").status_code == 401
        assert (
            c.get("/api/events/count", headers={"Authorization": f"Bearer {write}"}).status_code
            == 403
        )


def test_profile_shows_computed_tags_including_events_of_merged_devices(
    client: TestClient, stores: Stores
) -> None:
    from datetime import UTC, timedelta

    from tests.identity.events import T0
    from zhiying.profiles.tags import service as tags
    from zhiying.profiles.tags.models import DynamicTag, EventSelector

    _shared_device_story(stores)
    tags.define_tag(
        stores,
        DynamicTag(
            name="views_30d",
            where=EventSelector(events=["Product Viewed"]),
            window_days=30,
            aggregate="count",
        ),
    )
    tags.refresh(stores, as_of=(T0 + timedelta(days=1)).replace(tzinfo=UTC))
    body = client.get("/api/profiles/user_id:alice").json()
    # The one view came from the web device before it logged in as alice.
    assert body["tags"] == {"views_30d": 1}
    assert client.get("/api/profiles/user_id:bob").json()["tags"] == {"views_30d": 0}
