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

from dataclasses import dataclass

import aiosqlite

from generation.billing import utc_day
from generation.errors import InsufficientBalanceError
from generation.models import ChargeState
from storage.database import Database
from storage.errors import DuplicateError, NotFoundError, ValidationError
from storage.validation import require_int, require_text

REASON_STARTING_BALANCE = "starting_balance"
REASON_GENERATION = "generation"
REASON_SET_BALANCE = "set_balance"
REASON_FREE_GRANT = "free_grant"
REASON_FREE_EXPIRY = "free_expiry"
REASON_PURCHASE = "purchase"
REASON_REFUND = "refund"

POT_PAID = "paid"
POT_FREE = "free"


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    id: int
    user_id: int
    amount: int  # positive = credit, negative = debit
    reason: str
    actor: int | None
    run_id: str | None
    created_at: float
    pot: str = POT_PAID
    charge_id: str | None = None


@dataclass(frozen=True, slots=True)
class Hold:
    run_id: str
    user_id: int
    amount: int
    state: str  # open | settled | released
    created_at: float
    resolved_at: float | None = None
    free_amount: int = 0  # the part taken from free credits
    free_day: int | None = None  # the UTC day those free credits belonged to


@dataclass(frozen=True, slots=True)
class Balances:
    """One user's money. ``paid`` and ``free`` include their held parts."""

    paid: int = 0
    free: int = 0
    held: int = 0
    free_held: int = 0

    @property
    def paid_held(self) -> int:
        return self.held - self.free_held

    @property
    def paid_available(self) -> int:
        return self.paid - self.paid_held

    @property
    def free_available(self) -> int:
        return self.free - self.free_held

    @property
    def total(self) -> int:
        return self.paid + self.free

    @property
    def available(self) -> int:
        return self.total - self.held


# -- helpers usable inside another repository's transaction -----------------------------------

_MONEY_COLUMNS = "balance, held, free_balance, free_held, free_day"


async def _fetch_balances(conn: aiosqlite.Connection, user_id: int) -> tuple[int, int] | None:
    # execute_fetchall: one round trip to the DB thread (a cursor takes three).
    rows = await conn.execute_fetchall("SELECT balance, held FROM users WHERE id = ?", (user_id,))
    return None if not rows else (int(rows[0][0]), int(rows[0][1]))


async def _fetch_money(
    conn: aiosqlite.Connection, user_id: int
) -> tuple[int, int, int, int, int | None] | None:
    rows = await conn.execute_fetchall(
        f"SELECT {_MONEY_COLUMNS} FROM users WHERE id = ?", (user_id,)
    )
    if not rows:
        return None
    r = rows[0]
    return int(r[0]), int(r[1]), int(r[2]), int(r[3]), None if r[4] is None else int(r[4])


def _virtual(row: tuple[int, int, int, int, int | None] | None, today: int, daily: int) -> Balances:
    """The balances as they are after today's roll (without writing it)."""
    if row is None:
        return Balances(free=daily)  # an unknown user would get today's credits on first use
    balance, held, free_balance, free_held, free_day = row
    paid = balance - free_balance
    if free_day != today and (free_day is not None or daily > 0):
        free_balance = free_held + daily  # older unheld free credits expire, today's arrive
    return Balances(paid=paid, free=free_balance, held=held, free_held=free_held)


async def append_movement(
    conn: aiosqlite.Connection,
    user_id: int,
    amount: int,
    reason: str,
    *,
    now: float,
    actor: int | None = None,
    run_id: str | None = None,
    pot: str = POT_PAID,
    charge_id: str | None = None,
) -> None:
    """Insert one movement and update the cached sums (caller owns the transaction)."""
    await conn.execute(
        "INSERT INTO ledger(user_id, amount, reason, actor, run_id, created_at, pot, charge_id)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (user_id, amount, reason, actor, run_id, now, pot, charge_id),
    )
    free = amount if pot == POT_FREE else 0
    await conn.execute(
        "UPDATE users SET balance = balance + ?, free_balance = free_balance + ? WHERE id = ?",
        (amount, free, user_id),
    )


