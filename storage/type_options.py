"""What admins said about generation types the bot does not know (``/type ANIMATE image``).

A type an admin adds a deployment for (``/deployment add ANIMATE <id>``) gets a command of its
own; by default it takes a prompt. ``input = 'image'`` marks it photo-taking. The list of such
types and their commands is built by :mod:`generation.custom_types` from the deployments and
these options.
"""

from __future__ import annotations

from storage.database import Database
from storage.errors import ValidationError
from storage.validation import require_text

INPUT_KINDS = ("text", "image")


class TypeOptionRepository:
    def __init__(self, db: Database) -> None:
        self._db = db
        self._cache: dict[str, str] | None = None

    async def set_input(self, type_: str, input_kind: str) -> None:
        """``input_kind`` ``'image'`` (the type takes a photo) or ``'text'`` (the default)."""
        name = require_text(type_, "type", max_length=64).upper()
        if input_kind not in INPUT_KINDS:
            raise ValidationError(f"input must be one of {', '.join(INPUT_KINDS)}")
        async with self._db.write() as conn:
            await conn.execute(
                "INSERT INTO type_options(type, input, updated_at) VALUES (?, ?, ?)"
                " ON CONFLICT(type) DO UPDATE SET input = excluded.input,"
                " updated_at = excluded.updated_at",
                (name, input_kind, self._db.clock()),
            )
        self._cache = None

    async def remove(self, type_: str) -> bool:
        name = require_text(type_, "type", max_length=64).upper()
        async with self._db.write() as conn:
            cur = await conn.execute("DELETE FROM type_options WHERE type = ?", (name,))
        self._cache = None
        return cur.rowcount == 1

    async def input_kinds(self) -> dict[str, str]:
        """type → input kind for every type with options (cached until the next change)."""
        if self._cache is None:
            async with self._db.read() as conn:
                rows = await conn.execute_fetchall("SELECT type, input FROM type_options")
            self._cache = {str(r[0]): str(r[1]) for r in rows}
        return dict(self._cache)

    async def input_kind(self, type_: str) -> str:
        return (await self.input_kinds()).get(type_.strip().upper(), "text")
