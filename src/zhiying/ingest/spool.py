"""The ingestion spool: append-only files of validated events, the server's durability point.

When the server runs with a spool (``zhiying.ingest.writer``), a request is
answered once its valid events are in the spool: written here and
``fdatasync``'ed, one sync shared by every request of a group (group commit).
A loader thread stores them later, in large groups, with ``store_events``.

Layout: a directory of **segments** ``<number>.log`` (12 digits, increasing).
A segment is a sequence of records; a record is one table of ``EVENTS`` rows
(Arrow IPC stream bytes) behind a header of its length and CRC-32, so a record
torn by a crash (never synced, so never answered) is recognised and ignored.
Appends go to the newest segment; a new one is started when it exceeds
``segment_bytes`` (and at every start of the process: old segments are only
read). A segment is deleted (:meth:`Spool.release`) only once every record in it
is stored in both stores; a crash before that makes the next start store its
records again, which dedup by ``messageId`` turns into no-ops.

Events the stores keep refusing (``zhiying.ingest.writer``'s poison rule) are
set aside in ``dead/<UTC time>-<n>.arrows``: one Arrow IPC stream of ``EVENTS``
rows plus ``error_class`` and ``error`` (the exception's type and frames, never
its message, which can quote the row) per row; :func:`read_dead_letters` reads
one back as ``EVENTS`` rows for ``store_events``.
"""

from __future__ import annotations

import logging
import os
import struct
import threading
import zlib
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

import pyarrow as pa

from zhiying.warehouse.schema import EVENTS

log = logging.getLogger(__name__)

_HEADER: Final = struct.Struct("!II")  # payload length, CRC-32 of the payload
SEGMENT_BYTES: Final = 8 * 1024 * 1024
"""A new segment starts once the current one holds this much (≈ 15,000 events):
small enough that a restart re-reads little that was already stored."""


def _encode(table: pa.Table | bytes) -> bytes:
    """A record: ``table`` as Arrow IPC stream bytes (or those bytes, given) behind
    its header."""
    if isinstance(table, bytes):
        data = table
    else:
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, table.schema) as stream:
            stream.write_table(table)
        data = sink.getvalue().to_pybytes()
    return _HEADER.pack(len(data), zlib.crc32(data)) + data


DEAD_LETTERS: Final = pa.schema(
    [*EVENTS, pa.field("error_class", pa.string()), pa.field("error", pa.string())]
)
"""A dead-letter file's rows: the event, the class of the store's error, and the
error's type and frames (no message: it can quote the row)."""


def read_dead_letters(path: Path) -> pa.Table:
    """The ``EVENTS`` rows of a dead-letter file, ready for ``store_events``."""
    with pa.ipc.open_stream(path) as reader:
        table = reader.read_all()
    return table.select(EVENTS.names).cast(EVENTS)


def dead_letter_files(spool_dir: Path) -> list[Path]:
    """The dead-letter files of the spool in ``spool_dir``, oldest first (their names
    start with their UTC time); none when it has no ``dead/`` directory."""
    return sorted((spool_dir / "dead").glob("*.arrows"))


def _sync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Spool:
    """Segments of synced event tables in ``directory`` (see the module docstring).

    ``append`` is called by one thread (the writer), ``release`` by another (the
    loader); both are safe together.
    """

    def __init__(self, directory: Path, *, segment_bytes: int = SEGMENT_BYTES) -> None:
        self.directory = directory
        self.segment_bytes = segment_bytes
        directory.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        found = self.segments()
        self._current = (found[-1] if found else 0) + 1
        self._file: int | None = None
        self._size = 0
        self.synced = 0  # number of fdatasync calls (tests, the bench)

    def segments(self) -> list[int]:
        """Numbers of the segments on disk, oldest first."""
        numbers = [int(p.stem) for p in self.directory.glob("*.log") if p.stem.isdigit()]
        return sorted(numbers)

    def _path(self, number: int) -> Path:
        return self.directory / f"{number:012d}.log"

    def records(self, below: int | None = None) -> Iterator[tuple[int, pa.Table]]:
        """``(segment, table)`` of every complete record on disk, in append order
        (segments numbered below ``below`` only, when given). A torn or corrupt
        record ends its segment's reading: it and anything after it in that segment
        were never synced, so never answered."""
        for number in self.segments():
            if below is not None and number >= below:
                break
            data = self._path(number).read_bytes()
            offset = 0
            while offset < len(data):
                if offset + _HEADER.size > len(data):
                    log.warning("spool segment %d ends with a torn header; ignored", number)
                    break
                size, crc = _HEADER.unpack_from(data, offset)
                start = offset + _HEADER.size
                payload = data[start : start + size]
                if len(payload) < size or zlib.crc32(payload) != crc:
                    log.warning("spool segment %d ends with a torn record; ignored", number)
                    break
                yield number, pa.ipc.open_stream(pa.py_buffer(payload)).read_all()
                offset = start + size

    def append(self, tables: Sequence[pa.Table | bytes]) -> int:
        """Write ``tables`` as records and sync them (once for all); returns the segment
        they are in. When this returns, they survive a crash of the process or machine.
        A table may be given as its Arrow IPC stream bytes (``EVENTS`` schema)."""
        chunks = [_encode(table) for table in tables]
        with self._lock:
            if self._file is None or self._size >= self.segment_bytes:
                self._open_next()
            assert self._file is not None
            for chunk in chunks:
                view = memoryview(chunk)
                while view:
                    written = os.write(self._file, view)
                    view = view[written:]
                self._size += len(chunk)
            os.fdatasync(self._file)
            self.synced += 1
            return self._current

    def _open_next(self) -> None:
        if self._file is not None:
            os.close(self._file)
            self._current += 1
        path = self._path(self._current)
        self._file = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._size = 0
        _sync_directory(self.directory)  # the new name survives a crash too

    @property
    def current(self) -> int:
        """The segment appends go to now (it may not exist yet)."""
        with self._lock:
            return self._current

    def dead_letter(self, rows: pa.Table, now: datetime) -> Path:
        """Write ``rows`` (:data:`DEAD_LETTERS`) to a new file in ``dead/`` and sync it;
        returns its path. Called before the rows' segments may be released."""
        directory = self.directory / "dead"
        directory.mkdir(exist_ok=True)
        stamp = now.astimezone(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        n = 0
        while (path := directory / f"{stamp}-{n}.arrows").exists():
            n += 1
        temporary = path.with_suffix(".tmp")
        with temporary.open("wb") as f:
            with pa.ipc.new_stream(f, DEAD_LETTERS) as stream:
                stream.write_table(rows.select(DEAD_LETTERS.names).cast(DEAD_LETTERS))
            f.flush()
            os.fdatasync(f.fileno())
        temporary.rename(path)
        _sync_directory(directory)
        return path

    def dead_letter_files(self) -> list[Path]:
        """Dead-letter files, oldest first."""
        return dead_letter_files(self.directory)

    def release(self, below: int) -> None:
        """Delete the segments numbered below ``below``, except the one being
        appended to: the caller has stored every record in them."""
        with self._lock:
            open_one = self._current if self._file is not None else None
        for number in self.segments():
            if number >= below:
                break
            if number != open_one:
                self._path(number).unlink(missing_ok=True)

    def close(self, *, empty: bool) -> None:
        """Close the open segment; ``empty``: every record is stored, delete them all."""
        with self._lock:
            if self._file is not None:
                os.close(self._file)
                self._file = None
                self._current += 1
        if empty:
            for number in self.segments():
                self._path(number).unlink(missing_ok=True)
