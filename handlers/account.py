"""/start, /help and /balance: the user's first contact, the command list and their credits."""

from __future__ import annotations

from telegram import Update
from telegram.ext import Application, CommandHandler

from handlers.context import BotContext


def is_admin(context: BotContext, user_id: int) -> bool:
    return user_id in context.services.config.admin_ids


async def start_command(update: Update, context: BotContext) -> None:
    message, tg_user = update.effective_message, update.effective_user
    if message is None or tg_user is None:
        return
    services = context.services
    caller = await context.caller()
    assert caller is not None  # effective_user checked above
    lang = caller.lang
    text = services.i18n.t(lang, "account.start", name=tg_user.first_name or "")
    await message.reply_text(text, parse_mode=None)


async def help_command(update: Update, context: BotContext) -> None:
    message, tg_user = update.effective_message, update.effective_user
    if message is None or tg_user is None:
        return
    services = context.services
    caller = await context.caller()
    assert caller is not None  # effective_user checked above
    lang = caller.lang
    text = services.i18n.t(lang, "help.user")
    if is_admin(context, tg_user.id):
        text += "\n\n" + services.i18n.t(lang, "help.admin")
    await message.reply_text(text, parse_mode=None)


async def balance_command(update: Update, context: BotContext) -> None:
    message, tg_user = update.effective_message, update.effective_user
    if message is None or tg_user is None:
        return
    services = context.services
    caller = await context.caller()
    assert caller is not None  # effective_user checked above
    lang = caller.lang
    ledger = services.storage.ledger
    available = await ledger.get_balance(tg_user.id)  # holds excluded
    held = await ledger.get_held(tg_user.id)
    key = "account.balance_with_hold" if held else "account.balance"
    await message.reply_text(
        services.i18n.t(lang, key, balance=available, held=held), parse_mode=None
    )


def register_account(application: Application) -> None:
    application.add_handler(CommandHandler("start", start_command))
    application.add_handler(CommandHandler("help", help_command))
    application.add_handler(CommandHandler("balance", balance_command))
