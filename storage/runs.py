"""Runs: everything needed to track, deliver and resume a generation after a crash.

Implements :class:`generation.ports.RunStore`. ``request``, ``meta`` and ``outputs`` are JSON;
the enums are stored as their text values.

Write-through cache: every record this repository inserts or gets back from an
``UPDATE ... RETURNING`` is kept in the database's :class:`~storage.run_cache.RunCache`, so
``get_run`` (the renderer's, the tracker's and delivery's re-reads) costs no database hop. That
is correct because one process writes the database (storage/lock.py) and every writer of
``runs`` keeps the cache true (storage/run_cache.py lists them and the locking rules).
"""

from __future__ import annotations

import dataclasses
import sqlite3
from collections.abc import Callable
from typing import Any

import aiosqlite

from generation.models import (
    RUN_UPDATABLE_FIELDS,
    TERMINAL_STATUSES,
    ChargeState,
    DeliveryState,
    MediaOutput,
    RunRecord,
    RunStatus,
)
from storage.database import Database
from storage.errors import DuplicateError, NotFoundError, ValidationError
from storage.holds import place_hold
from storage.ledger import LedgerRepository
from storage.run_cache import freeze, frozen_record
from storage.usage import RunLimits, check_run_limits
from storage.validation import dump_json, load_json, require_int

_COLUMNS = tuple(f.name for f in dataclasses.fields(RunRecord))
_TERMINAL = tuple(s.value for s in TERMINAL_STATUSES)
_TERMINAL_SQL = ", ".join("?" for _ in _TERMINAL)

# Runs a restart must pick up: not terminal; or charge not resolved; or succeeded but the
# result not yet handed to the user.
_UNFINISHED_WHERE = (
    f"status NOT IN ({_TERMINAL_SQL}) OR charge_state = 'held'"
    " OR (status = 'success' AND delivery_state = 'pending')"
)


def _enum(cls: type) -> Callable[[Any], str]:
    def encode(value: Any) -> str:
        try:
            return cls(value).value
        except ValueError:
            raise ValidationError(f"{value!r} is not a valid {cls.__name__}") from None

    return encode


def _outputs(value: Any) -> str:
    items = []
    for item in value or ():
        if isinstance(item, MediaOutput):
            items.append(item.to_dict())
        elif isinstance(item, dict) and "url" in item:
            items.append(MediaOutput.from_dict(item).to_dict())
        else:
            raise ValidationError(f"outputs must hold MediaOutput items, got {item!r}")
    return dump_json(items, "outputs")


def _json_object(name: str) -> Callable[[Any], str]:
    def encode(value: Any) -> str:
        if not isinstance(value, dict):
            raise ValidationError(f"{name} must be a dict")
        return dump_json(value, name)

    return encode


def _optional(kind: type | tuple[type, ...], name: str) -> Callable[[Any], Any]:
    def encode(value: Any) -> Any:
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, kind):
            raise ValidationError(f"{name} has the wrong type: {type(value).__name__}")
        return value

    return encode


