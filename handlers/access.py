"""Who may use the bot: the access gate, ``/allow``, ``/ban``, ``/unban``.

The gate runs before every other handler (group :data:`GATE_GROUP`) and asks
``storage.access`` (which raises coded errors):

* a banned user gets one short refusal, then silence (every later update stops here);
* with ``ACCESS=allowlist`` a user who is not ``/allow``-ed, not writing in an allowed group
  and not a member of one is refused (with their user id, to pass on to an admin);
* ``ACCESS=paid`` is checked where credits are spent (:func:`check_generation`), so /buy,
  /balance and /help keep working for everyone.

Payments always pass the gate: a pre-checkout query is answered by ``handlers/payments.py``
(``ok=False`` for a banned user) and a successful payment is always credited.
Admins (``ADMIN_IDS``) always pass.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from telegram import ChatMember, Update
from telegram.error import TelegramError
from telegram.ext import Application, ApplicationHandlerStop, CommandHandler, TypeHandler

from generation.billing import AccessMode
from generation.errors import AccessDeniedError, BannedError
from handlers.admin_base import Reply, UsageError, admin_only, parse_int
from handlers.context import BotContext
from handlers.deps import Services

log = logging.getLogger(__name__)

GATE_GROUP = -100  # after the metrics counter (-1000), before menus' input group (-1)
MEMBER_TTL = 600.0  # seconds a group-membership answer is reused
MAX_ID = 10**16
_MEMBER_STATES = {ChatMember.OWNER, ChatMember.ADMINISTRATOR, ChatMember.MEMBER}


class MembershipCache:
    """``getChatMember`` answers for (group, user), kept :data:`MEMBER_TTL` seconds."""

    def __init__(self) -> None:
        self._seen: dict[tuple[int, int], tuple[bool, float]] = {}

    async def is_member(self, context: BotContext, group_id: int, user_id: int) -> bool:
        now = time.monotonic()
        hit = self._seen.get((group_id, user_id))
        if hit is not None and hit[1] > now:
            return hit[0]
        try:
            member = await context.bot.get_chat_member(group_id, user_id)
            ok = member.status in _MEMBER_STATES or (
                member.status == ChatMember.RESTRICTED and bool(getattr(member, "is_member", 0))
            )
        except TelegramError as exc:  # the bot left the group, the group is gone, ...
            log.info("membership of %s in %s unknown: %s", user_id, group_id, exc)
            ok = False
        if len(self._seen) > 10_000:
            self._seen.clear()
        self._seen[(group_id, user_id)] = (ok, now + MEMBER_TTL)
        return ok


_MEMBERS_KEY = "access_membership_cache"


def _members(context: BotContext) -> MembershipCache:
    cache = context.application.bot_data.get(_MEMBERS_KEY)
    if cache is None:
        cache = context.application.bot_data[_MEMBERS_KEY] = MembershipCache()
    return cache


def _passes_freely(update: Update) -> bool:
    """Payments (always answered or credited by handlers/payments.py) and updates that are
    neither a message nor a button (membership changes, ...): nothing to refuse there, and a
    banned user's one refusal must not be spent on them."""
    if update.pre_checkout_query is not None:
        return True
    if update.effective_message is None and update.callback_query is None:
        return True
    message = update.effective_message
    return message is not None and (
        message.successful_payment is not None or message.refunded_payment is not None
    )


async def access_gate(update: Update, context: BotContext) -> None:
    """Stop the update here (``ApplicationHandlerStop``) when its user may not use the bot."""
    tg_user = update.effective_user
    if tg_user is None or _passes_freely(update):
        return
    services = context.services
    if tg_user.id in services.config.admin_ids:
        return
    mode = services.config.access
    chat = update.effective_chat
    members = _members(context)

    async def is_member(group_id: int) -> bool:
        return await members.is_member(context, group_id, tg_user.id)

    try:
        await services.storage.access.check(
            tg_user.id,
            mode=AccessMode.ALLOWLIST if mode is AccessMode.ALLOWLIST else AccessMode.OPEN,
            chat_id=chat.id if chat is not None else None,
            is_member=is_member if chat is not None and chat.type == "private" else None,
        )
    except BannedError as exc:
        if exc.first:
            await _refuse(update, context, "access.banned")
        elif update.callback_query is not None:
            await _quiet_answer(update)
        raise ApplicationHandlerStop from None
    except AccessDeniedError:
        await _refuse(update, context, "access.denied", user_id=tg_user.id)
        raise ApplicationHandlerStop from None


