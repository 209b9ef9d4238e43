"""The frame of the admin commands (``handlers/admin.py``): only ``ADMIN_IDS`` get through,
arguments are parsed strictly, and a mistake is answered with the command's usage text."""

from __future__ import annotations

import logging
import re
import shlex
import uuid
from collections.abc import Awaitable, Callable, Sequence

from telegram import Update

from generation.types import GENERATION_TYPES
from handlers.context import BotContext
from handlers.deps import Services

log = logging.getLogger(__name__)

TYPE_RE = re.compile(r"[A-Z0-9_]{1,32}")
MAX_AMOUNT = 10**12

Handler = Callable[[Update, BotContext], Awaitable[None]]


class UsageError(Exception):
    """Bad arguments: reply with the usage text of ``key``."""

    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def known_types() -> str:
    return ", ".join(GENERATION_TYPES)


def parse_int(text: str, usage: str, *, minimum: int, maximum: int = MAX_AMOUNT) -> int:
    try:
        value = int(text)
    except ValueError:
        raise UsageError(usage) from None
    if not minimum <= value <= maximum:
        raise UsageError(usage)
    return value


def parse_type(text: str, usage: str) -> str:
    type_ = text.upper()
    if not TYPE_RE.fullmatch(type_):
        raise UsageError(usage)
    return type_


def parse_uuid(text: str, usage: str) -> str:
    try:
        return str(uuid.UUID(text))
    except ValueError:
        raise UsageError(usage) from None


class Reply:
    """Localized replies for one update (plain text: user values need no escaping)."""

    def __init__(self, update: Update, services: Services, lang: str) -> None:
        self.update, self.services, self.lang = update, services, lang

    def t(self, key: str, **params: object) -> str:
        return self.services.i18n.t(self.lang, key, **params)

    async def __call__(self, key: str, **params: object) -> None:
        await self.text(self.t(key, **params))

    async def text(self, text: str) -> None:
        message = self.update.effective_message
        if message is not None:
            await message.reply_text(text, parse_mode=None)


def admin_only(func: Callable[[Reply, Services, Sequence[str], int], Awaitable[None]]) -> Handler:
    """Refuse non-admins; turn :class:`UsageError` into the usage reply."""

    async def wrapper(update: Update, context: BotContext) -> None:
        tg_user = update.effective_user
        if tg_user is None or update.effective_message is None:
            return
        services = context.services
        caller = await context.caller()
        assert caller is not None  # effective_user checked above
        lang = caller.lang
        reply = Reply(update, services, lang)
        if tg_user.id not in services.config.admin_ids:
            log.info("admin command refused for user %s", tg_user.id)
            await reply("admin.refused")
            return
        try:
            await func(reply, services, list(context.args or ()), tg_user.id)
        except UsageError as exc:
            await reply(exc.key, types=known_types())

    wrapper.__name__ = func.__name__
    wrapper.__doc__ = func.__doc__
    return wrapper


def parse_float(text: str, usage: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise UsageError(usage) from None
    if not -10.0 <= value <= 10.0:
        raise UsageError(usage)
    return value


def quoted_args(update: Update, args: Sequence[str], usage: str) -> Sequence[str]:
    """Arguments with shell-like quotes, so multi-word triggers fit in one argument:
    ``/lora add detail "fine detail,extra detail" 0.8``."""
    text = update.effective_message.text if update.effective_message else None
    if not text:
        return args
    try:
        return shlex.split(text)[1:]
    except ValueError:  # unbalanced quotes
        raise UsageError(usage) from None
