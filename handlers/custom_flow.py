"""The commands of admin-added types (``/animate <prompt>``), as a step of the shared flows
``ConversationHandler`` (``handlers/flows.py``): a photo-taking type (``/type ANIMATE image``)
takes the photo replied to, the photo the command is the caption of, or the photo sent next
(the command's text waits in the flow's data; ``/cancel`` ends it). Text types run at once.
"""

from __future__ import annotations

from typing import Any

from telegram import Message, Update
from telegram.ext import Application, ConversationHandler, MessageHandler

from generation.custom_types import CustomType
from generation.params import ParamError
from handlers.common import FLOW_IMAGE, FLOW_OTHER
from handlers.context import BotContext, Caller
from handlers.custom_commands import CustomCommandFilter, command_of
from handlers.flows import Flow, clear_flow, clear_flows, fetch_image, flow_data
from handlers.prompt_commands import photo_source, run_prompt
from handlers.prompt_params import error_text, prepare
from handlers.submit import _user_fields

WAIT_PHOTO = 40  # state number, apart from i2i (0, 1), inpaint (10..13), upscale (30)
FLOW = "custom"


async def _run(
    message: Message,
    context: BotContext,
    caller: Caller,
    custom: CustomType,
    text: str,
    source: Message | None,
    *,
    waiting: bool = False,
) -> int:
    image = None
    if source is not None:
        image = await fetch_image(context, source)
        if image is None:  # told why; a flow waiting for the photo keeps waiting
            return WAIT_PHOTO if waiting else ConversationHandler.END
    clear_flow(context, FLOW, message)
    await run_prompt(
        message,
        context,
        caller,
        base_type=custom.name,
        text=text,
        usage_key="actions.custom_usage",
        usage_params={"command": custom.command},
        image=image,
    )
    return ConversationHandler.END


async def custom_type_command(update: Update, context: BotContext) -> int | None:
    """``/animate <prompt>`` for an admin-added type."""
    message = update.effective_message
    caller = await context.caller()
    found = command_of(message, context.bot.username)
    custom = context.services.custom_types.by_command(found[0]) if found else None
    if message is None or caller is None or custom is None or found is None:
        return None
    clear_flows(context, message)
    text = found[1]
    if not custom.takes_image:
        return await _run(message, context, caller, custom, text, None)
    source = photo_source(message)
    if source is not None:
        return await _run(message, context, caller, custom, text, source)
    # No photo yet: check the text now (a bad parameter is told at once, not after the photo).
    try:
        prepared = prepare(text, _user_fields(caller), type_name=custom.name, takes_image=True)
    except ParamError as err:
        await message.reply_text(
            error_text(context.services.i18n.t, caller.lang, err), parse_mode=None
        )
        return ConversationHandler.END
    if not prepared.prompt:
        await context.reply("actions.custom_usage", command=custom.command)
        return ConversationHandler.END
    flow_data(context, FLOW, message).update(type=custom.name, text=text)
    await context.reply("actions.custom_send_photo", command=custom.command)
    return WAIT_PHOTO


def _pending(context: BotContext, message: Message) -> tuple[CustomType, str] | None:
    data = flow_data(context, FLOW, message)
    custom = context.services.custom_types.get(data.get("type") or "")
    return None if custom is None else (custom, data.get("text", ""))


async def custom_photo(update: Update, context: BotContext) -> int:
    """The photo sent next, after a photo-taking type's command."""
    message = update.effective_message
    caller = await context.caller()
    assert message is not None and caller is not None
    pending = _pending(context, message)
    if pending is None:  # the type was removed meanwhile
        clear_flow(context, FLOW, message)
        await context.reply("common.unknown_command")
        return ConversationHandler.END
    return await _run(message, context, caller, *pending, message, waiting=True)


async def custom_reminder(update: Update, context: BotContext) -> int | None:
    """Anything but a photo while waiting: say again what is waited for."""
    message = update.effective_message
    if message is None or await context.caller() is None:
        return None
    pending = _pending(context, message)
    if pending is None:
        clear_flow(context, FLOW, message)
        return ConversationHandler.END
    await context.reply("actions.custom_send_photo", command=pending[0].command)
    return None


def custom_flow(application: Application[Any, Any, Any, Any, Any, Any]) -> Flow:
    """The flow of admin-added types' commands (matched per update against the registry, so
    a type an admin adds works at once, without re-registering handlers)."""
    from handlers.deps import services_of

    check = CustomCommandFilter(
        services_of(application).custom_types, lambda: application.bot.username
    )
    return Flow(
        entry_points=[MessageHandler(check, custom_type_command)],
        states={
            WAIT_PHOTO: [
                MessageHandler(FLOW_IMAGE, custom_photo),
                MessageHandler(FLOW_OTHER, custom_reminder),
            ]
        },
    )
