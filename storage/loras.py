"""The LoRA catalogue: names, trigger words, default weight, balance gate, family."""

from __future__ import annotations

import re
import sqlite3
from typing import Any

import aiosqlite

from generation.models import LoraEntry
from storage.database import Database
from storage.errors import DuplicateError, NotFoundError, ValidationError
from storage.validation import (
    dump_json,
    load_json,
    require_bool,
    require_float,
    require_int,
    require_text,
)

# The name goes into ``<lora:NAME:WEIGHT>``: no whitespace, colons or angle brackets.
_NAME_RE = re.compile(r"^[^\s:<>]+$")
MAX_WEIGHT = 10.0


def _norm_name(name: Any) -> str:
    name = require_text(name, "name", max_length=128)
    if not _NAME_RE.match(name):
        raise ValidationError(f"LoRA name {name!r} must not contain spaces, ':' or '<>'")
    return name


def _norm_triggers(triggers: Any) -> tuple[str, ...]:
    if isinstance(triggers, str) or not isinstance(triggers, list | tuple):
        raise ValidationError("triggers must be a list of words")
    out: list[str] = []
    seen: set[str] = set()
    for trigger in triggers:
        if not isinstance(trigger, str) or not trigger.strip():
            raise ValidationError("a LoRA trigger must not be blank")
        word = " ".join(trigger.split())  # trimmed, inner whitespace collapsed
        if len(word) > 128:
            raise ValidationError("a LoRA trigger is longer than 128 characters")
        if word.casefold() not in seen:  # duplicates dropped, first occurrence kept
            seen.add(word.casefold())
            out.append(word)
    if not out:
        raise ValidationError("a LoRA needs at least one trigger")
    return tuple(out)


def _entry(row: aiosqlite.Row) -> LoraEntry:
    return LoraEntry(
        name=row["name"],
        triggers=tuple(load_json(row["triggers"], "triggers")),
        default_weight=row["default_weight"],
        min_balance=row["min_balance"],
        family=row["family"],
        enabled=bool(row["enabled"]),
    )


class LoraRepository:
    """Implements :class:`generation.ports.LoraStore`. Names are unique case-insensitively.

    The catalogue is read on every generation and changed only through this repository's
    write methods (admin commands), so :meth:`list_loras` is cached in memory and every write
    method drops the cache."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._cache: tuple[LoraEntry, ...] | None = None

    async def add(
        self,
        name: str,
        triggers: list[str],
        *,
        default_weight: float = 1.0,
        min_balance: int = 0,
        family: str | None = None,
        enabled: bool = True,
    ) -> LoraEntry:
        name = _norm_name(name)
        words = _norm_triggers(triggers)
        weight = require_float(default_weight, "default_weight")
        if abs(weight) > MAX_WEIGHT:
            raise ValidationError(f"default_weight must be within ±{MAX_WEIGHT:g}")
        min_balance = require_int(min_balance, "min_balance", minimum=0)
        family = None if family is None else require_text(family, "family", max_length=32).upper()
        enabled = require_bool(enabled, "enabled")
        async with self._db.write() as conn:
            try:
                await conn.execute(
                    "INSERT INTO loras(name, triggers, default_weight, min_balance, family,"
                    " enabled, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        name,
                        dump_json(list(words), "triggers"),
                        weight,
                        min_balance,
                        family,
                        int(enabled),
                        self._db.clock(),
                    ),
                )
            except sqlite3.IntegrityError:
                raise DuplicateError(f"LoRA {name!r} already exists") from None
        self._cache = None
        return LoraEntry(
            name=name,
            triggers=words,
            default_weight=weight,
            min_balance=min_balance,
            family=family,
            enabled=enabled,
        )

    async def remove(self, name: str) -> bool:
        async with self._db.write() as conn:
            cur = await conn.execute("DELETE FROM loras WHERE name = ?", (name,))
        self._cache = None
        return cur.rowcount == 1

    async def get(self, name: str) -> LoraEntry | None:
        async with self._db.read() as conn:
            rows = await conn.execute_fetchall("SELECT * FROM loras WHERE name = ?", (name,))
        return _entry(rows[0]) if rows else None

    async def set_enabled(self, name: str, enabled: bool) -> LoraEntry:
        enabled = require_bool(enabled, "enabled")
        async with self._db.write() as conn:
            cur = await conn.execute(
                "UPDATE loras SET enabled = ? WHERE name = ?", (int(enabled), name)
            )
            if cur.rowcount != 1:
                raise NotFoundError(f"unknown LoRA {name!r}")
            rows = await conn.execute_fetchall("SELECT * FROM loras WHERE name = ?", (name,))
        self._cache = None
        return _entry(rows[0])

    async def list_loras(self) -> list[LoraEntry]:
        """The whole catalogue, disabled entries included, by name."""
        if self._cache is None:
            async with self._db.read() as conn:
                rows = await conn.execute_fetchall("SELECT * FROM loras ORDER BY name")
            self._cache = tuple(_entry(r) for r in rows)
        return list(self._cache)

    async def count(self) -> int:
        async with self._db.read() as conn:
            rows = await conn.execute_fetchall("SELECT COUNT(*) FROM loras")
        return int(rows[0][0])
