"""The names of import kinds and file formats, and the default chunk size.

Kept apart from ``mapping`` and ``bulk`` (which import pydantic, pyarrow and DuckDB) so
that the CLI can declare its ``zhiying import`` options without loading them.
"""

from __future__ import annotations

from typing import Literal

ImportKind = Literal["events", "users", "orders"]
FileFormat = Literal["csv", "jsonl", "parquet", "whitespace"]

DEFAULT_CHUNK_SIZE = 1_000_000
"""Rows the first pass checks at a time (``zhiying import --chunk-size``)."""
