"""The one owner of the SQLite connection.

All access goes through a single ``aiosqlite`` connection (one worker thread) and one
``asyncio.Lock``: :meth:`Database.write` opens a ``BEGIN IMMEDIATE`` transaction and
:meth:`Database.read` takes the same lock, so concurrent coroutines never interleave inside
a transaction nor read another coroutine's half-written state.

Each statement sent through aiosqlite is one hop to its thread and back, at least one turn of
the event loop. :meth:`Database.transaction` and :meth:`Database.call` run a whole synchronous
function on the ``sqlite3`` connection in one hop instead: a multi-statement transaction
(``BEGIN IMMEDIATE`` ... ``COMMIT``) or several reads for the price of one.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite

from storage.errors import StorageError
from storage.lru import Lru
from storage.run_cache import RunCache

log = logging.getLogger(__name__)

DEFAULT_BUSY_TIMEOUT_MS = 5000
Clock = Callable[[], float]
T = TypeVar("T")
SyncFn = Callable[[sqlite3.Connection], T]


def _in_transaction(conn: sqlite3.Connection, fn: SyncFn[T]) -> T:
    """``fn`` between ``BEGIN IMMEDIATE`` and ``COMMIT``, rolled back on any exception (runs on
    aiosqlite's thread, so a cancelled caller cannot leave the transaction open)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        result = fn(conn)
    except BaseException:
        if conn.in_transaction:  # SQLite may have rolled back itself (e.g. SQLITE_FULL)
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return result


class Session:
    """The database lock held (see :meth:`Database.exclusive`); one hop per call."""

    def __init__(self, conn: aiosqlite.Connection) -> None:
        self.conn = conn

    async def fetchall(self, sql: str, params: tuple[object, ...] = ()) -> list[sqlite3.Row]:
        """One statement in SQLite autocommit (a write is its own transaction)."""
        return list(await self.conn.execute_fetchall(sql, params))

    async def call(self, fn: SyncFn[T]) -> T:
        """``fn(sqlite3.Connection)`` on aiosqlite's thread, in one hop, in autocommit."""
        return await self._hop(fn)

    async def transaction(self, fn: SyncFn[T]) -> T:
        """``fn`` inside ``BEGIN IMMEDIATE`` ... ``COMMIT`` (``ROLLBACK`` on any exception),
        the whole transaction in one hop."""
        return await self._hop(lambda raw: _in_transaction(raw, fn))

    async def _hop(self, fn: SyncFn[T]) -> T:
        # aiosqlite (0.22) has no public "run this function on your thread": its own methods
        # all go through the private ``Connection._execute(fn)`` (queued to the one worker
        # thread, in order) and reach the sqlite3 connection as ``Connection._conn``.
        # tests/test_database_hops.py fails loudly if either changes.
        conn = self.conn
        return await conn._execute(lambda: fn(conn._conn))


class Database:
    """An opened SQLite database: connection, write lock and clock."""

    def __init__(self, conn: aiosqlite.Connection, path: str, clock: Clock = time.time) -> None:
        self._conn = conn
        self._lock = asyncio.Lock()
        self.path = path
        self.clock = clock
        self._closed = False
        # Run records by id (storage/run_cache.py): one per database, shared by every
        # repository on it; changed only while ``_lock`` is held.
        self.run_cache = RunCache()
        # User rows by id (storage/users.py), the same rules: only UserRepository writes the
        # fields of a User (access and money columns are not part of it).
        self.user_cache: Lru[int, Any] = Lru(4096)

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

    @asynccontextmanager
    async def exclusive(self) -> AsyncIterator[Session]:
        """The lock, no transaction: for several hops that must not interleave with other
        coroutines' (e.g. a write and the cache update that follows it)."""
        async with self._lock:
            self._check_open()
            yield Session(self._conn)

    async def write_one(self, sql: str, params: tuple[object, ...] = ()) -> list[sqlite3.Row]:
        """One statement as its own transaction (SQLite autocommit), rows it returns included.

        As atomic and durable as :meth:`write` with a single statement, in one thread hop
        instead of three (``BEGIN``, the statement, ``COMMIT``): for the hot single-row writes."""
        async with self.exclusive() as session:
            return await session.fetchall(sql, params)

    async def transaction(self, fn: SyncFn[T]) -> T:
        """Run ``fn(sqlite3.Connection)`` inside ``BEGIN IMMEDIATE`` ... ``COMMIT`` in ONE hop
        to aiosqlite's thread; any exception rolls it back and is raised here. Serialized with
        :meth:`write` and :meth:`read` by the same lock. ``fn`` must be synchronous, quick,
        and touch nothing but the connection: it runs on the database thread. If the awaiting
        coroutine is cancelled, the transaction still runs to its end (commit or rollback) on
        that thread: none is left open."""
        async with self.exclusive() as session:
            return await session.transaction(fn)

    async def call(self, fn: SyncFn[T]) -> T:
        """Run ``fn(sqlite3.Connection)`` in one hop without opening a transaction: several
        reads (or one autocommit write) for one thread hop; serialized like :meth:`read`."""
        async with self.exclusive() as session:
            return await session.call(fn)

    async def _rollback(self) -> None:
        try:
            await self._conn.execute("ROLLBACK")
        except sqlite3.Error:  # no transaction left (SQLite may have rolled back itself)
            log.debug("rollback after error: no transaction active")

    def _check_open(self) -> None:
        if self._closed:
            raise StorageError("storage is closed")
