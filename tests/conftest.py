"""Shared pytest fixtures.

Storage: ``storage`` gives each test a fresh, migrated SQLite database in ``tmp_path``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiosqlite
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


@pytest.fixture
def hops(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Names of the functions sent to aiosqlite's thread (one hop each), in order."""
    seen: list[str] = []
    original = aiosqlite.Connection._execute

    async def counting(self: Any, fn: Any, *args: Any, **kwargs: Any) -> Any:
        seen.append(getattr(fn, "__name__", repr(fn)))
        return await original(self, fn, *args, **kwargs)

    monkeypatch.setattr(aiosqlite.Connection, "_execute", counting)
    return seen
