"""Anonymous senders (issue 11, point 9): anonymous group admins and "send as channel" users
all reach the bot as one placeholder user (``GroupAnonymousBot``, ``Channel_Bot``), which
would give them one shared balance, settings and Cancel rights. The bot cannot tell them
apart, so it refuses them: a message with a ``sender_chat`` (other than a channel post the
chat's linked channel forwards automatically) is stopped before any handler, admin commands
included, and a command gets a localized explanation. Channel posts are ignored.
"""

from __future__ import annotations

import logging

from telegram import Update
from telegram.ext import Application, ApplicationHandlerStop, TypeHandler

from handlers.context import BotContext, reply_to

log = logging.getLogger(__name__)

GUARD_GROUP = -110  # before every other group: the access gate (-100); the update counter is -1000


def is_anonymous(update: Update) -> bool:
    """True for a message sent on behalf of a chat, and for channel posts."""
    if update.channel_post is not None or update.edited_channel_post is not None:
        return True
    message = update.message or update.edited_message
    if message is None or message.sender_chat is None:
        return False
    return not message.is_automatic_forward


async def refuse_anonymous(update: Update, context: BotContext) -> None:
    if not is_anonymous(update):
        return
    message = update.message
    text = (message.text or message.caption or "") if message is not None else ""
    if message is not None and text.startswith("/"):
        i18n = context.services.i18n
        lang = i18n.resolve_language(None, None)
        log.info("refused a command from an anonymous sender in chat %s", message.chat_id)
        await message.reply_text(
            i18n.t(lang, "hardening.anonymous_refused"),
            parse_mode=None,
            reply_parameters=reply_to(message.message_id),
        )
    raise ApplicationHandlerStop


def register_anonymous_guard(application: Application) -> None:  # type: ignore[type-arg]
    application.add_handler(TypeHandler(Update, refuse_anonymous), group=GUARD_GROUP)
