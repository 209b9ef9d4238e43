"""The balance ledger: append-only movements, holds, and the cached balance.

Invariants (kept in every transaction, checked by :meth:`LedgerRepository.check_consistency`):

* ``users.balance`` (the *total*) equals the sum of the user's ledger movements;
* ``users.held`` equals the sum of the user's open holds, and ``0 <= held <= balance``;
* the *available* balance is ``balance - held``; a hold needs ``available >= amount``;
* a hold is settled (one debit movement, reason ``generation``) or released exactly once, and
  the run row's ``charge_state`` follows in the same transaction.
"""

from __future__ import annotations

from dataclasses import dataclass

import aiosqlite

from generation.errors import InsufficientBalanceError
from generation.models import ChargeState
from storage.database import Database
from storage.errors import DuplicateError, NotFoundError, ValidationError
from storage.validation import require_int, require_text

REASON_STARTING_BALANCE = "starting_balance"
REASON_GENERATION = "generation"
REASON_SET_BALANCE = "set_balance"


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    id: int
    user_id: int
    amount: int  # positive = credit, negative = debit
    reason: str
    actor: int | None
    run_id: str | None
    created_at: float


@dataclass(frozen=True, slots=True)
class Hold:
    run_id: str
    user_id: int
    amount: int
    state: str  # open | settled | released
    created_at: float
    resolved_at: float | None = None


# -- helpers usable inside another repository's transaction -----------------------------------


async def _fetch_balances(conn: aiosqlite.Connection, user_id: int) -> tuple[int, int] | None:
    # execute_fetchall: one round trip to the DB thread (a cursor takes three).
    rows = await conn.execute_fetchall("SELECT balance, held FROM users WHERE id = ?", (user_id,))
    return None if not rows else (int(rows[0][0]), int(rows[0][1]))


async def append_movement(
    conn: aiosqlite.Connection,
    user_id: int,
    amount: int,
    reason: str,
    *,
    now: float,
    actor: int | None = None,
    run_id: str | None = None,
) -> None:
    """Insert one movement and update the cached total (caller owns the transaction)."""
    await conn.execute(
        "INSERT INTO ledger(user_id, amount, reason, actor, run_id, created_at)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        (user_id, amount, reason, actor, run_id, now),
    )
    await conn.execute("UPDATE users SET balance = balance + ? WHERE id = ?", (amount, user_id))


async def place_hold(
    conn: aiosqlite.Connection, user_id: int, amount: int, run_id: str, *, now: float
) -> None:
    """Check the available balance and record a hold (caller owns the transaction)."""
    if await conn.execute_fetchall("SELECT 1 FROM holds WHERE run_id = ?", (run_id,)):
        raise DuplicateError(f"a hold for run {run_id!r} already exists")
    balances = await _fetch_balances(conn, user_id)
    available = 0 if balances is None else balances[0] - balances[1]
    if available < amount:
        raise InsufficientBalanceError(
            f"user {user_id} has {available} credits available, {amount} required",
            required=amount,
            available=available,
        )
    await conn.execute(
        "INSERT INTO holds(run_id, user_id, amount, state, created_at) VALUES (?, ?, ?, 'open', ?)",
        (run_id, user_id, amount, now),
    )
    if amount:
        await conn.execute("UPDATE users SET held = held + ? WHERE id = ?", (amount, user_id))


def _check_amount(amount: object, name: str = "amount") -> int:
    return require_int(amount, name)


