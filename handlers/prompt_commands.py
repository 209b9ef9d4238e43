"""Prompt commands with inline parameters and reference photos: /make, /quickmake, the
commands of admin-added types (``handlers/custom_flow.py``), and their shared path
:func:`run_prompt`.

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
from handlers.common import IMAGE_MESSAGE, addressed_to_us, caption_command, command_args
from handlers.context import BotContext, Caller
from handlers.flows import fetch_image
from handlers.prompt_params import error_text, prepare, reference_fields, reference_type
from handlers.submit import _user_fields, submit

log = logging.getLogger(__name__)


def has_image(message: Message | None) -> bool:
    if message is None:
        return False
    if message.photo:
        return True
    doc = message.document
    return doc is not None and (doc.mime_type or "").lower().startswith("image/")


def photo_source(message: Message) -> Message | None:
    """The message whose image a command uses: its own (caption) or the one it replies to."""
    if has_image(message):
        return message
    target = message.reply_to_message
    return target if has_image(target) else None


async def run_prompt(
    message: Message,
    context: BotContext,
    caller: Caller,
    *,
    base_type: str,
    text: str,
    usage_key: str,
    usage_params: dict[str, Any] | None = None,
    image: InputImage | None = None,
) -> RunRecord | None:
    """Parse ``text``'s parameters, add reference photos, and :func:`submit`."""
    try:
        prepared = prepare(
            text, _user_fields(caller), type_name=base_type, takes_image=image is not None
        )
    except ParamError as err:
        await message.reply_text(
            error_text(context.services.i18n.t, caller.lang, err), parse_mode=None
        )
        return None
    if not prepared.prompt:
        await context.reply(usage_key, **(usage_params or {}))
        return None
    type_, base = base_type, prepared.fields
    if prepared.references:
        source = photo_source(message)
        if source is None:
            await context.reply("params.reference_needs_photo")
            return None
        reference = await fetch_image(context, source)
        if reference is None:
            return None
        type_ = reference_type(base_type, prepared.references)
        base.update(reference_fields(prepared.references, reference))
    return await submit(
        message, context, caller, type_=type_, prompt=prepared.prompt, image=image, base=base
    )


def _command_text(message: Message) -> str | None:
    return message.text if message.text is not None else message.caption


def prompt_command(base_type: str, usage_key: str) -> Any:
    """The callback of ``/make``-like commands (text, or a photo with the command as its
    caption for the reference flags)."""

    async def command(update: Update, context: BotContext) -> None:
        message = update.effective_message
        caller = await context.caller()
        if message is None or caller is None:
            return
        text = _command_text(message)
        if not addressed_to_us(text, context):
            return
        await run_prompt(
            message,
            context,
            caller,
            base_type=base_type,
            text=command_args(text),
            usage_key=usage_key,
        )

    command.__name__ = f"{base_type.lower()}_command"
    return command


make_command = prompt_command("MAKE", "gen.make_usage")
quickmake_command = prompt_command("QUICKMAKE", "actions.quickmake_usage")


def register_prompt_commands(application: Application) -> None:  # type: ignore[type-arg]
    """/make, /quickmake (also as a photo's caption, for --style/--pose/--canny). The
    commands of admin-added types are a flow (``handlers/custom_flow.py``)."""
    application.add_handler(CommandHandler("make", make_command))
    application.add_handler(CommandHandler("quickmake", quickmake_command))
    for name, callback in (("make", make_command), ("quickmake", quickmake_command)):
        application.add_handler(MessageHandler(IMAGE_MESSAGE & caption_command(name), callback))
