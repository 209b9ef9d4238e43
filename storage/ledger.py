"""The balance ledger: append-only movements, holds, the cached balance and free credits.

Invariants (kept in every transaction, checked by :meth:`LedgerRepository.check_consistency`):

* ``users.balance`` (the *total*) equals the sum of the user's ledger movements;
* ``users.held`` equals the sum of the user's open holds, and ``0 <= held <= balance``;
* the *available* balance is ``balance - held``; a hold needs ``available >= amount``;
* a hold is settled (debit movements, reason ``generation``) or released exactly once, and
  the run row's ``charge_state`` follows in the same transaction.

Free daily credits (``FREE_DAILY_CREDITS``) are a second *pot*: every ledger row names the
pot it moves (``paid`` or ``free``); ``users.free_balance`` caches the free pot's sum and
``users.free_held`` the free part of the open holds, so *paid* = ``balance - free_balance``.
On a user's first money operation of a UTC day (the database clock decides) the unheld rest
of older free credits expires (row ``free_expiry``) and the day's credits are granted (row
``free_grant``), in the transaction of that operation. Holds take free credits first and
remember how many and from which day; settling debits each pot by its part; releasing puts
free credits back only if they are still today's, else they expire. So free credits are
never carried over and reads (:meth:`LedgerRepository.balances`) show what a write would.
"""

from __future__ import annotations

import sqlite3
from dataclasses import replace

from generation.billing import utc_day
from generation.models import ChargeState
from storage.database import Database
from storage.errors import NotFoundError, ValidationError
from storage.holds import place_hold, resolve_hold
from storage.ledger_audit import check_money
from storage.money import (
    REASON_GENERATION,
    REASON_SET_BALANCE,
    Balances,
    Hold,
    LedgerEntry,
    append_movement,
    entry_from_row,
    fetch_balances,
    fetch_money,
    hold_from_row,
    roll_free_credits,
    virtual_balances,
)
from storage.validation import require_int, require_text


def _money_of(conn: sqlite3.Connection, user_id: int) -> tuple[int, int, int, int]:
    """Total, held, free and free held credits of a known user (else ``NotFoundError``)."""
    row = fetch_money(conn, user_id)
    if row is None:
        raise NotFoundError(f"unknown user {user_id}")
    return row[0], row[1], row[2], row[3]


