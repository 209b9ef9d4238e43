"""/make <prompt>: text to image. Without a prompt it answers with a usage hint (a one-line
command is easier to repeat than a conversation)."""

from __future__ import annotations

from telegram import Update
from telegram.ext import Application, CommandHandler

from handlers.common import addressed_to_us, command_args
from handlers.context import BotContext
from handlers.submit import submit


async def make_command(update: Update, context: BotContext) -> None:
    message = update.effective_message
    caller = await context.caller()
    if message is None or caller is None or not addressed_to_us(message.text, context):
        return
    prompt = command_args(message.text)
    if not prompt:
        await context.reply("gen.make_usage")
        return
    await submit(message, context, caller, type_="MAKE", prompt=prompt)


def register_make(application: Application) -> None:
    application.add_handler(CommandHandler("make", make_command))
