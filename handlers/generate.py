"""/make and /i2i, and the one path every generation takes: :func:`submit`.

``submit`` builds a ``GenerationRequest`` from the prompt and the user's settings, checks the
price against the balance (no run is created when the user cannot pay), calls
``GenerationService.generate`` (which returns at once), sends the progress message with its
Cancel button as a reply to the request and hands it to the :class:`ProgressRenderer`.

``/make`` without a prompt answers with a usage hint (a one-line command is easier to repeat
than a conversation). ``/i2i`` takes the photo from the same message (caption), from the
message it replies to, or asks for it (a short conversation with a timeout; ``/cancel`` ends
it). When no prompt came with the photo, it asks for the prompt too.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from pydantic import ValidationError
from telegram import Message, Update
from telegram.ext import (
    Application,
    CommandHandler,
    ConversationHandler,
    MessageHandler,
    TypeHandler,
    filters,
)

from generation.errors import GenerationError
from generation.models import RunRecord
from generation.request import (
    MAX_PROMPT_LENGTH,
    GenerationContext,
    GenerationRequest,
    InputImage,
)
from handlers.common import Caller, Context, caller_of, command_args, reply, reply_to
from handlers.deps import HandlerConfig, Services, get_services
from handlers.errors import error_text
from handlers.media import MediaError, download_image, image_ref
from handlers.progress import cancel_keyboard

log = logging.getLogger(__name__)

I2I_WAIT_PHOTO, I2I_WAIT_PROMPT = range(2)
FLOWS = ("i2i", "inpaint")
_IMAGE_FIELDS = ("image", "mask", "control_image", "style_image", "pose_image")
_SETTINGS_FIELDS = ("width", "height", "steps", "seed", "negative_prompt", "checkpoint")

IMAGE_MESSAGE = filters.PHOTO | filters.Document.ALL


def caption_command(name: str) -> filters.MessageFilter:
    """A photo/document whose caption starts with ``/name`` (CommandHandler ignores captions)."""
    return filters.CaptionRegex(re.compile(rf"^/{name}(?:@\w+)?(?:\s|$)", re.IGNORECASE))


def addressed_to_us(text: str | None, context: Context) -> bool:
    """``/cmd@OtherBot`` in a group is not for us."""
    match = re.match(r"^/\w+@(\w+)", text or "")
    return match is None or match.group(1).lower() == (context.bot.username or "").lower()


def _meta(message: Message, caller: Caller, prompt: str) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "lang": caller.lang,
        "reply_to_message_id": message.message_id,
        "chat_type": message.chat.type,
        "prompt": prompt,
    }
    if message.is_topic_message and message.message_thread_id:
        meta["message_thread_id"] = message.message_thread_id
    return meta


def _user_fields(caller: Caller) -> dict[str, Any]:
    settings = caller.settings
    fields: dict[str, Any] = {}
    for name in _SETTINGS_FIELDS:
        value = getattr(settings, name, None)
        if value is not None:
            fields[name] = value
    return fields


async def submit(
    message: Message,
    context: Context,
    caller: Caller,
    *,
    type_: str,
    prompt: str,
    image: InputImage | None = None,
    mask: InputImage | None = None,
    inpaint_target: str | None = None,
    base: dict[str, Any] | None = None,
) -> RunRecord | None:
    """Start one generation and show its progress message; ``None`` when refused (the user
    has been told why)."""
    services = get_services(context)
    lang = caller.lang
    if message.from_user is not None and not message.from_user.is_bot:
        seen = await services.storage.runs.find_run_for_message(
            caller.user_id, message.chat_id, message.message_id
        )
        if seen is not None:  # the same message again (redelivered after a restart)
            log.info("message %s already started run %s", message.message_id, seen.id)
            if seen.progress_message_id is None and not seen.is_terminal:
                await show_progress_message(message, services, seen, lang)
            return seen
    prompt = (prompt or "").strip()
    if len(prompt) > MAX_PROMPT_LENGTH:
        await reply(
            message,
            services,
            lang,
            "gen.prompt_too_long",
            limit=MAX_PROMPT_LENGTH,
            length=len(prompt),
        )
        return None
    fields: dict[str, Any] = base.copy() if base else _user_fields(caller)
    fields.update(
        type=type_,
        prompt=prompt,
        user_id=caller.user_id,
        chat_id=message.chat_id,
        image=image,
        mask=mask,
        inpaint_target=inpaint_target,
    )
    try:
        request = GenerationRequest(**fields)
    except ValidationError as exc:
        log.info("invalid request from user %s: %s", caller.user_id, exc.errors()[:3])
        await reply(message, services, lang, "error.INVALID_INPUT")
        return None

    price = await services.storage.prices.get(request.type)
    if price > 0:
        balance = await services.storage.ledger.get_balance(caller.user_id)
        if balance < price:
            await reply(
                message, services, lang, "gen.insufficient_balance", price=price, balance=balance
            )
            return None
    gen_context = GenerationContext(price=price, meta=_meta(message, caller, prompt))
    try:
        run = await services.generation.generate(request, gen_context)
    except GenerationError as exc:
        log.info("generation refused for user %s: %s", caller.user_id, exc.code)
        await message.reply_text(
            error_text(services.i18n, lang, exc),
            parse_mode=None,
            reply_parameters=reply_to(message.message_id),
        )
        return None
    await show_progress_message(message, services, run, lang)
    return run


async def show_progress_message(
    message: Message, services: Services, run: RunRecord, lang: str
) -> None:
    """Send the progress message (queued · position N + Cancel) and register it."""
    renderer = services.extras.get("progress")
    if renderer is not None:
        text = renderer.initial_text(run, lang)
        markup = renderer.cancel_markup(run.id, lang)
    else:  # no renderer attached: a static message, still with its Cancel button
        text = services.i18n.t(lang, "progress.submitting")
        markup = cancel_keyboard(services.i18n, run.id, lang)
    sent = await message.reply_text(
        text, reply_markup=markup, parse_mode=None, reply_parameters=reply_to(message.message_id)
    )
    try:
        await services.generation.attach_progress_message(run.id, sent.message_id)
    except GenerationError:
        log.warning("run %s vanished before its progress message was attached", run.id)
    if renderer is not None:
        renderer.register(run, sent.message_id, text)


async def resubmit(update: Update, context: Context, run: RunRecord) -> RunRecord | None:
    """ "Again with a new seed": the stored request of ``run`` with seed −1, for the presser."""
    message = update.effective_message
    caller = await caller_of(update, context)
    if message is None or caller is None:
        return None
    stored = dict(run.request or {})
    base = {
        name: value
        for name, value in stored.items()
        if name in GenerationRequest.model_fields and name not in _IMAGE_FIELDS
    }
    base["seed"] = -1
    prompt = str((run.meta or {}).get("prompt") or stored.get("prompt") or "")
    return await submit(
        message,
        context,
        caller,
        type_=run.type,
        prompt=prompt,
        inpaint_target=base.pop("inpaint_target", None),
        base=base,
    )


# -- /make -------------------------------------------------------------------------------------


async def make_command(update: Update, context: Context) -> None:
    message = update.effective_message
    caller = await caller_of(update, context)
    if message is None or caller is None or not addressed_to_us(message.text, context):
        return
    prompt = command_args(message.text)
    if not prompt:
        await reply(message, get_services(context), caller.lang, "gen.make_usage")
        return
    await submit(message, context, caller, type_="MAKE", prompt=prompt)


# -- /i2i ----------------------------------------------------------------------------------------


def _flow_key(name: str, message: Message) -> str:
    return f"flow:{name}:{message.chat_id}"


def flow_data(context: Context, name: str, message: Message) -> dict[str, Any]:
    assert context.user_data is not None
    return context.user_data.setdefault(_flow_key(name, message), {})


def clear_flow(context: Context, name: str, message: Message) -> None:
    if context.user_data is not None:
        context.user_data.pop(_flow_key(name, message), None)


def flow_key_exists(context: Context, name: str, message: Message) -> bool:
    return context.user_data is not None and _flow_key(name, message) in context.user_data


def clear_flows(context: Context, message: Message) -> None:
    """Drop the data of every multi-step flow of this user in this chat."""
    for name in FLOWS:
        clear_flow(context, name, message)


async def fetch_image(
    message: Message, context: Context, caller: Caller, source: Message | None
) -> InputImage | None:
    """Download the image of ``source``; on a problem tell the user and return ``None``."""
    services = get_services(context)
    try:
        ref = image_ref(source)
        if ref is None:
            return None
        return await download_image(context.bot, ref)
    except MediaError as exc:
        await reply(message, services, caller.lang, exc.key, **exc.params)
        return None


async def _i2i_go(
    message: Message, context: Context, caller: Caller, image: InputImage, prompt: str
) -> int:
    if not prompt:
        flow = flow_data(context, "i2i", message)
        flow["image"] = image
        await reply(message, get_services(context), caller.lang, "i2i.send_prompt")
        return I2I_WAIT_PROMPT
    clear_flow(context, "i2i", message)
    await submit(message, context, caller, type_="I2I", prompt=prompt, image=image)
    return ConversationHandler.END


async def i2i_command(update: Update, context: Context) -> int | None:
    message = update.effective_message
    caller = await caller_of(update, context)
    if message is None or caller is None or not addressed_to_us(message.text, context):
        return None
    prompt = command_args(message.text)
    clear_flows(context, message)
    target = message.reply_to_message
    if target is not None and (target.photo or target.document):
        image = await fetch_image(message, context, caller, target)
        if image is None:
            return ConversationHandler.END
        return await _i2i_go(message, context, caller, image, prompt)
    flow_data(context, "i2i", message)["prompt"] = prompt
    await reply(message, get_services(context), caller.lang, "i2i.send_photo")
    return I2I_WAIT_PHOTO


async def i2i_caption(update: Update, context: Context) -> int | None:
    """A photo (or image document) sent with ``/i2i <prompt>`` as its caption."""
    message = update.effective_message
    caller = await caller_of(update, context)
    if message is None or caller is None or not addressed_to_us(message.caption, context):
        return None
    clear_flows(context, message)
    image = await fetch_image(message, context, caller, message)
    if image is None:
        return ConversationHandler.END
    return await _i2i_go(message, context, caller, image, command_args(message.caption))


async def i2i_photo(update: Update, context: Context) -> int:
    """The photo sent next, after ``/i2i``."""
    message = update.effective_message
    caller = await caller_of(update, context)
    assert message is not None and caller is not None
    image = await fetch_image(message, context, caller, message)
    if image is None:
        return I2I_WAIT_PHOTO  # told why; still waiting for a usable photo
    flow = flow_data(context, "i2i", message)
    prompt = flow.get("prompt") or (message.caption or "").strip()
    return await _i2i_go(message, context, caller, image, prompt)


async def i2i_prompt(update: Update, context: Context) -> int:
    message = update.effective_message
    caller = await caller_of(update, context)
    assert message is not None and caller is not None
    flow = flow_data(context, "i2i", message)
    image = flow.get("image")
    if image is None:  # the state was lost (restart): start over
        clear_flow(context, "i2i", message)
        await reply(message, get_services(context), caller.lang, "i2i.send_photo")
        return I2I_WAIT_PHOTO
    return await _i2i_go(message, context, caller, image, (message.text or "").strip())


async def i2i_reminder(update: Update, context: Context) -> int | None:
    message = update.effective_message
    caller = await caller_of(update, context)
    if message is None or caller is None:
        return None
    await reply(message, get_services(context), caller.lang, "i2i.send_photo")
    return None  # stay in the current state


async def flow_timeout(update: Update, context: Context) -> None:
    """A multi-step flow waited too long: say so and drop its data."""
    message = update.effective_message if isinstance(update, Update) else None
    if message is None:
        return
    clear_flows(context, message)
    caller = await caller_of(update, context)
    if caller is not None:
        await reply(message, get_services(context), caller.lang, "common.flow_timeout")


def build_flows(application: Application, fallbacks: list[Any]) -> ConversationHandler:
    """/i2i and /inpaint share one ConversationHandler, so a user is in at most one flow per
    chat: starting one (``allow_reentry``) replaces the other instead of both waiting for the
    same photo."""
    from handlers.inpaint import inpaint_entry_points, inpaint_states

    return ConversationHandler(
        entry_points=[*i2i_entry_points(), *inpaint_entry_points()],
        states={
            **i2i_states(),
            **inpaint_states(),
            ConversationHandler.TIMEOUT: [TypeHandler(Update, flow_timeout)],
        },
        fallbacks=fallbacks,
        conversation_timeout=conversation_timeout(application),
        name="flows",
        allow_reentry=True,
    )


def conversation_timeout(application: Application) -> float:
    services = application.bot_data.get("services")
    config = services.config if services is not None else HandlerConfig()
    return config.conversation_timeout


def i2i_entry_points() -> list[Any]:
    return [
        CommandHandler("i2i", i2i_command),
        MessageHandler(IMAGE_MESSAGE & caption_command("i2i"), i2i_caption),
    ]


def i2i_states() -> dict[object, list[Any]]:
    return {
        I2I_WAIT_PHOTO: [
            MessageHandler(IMAGE_MESSAGE, i2i_photo),
            MessageHandler(~filters.COMMAND, i2i_reminder),
        ],
        I2I_WAIT_PROMPT: [
            MessageHandler(filters.TEXT & ~filters.COMMAND, i2i_prompt),
            MessageHandler(IMAGE_MESSAGE, i2i_photo),
        ],
    }


def register_generate(application: Application) -> None:
    application.add_handler(CommandHandler("make", make_command))
