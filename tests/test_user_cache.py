"""The write-through user cache (storage/users.py): one read per user, then no hop; every
``UserRepository`` write keeps it true; the access gate's read fills it."""

from __future__ import annotations

from typing import Any

import pytest

from generation.billing import AccessMode
from storage import Storage


async def _table_user(storage: Storage, user_id: int) -> Any:
    storage.db.user_cache.clear()
    return await storage.users.get(user_id)


async def test_writes_keep_the_cache_true(storage: Storage, hops: list[str]) -> None:
    created, is_new = await storage.users.get_or_create(7, language_code="de", starting_balance=3)
    assert is_new and await storage.ledger.get_balance(7) == 3
    hops.clear()
    assert await storage.users.get(7) == created and hops == []
    assert await storage.users.get_or_create(7) == (created, False) and hops == []

    changed = await storage.users.update_settings(7, png_as_file=True, width=768)
    assert (await storage.users.get(7)) == changed and changed.settings.png_as_file
    storage.db.clock = lambda: 5000.0
    assert await storage.users.touch(7)
    touched = await storage.users.get(7)
    assert touched is not None and touched.last_seen_at == 5000.0
    assert touched == await _table_user(storage, 7)
    assert not await storage.users.touch(8)  # unknown users are not cached
    assert await storage.users.get(8) is None


async def test_failed_settings_change_leaves_the_cached_user(storage: Storage) -> None:
    user, _ = await storage.users.get_or_create(7)
    with pytest.raises(ValueError):
        await storage.users.update_settings(7, width=-5)
    assert await storage.users.get(7) == user == await _table_user(storage, 7)


async def test_access_check_fills_the_cache(storage: Storage, hops: list[str]) -> None:
    user, _ = await storage.users.get_or_create(7)
    storage.db.user_cache.clear()
    hops.clear()
    await storage.access.check(7, mode=AccessMode.OPEN)
    assert len(hops) == 1
    assert await storage.users.get(7) == user and len(hops) == 1
    await storage.access.ban(7)  # access is not part of a User: the cached one stays right
    assert await storage.users.get(7) == await _table_user(storage, 7)
    await storage.access.check(8, mode=AccessMode.OPEN)  # unknown user: nothing cached
    assert 8 not in storage.db.user_cache


async def test_open_mode_gate_reads_once_and_follows_bans(
    storage: Storage, hops: list[str]
) -> None:
    from storage.access import BannedError

    await storage.users.get_or_create(21)
    await storage.access.check(21, mode=AccessMode.OPEN)  # first decision reads the row
    hops.clear()
    await storage.access.check(21, mode=AccessMode.OPEN)
    await storage.users.get(21)
    assert hops == []  # known, not banned: the gate and the caller lookup cost no hop

    await storage.access.ban(21)
    with pytest.raises(BannedError) as first:
        await storage.access.check(21, mode=AccessMode.OPEN)
    assert first.value.first  # the ban is seen at once, with its one refusal
    with pytest.raises(BannedError) as again:
        await storage.access.check(21, mode=AccessMode.OPEN)
    assert not again.value.first

    await storage.access.unban(21)
    await storage.access.check(21, mode=AccessMode.OPEN)  # passes again
    hops.clear()
    await storage.access.check(21, mode=AccessMode.OPEN)
    assert hops == []


async def test_allowlist_mode_still_decides_from_the_table(
    storage: Storage, hops: list[str]
) -> None:
    from storage.access import AccessDeniedError

    await storage.users.get_or_create(22)
    await storage.access.check(22, mode=AccessMode.OPEN)  # cached as "default"
    with pytest.raises(AccessDeniedError):
        await storage.access.check(22, mode=AccessMode.ALLOWLIST)
    await storage.access.allow(22)
    await storage.access.check(22, mode=AccessMode.ALLOWLIST)
