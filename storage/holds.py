"""Holds: credits reserved for a run when it is accepted, settled (debited, free credits
first) when its result is delivered or released when it fails, exactly once, with the run's
``charge_state`` in the same transaction (caller owns it)."""

from __future__ import annotations

import sqlite3

from generation.billing import utc_day
from generation.errors import InsufficientBalanceError
from generation.models import ChargeState
from storage.errors import DuplicateError
from storage.money import (
    POT_FREE,
    REASON_FREE_EXPIRY,
    REASON_GENERATION,
    append_movement,
    fetch_money,
    roll_free_credits,
)


def place_hold(
    conn: sqlite3.Connection,
    user_id: int,
    amount: int,
    run_id: str,
    *,
    now: float,
    free_daily_credits: int = 0,
) -> None:
    """Check the available balance and record a hold, free credits first (caller owns the
    transaction)."""
    if conn.execute("SELECT 1 FROM holds WHERE run_id = ?", (run_id,)).fetchone():
        raise DuplicateError(f"a hold for run {run_id!r} already exists")
    balances = roll_free_credits(conn, user_id, now=now, daily=free_daily_credits)
    available = 0 if balances is None else balances.available
    if available < amount:
        raise InsufficientBalanceError(
            f"user {user_id} has {available} credits available, {amount} required",
            required=amount,
            available=available,
        )
    free_part = 0 if balances is None else min(amount, balances.free_available)
    conn.execute(
        "INSERT INTO holds(run_id, user_id, amount, state, created_at, free_amount, free_day)"
        " VALUES (?, ?, ?, 'open', ?, ?, ?)",
        (run_id, user_id, amount, now, free_part, utc_day(now)),
    )
    if amount:
        conn.execute(
            "UPDATE users SET held = held + ?, free_held = free_held + ? WHERE id = ?",
            (amount, free_part, user_id),
        )


def resolve_hold(
    conn: sqlite3.Connection,
    run_id: str,
    outcome: ChargeState,
    *,
    now: float,
    free_daily_credits: int = 0,
) -> bool:
    """Settle or release the open hold of ``run_id`` (caller owns the transaction). True only
    the first time."""
    rows = conn.execute(
        "SELECT user_id, amount, free_amount, free_day FROM holds"
        " WHERE run_id = ? AND state = 'open'",
        (run_id,),
    ).fetchall()
    if not rows:
        return False
    user_id, amount, free_part = int(rows[0][0]), int(rows[0][1]), int(rows[0][2])
    hold_day = rows[0][3]
    conn.execute(
        "UPDATE holds SET state = ?, resolved_at = ? WHERE run_id = ? AND state = 'open'",
        (outcome.value, now, run_id),
    )
    conn.execute(
        "UPDATE users SET held = held - ?, free_held = free_held - ? WHERE id = ?",
        (amount, free_part, user_id),
    )
    if outcome is ChargeState.SETTLED:
        if free_part:
            append_movement(
                conn, user_id, -free_part, REASON_GENERATION, now=now, run_id=run_id, pot=POT_FREE
            )
        if amount - free_part:
            append_movement(
                conn, user_id, free_part - amount, REASON_GENERATION, now=now, run_id=run_id
            )
    elif free_part and hold_day != utc_day(now):
        # The released free credits belong to an earlier day: they must not come back.
        row = fetch_money(conn, user_id)
        if row is not None and row[4] == utc_day(now):  # today's roll already happened
            append_movement(
                conn, user_id, -free_part, REASON_FREE_EXPIRY, now=now, run_id=run_id, pot=POT_FREE
            )
        else:  # the roll expires them together with the rest of that day's credits
            roll_free_credits(conn, user_id, now=now, daily=free_daily_credits)
    conn.execute(
        "UPDATE runs SET charge_state = ?, updated_at = ? WHERE id = ?",
        (outcome.value, now, run_id),
    )
    return True
