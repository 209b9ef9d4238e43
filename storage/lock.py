"""OS file locks next to the database: the "in use" lock and the single-writer lock.

* ``<database>.lock`` — every process that has the database open through
  :meth:`storage.Storage.open` holds a *shared* ``flock`` on it for as long as it is open.
  ``python -m bot restore`` takes it *exclusively* without waiting: it fails while anything has
  the database open, and a bot started during a restore refuses to open it.
* ``<database>.writer.lock`` — only the bot process takes it (``Storage.open(writer=True)``,
  from bot/app.py, local mode included), *exclusively* and without waiting, before it touches
  the database. The storage layer keeps process-local write-through caches (storage/run_cache.py,
  storage/lru.py, storage/prices.py) that are only true while one process writes, and two bots
  would also process the same runs; so a second bot on the same database refuses to start
  (:class:`BotAlreadyRunningError`). Operator commands (``doctor``, ``backup``) never take it
  and keep working while the bot runs.

The kernel drops a ``flock`` when its process exits, however it exits (SIGKILL included), so a
stale lock cannot survive a crash; the lock files themselves stay (deleting them would race).

On systems without ``fcntl`` (Windows) the locks are no-ops and :func:`database_in_use` /
:func:`writer_running` always answer ``False``.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable
from pathlib import Path

from storage.errors import StorageError

try:  # POSIX only
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

LOCK_SUFFIX = ".lock"
WRITER_SUFFIX = ".writer.lock"


class DatabaseInUseError(StorageError):
    """The database is held by another process (a running bot, or a restore under way)."""


class BotAlreadyRunningError(DatabaseInUseError):
    """Another bot process holds the database's single-writer lock."""


def lock_path(database_path: str | Path, suffix: str = LOCK_SUFFIX) -> Path:
    """``data/bot.sqlite3`` → ``data/bot.sqlite3.lock`` (or ``suffix`` instead of ``.lock``)."""
    path = Path(database_path)
    return path.with_name(path.name + suffix)


def writer_lock_path(database_path: str | Path) -> Path:
    """``data/bot.sqlite3`` → ``data/bot.sqlite3.writer.lock``."""
    return lock_path(database_path, WRITER_SUFFIX)


def is_file_database(database_path: str | Path) -> bool:
    """False for ``:memory:`` and ``file:`` URIs, which have no file to lock next to."""
    text = str(database_path)
    return text != ":memory:" and not text.startswith("file:")


class DatabaseLock:
    """One open lock file; :meth:`acquire` takes a shared or exclusive lock without waiting."""

    def __init__(self, database_path: str | Path, suffix: str = LOCK_SUFFIX) -> None:
        self.path = lock_path(database_path, suffix)
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self, *, exclusive: bool) -> bool:
        """True when the lock was taken; False when another process holds a conflicting one."""
        if self._fd is not None:
            raise RuntimeError("lock already held")
        if fcntl is None:  # pragma: no cover - Windows
            return True
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        mode = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        except OSError:
            os.close(fd)
            raise
        self._fd = fd
        return True

    def release(self) -> None:
        """Drop the lock (idempotent). The lock file itself stays: deleting it would race."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        with contextlib.suppress(OSError):
            os.close(fd)  # closing the descriptor releases the flock


def hold_shared(database_path: str | Path) -> DatabaseLock | None:
    """The lock an open database keeps; ``None`` for in-memory databases or when the lock file
    cannot be created (read-only folder: logged, the database still opens)."""
    return _hold(
        database_path,
        LOCK_SUFFIX,
        exclusive=False,
        refused=lambda _lock: DatabaseInUseError(
            f"database {str(database_path)!r} is being restored (python -m bot restore); "
            "start the bot again when the restore has finished"
        ),
    )


def hold_writer(database_path: str | Path) -> DatabaseLock | None:
    """The bot's exclusive single-writer lock; ``None`` for in-memory databases or when the lock
    file cannot be created (read-only folder: logged; the database cannot be written there
    either). Raises :class:`BotAlreadyRunningError` while another bot process holds it."""
    return _hold(
        database_path,
        WRITER_SUFFIX,
        exclusive=True,
        refused=lambda lock: BotAlreadyRunningError(
            f"database {str(database_path)!r} is in use by another bot process (it holds "
            f"{str(lock.path)!r}); stop that bot first: two bots on one database would "
            "process the same runs twice"
        ),
    )


def _hold(
    database_path: str | Path,
    suffix: str,
    *,
    exclusive: bool,
    refused: Callable[[DatabaseLock], StorageError],
) -> DatabaseLock | None:
    if not is_file_database(database_path):
        return None
    lock = DatabaseLock(database_path, suffix)
    try:
        taken = lock.acquire(exclusive=exclusive)
    except OSError as exc:
        log.warning("cannot create the lock file %s: %s", lock.path, exc.strerror or exc)
        return None
    if not taken:
        raise refused(lock)
    return lock


def _held_elsewhere(database_path: str | Path, suffix: str) -> bool:
    if not is_file_database(database_path) or not lock_path(database_path, suffix).exists():
        return False
    probe = DatabaseLock(database_path, suffix)
    try:
        taken = probe.acquire(exclusive=True)
    except OSError:
        return False
    if taken:
        probe.release()
    return not taken


def database_in_use(database_path: str | Path) -> bool:
    """True while some process has the database open through :class:`storage.Storage`."""
    return _held_elsewhere(database_path, LOCK_SUFFIX)


def writer_running(database_path: str | Path) -> bool:
    """True while a bot process holds the database's single-writer lock."""
    return _held_elsewhere(database_path, WRITER_SUFFIX)
