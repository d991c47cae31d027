"""Storing dead-lettered events again, once the cause that made a store refuse them is fixed.

The server's loader sets aside rows a store keeps refusing while it accepts
others (``zhiying.ingest.writer``, "poison rows") in ``<spool>/dead/*.arrows``.
:func:`restore_dead_letters` hands each file to ``store_events``: rows stored in
the meantime are skipped by ``messageId``, so running it twice is harmless. A file
whose rows were all stored moves to ``dead/stored/``, so it is not read again; a
file the stores still refuse stays where it is and is reported by error class
only (a store's message can quote the row).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from zhiying.ingest.pipeline import store_events
from zhiying.ingest.spool import read_dead_letters
from zhiying.runtime import Stores

STORED_DIR = "stored"
"""Subdirectory of ``dead/`` that files move to once their rows are stored."""


@dataclass(frozen=True)
class Restored:
    """What happened to one dead-letter file."""

    path: Path
    rows: int
    inserted: int = 0
    duplicates: int = 0
    error_class: str | None = None
    """Set when the stores refused the file's rows again (the file stays)."""


def restore_dead_letters(stores: Stores, paths: Iterable[Path]) -> list[Restored]:
    """Store the rows of each file in ``paths`` with ``store_events``, one call per file."""
    out: list[Restored] = []
    for path in paths:
        rows = read_dead_letters(path)
        try:
            result = store_events(stores, rows)
        except Exception as exc:  # a store refusing a row raises its driver's own errors
            out.append(Restored(path, rows.num_rows, error_class=type(exc).__name__))
            continue
        done = path.parent / STORED_DIR
        done.mkdir(exist_ok=True)
        path.rename(done / path.name)
        out.append(Restored(path, rows.num_rows, result.inserted, result.duplicates))
    return out
