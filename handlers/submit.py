"""The one path every generation takes: request → ``GenerationService`` → progress message.

:func:`submit` builds a ``GenerationRequest`` from the prompt and the user's settings, checks
the price against the balance (no run is created when the user cannot pay), calls
``GenerationService.generate`` (which returns at once), lets the worker post the create-run
first (``GenerationService.submitted``, bounded), then sends the progress message with its
Cancel button as a reply to the request and hands it to the progress renderer. The same
message delivered twice (after a restart) starts no second run.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from pydantic import ValidationError
from telegram import Message

from generation.errors import ErrorCode, GenerationError
from generation.models import RunRecord
from generation.params import REFERENCE_FLAGS, ParamError
from generation.request import (
    IMAGE_FIELDS,
    MAX_PROMPT_LENGTH,
    GenerationContext,
    GenerationRequest,
    InputImage,
)
from handlers.access import check_generation
from handlers.context import BotContext, Caller, reply_to
from handlers.deps import Services
from handlers.errors import error_key, error_text
from handlers.keyboards import cancel_keyboard
from handlers.origin import Origin
from handlers.prompt_params import error_text as param_error_text
from handlers.prompt_params import prepare

log = logging.getLogger(__name__)

_SETTINGS_FIELDS = ("width", "height", "steps", "seed", "negative_prompt", "checkpoint")


def _user_fields(caller: Caller) -> dict[str, Any]:
    settings = caller.settings.model_dump()
    return {name: settings[name] for name in _SETTINGS_FIELDS if settings[name] is not None}


async def _already_started(
    message: Message, services: Services, caller: Caller, callback_query_id: str | None = None
) -> RunRecord | None:
    """The run this very message (or button press) started before (redelivered after a
    restart)."""
    runs = services.storage.runs
    if callback_query_id:
        seen = await runs.find_run_for_callback(caller.user_id, callback_query_id)
    elif message.from_user is None or message.from_user.is_bot:
        return None
    else:
        seen = await _message_run(message, services, caller)
    if seen is not None:
        log.info("message %s already started run %s", message.message_id, seen.id)
        if seen.progress_message_id is None and not seen.is_terminal:
            await show_progress_message(message, services, seen, caller.lang)
    return seen


async def _message_run(message: Message, services: Services, caller: Caller) -> RunRecord | None:
    """The run this message started: from this process's memory, or — when the message may
    be a redelivery from before this process started — from the database."""
    recent = services.recent_messages
    run_id = recent.run_id(_message_key(message, caller))
    if run_id is not None:
        return await services.storage.runs.get_run(run_id)
    if not recent.needs_lookup(_sent_at(message)):
        return None
    return await services.storage.runs.find_run_for_message(
        caller.user_id, message.chat_id, message.message_id
    )


def _sent_at(message: Message) -> float | None:
    return message.date.timestamp() if message.date is not None else None


def _message_key(message: Message, caller: Caller) -> tuple[int, int, int]:
    return (caller.user_id, message.chat_id, message.message_id)


async def submit(
    message: Message,
    context: BotContext,
    caller: Caller,
    *,
    type_: str,
    prompt: str,
    image: InputImage | None = None,
    mask: InputImage | None = None,
    inpaint_target: str | None = None,
    base: dict[str, Any] | None = None,
    callback_query_id: str | None = None,
) -> RunRecord | None:
    """Start one generation and show its progress message; ``None`` when refused (the user
    has been told why). ``callback_query_id``: the button press that asked for it."""
    services = context.services
    seen = await _already_started(message, services, caller, callback_query_id)
    if seen is not None:
        return seen
    if base is None:  # inline parameters (callers that parsed them pass ``base``)
        parsed = await _with_params(message, context, caller, type_, prompt, image)
        if parsed is None:
            return None
        prompt, base = parsed
    prompt = (prompt or "").strip()
    if len(prompt) > MAX_PROMPT_LENGTH:
        await context.reply("gen.prompt_too_long", limit=MAX_PROMPT_LENGTH, length=len(prompt))
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
        # Without the input values: the prompt must not reach the logs at INFO.
        errors = exc.errors(include_input=False, include_url=False, include_context=False)
        log.info("invalid request from user %s: %s", caller.user_id, errors[:3])
        await context.reply("error.INVALID_INPUT")
        return None

    try:
        await check_generation(context, caller.user_id, message.chat_id)  # ACCESS=paid
    except GenerationError as exc:
        await context.reply(error_key(exc.code))
        return None
    price = await services.storage.prices.get(request.type)
    if price > 0:
        balance = await services.storage.ledger.get_balance(caller.user_id)
        if balance < price:
            await context.reply("gen.insufficient_balance", price=price, balance=balance)
            return None
    origin = Origin.of_message(message, caller.lang, prompt)
    if callback_query_id:
        origin = dataclasses.replace(origin, callback_query_id=callback_query_id)
    try:
        run = await services.generation.generate(
            request, GenerationContext(price=price, meta=origin.to_meta())
        )
    except GenerationError as exc:
        log.info("generation refused for user %s: %s", caller.user_id, exc.code)
        if exc.code is ErrorCode.NO_DEPLOYMENTS_AVAILABLE and (
            caller.user_id in services.config.admin_ids
        ):  # tell an admin what is missing and how to add it
            await context.reply("actions.no_deployment_admin", type=request.type)
            return None
        await message.reply_text(
            error_text(services.i18n, caller.lang, exc),
            parse_mode=None,
            reply_parameters=reply_to(message.message_id),
        )
        return None
    if not callback_query_id:  # a redelivery of this message finds the run (no DB read)
        key = _message_key(message, caller)
        services.recent_messages.remember(key, run.id, _sent_at(message))
    if services.progress is not None:  # before any await: the run's first events find it
        services.progress.track(run)
    if image is None and mask is None:  # (with images the worker may upload them first)
        # The create-run leaves first, the progress message right behind it.
        await services.generation.submitted(run.id)
    await show_progress_message(message, services, run, caller.lang)
    return run


async def _with_params(
    message: Message,
    context: BotContext,
    caller: Caller,
    type_: str,
    prompt: str,
    image: InputImage | None,
) -> tuple[str, dict[str, Any]] | None:
    """The prompt without its inline parameters and the request fields they set; ``None``
    when a parameter cannot be used (the user has been told which and why)."""
    try:
        prepared = prepare(
            prompt or "", _user_fields(caller), type_name=type_, takes_image=image is not None
        )
        if prepared.references:  # reference photos come with /make and /quickmake only
            flag = next(k for k, v in REFERENCE_FLAGS.items() if v in prepared.references)
            raise ParamError(flag, "unsupported")
    except ParamError as err:
        await message.reply_text(
            param_error_text(context.services.i18n.t, caller.lang, err),
            parse_mode=None,
            reply_parameters=reply_to(message.message_id),
        )
        return None
    if prompt and prompt.strip() and not prepared.prompt:
        await context.reply("gen.need_prompt")
        return None
    return prepared.prompt, prepared.fields


async def show_progress_message(
    message: Message, services: Services, run: RunRecord, lang: str
) -> None:
    """Send the progress message (queued · position N + Cancel) and register it."""
    renderer = services.progress
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


async def resubmit(
    message: Message, context: BotContext, run: RunRecord, callback_query_id: str | None = None
) -> RunRecord | None:
    """ "Again with a new seed": the stored request of ``run`` with seed −1, for the presser."""
    caller = await context.caller()
    if caller is None:
        return None
    stored = dict(run.request or {})
    base = {
        name: value
        for name, value in stored.items()
        if name in GenerationRequest.model_fields and name not in IMAGE_FIELDS
    }
    base["seed"] = -1
    return await submit(
        message,
        context,
        caller,
        type_=run.type,
        prompt=Origin.of(run).prompt_of(run),
        inpaint_target=base.pop("inpaint_target", None),
        base=base,
        callback_query_id=callback_query_id,
    )
