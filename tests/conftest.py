"""Shared pytest fixtures.

Storage: ``storage`` gives each test a fresh, migrated SQLite database in ``tmp_path``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from storage import Storage


@pytest.fixture
async def storage(tmp_path: Path) -> AsyncIterator[Storage]:
    """A fresh opened :class:`storage.Storage` (file ``tmp_path/bot.sqlite3``), closed after."""
    store = await Storage.open(tmp_path / "bot.sqlite3")
    try:
        yield store
    finally:
        await store.close()
