"""Finding users: ``/id`` for everyone, ``/user`` for admins, and :func:`target_of`, the one
way admin commands name a user (numeric id, ``@username`` the bot has seen, or a reply to
that user's message). Unknown users are refused with a clear message; nobody is created.

Every update's sender is remembered (:meth:`storage.directory.UserDirectory.remember`) by a
handler in an early group that never stops the update.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from telegram import Message, Update
from telegram.ext import Application, CommandHandler, TypeHandler

from handlers.common import Context, caller_of, command_args, reply
from handlers.deps import get_services
from handlers.generate import addressed_to_us
from handlers.user_info import id_text, profile_text
from handlers.user_target import Target, TargetError, resolve_target

log = logging.getLogger(__name__)

REMEMBER_GROUP = -10  # before every other handler; it never ends an update


async def remember_sender(update: Update, context: Context) -> None:
    """Note the username of whoever sent this update (and of the replied-to author)."""
    services = context.application.bot_data.get("services")
    if services is None:
        return
    directory = services.storage.directory
    seen = [update.effective_user]
    message = update.effective_message
    if message is not None and message.reply_to_message is not None:
        seen.append(message.reply_to_message.from_user)
    for user in seen:
        if user is None or user.is_bot:
            continue
        try:
            await directory.remember(user.id, user.username)
        except Exception:  # never let bookkeeping break an update
            log.warning("could not remember user %s", user.id, exc_info=True)


def _args(message: Message) -> list[str]:
    return command_args(message.text).split()


async def target_of(
    update: Update, context: Context, args: Sequence[str], *, other_args: int
) -> Target | None:
    """The user an admin command names; on a refusal the admin has been told why."""
    message = update.effective_message
    caller = await caller_of(update, context)
    if message is None or caller is None:
        return None
    replied = message.reply_to_message
    author = replied.from_user if replied is not None else None
    services = get_services(context)
    try:
        return await resolve_target(
            services.storage.directory,
            args,
            other_args=other_args,
            reply_user_id=author.id if author is not None else None,
            reply_is_bot=bool(author is not None and author.is_bot),
        )
    except TargetError as exc:
        await reply(message, services, caller.lang, exc.key, **exc.params)
        return None


async def id_command(update: Update, context: Context) -> None:
    message = update.effective_message
    caller = await caller_of(update, context)
    if message is None or caller is None or not addressed_to_us(message.text, context):
        return
    replied = message.reply_to_message
    author = replied.from_user if replied is not None else None
    other = (author.id, author.full_name) if author is not None else None
    chat_id = message.chat_id if message.chat.type != "private" else None
    text = id_text(
        get_services(context).i18n.t,
        caller.lang,
        own_id=caller.user_id,
        other=other,
        chat_id=chat_id,
    )
    await message.reply_text(text, parse_mode=None)


async def user_command(update: Update, context: Context) -> None:
    message = update.effective_message
    caller = await caller_of(update, context)
    services = get_services(context)
    if message is None or caller is None or not addressed_to_us(message.text, context):
        return
    if caller.user_id not in services.config.admin_ids:
        await reply(message, services, caller.lang, "admin.refused")
        return
    args = _args(message)
    if not args and message.reply_to_message is None:
        await reply(message, services, caller.lang, "users.usage")
        return
    target = await target_of(update, context, args, other_args=0)
    if target is None:
        return
    profile = await services.storage.directory.profile(target.user.id)
    if profile is None:  # pragma: no cover - resolve found the user a moment ago
        return
    await message.reply_text(profile_text(services.i18n.t, caller.lang, profile), parse_mode=None)


def register_lookup(application: Application) -> None:
    application.add_handler(TypeHandler(Update, remember_sender), group=REMEMBER_GROUP)
    application.add_handler(CommandHandler("id", id_command))
    application.add_handler(CommandHandler("user", user_command))