async def roll_free_credits(
    conn: aiosqlite.Connection, user_id: int, *, now: float, daily: int
) -> Balances | None:
    """Expire older free credits and grant today's, once per user and UTC day (caller owns the
    transaction). Returns the user's balances afterwards; None for an unknown user."""
    row = await _fetch_money(conn, user_id)
    if row is None:
        return None
    today = utc_day(now)
    balance, held, free_balance, free_held, free_day = row
    if free_day == today or (free_day is None and daily <= 0):
        return _virtual(row, today, daily)
    expire = free_balance - free_held
    if expire > 0:
        await append_movement(conn, user_id, -expire, REASON_FREE_EXPIRY, now=now, pot=POT_FREE)
    if daily > 0:
        await append_movement(conn, user_id, daily, REASON_FREE_GRANT, now=now, pot=POT_FREE)
    await conn.execute("UPDATE users SET free_day = ? WHERE id = ?", (today, user_id))
    free_balance = free_held + max(daily, 0)
    balance = balance - expire + max(daily, 0)
    return Balances(paid=balance - free_balance, free=free_balance, held=held, free_held=free_held)


async def place_hold(
    conn: aiosqlite.Connection,
    user_id: int,
    amount: int,
    run_id: str,
    *,
    now: float,
    free_daily_credits: int = 0,
) -> None:
    """Check the available balance and record a hold, free credits first (caller owns the
    transaction)."""
    if await conn.execute_fetchall("SELECT 1 FROM holds WHERE run_id = ?", (run_id,)):
        raise DuplicateError(f"a hold for run {run_id!r} already exists")
    balances = await roll_free_credits(conn, user_id, now=now, daily=free_daily_credits)
    available = 0 if balances is None else balances.available
    if available < amount:
        raise InsufficientBalanceError(
            f"user {user_id} has {available} credits available, {amount} required",
            required=amount,
            available=available,
        )
    free_part = 0 if balances is None else min(amount, balances.free_available)
    await conn.execute(
        "INSERT INTO holds(run_id, user_id, amount, state, created_at, free_amount, free_day)"
        " VALUES (?, ?, ?, 'open', ?, ?, ?)",
        (run_id, user_id, amount, now, free_part, utc_day(now)),
    )
    if amount:
        await conn.execute(
            "UPDATE users SET held = held + ?, free_held = free_held + ? WHERE id = ?",
            (amount, free_part, user_id),
        )


async def resolve_hold(
    conn: aiosqlite.Connection,
    run_id: str,
    outcome: ChargeState,
    *,
    now: float,
    free_daily_credits: int = 0,
) -> bool:
    """Settle or release the open hold of ``run_id`` (caller owns the transaction). True only
    the first time."""
    rows = await conn.execute_fetchall(
        "SELECT user_id, amount, free_amount, free_day FROM holds"
        " WHERE run_id = ? AND state = 'open'",
        (run_id,),
    )
    if not rows:
        return False
    user_id, amount, free_part = int(rows[0][0]), int(rows[0][1]), int(rows[0][2])
    hold_day = rows[0][3]
    await conn.execute(
        "UPDATE holds SET state = ?, resolved_at = ? WHERE run_id = ? AND state = 'open'",
        (outcome.value, now, run_id),
    )
    await conn.execute(
        "UPDATE users SET held = held - ?, free_held = free_held - ? WHERE id = ?",
        (amount, free_part, user_id),
    )
    if outcome is ChargeState.SETTLED:
        if free_part:
            await append_movement(
                conn, user_id, -free_part, REASON_GENERATION, now=now, run_id=run_id, pot=POT_FREE
            )
        if amount - free_part:
            await append_movement(
                conn, user_id, free_part - amount, REASON_GENERATION, now=now, run_id=run_id
            )
    elif free_part and hold_day != utc_day(now):
        # The released free credits belong to an earlier day: they must not come back.
        row = await _fetch_money(conn, user_id)
        if row is not None and row[4] == utc_day(now):  # today's roll already happened
            await append_movement(
                conn, user_id, -free_part, REASON_FREE_EXPIRY, now=now, run_id=run_id, pot=POT_FREE
            )
        else:  # the roll expires them together with the rest of that day's credits
            await roll_free_credits(conn, user_id, now=now, daily=free_daily_credits)
    await conn.execute(
        "UPDATE runs SET charge_state = ?, updated_at = ? WHERE id = ?",
        (outcome.value, now, run_id),
    )
    return True


