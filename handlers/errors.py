"""Errors on the Telegram side: ``GenerationError`` codes → localized text, and the
application's error handler (log with a short reference id, tell the user, never go silent).
"""

from __future__ import annotations

import logging
import secrets
from typing import Any

from telegram import Update
from telegram.error import BadRequest, Forbidden, NetworkError

from generation.errors import (
    BotDailyLimitError,
    ErrorCode,
    GenerationError,
    InsufficientBalanceError,
    InvalidInputError,
    LimitReachedError,
)
from handlers.context import BotContext, reply_to
from handlers.deps import Services
from handlers.i18n import Translator

log = logging.getLogger(__name__)

# InvalidInputError.field → a more precise message than the generic one.
_FIELD_KEYS = {
    "prompt": "gen.need_prompt",
    "image": "gen.need_image",
    "mask": "gen.need_mask",
    "inpaint_target": "gen.need_target",
}


def error_key(code: str | ErrorCode) -> str:
    """Locale key of an error code; unknown codes map to the generic backend error."""
    try:
        return f"error.{ErrorCode(str(code)).value}"
    except ValueError:
        return f"error.{ErrorCode.BACKEND_ERROR.value}"


def reason_text(i18n: Translator, lang: str, code: str | None) -> str:
    """A short human reason for a stored ``error_code`` (progress message, failure notes)."""
    return i18n.t(lang, error_key(code or ErrorCode.RUN_FAILED))


def error_text(i18n: Translator, lang: str, exc: GenerationError) -> str:
    """The message a user sees for a ``GenerationError`` raised while handling their request."""
    if isinstance(exc, InsufficientBalanceError):
        return i18n.t(lang, "gen.insufficient_balance", price=exc.required, balance=exc.available)
    if isinstance(exc, InvalidInputError) and exc.field in _FIELD_KEYS:
        return i18n.t(lang, _FIELD_KEYS[exc.field])
    if isinstance(exc, LimitReachedError):  # the spending guards: say when it resets
        minutes = max(1, int(exc.remaining + 59) // 60)
        key = "access.limit_bot" if isinstance(exc, BotDailyLimitError) else "access.limit_user"
        return i18n.t(lang, key, limit=exc.limit, hours=minutes // 60, minutes=minutes % 60)
    return i18n.t(lang, error_key(exc.code))


def _describe(update: object) -> Any:
    if isinstance(update, Update):
        return update.to_dict()
    return repr(update)


async def on_error(update: object, context: BotContext) -> None:
    """PTB error handler: log with a reference id and tell the user something went wrong."""
    error = context.error
    services: Services | None = None
    try:
        services = context.services
    except KeyError:  # before post_init put the services in
        pass
    ref = secrets.token_hex(4)
    if isinstance(error, GenerationError):
        log.warning("generation error ref=%s code=%s: %s", ref, error.code, error.message)
    elif update is None and isinstance(error, NetworkError) and not isinstance(error, BadRequest):
        # getUpdates failing while Telegram is unreachable: PTB retries; one line is enough.
        log.warning("telegram unreachable ref=%s: %s", ref, error)
        return
    else:
        log.error("unhandled error ref=%s update=%s", ref, _describe(update), exc_info=error)
    if services is None or not isinstance(update, Update) or isinstance(error, Forbidden):
        return
    try:
        lang = await context.language()
        if isinstance(error, GenerationError):
            text = error_text(services.i18n, lang, error)
        else:
            text = services.i18n.t(lang, "common.something_went_wrong", ref=ref)
        if update.callback_query is not None:
            try:
                await update.callback_query.answer()
            except Exception:
                log.debug("could not answer callback query ref=%s", ref, exc_info=True)
        chat = update.effective_chat
        if chat is None:
            return
        message = update.effective_message
        await context.bot.send_message(
            chat.id,
            text,
            parse_mode=None,
            reply_parameters=reply_to(message.message_id if message else None),
            message_thread_id=message.message_thread_id
            if message is not None and message.is_topic_message
            else None,
        )
    except Exception:
        log.exception("could not tell the user about error ref=%s", ref)