async def _quiet_answer(update: Update) -> None:
    try:
        assert update.callback_query is not None
        await update.callback_query.answer()
    except TelegramError:
        log.debug("could not answer a callback query", exc_info=True)


async def _refuse(update: Update, context: BotContext, key: str, **params: object) -> None:
    """Tell the user once for this update: a callback alert, or a reply to a command or a
    private message (group chatter that was not addressed to the bot gets nothing)."""
    if update.callback_query is not None:
        await context.answer_query(key, show_alert=True, **params)
        return
    message = update.effective_message
    if message is None:
        return
    addressed = message.chat.type == "private" or (message.text or "").startswith("/")
    if addressed:
        await context.reply(key, **params)


async def check_generation(context: BotContext, user_id: int, chat_id: int) -> None:
    """``ACCESS=paid``: raise ``PaidAccessOnlyError`` for a user without paid credits or a
    purchase (called where a generation is submitted)."""
    services = context.services
    if services.config.access is not AccessMode.PAID:
        return
    await services.storage.access.check(
        user_id,
        mode=AccessMode.PAID,
        chat_id=chat_id,
        is_admin=user_id in services.config.admin_ids,
    )


# -- admin commands -------------------------------------------------------------------------------


async def _target(reply: Reply, services: Services, args: Sequence[str], usage: str) -> int | None:
    """A user id (positive) or a group chat id (negative). A user may also be named by an
    ``@username`` the bot has seen or by replying to their message; ids are taken as given
    (an allowlist admits people before they ever wrote). In a group, no argument means the
    group itself (for /allow and /unban). ``None``: refused, the admin has been told."""
    named = await named_user(reply, services, args)
    if named is not False:
        return named
    return _id_target(reply, args, usage)


async def named_user(reply: Reply, services: Services, args: Sequence[str]) -> int | bool | None:
    """The user an ``@username`` argument or the replied-to message names; ``False`` when
    the arguments name nobody that way; ``None`` after telling the admin the name is unknown."""
    message = reply.update.effective_message
    replied = message.reply_to_message if message is not None else None
    author = replied.from_user if replied is not None else None
    if not args and author is not None and not author.is_bot:
        return author.id
    if len(args) == 1 and args[0].startswith("@"):
        found = await services.storage.directory.id_for_username(args[0])
        if found is None:
            await reply("users.unknown_username", query=args[0][:64])
        return found
    return False


def _id_target(reply: Reply, args: Sequence[str], usage: str) -> int:
    if not args:
        chat = reply.update.effective_chat
        if chat is not None and chat.type != "private" and usage != "access.usage.ban":
            return chat.id
        raise UsageError(usage)
    if len(args) != 1:
        raise UsageError(usage)
    value = parse_int(args[0], usage, minimum=-MAX_ID, maximum=MAX_ID)
    if value == 0 or (value < 0 and usage == "access.usage.ban"):
        raise UsageError(usage)
    return value


@admin_only
async def allow_command(
    reply: Reply, services: Services, args: Sequence[str], admin_id: int
) -> None:
    target = await _target(reply, services, args, "access.usage.allow")
    if target is None:
        return
    if target < 0:
        await services.storage.access.allow_chat(target, actor=admin_id)
        await reply("access.allowed_chat", chat_id=target)
        return
    await services.storage.access.allow(target)
    log.info("admin %s allowed user %s", admin_id, target)
    await reply("access.allowed_user", user_id=target)


@admin_only
async def ban_command(reply: Reply, services: Services, args: Sequence[str], admin_id: int) -> None:
    target = await _target(reply, services, args, "access.usage.ban")
    if target is None:
        return
    if target in services.config.admin_ids:
        await reply("access.cannot_ban_admin")
        return
    await services.storage.access.ban(target)
    log.info("admin %s banned user %s", admin_id, target)
    await reply("access.banned_user", user_id=target)


@admin_only
async def unban_command(
    reply: Reply, services: Services, args: Sequence[str], admin_id: int
) -> None:
    target = await _target(reply, services, args, "access.usage.unban")
    if target is None:
        return
    if target < 0:
        await services.storage.access.disallow_chat(target)
        await reply("access.disallowed_chat", chat_id=target)
        return
    await services.storage.access.unban(target)
    log.info("admin %s unbanned user %s", admin_id, target)
    await reply("access.unbanned_user", user_id=target)


def register_access(application: Application) -> None:  # type: ignore[type-arg]
    application.add_handler(TypeHandler(Update, access_gate), group=GATE_GROUP)
    application.add_handler(CommandHandler("allow", allow_command))
    application.add_handler(CommandHandler("ban", ban_command))
    application.add_handler(CommandHandler("unban", unban_command))
