"""Small helpers shared by the generation handlers: who is asking, in which language, and
how to answer them with localized text.

All user-facing text goes through :class:`~handlers.i18n.Translator`; the helpers here take a
locale key and parameters, never ready-made text. Messages are sent as plain text
(``parse_mode=None`` overrides any HTML default) because they carry user prompts verbatim.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from telegram import Message, ReplyParameters, Update
from telegram import User as TgUser
from telegram.constants import ChatType
from telegram.ext import ContextTypes

from handlers.deps import Services, get_services

log = logging.getLogger(__name__)

Context = ContextTypes.DEFAULT_TYPE


@dataclass(frozen=True, slots=True)
class Caller:
    """The user behind an update, with the language their messages should be in."""

    user_id: int
    lang: str
    settings: Any  # storage UserSettings (width, height, steps, seed, negative_prompt, ...)


async def ensure_user(services: Services, tg_user: TgUser) -> Caller:
    """Load (or create with ``STARTING_BALANCE``) the user and resolve their language."""
    user, _created = await services.storage.users.get_or_create(
        tg_user.id,
        language_code=tg_user.language_code,
        starting_balance=services.config.starting_balance,
    )
    settings = getattr(user, "settings", None)
    chosen = getattr(settings, "language", None)
    lang = services.i18n.resolve_language(chosen, tg_user.language_code)
    return Caller(user_id=tg_user.id, lang=lang, settings=settings)


async def caller_of(update: Update, context: Context) -> Caller | None:
    tg_user = update.effective_user
    if tg_user is None:
        return None
    return await ensure_user(get_services(context), tg_user)


async def language_of(update: object, context: Context) -> str:
    """Best-effort language of an update's user; never raises (used by the error handler)."""
    services = get_services(context)
    tg_user = getattr(update, "effective_user", None)
    if tg_user is None:
        return services.i18n.resolve_language(None, None)
    try:
        user = await services.storage.users.get(tg_user.id)
    except Exception:  # storage trouble must not hide the original error
        user = None
    chosen = getattr(getattr(user, "settings", None), "language", None)
    return services.i18n.resolve_language(chosen, tg_user.language_code)


def reply_to(message_id: int | None) -> ReplyParameters | None:
    """Reply parameters that still send when the original message is gone."""
    if message_id is None:
        return None
    return ReplyParameters(message_id=message_id, allow_sending_without_reply=True)


def is_group(chat_type: str | None) -> bool:
    return chat_type in (ChatType.GROUP, ChatType.SUPERGROUP)


def command_args(text: str | None) -> str:
    """Everything after the command word (``/make@bot a b`` → ``"a b"``), newlines kept."""
    if not text:
        return ""
    parts = text.split(maxsplit=1)
    return parts[1].strip() if len(parts) > 1 else ""


async def reply(
    message: Message,
    services: Services,
    lang: str,
    key: str,
    /,
    reply_markup: Any = None,
    **params: object,
) -> Message:
    """Reply to ``message`` with the localized text of ``key``."""
    return await message.reply_text(
        services.i18n.t(lang, key, **params),
        reply_markup=reply_markup,
        parse_mode=None,
        reply_parameters=reply_to(message.message_id),
    )


async def answer_query(
    update: Update,
    services: Services,
    lang: str,
    key: str,
    /,
    show_alert: bool = False,
    **params: object,
) -> None:
    """Answer a callback query with localized text (always answer: it stops the spinner)."""
    query = update.callback_query
    if query is None:
        return
    try:
        await query.answer(services.i18n.t(lang, key, **params), show_alert=show_alert)
    except Exception:  # an expired query (older than ~15 min) cannot be answered; not fatal
        log.debug("could not answer callback query", exc_info=True)
