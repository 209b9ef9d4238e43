"""Opt-in instrumentation of the bot process under test (bench only; nothing in storage/).

``BENCH_SQL_COUNTER=<file>``: every SQLite connection the process opens gets a trace callback
(``sqlite3.Connection.set_trace_callback``) that counts the statements it executes; the count
is kept in an 8-byte memory-mapped file, so the benchmark reads it at any moment without
talking to the process. aiosqlite opens its connections with ``sqlite3.connect`` on its own
thread, looked up at call time, so replacing ``sqlite3.connect`` before the bot starts is
enough. The callback runs on the connection's thread for every statement (triggers' inner
statements included; ``BEGIN``/``COMMIT`` count too).
"""

from __future__ import annotations

import itertools
import mmap
import os
import sqlite3
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

_SLOT = struct.Struct("<q")


class SqlCounter:
    """The counter's file: written by the bot process, read by the benchmark."""

    def __init__(self, path: str | os.PathLike[str], *, create: bool = False) -> None:
        self.restore: Callable[[], None] = lambda: None  # undo install_sql_counter
        self.path = Path(path)
        if create or not self.path.exists():
            self.path.write_bytes(bytes(_SLOT.size))
        self._file = self.path.open("r+b")
        self._map = mmap.mmap(self._file.fileno(), _SLOT.size)

    def read(self) -> int:
        return int(_SLOT.unpack_from(self._map, 0)[0])

    def write(self, value: int) -> None:
        _SLOT.pack_into(self._map, 0, value)

    def close(self) -> None:
        self._map.close()
        self._file.close()


def install_sql_counter(path: str) -> SqlCounter:
    """Count every statement of every ``sqlite3`` connection opened from now on."""
    counter = SqlCounter(path)
    ticks = itertools.count(counter.read() + 1)  # next() is atomic under the GIL
    original = sqlite3.connect

    def trace(_statement: str) -> None:
        counter.write(next(ticks))

    def connect(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        conn = original(*args, **kwargs)
        conn.set_trace_callback(trace)
        return conn

    sqlite3.connect = connect  # type: ignore[assignment]

    def restore() -> None:
        sqlite3.connect = original

    counter.restore = restore
    return counter


def install_from_env() -> None:
    path = os.environ.get("BENCH_SQL_COUNTER")
    if path:
        install_sql_counter(path)
