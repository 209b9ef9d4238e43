"""/i2i: image to image. The photo comes with the command (as its caption), from the message
the command replies to, or is asked for; when no prompt came with the photo, the prompt is
asked for too. A short conversation (``handlers/flows.py``); ``/cancel`` ends it."""

from __future__ import annotations

from telegram import Message, Update
from telegram.ext import CommandHandler, ConversationHandler, MessageHandler, filters

from generation.request import InputImage
from handlers.common import (
    FLOW_IMAGE,
    FLOW_OTHER,
    IMAGE_MESSAGE,
    addressed_to_us,
    caption_command,
    command_args,
)
from handlers.context import BotContext, Caller
from handlers.flows import Flow, clear_flow, clear_flows, fetch_image, flow_data, reminder
from handlers.submit import submit

I2I_WAIT_PHOTO, I2I_WAIT_PROMPT = range(2)
FLOW = "i2i"


async def _i2i_go(
    message: Message, context: BotContext, caller: Caller, image: InputImage, prompt: str
) -> int:
    if not prompt:
        flow_data(context, FLOW, message)["image"] = image
        await context.reply("i2i.send_prompt")
        return I2I_WAIT_PROMPT
    clear_flow(context, FLOW, message)
    await submit(message, context, caller, type_="I2I", prompt=prompt, image=image)
    return ConversationHandler.END


async def i2i_command(update: Update, context: BotContext) -> int | None:
    message = update.effective_message
    caller = await context.caller()
    if message is None or caller is None or not addressed_to_us(message.text, context):
        return None
    prompt = command_args(message.text)
    clear_flows(context, message)
    target = message.reply_to_message
    if target is not None and (target.photo or target.document):
        image = await fetch_image(context, target)
        if image is None:
            return ConversationHandler.END
        return await _i2i_go(message, context, caller, image, prompt)
    flow_data(context, FLOW, message)["prompt"] = prompt
    await context.reply("i2i.send_photo")
    return I2I_WAIT_PHOTO


async def i2i_caption(update: Update, context: BotContext) -> int | None:
    """A photo (or image document) sent with ``/i2i <prompt>`` as its caption."""
    message = update.effective_message
    caller = await context.caller()
    if message is None or caller is None or not addressed_to_us(message.caption, context):
        return None
    clear_flows(context, message)
    image = await fetch_image(context, message)
    if image is None:
        return ConversationHandler.END
    return await _i2i_go(message, context, caller, image, command_args(message.caption))


async def i2i_photo(update: Update, context: BotContext) -> int:
    """The photo sent next, after ``/i2i``."""
    message = update.effective_message
    caller = await context.caller()
    assert message is not None and caller is not None
    image = await fetch_image(context, message)
    if image is None:
        return I2I_WAIT_PHOTO  # told why; still waiting for a usable photo
    flow = flow_data(context, FLOW, message)
    prompt = flow.get("prompt") or (message.caption or "").strip()
    return await _i2i_go(message, context, caller, image, prompt)


async def i2i_prompt(update: Update, context: BotContext) -> int:
    message = update.effective_message
    caller = await context.caller()
    assert message is not None and caller is not None
    image = flow_data(context, FLOW, message).get("image")
    if image is None:  # the state was lost (restart): start over
        clear_flow(context, FLOW, message)
        await context.reply("i2i.send_photo")
        return I2I_WAIT_PHOTO
    return await _i2i_go(message, context, caller, image, (message.text or "").strip())


I2I_FLOW = Flow(
    entry_points=[
        CommandHandler("i2i", i2i_command),
        MessageHandler(IMAGE_MESSAGE & caption_command("i2i"), i2i_caption),
    ],
    states={
        I2I_WAIT_PHOTO: [
            MessageHandler(FLOW_IMAGE, i2i_photo),
            MessageHandler(FLOW_OTHER, reminder("i2i.send_photo")),
        ],
        I2I_WAIT_PROMPT: [
            MessageHandler(filters.TEXT & ~filters.COMMAND, i2i_prompt),
            MessageHandler(FLOW_IMAGE, i2i_photo),
        ],
    },
)
