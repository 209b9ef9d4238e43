"""The money rows: reasons and pots of ledger movements, the cached sums on ``users``, the
daily roll of free credits. These helpers run inside the caller's transaction, so another
repository (users, runs, payments) moves money in the transaction of the state it changes
(storage/ledger.py describes the invariants)."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

import aiosqlite

from generation.billing import utc_day

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


MONEY_COLUMNS = "balance, held, free_balance, free_held, free_day"


def fetch_balances(conn: sqlite3.Connection, user_id: int) -> tuple[int, int] | None:
    rows = conn.execute("SELECT balance, held FROM users WHERE id = ?", (user_id,)).fetchall()
    return None if not rows else (int(rows[0][0]), int(rows[0][1]))


def fetch_money(
    conn: sqlite3.Connection, user_id: int
) -> tuple[int, int, int, int, int | None] | None:
    rows = conn.execute(f"SELECT {MONEY_COLUMNS} FROM users WHERE id = ?", (user_id,)).fetchall()
    if not rows:
        return None
    r = rows[0]
    return int(r[0]), int(r[1]), int(r[2]), int(r[3]), None if r[4] is None else int(r[4])


def virtual_balances(
    row: tuple[int, int, int, int, int | None] | None, today: int, daily: int
) -> Balances:
    """The balances as they are after today's roll (without writing it)."""
    if row is None:
        return Balances(free=daily)  # an unknown user would get today's credits on first use
    balance, held, free_balance, free_held, free_day = row
    paid = balance - free_balance
    if free_day != today and (free_day is not None or daily > 0):
        free_balance = free_held + daily  # older unheld free credits expire, today's arrive
    return Balances(paid=paid, free=free_balance, held=held, free_held=free_held)


def append_movement(
    conn: sqlite3.Connection,
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
    conn.execute(
        "INSERT INTO ledger(user_id, amount, reason, actor, run_id, created_at, pot, charge_id)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (user_id, amount, reason, actor, run_id, now, pot, charge_id),
    )
    free = amount if pot == POT_FREE else 0
    conn.execute(
        "UPDATE users SET balance = balance + ?, free_balance = free_balance + ? WHERE id = ?",
        (amount, free, user_id),
    )


def roll_free_credits(
    conn: sqlite3.Connection, user_id: int, *, now: float, daily: int
) -> Balances | None:
    """Expire older free credits and grant today's, once per user and UTC day (caller owns the
    transaction). Returns the user's balances afterwards; None for an unknown user."""
    row = fetch_money(conn, user_id)
    if row is None:
        return None
    today = utc_day(now)
    balance, held, free_balance, free_held, free_day = row
    if free_day == today or (free_day is None and daily <= 0):
        return virtual_balances(row, today, daily)
    expire = free_balance - free_held
    if expire > 0:
        append_movement(conn, user_id, -expire, REASON_FREE_EXPIRY, now=now, pot=POT_FREE)
    if daily > 0:
        append_movement(conn, user_id, daily, REASON_FREE_GRANT, now=now, pot=POT_FREE)
    conn.execute("UPDATE users SET free_day = ? WHERE id = ?", (today, user_id))
    free_balance = free_held + max(daily, 0)
    balance = balance - expire + max(daily, 0)
    return Balances(paid=balance - free_balance, free=free_balance, held=held, free_held=free_held)


def entry_from_row(r: aiosqlite.Row) -> LedgerEntry:
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


def hold_from_row(row: aiosqlite.Row) -> Hold:
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
