"""Credits each generation type costs. Unset types cost 0, so a new bot works for everyone."""

from __future__ import annotations

from storage.database import Database
from storage.validation import require_int, require_text


class PriceRepository:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def get(self, type_: str) -> int:
        async with self._db.read() as conn:
            rows = await conn.execute_fetchall(
                "SELECT credits FROM prices WHERE type = ?", (str(type_).strip().upper(),)
            )
        return int(rows[0][0]) if rows else 0

    async def set(self, type_: str, credits: int) -> None:
        type_ = require_text(type_, "type", max_length=64).upper()
        credits = require_int(credits, "credits", minimum=0)
        async with self._db.write() as conn:
            await conn.execute(
                "INSERT INTO prices(type, credits, updated_at) VALUES (?, ?, ?)"
                " ON CONFLICT(type) DO UPDATE SET credits = excluded.credits,"
                " updated_at = excluded.updated_at",
                (type_, credits, self._db.clock()),
            )

    async def all(self) -> dict[str, int]:
        async with self._db.read() as conn:
            rows = await conn.execute_fetchall("SELECT type, credits FROM prices ORDER BY type")
        return {r[0]: int(r[1]) for r in rows}
