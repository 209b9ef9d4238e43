"""Finding users: ``/id`` for everyone, ``/user`` for admins, and :func:`target_of`, the one
way admin commands name a user (numeric id, ``@username`` the bot has seen, or a reply to
that user's message). Unknown users are refused with a clear message; nobody is created.

Every update's sender is remembered (:meth:`storage.directory.UserDirectory.remember`) by a
handler in an early group that never ends an update.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from telegram import Update
from telegram.ext import Application, CommandHandler, TypeHandler

from handlers.common import addressed_to_us, command_args
from handlers.context import BotContext
from handlers.deps import services_of
from handlers.user_info import id_text, profile_text
from handlers.user_target import Target, TargetError, resolve_target

log = logging.getLogger(__name__)

REMEMBER_GROUP = -10  # before every other handler; it never ends an update


async def remember_sender(update: Update, context: BotContext) -> None:
    """Note the username of whoever sent this update (and of the replied-to author)."""
    directory = services_of(context.application).storage.directory
    seen = [update.effective_user]
    message = update.effective_message
    if message is not None and message.reply_to_message is not None:
        seen.append(message.reply_to_message.from_user)
    for user in seen:
        if user is None or user.is_bot:
            continue
        try:
            await directory.remember(user.id, user.username)
        except Exception:  # bookkeeping never breaks an update
            log.warning("could not remember user %s", user.id, exc_info=True)


async def target_of(
    update: Update, context: BotContext, args: Sequence[str], *, other_args: int
) -> Target | None:
    """The user an admin command names; on a refusal the admin has been told why."""
    message = update.effective_message
    if message is None:
        return None
    replied = message.reply_to_message
    author = replied.from_user if replied is not None else None
    try:
        return await resolve_target(
            context.services.storage.directory,
            args,
            other_args=other_args,
            reply_user_id=author.id if author is not None else None,
            reply_is_bot=bool(author is not None and author.is_bot),
        )
    except TargetError as exc:
        await context.reply(exc.key, **exc.params)
        return None


async def id_command(update: Update, context: BotContext) -> None:
    message = update.effective_message
    caller = await context.caller()
    if message is None or caller is None or not addressed_to_us(message.text, context):
        return
    replied = message.reply_to_message
    author = replied.from_user if replied is not None else None
    other = (author.id, author.full_name) if author is not None else None
    chat_id = message.chat_id if message.chat.type != "private" else None
    t = context.services.i18n.t
    text = id_text(t, caller.lang, own_id=caller.user_id, other=other, chat_id=chat_id)
    await message.reply_text(text, parse_mode=None)


async def user_command(update: Update, context: BotContext) -> None:
    message = update.effective_message
    caller = await context.caller()
    services = context.services
    if message is None or caller is None or not addressed_to_us(message.text, context):
        return
    if caller.user_id not in services.config.admin_ids:
        await context.reply("admin.refused")
        return
    args = command_args(message.text).split()
    if not args and message.reply_to_message is None:
        await context.reply("users.usage")
        return
    target = await target_of(update, context, args, other_args=0)
    if target is None:
        return
    profile = await services.storage.directory.profile(target.user.id)
    if profile is not None:
        text = profile_text(services.i18n.t, caller.lang, profile)
        await message.reply_text(text, parse_mode=None)


def register_lookup(application: Application) -> None:  # type: ignore[type-arg]
    application.add_handler(TypeHandler(Update, remember_sender), group=REMEMBER_GROUP)
    application.add_handler(CommandHandler("id", id_command))
    application.add_handler(CommandHandler("user", user_command))
