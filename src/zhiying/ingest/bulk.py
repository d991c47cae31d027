"""Bulk import: a file of events, users or orders → validated ``EVENTS`` rows → ``store_events``.

The path is vectorised end to end. A private in-memory DuckDB reads the file
(``read_parquet``, ``read_csv``, JSONL lines), maps each row to message parts
(:mod:`zhiying.ingest.bulk_sql`), applies the HTTP validator's rules as SQL
(:mod:`zhiying.ingest.bulk_rules`) and streams Arrow chunks of ``chunk_size``
rows. Each chunk's rejected rows go to the rejects file, its valid rows to a temporary
Arrow file; then the identities of the whole file are resolved in one transaction
(:func:`resolve_import`) and the valid rows are stored through
:func:`zhiying.ingest.pipeline.store_events` (dedup by messageId, person keys,
traits, warehouse append — the same function the HTTP path uses) with their
ONE_IDs. docs/import.md ("How it works", "If an import dies half-way").

Idempotency: a row without a messageId gets ``imp-<md5 of its content>``,
plus ``-<n>`` for the n-th identical row of the file (n ≥ 2), so importing the
same file again produces the same ids and ``store_events`` drops them as
duplicates (within its dedup window, ``ZHIYING_DEDUP_WINDOW_DAYS``).

Progress is reported through a callback (no terminal code here).
"""

from __future__ import annotations

import gzip
import queue
import tempfile
import threading
import time
from collections.abc import Callable, Generator, Iterator
from contextlib import ExitStack, closing, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Final, Literal

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from zhiying.errors import ValidationFailed
from zhiying.identity.service import resolve_events
from zhiying.ingest.bulk_rules import (
    checked_select,
    ident,
    identifiers_sql,
    products_sql,
    register_udfs,
)
from zhiying.ingest.bulk_sql import (
    Column,
    MappedPlan,
    default_mapping,
    mapped_parts_sql,
    segment_parts_sql,
    source_sql,
)
from zhiying.ingest.formats import DEFAULT_CHUNK_SIZE, FileFormat, ImportKind
from zhiying.ingest.mapping import Mapping, guess_format
from zhiying.ingest.person_keys import key_resolution, person_keys
from zhiying.ingest.pipeline import (
    ImportBatch,
    StoreResult,
    identity_cache,
    store_event_batches,
    store_events,
)
from zhiying.runtime import Stores
from zhiying.warehouse.events import DedupMark, hold_event_writer, unseen_rows_hashed
from zhiying.warehouse.schema import EVENTS

STORE_BATCH = 1_000_000
"""Rows per ``store_events`` call (each its own transaction) once identities are resolved.

With identity resolved once per file (``resolve_import``) a batch costs dedup, person
keys, traits and the warehouse append, roughly in proportion to its rows; 1M rows
keeps the memory of a batch under ≈ 3 GB. (Resolving inside each batch, the
``identity_per_batch`` path, re-reads every person the batch names, so there
fewer, larger batches cost less: 1.5M events took 98 s CPU in 250k-row batches,
63 s in 1M.)"""
FIRST_STORE_BATCH = 250_000
"""The first store batch holds at most this many rows: nothing overlaps its keys and
traits (each later batch's overlap the append of the one before), so a small first
batch starts the appends sooner."""
RejectsFormat = Literal["csv", "jsonl"]


@dataclass(frozen=True)
class Progress:
    """Counts so far: source rows read, events stored, duplicates dropped, rows rejected."""

    rows_read: int
    stored: int
    duplicates: int
    rejected: int


ProgressCallback = Callable[[Progress], None]


