"""Alembic environment: runs migrations on the URL handed over by ``zhiying.store.upgrade``."""

from __future__ import annotations

from alembic import context

from zhiying.store.engine import make_engine
from zhiying.store.tables import metadata

config = context.config
url = config.get_main_option("sqlalchemy.url")
assert url is not None

engine = make_engine(url)
with engine.connect() as connection:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()
engine.dispose()
