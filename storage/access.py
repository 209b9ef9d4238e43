"""Who may use the bot: ``/allow``, ``/ban``, ``/unban``, allowed groups, and ``ACCESS``.

A user row carries ``access`` (``default`` | ``allowed`` | ``banned``) and ``ban_notified``;
allowed group chats are rows of ``allowed_chats``. :meth:`AccessRepository.check` is the one
decision the Telegram side asks for, raising a coded error the handler turns into text:

* ``BannedError`` — banned (in every mode); ``first`` is True exactly once per ban, so the
  user gets one short refusal and then silence;
* ``AccessDeniedError`` — ``ACCESS=allowlist`` and the user is neither allowed, nor writing in
  an allowed group, nor (``is_member``) a member of one;
* ``PaidAccessOnlyError`` — ``ACCESS=paid`` and the user has no paid credits and no purchase.

Admins always pass; ``/allow``-ed users also pass ``ACCESS=paid``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import aiosqlite

from generation.billing import AccessMode
from generation.errors import AccessDeniedError, BannedError, PaidAccessOnlyError
from storage.database import Database
from storage.lru import Lru
from storage.users import UserRepository
from storage.validation import require_int

ACCESS_DEFAULT = "default"
ACCESS_ALLOWED = "allowed"
ACCESS_BANNED = "banned"

MemberCheck = Callable[[int], Awaitable[bool]]  # group chat id -> is the user a member?


@dataclass(frozen=True, slots=True)
class AccessState:
    user_id: int
    access: str = ACCESS_DEFAULT
    ban_notified: bool = False

    @property
    def banned(self) -> bool:
        return self.access == ACCESS_BANNED

    @property
    def allowed(self) -> bool:
        return self.access == ACCESS_ALLOWED


class AccessRepository:
    def __init__(self, db: Database, users: UserRepository | None = None) -> None:
        self._db = db
        self._users = users if users is not None else UserRepository(db)
        # ``users.access`` by id, for the open-mode decision (the ban) without a read per
        # update. :meth:`_set` is the only writer of the column (single-writer process:
        # storage/run_cache.py); entries change only under the database lock.
        self._access: Lru[int, str] = Lru(8192)

    async def get(self, user_id: int) -> AccessState:
        async with self._db.read() as conn:
            rows = await conn.execute_fetchall(
                "SELECT access, ban_notified FROM users WHERE id = ?", (user_id,)
            )
        if not rows:
            return AccessState(user_id)
        return AccessState(user_id, rows[0][0], bool(rows[0][1]))

    async def _set(self, user_id: int, access: str) -> AccessState:
        user_id = require_int(user_id, "user_id")
        now = self._db.clock()
        async with self._db.write() as conn:
            self._access.discard(user_id)  # dropped before the write, put back after it
            await conn.execute(  # /allow and /ban work for ids the bot has not seen yet
                "INSERT OR IGNORE INTO users(id, settings, created_at, last_seen_at)"
                " VALUES (?, '{}', ?, ?)",
                (user_id, now, now),
            )
            await conn.execute(
                "UPDATE users SET access = ?, ban_notified = 0 WHERE id = ?", (access, user_id)
            )
        self._access.put(user_id, access)  # committed; still before anyone else's turn
        return AccessState(user_id, access)

    async def allow(self, user_id: int) -> AccessState:
        return await self._set(user_id, ACCESS_ALLOWED)

    async def ban(self, user_id: int) -> AccessState:
        return await self._set(user_id, ACCESS_BANNED)

    async def unban(self, user_id: int) -> AccessState:
        """Back to the default state (an allowed user who was banned must be allowed again)."""
        return await self._set(user_id, ACCESS_DEFAULT)

    async def list_users(self, access: str) -> list[int]:
        async with self._db.read() as conn:
            rows = await conn.execute_fetchall(
                "SELECT id FROM users WHERE access = ? ORDER BY id", (access,)
            )
        return [int(r[0]) for r in rows]

    # -- allowed groups -----------------------------------------------------------------------

    async def allow_chat(self, chat_id: int, *, actor: int | None = None) -> bool:
        """Allow a group chat; False if it was already."""
        chat_id = require_int(chat_id, "chat_id")
        async with self._db.write() as conn:
            cur = await conn.execute(
                "INSERT OR IGNORE INTO allowed_chats(chat_id, added_by, created_at)"
                " VALUES (?, ?, ?)",
                (chat_id, actor, self._db.clock()),
            )
            return cur.rowcount == 1

    async def disallow_chat(self, chat_id: int) -> bool:
        async with self._db.write() as conn:
            cur = await conn.execute("DELETE FROM allowed_chats WHERE chat_id = ?", (chat_id,))
            return cur.rowcount == 1

    async def allowed_chats(self) -> list[int]:
        async with self._db.read() as conn:
            rows = await conn.execute_fetchall("SELECT chat_id FROM allowed_chats ORDER BY chat_id")
        return [int(r[0]) for r in rows]

    # -- the decision -------------------------------------------------------------------------

    async def check(
        self,
        user_id: int,
        *,
        mode: AccessMode | str = AccessMode.OPEN,
        chat_id: int | None = None,
        is_admin: bool = False,
        is_member: MemberCheck | None = None,
    ) -> None:
        """Pass silently or raise (see the module docstring). A banned user's first refusal
        is recorded here, so only one call ever sees ``first=True`` per ban."""
        mode = AccessMode(mode)
        if is_admin:
            return
        if mode is AccessMode.OPEN and self._known_unbanned(user_id):
            return  # open mode: only a ban refuses, and this user's state is known
        async with self._db.exclusive() as session:
            # The whole row: the caller lookup that follows the gate is then served from the
            # user cache (one users read per update, storage/users.py).
            rows = await session.fetchall("SELECT * FROM users WHERE id = ?", (user_id,))
            if rows:
                self._users.remember(rows[0])
                self._access.put(user_id, rows[0]["access"])
        access = rows[0]["access"] if rows else ACCESS_DEFAULT
        if access == ACCESS_BANNED:
            raise BannedError(f"user {user_id} is banned", first=await self._first_refusal(user_id))
        if mode is AccessMode.OPEN or access == ACCESS_ALLOWED:
            return
        if mode is AccessMode.ALLOWLIST:
            if await self._in_allowed_chat(chat_id, is_member):
                return
            raise AccessDeniedError(f"user {user_id} is not on the allowlist")
        paid = int(rows[0]["balance"]) - int(rows[0]["free_balance"]) if rows else 0
        if paid > 0 or await self._has_purchase(user_id):
            return
        raise PaidAccessOnlyError(f"user {user_id} has no paid credits")

    def _known_unbanned(self, user_id: int) -> bool:
        """Cached and not banned, with the user's row cached too (the caller lookup after the
        gate reads it): the gate then needs no read at all."""
        access = self._access.get(user_id)
        return access is not None and access != ACCESS_BANNED and self._users.is_cached(user_id)

    async def _first_refusal(self, user_id: int) -> bool:
        rows = await self._db.write_one(
            "UPDATE users SET ban_notified = 1 WHERE id = ? AND access = 'banned'"
            " AND ban_notified = 0 RETURNING id",
            (user_id,),
        )
        return bool(rows)

    async def _in_allowed_chat(self, chat_id: int | None, is_member: MemberCheck | None) -> bool:
        chats = await self.allowed_chats()
        if chat_id is not None and chat_id in chats:
            return True
        if is_member is None:
            return False
        for group in chats:
            if await is_member(group):
                return True
        return False

    async def _has_purchase(self, user_id: int) -> bool:
        async with self._db.read() as conn:
            return await _has_purchase(conn, user_id)


async def _has_purchase(conn: aiosqlite.Connection, user_id: int) -> bool:
    rows = await conn.execute_fetchall(
        "SELECT 1 FROM payments WHERE user_id = ? AND state = 'paid' LIMIT 1", (user_id,)
    )
    return bool(rows)
