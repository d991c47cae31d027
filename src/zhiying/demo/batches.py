"""The simulation as SDK-sized batches, validated by the ingestion code, ready to store.

Generating and validating messages is pure Python work; storing them is mostly
database work. ``batches(config, parallel=True)`` does the first in a helper
process and hands over Arrow tables (cheap to pickle), so on a machine with two
cores the two halves overlap. ``parallel=False`` does everything in-process;
both give the same batches, in the same order.

Each batch is what one SDK flush would be: the next ``chunk_size`` messages
in timestamp order, "sent" and "received" one second after its last event
(``sentAt == receivedAt``, so Segment's clock-skew correction keeps every
timestamp as simulated), validated by ``zhiying.ingest.models.validate_batch``
exactly as ``POST /v1/batch`` validates.
"""

from __future__ import annotations

import multiprocessing
import queue as queue_module
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pyarrow as pa

from zhiying.demo.simulate import SimConfig, SimTruth, Simulation
from zhiying.ingest.models import BatchContext, Rejection, rows_to_table, validate_batch

SOURCE = "demo"
_POLL_SECONDS = 1.0


@dataclass(frozen=True)
class Batch:
    """One flush: ``table`` holds the valid rows (``EVENTS`` schema) of ``sent`` messages."""

    received_at: datetime
    sent: int
    table: pa.Table
    rejections: tuple[Rejection, ...]


@dataclass(frozen=True)
class _Done:
    truth: SimTruth


@dataclass(frozen=True)
class _Failed:
    error: str


def _validated(messages: list[dict[str, Any]], received_at: datetime) -> Batch:
    context = BatchContext(received_at=received_at, source=SOURCE, sent_at=received_at)
    rows, rejections = validate_batch(messages, context)
    return Batch(received_at, len(messages), rows_to_table(rows), tuple(rejections))


def local_batches(config: SimConfig, chunk_size: int, truth: SimTruth) -> Iterator[Batch]:
    """The batches of ``config``'s simulation, generated and validated in this process."""
    end = config.end_utc
    chunk: list[dict[str, Any]] = []
    last_ms = 0
    for item in Simulation(config).messages(truth):
        chunk.append(item.message)
        last_ms = item.at_ms
        if len(chunk) >= chunk_size:
            yield _validated(chunk, _flush_time(last_ms, end))
            chunk = []
    if chunk:
        yield _validated(chunk, _flush_time(last_ms, end))


def _flush_time(last_ms: int, end: datetime) -> datetime:
    return min(datetime.fromtimestamp(last_ms / 1000, UTC) + timedelta(seconds=1), end)


def _produce(config: SimConfig, chunk_size: int, out: Any) -> None:
    """Helper-process entry point: put every batch, then ``_Done`` (or ``_Failed``)."""
    truth = SimTruth()
    try:
        for batch in local_batches(config, chunk_size, truth):
            out.put(batch)
        out.put(_Done(truth))
    except BaseException as exc:  # reported to the parent, which raises
        out.put(_Failed(f"{type(exc).__name__}: {exc}"))
        raise


def batches(
    config: SimConfig, chunk_size: int, truth: SimTruth, *, parallel: bool = True
) -> Iterator[Batch]:
    """The batches of ``config``'s simulation; ``truth`` is filled once they are all read.

    With ``parallel``, a helper process (spawned, so no store handle is
    inherited) generates and validates up to 3 batches ahead of the consumer.
    """
    if not parallel:
        yield from local_batches(config, chunk_size, truth)
        return
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue(maxsize=3)
    process = ctx.Process(target=_produce, args=(config, chunk_size, out), daemon=True)
    process.start()
    try:
        while True:
            try:
                item = out.get(timeout=_POLL_SECONDS)
            except queue_module.Empty:
                if not process.is_alive():
                    raise RuntimeError(
                        f"the demo's simulation process died (exit code {process.exitcode})"
                    ) from None
                continue
            if isinstance(item, _Failed):
                raise RuntimeError(f"the demo's simulation failed: {item.error}")
            if isinstance(item, _Done):
                _merge_truth(truth, item.truth)
                return
            yield item
    finally:
        if process.is_alive():
            process.terminate()
        process.join()
        out.close()


def _merge_truth(into: SimTruth, other: SimTruth) -> None:
    into.messages += other.messages
    into.retries += other.retries
    into.orders += other.orders
    into.revenue_fen_by_city.update(other.revenue_fen_by_city)
    into.messages_by_channel.update(other.messages_by_channel)
    into.messages_by_type.update(other.messages_by_type)
    into.orders_by_city.update(other.orders_by_city)
    into.identified_users |= other.identified_users
