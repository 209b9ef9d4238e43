"""Users: Telegram id, first-seen language, generation settings, and times."""

from __future__ import annotations

import logging
import sqlite3
from typing import Any

import pydantic
from pydantic import BaseModel, ConfigDict, Field

from generation.request import MAX_PROMPT_LENGTH, MAX_SEED, MAX_SIDE, MIN_SIDE
from storage.database import Database
from storage.errors import NotFoundError, ValidationError
from storage.money import REASON_STARTING_BALANCE, append_movement
from storage.validation import dump_json, load_json, require_int

log = logging.getLogger(__name__)


class UserSettings(BaseModel):
    """A user's generation preferences (``/settings``). Every field has a default."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    width: int = Field(1024, ge=MIN_SIDE, le=MAX_SIDE)
    height: int = Field(1024, ge=MIN_SIDE, le=MAX_SIDE)
    steps: int = Field(30, ge=1, le=150)
    seed: int = Field(-1, ge=-1, le=MAX_SEED)
    negative_prompt: str | None = Field(None, max_length=MAX_PROMPT_LENGTH)
    checkpoint: str | None = Field(None, max_length=256)
    png_as_file: bool = False
    language: str | None = Field(None, max_length=16)  # the user's choice; overrides Telegram's


class User(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: int
    language: str | None = None  # Telegram language_code as first seen
    settings: UserSettings = Field(default_factory=UserSettings)
    created_at: float
    last_seen_at: float


def _settings_from_json(text: str, user_id: int) -> UserSettings:
    """Stored settings; a damaged value falls back to defaults instead of locking the user out."""
    try:
        data = load_json(text, "settings")
        return UserSettings.model_validate(data)
    except (ValidationError, pydantic.ValidationError) as exc:
        log.warning("user %s has unreadable settings, using defaults: %s", user_id, exc)
        return UserSettings()


def _user(row: sqlite3.Row) -> User:
    return User(
        id=row["id"],
        language=row["language"],
        settings=_settings_from_json(row["settings"], row["id"]),
        created_at=row["created_at"],
        last_seen_at=row["last_seen_at"],
    )


class UserRepository:
    """Users. Keeps the database's ``user_cache`` true: it is the only writer of the fields a
    ``User`` has (storage/run_cache.py explains why a process-local cache is correct here);
    entries are dropped before a write and put back under the database lock after it."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._cache = db.user_cache

    async def get(self, user_id: int) -> User | None:
        user = self._cache.get(user_id)
        if user is not None:
            return user
        async with self._db.exclusive() as session:
            user = self._cache.get(user_id)  # put by a writer while we waited for the lock
            if user is not None:
                return user
            rows = await session.fetchall("SELECT * FROM users WHERE id = ?", (user_id,))
            return self._cache.put(user_id, _user(rows[0])) if rows else None

    def is_cached(self, user_id: int) -> bool:
        return user_id in self._cache

    def remember(self, row: sqlite3.Row) -> User:
        """Cache the ``User`` of a full ``users`` row the caller just read under the database
        lock (the access gate reads the row anyway: the caller lookup then costs no read)."""
        user = self._cache.get(row["id"])
        return user if user is not None else self._cache.put(row["id"], _user(row))

    async def get_or_create(
        self, user_id: int, *, language_code: str | None = None, starting_balance: int = 0
    ) -> tuple[User, bool]:
        """The user, and whether it was created now. A new user is credited
        ``starting_balance`` in the same transaction — once ever, since users are never deleted.
        """
        user_id = require_int(user_id, "user_id")
        starting_balance = require_int(starting_balance, "starting_balance", minimum=0)
        if language_code is not None and not isinstance(language_code, str):
            raise ValidationError("language_code must be a string or None")
        existing = await self.get(user_id)  # fast path: no write for known users
        if existing is not None:
            return existing, False
        language = (language_code or "").strip()[:16] or None
        now = self._db.clock()

        def create(conn: sqlite3.Connection) -> tuple[sqlite3.Row, bool]:
            cur = conn.execute(
                "INSERT OR IGNORE INTO users(id, language, settings, created_at, last_seen_at)"
                " VALUES (?, ?, '{}', ?, ?)",
                (user_id, language, now, now),
            )
            created = cur.rowcount == 1
            if created and starting_balance > 0:
                append_movement(conn, user_id, starting_balance, REASON_STARTING_BALANCE, now=now)
            return conn.execute("SELECT * FROM users WHERE id = ?", (user_id,)).fetchone(), created

        async with self._db.exclusive() as session:
            self._cache.discard(user_id)
            row, created = await session.transaction(create)
            return self._cache.put(user_id, _user(row)), created

    async def touch(self, user_id: int) -> bool:
        """Record that the user was seen now. False for an unknown user."""
        async with self._db.exclusive() as session:
            self._cache.discard(user_id)
            rows = await session.fetchall(
                "UPDATE users SET last_seen_at = ? WHERE id = ? RETURNING *",
                (self._db.clock(), user_id),
            )
            if rows:
                self._cache.put(user_id, _user(rows[0]))
            return bool(rows)

    async def update_settings(self, user_id: int, **changes: Any) -> User:
        """Change some settings (validated together); ``None`` resets an optional one."""

        def update(conn: sqlite3.Connection) -> User:
            row = conn.execute("SELECT * FROM users WHERE id = ?", (user_id,)).fetchone()
            if row is None:
                raise NotFoundError(f"unknown user {user_id}")
            user = _user(row)
            unknown = set(changes) - set(UserSettings.model_fields)
            if unknown:
                raise ValidationError(f"unknown settings: {', '.join(sorted(unknown))}")
            merged = user.settings.model_dump() | changes
            try:
                settings = UserSettings.model_validate(merged)
            except pydantic.ValidationError as exc:
                raise ValidationError(f"invalid settings: {_first_error(exc)}") from exc
            stored = settings.model_dump(exclude_defaults=True)
            conn.execute(
                "UPDATE users SET settings = ? WHERE id = ?",
                (dump_json(stored, "settings"), user_id),
            )
            return user.model_copy(update={"settings": settings})

        async with self._db.exclusive() as session:
            self._cache.discard(user_id)
            return self._cache.put(user_id, await session.transaction(update))

    async def count(self) -> int:
        async with self._db.read() as conn:
            rows = await conn.execute_fetchall("SELECT COUNT(*) FROM users")
        return int(rows[0][0])


def _first_error(exc: pydantic.ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err.get("loc", ()))
    return f"{where}: {err.get('msg', 'invalid')}" if where else str(err.get("msg", "invalid"))