@dataclass(frozen=True)
class ImportReport:
    """What an import did. ``events`` = messages built (orders group several rows)."""

    path: Path
    kind: ImportKind
    format: FileFormat
    rows_read: int
    events: int
    inserted: int
    duplicates: int
    rejected: int
    merges: int
    conflicts: int
    seconds: float
    rejects_path: Path | None
    first_rejections: tuple[tuple[int, str, str], ...] = field(default=())

    @property
    def events_per_second(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0


def import_file(
    stores: Stores,
    path: Path,
    *,
    kind: ImportKind = "events",
    fmt: FileFormat | None = None,
    mapping: Mapping | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    rejects_path: Path | None = None,
    progress: ProgressCallback | None = None,
    store_batch: int = STORE_BATCH,
    identity_per_batch: bool = False,
) -> ImportReport:
    """Import ``path`` as ``kind`` and return the counts.

    ``fmt`` defaults to the mapping's ``source.format``, then to the file name.
    JSONL without a mapping is read as Segment messages; every other input
    needs a mapping, except events in CSV/Parquet whose columns are named like
    Segment fields (see :func:`zhiying.ingest.bulk_sql.default_mapping`).
    Every valid row is stored; every rejected row is written to
    ``rejects_path`` (CSV, or JSONL when the name ends in ``.jsonl``) with its
    row number, field, reason and raw text.

    Two passes: the file is read and checked once, its valid rows spilled to a
    temporary Arrow file; identities are resolved for the whole file in one
    transaction (:func:`resolve_import`); then the rows are stored
    ``store_batch`` rows per ``store_events`` call (one transaction each) with
    their ONE_IDs and person keys, holding the event-writer lock throughout, so
    that the file's dedup stays true and is not made again per batch
    (``pipeline.store_event_batches``). ``identity_per_batch`` resolves inside each ``store_events``
    call instead (the path before, kept for comparison: each batch re-reads
    the people it names).
    """
    started = time.perf_counter()
    if not path.is_file():
        raise ValidationFailed(f"no such file: {path}", field="file")
    if chunk_size < 1:
        raise ValidationFailed("chunk size must be at least 1", field="chunk_size")
    if store_batch < 1:
        raise ValidationFailed("store batch must be at least 1", field="store_batch")
    if mapping is not None and mapping.kind is not None and mapping.kind != kind:
        raise ValidationFailed(
            f"the mapping is for `import {mapping.kind}`, not `import {kind}`", field="mapping"
        )
    fmt = resolve_format(path, fmt, mapping)
    received_at = stores.clock.now()
    read = events = inserted = duplicates = rejected = 0
    with _Spill() as spill:
        # Pass 1: read and check the file; valid rows to the spill file, rejects out.
        with (
            _open_checked(
                path, fmt, kind, mapping, received_at, stores.settings.default_phone_region
            ) as (con, checked),
            ExitStack() as stack,  # stops the reader thread before the connection closes
        ):
            ids = _DerivedIds(con.cursor())
            rejects = _Rejects(rejects_path, con.cursor())
            try:
                chunks = checked.chunks(chunk_size)
                for chunk in stack.enter_context(closing(_read_ahead(chunks))):
                    bad = chunk.column("__bad").combine_chunks()
                    if bad.true_count:  # filtering copies every column: only when needed
                        good, bad_rows = chunk.filter(pc.invert(bad)), chunk.filter(bad)
                    else:
                        good, bad_rows = chunk, chunk.slice(0, 0)
                    read += int(pc.sum(chunk.column("__lines")).as_py() or 0)
                    events += chunk.num_rows
                    if good.num_rows:
                        spill.write(ids.fill(good).select(EVENTS.names))
                    if bad_rows.num_rows:
                        rejected += bad_rows.num_rows
                        rejects.write(bad_rows)
                    if progress is not None:
                        progress(Progress(read, 0, 0, rejected))
            finally:
                rejects.close()
        # Identity once for the whole file, then pass 2: store with the ONE_IDs known.
        # The event-writer lock is held from the whole-file dedup in ``resolve_import``
        # to the last append, so the store pass need not deduplicate again
        # (``pipeline.store_event_batches``, ``warehouse.events.WriterHold``).
        with hold_event_writer():
            identity = ImportIdentity(pa.array([], pa.string()), 0, 0)
            if not identity_per_batch:
                identity = resolve_import(stores, spill.identity())
            merges, conflicts = identity.merges, identity.conflicts
            results: Iterator[StoreResult]
            if identity_per_batch:
                results = (store_events(stores, batch) for batch in spill.batches(store_batch))
            else:
                # Each batch's DuckDB append overlaps the next batch's keys and traits.
                results = store_event_batches(stores, _with_one_ids(spill, store_batch, identity))
            for result in results:
                inserted += result.inserted
                duplicates += result.duplicates
                merges += result.merges
                conflicts += result.conflicts
                if progress is not None:
                    progress(Progress(read, inserted, duplicates, rejected))
    return ImportReport(
        path=path,
        kind=kind,
        format=fmt,
        rows_read=read,
        events=events,
        inserted=inserted,
        duplicates=duplicates,
        rejected=rejected,
        merges=merges,
        conflicts=conflicts,
        seconds=time.perf_counter() - started,
        rejects_path=rejects.path if rejects.count else None,
        first_rejections=tuple(rejects.first),
    )


def _with_one_ids(spill: _Spill, size: int, identity: ImportIdentity) -> Iterator[ImportBatch]:
    """The spilled rows in batches of ``size`` (the first one of at most
    ``FIRST_STORE_BATCH``), each with its slice of the ONE_IDs, person keys and
    message id hashes, and the mark of the dedup that chose them."""
    keys, mark, hashes = identity.keys, identity.mark, identity.hashes
    at = 0
    for whole in spill.batches(size):
        pieces = [whole]
        if at == 0 and whole.num_rows > FIRST_STORE_BATCH:
            pieces = [whole.slice(0, FIRST_STORE_BATCH), whole.slice(FIRST_STORE_BATCH)]
        for batch in pieces:
            n = batch.num_rows
            yield ImportBatch(
                batch,
                identity.one_ids.slice(at, n),
                None if keys is None else keys.slice(at, n),
                mark,
                None if hashes is None else hashes[at : at + n],
            )
            at += n


IDENTITY_COLUMNS: Final = (
    "message_id",
    "type",
    "user_id",
    "anonymous_id",
    "previous_id",
    "identifiers",
    "timestamp",
)
"""The columns identity resolution reads (``zhiying.identity.batch``) and dedup keys on."""


@dataclass(frozen=True)
class ImportIdentity:
    """The ONE_ID of every valid row of a file (null for a row ``store_events`` will drop
    as a duplicate), and what resolving them merged and met as conflicts.

    ``keys``: the person key of each ONE_ID (committed with them); ``mark``: the
    whole-file dedup, made under the event-writer hold (``WriterHold.mark``), that
    the store pass may trust while the hold lasts; ``hashes``: each row's message id
    hash from that dedup (0 for a dropped row), for the store pass's bookkeeping."""

    one_ids: pa.Array
    merges: int
    conflicts: int
    keys: pa.Array | None = None
    mark: DedupMark | None = None
    hashes: np.ndarray | None = None


def resolve_import(stores: Stores, rows: pa.Table) -> ImportIdentity:
    """Resolve the identities of a whole file's valid rows in ONE operational transaction.

    ``rows`` are the file's valid rows in file order (at least ``IDENTITY_COLUMNS``).
    Rows that ``store_events`` would drop as repeats (a ``message_id`` seen earlier in
    the file, or stored inside the dedup window) are left out, as they would be on
    the per-batch path; the rest is resolved at once, in time order
    (``resolve_events``: set-based from ``SET_BASED_ROWS`` rows). So every person's
    identifiers are read from the store once and their first/last seen written once
    per import, instead of once per batch, and batch boundaries no longer show in who
    is who.

    The transaction is the identity part of ``store_events``: ONE_IDs, identifiers,
    merges and conflicts, the person keys of every resolved ONE_ID and merge owner,
    and, before it commits, the warehouse's ``person_keys`` rows and
    ``one_id_aliases`` (so committed merges never lack their aliases). The events
    themselves are stored afterwards, batch by batch, with these ONE_IDs
    (``store_events(..., one_ids=...)``). Replaying it changes nothing.
    """
    total = rows.num_rows
    if total == 0:
        return ImportIdentity(pa.array([], pa.string()), 0, 0)
    rows = rows.select(list(IDENTITY_COLUMNS))
    warehouse = stores.warehouse
    with hold_event_writer() as hold:
        now = stores.clock.now()
        dedup_since = now - timedelta(days=stores.settings.dedup_window_days)
        fresh, kept, kept_hashes = unseen_rows_hashed(warehouse, rows, dedup_since)
        mark = hold.mark()
        if fresh.num_rows == 0:
            return ImportIdentity(pa.nulls(total, pa.string()), 0, 0, mark=mark)
        cache = identity_cache(stores.engine)
        keys = person_keys(stores.engine)
        keys.reserve(stores.engine, 2 * fresh.num_rows)
        with stores.engine.begin() as conn:
            resolution = resolve_events(conn, fresh, now, cache)
            assigned = key_resolution(
                conn,
                keys,
                warehouse,
                resolution.one_ids,
                resolution.aliases,
                fresh=resolution.minted,
                coded=resolution.coded,
            )
        cache.apply(resolution.generation, resolution.cache_entries)
        keys.remember(assigned.learned)
    position = np.full(total, -1, dtype=np.int64)
    position[kept] = np.arange(len(kept), dtype=np.int64)
    at = pa.array(position, mask=position < 0)
    one_ids = resolution.one_ids.take(at)
    key_of_row = assigned.keys.take(at)
    hashes = None
    if kept_hashes is not None:
        hashes = np.zeros(total, dtype=np.uint64)
        hashes[kept] = kept_hashes
    return ImportIdentity(
        one_ids, resolution.merges, resolution.conflicts, key_of_row, mark, hashes
    )


class _Spill:
    """The valid rows of a file between the two passes: an uncompressed Arrow IPC
    stream in a private temporary directory (read back memory-mapped, so a
    file of millions of events never sits in memory whole), plus the narrow
    ``IDENTITY_COLUMNS`` kept in memory. Deleted when the import ends, crashed or not."""

    def __init__(self) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="zhiying-import-")
        self._path = Path(self._dir.name) / "valid.arrows"
        self._sink: pa.NativeFile | None = None
        self._writer: pa.ipc.RecordBatchStreamWriter | None = None
        self._identity: list[pa.Table] = []
        self._schema: pa.Schema | None = None

    def __enter__(self) -> _Spill:
        return self

    def __exit__(self, *exc: object) -> None:
        self._close_writer()
        self._dir.cleanup()

    def write(self, table: pa.Table) -> None:
        if self._writer is None:
            self._schema = table.schema
            self._sink = pa.OSFile(str(self._path), "wb")
            self._writer = pa.ipc.new_stream(self._sink, table.schema)
        elif table.schema != self._schema:  # one stream, one schema
            table = table.cast(self._schema)
        self._writer.write_table(table, max_chunksize=_BATCH)
        self._identity.append(table.select(list(IDENTITY_COLUMNS)))

    def identity(self) -> pa.Table:
        """The identity columns of every row written, in order."""
        if not self._identity:
            return pa.table({name: pa.array([], pa.null()) for name in IDENTITY_COLUMNS})
        return pa.concat_tables(self._identity)

    def batches(self, size: int) -> Iterator[pa.Table]:
        """The rows written, as tables of ``size`` rows (the last one: the rest)."""
        self._close_writer()
        self._identity = []
        if not self._path.exists():
            return
        with pa.memory_map(str(self._path)) as source:
            yield from _chunks(pa.ipc.open_stream(source), size)

    def _close_writer(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._sink is not None:
            self._sink.close()
            self._sink = None


_BATCH = 65_536


class _Checked:
    """The checked rows of a file, chunk by chunk.

    The message parts stream out of the file (one DuckDB query); each chunk of
    parts is registered as ``__parts`` and checked by a second query that scans it
    three times (main rules, product lines, identifier candidates), which is why
    the parts are materialised per chunk as Arrow rather than re-read from the file.
    With a ``raw_lookup`` (Parquet) the parts do not carry the source rows: the raw
    text of a chunk's rejected rows is read back from the file by row number.
    """

    def __init__(
        self,
        con: duckdb.DuckDBPyConnection,
        parts_sql: str,
        checked_sql: str,
        raw_lookup: str | None = None,
        read_ahead: bool = False,
    ) -> None:
        self._con = con
        self._parts_sql = parts_sql
        self._checked_sql = checked_sql
        self._raw_lookup = raw_lookup
        self._read_ahead = read_ahead

    def empty(self) -> pa.Table:
        """The checked columns with no rows."""
        parts = self._con.sql(f"SELECT * FROM ({self._parts_sql}) LIMIT 0").to_arrow_table()
        return next(self._check(iter([parts])))

    def chunks(self, size: int, first: int | None = None) -> Iterator[pa.Table]:
        """Checked tables of ``first`` (default ``size``), then ``size`` rows, in file order
        (none for an empty file).

        With ``read_ahead`` (text files) the parts of the next chunk are read by a thread
        of their own while the current one is checked: reading JSONL (lines, then one
        JSON parse per line) runs on one core, the checks on the others (5M JSONL
        events: 24.6 → 19.5 s, the same CPU). Parquet is read in parallel already."""
        reader = self._con.sql(self._parts_sql).to_arrow_reader(_BATCH)
        parts = _chunks(reader, size, first)
        return self._check(_read_ahead(parts) if self._read_ahead else parts)

    def _check(self, parts_chunks: Iterator[pa.Table]) -> Iterator[pa.Table]:
        """Each chunk checked by the same three relations, made at the first chunk: a
        relation is bound again to the ``__parts`` registered when it runs, and making
        it costs a parse and a bind of its SQL (the checked query: ≈ 0.05 s of CPU a chunk)."""
        cur = self._con.cursor()
        relations: dict[str, duckdb.DuckDBPyRelation] = {}
        try:
            for parts in parts_chunks:
                cur.register("__parts", parts)
                try:
                    side = with_side_results(cur, parts, relations)
                finally:
                    cur.unregister("__parts")
                cur.register("__parts", side)
                try:
                    checked = _relation(cur, relations, self._checked_sql).to_arrow_table()
                finally:
                    cur.unregister("__parts")
                if self._raw_lookup is not None:
                    checked = _with_raw(cur, checked, self._raw_lookup)
                yield checked
        finally:
            close = getattr(parts_chunks, "close", None)
            if close is not None:
                close()  # stops a read-ahead thread before the connection closes
            cur.close()


def _with_raw(cur: duckdb.DuckDBPyConnection, checked: pa.Table, lookup: str) -> pa.Table:
    """``checked`` with ``__raw`` filled for its rejected rows from ``lookup``
    (``(__row, __src)`` over the source). The filter on the chunk's row range reaches
    the Parquet reader, which reads only the row groups holding them. The source row
    goes through Arrow before ``to_json``, as it does on the path that carries it in
    the parts (Arrow turns JSON columns into text, for one), so the texts are the same."""
    bad = checked.column("__bad").combine_chunks()
    if not bad.true_count:
        return checked
    rows = checked.column("__row").filter(bad).combine_chunks()
    lo, hi = (int(v.as_py()) for v in pc.min_max(rows).values())
    cur.register("__bad_rows", pa.table({"__row": rows}))
    try:
        found = cur.sql(
            f"SELECT __row, __src FROM ({lookup}) WHERE __row BETWEEN {lo} AND {hi} "
            "AND __row IN (SELECT __row FROM __bad_rows)"
        ).to_arrow_table()
    finally:
        cur.unregister("__bad_rows")
    cur.register("__found", found)
    try:
        texts = cur.sql(
            "SELECT __row, to_json(__src)::VARCHAR AS __raw FROM __found ORDER BY __row"
        ).to_arrow_table()
    finally:
        cur.unregister("__found")
    at = np.searchsorted(texts.column("__row").to_numpy(), rows.to_numpy())
    column = checked.column("__raw")
    raw = texts.column("__raw").combine_chunks().take(at).cast(column.type)
    filled = pc.replace_with_mask(column.combine_chunks(), bad, raw)
    return checked.set_column(checked.schema.get_field_index("__raw"), "__raw", filled)


def _relation(
    cur: duckdb.DuckDBPyConnection, relations: dict[str, duckdb.DuckDBPyRelation] | None, sql: str
) -> duckdb.DuckDBPyRelation:
    """The relation of ``sql`` on ``cur``, made once per ``relations`` (None: every time)."""
    if relations is None:
        return cur.sql(sql)
    relation = relations.get(sql)
    if relation is None:
        relation = relations[sql] = cur.sql(sql)
    return relation


def with_side_results(
    cur: duckdb.DuckDBPyConnection,
    parts: pa.Table,
    relations: dict[str, duckdb.DuckDBPyRelation] | None = None,
) -> pa.Table:
    """``parts`` (registered on ``cur`` as ``__parts``) plus the product-line and
    identifier results aligned to its rows, as :func:`checked_select` expects.

    Those two relations list only the few rows that have products or identifier
    candidates, one row per element, ordered by ``__row``; each message's lists are
    cut out of them in Arrow (``_RowIndex``: a binary search of their row numbers
    among the parts', no hash join, no ordered ``list()`` aggregate), so the main query stays
    a streaming projection that keeps the file's order. A row they do not list gets
    empty lists. ``relations``: the relations of earlier chunks on ``cur``, reused."""
    rows = _RowIndex(parts.column("__row").to_numpy())
    products = _relation(cur, relations, _PRODUCTS_SQL).to_arrow_table()
    idents = _relation(cur, relations, _IDENTIFIERS_SQL).to_arrow_table()
    p_rows = products.column("__row").to_numpy()
    i_rows = idents.column("__row").to_numpy()
    errs = products.column("err").combine_chunks()
    columns = {
        "__pa_items": rows.lists(p_rows, products.column("item").combine_chunks()),
        # each element's errors, flattened: their rows are their elements' rows
        "__pa_errors": rows.lists(
            p_rows[pc.list_parent_indices(errs).to_numpy()], pc.list_flatten(errs), True
        ),
        "__ia_items": rows.lists(i_rows, idents.column("item").combine_chunks(), True),
        "__ia_errors": rows.lists(i_rows, idents.column("err").combine_chunks(), True),
    }
    for name, column in columns.items():
        parts = parts.append_column(name, column)
    return parts


_PRODUCTS_SQL: Final = products_sql("SELECT * FROM __parts")
_IDENTIFIERS_SQL: Final = identifiers_sql("SELECT * FROM __parts")


class _RowIndex:
    """The row numbers of a chunk of parts, to cut per-row lists out of side results."""

    def __init__(self, rows: np.ndarray) -> None:
        self._n = len(rows)
        # file order is ascending; grouped orders come in hash order and are sorted here
        ascending = self._n < 2 or bool(np.all(rows[1:] > rows[:-1]))
        self._order: np.ndarray | None = None if ascending else np.argsort(rows, kind="stable")
        self._sorted = rows if self._order is None else rows[self._order]

    def lists(
        self, side_rows: np.ndarray, values: pa.Array, drop_nulls: bool = False
    ) -> pa.ListArray:
        """One list per row of the chunk: the ``values`` whose ``side_rows`` (ascending,
        aligned with ``values``, each one of the chunk's rows) equal its row number, in
        their order; NULL values left out when ``drop_nulls``. A row without any gets an
        empty list."""
        if drop_nulls and values.null_count:
            valid = pc.is_valid(values)
            side_rows = side_rows[valid.to_numpy(zero_copy_only=False)]
            values = values.filter(valid)
        at = np.searchsorted(self._sorted, side_rows)  # position of each value's row
        if self._order is not None:
            at = self._order[at]
            values = values.take(np.argsort(at, kind="stable"))
        offsets = np.zeros(self._n + 1, dtype=np.int32)
        np.cumsum(np.bincount(at, minlength=self._n), out=offsets[1:])
        return pa.ListArray.from_arrays(pa.array(offsets), values)


_DONE = object()


def _read_ahead(chunks: Iterator[pa.Table], depth: int = 1) -> Generator[pa.Table, None, None]:
    """``chunks``, produced by a reader thread up to ``depth`` chunks ahead.

    DuckDB releases the GIL while it reads and checks, so the next chunk is
    prepared while the caller stores the current one: an import takes about
    max(read, store) rather than their sum. Errors of the reader are raised here.
    """
    q: queue.Queue[object] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def run() -> None:
        try:
            for chunk in chunks:
                while not stop.is_set():
                    try:
                        q.put(chunk, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(_DONE)
        except BaseException as exc:  # handed to the consumer, which re-raises it
            q.put(exc)
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()  # the reader's cursor is released in this thread

    thread = threading.Thread(target=run, name="zhiying-bulk-reader", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            assert isinstance(item, pa.Table)
            yield item
    finally:
        stop.set()
        while thread.is_alive():
            try:
                q.get_nowait()
            except queue.Empty:
                thread.join(timeout=0.1)


def resolve_format(path: Path, fmt: FileFormat | None, mapping: Mapping | None) -> FileFormat:
    """``fmt``, else the mapping's ``source.format``, else the file name's suffix."""
    return fmt or (mapping.source.format if mapping else None) or guess_format(path)


@contextmanager
def _open_checked(
    path: Path,
    fmt: FileFormat,
    kind: ImportKind,
    mapping: Mapping | None,
    received_at: datetime,
    default_region: str,
) -> Iterator[tuple[duckdb.DuckDBPyConnection, _Checked]]:
    """A private DuckDB connection and the file's checked rows."""
    con = duckdb.connect()
    try:
        con.execute("SET TimeZone = 'UTC'")
        register_udfs(con, default_region)
        plan = _parts_sql(con, path, fmt, kind, mapping)
        sql = checked_select(
            "SELECT * FROM __parts",
            received_at=received_at.astimezone(UTC).replace(tzinfo=None),
            source=f"import:{path.name}",
            raw_sql=plan.raw_sql,
            hash_sql=plan.hash_sql,
        )
        yield con, _Checked(con, plan.sql, sql, plan.raw_lookup, read_ahead=fmt != "parquet")
    except duckdb.Error as exc:
        raise ValidationFailed(f"cannot read {path} as {fmt}: {exc}", field="file") from exc
    finally:
        con.close()


@dataclass(frozen=True)
class CheckedFile:
    """Every row of a file after validation, without storing anything.

    ``events``: the valid rows (``EVENTS`` columns plus ``__row``; messageIds
    still NULL where they would be derived); ``rejections``: one row per
    (row, field, reason) with the raw row.
    """

    events: pa.Table
    rejections: pa.Table


def check_file(
    path: Path,
    *,
    received_at: datetime,
    kind: ImportKind = "events",
    fmt: FileFormat | None = None,
    mapping: Mapping | None = None,
    default_region: str = "CN",
) -> CheckedFile:
    """Validate a whole file in memory (tests, dry runs); nothing is stored."""
    fmt = resolve_format(path, fmt, mapping)
    with _open_checked(path, fmt, kind, mapping, received_at, default_region) as (_, checked):
        chunks = list(checked.chunks(DEFAULT_CHUNK_SIZE))
        if not chunks:  # an empty file: the schema of an empty result
            table = checked.empty()
        else:
            table = pa.concat_tables(chunks) if len(chunks) > 1 else chunks[0]
    bad = table.column("__bad").combine_chunks()
    good = table.filter(pc.invert(bad)).select([*EVENTS.names, "__row"])
    return CheckedFile(events=good, rejections=rejection_rows(table.filter(bad)))


def checked_chunks(
    path: Path,
    *,
    received_at: datetime,
    kind: ImportKind = "events",
    fmt: FileFormat | None = None,
    mapping: Mapping | None = None,
    default_region: str = "CN",
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> Iterator[pa.Table]:
    """The file's checked rows as tables of about ``chunk_size`` rows, read ahead by a
    thread (dry runs and benchmarks; nothing is stored). Columns as in
    :func:`zhiying.ingest.bulk_rules.checked_select`."""
    fmt = resolve_format(path, fmt, mapping)
    with (
        _open_checked(path, fmt, kind, mapping, received_at, default_region) as (_, checked),
        closing(_read_ahead(checked.chunks(chunk_size))) as chunks,
    ):
        yield from chunks


def rejection_rows(bad: pa.Table) -> pa.Table:
    """One row per (row, field, reason, raw) of the rejected rows of a checked chunk."""
    errors = bad.column("__errors").combine_chunks()
    parents = pc.list_parent_indices(errors)
    flat = pc.list_flatten(errors)
    return pa.table(
        {
            "row": pc.take(bad.column("__row"), parents),
            "field": flat.field("field"),
            "reason": flat.field("reason"),
            "raw": pc.take(bad.column("__raw"), parents),
        }
    )


def _parts_sql(
    con: duckdb.DuckDBPyConnection,
    path: Path,
    fmt: FileFormat,
    kind: ImportKind,
    mapping: Mapping | None,
) -> MappedPlan:
    """The parts SQL of the file, the expressions of a row's raw text and hashed text, and
    (Parquet) the lookup of rejected rows' raw text."""
    if fmt == "jsonl" and mapping is None:
        if kind != "events":
            raise ValidationFailed(
                f"`import {kind}` needs --mapping (JSONL without one is read as Segment "
                "messages: use `import events`)",
                field="mapping",
            )
        return MappedPlan(segment_parts_sql(path), False, "__raw", "__raw")
    header: list[str] = []
    if fmt == "whitespace":
        header = _first_line(path).split()
    probe = Mapping() if mapping is None else mapping
    source = source_sql(path, fmt, probe, header)
    columns = [
        Column(str(row[0]), str(row[1]))
        for row in con.sql(f"DESCRIBE SELECT * EXCLUDE (__row) FROM ({source})").fetchall()
    ]
    if mapping is None:
        if kind != "events":
            raise ValidationFailed(
                f"`import {kind}` needs --mapping to say which column is the person",
                field="mapping",
            )
        mapping = default_mapping(columns, kind)
    inferred: dict[str, str] = {}
    if mapping.infer_types and (
        mapping.traits_from_all_columns or mapping.properties_from_other_columns
    ):
        inferred = _infer_types(con, source, columns, mapping)
    # A Parquet file is re-read by row number for next to nothing (row groups are
    # skipped by their statistics), so its rows' raw text is read for rejects only.
    return mapped_parts_sql(source, columns, mapping, kind, inferred, fmt == "parquet")


def _first_line(path: Path) -> str:
    if path.name.endswith(".gz"):
        with gzip.open(path, "rb") as gz:
            return gz.readline().decode("utf-8-sig").strip()
    with path.open("rb") as fh:
        return fh.readline().decode("utf-8-sig").strip()


def _infer_types(
    con: duckdb.DuckDBPyConnection, source: str, columns: list[Column], mapping: Mapping
) -> dict[str, str]:
    """For text columns read without a declared type: ``integer``/``number``/``boolean``
    when every non-empty value reads as one (one aggregate pass over the file)."""
    used = mapping.used_columns()
    text_cols = [c.name for c in columns if c.type == "VARCHAR" and c.name not in used]
    if not text_cols:
        return {}
    checks = []
    for name in text_cols:
        c = ident(name)
        for kind, cast in (("integer", "BIGINT"), ("number", "DOUBLE"), ("boolean", "BOOLEAN")):
            # a leading zero means a code (zip, id), not a number
            extra = ""
            if kind in ("integer", "number"):
                extra = f" AND NOT regexp_matches({c}, '^-?0[0-9]')"
            if kind == "integer":
                extra += f" AND regexp_full_match(trim({c}), '-?[0-9]+')"
            checks.append(
                f"bool_and({c} IS NULL OR (TRY_CAST({c} AS {cast}) IS NOT NULL{extra})) "
                f"AS {ident(name + '|' + kind)}"
            )
    row = con.sql(f"SELECT {', '.join(checks)} FROM ({source})").fetchall()[0]
    result: dict[str, str] = {}
    flags = iter(row)
    for name in text_cols:
        is_int, is_num, is_bool = next(flags), next(flags), next(flags)
        if is_int:
            result[name] = "integer"
        elif is_num:
            result[name] = "number"
        elif is_bool:
            result[name] = "boolean"
    return result


def _chunks(
    reader: pa.RecordBatchReader, size: int, first: int | None = None
) -> Iterator[pa.Table]:
    """Tables of exactly ``first`` (default ``size``), then ``size`` rows (the last one: the
    rest) from DuckDB's record batches, in order.

    Cut exactly, not at the first record batch past ``size``: a chunk of
    ``size`` + a few thousand rows would cost a whole extra ``store_events``
    batch, and each batch re-reads the stored identifiers of every person it names.
    """
    cut = size if first is None else first
    pending: list[pa.RecordBatch] = []
    rows = 0
    for batch in reader:
        pending.append(batch)
        rows += batch.num_rows
        while rows >= cut:
            table = pa.Table.from_batches(pending)
            yield table.slice(0, cut)
            rest = table.slice(cut)
            pending, rows = rest.to_batches(), rest.num_rows
            cut = size
    if rows:
        yield pa.Table.from_batches(pending)


class _DerivedIds:
    """Deterministic messageIds for rows that came without one.

    ``imp-<md5>`` for the first row with that content in the file, then
    ``imp-<md5>-2``, ``-3``, ...: the occurrence count is kept per hash across
    chunks in a small DuckDB table, so the whole computation is set-based.
    """

    def __init__(self, cursor: duckdb.DuckDBPyConnection) -> None:
        self._cur = cursor
        self._cur.execute("CREATE TEMP TABLE __seen (h VARCHAR PRIMARY KEY, n BIGINT)")

    def fill(self, good: pa.Table) -> pa.Table:
        hashes = good.column("__h")
        if hashes.null_count == good.num_rows:
            return good
        idx = pc.indices_nonzero(pc.is_valid(hashes))
        todo = pa.table({"i": idx, "h": pc.take(hashes, idx)})
        self._cur.register("__todo", todo)
        try:
            self._cur.execute(
                "CREATE OR REPLACE TEMP TABLE __occ AS SELECT t.i, t.h, "
                "row_number() OVER (PARTITION BY t.h ORDER BY t.i) + coalesce(s.n, 0) AS n "
                "FROM __todo t LEFT JOIN __seen s ON s.h = t.h"
            )
            self._cur.execute(
                "INSERT OR REPLACE INTO __seen SELECT h, max(n) FROM __occ GROUP BY h"
            )
            occ = self._cur.sql(
                "SELECT i, 'imp-' || h || CASE WHEN n > 1 THEN '-' || n ELSE '' END AS id "
                "FROM __occ ORDER BY i"
            ).to_arrow_table()
        finally:
            self._cur.unregister("__todo")
        ids = good.column("message_id").combine_chunks()
        mask = pc.is_valid(hashes.combine_chunks())
        new_ids = pc.replace_with_mask(ids, mask, occ.column("id").combine_chunks())
        return good.set_column(good.schema.get_field_index("message_id"), "message_id", new_ids)


class _Rejects:
    """Writes rejected rows: row number, field, reason and the raw row, one line per reason."""

    def __init__(self, path: Path | None, cursor: duckdb.DuckDBPyConnection) -> None:
        self.path = path
        self.count = 0
        self.first: list[tuple[int, str, str]] = []
        self._cur = cursor
        self._fh: IO[bytes] | None = None
        self._csv: pacsv.CSVWriter | None = None
        self._jsonl = path is not None and path.name.lower().endswith((".jsonl", ".ndjson"))

    def write(self, bad: pa.Table) -> None:
        table = rejection_rows(bad)
        self.count += bad.num_rows
        if len(self.first) < 20:
            head = table.slice(0, 20 - len(self.first)).to_pydict()
            self.first += list(zip(head["row"], head["field"], head["reason"], strict=True))
        if self.path is None:
            return
        if self._jsonl:
            if self._fh is None:
                self._fh = self.path.open("wb")
            self._cur.register("__rej", table)
            try:
                lines = self._cur.sql(
                    "SELECT string_agg(to_json({'row': row, 'field': field, 'reason': reason, "
                    "'raw': raw}), chr(10) ORDER BY row) AS t FROM __rej"
                ).fetchall()[0]
            finally:
                self._cur.unregister("__rej")
            self._fh.write(str(lines[0]).encode() + b"\n")
            return
        if self._csv is None:
            self._csv = pacsv.CSVWriter(str(self.path), table.schema)
        self._csv.write_table(table)

    def close(self) -> None:
        if self._csv is not None:
            self._csv.close()
        if self._fh is not None:
            self._fh.close()


__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "ImportReport",
    "Progress",
    "ProgressCallback",
    "import_file",
]
