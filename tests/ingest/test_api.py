"""The Segment HTTP API through the ASGI app, on SQLite + DuckDB."""

from __future__ import annotations

import gzip
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient

from tests.ingest.conftest import Keys, basic, count_events, track
from zhiying.runtime import Stores


def post(client: TestClient, path: str, body: Any, key: str | None, **headers: str) -> Any:
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    all_headers = {"Content-Type": "application/json", **headers}
    if key is not None:
        all_headers.update(basic(key))
    return client.post(path, content=data, headers=all_headers)


def test_batch_is_stored_and_answered_with_counts(
    client: TestClient, keys: Keys, stores: Stores
) -> None:
    body = {
        "batch": [
            track("m1"),
            {"type": "identify", "messageId": "m2", "userId": "u1", "traits": {"city": "重庆"}},
            {"type": "page", "messageId": "m3", "anonymousId": "a1", "name": "Home"},
        ]
    }
    response = post(client, "/v1/batch", body, keys.write)
    assert response.status_code == 200, response.text
    assert response.json() == {"success": True, "accepted": 3, "duplicates": 0, "rejected": []}
    rows = stores.warehouse.query(
        "SELECT message_id, type, source, one_id FROM events ORDER BY message_id"
    ).to_pylist()
    assert [(r["message_id"], r["type"]) for r in rows] == [
        ("m1", "track"),
        ("m2", "identify"),
        ("m3", "page"),
    ]
    assert all(r["one_id"] for r in rows)
    assert rows[0]["one_id"] == rows[1]["one_id"]  # same userId, same person


def test_one_bad_event_in_500_rejects_only_that_event(
    client: TestClient, keys: Keys, stores: Stores
) -> None:
    batch = [track(f"m{i}", user_id=f"u{i % 37}") for i in range(500)]
    batch[123] = track("m123", properties={"products": [{"price": 1}, {"price": "cheap"}]})
    response = post(client, "/v1/batch", {"batch": batch}, keys.write)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["accepted"] == 499
    assert answer["rejected"] == [
        {
            "index": 123,
            "field": "properties.products[1].price",
            "reason": "not a number: 'cheap'",
            "messageId": "m123",
        }
    ]
    assert count_events(stores) == 499
    assert count_events(stores, "message_id = 'm123'") == 0


def test_repeated_message_id_across_two_requests_is_stored_once(
    client: TestClient, keys: Keys, stores: Stores
) -> None:
    first = post(client, "/v1/batch", {"batch": [track("dup"), track("a")]}, keys.write)
    second = post(client, "/v1/batch", {"batch": [track("dup"), track("b")]}, keys.write)
    assert first.json()["accepted"] == 2
    assert (second.json()["accepted"], second.json()["duplicates"]) == (1, 1)
    assert count_events(stores, "message_id = 'dup'") == 1
    assert count_events(stores) == 3


def test_repeated_message_id_inside_one_batch_is_stored_once(
    client: TestClient, keys: Keys, stores: Stores
) -> None:
    response = post(client, "/v1/batch", {"batch": [track("x"), track("x")]}, keys.write)
    assert (response.json()["accepted"], response.json()["duplicates"]) == (1, 1)
    assert count_events(stores) == 1


@pytest.mark.parametrize(
    ("path", "message", "column", "value"),
    [
        ("/v1/track", {"userId": "u", "event": "Signed Up"}, "event", "Signed Up"),
        ("/v1/identify", {"userId": "u", "traits": {"name": "Li"}}, "traits", '{"name":"Li"}'),
        ("/v1/alias", {"userId": "u", "previousId": "anon-1"}, "previous_id", "anon-1"),
        ("/v1/page", {"anonymousId": "a", "name": "Home"}, "name", "Home"),
        ("/v1/screen", {"anonymousId": "a", "name": "Cart"}, "name", "Cart"),
        ("/v1/group", {"userId": "u", "groupId": "g-1"}, "group_id", "g-1"),
    ],
)
def test_each_single_call_endpoint_stores_its_type(
    client: TestClient,
    keys: Keys,
    stores: Stores,
    path: str,
    message: dict[str, Any],
    column: str,
    value: str,
) -> None:
    response = post(client, path, message, keys.write)
    assert response.status_code == 200, response.text
    rows = stores.warehouse.query(f"SELECT type, {column} AS v FROM events").to_pylist()
    assert rows == [{"type": path.removeprefix("/v1/"), "v": value}]


