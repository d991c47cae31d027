"""Ingestion over HTTP: ``/v1/batch`` of 500 events against a real ``zhiying serve``.

    .venv/bin/python -m bench.ingest_http [--seconds 15] [--senders 4] [--users 50000]

Starts ``zhiying serve`` (uvicorn, one process plus its validation worker
process) on a free loopback port with a fresh data directory (SQLite + DuckDB),
then from this process posts pre-built realistic batches (track/page/identify
mix, orders with products, web and app contexts) over keep-alive connections
from ``--senders`` threads: ``--warmup`` seconds first (not counted: the worker
starts, caches fill), then ``--seconds`` measured. Prints events/s,
per-request p50/p99, and CPU per event of the server process, of its worker
and of this client process, with the load average.

Beside it, measured in the same run:
- the floor: the same kind of batches validated and stored with
  ``store_events`` directly in this process (no HTTP, one process), with the
  time per step — the previous validator (``orjson.loads`` + ``validate_batch`` +
  ``rows_to_table``) and the current one (``prepare_body``);
- ``GET /health`` requests/s over the same connections (the HTTP stack alone).

In spool mode (answers once the events are spooled) the CPU is read after
``POST /api/ingest/flush`` has waited for the loader to store everything
answered, and the time that took is printed with the rate that includes it.
"""

from __future__ import annotations

import argparse
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import pyarrow as pa

from zhiying.config import Settings
from zhiying.ingest.models import BatchContext, rows_to_table, validate_batch
from zhiying.ingest.pipeline import store_events
from zhiying.ingest.prepare import prepare_body
from zhiying.keys.service import create_key
from zhiying.runtime import open_stores

BATCH_SIZE = 500
TOKEN = b"BATCHTOKEN00"  # replaced per request so every messageId is new


class Population:
    """Stable people: each has a user id, an anonymous id, a device, a phone and an e-mail."""

    def __init__(self, users: int, seed: int = 7) -> None:
        self.rng = random.Random(seed)
        self.users = users

    def person(self) -> dict[str, str]:
        n = self.rng.randrange(self.users)
        return {
            "userId": f"u{n}",
            "anonymousId": f"anon-{n:08d}",
            "device": f"dev-{n:08d}",
            "phone": f"+86138{n:08d}",
            "email": f"user{n}@example.cn",
        }


PRODUCTS: list[dict[str, Any]] = [
    {
        "product_id": f"p{i}",
        "sku": f"SKU-{i:05d}",
        "name": f"Product {i}",
        "brand": ["Shiseido", "Lancome", "Pampers", "Nike", "Xiaomi"][i % 5],
        "category": ["Beauty", "Baby", "Sports", "Electronics"][i % 4],
        "price": round(9.9 + (i % 50) * 10.0, 2),
    }
    for i in range(500)
]


def message(pop: Population, index: int) -> dict[str, Any]:
    rng = pop.rng
    who = pop.person()
    on_app = rng.random() < 0.5
    context: dict[str, Any] = (
        {
            "app": {"name": "Shop", "version": "5.2.0", "build": "5200"},
            "device": {"id": who["device"], "manufacturer": "Xiaomi", "model": "14"},
            "os": {"name": "Android", "version": "14"},
            "library": {"name": "analytics-android", "version": "4.11.3"},
            "locale": "zh-CN",
            "network": {"wifi": True},
        }
        if on_app
        else {
            "page": {"path": "/p/1", "url": "https://shop.example.cn/p/1", "title": "Shop"},
            "userAgent": "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) Safari/604.1",
            "library": {"name": "analytics.js", "version": "5.2.0"},
            "locale": "zh-CN",
            "ip": "10.1.2.3",
        }
    )
    msg: dict[str, Any] = {
        "messageId": f"{TOKEN.decode()}-{index:04d}-{uuid.uuid4().hex[:12]}",
        "anonymousId": who["anonymousId"],
        "timestamp": "2026-11-01T08:59:58.123Z",
        "context": context,
    }
    if rng.random() < 0.7:
        msg["userId"] = who["userId"]
    kind = rng.random()
    product = rng.choice(PRODUCTS)
    if kind < 0.45:
        msg.update(type="track", event="Product Viewed", properties={**product, "currency": "CNY"})
    elif kind < 0.55:
        msg.update(
            type="track",
            event="Product Added",
            properties={**product, "quantity": 1, "currency": "CNY"},
        )
    elif kind < 0.65:
        items = [{**rng.choice(PRODUCTS), "quantity": rng.randint(1, 3)} for _ in range(3)]
        revenue = sum(round(p["price"] * p["quantity"], 2) for p in items)
        msg.update(
            type="track",
            event="Order Completed",
            properties={
                "order_id": uuid.uuid4().hex,
                "revenue": round(revenue, 2),
                "currency": "CNY",
                "coupon": rng.choice([None, "SPRING40", "NEW10"]),
                "products": items,
            },
        )
    elif kind < 0.90:
        msg.update(type="page", name="Product", properties={"url": context.get("page", {})})
    else:
        msg.update(
            type="identify",
            userId=who["userId"],
            traits={
                "phone": who["phone"],
                "email": who["email"],
                "city": rng.choice(["Chongqing", "Beijing", "Shanghai", "Chengdu"]),
                "gender": rng.choice(["f", "m"]),
                "member_level": rng.randint(1, 5),
            },
        )
    return msg