def _check_amount(amount: object, name: str = "amount") -> int:
    return require_int(amount, name)


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
        async with self._db.read() as conn:
            row = await _fetch_money(conn, user_id)
        return _virtual(row, utc_day(self._db.clock()), self.free_daily_credits)

    async def refresh(self, user_id: int) -> Balances:
        """Like :meth:`balances`, but writes today's roll (grant/expiry rows) if it is due."""
        async with self._db.write() as conn:
            result = await roll_free_credits(
                conn, user_id, now=self._db.clock(), daily=self.free_daily_credits
            )
        if result is None:
            raise NotFoundError(f"unknown user {user_id}")
        return result

    async def _read(self, user_id: int) -> Balances | None:
        async with self._db.read() as conn:
            row = await _fetch_money(conn, user_id)
        if row is None:
            return None
        return _virtual(row, utc_day(self._db.clock()), self.free_daily_credits)

    async def get_total(self, user_id: int) -> int:
        """Sum of all movements (holds not subtracted), today's free credits included."""
        balances = await self._read(user_id)
        return 0 if balances is None else balances.total

    async def get_held(self, user_id: int) -> int:
        async with self._db.read() as conn:
            balances = await _fetch_balances(conn, user_id)
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
        return [_entry(r) for r in rows]

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
        """Append one movement of paid credits (negative = debit) and return the new total.

        A debit may not reach into paid credits on hold (nor below zero)."""
        amount = _check_amount(amount)
        if amount == 0:
            raise ValidationError("amount must not be zero")
        reason = require_text(reason, "reason", max_length=64)
        if actor is not None:
            require_int(actor, "actor")
        async with self._db.write() as conn:
            row = await _fetch_money(conn, user_id)
            if row is None:
                raise NotFoundError(f"unknown user {user_id}")
            total, held, free_balance, free_held, _ = row
            if total - free_balance + amount < held - free_held:
                raise ValidationError(
                    f"debit of {-amount} exceeds the available balance of user {user_id}"
                    f" ({total - held}; {held} on hold)"
                )
            await append_movement(conn, user_id, amount, reason, now=self._db.clock(), actor=actor)
        return total + amount

    async def set_balance(self, user_id: int, amount: int, *, actor: int | None) -> int:
        """Make the *paid* credits equal ``amount`` with one adjusting movement; returns it.
        (Free daily credits are not touched.)"""
        amount = require_int(amount, "amount", minimum=0)
        if actor is not None:
            require_int(actor, "actor")
        async with self._db.write() as conn:
            row = await _fetch_money(conn, user_id)
            if row is None:
                raise NotFoundError(f"unknown user {user_id}")
            total, held, free_balance, free_held, _ = row
            paid, paid_held = total - free_balance, held - free_held
            if amount < paid_held:
                raise ValidationError(
                    f"user {user_id} has {paid_held} credits on hold; the balance cannot go"
                    " below that"
                )
            if amount != paid:
                await append_movement(
                    conn,
                    user_id,
                    amount - paid,
                    REASON_SET_BALANCE,
                    now=self._db.clock(),
                    actor=actor,
                )
        return amount

    # -- holds ------------------------------------------------------------------------------

    async def hold(self, user_id: int, amount: int, run_id: str) -> None:
        """Reserve ``amount`` credits for ``run_id`` (atomic check against the available
        balance; free credits first). Raises ``InsufficientBalanceError`` or
        ``DuplicateError``."""
        amount = require_int(amount, "amount", minimum=0)
        run_id = require_text(run_id, "run_id")
        async with self._db.write() as conn:
            await place_hold(
                conn,
                user_id,
                amount,
                run_id,
                now=self._db.clock(),
                free_daily_credits=self.free_daily_credits,
            )

    async def settle_hold(self, run_id: str) -> bool:
        """Turn the open hold into a debit. True only the first time."""
        return await self._resolve(run_id, ChargeState.SETTLED)

    async def release_hold(self, run_id: str) -> bool:
        """Drop the open hold without charging. True only the first time."""
        return await self._resolve(run_id, ChargeState.RELEASED)

    async def _resolve(self, run_id: str, outcome: ChargeState) -> bool:
        async with self._db.write() as conn:
            return await resolve_hold(
                conn,
                run_id,
                outcome,
                now=self._db.clock(),
                free_daily_credits=self.free_daily_credits,
            )

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
        problems: list[str] = []
        async with self._db.read() as conn:
            rows = await conn.execute_fetchall(
                """
                SELECT u.id, u.balance, u.held, u.free_balance, u.free_held,
                       COALESCE((SELECT SUM(amount) FROM ledger l WHERE l.user_id = u.id), 0),
                       COALESCE((SELECT SUM(amount) FROM holds h
                                 WHERE h.user_id = u.id AND h.state = 'open'), 0),
                       COALESCE((SELECT SUM(amount) FROM ledger l
                                 WHERE l.user_id = u.id AND l.pot = 'free'), 0),
                       COALESCE((SELECT SUM(free_amount) FROM holds h
                                 WHERE h.user_id = u.id AND h.state = 'open'), 0)
                FROM users u
                """
            )
            for uid, balance, held, fb, fh, ledger_sum, open_sum, free_sum, free_open in rows:
                if balance != ledger_sum:
                    problems.append(
                        f"user {uid}: cached balance {balance} != ledger sum {ledger_sum}"
                    )
                if held != open_sum:
                    problems.append(f"user {uid}: cached held {held} != open holds {open_sum}")
                if balance < 0 or held < 0 or held > balance:
                    problems.append(f"user {uid}: balance {balance}, held {held} out of range")
                if fb != free_sum:
                    problems.append(f"user {uid}: cached free {fb} != free ledger sum {free_sum}")
                if fh != free_open:
                    problems.append(f"user {uid}: cached free held {fh} != open holds {free_open}")
                if fh < 0 or fh > fb or fh > held or balance - fb < held - fh:
                    problems.append(f"user {uid}: free {fb}/{fh} held out of range")
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
            problems.extend(await _check_holds(conn))
            problems.extend(await _check_free_days(conn))
            problems.extend(await check_payments(conn))
        return problems