class LedgerRepository:
    """Balances of users. Implements :class:`generation.ports.BalanceStore`.

    ``free_daily_credits`` (``FREE_DAILY_CREDITS``) is set by the bot at start; 0 turns free
    credits off (older ones still expire)."""

    def __init__(self, db: Database, *, free_daily_credits: int = 0) -> None:
        self._db = db
        self.free_daily_credits = require_int(free_daily_credits, "free_daily_credits", minimum=0)

    # -- reads ------------------------------------------------------------------------------

    async def balances(self, user_id: int) -> Balances:
        """Free (today's), paid and held credits, as after today's roll. Unknown users have
        nothing paid and today's free credits."""
        row = await self._db.call(lambda conn: fetch_money(conn, user_id))
        return virtual_balances(row, utc_day(self._db.clock()), self.free_daily_credits)

    async def refresh(self, user_id: int) -> Balances:
        """Like :meth:`balances`, but writes today's roll (grant/expiry rows) if it is due."""
        now, daily = self._db.clock(), self.free_daily_credits
        result = await self._db.transaction(
            lambda conn: roll_free_credits(conn, user_id, now=now, daily=daily)
        )
        if result is None:
            raise NotFoundError(f"unknown user {user_id}")
        return result

    async def _read(self, user_id: int) -> Balances | None:
        row = await self._db.call(lambda conn: fetch_money(conn, user_id))
        if row is None:
            return None
        return virtual_balances(row, utc_day(self._db.clock()), self.free_daily_credits)

    async def get_total(self, user_id: int) -> int:
        """Sum of all movements (holds not subtracted), today's free credits included."""
        balances = await self._read(user_id)
        return 0 if balances is None else balances.total

    async def get_held(self, user_id: int) -> int:
        balances = await self._db.call(lambda conn: fetch_balances(conn, user_id))
        return 0 if balances is None else balances[1]

    async def get_balance(self, user_id: int) -> int:
        """Available credits: total minus open holds (free ones included). Unknown users
        have 0."""
        balances = await self._read(user_id)
        return 0 if balances is None else balances.available

    async def history(self, user_id: int, limit: int = 20) -> list[LedgerEntry]:
        """The user's latest movements, newest first."""
        limit = require_int(limit, "limit", minimum=1)
        async with self._db.read() as conn:
            rows = await conn.execute_fetchall(
                "SELECT * FROM ledger WHERE user_id = ? ORDER BY id DESC LIMIT ?",
                (user_id, limit),
            )
        return [entry_from_row(r) for r in rows]

    async def get_hold(self, run_id: str) -> Hold | None:
        async with self._db.read() as conn:
            rows = await conn.execute_fetchall("SELECT * FROM holds WHERE run_id = ?", (run_id,))
        return hold_from_row(rows[0]) if rows else None

    async def list_open_holds(self) -> list[Hold]:
        """Holds neither settled nor released (e.g. left by a crash), oldest first."""
        async with self._db.read() as conn:
            rows = await conn.execute_fetchall(
                "SELECT * FROM holds WHERE state = 'open' ORDER BY created_at, rowid"
            )
        return [hold_from_row(r) for r in rows]

    # -- movements --------------------------------------------------------------------------

    async def credit(
        self, user_id: int, amount: int, *, reason: str, actor: int | None = None
    ) -> int:
        """Append one movement of paid credits (negative = debit) and return the new total.

        A debit may not reach into paid credits on hold (nor below zero)."""
        amount = require_int(amount, "amount")
        if amount == 0:
            raise ValidationError("amount must not be zero")
        reason = require_text(reason, "reason", max_length=64)
        if actor is not None:
            require_int(actor, "actor")
        now = self._db.clock()

        def credit(conn: sqlite3.Connection) -> int:
            total, held, free_balance, free_held = _money_of(conn, user_id)
            if total - free_balance + amount < held - free_held:
                raise ValidationError(
                    f"debit of {-amount} exceeds the available balance of user {user_id}"
                    f" ({total - held}; {held} on hold)"
                )
            append_movement(conn, user_id, amount, reason, now=now, actor=actor)
            return total + amount

        return await self._db.transaction(credit)

    async def set_balance(self, user_id: int, amount: int, *, actor: int | None) -> int:
        """Make the *paid* credits equal ``amount`` with one adjusting movement; returns it.
        (Free daily credits are not touched.)"""
        amount = require_int(amount, "amount", minimum=0)
        if actor is not None:
            require_int(actor, "actor")
        now = self._db.clock()

        def set_paid(conn: sqlite3.Connection) -> None:
            total, held, free_balance, free_held = _money_of(conn, user_id)
            paid, paid_held = total - free_balance, held - free_held
            if amount < paid_held:
                raise ValidationError(
                    f"user {user_id} has {paid_held} credits on hold; the balance cannot go"
                    " below that"
                )
            if amount != paid:
                append_movement(
                    conn, user_id, amount - paid, REASON_SET_BALANCE, now=now, actor=actor
                )

        await self._db.transaction(set_paid)
        return amount

    # -- holds ------------------------------------------------------------------------------

    async def hold(self, user_id: int, amount: int, run_id: str) -> None:
        """Reserve ``amount`` credits for ``run_id`` (atomic check against the available
        balance; free credits first). Raises ``InsufficientBalanceError`` or
        ``DuplicateError``."""
        amount = require_int(amount, "amount", minimum=0)
        run_id = require_text(run_id, "run_id")
        now, daily = self._db.clock(), self.free_daily_credits
        await self._db.transaction(
            lambda conn: place_hold(
                conn, user_id, amount, run_id, now=now, free_daily_credits=daily
            )
        )

    async def settle_hold(self, run_id: str) -> bool:
        """Turn the open hold into a debit. True only the first time."""
        return await self._resolve(run_id, ChargeState.SETTLED)

    async def release_hold(self, run_id: str) -> bool:
        """Drop the open hold without charging. True only the first time."""
        return await self._resolve(run_id, ChargeState.RELEASED)

    async def _resolve(self, run_id: str, outcome: ChargeState) -> bool:
        now, daily = self._db.clock(), self.free_daily_credits
        cache = self._db.run_cache
        async with self._db.exclusive() as session:
            # resolve_hold writes runs.charge_state: the cached run is dropped before the write
            # (a cancelled caller leaves it dropped: the next reader reads what the write left)
            # and put back updated, still under the lock, once the transaction committed.
            cached = cache.discard(run_id)
            resolved = await session.transaction(
                lambda conn: resolve_hold(conn, run_id, outcome, now=now, free_daily_credits=daily)
            )
            if cached is not None:
                cache.put(
                    replace(cached, charge_state=outcome, updated_at=now) if resolved else cached
                )
        return resolved

    async def credits_spent_since(self, after_id: int) -> tuple[int, int]:
        """Credits charged for generations in ledger rows after ``after_id``, and the last
        row id seen (``after_id`` when none): ``/metrics`` sums the ledger incrementally, so
        a scrape reads only the rows written since the previous one (a primary-key range)."""
        async with self._db.read() as conn:
            rows = await conn.execute_fetchall(
                "SELECT COALESCE(-SUM(CASE WHEN reason = ? THEN amount END), 0),"
                " COALESCE(MAX(id), ?) FROM ledger WHERE id > ?",
                (REASON_GENERATION, after_id, after_id),
            )
        return int(rows[0][0]), int(rows[0][1])

    # -- audit ------------------------------------------------------------------------------

    async def check_consistency(self) -> list[str]:
        """Problems found in the money tables; empty when all invariants hold."""
        async with self._db.read() as conn:
            return await check_money(conn)
