"""Runs per UTC day: the spending guards and the usage figures of ``/stats``.

The counters are the ``runs`` rows themselves (index ``runs_by_created``), so they cannot
drift from what happened. A run counts from its creation, except one that ended failed or
cancelled without ever reaching the backend (no backend run id): it cost no GPU time.

:func:`check_run_limits` runs inside the transaction that inserts the run
(:meth:`storage.runs.RunRepository.create_run`), so two concurrent requests cannot both take
the last run of the day.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

from generation.billing import day_start, next_reset, week_start
from generation.errors import BotDailyLimitError, DailyLimitError
from storage.database import Database
from storage.validation import require_int

# A run "counts" unless it ended without reaching the backend.
_COUNTS = "NOT (status IN ('failed', 'cancelled') AND backend_run_id IS NULL)"


@dataclass(frozen=True, slots=True)
class RunLimits:
    """``MAX_RUNS_PER_USER_PER_DAY`` and ``MAX_RUNS_PER_DAY``; None = unlimited."""

    per_user: int | None = None
    per_day: int | None = None

    @property
    def active(self) -> bool:
        return self.per_user is not None or self.per_day is not None


def count_runs_today(conn: sqlite3.Connection, now: float, user_id: int | None = None) -> int:
    since = day_start(now)
    if user_id is None:
        rows = conn.execute(
            f"SELECT COUNT(*) FROM runs WHERE created_at >= ? AND {_COUNTS}", (since,)
        ).fetchall()
    else:
        rows = conn.execute(
            f"SELECT COUNT(*) FROM runs WHERE user_id = ? AND created_at >= ? AND {_COUNTS}",
            (user_id, since),
        ).fetchall()
    return int(rows[0][0])


def check_run_limits(
    conn: sqlite3.Connection, limits: RunLimits, user_id: int, *, now: float
) -> None:
    """Raise ``DailyLimitError`` / ``BotDailyLimitError`` (with ``resets_at``, the next UTC
    midnight) when one more run today would pass a limit (caller owns the transaction)."""
    resets = {"resets_at": next_reset(now), "remaining": next_reset(now) - now}
    if limits.per_user is not None:
        used = count_runs_today(conn, now, user_id)
        if used >= limits.per_user:
            raise DailyLimitError(
                f"user {user_id} has had {used} runs today", limit=limits.per_user, **resets
            )
    if limits.per_day is not None:
        used = count_runs_today(conn, now)
        if used >= limits.per_day:
            raise BotDailyLimitError(
                f"{used} runs today in the whole bot", limit=limits.per_day, **resets
            )


@dataclass(frozen=True, slots=True)
class UsageStats:
    """What ``/stats`` adds: today's runs per type, credits spent today (free and paid), the
    Stars received (net of refunds) today / this ISO week / ever, and today's top users as
    ``(user_id, runs, credits spent)``."""

    runs_today: dict[str, int]
    credits_spent_today: int
    free_credits_spent_today: int
    stars_today: int
    stars_week: int
    stars_total: int
    refunded_stars_total: int
    top_users: list[tuple[int, int, int]]


class UsageRepository:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def runs_today(self, user_id: int | None = None) -> int:
        """Runs that count against today's limits (the whole bot's when ``user_id`` is None)."""
        now = self._db.clock()
        return await self._db.call(lambda conn: count_runs_today(conn, now, user_id))

    async def stats(self, *, top: int = 5) -> UsageStats:
        top = require_int(top, "top", minimum=1)
        now = self._db.clock()
        today, week = day_start(now), week_start(now)
        async with self._db.read() as conn:
            per_type = await conn.execute_fetchall(
                f"SELECT type, COUNT(*) FROM runs WHERE created_at >= ? AND {_COUNTS}"
                " GROUP BY type ORDER BY COUNT(*) DESC, type",
                (today,),
            )
            spent = await conn.execute_fetchall(
                "SELECT COALESCE(SUM(-amount), 0),"
                " COALESCE(SUM(CASE WHEN pot = 'free' THEN -amount ELSE 0 END), 0)"
                " FROM ledger WHERE reason = 'generation' AND created_at >= ?",
                (today,),
            )
            stars = await conn.execute_fetchall(
                "SELECT"
                " COALESCE(SUM(CASE WHEN created_at >= ? AND state = 'paid' THEN stars END), 0),"
                " COALESCE(SUM(CASE WHEN created_at >= ? AND state = 'paid' THEN stars END), 0),"
                " COALESCE(SUM(CASE WHEN state = 'paid' THEN stars END), 0),"
                " COALESCE(SUM(CASE WHEN state = 'refunded' THEN stars END), 0)"
                " FROM payments",
                (today, week),
            )
            users = await conn.execute_fetchall(
                f"SELECT r.user_id, COUNT(*),"
                f" COALESCE((SELECT SUM(-l.amount) FROM ledger l WHERE l.user_id = r.user_id"
                f"  AND l.reason = 'generation' AND l.created_at >= ?), 0) AS spent"
                f" FROM runs r WHERE r.created_at >= ? AND {_COUNTS}"
                f" GROUP BY r.user_id ORDER BY COUNT(*) DESC, spent DESC, r.user_id LIMIT ?",
                (today, today, top),
            )
        return UsageStats(
            runs_today={str(r[0]): int(r[1]) for r in per_type},
            credits_spent_today=int(spent[0][0]),
            free_credits_spent_today=int(spent[0][1]),
            stars_today=int(stars[0][0]),
            stars_week=int(stars[0][1]),
            stars_total=int(stars[0][2]),
            refunded_stars_total=int(stars[0][3]),
            top_users=[(int(r[0]), int(r[1]), int(r[2])) for r in users],
        )
