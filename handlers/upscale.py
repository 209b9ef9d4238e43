"""/upscale: a photo, no prompt. Reply to a photo with ``/upscale``, send a photo captioned
``/upscale``, or send ``/upscale`` and then the photo (a step of the shared flows
ConversationHandler, like /i2i; ``/cancel`` ends it).
"""

from __future__ import annotations

from typing import Any

from telegram import Message, Update
from telegram.ext import CommandHandler, ConversationHandler, MessageHandler, filters

from handlers.common import Caller, Context, caller_of, reply
from handlers.deps import get_services
from handlers.generate import (
    IMAGE_MESSAGE,
    addressed_to_us,
    caption_command,
    clear_flow,
    clear_flows,
    fetch_image,
    flow_data,
    submit,
)
from handlers.media import has_image

WAIT_PHOTO = 30  # state number, apart from i2i (0, 1) and inpaint (10..13)
FLOW = "upscale"
UPSCALE_TYPE = "UPSCALE"


async def _go(message: Message, context: Context, caller: Caller, source: Message) -> int:
    image = await fetch_image(message, context, caller, source)
    if image is None:
        return WAIT_PHOTO if source is message else ConversationHandler.END
    clear_flow(context, FLOW, message)
    await submit(message, context, caller, type_=UPSCALE_TYPE, prompt="", image=image)
    return ConversationHandler.END


async def upscale_command(update: Update, context: Context) -> int | None:
    message = update.effective_message
    caller = await caller_of(update, context)
    if message is None or caller is None:
        return None
    text = message.text if message.text is not None else message.caption
    if not addressed_to_us(text, context):
        return None
    clear_flows(context, message)
    if has_image(message):
        return await _go(message, context, caller, message)
    if has_image(message.reply_to_message):
        assert message.reply_to_message is not None
        return await _go(message, context, caller, message.reply_to_message)
    flow_data(context, FLOW, message)["waiting"] = True
    await reply(message, get_services(context), caller.lang, "actions.upscale_send_photo")
    return WAIT_PHOTO


async def upscale_photo(update: Update, context: Context) -> int:
    """The photo sent next, after ``/upscale``."""
    message = update.effective_message
    caller = await caller_of(update, context)
    assert message is not None and caller is not None
    return await _go(message, context, caller, message)


async def upscale_reminder(update: Update, context: Context) -> int | None:
    message = update.effective_message
    caller = await caller_of(update, context)
    if message is not None and caller is not None:
        await reply(message, get_services(context), caller.lang, "actions.upscale_send_photo")
    return None


def upscale_entry_points() -> list[Any]:
    return [
        CommandHandler("upscale", upscale_command),
        MessageHandler(IMAGE_MESSAGE & caption_command("upscale"), upscale_command),
    ]


def upscale_states() -> dict[object, list[Any]]:
    return {
        WAIT_PHOTO: [
            MessageHandler(IMAGE_MESSAGE, upscale_photo),
            MessageHandler(~filters.COMMAND, upscale_reminder),
        ]
    }
