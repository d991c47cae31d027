"""The validation worker process: same answers as inline, and inline when it is gone."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient

from tests.ingest.conftest import Keys, basic, count_events, track
from zhiying.ingest.models import BatchContext, rows_to_table, validate_batch, validate_batch_table
from zhiying.ingest.prepare import BadBody, Prepared, prepare_body
from zhiying.ingest.workers import Validators, answer, table_from_ipc
from zhiying.ingest.writer import EventWriter
from zhiying.runtime import Stores

NOW = datetime(2026, 11, 1, 9, 0, tzinfo=UTC)

MESSAGES: list[Any] = [
    track("m1", properties={"revenue": "19.90", "currency": "cny", "products": [{"price": 9}]}),
    {
        "type": "identify",
        "messageId": "m2",
        "userId": "u2",
        "traits": {"phone": "13800138000", "email": "A@Example.com", "city": "重庆"},
        "context": {"device": {"id": "dev-2"}},
    },
    {"type": "page", "messageId": "m3", "anonymousId": "a3", "name": "Home"},
    track("m4", properties={"products": [{"price": "cheap"}]}),
    {"type": "bogus", "messageId": "m5", "userId": "u5"},
    "not an object",
    {"type": "track", "messageId": "m7", "userId": "u7", "event": "x", "timestamp": "soon"},
]
BODY = orjson.dumps({"batch": MESSAGES, "sentAt": "2026-11-01T09:00:01Z"})


def wait_ready(validators: Validators, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not validators.ready:
        assert time.monotonic() < deadline, "the validation worker did not start"
        time.sleep(0.02)


@pytest.fixture(scope="module")
def validators() -> Iterator[Validators]:
    v = Validators(min_bytes=0)
    v.start()
    wait_ready(v)
    yield v
    v.close()


def prepare(validators: Validators, body: bytes, endpoint_type: str | None = None) -> Prepared:
    return asyncio.run(
        validators.prepare(
            body,
            endpoint_type=endpoint_type,
            received_at=NOW,
            source="key1",
            default_region="CN",
        )
    )


def inline(body: bytes, endpoint_type: str | None = None) -> Prepared:
    return prepare_body(
        body, endpoint_type=endpoint_type, received_at=NOW, source="key1", default_region="CN"
    )


def test_worker_answers_exactly_what_inline_validation_answers(validators: Validators) -> None:
    before = validators.offloaded
    remote = prepare(validators, BODY)
    local = inline(BODY)
    assert validators.offloaded == before + 1
    assert remote.events.to_pylist() == local.events.to_pylist()
    assert remote.events.schema.equals(local.events.schema)
    assert [r.as_dict() for r in remote.rejected] == [r.as_dict() for r in local.rejected]
    assert {r.index for r in remote.rejected} == {3, 4, 5, 6}
    assert remote.events.num_rows == 3


@pytest.mark.parametrize(
    ("body", "field", "reason"),
    [
        (b"{nope", "body", "malformed JSON"),
        (b'{"batch": []}', "batch", "batch is empty"),
        (b'{"batch": [{}], "sentAt": "later"}', "sentAt", "not an ISO-8601 date-time"),
        (b'{"batch": [{}], "context": 3}', "context", "context must be an object"),
        (b"[1, 2]", "body", "the body must be a JSON object"),
    ],
)
def test_a_bad_body_is_refused_by_the_worker_as_inline(
    validators: Validators, body: bytes, field: str, reason: str
) -> None:
    with pytest.raises(BadBody) as remote:
        prepare(validators, body)
    with pytest.raises(BadBody) as local:
        inline(body)
    assert (remote.value.field, remote.value.message) == (local.value.field, local.value.message)
    assert remote.value.field == field and reason in remote.value.message


def test_single_message_endpoints_keep_their_type_rule_in_the_worker(
    validators: Validators,
) -> None:
    body = orjson.dumps({"type": "page", "userId": "u1", "messageId": "p1"})
    remote = prepare(validators, body, endpoint_type="track")
    assert [(r.field, r.reason) for r in remote.rejected] == [
        ("type", "'page' sent to the /v1/track endpoint")
    ]


@pytest.fixture
def own_validators() -> Iterator[Validators]:
    v = Validators(min_bytes=0)
    v.start()
    wait_ready(v)
    yield v
    v.close()


def test_a_killed_worker_means_inline_checks_then_a_new_worker(
    own_validators: Validators,
) -> None:
    validators = own_validators
    worker = validators._worker
    assert worker is not None
    worker.process.kill()
    worker.process.wait()
    # The body is checked inline while no worker answers ...
    result = prepare(validators, BODY)
    assert result.events.num_rows == 3
    deadline = time.monotonic() + 30
    while validators.ready:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    # ... and the next large body starts a new worker, which then does the work.
    assert not validators.wants(len(BODY))
    wait_ready(validators)
    offloaded = validators.offloaded
    assert prepare(validators, BODY).events.num_rows == 3
    assert validators.offloaded == offloaded + 1


def test_small_bodies_stay_inline_and_start_nothing() -> None:
    v = Validators(min_bytes=1024)
    try:
        assert not v.wants(100)
        assert v._worker is None
    finally:
        v.close()


def test_answer_frames_round_trip_without_a_process() -> None:
    import pickle

    kind, value = pickle.loads(answer(pickle.dumps((BODY, None, NOW, "key1", "CN"))))
    assert kind == "ok"
    data, rejected = value
    assert table_from_ipc(data).num_rows == 3
    assert len(rejected) == len(inline(BODY).rejected)


def test_batch_table_is_the_table_of_the_rows() -> None:
    batch = BatchContext(received_at=NOW, source="s", sent_at=NOW)
    rows, rejected = validate_batch(MESSAGES, batch)
    table, rejected_too = validate_batch_table(MESSAGES, batch)
    assert table.to_pylist() == rows_to_table(rows).to_pylist()
    assert rejected_too == rejected


def test_writer_stores_arrow_tables_and_row_lists_in_one_commit(stores: Stores) -> None:
    writer = EventWriter(stores, linger=0.3, validate_in_worker=False)
    writer.start()
    try:
        batch = BatchContext(received_at=stores.clock.now())
        table, _ = validate_batch_table([track("t1"), track("t2", user_id="u2")], batch)
        rows, _ = validate_batch([track("t2", user_id="u2"), track("t3")], batch)
        a, b = writer.submit(table), writer.submit(rows)
        first, second = a.result(timeout=30), b.result(timeout=30)
    finally:
        writer.stop()
    assert writer.commits == 1
    assert (first.inserted, second.inserted, second.duplicates) == (2, 1, 1)
    assert count_events(stores) == 3


def test_large_batch_goes_through_the_worker_with_per_event_answers(
    client: TestClient, keys: Keys, stores: Stores
) -> None:
    writer = client.app.state.event_writer  # type: ignore[attr-defined]
    assert isinstance(writer, EventWriter)
    headers = {"Content-Type": "application/json", **basic(keys.write)}

    def send(prefix: str) -> Any:
        batch = [track(f"{prefix}{i}", user_id=f"u{i % 17}") for i in range(500)]
        batch[42] = track(f"{prefix}42", properties={"products": [{"quantity": "two"}]})
        body = orjson.dumps({"batch": batch})
        assert len(body) >= writer.validators.min_bytes
        return client.post("/v1/batch", content=body, headers=headers).json()

    first = send("a")  # checked inline while the worker starts
    wait_ready(writer.validators)
    second = send("b")
    assert writer.validators.offloaded == 1
    expected = [
        {
            "index": 42,
            "field": "properties.products[0].quantity",
            "reason": "must be a whole number, got 'two'",
        }
    ]
    for answer_, prefix in ((first, "a"), (second, "b")):
        assert answer_["accepted"] == 499
        assert [
            {k: v for k, v in r.items() if k != "messageId"} for r in answer_["rejected"]
        ] == expected
        assert answer_["rejected"][0]["messageId"] == f"{prefix}42"
    assert count_events(stores) == 998


def test_duckdb_checkpoints_about_once_per_row_group(stores: Stores) -> None:
    table = stores.warehouse.query("SELECT current_setting('checkpoint_threshold') AS t")
    assert table.column("t")[0].as_py() == "122.0 MiB"


def test_an_unexpected_failure_in_the_worker_is_answered_not_fatal(
    validators: Validators,
) -> None:
    import pickle

    naive = datetime(2026, 11, 1, 9, 0)
    kind, text = pickle.loads(answer(pickle.dumps((BODY, None, naive, "key1", "CN"))))
    # The answer names the exception and its frames, never its message (it may quote PII).
    assert kind == "error" and text.startswith("ValueError\n") and "ValueError:" not in text
    # Through the worker: re-run inline, where the same error surfaces to the caller.
    with pytest.raises(ValueError, match="aware"):
        asyncio.run(
            validators.prepare(
                BODY, endpoint_type=None, received_at=naive, source="k", default_region="CN"
            )
        )
    assert prepare(validators, BODY).events.num_rows == 3  # the worker is still there


def test_bodies_are_checked_inline_when_the_worker_queue_is_full(
    validators: Validators, monkeypatch: pytest.MonkeyPatch
) -> None:
    from zhiying.ingest import workers

    before = validators.offloaded
    monkeypatch.setattr(workers, "MAX_QUEUED", 0)
    assert prepare(validators, BODY).events.num_rows == 3
    assert validators.offloaded == before
