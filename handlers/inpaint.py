"""/inpaint: photo → mask (or a text target) → prompt, as a ConversationHandler.

The photo may come with the command (as its caption, or the command replies to a photo); the
caption may carry the prompt already, which skips the last step. The mask is best sent as a
PNG document (photos are recompressed): white = area to repaint; it is binarized and sized to
the photo. When the INPAINT deployments take a text description of the area
(``input_inpaint_target``) rather than a mask (``input_mask``), the bot asks for that text.
"""

from __future__ import annotations

from telegram import Message, Update
from telegram.ext import (
    CommandHandler,
    ConversationHandler,
    MessageHandler,
    filters,
)

from handlers.common import (
    FLOW_IMAGE,
    FLOW_OTHER,
    IMAGE_MESSAGE,
    addressed_to_us,
    caption_command,
    command_args,
)
from handlers.context import BotContext, Caller
from handlers.deps import Services
from handlers.flows import Flow, clear_flow, clear_flows, fetch_image, flow_data, reminder
from handlers.media import MediaError, download_mask, image_ref
from handlers.submit import submit

PHOTO, MASK, TARGET, PROMPT = range(10, 14)
FLOW = "inpaint"
INPAINT_TYPE = "INPAINT"


async def wants_text_target(services: Services) -> bool:
    """True when the enabled INPAINT deployments declare a text target and no mask input."""
    deployments = await services.storage.deployments.list_deployments(INPAINT_TYPE)
    known = [d for d in deployments if d.enabled and d.inputs]
    if not known:
        return False
    takes_mask = any("input_mask" in d.inputs for d in known)
    takes_target = any("input_inpaint_target" in d.inputs for d in known)
    return takes_target and not takes_mask


async def _after_photo(message: Message, context: BotContext, caller: Caller) -> int:
    services = context.services
    flow = flow_data(context, FLOW, message)
    if await wants_text_target(services):
        flow["target_mode"] = True
        await context.reply("inpaint.send_target")
        return TARGET
    await context.reply("inpaint.send_mask")
    return MASK


async def _next_or_submit(message: Message, context: BotContext, caller: Caller) -> int:
    flow = flow_data(context, FLOW, message)
    if not flow.get("prompt"):
        await context.reply("inpaint.send_prompt")
        return PROMPT
    clear_flow(context, FLOW, message)
    await submit(
        message,
        context,
        caller,
        type_=INPAINT_TYPE,
        prompt=flow["prompt"],
        image=flow.get("image"),
        mask=flow.get("mask"),
        inpaint_target=flow.get("target"),
    )
    return ConversationHandler.END


async def _start(
    message: Message, context: BotContext, caller: Caller, prompt: str, source: Message | None
) -> int:
    clear_flows(context, message)
    flow = flow_data(context, FLOW, message)
    flow["prompt"] = prompt
    if source is not None and (source.photo or source.document):
        image = await fetch_image(context, source)
        if image is None:
            clear_flow(context, FLOW, message)
            return ConversationHandler.END
        flow["image"] = image
        return await _after_photo(message, context, caller)
    await context.reply("inpaint.send_photo")
    return PHOTO


async def inpaint_command(update: Update, context: BotContext) -> int | None:
    message = update.effective_message
    caller = await context.caller()
    if message is None or caller is None or not addressed_to_us(message.text, context):
        return None
    return await _start(
        message, context, caller, command_args(message.text), message.reply_to_message
    )


async def inpaint_caption(update: Update, context: BotContext) -> int | None:
    message = update.effective_message
    caller = await context.caller()
    if message is None or caller is None or not addressed_to_us(message.caption, context):
        return None
    return await _start(message, context, caller, command_args(message.caption), message)


async def on_photo(update: Update, context: BotContext) -> int:
    message = update.effective_message
    caller = await context.caller()
    assert message is not None and caller is not None
    image = await fetch_image(context, message)
    if image is None:
        return PHOTO
    flow = flow_data(context, FLOW, message)
    flow["image"] = image
    if not flow.get("prompt") and message.caption:
        flow["prompt"] = message.caption.strip()
    return await _after_photo(message, context, caller)


async def on_mask(update: Update, context: BotContext) -> int:
    message = update.effective_message
    caller = await context.caller()
    assert message is not None and caller is not None
    flow = flow_data(context, FLOW, message)
    try:
        ref = image_ref(message)
        if ref is None:
            raise MediaError("inpaint.send_mask")
        flow["mask"] = await download_mask(context.bot, ref, flow.get("image"))
    except MediaError as exc:
        await context.reply(exc.key, **exc.params)
        return MASK
    if not flow.get("prompt") and message.caption:
        flow["prompt"] = message.caption.strip()
    return await _next_or_submit(message, context, caller)


async def on_target(update: Update, context: BotContext) -> int:
    message = update.effective_message
    caller = await context.caller()
    assert message is not None and caller is not None
    flow = flow_data(context, FLOW, message)
    flow["target"] = (message.text or "").strip()
    return await _next_or_submit(message, context, caller)


async def on_prompt(update: Update, context: BotContext) -> int:
    message = update.effective_message
    caller = await context.caller()
    assert message is not None and caller is not None
    flow = flow_data(context, FLOW, message)
    if flow.get("image") is None:  # state lost (restart): start over
        await context.reply("inpaint.send_photo")
        return PHOTO
    flow["prompt"] = (message.text or "").strip()
    return await _next_or_submit(message, context, caller)


_TEXT = filters.TEXT & ~filters.COMMAND

INPAINT_FLOW = Flow(
    entry_points=[
        CommandHandler("inpaint", inpaint_command),
        MessageHandler(IMAGE_MESSAGE & caption_command("inpaint"), inpaint_caption),
    ],
    states={
        PHOTO: [
            MessageHandler(FLOW_IMAGE, on_photo),
            MessageHandler(FLOW_OTHER, reminder("inpaint.send_photo")),
        ],
        MASK: [
            MessageHandler(FLOW_IMAGE, on_mask),
            MessageHandler(FLOW_OTHER, reminder("inpaint.send_mask")),
        ],
        TARGET: [
            MessageHandler(_TEXT, on_target),
            MessageHandler(FLOW_OTHER, reminder("inpaint.send_target")),
        ],
        PROMPT: [
            MessageHandler(_TEXT, on_prompt),
            MessageHandler(FLOW_OTHER, reminder("inpaint.send_prompt")),
        ],
    },
)
