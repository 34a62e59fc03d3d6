"""The store under test: migrated on an empty database of each kind."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from stockade.store import Store


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[Store]:
    """A store migrated to the head on an empty database, closed afterwards."""
    opened = Store.from_url(database_url)
    try:
        await opened.open()
        yield opened
    finally:
        await opened.close()
