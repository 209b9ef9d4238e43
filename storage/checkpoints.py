"""The checkpoint catalogue admins configure (``/checkpoint add <name> [family]``).

It feeds the checkpoint menu of ``/settings``. The family (FLUX, SDXL, PONYXL, SD1.5, SD3, …)
decides which LoRAs apply and whether a FLUX-only type may use it; when the admin gives none
it is guessed from the name (:func:`generation.loras.checkpoint_family`) and may stay unknown.
Read on every menu, written only by admins: cached in memory, dropped by every write.
"""

from __future__ import annotations

import re
import sqlite3
from dataclasses import dataclass
from typing import Any

from generation.loras import checkpoint_family
from storage.database import Database
from storage.errors import DuplicateError, ValidationError
from storage.validation import require_text

# The name is sent as ``input_checkpoint`` and travels in a button's callback data.
MAX_NAME_LENGTH = 48
_NAME_RE = re.compile(r"^[^\s<>]+$")
_FAMILY_RE = re.compile(r"^[A-Z0-9][A-Z0-9._-]{0,15}$")


@dataclass(frozen=True, slots=True)
class Checkpoint:
    name: str
    family: str | None = None


def _norm_name(name: Any) -> str:
    name = require_text(name, "name", max_length=MAX_NAME_LENGTH)
    if not _NAME_RE.match(name):
        raise ValidationError(f"checkpoint name {name!r} must not contain spaces or '<>'")
    return name


def _norm_family(family: Any, name: str) -> str | None:
    if family is None or (isinstance(family, str) and not family.strip()):
        return checkpoint_family(name)
    family = require_text(family, "family", max_length=16).upper()
    if not _FAMILY_RE.match(family):
        raise ValidationError(f"family {family!r} must be a short word such as FLUX or SDXL")
    return family


class CheckpointRepository:
    """Checkpoints by name (unique case-insensitively), in the order they were added."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._cache: tuple[Checkpoint, ...] | None = None

    async def add(self, name: str, family: str | None = None) -> Checkpoint:
        """Add one; :class:`DuplicateError` when the name exists (any case)."""
        name = _norm_name(name)
        fam = _norm_family(family, name)
        async with self._db.write() as conn:
            try:
                await conn.execute(
                    "INSERT INTO checkpoints(name, family, created_at) VALUES (?, ?, ?)",
                    (name, fam, self._db.clock()),
                )
            except sqlite3.IntegrityError:
                raise DuplicateError(f"checkpoint {name!r} already exists") from None
        self._cache = None
        return Checkpoint(name, fam)

    async def remove(self, name: str) -> bool:
        """True when it existed (the name matches case-insensitively)."""
        name = require_text(name, "name", max_length=MAX_NAME_LENGTH)
        async with self._db.write() as conn:
            cur = await conn.execute("DELETE FROM checkpoints WHERE name = ?", (name,))
        self._cache = None
        return cur.rowcount == 1

    async def list_checkpoints(self) -> list[Checkpoint]:
        if self._cache is None:
            async with self._db.read() as conn:
                rows = await conn.execute_fetchall(
                    "SELECT name, family FROM checkpoints ORDER BY created_at, rowid"
                )
            self._cache = tuple(Checkpoint(r[0], r[1]) for r in rows)
        return list(self._cache)

    async def get(self, name: str) -> Checkpoint | None:
        wanted = str(name).strip().casefold()
        return next((c for c in await self.list_checkpoints() if c.name.casefold() == wanted), None)
