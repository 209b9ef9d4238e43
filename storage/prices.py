"""Credits each generation type costs. Unset types cost 0, so a new bot works for everyone.

The table is read on every generation and written only by admins through :meth:`set`, so it
is cached in memory after the first read; :meth:`set` writes through it under the database
lock, so no caller can forget to. (The bot is the database's only writer: storage/lock.py.)"""

from __future__ import annotations

from storage.database import Database
from storage.validation import require_int, require_text


class PriceRepository:
    def __init__(self, db: Database) -> None:
        self._db = db
        self._cache: dict[str, int] | None = None

    async def get(self, type_: str) -> int:
        prices = await self.all()
        return prices.get(str(type_).strip().upper(), 0)

    async def set(self, type_: str, credits: int) -> None:
        type_ = require_text(type_, "type", max_length=64).upper()
        credits = require_int(credits, "credits", minimum=0)
        async with self._db.exclusive() as session:
            cache, self._cache = self._cache, None  # dropped before the write (cancellation)
            await session.fetchall(
                "INSERT INTO prices(type, credits, updated_at) VALUES (?, ?, ?)"
                " ON CONFLICT(type) DO UPDATE SET credits = excluded.credits,"
                " updated_at = excluded.updated_at",
                (type_, credits, self._db.clock()),
            )
            if cache is not None:
                self._cache = {**cache, type_: credits}

    async def all(self) -> dict[str, int]:
        cache = self._cache
        if cache is None:
            async with self._db.exclusive() as session:  # filled under the lock
                rows = await session.fetchall("SELECT type, credits FROM prices ORDER BY type")
                cache = {r[0]: int(r[1]) for r in rows}
                self._cache = cache
        return dict(cache)