class LedgerRepository:
    """Balances of users. Implements :class:`generation.ports.BalanceStore`."""

    def __init__(self, db: Database) -> None:
        self._db = db

    # -- reads ------------------------------------------------------------------------------

    async def get_total(self, user_id: int) -> int:
        """Sum of all movements (holds not subtracted). Unknown users have 0."""
        async with self._db.read() as conn:
            balances = await _fetch_balances(conn, user_id)
        return 0 if balances is None else balances[0]

    async def get_held(self, user_id: int) -> int:
        async with self._db.read() as conn:
            balances = await _fetch_balances(conn, user_id)
        return 0 if balances is None else balances[1]

    async def get_balance(self, user_id: int) -> int:
        """Available credits: total minus open holds. Unknown users have 0."""
        async with self._db.read() as conn:
            balances = await _fetch_balances(conn, user_id)
        return 0 if balances is None else balances[0] - balances[1]

    async def history(self, user_id: int, limit: int = 20) -> list[LedgerEntry]:
        """The user's latest movements, newest first."""
        limit = require_int(limit, "limit", minimum=1)
        async with self._db.read() as conn:
            rows = await conn.execute_fetchall(
                "SELECT * FROM ledger WHERE user_id = ? ORDER BY id DESC LIMIT ?",
                (user_id, limit),
            )
        return [
            LedgerEntry(
                id=r["id"],
                user_id=r["user_id"],
                amount=r["amount"],
                reason=r["reason"],
                actor=r["actor"],
                run_id=r["run_id"],
                created_at=r["created_at"],
            )
            for r in rows
        ]

    async def get_hold(self, run_id: str) -> Hold | None:
        async with self._db.read() as conn:
            rows = await conn.execute_fetchall("SELECT * FROM holds WHERE run_id = ?", (run_id,))
        return _hold(rows[0]) if rows else None

    async def list_open_holds(self) -> list[Hold]:
        """Holds neither settled nor released (e.g. left by a crash), oldest first."""
        async with self._db.read() as conn:
            rows = await conn.execute_fetchall(
                "SELECT * FROM holds WHERE state = 'open' ORDER BY created_at, rowid"
            )
        return [_hold(r) for r in rows]

    # -- movements --------------------------------------------------------------------------

    async def credit(
        self, user_id: int, amount: int, *, reason: str, actor: int | None = None
    ) -> int:
        """Append one movement (negative = debit) and return the new total.

        A debit may not reach into credits on hold (nor below zero).
        """
        amount = _check_amount(amount)
        if amount == 0:
            raise ValidationError("amount must not be zero")
        reason = require_text(reason, "reason", max_length=64)
        if actor is not None:
            require_int(actor, "actor")
        async with self._db.write() as conn:
            balances = await _fetch_balances(conn, user_id)
            if balances is None:
                raise NotFoundError(f"unknown user {user_id}")
            total, held = balances
            new_total = total + amount
            if new_total < held:
                raise ValidationError(
                    f"debit of {-amount} exceeds the available balance of user {user_id}"
                    f" ({total - held}; {held} on hold)"
                )
            await append_movement(conn, user_id, amount, reason, now=self._db.clock(), actor=actor)
        return new_total

    async def set_balance(self, user_id: int, amount: int, *, actor: int | None) -> int:
        """Make the total equal ``amount`` with one adjusting movement; returns it."""
        amount = require_int(amount, "amount", minimum=0)
        if actor is not None:
            require_int(actor, "actor")
        async with self._db.write() as conn:
            balances = await _fetch_balances(conn, user_id)
            if balances is None:
                raise NotFoundError(f"unknown user {user_id}")
            total, held = balances
            if amount < held:
                raise ValidationError(
                    f"user {user_id} has {held} credits on hold; the balance cannot go below that"
                )
            if amount != total:
                await append_movement(
                    conn,
                    user_id,
                    amount - total,
                    REASON_SET_BALANCE,
                    now=self._db.clock(),
                    actor=actor,
                )
        return amount

    # -- holds ------------------------------------------------------------------------------

    async def hold(self, user_id: int, amount: int, run_id: str) -> None:
        """Reserve ``amount`` credits for ``run_id`` (atomic check against the available
        balance). Raises ``InsufficientBalanceError`` or ``DuplicateError``."""
        amount = require_int(amount, "amount", minimum=0)
        run_id = require_text(run_id, "run_id")
        async with self._db.write() as conn:
            await place_hold(conn, user_id, amount, run_id, now=self._db.clock())

    async def settle_hold(self, run_id: str) -> bool:
        """Turn the open hold into a debit. True only the first time."""
        return await self._resolve(run_id, ChargeState.SETTLED)

    async def release_hold(self, run_id: str) -> bool:
        """Drop the open hold without charging. True only the first time."""
        return await self._resolve(run_id, ChargeState.RELEASED)

    async def _resolve(self, run_id: str, outcome: ChargeState) -> bool:
        now = self._db.clock()
        async with self._db.write() as conn:
            rows = await conn.execute_fetchall(
                "SELECT user_id, amount FROM holds WHERE run_id = ? AND state = 'open'", (run_id,)
            )
            if not rows:
                return False
            user_id, amount = int(rows[0][0]), int(rows[0][1])
            await conn.execute(
                "UPDATE holds SET state = ?, resolved_at = ? WHERE run_id = ? AND state = 'open'",
                (outcome.value, now, run_id),
            )
            await conn.execute("UPDATE users SET held = held - ? WHERE id = ?", (amount, user_id))
            if outcome is ChargeState.SETTLED and amount:
                await append_movement(
                    conn, user_id, -amount, REASON_GENERATION, now=now, run_id=run_id
                )
            await conn.execute(
                "UPDATE runs SET charge_state = ?, updated_at = ? WHERE id = ?",
                (outcome.value, now, run_id),
            )
        return True

    async def credits_spent(self) -> int:
        """Credits charged for generations so far (settled holds), for ``/metrics``."""
        async with self._db.read() as conn:
            rows = await conn.execute_fetchall(
                "SELECT COALESCE(-SUM(amount), 0) FROM ledger WHERE reason = ?",
                (REASON_GENERATION,),
            )
        return int(rows[0][0])

    # -- audit ------------------------------------------------------------------------------

    async def check_consistency(self) -> list[str]:
        """Problems found in the money tables; empty when all invariants hold."""
        problems: list[str] = []
        async with self._db.read() as conn:
            rows = await conn.execute_fetchall(
                """
                SELECT u.id, u.balance, u.held,
                       COALESCE((SELECT SUM(amount) FROM ledger l WHERE l.user_id = u.id), 0),
                       COALESCE((SELECT SUM(amount) FROM holds h
                                 WHERE h.user_id = u.id AND h.state = 'open'), 0)
                FROM users u
                """
            )
            for uid, balance, held, ledger_sum, open_sum in rows:
                if balance != ledger_sum:
                    problems.append(
                        f"user {uid}: cached balance {balance} != ledger sum {ledger_sum}"
                    )
                if held != open_sum:
                    problems.append(f"user {uid}: cached held {held} != open holds {open_sum}")
                if balance < 0 or held < 0 or held > balance:
                    problems.append(f"user {uid}: balance {balance}, held {held} out of range")
            orphans = await conn.execute_fetchall(
                "SELECT DISTINCT user_id FROM holds WHERE state = 'open' AND amount > 0"
                " AND user_id NOT IN (SELECT id FROM users)"
            )
            problems.extend(f"open hold of unknown user {r[0]}" for r in orphans)
            mismatched = await conn.execute_fetchall(
                "SELECT h.run_id, h.state, r.charge_state FROM holds h JOIN runs r"
                " ON r.id = h.run_id WHERE (h.state = 'open' AND r.charge_state != 'held')"
                " OR (h.state != 'open' AND r.charge_state != h.state)"
            )
            problems.extend(
                f"run {r[0]}: hold is {r[1]} but run charge_state is {r[2]}" for r in mismatched
            )
            settled = await conn.execute_fetchall(
                "SELECT h.run_id FROM holds h WHERE h.state = 'settled' AND h.amount > 0 AND"
                " (SELECT COUNT(*) FROM ledger l WHERE l.run_id = h.run_id"
                "  AND l.reason = 'generation') != 1"
            )
            problems.extend(f"run {r[0]}: settled hold without exactly one debit" for r in settled)
        return problems


def _hold(row: aiosqlite.Row) -> Hold:
    return Hold(
        run_id=row["run_id"],
        user_id=row["user_id"],
        amount=row["amount"],
        state=row["state"],
        created_at=row["created_at"],
        resolved_at=row["resolved_at"],
    )
