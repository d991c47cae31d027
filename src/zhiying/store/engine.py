"""Engine creation and migrations for the operational store."""

from __future__ import annotations

import ast
import functools
import threading
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from sqlalchemy import Engine, create_engine, event, inspect
from sqlalchemy.engine import make_url

if TYPE_CHECKING:
    from alembic.config import Config

T = TypeVar("T")

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


DEFAULT_SQLITE_CACHE_MB = 256
"""``Settings.sqlite_cache_mb``'s default (see there for why it is not SQLite's 2 MiB)."""


def _sqlite_pragmas(cache_mb: int) -> Callable[[Any, Any], None]:
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        # WAL lets readers work while one writer commits; busy_timeout turns
        # writer contention into a short wait instead of "database is locked".
        # A negative cache_size is in KiB; pages are allocated as they are read.
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute(f"PRAGMA cache_size=-{int(cache_mb) * 1024}")
        cursor.close()

    return on_connect


def make_engine(
    url: str, *, sqlite_cache_mb: int = DEFAULT_SQLITE_CACHE_MB, **kwargs: Any
) -> Engine:
    """An engine for ``url``; SQLite files get WAL, a ``sqlite_cache_mb`` page cache
    per connection, and their directory is created.

    Statement parameters are hidden from error messages (``hide_parameters``):
    they carry phones, e-mails and coupon codes, and errors end up in logs.
    """
    kwargs.setdefault("hide_parameters", True)
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30}, **kwargs)
        event.listen(engine, "connect", _sqlite_pragmas(sqlite_cache_mb))
        return engine
    kwargs.setdefault("pool_pre_ping", True)
    kwargs.setdefault("pool_size", 10)
    kwargs.setdefault("max_overflow", 20)
    return create_engine(url, **kwargs)


def alembic_config(url: str) -> Config:
    from alembic.config import Config  # local: see :func:`upgrade`

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(url: str, revision: str = "heads") -> None:
    """Apply Alembic migrations up to ``revision`` (idempotent).

    Each package's migrations branch from ``0001_foundation``; ``heads`` applies them all.
    Every command and server start calls this, and nearly always the store is current:
    that is checked first with one query against :func:`head_revisions`, and Alembic
    (≈ 0.2 s to import, ≈ 0.05 s to load the scripts) is only loaded when a migration
    is due or ``revision`` is not ``heads``.
    """
    if revision == "heads" and stored_revisions(url) == head_revisions():
        return
    from alembic import command

    command.upgrade(alembic_config(url), revision)


@functools.cache
def head_revisions() -> frozenset[str]:
    """The revisions no migration builds on: what ``alembic upgrade heads`` reaches.

    Read from the migration files' ``revision`` and ``down_revision`` assignments (a
    merge's ``down_revision`` is a tuple); tests/test_migrations.py checks the answer
    against Alembic's own ``ScriptDirectory.get_heads()``."""
    revisions: set[str] = set()
    below: set[str] = set()
    for path in sorted((MIGRATIONS_DIR / "versions").glob("*.py")):
        values: dict[str, Any] = {}
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            target = node.targets[0] if isinstance(node, ast.Assign) else None
            if isinstance(node, ast.AnnAssign):
                target = node.target
            if isinstance(target, ast.Name) and target.id in ("revision", "down_revision"):
                assert isinstance(node, ast.Assign | ast.AnnAssign) and node.value is not None
                values[target.id] = ast.literal_eval(node.value)
        if "revision" not in values:
            continue
        revisions.add(values["revision"])
        down = values.get("down_revision")
        below.update([down] if isinstance(down, str) else (down or ()))
    return frozenset(revisions - below)


def stored_revisions(url: str) -> frozenset[str]:
    """The revisions ``url``'s store is at (empty before its first migration)."""
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            if not inspect(conn).has_table("alembic_version"):
                return frozenset()
            rows = conn.exec_driver_sql("SELECT version_num FROM alembic_version")
            return frozenset(str(row[0]) for row in rows)
    finally:
        engine.dispose()


class PerEngine(Generic[T]):
    """One ``T`` per operational store of this process (made by ``factory`` on first use).

    Process-level state that describes a store (the identity cache, the pool of
    person keys) must not leak between two stores opened by one process (tests
    do), nor keep a disposed engine alive: the map holds engines weakly.
    """

    def __init__(self, factory: Callable[[], T]) -> None:
        self._factory = factory
        self._items: weakref.WeakKeyDictionary[Engine, T] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    def __call__(self, engine: Engine) -> T:
        with self._lock:
            item = self._items.get(engine)
            if item is None:
                item = self._items[engine] = self._factory()
            return item
