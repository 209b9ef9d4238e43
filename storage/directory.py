"""Finding users: the usernames the bot has seen, lookups that never create anyone, and the
facts ``/user`` shows an admin.

Telegram gives a bot no way to turn ``@name`` into an id, so the bot remembers the username of
every user it sees (:meth:`UserDirectory.remember`, cheap: a write only when a name changes).
A username belongs to one account at a time: when Telegram hands a name to someone else, the
newer sighting wins. Lookups are case-insensitive (Telegram usernames are).

:meth:`UserDirectory.resolve` accepts what an admin types — ``12345``, ``@name`` or ``name`` —
and returns the :class:`~storage.users.User`, or raises :class:`UserLookupError` whose
``reason`` says why (never seen, seen but never used the bot, malformed). It never creates a
user: an admin command aimed at someone unknown is refused instead of crediting a ghost.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass

import aiosqlite

from generation.models import RunRecord
from storage.database import Database
from storage.errors import NotFoundError
from storage.money import Hold, hold_from_row
from storage.runs import RunRepository
from storage.users import User, _user

# Telegram usernames: 5–32 of [A-Za-z0-9_], starting with a letter. Shorter names exist for
# some collectible usernames, so 4 is accepted too.
USERNAME_RE = re.compile(r"[A-Za-z][A-Za-z0-9_]{3,31}")
_ID_RE = re.compile(r"-?\d{1,20}")
_CACHE_SIZE = 10_000
MAX_TELEGRAM_ID = 2**53  # Telegram ids fit in 52 bits


class UserLookupError(NotFoundError):
    """``reason``: ``invalid`` (neither an id nor a username), ``unknown_id`` (no such user),
    ``unknown_username`` (a name the bot has never seen), ``no_account`` (the name belongs to
    someone who never used the bot)."""

    REASONS = ("invalid", "unknown_id", "unknown_username", "no_account")

    def __init__(self, query: str, reason: str, *, user_id: int | None = None) -> None:
        if reason not in self.REASONS:
            raise ValueError(f"unknown reason {reason!r}")
        super().__init__(f"user lookup {reason}")
        self.query = query[:64]
        self.reason = reason
        self.user_id = user_id


@dataclass(frozen=True, slots=True)
class UserProfile:
    """What ``/user`` shows: the account, its username, money and latest runs."""

    user: User
    username: str | None
    balance: int  # total credits (sum of the ledger)
    held: int  # on open holds
    open_holds: tuple[Hold, ...]
    recent_runs: tuple[RunRecord, ...]

    @property
    def available(self) -> int:
        return self.balance - self.held

    @property
    def language(self) -> str | None:
        """The language the user chose, else the one Telegram reported when first seen."""
        return self.user.settings.language or self.user.language


def normalize_username(value: str | None) -> str | None:
    """``@Name`` / ``name`` → ``name`` as typed (case kept); ``None`` when not a username."""
    if not isinstance(value, str):
        return None
    text = value.strip().removeprefix("@")
    return text if USERNAME_RE.fullmatch(text) else None


class UserDirectory:
    def __init__(self, db: Database, runs: RunRepository | None = None) -> None:
        self._db = db
        self._runs = runs or RunRepository(db)
        # user id → lower-case username last written (None = known to have none).
        self._seen: OrderedDict[int, str | None] = OrderedDict()

    async def remember(self, user_id: int, username: str | None) -> bool:
        """Record that ``user_id`` currently has ``username`` (``None``: has none).

        Returns whether anything was written; a repeat sighting costs no database call."""
        if isinstance(user_id, bool) or not isinstance(user_id, int) or user_id <= 0:
            return False
        name = normalize_username(username)
        key = name.lower() if name else None
        if user_id in self._seen and self._seen[user_id] == key:
            self._seen.move_to_end(user_id)
            return False
        now = self._db.clock()
        async with self._db.write() as conn:
            if name is None:
                await conn.execute("DELETE FROM usernames WHERE user_id = ?", (user_id,))
            else:
                await conn.execute(
                    "DELETE FROM usernames WHERE user_id = ? AND username != ?", (user_id, name)
                )
                await conn.execute(
                    "INSERT INTO usernames(username, user_id, seen_at) VALUES (?, ?, ?)"
                    " ON CONFLICT(username) DO UPDATE SET user_id = excluded.user_id,"
                    " username = excluded.username, seen_at = excluded.seen_at",
                    (name, user_id, now),
                )
        self._seen[user_id] = key
        self._seen.move_to_end(user_id)
        while len(self._seen) > _CACHE_SIZE:
            self._seen.popitem(last=False)
        return True

    def forget_cache(self) -> None:
        """Drop the in-memory sightings (tests; another process wrote the table)."""
        self._seen.clear()

    async def id_for_username(self, username: str) -> int | None:
        name = normalize_username(username)
        if name is None:
            return None
        async with self._db.read() as conn:
            rows = await conn.execute_fetchall(
                "SELECT user_id FROM usernames WHERE username = ?", (name,)
            )
        return int(rows[0][0]) if rows else None

    async def username_of(self, user_id: int) -> str | None:
        async with self._db.read() as conn:
            rows = await conn.execute_fetchall(
                "SELECT username FROM usernames WHERE user_id = ? ORDER BY seen_at DESC LIMIT 1",
                (user_id,),
            )
        return str(rows[0][0]) if rows else None

    async def resolve(self, query: str | int) -> User:
        """The user an admin means by ``query`` (id, ``@name`` or ``name``); never creates one."""
        text = str(query).strip()
        if _ID_RE.fullmatch(text):
            user_id = int(text)
            if not 0 < user_id < MAX_TELEGRAM_ID:
                raise UserLookupError(text, "invalid")
            user = await self._get(user_id)
            if user is None:
                raise UserLookupError(text, "unknown_id", user_id=user_id)
            return user
        if normalize_username(text) is None:
            raise UserLookupError(text, "invalid")
        found = await self.id_for_username(text)
        if found is None:
            raise UserLookupError(text, "unknown_username")
        user = await self._get(found)
        if user is None:
            raise UserLookupError(text, "no_account", user_id=found)
        return user

    async def _get(self, user_id: int) -> User | None:  # admin reads: straight from the table
        async with self._db.read() as conn:
            return await _select(conn, user_id)

    async def profile(self, user_id: int, *, recent: int = 5) -> UserProfile | None:
        """Balance, holds, latest ``recent`` runs, username and language; None if unknown."""
        async with self._db.read() as conn:
            user = await _select(conn, user_id)
            if user is None:
                return None
            money = await conn.execute_fetchall(
                "SELECT balance, held FROM users WHERE id = ?", (user_id,)
            )
            holds = await conn.execute_fetchall(
                "SELECT * FROM holds WHERE user_id = ? AND state = 'open'"
                " ORDER BY created_at, rowid",
                (user_id,),
            )
            names = await conn.execute_fetchall(
                "SELECT username FROM usernames WHERE user_id = ? ORDER BY seen_at DESC LIMIT 1",
                (user_id,),
            )
        runs = await self._runs.list_recent_runs(user_id, limit=recent)
        return UserProfile(
            user=user,
            username=str(names[0][0]) if names else None,
            balance=int(money[0][0]),
            held=int(money[0][1]),
            open_holds=tuple(hold_from_row(r) for r in holds),
            recent_runs=tuple(runs),
        )


async def _select(conn: aiosqlite.Connection, user_id: int) -> User | None:
    rows = await conn.execute_fetchall("SELECT * FROM users WHERE id = ?", (user_id,))
    return _user(rows[0]) if rows else None
