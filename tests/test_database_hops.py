"""Database.transaction / Database.call: a whole multi-statement transaction (or several reads)
in ONE hop to aiosqlite's thread, rolled back on any exception, never left open by a cancelled
caller, serialized with write(). Also pins the aiosqlite internals they rely on."""

from __future__ import annotations

import asyncio
import inspect
import sqlite3
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiosqlite
import pytest

from storage.database import Database

BOUND = 5.0  # seconds: every wait on the database thread is bounded


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = await Database.connect(tmp_path / "t.sqlite3")
    await database.write_one("CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT NOT NULL)")
    try:
        yield database
    finally:
        await database.close()


def _rows(conn: sqlite3.Connection) -> list[tuple[int, str]]:
    return [tuple(r) for r in conn.execute("SELECT k, v FROM t ORDER BY k").fetchall()]


async def test_aiosqlite_private_primitive_is_what_we_rely_on(db: Database) -> None:
    # storage/database.py Session._hop wraps aiosqlite's private Connection._execute(fn)
    # and its Connection._conn: if aiosqlite changes either, this fails first and loudly.
    assert inspect.iscoroutinefunction(aiosqlite.Connection._execute)
    assert isinstance(inspect.getattr_static(aiosqlite.Connection, "_conn"), property)
    conn = db._conn
    where: dict[str, Any] = {}

    def probe(x: int, *, y: int) -> int:
        where["thread"] = threading.get_ident()
        where["raw"] = conn._conn
        return x + y

    assert await conn._execute(probe, 2, y=3) == 5
    assert where["thread"] != threading.get_ident()  # ran on the worker thread
    assert isinstance(where["raw"], sqlite3.Connection)
    assert await db.call(lambda raw: raw is where["raw"])


async def test_transaction_commits_all_statements_in_one_hop(db: Database, hops: list[str]) -> None:
    def fill(conn: sqlite3.Connection) -> int:
        assert conn.in_transaction
        for k in range(5):
            conn.execute("INSERT INTO t VALUES (?, ?)", (k, f"v{k}"))
        return conn.execute("SELECT COUNT(*) FROM t").fetchone()[0]

    assert await db.transaction(fill) == 5
    assert len(hops) == 1
    assert await db.call(_rows) == [(k, f"v{k}") for k in range(5)]
    assert not await db.call(lambda conn: conn.in_transaction)
    assert len(hops) == 3


async def test_exception_rolls_back_everything(db: Database) -> None:
    await db.write_one("INSERT INTO t VALUES (1, 'kept')")

    def half(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO t VALUES (2, 'lost')")
        conn.execute("UPDATE t SET v = 'changed' WHERE k = 1")
        raise LookupError("boom")

    with pytest.raises(LookupError, match="boom"):
        await db.transaction(half)
    assert await db.call(_rows) == [(1, "kept")]
    assert not await db.call(lambda conn: conn.in_transaction)

    def bad_sql(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO t VALUES (3, 'x')")
        conn.execute("INSERT INTO t VALUES (3, 'duplicate')")

    with pytest.raises(sqlite3.IntegrityError):
        await db.transaction(bad_sql)
    assert await db.call(_rows) == [(1, "kept")]
    async with db.write() as conn:  # the lock and the connection are usable again
        await conn.execute("INSERT INTO t VALUES (4, 'after')")
    assert await db.call(_rows) == [(1, "kept"), (4, "after")]


async def test_cancelled_caller_leaves_no_open_transaction(db: Database) -> None:
    started, release = threading.Event(), threading.Event()

    def slow(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO t VALUES (1, 'slow')")
        started.set()
        assert release.wait(BOUND), "never released"

    task = asyncio.create_task(db.transaction(slow))
    assert await asyncio.to_thread(started.wait, BOUND)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    release.set()
    # The transaction ran to its end on the database thread; nothing is left open, and the
    # next writer (queued behind it, in order) starts a transaction of its own.
    assert not await db.call(lambda conn: conn.in_transaction)
    assert await db.call(_rows) == [(1, "slow")]

    started.clear()
    release.clear()

    def failing(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO t VALUES (2, 'doomed')")
        started.set()
        assert release.wait(BOUND)
        raise RuntimeError("after the cancel")

    task = asyncio.create_task(db.transaction(failing))
    assert await asyncio.to_thread(started.wait, BOUND)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    release.set()
    assert not await db.call(lambda conn: conn.in_transaction)
    assert await db.call(_rows) == [(1, "slow")]
    async with db.write() as conn:
        await conn.execute("INSERT INTO t VALUES (3, 'next')")
    assert await db.call(_rows) == [(1, "slow"), (3, "next")]


async def test_serialized_with_write(db: Database) -> None:
    order: list[str] = []
    inside, leave = asyncio.Event(), asyncio.Event()

    async def writer() -> None:
        async with db.write() as conn:
            await conn.execute("INSERT INTO t VALUES (1, 'writer')")
            order.append("write open")
            inside.set()
            await leave.wait()
            order.append("write done")

    def tx(conn: sqlite3.Connection) -> list[tuple[int, str]]:
        order.append("transaction")
        conn.execute("INSERT INTO t VALUES (2, 'tx')")
        return _rows(conn)

    w = asyncio.create_task(writer())
    await asyncio.wait_for(inside.wait(), BOUND)
    t = asyncio.create_task(db.transaction(tx))
    for _ in range(20):  # give the transaction every chance to jump the lock
        await asyncio.sleep(0)
    assert order == ["write open"]
    leave.set()
    seen = await asyncio.wait_for(t, BOUND)
    await w
    assert order == ["write open", "write done", "transaction"]
    assert seen == [(1, "writer"), (2, "tx")]


async def test_call_reads_several_statements_in_one_hop(db: Database, hops: list[str]) -> None:
    await db.transaction(
        lambda conn: conn.executemany("INSERT INTO t VALUES (?, 'x')", [(1,), (2,)])
    )
    hops.clear()

    def two_reads(conn: sqlite3.Connection) -> tuple[int, int]:
        count = conn.execute("SELECT COUNT(*) FROM t").fetchone()[0]
        top = conn.execute("SELECT MAX(k) FROM t").fetchone()[0]
        return count, top

    assert await db.call(two_reads) == (2, 2)
    assert len(hops) == 1


async def test_closed_database_refuses(db: Database) -> None:
    await db.close()
    with pytest.raises(Exception, match="closed"):
        await db.transaction(_rows)
