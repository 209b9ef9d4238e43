"""Which user an admin command means: a numeric id, ``@username`` the bot has seen, or the
author of the message the command replies to. Nobody is created on the way: an unknown id or
name is refused with a localized reason (``users.*`` keys). No Telegram objects here; the
handler passes the replied-to author's id.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from storage.directory import UserDirectory, UserLookupError
from storage.users import User

_LOOKS_LIKE_TARGET = re.compile(r"@\w+|\d{5,20}")

REASON_KEYS = {
    "invalid": "users.invalid",
    "unknown_id": "users.unknown_id",
    "unknown_username": "users.unknown_username",
    "no_account": "users.no_account",
}


class TargetError(Exception):
    """A refusal: ``key`` is the locale key, ``params`` its placeholders."""

    def __init__(self, key: str, **params: Any) -> None:
        super().__init__(key)
        self.key = key
        self.params = params


@dataclass(frozen=True, slots=True)
class Target:
    user: User
    rest: list[str] = field(default_factory=list)  # the command's other arguments
    via_reply: bool = False


async def resolve_target(
    directory: UserDirectory,
    args: Sequence[str],
    *,
    other_args: int,
    reply_user_id: int | None = None,
    reply_is_bot: bool = False,
) -> Target:
    """The target user and the remaining arguments.

    ``other_args`` is how many arguments the command takes besides the user (``/grant`` 1,
    ``/user`` 0). Replying to someone's message with exactly that many arguments targets
    its author; otherwise the first argument names the user. Raises :class:`TargetError`.
    """
    args = list(args)
    if reply_user_id is not None and (
        len(args) == other_args or (args and not _LOOKS_LIKE_TARGET.fullmatch(args[0]))
    ):
        if reply_is_bot:
            raise TargetError("users.is_bot")
        user = await _lookup(directory, str(reply_user_id))
        return Target(user, args, via_reply=True)
    if not args:
        raise TargetError("users.missing")
    user = await _lookup(directory, args[0])
    return Target(user, args[1:])


async def _lookup(directory: UserDirectory, query: str) -> User:
    try:
        return await directory.resolve(query)
    except UserLookupError as exc:
        raise TargetError(REASON_KEYS[exc.reason], query=exc.query) from exc