def test_write_key_in_the_body_is_accepted(client: TestClient, keys: Keys) -> None:
    response = post(client, "/v1/track", {**track("m"), "writeKey": keys.write}, None)
    assert response.status_code == 200, response.text


def test_missing_key_is_401(client: TestClient) -> None:
    response = post(client, "/v1/batch", {"batch": [track("m")]}, None)
    assert response.status_code == 401
    assert response.headers["content-type"].startswith("application/problem+json")
    assert "write key" in response.json()["detail"]


def test_unknown_key_is_401(client: TestClient) -> None:
    assert post(client, "/v1/batch", {"batch": [track("m")]}, "zyw_nope").status_code == 401


def test_admin_key_on_v1_is_403(client: TestClient, keys: Keys, stores: Stores) -> None:
    response = post(client, "/v1/batch", {"batch": [track("m")]}, keys.admin)
    assert response.status_code == 403
    assert count_events(stores) == 0


def test_admin_key_as_bearer_token_is_403(client: TestClient, keys: Keys) -> None:
    headers = {"Authorization": f"Bearer {keys.admin}"}
    response = client.post("/v1/track", content=orjson.dumps(track("m")), headers=headers)
    assert response.status_code == 403


def test_malformed_json_is_a_400_problem_naming_the_reason(client: TestClient, keys: Keys) -> None:
    response = post(client, "/v1/batch", b'{"batch": [', keys.write)
    assert response.status_code == 400
    problem = response.json()
    assert problem["detail"].startswith("malformed JSON")
    assert problem["errors"][0]["field"] == "body"


def test_non_utf8_body_is_a_400_problem_saying_so(client: TestClient, keys: Keys) -> None:
    body = '{"batch": [{"type": "track", "userId": "李", "event": "E"}]}'.encode("gbk")
    response = post(client, "/v1/batch", body, keys.write)
    assert response.status_code == 400
    assert "not valid UTF-8" in response.json()["detail"]


def test_body_that_is_not_an_object_or_has_no_batch_is_400(client: TestClient, keys: Keys) -> None:
    assert post(client, "/v1/batch", [track("m")], keys.write).status_code == 400
    response = post(client, "/v1/batch", {"events": []}, keys.write)
    assert response.status_code == 400
    assert response.json()["errors"][0]["field"] == "batch"


def test_gzip_body_is_accepted(client: TestClient, keys: Keys, stores: Stores) -> None:
    body = gzip.compress(orjson.dumps({"batch": [track(f"g{i}") for i in range(20)]}))
    response = post(client, "/v1/batch", body, keys.write, **{"Content-Encoding": "gzip"})
    assert response.status_code == 200, response.text
    assert count_events(stores) == 20


def test_corrupt_gzip_is_400_and_unknown_encoding_is_415(client: TestClient, keys: Keys) -> None:
    bad = post(client, "/v1/batch", b"not gzip", keys.write, **{"Content-Encoding": "gzip"})
    assert bad.status_code == 400
    br = post(client, "/v1/batch", b"{}", keys.write, **{"Content-Encoding": "br"})
    assert br.status_code == 415


def test_batch_over_500_kb_after_decompression_is_413(
    client: TestClient, keys: Keys, stores: Stores
) -> None:
    batch = [track(f"m{i}", properties={"note": "x" * 20_000}) for i in range(26)]
    raw = orjson.dumps({"batch": batch})
    assert len(raw) > 500 * 1024
    compressed = gzip.compress(raw)
    assert len(compressed) < 32 * 1024  # small on the wire, large once inflated
    response = post(client, "/v1/batch", compressed, keys.write, **{"Content-Encoding": "gzip"})
    assert response.status_code == 413
    assert response.headers["content-type"].startswith("application/problem+json")
    assert post(client, "/v1/batch", raw, keys.write).status_code == 413
    assert count_events(stores) == 0