async def _check_holds(conn: aiosqlite.Connection) -> list[str]:
    """Each settled hold has its debits (one per pot used) summing to the hold, and no
    released or open hold has any."""
    problems: list[str] = []
    rows = await conn.execute_fetchall(
        """
        SELECT h.run_id, h.state, h.amount, h.free_amount,
               COALESCE((SELECT SUM(-amount) FROM ledger l
                         WHERE l.run_id = h.run_id AND l.reason = 'generation'), 0),
               COALESCE((SELECT SUM(-amount) FROM ledger l WHERE l.run_id = h.run_id
                         AND l.reason = 'generation' AND l.pot = 'free'), 0),
               (SELECT COUNT(*) FROM ledger l
                WHERE l.run_id = h.run_id AND l.reason = 'generation')
        FROM holds h
        """
    )
    for run_id, state, amount, free_part, debited, free_debited, count in rows:
        if free_part > amount:
            problems.append(f"run {run_id}: free part {free_part} of a hold of {amount}")
        if state == "settled":
            if debited != amount or free_debited != free_part or count > 2:
                problems.append(f"run {run_id}: settled hold without exactly one debit")
        elif count:
            problems.append(f"run {run_id}: {state} hold with a generation debit")
    return problems


async def check_payments(conn: aiosqlite.Connection) -> list[str]:
    """Each payment has exactly one purchase credit of its credits to its user; a refunded
    one has refund debits equal to what it took back, a paid one none; no purchase or
    refund row without a payment."""
    problems: list[str] = []
    rows = await conn.execute_fetchall(
        """
        SELECT p.charge_id, p.user_id, p.credits, p.state, p.credits_taken_back,
          (SELECT COUNT(*) FROM ledger l WHERE l.charge_id = p.charge_id
             AND l.reason = 'purchase' AND l.user_id = p.user_id
             AND l.amount = p.credits AND l.pot = 'paid'),
          (SELECT COUNT(*) FROM ledger l WHERE l.charge_id = p.charge_id
             AND l.reason = 'purchase'),
          COALESCE((SELECT SUM(-amount) FROM ledger l WHERE l.charge_id = p.charge_id
             AND l.reason = 'refund' AND l.user_id = p.user_id), 0)
        FROM payments p
        """
    )
    for charge, _uid, credits, state, taken, good, purchases, refunded in rows:
        expected = 1 if credits else 0
        if good != expected or purchases != expected:
            problems.append(f"payment {charge}: {purchases} purchase credits, not one")
        if state == "paid" and (refunded or taken):
            problems.append(f"payment {charge}: paid but {refunded} taken back")
        if state == "refunded" and refunded != taken:
            problems.append(f"payment {charge}: took back {refunded}, recorded {taken}")
    stray = await conn.execute_fetchall(
        "SELECT l.id FROM ledger l WHERE l.reason IN ('purchase', 'refund')"
        " AND (l.charge_id IS NULL"
        " OR NOT EXISTS (SELECT 1 FROM payments p WHERE p.charge_id = l.charge_id))"
    )
    problems.extend(f"ledger row {r[0]}: purchase/refund without a payment" for r in stray)
    return problems


