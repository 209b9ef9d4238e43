"""Telegram Stars payments: each purchase once, keyed by ``telegram_payment_charge_id``.

:meth:`PaymentRepository.record_payment` inserts the payment and its ledger credit (reason
``purchase``, with the charge id) in one transaction; the same charge delivered again (a
redelivered update, a restart) adds nothing. Refunds go in two steps around Telegram's
``refundStarPayment``: :meth:`PaymentRepository.plan_refund` says whether the credits can be
taken back (the user may have spent them: ``CreditsSpentError`` unless ``force``), then
:meth:`PaymentRepository.apply_refund` marks the payment refunded and takes back what it can
— never more than the user's paid credits not on hold — in one transaction.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

import aiosqlite

from generation.billing import utc_day
from generation.errors import AlreadyRefundedError, CreditsSpentError, PaymentNotFoundError
from storage.database import Database
from storage.errors import ValidationError
from storage.ledger import LedgerRepository
from storage.ledger_audit import check_payments
from storage.money import (
    REASON_PURCHASE,
    REASON_REFUND,
    Balances,
    append_movement,
    fetch_money,
    virtual_balances,
)
from storage.validation import require_int, require_text

STATE_PAID = "paid"
STATE_REFUNDED = "refunded"


@dataclass(frozen=True, slots=True)
class Payment:
    charge_id: str
    user_id: int
    credits: int
    stars: int
    payload: str
    state: str  # paid | refunded
    created_at: float
    provider_charge_id: str | None = None
    credits_taken_back: int = 0
    refunded_at: float | None = None
    refunded_by: int | None = None


@dataclass(frozen=True, slots=True)
class PaymentResult:
    """The payment, whether this call recorded it (False: seen before), and the balances."""

    payment: Payment
    created: bool
    balances: Balances


@dataclass(frozen=True, slots=True)
class RefundPlan:
    """What a refund would take back: ``take`` of ``payment.credits`` (``available`` paid
    credits not on hold)."""

    payment: Payment
    available: int
    take: int

    @property
    def shortfall(self) -> int:
        return self.payment.credits - self.take


@dataclass(frozen=True, slots=True)
class RefundResult:
    payment: Payment
    taken_back: int
    shortfall: int  # credits the user had already spent (0 for a full take-back)
    balances: Balances


class PaymentRepository:
    def __init__(self, db: Database, ledger: LedgerRepository | None = None) -> None:
        self._db = db
        self._ledger = ledger if ledger is not None else LedgerRepository(db)

    async def get(self, charge_id: str) -> Payment | None:
        return await self._db.call(lambda conn: _select(conn, charge_id))

    async def list_recent(self, user_id: int | None = None, limit: int = 20) -> list[Payment]:
        """The latest payments (of one user when ``user_id`` is given), newest first."""
        limit = require_int(limit, "limit", minimum=1)
        where, params = ("WHERE user_id = ?", (user_id,)) if user_id is not None else ("", ())
        async with self._db.read() as conn:
            rows = await conn.execute_fetchall(
                f"SELECT * FROM payments {where} ORDER BY created_at DESC, rowid DESC LIMIT ?",
                (*params, limit),
            )
        return [_payment(r) for r in rows]

    async def has_purchase(self, user_id: int) -> bool:
        """A payment not refunded (``ACCESS=paid`` lets such users in)."""
        async with self._db.read() as conn:
            rows = await conn.execute_fetchall(
                "SELECT 1 FROM payments WHERE user_id = ? AND state = 'paid' LIMIT 1", (user_id,)
            )
        return bool(rows)

    async def record_payment(
        self,
        *,
        charge_id: str,
        user_id: int,
        credits: int,
        stars: int,
        payload: str,
        provider_charge_id: str | None = None,
    ) -> PaymentResult:
        """Credit a successful payment exactly once. A charge id seen before returns the
        stored payment with ``created=False`` and writes nothing."""
        charge_id = require_text(charge_id, "charge_id", max_length=256)
        user_id = require_int(user_id, "user_id")
        credits = require_int(credits, "credits", minimum=0)
        stars = require_int(stars, "stars", minimum=1)
        if not isinstance(payload, str):
            raise ValidationError("payload must be a string")
        now = self._db.clock()
        daily = self._ledger.free_daily_credits

        def record(conn: sqlite3.Connection) -> PaymentResult:
            existing = _select(conn, charge_id)
            if existing is not None:
                return PaymentResult(existing, False, _balances(conn, existing.user_id, now, daily))
            conn.execute(  # a payer the bot never stored (e.g. a wiped database)
                "INSERT OR IGNORE INTO users(id, settings, created_at, last_seen_at)"
                " VALUES (?, '{}', ?, ?)",
                (user_id, now, now),
            )
            conn.execute(
                "INSERT INTO payments(charge_id, provider_charge_id, user_id, credits, stars,"
                " payload, state, created_at) VALUES (?, ?, ?, ?, ?, ?, 'paid', ?)",
                (charge_id, provider_charge_id, user_id, credits, stars, payload, now),
            )
            if credits:
                append_movement(
                    conn, user_id, credits, REASON_PURCHASE, now=now, charge_id=charge_id
                )
            balances = _balances(conn, user_id, now, daily)
            payment = _select(conn, charge_id)
            assert payment is not None
            return PaymentResult(payment, True, balances)

        return await self._db.transaction(record)

    async def plan_refund(self, charge_id: str, *, force: bool = False) -> RefundPlan:
        """Check a refund before asking Telegram for it. Raises ``PaymentNotFoundError``,
        ``AlreadyRefundedError``, or ``CreditsSpentError`` (with ``available``) when the user
        no longer has all the credits and ``force`` is not set."""

        def read(conn: sqlite3.Connection) -> tuple[Payment, int]:
            payment = _refundable(conn, charge_id)
            return payment, _paid_available(conn, payment.user_id)

        payment, available = await self._db.call(read)
        plan = RefundPlan(payment, available, min(payment.credits, available))
        if plan.shortfall and not force:
            raise CreditsSpentError(
                f"user {payment.user_id} has {available} of {payment.credits} credits left",
                credits=payment.credits,
                available=available,
                user_id=payment.user_id,
            )
        return plan

    async def apply_refund(self, charge_id: str, *, actor: int | None = None) -> RefundResult:
        """Telegram refunded the Stars (or says it already had): mark the payment refunded and
        take back its credits, at most the paid credits not on hold — one transaction.
        ``AlreadyRefundedError`` if it is marked refunded already (nothing written)."""
        now, daily = self._db.clock(), self._ledger.free_daily_credits

        def refund(conn: sqlite3.Connection) -> RefundResult:
            payment = _refundable(conn, charge_id)
            take = min(payment.credits, _paid_available(conn, payment.user_id))
            conn.execute(
                "UPDATE payments SET state = 'refunded', credits_taken_back = ?,"
                " refunded_at = ?, refunded_by = ? WHERE charge_id = ? AND state = 'paid'",
                (take, now, actor, charge_id),
            )
            if take:
                append_movement(
                    conn,
                    payment.user_id,
                    -take,
                    REASON_REFUND,
                    now=now,
                    actor=actor,
                    charge_id=charge_id,
                )
            balances = _balances(conn, payment.user_id, now, daily)
            updated = _select(conn, charge_id)
            assert updated is not None
            return RefundResult(updated, take, payment.credits - take, balances)

        return await self._db.transaction(refund)

    async def check_consistency(self) -> list[str]:
        """The payment checks of :meth:`LedgerRepository.check_consistency`."""
        async with self._db.read() as conn:
            return await check_payments(conn)


def _refundable(conn: sqlite3.Connection, charge_id: str) -> Payment:
    payment = _select(conn, charge_id)
    if payment is None:
        raise PaymentNotFoundError(f"no payment {charge_id!r}")
    if payment.state == STATE_REFUNDED:
        raise AlreadyRefundedError(f"payment {charge_id!r} was refunded already")
    return payment


def _balances(conn: sqlite3.Connection, user_id: int, now: float, daily: int) -> Balances:
    return virtual_balances(fetch_money(conn, user_id), utc_day(now), daily)


def _paid_available(conn: sqlite3.Connection, user_id: int) -> int:
    row = fetch_money(conn, user_id)
    if row is None:
        return 0
    balance, held, free_balance, free_held, _ = row
    return max(0, (balance - free_balance) - (held - free_held))


def _select(conn: sqlite3.Connection, charge_id: str) -> Payment | None:
    row = conn.execute("SELECT * FROM payments WHERE charge_id = ?", (charge_id,)).fetchone()
    return _payment(row) if row is not None else None


def _payment(r: aiosqlite.Row) -> Payment:
    return Payment(
        charge_id=r["charge_id"],
        user_id=r["user_id"],
        credits=r["credits"],
        stars=r["stars"],
        payload=r["payload"],
        state=r["state"],
        created_at=r["created_at"],
        provider_charge_id=r["provider_charge_id"],
        credits_taken_back=r["credits_taken_back"],
        refunded_at=r["refunded_at"],
        refunded_by=r["refunded_by"],
    )
