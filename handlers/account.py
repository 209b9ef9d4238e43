"""/start, /help and /balance: the user's first contact, the command list and their credits."""

from __future__ import annotations

from telegram import Update
from telegram.ext import Application, CommandHandler

from handlers.context import BotContext


async def start_command(update: Update, context: BotContext) -> None:
    tg_user = update.effective_user
    if tg_user is not None and await context.caller() is not None:
        await context.reply("account.start", quote=False, name=tg_user.first_name or "")


async def help_command(update: Update, context: BotContext) -> None:
    message, caller = update.effective_message, await context.caller()
    if message is None or caller is None:
        return
    i18n = context.services.i18n
    text = i18n.t(caller.lang, "help.user")
    if context.services.config.star_packages:
        text += "\n" + i18n.t(caller.lang, "pay.help_user")
    if caller.user_id in context.services.config.admin_ids:
        text += "\n\n" + i18n.t(caller.lang, "help.admin")
        text += "\n\n" + i18n.t(caller.lang, "pay.help_admin")
    await message.reply_text(text, parse_mode=None)


async def balance_command(update: Update, context: BotContext) -> None:
    caller = await context.caller()
    if caller is None:
        return
    services = context.services
    ledger, config = services.storage.ledger, services.config
    if config.free_daily_credits:  # free, paid and held credits (storage/ledger.py)
        b = await ledger.balances(caller.user_id)
        key = "pay.balance"
        params: dict[str, object] = {
            "available": b.available,
            "free": b.free_available,
            "paid": b.paid,
            "held": b.held,
        }
    else:
        available = await ledger.get_balance(caller.user_id)  # holds excluded
        held = await ledger.get_held(caller.user_id)
        key = "account.balance_with_hold" if held else "account.balance"
        params = {"balance": available, "held": held}
    text = services.i18n.t(caller.lang, key, **params)
    if (limit := config.max_runs_per_user_per_day) is not None:
        left = max(0, limit - await services.storage.usage.runs_today(caller.user_id))
        text += "\n" + services.i18n.t(caller.lang, "access.runs_left", left=left, limit=limit)
    message = update.effective_message
    if message is not None:
        await message.reply_text(text, parse_mode=None)


def register_account(application: Application) -> None:
    application.add_handler(CommandHandler("start", start_command))
    application.add_handler(CommandHandler("help", help_command))
    application.add_handler(CommandHandler("balance", balance_command))