async def _check_free_days(conn: aiosqlite.Connection) -> list[str]:
    """At most one free grant per user and UTC day, and free credits only move in the free
    pot's own reasons (grant, expiry, generation)."""
    problems: list[str] = []
    doubles = await conn.execute_fetchall(
        "SELECT user_id, CAST(created_at / 86400 AS INTEGER) AS day, COUNT(*) FROM ledger"
        " WHERE reason = 'free_grant' GROUP BY user_id, day HAVING COUNT(*) > 1"
    )
    problems.extend(f"user {r[0]}: {r[2]} free grants on day {r[1]}" for r in doubles)
    stray = await conn.execute_fetchall(
        "SELECT id, user_id, reason FROM ledger WHERE pot = 'free'"
        " AND reason NOT IN ('free_grant', 'free_expiry', 'generation')"
    )
    problems.extend(f"ledger row {r[0]}: free credits moved as {r[2]!r}" for r in stray)
    return problems


def _entry(r: aiosqlite.Row) -> LedgerEntry:
    return LedgerEntry(
        id=r["id"],
        user_id=r["user_id"],
        amount=r["amount"],
        reason=r["reason"],
        actor=r["actor"],
        run_id=r["run_id"],
        created_at=r["created_at"],
        pot=r["pot"],
        charge_id=r["charge_id"],
    )


def _hold(row: aiosqlite.Row) -> Hold:
    return Hold(
        run_id=row["run_id"],
        user_id=row["user_id"],
        amount=row["amount"],
        state=row["state"],
        created_at=row["created_at"],
        resolved_at=row["resolved_at"],
        free_amount=row["free_amount"],
        free_day=row["free_day"],
    )
