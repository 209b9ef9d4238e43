"""Backups and restores: ``python -m bot backup|restore`` and the pre-migration backup.

The concurrent test runs a separate writer process that keeps moving money (credits, holds,
settles, releases — several statements per transaction) while ``backup`` runs three times as
its own process: every copy passes SQLite's integrity check and the ledger invariants, the
writer went on committing during and between the copies, and ``restore`` refuses while the
writer has the database open, then works once it has stopped.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from storage import SchemaVersionError, Storage, StorageError
from storage.backup import backup_database, backup_dir, inspect_backup, restore_database
from storage.database import Database
from storage.lock import DatabaseInUseError, DatabaseLock, database_in_use
from storage.migrations import LATEST_VERSION, MIGRATIONS, apply_migrations

ROOT = Path(__file__).resolve().parent.parent

WRITER = textwrap.dedent(
    """
    import asyncio, sys, time
    from pathlib import Path
    from storage import Storage

    async def main(path, stop):
        store = await Storage.open(path)
        for uid in range(1, 6):
            await store.users.get_or_create(uid, starting_balance=1000)
        print("ready", flush=True)
        n, worst = 0, 0.0
        while not Path(stop).exists() and n < 200_000:
            uid = 1 + n % 5
            started = time.perf_counter()
            await store.ledger.credit(uid, 3, reason="test", actor=None)
            run = f"run-{n}"
            await store.ledger.hold(uid, 2, run)
            if n % 2:
                await store.ledger.settle_hold(run)
            else:
                await store.ledger.release_hold(run)
            worst = max(worst, time.perf_counter() - started)
            n += 1
        await store.close()
        print(f"done {n} {worst:.4f}", flush=True)

    asyncio.run(main(sys.argv[1], sys.argv[2]))
    """
)


def _env(db: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TELEGRAM_", "COMFY"))}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["DATABASE_PATH"] = str(db)
    return env


def _cli(db: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bot", *args],
        cwd=cwd,  # no .env there
        env=_env(db),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _ledger_rows(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute("SELECT COUNT(*) FROM ledger").fetchone()[0])
    finally:
        conn.close()


def test_backup_while_the_bot_writes_then_restore(tmp_path: Path) -> None:
    db, stop = tmp_path / "data" / "bot.sqlite3", tmp_path / "stop"
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(db), str(stop)],
        env=_env(db),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert writer.stdout is not None
        assert writer.stdout.readline().strip() == "ready"
        counts = []
        for i in range(3):
            target = tmp_path / f"copy-{i}.sqlite3"
            result = _cli(db, "backup", str(target), cwd=tmp_path)
            assert result.returncode == 0, result.stdout + result.stderr
            assert "integrity ok, ledger consistent" in result.stdout
            report = asyncio.run(inspect_backup(target, audit_schema=LATEST_VERSION))
            assert report.ok and report.ledger_checked
            assert report.schema_version == LATEST_VERSION
            counts.append(_ledger_rows(target))

        assert database_in_use(db)
        refused = _cli(db, "restore", str(tmp_path / "copy-0.sqlite3"), cwd=tmp_path)
        assert refused.returncode == 1
        assert "running bot" in refused.stderr and "stop the bot" in refused.stderr
    finally:
        stop.touch()
        out, err = writer.communicate(timeout=120)
    assert writer.returncode == 0, err
    _, total, worst = out.split()
    # the writer kept committing between the copies and after the last one
    assert counts[0] < counts[1] < counts[2] < _ledger_rows(db)
    assert int(total) > 0
    assert float(worst) < 5.0, f"a write waited {worst} s during the backups"  # sanity bound

    assert not database_in_use(db)
    restored = _cli(db, "restore", str(tmp_path / "copy-1.sqlite3"), cwd=tmp_path)
    assert restored.returncode == 0, restored.stderr
    assert _ledger_rows(db) == counts[1]
    saved = list(backup_dir(db).glob("bot-before-restore-*.sqlite3"))
    assert len(saved) == 1 and _ledger_rows(saved[0]) > counts[2]

    async def reopen() -> list[str]:
        store = await Storage.open(db)
        try:
            return await store.ledger.check_consistency()
        finally:
            await store.close()

    assert asyncio.run(reopen()) == []


async def test_migrations_back_up_an_existing_database_first(tmp_path: Path) -> None:
    path = tmp_path / "bot.sqlite3"
    db = await Database.connect(path)
    await apply_migrations(db, MIGRATIONS[:1])
    async with db.write() as conn:
        await conn.execute(
            "INSERT INTO users(id, balance, held, created_at, last_seen_at) VALUES (7, 0, 0, 0, 0)"
        )
    await db.close()
    assert not backup_dir(path).exists()

    store = await Storage.open(path)  # upgrade: 1 → latest
    await store.close()
    copies = list(backup_dir(path).glob("bot-v1-*.sqlite3"))
    assert len(copies) == 1
    report = await inspect_backup(copies[0], audit_schema=LATEST_VERSION)
    assert report.ok and report.schema_version == 1 and not report.ledger_checked
    conn = sqlite3.connect(copies[0])
    assert conn.execute("SELECT id FROM users").fetchall() == [(7,)]
    conn.close()

    store = await Storage.open(path)  # current: no new copy
    await store.close()
    assert len(list(backup_dir(path).iterdir())) == 1


async def test_a_new_database_is_not_backed_up(tmp_path: Path) -> None:
    store = await Storage.open(tmp_path / "bot.sqlite3")
    await store.close()
    assert not backup_dir(tmp_path / "bot.sqlite3").exists()


async def test_restore_refuses_a_backup_from_a_newer_bot(storage: Storage, tmp_path: Path) -> None:
    async with storage.db.write() as conn:
        await conn.execute("INSERT INTO schema_version VALUES (?, 0)", (LATEST_VERSION + 1,))
    copy = tmp_path / "newer.sqlite3"
    await backup_database(storage.path, copy)
    await storage.close()
    with pytest.raises(SchemaVersionError, match="only knows up to"):
        await restore_database(copy, tmp_path / "other.sqlite3", latest_version=LATEST_VERSION)
    assert not (tmp_path / "other.sqlite3").exists()


async def test_restore_refuses_a_damaged_file(tmp_path: Path) -> None:
    junk = tmp_path / "junk.sqlite3"
    junk.write_bytes(b"not a database" * 100)
    with pytest.raises(StorageError, match=r"not a usable SQLite database|cannot open"):
        await restore_database(junk, tmp_path / "bot.sqlite3", latest_version=LATEST_VERSION)


async def test_restore_refuses_an_inconsistent_ledger(storage: Storage, tmp_path: Path) -> None:
    await storage.users.get_or_create(1, starting_balance=10)
    async with storage.db.write() as conn:  # a cached balance that the ledger does not back
        await conn.execute("UPDATE users SET balance = 99 WHERE id = 1")
    copy = tmp_path / "bad-ledger.sqlite3"
    report = await backup_database(storage.path, copy, audit_schema=LATEST_VERSION)
    assert not report.ok and "ledger sum" in report.ledger_problems[0]
    with pytest.raises(StorageError, match="inconsistent ledger"):
        await restore_database(copy, tmp_path / "x.sqlite3", latest_version=LATEST_VERSION)


async def test_the_bot_refuses_to_open_during_a_restore(tmp_path: Path) -> None:
    path = tmp_path / "bot.sqlite3"
    restore_lock = DatabaseLock(path)
    assert restore_lock.acquire(exclusive=True)
    try:
        with pytest.raises(DatabaseInUseError, match="being restored"):
            await Storage.open(path)
    finally:
        restore_lock.release()
    store = await Storage.open(path)
    assert database_in_use(path)
    await store.close()
    assert not database_in_use(path)


async def test_backup_cli_errors(tmp_path: Path) -> None:
    missing = _cli(tmp_path / "none.sqlite3", "backup", str(tmp_path / "b"), cwd=tmp_path)
    assert missing.returncode == 1 and "does not exist" in missing.stderr
    store = await Storage.open(tmp_path / "bot.sqlite3")
    await store.close()
    same = _cli(tmp_path / "bot.sqlite3", "backup", str(tmp_path / "bot.sqlite3"), cwd=tmp_path)
    assert same.returncode == 1 and "must not be the database itself" in same.stderr
