"""Users: creation with starting balance exactly once, settings, last seen."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from storage import NotFoundError, Storage, UserSettings, ValidationError


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def test_get_or_create_credits_starting_balance_once(storage: Storage) -> None:
    user, created = await storage.users.get_or_create(42, language_code="de", starting_balance=100)
    assert created and user.id == 42 and user.language == "de"
    assert user.settings == UserSettings()
    again, created_again = await storage.users.get_or_create(
        42, language_code="en", starting_balance=100
    )
    assert not created_again
    assert again.language == "de"  # first seen language is kept
    assert await storage.ledger.get_balance(42) == 100
    history = await storage.ledger.history(42)
    assert [(e.amount, e.reason) for e in history] == [(100, "starting_balance")]
    assert await storage.users.count() == 1


async def test_concurrent_get_or_create_creates_once(storage: Storage) -> None:
    results = await asyncio.gather(
        *(storage.users.get_or_create(5, starting_balance=10) for _ in range(20))
    )
    assert sum(created for _, created in results) == 1
    assert await storage.ledger.get_total(5) == 10
    assert await storage.ledger.check_consistency() == []


async def test_zero_starting_balance_writes_no_movement(storage: Storage) -> None:
    await storage.users.get_or_create(1)
    assert await storage.ledger.history(1) == []
    with pytest.raises(ValidationError):
        await storage.users.get_or_create(2, starting_balance=-5)
    assert await storage.users.get(2) is None


async def test_update_settings_validates_and_persists(storage: Storage) -> None:
    await storage.users.get_or_create(1)
    user = await storage.users.update_settings(
        1, width=768, negative_prompt="blurry", png_as_file=True, language="ru"
    )
    assert user.settings.width == 768 and user.settings.png_as_file
    stored = await storage.users.get(1)
    assert stored is not None and stored.settings == user.settings
    assert stored.settings.height == 1024  # untouched default

    for bad in ({"colour": "red"}, {"width": 10}, {"steps": 0}, {"seed": -2}, {"width": "big"}):
        with pytest.raises(ValidationError):
            await storage.users.update_settings(1, **bad)
    unchanged = await storage.users.get(1)
    assert unchanged is not None and unchanged.settings == user.settings

    reset = await storage.users.update_settings(1, negative_prompt=None)
    assert reset.settings.negative_prompt is None and reset.settings.width == 768
    with pytest.raises(NotFoundError):
        await storage.users.update_settings(999, width=512)


async def test_damaged_settings_fall_back_to_defaults(storage: Storage) -> None:
    await storage.users.get_or_create(1)
    async with storage.db.write() as conn:
        await conn.execute("UPDATE users SET settings = '{not json' WHERE id = 1")
    storage.db.user_cache.clear()  # raw SQL behind the repository's back: forget the row
    user = await storage.users.get(1)
    assert user is not None and user.settings == UserSettings()


async def test_touch_updates_last_seen(tmp_path: Path) -> None:
    clock = FakeClock(1000.0)
    store = await Storage.open(tmp_path / "bot.sqlite3", clock=clock)
    try:
        user, _ = await store.users.get_or_create(3)
        assert user.created_at == user.last_seen_at == 1000.0
        clock.now = 2000.0
        assert await store.users.touch(3)
        assert not await store.users.touch(4)
        seen = await store.users.get(3)
        assert seen is not None
        assert seen.created_at == 1000.0 and seen.last_seen_at == 2000.0
    finally:
        await store.close()
