"""Key/value settings of the bot itself (e.g. the generated webhook secret)."""

from __future__ import annotations

import secrets
from typing import Any

from storage.database import Database
from storage.errors import ValidationError
from storage.validation import dump_json, load_json, require_int, require_text


class SettingsRepository:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def get(self, key: str) -> str | None:
        async with self._db.read() as conn:
            rows = await conn.execute_fetchall("SELECT value FROM settings WHERE key = ?", (key,))
        return rows[0][0] if rows else None

    async def set(self, key: str, value: str) -> None:
        key = require_text(key, "key", max_length=128)
        if not isinstance(value, str):
            raise ValidationError(f"setting {key!r} must be a string; use set_json for others")
        async with self._db.write() as conn:
            await conn.execute(
                "INSERT INTO settings(key, value, updated_at) VALUES (?, ?, ?)"
                " ON CONFLICT(key) DO UPDATE SET value = excluded.value,"
                " updated_at = excluded.updated_at",
                (key, value, self._db.clock()),
            )

    async def delete(self, key: str) -> bool:
        async with self._db.write() as conn:
            cur = await conn.execute("DELETE FROM settings WHERE key = ?", (key,))
            return cur.rowcount == 1

    async def get_json(self, key: str, default: Any = None) -> Any:
        """The decoded value; ``default`` when unset; ValidationError when malformed."""
        text = await self.get(key)
        return default if text is None else load_json(text, f"setting {key!r}")

    async def set_json(self, key: str, value: Any) -> None:
        await self.set(key, dump_json(value, f"setting {key!r}"))

    async def get_or_create_secret(self, key: str, nbytes: int = 32) -> str:
        """A random URL-safe secret, generated on first use and stored for good."""
        key = require_text(key, "key", max_length=128)
        nbytes = require_int(nbytes, "nbytes", minimum=16)
        async with self._db.write() as conn:
            rows = await conn.execute_fetchall("SELECT value FROM settings WHERE key = ?", (key,))
            if rows:
                return rows[0][0]
            secret = secrets.token_urlsafe(nbytes)
            await conn.execute(
                "INSERT INTO settings(key, value, updated_at) VALUES (?, ?, ?)",
                (key, secret, self._db.clock()),
            )
        return secret

    async def count(self) -> int:
        async with self._db.read() as conn:
            rows = await conn.execute_fetchall("SELECT COUNT(*) FROM settings")
        return int(rows[0][0])
