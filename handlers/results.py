"""The older result buttons (``r:`` callback data on results delivered before the result
actions of ``handlers/actions.py``): again with a new seed, show the parameters, send the
original file."""

from __future__ import annotations

import logging
import re

from telegram import Update
from telegram.constants import MessageLimit
from telegram.ext import Application, CallbackQueryHandler

from generation.models import RunRecord
from generation.request import IMAGE_FIELDS
from handlers.callbacks import RunAction
from handlers.context import BotContext, reply_to
from handlers.origin import Origin
from handlers.submit import resubmit

log = logging.getLogger(__name__)

# Runs stored before ``applied_loras`` was recorded: the LoRAs are the prompt's tags.
_LORA_TAG = re.compile(r"<lora:([^:>]+)(?::([0-9.]+))?>")


async def _run_for_button(update: Update, context: BotContext) -> tuple[RunRecord | None, str]:
    """The run a result button is about, and the presser's language."""
    caller = await context.caller()
    return await context.button_run(), caller.lang if caller else "en"


async def again_button(update: Update, context: BotContext) -> None:
    """Again with a new seed: the stored request, seed −1, as a new run of the presser."""
    run, _lang = await _run_for_button(update, context)
    message = update.effective_message
    if run is None or message is None:
        return
    request = run.request or {}
    if any(request.get(name) for name in IMAGE_FIELDS):
        await context.answer_query("result.again_needs_photo", show_alert=True)
        return
    await context.answer_query("result.again_started")
    query = update.callback_query
    await resubmit(message, context, run, query.id if query is not None else None)


def loras_text(request: dict[str, object]) -> str:
    """The LoRAs a run applied, as stored; ``—`` when none."""
    applied = request.get("applied_loras")
    if isinstance(applied, list):
        names = [str(name) for name in applied]
    else:
        tags = _LORA_TAG.findall(str(request.get("prompt", "")))
        names = [f"{name}:{weight or '1'}" for name, weight in tags]
    return ", ".join(names) or "—"


async def params_button(update: Update, context: BotContext) -> None:
    run, lang = await _run_for_button(update, context)
    if run is None:
        return
    await context.answer_query("result.params_shown")
    r = run.request or {}
    negative = r.get("negative_prompt")
    text = context.services.i18n.t(
        lang,
        "result.params",
        type=run.type,
        prompt=Origin.of(run).prompt_of(run),
        negative=negative if negative else "—",
        width=r.get("width", "?"),
        height=r.get("height", "?"),
        steps=r.get("steps", "?"),
        cfg=r.get("cfg", "?"),
        seed=r.get("seed", "?"),
        checkpoint=r.get("checkpoint") or "—",
        loras=loras_text(r),
    )
    message = update.effective_message
    await context.bot.send_message(
        run.chat_id if message is None else message.chat_id,
        text[: MessageLimit.MAX_TEXT_LENGTH],
        parse_mode=None,
        reply_parameters=reply_to(message.message_id if message else None),
    )


async def original_button(update: Update, context: BotContext) -> None:
    run, lang = await _run_for_button(update, context)
    if run is None:
        return
    delivery = context.services.delivery
    if delivery is None or not run.outputs:
        await context.answer_query("common.stale_button")
        return
    await context.answer_query("result.original_sending")
    try:
        sent = await delivery.send_original(run, lang)
    except Exception:
        log.warning("original file of run %s could not be sent", run.id, exc_info=True)
        sent = 0
    message = update.effective_message
    if not sent and message is not None:
        await message.reply_text(
            context.services.i18n.t(lang, "result.delivery_failed"), parse_mode=None
        )


def register_result_buttons(application: Application) -> None:
    for action, callback in (("ag", again_button), ("pm", params_button), ("og", original_button)):
        application.add_handler(
            CallbackQueryHandler(callback, pattern=RunAction.action_pattern(action))
        )
