"""The one owner of the SQLite connection.

All access goes through a single ``aiosqlite`` connection (one worker thread) and one
``asyncio.Lock``: :meth:`Database.write` opens a ``BEGIN IMMEDIATE`` transaction and
:meth:`Database.read` takes the same lock, so concurrent coroutines never interleave inside
a transaction nor read another coroutine's half-written state.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import aiosqlite

from storage.errors import StorageError

log = logging.getLogger(__name__)

DEFAULT_BUSY_TIMEOUT_MS = 5000
Clock = Callable[[], float]


class Database:
    """An opened SQLite database: connection, write lock and clock."""

    def __init__(self, conn: aiosqlite.Connection, path: str, clock: Clock = time.time) -> None:
        self._conn = conn
        self._lock = asyncio.Lock()
        self.path = path
        self.clock = clock
        self._closed = False

    @classmethod
    async def connect(
        cls,
        path: str | Path,
        *,
        clock: Clock = time.time,
        busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS,
    ) -> Database:
        """Create the folder and file when missing and open them with our pragmas."""
        target = str(path)
        if target != ":memory:" and not target.startswith("file:"):
            await asyncio.to_thread(Path(target).parent.mkdir, parents=True, exist_ok=True)
        try:
            conn = await aiosqlite.connect(target, isolation_level=None)
        except sqlite3.Error as exc:
            raise StorageError(f"cannot open database {target!r}: {exc}") from exc
        conn.row_factory = aiosqlite.Row
        try:
            await conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
            await conn.execute("PRAGMA journal_mode = WAL")
            await conn.execute("PRAGMA synchronous = NORMAL")
            await conn.execute("PRAGMA foreign_keys = ON")
        except sqlite3.DatabaseError as exc:
            await conn.close()
            raise StorageError(f"{target!r} is not a usable SQLite database: {exc}") from exc
        return cls(conn, target, clock)

    @property
    def closed(self) -> bool:
        return self._closed

    async def close(self) -> None:
        """Close the connection (idempotent). Waits for a running transaction to finish."""
        if self._closed:
            return
        async with self._lock:
            self._closed = True
            await self._conn.close()

    @asynccontextmanager
    async def read(self) -> AsyncIterator[aiosqlite.Connection]:
        """Serialized read access (sees only committed data of other coroutines)."""
        async with self._lock:
            self._check_open()
            yield self._conn

    @asynccontextmanager
    async def write(self) -> AsyncIterator[aiosqlite.Connection]:
        """One short ``BEGIN IMMEDIATE`` transaction; rolled back on any exception."""
        async with self._lock:
            self._check_open()
            await self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                # Shielded so a cancelled caller still leaves no open transaction behind.
                await asyncio.shield(self._rollback())
                raise
            else:
                await self._conn.execute("COMMIT")

    async def write_one(self, sql: str, params: tuple[object, ...] = ()) -> list[sqlite3.Row]:
        """One statement as its own transaction (SQLite autocommit), rows it returns included.

        As atomic and durable as :meth:`write` with a single statement, in one thread hop
        instead of three (``BEGIN``, the statement, ``COMMIT``): for the hot single-row writes."""
        async with self._lock:
            self._check_open()
            return list(await self._conn.execute_fetchall(sql, params))

    async def _rollback(self) -> None:
        try:
            await self._conn.execute("ROLLBACK")
        except sqlite3.Error:  # no transaction left (SQLite may have rolled back itself)
            log.debug("rollback after error: no transaction active")

    def _check_open(self) -> None:
        if self._closed:
            raise StorageError("storage is closed")
