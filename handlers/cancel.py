"""/cancel and the Cancel button of a progress message.

``/cancel`` cancels all of the user's queued and running generations and ends any multi-step
flow (/i2i, /inpaint) they are in. The Cancel button cancels that one generation, and only for
the user who started it; anyone else gets a polite alert and nothing changes. A button of an
unknown or finished run gets a polite answer. Callback queries are always answered.
"""

from __future__ import annotations

import logging

from telegram import Update
from telegram.ext import Application, CallbackQueryHandler, CommandHandler, ConversationHandler

from generation.errors import GenerationError
from handlers.callbacks import RunAction
from handlers.context import BotContext
from handlers.flows import clear_flows, in_any_flow

log = logging.getLogger(__name__)


async def _cancel_all(update: Update, context: BotContext, *, in_flow: bool) -> None:
    message = update.effective_message
    caller = await context.caller()
    if message is None or caller is None:
        return
    services = context.services
    if in_flow:
        clear_flows(context, message)
    cancelled = await services.generation.cancel_user_generations(caller.user_id)
    if cancelled:
        await context.reply("cancel.done", count=len(cancelled))
    elif in_flow:
        await context.reply("cancel.flow_ended")
    else:
        await context.reply("cancel.nothing")


async def cancel_command(update: Update, context: BotContext) -> None:
    """/cancel outside any flow."""
    message = update.effective_message
    in_flow = message is not None and in_any_flow(context, message)
    await _cancel_all(update, context, in_flow=in_flow)


async def cancel_in_flow(update: Update, context: BotContext) -> int:
    """/cancel as the fallback of the /i2i and /inpaint conversations."""
    await _cancel_all(update, context, in_flow=True)
    return ConversationHandler.END


async def cancel_button(update: Update, context: BotContext) -> None:
    """The Cancel button: only the user who started the generation may press it."""
    services = context.services
    caller = await context.caller()
    run = await context.button_run()
    if run is None or caller is None:
        return
    if run.user_id != caller.user_id:
        await context.answer_query("cancel.not_yours", show_alert=True)
        return
    if run.is_terminal:
        await context.answer_query("cancel.already_finished")
        return
    try:
        await services.generation.cancel_generation(run.id)
    except GenerationError as exc:
        log.info("cancel of run %s failed: %s", run.id, exc.code)
        await context.answer_query("cancel.failed", show_alert=True)
        return
    await context.answer_query("cancel.cancelling")


def cancel_fallbacks() -> list[CommandHandler]:
    return [CommandHandler("cancel", cancel_in_flow)]


def register_cancel(application: Application) -> None:
    application.add_handler(CommandHandler("cancel", cancel_command))
    application.add_handler(
        CallbackQueryHandler(cancel_button, pattern=RunAction.action_pattern("cx"))
    )
