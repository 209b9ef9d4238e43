"""Opening the database: folder/file creation, pragmas, migrations, close."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from storage import SchemaVersionError, Storage, StorageError
from storage.database import Database
from storage.migrations import LATEST_VERSION, MIGRATIONS, apply_migrations


async def test_open_creates_folder_and_file(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "deeper" / "bot.sqlite3"
    assert not path.parent.exists()
    store = await Storage.open(path)
    try:
        assert path.is_file()
        assert await store.schema_version() == LATEST_VERSION
        assert await store.ping()
    finally:
        await store.close()


async def test_pragmas(storage: Storage) -> None:
    async with storage.db.read() as conn:
        mode = (await conn.execute_fetchall("PRAGMA journal_mode"))[0][0]
        fks = (await conn.execute_fetchall("PRAGMA foreign_keys"))[0][0]
        sync = (await conn.execute_fetchall("PRAGMA synchronous"))[0][0]
        busy = (await conn.execute_fetchall("PRAGMA busy_timeout"))[0][0]
    assert mode == "wal"
    assert fks == 1
    assert sync == 1  # NORMAL
    assert busy > 0


async def test_migrations_twice_is_a_noop(tmp_path: Path) -> None:
    path = tmp_path / "bot.sqlite3"
    store = await Storage.open(path)
    await store.users.get_or_create(7, starting_balance=5)
    await store.close()
    store = await Storage.open(path)  # second start: nothing re-applied, data kept
    try:
        assert await apply_migrations(store.db) == []
        assert await store.ledger.get_balance(7) == 5
        async with store.db.read() as conn:
            rows = await conn.execute_fetchall("SELECT version FROM schema_version")
        assert [r[0] for r in rows] == [n for n, _ in MIGRATIONS]
    finally:
        await store.close()


async def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "bot.sqlite3"
    store = await Storage.open(path)
    async with store.db.write() as conn:
        await conn.execute("INSERT INTO schema_version VALUES (?, 0)", (LATEST_VERSION + 1,))
    await store.close()
    with pytest.raises(SchemaVersionError, match=r"schema version \d+.*only knows up to"):
        await Storage.open(path)


async def test_failed_migration_rolls_back_whole(tmp_path: Path) -> None:
    db = await Database.connect(tmp_path / "x.sqlite3")
    try:
        broken = [(1, "CREATE TABLE a (x INTEGER);"), (2, "CREATE TABLE b (x); NOT SQL;")]
        with pytest.raises(StorageError, match="migration 2 failed"):
            await apply_migrations(db, broken)
        async with db.read() as conn:
            tables = {r[0] for r in await conn.execute_fetchall("SELECT name FROM sqlite_master")}
            versions = await conn.execute_fetchall("SELECT version FROM schema_version")
            assert not conn.in_transaction
        assert "a" in tables and "b" not in tables
        assert [r[0] for r in versions] == [1]
    finally:
        await db.close()


async def test_not_a_database(tmp_path: Path) -> None:
    path = tmp_path / "junk.sqlite3"
    path.write_bytes(b"this is not a sqlite file at all" * 100)
    with pytest.raises(StorageError, match="not a usable SQLite database"):
        await Storage.open(path)


async def test_close_is_idempotent_and_final(tmp_path: Path) -> None:
    store = await Storage.open(tmp_path / "bot.sqlite3")
    async with store:
        await store.prices.set("MAKE", 3)
    await store.close()
    with pytest.raises(StorageError, match="closed"):
        await store.prices.get("MAKE")


async def test_write_transaction_rolls_back_on_error(storage: Storage) -> None:
    with pytest.raises(RuntimeError):
        async with storage.db.write() as conn:
            await conn.execute("INSERT INTO settings(key, value, updated_at) VALUES ('k', 'v', 0)")
            raise RuntimeError("boom")
    assert await storage.settings.get("k") is None


async def test_cancelled_transaction_leaves_nothing_open(storage: Storage) -> None:
    inside = asyncio.Event()
    never = asyncio.Event()

    async def stuck_writer() -> None:
        async with storage.db.write() as conn:
            await conn.execute(
                "INSERT INTO settings(key, value, updated_at) VALUES ('half', 'x', 0)"
            )
            inside.set()
            await never.wait()

    task = asyncio.create_task(stuck_writer())
    await inside.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await storage.settings.get("half") is None
    await storage.settings.set("after", "ok")  # the lock and connection are usable again
    assert await storage.settings.get("after") == "ok"


def test_migration_numbers_are_consecutive_from_one() -> None:
    """A gap would let a database already past it skip a migration forever."""
    from storage.migrations import LATEST_VERSION, MIGRATIONS

    numbers = [number for number, _ in MIGRATIONS]
    assert numbers == list(range(1, len(MIGRATIONS) + 1))
    assert LATEST_VERSION == numbers[-1]
