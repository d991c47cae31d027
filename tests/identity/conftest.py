"""Fixtures of the identity tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from zhiying.store import make_engine, upgrade


@pytest.fixture
def engine(database_url: str) -> Iterator[sa.Engine]:
    """An operational store of the parametrised backend (emptied by each replay)."""
    upgrade(database_url)
    made = make_engine(database_url)
    yield made
    made.dispose()
