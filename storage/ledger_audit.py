"""The audit of the money tables behind ``LedgerRepository.check_consistency`` (and
``bot/doctor_checks.py``): cached sums against the ledger, holds against their debits and
runs, payments against their purchase and refund rows, free credits against their days."""

from __future__ import annotations

import aiosqlite


async def check_money(conn: aiosqlite.Connection) -> list[str]:
    """Problems found in the money tables; empty when all invariants hold."""
    problems: list[str] = []
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
            problems.append(f"user {uid}: cached balance {balance} != ledger sum {ledger_sum}")
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
