"""Parse and validate request bodies in a worker process: the server's second core.

Python runs one thread at a time per process, and a server process spends its
time on three things: HTTP, turning a body into an ``EVENTS`` table
(:func:`zhiying.ingest.prepare.prepare_body`: JSON parsing, per-message rules,
Arrow columns — about half of the CPU of an event) and storing
(``store_events``). :class:`Validators` moves the middle one into a worker
process (``python -m zhiying.ingest.workers``), so it runs in parallel with the
other two instead of taking turns for the same interpreter lock.

What crosses the process boundary (length-prefixed pickles over the worker's
stdin/stdout, answered in order): the raw body and the request's constants
(receive time, write key id, phone region) one way; the table as Arrow IPC
bytes (read back without copying the columns) and the rejections, or the
:class:`~zhiying.ingest.prepare.BadBody` problem, the other way. The function
is pure, so the answer is the one the request would get inline.

The worker is a plain subprocess rather than a ``multiprocessing`` pool: a
spawned pool child re-imports the parent's ``__main__`` (the whole CLI), which
takes seconds; this one imports the validator only.

Only large bodies go to the worker (``min_bytes``; a single event is cheaper to
check inline than to ship). The worker starts on the first large body, in the
background: until it has answered its first (empty) call, bodies are checked
inline; if it dies, the requests it held are checked inline and a new worker
is started for the next ones. ``enabled=False`` keeps everything inline.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import gc
import logging
import pickle
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from datetime import UTC, datetime
from typing import IO, Any, Final

import pyarrow as pa

from zhiying.errors import redacted
from zhiying.ingest.models import Rejection
from zhiying.ingest.prepare import BadBody, Prepared, parse_body, prepare_body, prepare_payload

log = logging.getLogger(__name__)

DEFAULT_MIN_BYTES: Final = 64 * 1024
"""Bodies at least this large are checked in the worker (about 100 events)."""
MAX_QUEUED: Final = 32
"""Bodies waiting for the worker beyond which new ones are checked inline: that
blocks the event loop as before the worker existed, which is the backpressure
that keeps a flood of requests from piling up in memory."""
_HEADER: Final = struct.Struct("!Q")
_PING: Final = b""


class WorkerGone(RuntimeError):
    """The worker process ended before answering (the caller checks inline)."""


def table_to_ipc(table: pa.Table) -> bytes:
    """``table`` as Arrow IPC stream bytes."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()  # type: ignore[no-any-return]


def table_from_ipc(data: bytes) -> pa.Table:
    """The table of :func:`table_to_ipc` (columns point into ``data``; nothing copied)."""
    return pa.ipc.open_stream(pa.py_buffer(data)).read_all()


# --- the worker side ----------------------------------------------------------------


def _read_frame(stream: IO[bytes]) -> bytes | None:
    header = stream.read(_HEADER.size)
    if len(header) < _HEADER.size:
        return None
    (size,) = _HEADER.unpack(header)
    data = stream.read(size)
    if len(data) < size:
        return None
    return data


def _write_frame(stream: IO[bytes], data: bytes) -> None:
    stream.write(_HEADER.pack(len(data)))
    stream.write(data)
    stream.flush()


def answer(request: bytes) -> bytes:
    """One request frame → its answer frame (pure; the worker loop calls it)."""
    return _answer(request)[0]


def _answer(request: bytes) -> tuple[bytes, object]:
    """:func:`answer`, plus the parsed body: the caller drops it only after sending
    the answer, so that freeing thousands of small objects (≈ 1 ms for 500 events)
    is not part of the request's wait."""
    if request == _PING:  # warm up: every import and code path of a real call
        prepare_body(
            b'{"batch": [{"type": "track", "event": "e", "userId": "u"}]}',
            endpoint_type=None,
            received_at=datetime(2026, 1, 1, tzinfo=UTC),
            source=None,
            default_region="CN",
        )
        return pickle.dumps(("ok", None)), None
    body, endpoint_type, received_at, source, region = pickle.loads(request)
    # A parsed body is thousands of small dicts and lists without cycles: the
    # cyclic collector would only rescan them while they are being built.
    gc.disable()
    payload = None
    try:
        payload = parse_body(body)
        prepared = prepare_payload(
            payload,
            endpoint_type=endpoint_type,
            received_at=received_at,
            source=source,
            default_region=region,
            body_size=len(body),
        )
    except BadBody as exc:
        return pickle.dumps(("bad", (exc.message, exc.field)), protocol=5), payload
    except Exception as exc:  # a bug: the caller re-runs the body inline, where it surfaces
        return pickle.dumps(("error", redacted(exc)), protocol=5), payload
    finally:
        gc.enable()
    frame = pickle.dumps(("ok", (table_to_ipc(prepared.events), prepared.rejected)), protocol=5)
    return frame, payload


def worker_main(stdin: IO[bytes], stdout: IO[bytes]) -> None:
    """Answer frames from ``stdin`` on ``stdout`` until ``stdin`` closes."""
    # Ctrl-C reaches the whole process group: the server shuts down and closes
    # our stdin once it has its answers, so the worker ignores the signal.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Everything imported so far lives as long as the worker: keep the cyclic
    # collector from scanning it again and again.
    gc.collect()
    gc.freeze()
    try:
        while (request := _read_frame(stdin)) is not None:
            frame, parsed = _answer(request)
            _write_frame(stdout, frame)
            del parsed  # freed after the answer is on its way
    except BrokenPipeError:
        pass  # the server is gone


# --- the server side ----------------------------------------------------------------


