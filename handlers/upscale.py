"""/upscale: a photo, no prompt. Reply to a photo with ``/upscale``, send a photo captioned
``/upscale``, or send ``/upscale`` and then the photo (a step of the shared flows
``ConversationHandler``, like /i2i; ``/cancel`` ends it).
"""

from __future__ import annotations

from telegram import Message, Update
from telegram.ext import CommandHandler, ConversationHandler, MessageHandler

from handlers.common import FLOW_IMAGE, FLOW_OTHER, IMAGE_MESSAGE, addressed_to_us, caption_command
from handlers.context import BotContext, Caller
from handlers.flows import Flow, clear_flow, clear_flows, fetch_image, flow_data, reminder
from handlers.prompt_commands import has_image
from handlers.submit import submit

WAIT_PHOTO = 30  # state number, apart from i2i (0, 1) and inpaint (10..13)
FLOW = "upscale"
UPSCALE_TYPE = "UPSCALE"


async def _go(
    message: Message, context: BotContext, caller: Caller, source: Message, *, waiting: bool
) -> int:
    image = await fetch_image(context, source)
    if image is None:  # told why; a flow waiting for the photo keeps waiting
        return WAIT_PHOTO if waiting else ConversationHandler.END
    clear_flow(context, FLOW, message)
    await submit(message, context, caller, type_=UPSCALE_TYPE, prompt="", image=image)
    return ConversationHandler.END


async def upscale_command(update: Update, context: BotContext) -> int | None:
    message = update.effective_message
    caller = await context.caller()
    if message is None or caller is None:
        return None
    text = message.text if message.text is not None else message.caption
    if not addressed_to_us(text, context):
        return None
    clear_flows(context, message)
    if has_image(message):
        return await _go(message, context, caller, message, waiting=False)
    if message.reply_to_message is not None and has_image(message.reply_to_message):
        return await _go(message, context, caller, message.reply_to_message, waiting=False)
    flow_data(context, FLOW, message)["waiting"] = True
    await context.reply("actions.upscale_send_photo")
    return WAIT_PHOTO


async def upscale_photo(update: Update, context: BotContext) -> int:
    """The photo sent next, after ``/upscale``."""
    message = update.effective_message
    caller = await context.caller()
    assert message is not None and caller is not None
    return await _go(message, context, caller, message, waiting=True)


UPSCALE_FLOW = Flow(
    entry_points=[
        CommandHandler("upscale", upscale_command),
        MessageHandler(IMAGE_MESSAGE & caption_command("upscale"), upscale_command),
    ],
    states={
        WAIT_PHOTO: [
            MessageHandler(FLOW_IMAGE, upscale_photo),
            MessageHandler(FLOW_OTHER, reminder("actions.upscale_send_photo")),
        ]
    },
)
