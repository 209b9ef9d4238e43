"""/start, /help and /balance: the user's first contact, the command list and their credits."""

from __future__ import annotations

from telegram import Update
from telegram.ext import Application, CommandHandler

from generation.contract import summary_lines
from handlers.common import addressed_to_us, is_group
from handlers.context import BotContext
from handlers.custom_commands import help_lines as custom_help
from handlers.prompt_params import help_text as params_help
from handlers.text_fit import fit


async def start_command(update: Update, context: BotContext) -> None:
    tg_user = update.effective_user
    if tg_user is not None and await context.caller() is not None:
        await context.reply("account.start", quote=False, name=tg_user.first_name or "")


async def help_command(update: Update, context: BotContext) -> None:
    """The command list, the inline parameters and the admin-added types' commands; in a
    group only a short version (the full one in a private chat)."""
    message, caller = update.effective_message, await context.caller()
    if message is None or caller is None or not addressed_to_us(message.text, context):
        return
    services = context.services
    t, lang = services.i18n.t, caller.lang
    if is_group(message.chat.type):
        await context.reply("groups.help")
        return
    user_help = t(lang, "help.user")
    if services.config.star_packages:
        user_help += "\n" + t(lang, "pay.help_user")
    parts = [user_help, params_help(t, lang)]
    if custom := custom_help(t, lang, services.custom_types.all()):
        parts.append(custom)
    admin = caller.user_id in services.config.admin_ids
    if admin:
        parts.append(t(lang, "help.admin") + "\n\n" + t(lang, "pay.help_admin"))
    await message.reply_text(fit(t, lang, "\n\n".join(parts)), parse_mode=None)
    if admin:  # the workflow contract (generation/contract.py), as its own message
        types = "\n".join(summary_lines())
        await message.reply_text(t(lang, "contract.help", types=types), parse_mode=None)


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
