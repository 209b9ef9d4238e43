"""The bot process is the database's single writer (storage/lock.py): a second bot on the same
database refuses to start (exit 2, one line naming the database), operator commands keep
working while a bot runs, and a SIGKILLed bot leaves no lock behind.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from storage import Storage
from storage.backup import backup_database, inspect_backup, restore_database
from storage.lock import (
    BotAlreadyRunningError,
    DatabaseInUseError,
    DatabaseLock,
    database_in_use,
    writer_lock_path,
    writer_running,
)
from storage.migrations import LATEST_VERSION
from tests.e2e.local import local_runtime
from tests.e2e.process import REPO_ROOT, START_TIMEOUT, BotWorld, bot_world

REFUSAL = "is in use by another bot process"


async def _command(world: BotWorld, *args: str) -> tuple[int, str, str]:
    """Run ``python -m bot [args]`` to its end (bounded); (exit code, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot",
        *args,
        env=world.bot_env(),
        cwd=str(REPO_ROOT),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), START_TIMEOUT * 2)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise AssertionError(f"python -m bot {' '.join(args)} did not finish") from None
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace"), err.decode(errors="replace")


async def test_a_second_bot_process_refuses_while_the_first_runs(tmp_path: Path) -> None:
    async with bot_world(tmp_path) as world:
        await world.start()
        assert writer_running(world.db_path)

        code, out, err = await _command(world)
        assert code == 2, out + err
        refusal = err.strip().splitlines()
        assert len(refusal) == 1 and REFUSAL in refusal[0], err  # one line, no traceback
        assert world.db_path in refusal[0] and "stop that bot first" in refusal[0]
        assert "Traceback" not in out + err

        # the first bot is untouched and still the one processing updates
        assert world.proc is not None and world.proc.returncode is None
        await world.make("a lighthouse")
        await world.wait_run(lambda r: r["status"] in ("queued", "waiting", "running", "success"))

        # operator commands keep working while the bot holds the writer lock
        code, out, err = await _command(world, "doctor")
        # the seeded database has MAKE only, so /i2i and /inpaint fail (exit 1); every check
        # of the database itself passes while the bot holds it
        assert code == 1 and "Traceback" not in err, out + err
        assert f"✓ database: {world.db_path} is writable (a bot has it open now)" in out
        assert "✓ migrations: schema version" in out and "✓ ledger: consistent" in out
        assert "✗ /i2i" in out and "2 check(s) failed" in out
        copy = tmp_path / "copy.sqlite3"
        code, out, err = await _command(world, "backup", str(copy))
        assert code == 0, out + err
        report = await inspect_backup(copy, audit_schema=LATEST_VERSION)
        assert report.ok and len(await asyncio.to_thread(_run_ids, copy)) == 1
        code, out, err = await _command(world, "restore", str(copy))
        assert code == 1 and "running bot" in err, out + err

        # SIGKILL: the kernel drops the lock, so a new bot starts on the same database
        await world.kill()
        assert not writer_running(world.db_path)
        await world.start()
        assert writer_running(world.db_path)
        assert await world.terminate() == 0
        assert not writer_running(world.db_path)  # released on a normal shutdown too


def _run_ids(path: Path) -> list[str]:
    import sqlite3

    with sqlite3.connect(path) as conn:
        return [row[0] for row in conn.execute("SELECT id FROM runs")]


async def test_writer_storage_is_exclusive_and_released_on_close(tmp_path: Path) -> None:
    db = tmp_path / "bot.sqlite3"
    first = await Storage.open(db, writer=True)
    try:
        assert writer_running(db) and writer_lock_path(db).exists()
        with pytest.raises(BotAlreadyRunningError, match="another bot process") as refused:
            await Storage.open(db, writer=True)
        assert str(db) in str(refused.value)
        assert isinstance(refused.value, DatabaseInUseError)
        reader = await Storage.open(db)  # a non-bot open takes no writer lock
        await reader.close()
        copy = tmp_path / "copy.sqlite3"
        assert (await backup_database(db, copy, audit_schema=LATEST_VERSION)).ok
        with pytest.raises(DatabaseInUseError, match="running bot"):  # restore still refuses
            await restore_database(copy, db, latest_version=LATEST_VERSION)
    finally:
        await first.close()
    assert not writer_running(db) and not database_in_use(db)
    again = await Storage.open(db, writer=True)
    await again.close()


async def test_a_refused_open_releases_what_it_took(tmp_path: Path) -> None:
    db = tmp_path / "bot.sqlite3"
    restore_lock = DatabaseLock(db)
    assert restore_lock.acquire(exclusive=True)  # a restore under way
    try:
        with pytest.raises(DatabaseInUseError, match="being restored"):
            await Storage.open(db, writer=True)
        assert not writer_running(db)  # the writer lock it took first was dropped
    finally:
        restore_lock.release()


async def test_memory_databases_take_no_writer_lock() -> None:
    first = await Storage.open(":memory:", writer=True)
    second = await Storage.open(":memory:", writer=True)
    await second.close()
    await first.close()
    assert not writer_running(":memory:")


async def test_local_mode_holds_the_writer_lock(tmp_path: Path) -> None:
    db = tmp_path / "bot.sqlite3"
    async with local_runtime(tmp_path):
        assert writer_running(db)
        with pytest.raises(BotAlreadyRunningError):
            await Storage.open(db, writer=True)
    assert not writer_running(db)