class _Worker:
    """One running worker process, its pending calls (answered in order) and two
    threads: one writes requests (a write blocks while the pipe is full), one
    reads answers and resolves the calls' futures."""

    def __init__(self, on_exit: Callable[[_Worker], None]) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "zhiying.ingest.workers"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        self._pending: collections.deque[Future[Any]] = collections.deque()
        self._outbox: collections.deque[bytes | None] = collections.deque()
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._closed = False
        self._on_exit = on_exit
        self._writer = threading.Thread(target=self._write, name="zhiying-worker-in", daemon=True)
        self._reader = threading.Thread(target=self._read, name="zhiying-worker-out", daemon=True)
        self._writer.start()
        self._reader.start()

    @property
    def queued(self) -> int:
        return len(self._pending)

    def call(self, request: bytes) -> Future[Any]:
        future: Future[Any] = Future()
        with self._lock:
            if self._closed:
                raise WorkerGone("the validation worker is stopped")
            self._pending.append(future)
            self._outbox.append(request)
            self._wake.notify()
        return future

    def _write(self) -> None:
        stdin = self.process.stdin
        assert stdin is not None
        try:
            while True:
                with self._lock:
                    while not self._outbox:
                        self._wake.wait()
                    request = self._outbox.popleft()
                if request is None:
                    break
                _write_frame(stdin, request)
        except (BrokenPipeError, OSError, ValueError):
            pass  # the reader sees the worker end and fails what is pending
        finally:
            with contextlib.suppress(OSError):
                stdin.close()

    def _read(self) -> None:
        stdout = self.process.stdout
        assert stdout is not None
        try:
            while (frame := _read_frame(stdout)) is not None:
                with self._lock:
                    future = self._pending.popleft()
                try:
                    future.set_result(pickle.loads(frame))
                except Exception as exc:  # never leave a request waiting
                    future.set_exception(WorkerGone(f"unreadable answer: {exc!r}"))
        except Exception:  # a broken pipe or protocol: end this worker, fail what waits
            log.exception("reading from the validation worker failed")
            self.process.kill()
        with self._lock:
            self._closed = True
            pending, self._pending = list(self._pending), collections.deque()
            self._outbox.append(None)
            self._wake.notify()
        for future in pending:
            future.set_exception(WorkerGone("the validation worker ended"))
        self.process.wait()
        self._on_exit(self)

    def close(self, timeout: float) -> None:
        """Let the worker finish what it holds, then end it."""
        with self._lock:
            self._outbox.append(None)
            self._wake.notify()
        self._reader.join(timeout)
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


class Validators:
    """The server's validation worker (see the module docstring)."""

    def __init__(self, *, enabled: bool = True, min_bytes: int = DEFAULT_MIN_BYTES) -> None:
        self.enabled = enabled
        self.min_bytes = min_bytes
        self._worker: _Worker | None = None
        self._ready = False
        self._lock = threading.Lock()
        self._closed = False
        self.offloaded = 0  # bodies the worker checked (tests, the bench)

    @property
    def ready(self) -> bool:
        return self._ready

    def wants(self, body_size: int) -> bool:
        """Should a body of this size go to the worker? Starts the worker when the
        body is large and no worker runs (the body itself is checked inline then)."""
        if not self.enabled or body_size < self.min_bytes or self._closed:
            return False
        if self._ready:
            return True
        self.start()
        return False

    def start(self) -> None:
        """Start the worker in the background (no-op when it runs or is starting)."""
        with self._lock:
            if self._worker is not None or self._closed:
                return
            worker = self._worker = _Worker(self._exited)
        started = time.monotonic()
        worker.call(_PING).add_done_callback(lambda done: self._warmed(worker, done, started))

    def _warmed(self, worker: _Worker, done: Future[Any], started: float) -> None:
        if done.exception() is not None:
            return  # _exited cleans up
        with self._lock:
            if self._worker is worker:
                self._ready = True
        log.info("validation worker ready after %.1f s", time.monotonic() - started)

    def _exited(self, worker: _Worker) -> None:
        with self._lock:
            if self._worker is worker:
                self._worker = None
                self._ready = False
        if not self._closed:
            log.warning("the validation worker ended (exit code %s)", worker.process.returncode)

    async def prepare(
        self,
        body: bytes,
        *,
        endpoint_type: str | None,
        received_at: datetime,
        source: str | None,
        default_region: str,
    ) -> Prepared:
        """``prepare_body`` in the worker; inline when the worker is not there or ends
        before answering. Raises :class:`zhiying.ingest.prepare.BadBody` as
        ``prepare_body`` does."""
        worker = self._worker
        if worker is not None and self._ready and worker.queued < MAX_QUEUED:
            request = pickle.dumps(
                (body, endpoint_type, received_at, source, default_region), protocol=5
            )
            try:
                kind, value = await asyncio.wrap_future(worker.call(request))
            except WorkerGone:
                log.warning("the validation worker ended; checking this body inline")
            else:
                if kind == "bad":
                    raise BadBody(*value)
                if kind == "error":
                    log.error("the validation worker failed; checking inline:\n%s", value)
                    return prepare_body(
                        body,
                        endpoint_type=endpoint_type,
                        received_at=received_at,
                        source=source,
                        default_region=default_region,
                    )
                data, rejected = value
                self.offloaded += 1
                return Prepared(table_from_ipc(data), _rejections(rejected), ipc=data)
        return prepare_body(
            body,
            endpoint_type=endpoint_type,
            received_at=received_at,
            source=source,
            default_region=default_region,
        )

    def close(self, timeout: float = 30.0) -> None:
        """Stop the worker (it first answers what it holds)."""
        with self._lock:
            self._closed = True
            worker, self._worker, self._ready = self._worker, None, False
        if worker is not None:
            worker.close(timeout)


def _rejections(value: object) -> list[Rejection]:
    assert isinstance(value, list)
    return value


if __name__ == "__main__":
    worker_main(sys.stdin.buffer, sys.stdout.buffer)