def batch_templates(pop: Population, count: int) -> list[bytes]:
    return [
        orjson.dumps(
            {"batch": [message(pop, i) for i in range(BATCH_SIZE)], "sentAt": "2026-11-01T09:00Z"}
        )
        for _ in range(count)
    ]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(data_dir: Path) -> tuple[subprocess.Popen[bytes], str, str, str]:
    stores = open_stores(Settings(data_dir=data_dir))
    key = create_key(stores.engine, "write", datetime.now(UTC), "bench")
    admin = create_key(stores.engine, "admin", datetime.now(UTC), "bench")
    stores.close()
    port = _free_port()
    command = [sys.executable, "-m", "zhiying.cli.main", "serve"]
    process = subprocess.Popen(
        [*command, "--port", str(port), "--log-level", "warning"],
        env={**os.environ, "ZHIYING_DATA_DIR": str(data_dir)},
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            if httpx.get(f"{url}/health").status_code == 200:
                return process, url, key, admin
        except httpx.HTTPError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError("server did not start")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` (Linux ``/proc``), all threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def child_pids(pid: int) -> list[int]:
    """Direct children of ``pid`` (the server's validation worker)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return found


def tree_cpu(pid: int) -> dict[int, float]:
    """CPU seconds of ``pid`` and of each of its children."""
    result = {pid: cpu_seconds(pid)}
    for child in child_pids(pid):
        try:
            result[child] = cpu_seconds(child)
        except OSError:
            continue
    return result


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def post_for(
    url: str, key: str, templates: list[bytes], seconds: float, senders: int, first: int = 0
) -> dict[str, Any]:
    """Post for ``seconds``; request n carries messageIds made from ``first + n``."""
    latencies: list[float] = []
    accepted = 0
    failures: dict[int, int] = defaultdict(int)
    lock = threading.Lock()
    counter = iter(range(first, 10**9))
    stop_at = time.perf_counter() + seconds

    def sender() -> None:
        nonlocal accepted
        with httpx.Client(auth=(key, ""), timeout=60) as client:
            while time.perf_counter() < stop_at:
                with lock:
                    n = next(counter)
                body = templates[n % len(templates)].replace(TOKEN, b"b%011d" % n)
                t = time.perf_counter()
                response = client.post(
                    f"{url}/v1/batch", content=body, headers={"Content-Type": "application/json"}
                )
                elapsed = time.perf_counter() - t
                with lock:
                    latencies.append(elapsed)
                    if response.status_code == 200:
                        accepted += response.json()["accepted"]
                    else:
                        failures[response.status_code] += 1

    started = time.perf_counter()
    threads = [threading.Thread(target=sender) for _ in range(senders)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    latencies.sort()
    return {
        "events_per_s": accepted / wall,
        "accepted": accepted,
        "next": next(counter),
        "requests": len(latencies),
        "p50_ms": 1000 * statistics.median(latencies),
        "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
        "failures": dict(failures),
    }


def flush_seconds(url: str, admin: str) -> float | None:
    """Seconds until everything answered is stored (``/api/ingest/flush``); None when
    the server has no such endpoint (it stores before answering)."""
    started = time.perf_counter()
    response = httpx.post(
        f"{url}/api/ingest/flush", headers={"Authorization": f"Bearer {admin}"}, timeout=300
    )
    if response.status_code == 404:
        return None
    response.raise_for_status()
    return time.perf_counter() - started


def health_rate(url: str, seconds: float, senders: int) -> float:
    count = 0
    lock = threading.Lock()
    stop_at = time.perf_counter() + seconds

    def sender() -> None:
        nonlocal count
        with httpx.Client() as client:
            while time.perf_counter() < stop_at:
                client.get(f"{url}/health")
                with lock:
                    count += 1

    threads = [threading.Thread(target=sender) for _ in range(senders)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return count / (time.perf_counter() - started)


def in_process(
    templates: list[bytes], seconds: float, group: int, *, current: bool
) -> dict[str, Any]:
    """The floor: parse, validate and ``store_events`` with no HTTP, ``group`` batches per
    call; ``current`` uses ``prepare_body``, otherwise the previous validator."""
    with tempfile.TemporaryDirectory() as tmp:
        stores = open_stores(Settings(data_dir=Path(tmp)))
        steps: dict[str, float] = defaultdict(float)
        events = 0
        n = 0
        started = time.perf_counter()
        cpu_started = time.process_time()
        while time.perf_counter() - started < seconds:
            rows: list[dict[str, Any]] = []
            tables = []
            for _ in range(group):
                body = templates[n % len(templates)].replace(TOKEN, b"b%011d" % n)
                n += 1
                t = time.perf_counter()
                if current:
                    tables.append(
                        prepare_body(
                            body,
                            endpoint_type=None,
                            received_at=datetime.now(UTC),
                            source="bench",
                            default_region="CN",
                        ).events
                    )
                    steps["parse+validate+arrow"] += time.perf_counter() - t
                    continue
                payload = orjson.loads(body)
                t1 = time.perf_counter()
                valid, _ = validate_batch(
                    payload["batch"], BatchContext(received_at=datetime.now(UTC), source="bench")
                )
                t2 = time.perf_counter()
                steps["parse"] += t1 - t
                steps["validate"] += t2 - t1
                rows.extend(valid)
            t = time.perf_counter()
            table = pa.concat_tables(tables) if current else rows_to_table(rows)
            steps["arrow"] += time.perf_counter() - t
            result = store_events(stores, table)
            for step, spent in result.timings.items():
                steps[step] += spent
            events += result.inserted
        wall = time.perf_counter() - started
        cpu = time.process_time() - cpu_started
        stores.close()
    return {
        "events_per_s": events / wall,
        "cpu_us_per_event": 1e6 * cpu / max(events, 1),
        "us_per_event": {k: round(1e6 * v / max(events, 1), 1) for k, v in steps.items()},
    }


def validator_ab(templates: list[bytes], rounds: int = 9) -> dict[str, float]:
    """CPU µs per event of ``prepare_body`` (parse, rules, Arrow) with the validator's
    fast path and with every message through the rules as written
    (``models._check_message``), in this process: one untimed pass of each (caches),
    then ``rounds`` rounds, alternating which goes first; min over the rounds."""
    from zhiying.ingest import models

    fast = models._check_fast
    bodies = [t.replace(TOKEN, b"v%011d" % n) for n, t in enumerate(templates)]
    received = datetime.now(UTC)
    spent: dict[str, list[float]] = {"rules only": [], "fast path": []}
    configs = [("rules only", lambda _m, _b: None), ("fast path", fast)]
    try:
        for n in range(rounds + 1):
            for label, check in configs if n % 2 else configs[::-1]:
                models._check_fast = check
                started = time.process_time()
                for body in bodies:
                    prepare_body(
                        body,
                        endpoint_type=None,
                        received_at=received,
                        source="bench",
                        default_region="CN",
                    )
                if n:  # the first round warms the caches
                    spent[label].append(time.process_time() - started)
    finally:
        models._check_fast = fast
    events = len(bodies) * BATCH_SIZE
    return {label: 1e6 * min(times) / events for label, times in spent.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--senders", type=int, default=4)
    parser.add_argument("--users", type=int, default=50_000)
    parser.add_argument("--templates", type=int, default=40)
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds posted first, uncounted")
    parser.add_argument("--no-floor", action="store_true", help="skip the in-process floors")
    parser.add_argument(
        "--validator-only",
        action="store_true",
        help="only time prepare_body with and without the validator's fast path (no server)",
    )
    args = parser.parse_args()

    pop = Population(args.users)
    templates = batch_templates(pop, args.templates)
    print(
        f"{len(templates)} batch templates of {BATCH_SIZE} events, "
        f"{sum(map(len, templates)) // len(templates) // 1024} KB each; {args.users} people"
    )
    print(f"machine: {os.cpu_count()} cores (shared; figures taken under load)")
    if args.validator_only:
        ab = validator_ab(templates)
        print(
            "prepare_body, CPU µs per event (min of 9 rounds, same process): "
            + ", ".join(f"{label} {us:.1f}" for label, us in ab.items())
            + f"; load {load_average()}"
        )
        return

    with tempfile.TemporaryDirectory() as tmp:
        process, url, key, admin = start_server(Path(tmp) / "data")
        try:
            warm = (
                post_for(url, key, templates, args.warmup, args.senders)
                if args.warmup > 0
                else {"next": 0}
            )
            load_before = load_average()
            cpu_before = tree_cpu(process.pid)
            client_before = time.process_time()
            http = post_for(url, key, templates, args.seconds, args.senders, first=warm["next"])
            drain = flush_seconds(url, admin)
            cpu_after = tree_cpu(process.pid)
            client_cpu = time.process_time() - client_before
            load_after = load_average()
            health = health_rate(url, 3.0, args.senders)
        finally:
            process.terminate()
            process.wait(60)
    print(
        f"HTTP /v1/batch  : {http['events_per_s']:9,.0f} events/s  "
        f"p50 {http['p50_ms']:6.1f} ms  p99 {http['p99_ms']:6.1f} ms  "
        f"({http['requests']} requests, {args.senders} senders, failures {http['failures']}; "
        f"after {args.warmup:.0f} s of warm-up)"
    )
    if drain is not None:
        # Answered = spooled: the figure that counts includes storing what was answered.
        stored_rate = http["accepted"] / (http["accepted"] / http["events_per_s"] + drain)
        print(
            f"  spool mode     : {drain:.2f} s to store the backlog after the last answer; "
            f"{stored_rate:,.0f} events/s answered AND stored (wall incl. that drain)"
        )
    events = max(int(http["accepted"]), 1)

    def per_event(seconds: float) -> float:
        return 1e6 * seconds / events

    server = per_event(cpu_after[process.pid] - cpu_before.get(process.pid, 0.0))
    workers = per_event(
        sum(v - cpu_before.get(p, 0.0) for p, v in cpu_after.items() if p != process.pid)
    )
    print(
        f"  CPU per event  : server {server:.1f} µs + its worker {workers:.1f} µs; "
        f"this client {per_event(client_cpu):.1f} µs (user+system, all threads)"
    )
    print(f"  load average   : {load_before} before, {load_after} after (2 cores)")
    print(f"HTTP /health    : {health:9,.0f} requests/s (the HTTP stack alone)")
    for current, label in ((False, "previous validator"), (True, "prepare_body")):
        if args.no_floor:
            break
        floor = in_process(templates, args.seconds, group=args.senders, current=current)
        print(
            f"in-process floor: {floor['events_per_s']:9,.0f} events/s  "
            f"({label} + store_events, {args.senders} batches per call, one process), "
            f"CPU {floor['cpu_us_per_event']:.1f} µs per event"
        )
        print("  µs per event by step:", floor["us_per_event"])


if __name__ == "__main__":
    main()