def test_single_call_over_32_kb_is_413(client: TestClient, keys: Keys) -> None:
    big = track("m", properties={"note": "x" * 33_000})
    assert post(client, "/v1/track", big, keys.write).status_code == 413


def test_event_over_32_kb_inside_a_batch_is_rejected_alone(
    client: TestClient, keys: Keys, stores: Stores
) -> None:
    batch = [track("small"), track("big", properties={"note": "x" * 33_000})]
    response = post(client, "/v1/batch", {"batch": batch}, keys.write)
    assert response.status_code == 200
    assert [r["messageId"] for r in response.json()["rejected"]] == ["big"]
    assert count_events(stores) == 1


def test_every_event_rejected_is_400_with_the_list(
    client: TestClient, keys: Keys, stores: Stores
) -> None:
    batch = [{"type": "track", "event": "E", "messageId": "m1"}, {"type": "track", "userId": "u"}]
    response = post(client, "/v1/batch", {"batch": batch}, keys.write)
    assert response.status_code == 400
    body = response.json()
    assert body["success"] is False
    assert [(r["index"], r["field"]) for r in body["rejected"]] == [(0, "userId"), (1, "event")]
    assert body["errors"] == body["rejected"]
    assert count_events(stores) == 0


@pytest.mark.parametrize(
    ("message", "field"),
    [
        ({"userId": "u", "event": "E", "timestamp": "2026-11-05T00:00:00Z"}, "timestamp"),
        ({"anonymousId": None, "event": "E"}, "userId"),
        ({"userId": "u", "event": "E", "properties": "cheap"}, "properties"),
        ({"userId": "u", "event": ["E"]}, "event"),
    ],
)
def test_invalid_single_event_is_400_naming_the_field(
    client: TestClient, keys: Keys, message: dict[str, Any], field: str
) -> None:
    response = post(client, "/v1/track", message, keys.write)
    assert response.status_code == 400
    assert field in [r["field"] for r in response.json()["rejected"]]


def test_unknown_top_level_key_is_accepted(client: TestClient, keys: Keys) -> None:
    response = post(client, "/v1/track", {**track("m"), "rudderId": "r-1"}, keys.write)
    assert response.status_code == 200
    assert response.json()["accepted"] == 1


def test_source_is_the_write_key_id_and_the_key_is_never_stored(
    client: TestClient, keys: Keys, stores: Stores
) -> None:
    post(client, "/v1/track", {**track("m"), "writeKey": keys.write}, None)
    row = stores.warehouse.query("SELECT * FROM events").to_pylist()[0]
    assert row["source"] and row["source"] in keys.write
    assert all(keys.write not in str(v) for v in row.values())


def test_received_at_comes_from_the_server_clock(
    client: TestClient, keys: Keys, stores: Stores
) -> None:
    post(client, "/v1/track", track("m"), keys.write)
    received = stores.warehouse.query("SELECT received_at FROM events").column(0)[0].as_py()
    assert received == stores.clock.now().replace(tzinfo=None)


def test_openapi_documents_the_batch_body_and_answer(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    batch = spec["paths"]["/v1/batch"]["post"]
    schema = batch["requestBody"]["content"]["application/json"]["schema"]
    assert "batch" in schema["properties"]
    assert "$ref" not in orjson.dumps(schema).decode()
    for kind in ("track", "identify", "alias", "page", "screen", "group"):
        assert f"/v1/{kind}" in spec["paths"]
    assert "IngestResponse" in spec["components"]["schemas"]


def test_app_without_lifespan_still_stores(stores: Stores, keys: Keys) -> None:
    from zhiying.api.app import create_app

    bare = TestClient(create_app(stores))  # no `with`: no writer thread
    assert post(bare, "/v1/track", track("m"), keys.write).json()["accepted"] == 1
    assert count_events(stores) == 1
