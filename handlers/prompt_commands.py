"""Prompt commands with inline parameters and reference photos: /quickmake, the commands of
admin-added types, and the shared path :func:`run_prompt` (``/make`` uses it too).

``/make a knight --ar 2:3 --style`` with a photo (replied to, or the command as the photo's
caption) builds the combined type (``MAKE_STYLE``) with the photo as ``input_style_image``;
``--pose``/``--canny`` likewise (any combination). Parameters that cannot be used get a reply
naming the parameter and its range, and no run.
"""

from __future__ import annotations

import logging
from typing import Any

from telegram import Message, Update
from telegram.ext import Application, CommandHandler, MessageHandler

from generation.models import RunRecord
from generation.params import ParamError
from generation.request import InputImage
from handlers.common import Caller, Context, caller_of, command_args, reply
from handlers.custom_commands import REGISTRY_KEY, CustomCommandFilter, command_of
from handlers.deps import get_services
from handlers.generate import (
    IMAGE_MESSAGE,
    _user_fields,
    addressed_to_us,
    caption_command,
    fetch_image,
    submit,
)
from handlers.media import has_image
from handlers.prompt_params import error_text, prepare, reference_fields, reference_type

log = logging.getLogger(__name__)


def photo_source(message: Message) -> Message | None:
    """The message whose image a command uses: its own (caption) or the one it replies to."""
    if has_image(message):
        return message
    target = message.reply_to_message
    return target if has_image(target) else None


async def run_prompt(
    message: Message,
    context: Context,
    caller: Caller,
    *,
    base_type: str,
    text: str,
    usage_key: str,
    usage_params: dict[str, Any] | None = None,
    image: InputImage | None = None,
) -> RunRecord | None:
    """Parse ``text``'s parameters, add reference photos, and :func:`submit`."""
    services = get_services(context)
    try:
        prepared = prepare(
            text, _user_fields(caller), type_name=base_type, takes_image=image is not None
        )
    except ParamError as err:
        await message.reply_text(error_text(services.i18n.t, caller.lang, err), parse_mode=None)
        return None
    if not prepared.prompt:
        await reply(message, services, caller.lang, usage_key, **(usage_params or {}))
        return None
    type_, base = base_type, prepared.fields
    if prepared.references:
        source = photo_source(message)
        if source is None:
            await reply(message, services, caller.lang, "params.reference_needs_photo")
            return None
        reference = await fetch_image(message, context, caller, source)
        if reference is None:
            return None
        type_ = reference_type(base_type, prepared.references)
        base.update(reference_fields(prepared.references, reference))
    return await submit(
        message, context, caller, type_=type_, prompt=prepared.prompt, image=image, base=base
    )


async def quickmake_command(update: Update, context: Context) -> None:
    message = update.effective_message
    caller = await caller_of(update, context)
    if message is None or caller is None:
        return
    text = message.text if message.text is not None else message.caption
    if not addressed_to_us(text, context):
        return
    await run_prompt(
        message,
        context,
        caller,
        base_type="QUICKMAKE",
        text=command_args(text),
        usage_key="actions.quickmake_usage",
    )


async def make_with_reference(update: Update, context: Context) -> None:
    """A photo captioned ``/make <prompt> --style`` (CommandHandler ignores captions)."""
    message = update.effective_message
    caller = await caller_of(update, context)
    if message is None or caller is None or not addressed_to_us(message.caption, context):
        return
    await run_prompt(
        message,
        context,
        caller,
        base_type="MAKE",
        text=command_args(message.caption),
        usage_key="gen.make_usage",
    )


async def custom_type_command(update: Update, context: Context) -> None:
    """``/animate <prompt>`` for an admin-added type (photo-taking ones take the photo
    replied to or attached)."""
    message = update.effective_message
    caller = await caller_of(update, context)
    services = get_services(context)
    registry = services.extras.get(REGISTRY_KEY)
    found = command_of(message, context.bot.username)
    custom = registry.by_command(found[0]) if registry is not None and found else None
    if message is None or caller is None or custom is None or found is None:
        return
    image = None
    if custom.takes_image:
        source = photo_source(message)
        if source is None:
            await reply(
                message, services, caller.lang, "actions.custom_send_photo", command=custom.command
            )
            return
        image = await fetch_image(message, context, caller, source)
        if image is None:
            return
    await run_prompt(
        message,
        context,
        caller,
        base_type=custom.name,
        text=found[1],
        usage_key="actions.custom_usage",
        usage_params={"command": custom.command},
        image=image,
    )


def prompt_handlers(application: Application) -> list[Any]:
    """Handlers of this module, in order (the custom-type one matches only registered
    commands, checked per update)."""
    services = application.bot_data.get("services")
    registry = services.extras.get(REGISTRY_KEY) if services is not None else None
    handlers: list[Any] = [
        CommandHandler("quickmake", quickmake_command),
        MessageHandler(IMAGE_MESSAGE & caption_command("quickmake"), quickmake_command),
        MessageHandler(IMAGE_MESSAGE & caption_command("make"), make_with_reference),
    ]
    if registry is not None:
        check = CustomCommandFilter(registry, lambda: application.bot.username)
        handlers.append(MessageHandler(check, custom_type_command))
    return handlers
