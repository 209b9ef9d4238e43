"""Telegram side of the bot. :func:`register` adds every handler, in the order that matters.

PTB tries the handlers of a group in the order they were added and runs the first that
matches; the typed-value input of /settings sits in an earlier group (``menus.INPUT_GROUP``)
so it sees a message before the commands do.
"""

from __future__ import annotations

from telegram import Update
from telegram.ext import (
    Application,
    CallbackQueryHandler,
    CommandHandler,
    MessageHandler,
    filters,
)

from handlers import (
    access,
    account,
    actions,
    admin,
    cancel,
    lookup,
    menus,
    payments,
    prompt_commands,
    results,
    workflows,
)
from handlers.anonymous import register_anonymous_guard
from handlers.context import BotContext
from handlers.custom_commands import type_command
from handlers.custom_flow import custom_flow
from handlers.deps import services_of
from handlers.errors import on_error
from handlers.flows import build_flows
from handlers.i2i import I2I_FLOW
from handlers.inpaint import INPAINT_FLOW
from handlers.upscale import UPSCALE_FLOW


async def unknown_command(update: Update, context: BotContext) -> None:
    """A command nobody handles: say so (in groups only when addressed to us by name)."""
    message = update.effective_message
    if message is None or message.text is None:
        return
    words = message.text.split(maxsplit=1)
    if not words:  # a command entity on blank text (seen from odd clients)
        return
    first = words[0]
    if message.chat.type != "private":
        username = (context.bot.username or "").lower()
        if "@" not in first or first.split("@", 1)[1].lower() != username:
            return
    if await context.caller() is not None:
        await context.reply("common.unknown_command")


async def unknown_message(update: Update, context: BotContext) -> None:
    """Anything else in a private chat (a sticker, a stray photo, text): a hint, not silence."""
    if update.effective_message is not None and await context.caller() is not None:
        await context.reply("common.unknown_message")


async def stale_button(update: Update, context: BotContext) -> None:
    await context.caller()
    await context.answer_query("common.stale_button")


def register(application: Application) -> None:
    """Add all handlers, most specific first; the catch-alls come last. Called by the
    composition root once ``bot_data["services"]`` is set (the flows read its timeout)."""
    timeout = services_of(application).config.conversation_timeout
    # 0. Anonymous admins and "send as channel" users share one placeholder identity: refused
    #    before anything else (admin commands included).
    register_anonymous_guard(application)
    # 0. The access gate (bans, ACCESS=allowlist) sees every update first; then, in an
    #    early group that never ends an update, who wrote is remembered (usernames for the
    #    admin commands' lookups). Also /id and /user.
    access.register_access(application)
    lookup.register_lookup(application)
    # 1. The /i2i, /inpaint, /upscale and admin-added types' conversations: while one waits
    #    for a photo or a prompt, its states see the user's messages first; /cancel ends it.
    flows = build_flows(
        [I2I_FLOW, INPAINT_FLOW, UPSCALE_FLOW, custom_flow(application)],
        cancel.cancel_fallbacks(),
        timeout,
    )
    application.add_handler(flows)
    # 2. One-shot prompt commands (/make, /quickmake; also as a photo's
    #    caption) and the buttons of progress messages and results.
    prompt_commands.register_prompt_commands(application)
    cancel.register_cancel(application)
    results.register_result_buttons(application)
    actions.register_actions(application)
    # 3. /settings (and its typed-value input group), /start /help /balance, admin commands.
    menus.register_menus(application)
    admin.register_admin(application)
    workflows.register_workflows(application)  # /workflow add is a JSON document's caption
    application.add_handler(CommandHandler("type", type_command))
    account.register_account(application)
    # 3b. Telegram Stars (/buy, pre-checkout, payments, /refund, /paysupport, /terms).
    payments.register_payments(application)
    # 4. Catch-alls: unknown commands, stray private messages, buttons nobody understands.
    application.add_handler(MessageHandler(filters.COMMAND, unknown_command))
    application.add_handler(
        MessageHandler(
            filters.ChatType.PRIVATE & ~filters.COMMAND & ~filters.StatusUpdate.ALL,
            unknown_message,
        )
    )
    application.add_handler(CallbackQueryHandler(stale_button))
    application.add_error_handler(on_error)
