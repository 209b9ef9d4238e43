"""The result buttons' handler: 🔁 again, ⬆️ upscale, 🎨 vary, ℹ️ parameters, 📎 original.

Callback data is :class:`~handlers.result_actions.ResultAction` (``x:<verb>:<item>:<run>``).
Actions that start a paid run are the run owner's only and charge the owner's price for the
type they start; ℹ️ and 📎 work for anyone in the chat. The run and its outputs come from
storage (file ids of the delivered items, else the stored output URLs), so buttons keep
working after a restart. New runs reply to the result message, in its forum topic.
"""

from __future__ import annotations

import logging
from typing import Any

from telegram import InlineKeyboardButton, InlineKeyboardMarkup, Message, Update
from telegram.ext import Application, CallbackQueryHandler

from generation.models import RunRecord
from handlers.context import BotContext, reply_to
from handlers.deps import Services
from handlers.media import MediaError
from handlers.result_actions import (
    ResultAction,
    follow_up,
    image_items,
    label,
    params_fields,
    plan_buttons,
)
from handlers.result_source import output_image
from handlers.submit import submit
from handlers.text_fit import fit

log = logging.getLogger(__name__)

_KINDS = ("photo", "document", "animation", "video")


async def deployed_types(storage: Any) -> set[str]:
    """Type names with an enabled deployment (cached by the repository)."""
    return {d.type for d in await storage.deployments.list_deployments() if d.enabled}


def result_keyboard(
    services: Services,
    lang: str,
    run: RunRecord,
    deployed: set[str],
    *,
    items: list[int] | None = None,
    original: bool = True,
) -> InlineKeyboardMarkup | None:
    rows = plan_buttons(run, deployed, items=items, original=original)
    t = services.i18n.t
    markup = [
        [InlineKeyboardButton(label(t, lang, b), callback_data=b.data) for b in row]
        for row in rows
        if row
    ]
    return InlineKeyboardMarkup(markup) if markup else None


async def record_delivered(storage: Any, run_id: str, item: int, sent: Message | None) -> None:
    """Remember the file id Telegram gave a delivered item (best effort)."""
    if sent is None:
        return
    for kind in _KINDS:
        media = getattr(sent, kind, None)
        if not media:
            continue
        file_id = media[-1].file_id if kind == "photo" else media.file_id
        try:
            await storage.result_files.record(
                run_id, item, kind, file_id, chat_id=sent.chat_id, message_id=sent.message_id
            )
        except Exception:
            log.warning("run %s: could not record the file of item %d", run_id, item)
        return


def _reply_kwargs(message: Message | None) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"parse_mode": None}
    if message is None:
        return kwargs
    kwargs["reply_parameters"] = reply_to(message.message_id)
    if message.is_topic_message and message.message_thread_id:
        kwargs["message_thread_id"] = message.message_thread_id
    return kwargs


async def _params(update: Update, context: BotContext, run: RunRecord, lang: str) -> None:
    services = context.services
    await context.answer_query("result.params_shown")
    message = update.effective_message
    text = fit(services.i18n.t, lang, services.i18n.t(lang, "result.params", **params_fields(run)))
    await context.bot.send_message(
        message.chat_id if message else run.chat_id, text, **_reply_kwargs(message)
    )


async def _original(
    update: Update, context: BotContext, run: RunRecord, item: int, lang: str
) -> None:
    services = context.services
    message = update.effective_message
    chat_id = message.chat_id if message else run.chat_id
    if item not in image_items(run):
        await context.answer_query("actions.unavailable", show_alert=True)
        return
    await context.answer_query("result.original_sending")
    stored = await services.storage.result_files.best(run.id, item, ("document",))
    document: Any = stored.file_id if stored is not None else None
    if document is None:
        try:
            assert services.delivery is not None
            document = await services.delivery.download(run.outputs[item].url)
        except Exception:
            log.info("run %s: original of item %d is gone", run.id, item, exc_info=True)
            await context.bot.send_message(
                chat_id, services.i18n.t(lang, "actions.output_gone"), **_reply_kwargs(message)
            )
            return
    sent = await context.bot.send_document(
        chat_id, document, filename=f"result_{item + 1}.png", **_reply_kwargs(message)
    )
    await record_delivered(services.storage, run.id, item, sent)


async def action_button(update: Update, context: BotContext) -> None:
    query = update.callback_query
    services = context.services
    caller = await context.caller()
    action = ResultAction.parse(query.data if query else None)
    lang = caller.lang if caller else "en"
    run = await services.storage.runs.get_run(action.run_id) if action else None
    if action is None or run is None or caller is None:
        await context.answer_query("common.stale_button")
        return
    if action.verb == "pm":
        await _params(update, context, run, lang)
        return
    if action.verb == "og":
        await _original(update, context, run, action.item, lang)
        return
    if caller.user_id != run.user_id:  # it would spend the owner's credits
        await context.answer_query("actions.not_yours", show_alert=True)
        return
    if query is not None and await services.storage.runs.find_run_for_callback(
        caller.user_id, query.id
    ):
        return  # the same press redelivered after a restart: it started its run already
    plan = follow_up(action, run, await deployed_types(services.storage))
    message = update.effective_message
    if plan is None or message is None:
        await context.answer_query("actions.unavailable", show_alert=True)
        return
    await context.answer_query("actions.started")
    image = None
    if plan.needs_image:
        download = services.delivery.download if services.delivery is not None else None
        try:
            image = await output_image(context.bot, services.storage, run, plan.item, download)
        except MediaError as exc:
            await context.bot.send_message(
                message.chat_id,
                services.i18n.t(lang, exc.key, **exc.params),
                **_reply_kwargs(message),
            )
            return
    await submit(
        message,
        context,
        caller,
        type_=plan.type,
        prompt=plan.prompt,
        image=image,
        base=dict(plan.fields),
        callback_query_id=query.id if query is not None else None,
    )


def register_actions(application: Application) -> None:  # type: ignore[type-arg]
    application.add_handler(CallbackQueryHandler(action_button, pattern=ResultAction.regex))
