"""The multi-step conversations (/i2i, /inpaint) and their state.

Both share one ``ConversationHandler`` (:func:`build_flows`), so a user is in at most one flow
per chat: starting one (``allow_reentry``) replaces the other instead of both waiting for the
same photo. A flow's data lives in ``context.user_data`` under ``flow:<name>:<chat id>``; a
flow that waits longer than ``conversation_timeout`` says so and drops its data.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from telegram import Message, Update
from telegram.ext import BaseHandler, ConversationHandler, TypeHandler

from generation.images import FLOW_IMAGES
from generation.request import InputImage
from handlers.context import BotContext
from handlers.media import MediaError, download_image, image_ref

FLOWS = ("i2i", "inpaint", "upscale", "custom")


@dataclass(frozen=True, slots=True)
class Flow:
    """One conversation's handlers: how it starts and what each waiting state accepts."""

    entry_points: list[BaseHandler[Any, Any, Any]]
    states: dict[object, list[BaseHandler[Any, Any, Any]]]


def _flow_key(name: str, message: Message) -> str:
    return f"flow:{name}:{message.chat_id}"


def flow_data(context: BotContext, name: str, message: Message) -> dict[str, Any]:
    assert context.user_data is not None
    return context.user_data.setdefault(_flow_key(name, message), {})


def clear_flow(context: BotContext, name: str, message: Message) -> None:
    if context.user_data is not None:
        context.user_data.pop(_flow_key(name, message), None)


def flow_key_exists(context: BotContext, name: str, message: Message) -> bool:
    return context.user_data is not None and _flow_key(name, message) in context.user_data


def clear_flows(context: BotContext, message: Message) -> None:
    """Drop the data of every multi-step flow of this user in this chat."""
    for name in FLOWS:
        clear_flow(context, name, message)


def in_any_flow(context: BotContext, message: Message) -> bool:
    return any(flow_key_exists(context, name, message) for name in FLOWS)


async def fetch_image(context: BotContext, source: Message | None) -> InputImage | None:
    """Download the image of ``source``; on a problem tell the user and return ``None``."""
    try:
        ref = image_ref(source)
        if ref is None:
            return None
        image = await download_image(context.bot, ref)
    except MediaError as exc:
        await context.reply(exc.key, **exc.params)
        return None
    # A process-wide cap on image bytes held by open flows (released when the flow drops it).
    if not FLOW_IMAGES.hold(image, len(image.data)):
        await context.reply("hardening.images_busy")
        return None
    return image


def reminder(key: str) -> Callable[[Update, BotContext], Awaitable[None]]:
    """A callback for anything unexpected while a flow waits: repeat what it waits for and
    stay in the current state."""

    async def remind(update: Update, context: BotContext) -> None:
        if update.effective_message is not None and await context.caller() is not None:
            await context.reply(key)

    return remind


async def flow_timeout(update: object, context: BotContext) -> None:
    """A multi-step flow waited too long: say so and drop its data."""
    message = update.effective_message if isinstance(update, Update) else None
    if message is None:
        return
    clear_flows(context, message)
    if await context.caller() is not None:
        await context.reply("common.flow_timeout")


def build_flows(
    flows: list[Flow], fallbacks: list[BaseHandler[Any, Any, Any]], timeout: float
) -> ConversationHandler[Any]:
    states: dict[object, list[BaseHandler[Any, Any, Any]]] = {}
    for flow in flows:
        states.update(flow.states)
    states[ConversationHandler.TIMEOUT] = [TypeHandler(Update, flow_timeout)]
    return ConversationHandler(
        entry_points=[handler for flow in flows for handler in flow.entry_points],
        states=states,
        fallbacks=fallbacks,
        conversation_timeout=timeout,
        name="flows",
        allow_reentry=True,
    )