def _progress(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValidationError("progress must be a number")
    return float(value)


_ENCODERS: dict[str, Callable[[Any], Any]] = {
    "status": _enum(RunStatus),
    "charge_state": _enum(ChargeState),
    "delivery_state": _enum(DeliveryState),
    "outputs": _outputs,
    "request": _json_object("request"),
    "meta": _json_object("meta"),
    "progress": _progress,
    "deployment_id": _optional(str, "deployment_id"),
    "backend_run_id": _optional(str, "backend_run_id"),
    "live_status": _optional(str, "live_status"),
    "error_code": _optional(str, "error_code"),
    "error_message": _optional(str, "error_message"),
    "queue_position": _optional(int, "queue_position"),
    "progress_message_id": _optional(int, "progress_message_id"),
    "updated_at": _optional((int, float), "updated_at"),
    "submitted_at": _optional((int, float), "submitted_at"),
    "finished_at": _optional((int, float), "finished_at"),
    "deadline_at": _optional((int, float), "deadline_at"),
}
assert set(_ENCODERS) == RUN_UPDATABLE_FIELDS, "every updatable field needs an encoder"


def _encode_record(run: RunRecord) -> tuple[Any, ...]:
    values = {name: getattr(run, name) for name in _COLUMNS}
    for name, encode in _ENCODERS.items():
        values[name] = encode(values[name])
    values["user_id"] = require_int(run.user_id, "user_id")
    values["chat_id"] = require_int(run.chat_id, "chat_id")
    values["price"] = require_int(run.price, "price", minimum=0)
    return tuple(values[name] for name in _COLUMNS)


def _record(row: aiosqlite.Row) -> RunRecord:
    return RunRecord(
        id=row["id"],
        user_id=row["user_id"],
        chat_id=row["chat_id"],
        type=row["type"],
        request=freeze(load_json(row["request"], "request")),
        status=RunStatus(row["status"]),
        deployment_id=row["deployment_id"],
        backend_run_id=row["backend_run_id"],
        progress=row["progress"],
        live_status=row["live_status"],
        queue_position=row["queue_position"],
        outputs=tuple(MediaOutput.from_dict(d) for d in load_json(row["outputs"], "outputs")),
        error_code=row["error_code"],
        error_message=row["error_message"],
        price=row["price"],
        charge_state=ChargeState(row["charge_state"]),
        delivery_state=DeliveryState(row["delivery_state"]),
        progress_message_id=row["progress_message_id"],
        meta=freeze(load_json(row["meta"], "meta")),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        submitted_at=row["submitted_at"],
        finished_at=row["finished_at"],
        deadline_at=row["deadline_at"],
    )


_INSERT = f"INSERT INTO runs({', '.join(_COLUMNS)}) VALUES ({', '.join('?' for _ in _COLUMNS)})"


class RunRepository:
    """Runs. ``limits`` (the spending guards) and the ledger's ``free_daily_credits`` apply
    inside :meth:`create_run`'s transaction."""

    def __init__(
        self,
        db: Database,
        ledger: LedgerRepository | None = None,
        *,
        limits: RunLimits | None = None,
    ) -> None:
        self._db = db
        self._ledger = ledger if ledger is not None else LedgerRepository(db)
        self.limits = limits or RunLimits()

    async def create_run(self, run: RunRecord, hold_amount: int = 0) -> RunRecord:
        """Insert the run and hold ``hold_amount`` credits for it, in one transaction.

        Raises ``DailyLimitError`` / ``BotDailyLimitError`` (spending guards) or
        ``InsufficientBalanceError``, writing nothing."""
        if not isinstance(run, RunRecord):
            raise ValidationError("run must be a RunRecord")
        hold_amount = require_int(hold_amount, "hold_amount", minimum=0)
        now = self._db.clock()
        stamps: dict[str, Any] = {}
        if not run.created_at:
            stamps["created_at"] = now
        if not run.updated_at:
            stamps["updated_at"] = run.created_at or now
        if hold_amount > 0:
            stamps["charge_state"] = ChargeState.HELD
        if stamps:
            run = dataclasses.replace(run, **stamps)
        params = _encode_record(run)  # validates before anything is written
        run = frozen_record(run)  # the caller's dicts stay theirs; the cache keeps a copy
        cache = self._db.run_cache
        limits = self.limits
        daily = self._ledger.free_daily_credits

        def insert(conn: sqlite3.Connection) -> None:
            try:
                conn.execute(_INSERT, params)
            except sqlite3.IntegrityError:
                raise DuplicateError(f"run {run.id!r} already exists") from None

        def create(conn: sqlite3.Connection) -> None:
            if limits.active:
                check_run_limits(conn, limits, run.user_id, now=now)
            if hold_amount > 0:
                place_hold(
                    conn, run.user_id, hold_amount, run.id, now=now, free_daily_credits=daily
                )
            insert(conn)

        async with self._db.exclusive() as session:
            cache.forget_backend(run.backend_run_id)
            if hold_amount == 0 and not limits.active:  # one INSERT: its own transaction
                await session.call(insert)
            else:  # limits, hold and INSERT: one transaction, one hop
                await session.transaction(create)
            return cache.put(run)

    async def update_run(self, run_id: str, **changes: Any) -> RunRecord:
        """Update fields from ``RUN_UPDATABLE_FIELDS``; ``updated_at`` defaults to now.

        Raises ``NotFoundError`` (a ``KeyError``) for an unknown run and ``ValidationError``
        (a ``ValueError``) for an unknown field or a bad value.
        """
        run = await self._update("", changes, run_id)
        if run is None:
            raise NotFoundError(f"unknown run {run_id!r}")
        return run

    async def update_run_if_active(self, run_id: str, **changes: Any) -> RunRecord | None:
        """Like :meth:`update_run`, but only while the run is not terminal; ``None`` (nothing
        written) for a terminal or unknown run. Check and write are one statement."""
        return await self._update(f" AND status NOT IN ({_TERMINAL_SQL})", changes, run_id)

    async def _update(
        self, condition: str, changes: dict[str, Any], run_id: str
    ) -> RunRecord | None:
        bad = set(changes) - RUN_UPDATABLE_FIELDS
        if bad:
            raise ValidationError(f"fields not updatable: {', '.join(sorted(bad))}")
        changes.setdefault("updated_at", self._db.clock())
        encoded = {name: _ENCODERS[name](value) for name, value in changes.items()}
        assignments = ", ".join(f"{name} = ?" for name in encoded)  # names are whitelisted
        params = (*encoded.values(), run_id, *(_TERMINAL if condition else ()))
        sql = f"UPDATE runs SET {assignments} WHERE id = ?{condition} RETURNING *"
        cache = self._db.run_cache
        async with self._db.exclusive() as session:
            cached = cache.get(run_id)
            if condition and cached is not None and cached.is_terminal:
                return None  # the cache is true: the statement would match nothing
            # Dropped before the write: if this coroutine is cancelled while the statement
            # runs, the next reader reads what it left (storage/run_cache.py).
            cache.discard(run_id)
            if "backend_run_id" in changes:
                cache.forget_backend(encoded["backend_run_id"])
            # One statement (UPDATE ... RETURNING) in autocommit: one round trip.
            rows = await session.fetchall(sql, params)
            if not rows:  # nothing written (unknown run, or terminal): the cache was true
                if cached is not None:
                    cache.put(cached)
                return None
            return cache.put(_record(rows[0]))

    async def get_run(self, run_id: str) -> RunRecord | None:
        cache = self._db.run_cache
        run = cache.get(run_id)
        if run is not None:
            return run
        async with self._db.exclusive() as session:  # filled under the lock: no write between
            run = cache.get(run_id)  # a writer that held the lock may have put it meanwhile
            if run is not None:
                return run
            rows = await session.fetchall("SELECT * FROM runs WHERE id = ?", (run_id,))
            return cache.put(_record(rows[0])) if rows else None

    async def get_run_by_backend_id(self, backend_run_id: str) -> RunRecord | None:
        cache = self._db.run_cache
        run = cache.by_backend(backend_run_id)
        if run is not None:
            return run
        async with self._db.exclusive() as session:
            rows = await session.fetchall(
                "SELECT * FROM runs WHERE backend_run_id = ? ORDER BY created_at DESC LIMIT 1",
                (backend_run_id,),
            )
            if not rows:
                return None
            run = _record(rows[0])
            cache.remember_backend(run)
            return run

    async def list_unfinished_runs(self) -> list[RunRecord]:
        """Everything a restart must pick up again, oldest first."""
        return await self._many(
            f"SELECT * FROM runs WHERE {_UNFINISHED_WHERE} ORDER BY created_at, rowid",
            _TERMINAL,
        )

    async def list_user_runs(self, user_id: int, *, active_only: bool = True) -> list[RunRecord]:
        """A user's runs, newest first; ``active_only`` keeps the non-terminal ones."""
        where = "user_id = ?"
        params: tuple[Any, ...] = (user_id,)
        if active_only:
            where += f" AND status NOT IN ({_TERMINAL_SQL})"
            params += _TERMINAL
        return await self._many(
            f"SELECT * FROM runs WHERE {where} ORDER BY created_at DESC, rowid DESC", params
        )

    async def list_recent_runs(self, user_id: int, *, limit: int = 5) -> list[RunRecord]:
        """A user's latest ``limit`` runs of any status, newest first (``/user``)."""
        limit = max(1, min(int(limit), 100))
        return await self._many(
            "SELECT * FROM runs WHERE user_id = ? ORDER BY created_at DESC, rowid DESC LIMIT ?",
            (user_id, limit),
        )

    async def find_run_for_message(
        self, user_id: int, chat_id: int, message_id: int
    ) -> RunRecord | None:
        """The run a user's chat message already started (``meta.reply_to_message_id``), so a
        message seen again after a crash (Telegram redelivers unconfirmed updates) does not
        start a second generation."""
        return await self._one(
            "SELECT * FROM runs WHERE user_id = ? AND chat_id = ?"
            " AND json_extract(meta, '$.reply_to_message_id') = ?"
            " ORDER BY created_at DESC LIMIT 1",
            (user_id, chat_id, message_id),
        )

    async def find_run_for_callback(self, user_id: int, callback_query_id: str) -> RunRecord | None:
        """The run a button press already started (``meta.callback_query_id``): Telegram
        redelivers an unconfirmed callback query after a restart with the same id."""
        return await self._one(
            "SELECT * FROM runs WHERE user_id = ?"
            " AND json_extract(meta, '$.callback_query_id') = ?"
            " ORDER BY created_at DESC LIMIT 1",
            (user_id, str(callback_query_id)),
        )

    async def list_terminal_runs_with_open_holds(self, limit: int = 500) -> list[RunRecord]:
        """Terminal runs whose hold is still open (a failed ``release_hold``, a crash between
        the two writes): what the periodic reconciliation resolves."""
        return await self._many(
            "SELECT runs.* FROM holds JOIN runs ON runs.id = holds.run_id"
            f" WHERE holds.state = 'open' AND runs.status IN ({_TERMINAL_SQL})"
            " ORDER BY holds.created_at LIMIT ?",
            (*_TERMINAL, int(limit)),
        )

    async def prune_runs(self, finished_before: float, *, limit: int = 1000) -> int:
        """Delete up to ``limit`` terminal runs that finished before ``finished_before`` and
        have nothing left to do (no open hold, not a success waiting for delivery). The ledger
        is never touched: its rows keep the run id as plain text. Returns how many went."""
        cache = self._db.run_cache
        async with self._db.exclusive() as session:
            try:
                rows = await session.fetchall(
                    "DELETE FROM runs WHERE rowid IN (SELECT rowid FROM runs"
                    f" WHERE status IN ({_TERMINAL_SQL})"
                    " AND COALESCE(finished_at, updated_at) < ?"
                    " AND charge_state != 'held'"
                    " AND NOT (status = 'success' AND delivery_state = 'pending')"
                    " LIMIT ?) RETURNING id",
                    (*_TERMINAL, float(finished_before), int(limit)),
                )
            except BaseException:  # e.g. cancelled: which ids went is unknown
                cache.drop_terminal()
                raise
            for row in rows:
                cache.discard(row[0])
        return len(rows)

    async def count_by_status(self) -> dict[str, int]:
        async with self._db.read() as conn:
            rows = await conn.execute_fetchall(
                "SELECT status, COUNT(*) FROM runs GROUP BY status ORDER BY status"
            )
        return {r[0]: int(r[1]) for r in rows}

    async def _one(self, sql: str, params: tuple[Any, ...]) -> RunRecord | None:
        rows = await self._many(sql, params)
        return rows[0] if rows else None

    async def _many(self, sql: str, params: tuple[Any, ...]) -> list[RunRecord]:
        async with self._db.read() as conn:
            rows = await conn.execute_fetchall(sql, params)
        return [_record(r) for r in rows]
