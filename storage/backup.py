"""Backups and restores of the SQLite database through SQLite's online backup API.

:func:`backup_database` copies a database that a running bot keeps writing: the copy is made in
one backup step, i.e. inside a single read transaction, so it is the database exactly as it was
at one commit (never half of a transaction). In WAL mode a reader does not block writers, and
the copy runs in a worker thread, so neither the bot nor the caller's event loop waits for it.
A multi-step copy would restart whenever the bot commits in between, and might never finish.

:func:`restore_database` refuses while any process has the database open (see
:mod:`storage.lock`), checks the backup first (integrity, schema version, ledger invariants),
keeps a copy of the database it replaces, and writes through SQLite so the WAL files of the old
database can never be mixed with the restored one.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import aiosqlite

from storage.database import Database
from storage.errors import SchemaVersionError, StorageError
from storage.ledger import LedgerRepository
from storage.lock import DatabaseInUseError, DatabaseLock, is_file_database

BACKUP_DIR_NAME = "backups"


@dataclass(frozen=True, slots=True)
class BackupReport:
    """What a backup file holds and whether it is sound."""

    path: str
    schema_version: int
    size: int
    integrity: str  # "ok" or SQLite's first complaint
    ledger_problems: tuple[str, ...] = field(default=())
    seconds: float = 0.0
    ledger_checked: bool = False  # only a file at the code's schema version can be audited

    @property
    def ok(self) -> bool:
        return self.integrity == "ok" and not self.ledger_problems


def backup_dir(database_path: str | Path) -> Path:
    """Where automatic backups go: ``backups/`` next to the database."""
    return Path(database_path).parent / BACKUP_DIR_NAME


def automatic_backup_path(database_path: str | Path, label: str, *, now: float) -> Path:
    """``data/backups/bot-<label>-20261201T201500Z.sqlite3`` (UTC, sortable)."""
    path = Path(database_path)
    stamp = datetime.fromtimestamp(now, UTC).strftime("%Y%m%dT%H%M%S%fZ")
    return backup_dir(path) / f"{path.stem}-{label}-{stamp}{path.suffix or '.sqlite3'}"


def _require_file(path: Path, what: str) -> None:
    if not path.is_file():
        raise StorageError(f"{what} {str(path)!r} does not exist")


def _copy(source: Path, target: Path, busy_timeout_ms: int) -> None:
    """One-step online backup of ``source`` into a new file ``target`` (atomic rename)."""
    _require_file(source, "database")
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    partial.unlink(missing_ok=True)
    try:
        src = sqlite3.connect(source)
        try:
            src.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
            dst = sqlite3.connect(partial)
            try:
                src.backup(dst)  # pages=-1: the whole database in one step (one snapshot)
                dst.execute("PRAGMA journal_mode = DELETE")  # a self-contained single file
            finally:
                dst.close()
        finally:
            src.close()
        with open(partial, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(partial, target)
    except sqlite3.Error as exc:
        partial.unlink(missing_ok=True)
        raise StorageError(f"backup of {str(source)!r} failed: {exc}") from exc


def _read_only_uri(file: Path) -> tuple[str, int]:
    _require_file(file, "backup")
    return f"{file.resolve().as_uri()}?mode=ro", file.stat().st_size


async def inspect_backup(path: str | Path, *, audit_schema: int | None = None) -> BackupReport:
    """Integrity, schema version and ledger invariants of a database file (read only).

    The ledger audit (:meth:`LedgerRepository.check_consistency`) reads today's schema, so it
    runs only when the file is at ``audit_schema`` (the code's latest version); an older copy
    is migrated, then audited, when a bot opens it."""
    file = Path(path)
    uri, size = await asyncio.to_thread(_read_only_uri, file)
    try:
        conn = await aiosqlite.connect(uri, uri=True, isolation_level=None)
    except sqlite3.Error as exc:
        raise StorageError(f"cannot open {str(file)!r}: {exc}") from exc
    conn.row_factory = aiosqlite.Row
    db = Database(conn, str(file))
    try:
        async with db.read() as c:
            integrity = str((await c.execute_fetchall("PRAGMA integrity_check"))[0][0])
            version = await c.execute_fetchall(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'"
            )
            schema = 0
            if version:
                rows = await c.execute_fetchall(
                    "SELECT COALESCE(MAX(version), 0) FROM schema_version"
                )
                schema = int(rows[0][0])
        problems: tuple[str, ...] = ()
        audited = schema >= 1 and schema == audit_schema and integrity == "ok"
        if audited:
            problems = tuple(await LedgerRepository(db).check_consistency())
    except sqlite3.DatabaseError as exc:
        raise StorageError(f"{str(file)!r} is not a usable SQLite database: {exc}") from exc
    finally:
        await db.close()
    return BackupReport(
        path=str(file),
        schema_version=schema,
        size=size,
        integrity=integrity,
        ledger_problems=problems,
        ledger_checked=audited,
    )


async def backup_database(
    source: str | Path,
    target: str | Path,
    *,
    busy_timeout_ms: int = 5000,
    audit_schema: int | None = None,
) -> BackupReport:
    """A consistent copy of ``source`` at ``target`` (replaced if present), then checked
    (the ledger too when the copy is at ``audit_schema``, see :func:`inspect_backup`)."""
    source, target = Path(source), Path(target)
    if source.resolve() == target.resolve():
        raise StorageError("the backup file must not be the database itself")
    started = time.perf_counter()
    await asyncio.to_thread(_copy, source, target, busy_timeout_ms)
    seconds = time.perf_counter() - started
    report = await inspect_backup(target, audit_schema=audit_schema)
    return BackupReport(
        path=report.path,
        schema_version=report.schema_version,
        size=report.size,
        integrity=report.integrity,
        ledger_problems=report.ledger_problems,
        seconds=seconds,
        ledger_checked=report.ledger_checked,
    )


def _write_back(backup: Path, database: Path) -> None:
    """Copy ``backup`` into ``database`` through SQLite (its WAL handled by SQLite)."""
    database.parent.mkdir(parents=True, exist_ok=True)
    src = sqlite3.connect(f"{backup.resolve().as_uri()}?mode=ro", uri=True)
    try:
        dst = sqlite3.connect(database)
        try:
            src.backup(dst)
            dst.execute("PRAGMA journal_mode = WAL")
            dst.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            dst.close()
    finally:
        src.close()


@dataclass(frozen=True, slots=True)
class RestoreResult:
    restored: BackupReport
    previous_copy: str | None  # where the replaced database was saved (None: there was none)


async def restore_database(
    backup: str | Path,
    database: str | Path,
    *,
    latest_version: int,
    now: float | None = None,
) -> RestoreResult:
    """Replace ``database`` by ``backup``. Refuses while the database is in use, when the backup
    is damaged or its ledger inconsistent, or when it was written by a newer bot."""
    backup, database = Path(backup), Path(database)
    if not is_file_database(database):
        raise StorageError("only a database file can be restored")
    report = await inspect_backup(backup, audit_schema=latest_version)
    if report.integrity != "ok":
        raise StorageError(f"backup {str(backup)!r} is damaged: {report.integrity}")
    if report.ledger_problems:
        raise StorageError(
            f"backup {str(backup)!r} has an inconsistent ledger: {report.ledger_problems[0]}"
        )
    if report.schema_version > latest_version:
        raise SchemaVersionError(
            f"backup {str(backup)!r} has schema version {report.schema_version}, but this "
            f"version of the bot only knows up to {latest_version}; restore it with the newer bot"
        )
    lock = DatabaseLock(database)
    await asyncio.to_thread(database.parent.mkdir, parents=True, exist_ok=True)
    if not lock.acquire(exclusive=True):
        raise DatabaseInUseError(
            f"database {str(database)!r} is open in a running bot; stop the bot, then restore"
        )
    try:
        previous: str | None = None
        if database.is_file():
            stamp = time.time() if now is None else now
            keep = automatic_backup_path(database, "before-restore", now=stamp)
            await asyncio.to_thread(_copy, database, keep, 5000)
            previous = str(keep)
        await asyncio.to_thread(_write_back, backup, database)
    finally:
        lock.release()
    return RestoreResult(restored=report, previous_copy=previous)
