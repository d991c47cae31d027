"""Operational store: state that changes and must never be lost or doubled.

SQLite (WAL) by default, PostgreSQL at scale, through SQLAlchemy Core. Tables
are defined in ``tables``; schema changes are Alembic migrations in
``migrations/versions`` applied by ``upgrade``.
"""

from zhiying.store.engine import make_engine, upgrade

__all__ = ["make_engine", "upgrade"]
