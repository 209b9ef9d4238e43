"""Commands for generation types admins add that the bot does not know (``/animate``).

:class:`~generation.custom_types.CustomTypeRegistry` holds the current types; this module
refreshes it from storage (deployment types + ``/type`` options), matches their commands in
updates (:class:`CustomCommandFilter`: ``/animate``, ``/animate@thisbot``, a photo captioned
``/animate``; not ``/animate@otherbot``) and lists them for /help and the command menu.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any

from telegram import BotCommand, Message, Update
from telegram.ext import filters

from generation.custom_types import CustomType, CustomTypeRegistry, command_for, is_builtin
from handlers.common import addressed_to_us, command_args
from handlers.context import BotContext

Translate = Callable[..., str]
_COMMAND = re.compile(r"^/([A-Za-z0-9_]{1,32})(?:@(\w+))?(?:\s|$)")

# Commands of the bot itself: an admin-added type never shadows one of them
# (tests/test_custom_commands.py checks this holds every registered command).
BUILTIN_COMMANDS = frozenset(
    {
        "start",
        "help",
        "make",
        "quickmake",
        "i2i",
        "inpaint",
        "upscale",
        "cancel",
        "balance",
        "settings",
        "id",
        "user",
        "type",
        "deployments",
        "deployment",
        "loras",
        "lora",
        "price",
        "setbalance",
        "grant",
        "stats",
        "workflow",
        "workflows",
        "checkpoint",
        "checkpoints",
        "buy",
        "refund",
        "payments",
        "paysupport",
        "terms",
        "allow",
        "ban",
        "unban",
    }
)


async def refresh_registry(storage: Any, registry: CustomTypeRegistry) -> bool:
    """Re-read deployment types and type options; True when the commands changed."""
    deployments = await storage.deployments.list_deployments()
    kinds = await storage.type_options.input_kinds()
    return registry.refresh((d.type for d in deployments if d.enabled), kinds)


def command_of(message: Message | None, bot_username: str | None) -> tuple[str, str] | None:
    """``(command, arguments)`` of a text or caption command addressed to us, else None."""
    if message is None:
        return None
    text = message.text if message.text is not None else message.caption
    match = _COMMAND.match(text or "")
    if match is None:
        return None
    addressed = match.group(2)
    if addressed and addressed.lower() != (bot_username or "").lower():
        return None
    return match.group(1).lower(), (text or "")[match.end() :].strip()


class CustomCommandFilter(filters.MessageFilter):
    """Messages whose command is one of the registry's (checked at update time, so a type an
    admin adds works at once, without re-registering handlers)."""

    def __init__(self, registry: CustomTypeRegistry, bot_username: Callable[[], str | None]):
        super().__init__(name="CustomCommandFilter")
        self._registry = registry
        self._bot_username = bot_username

    def filter(self, message: Message) -> bool:
        found = command_of(message, self._bot_username())
        return found is not None and self._registry.by_command(found[0]) is not None


def menu_commands(t: Translate, lang: str, types: Iterable[CustomType]) -> list[BotCommand]:
    """Command-menu entries (``set_my_commands``) of the custom types."""
    return [
        BotCommand(c.command, t(lang, "actions.custom_command_description", type=c.name)[:256])
        for c in types
    ]


def help_lines(t: Translate, lang: str, types: Iterable[CustomType]) -> str:
    """The /help block of custom types ('' when there are none)."""
    types = list(types)
    if not types:
        return ""
    lines = [t(lang, "actions.custom_help_title")]
    for c in types:
        key = "actions.custom_help_line_photo" if c.takes_image else "actions.custom_help_line"
        lines.append(t(lang, key, command=c.command, type=c.name))
    return "\n".join(lines)


async def after_type_change(services: Any) -> None:
    """Refresh the registry after deployments or type options changed; re-publish the
    command menu when the commands changed (``services.publish_commands``, set by bot/)."""
    if await refresh_registry(services.storage, services.custom_types):
        if services.publish_commands is not None:
            await services.publish_commands()


async def type_command(update: Update, context: BotContext) -> None:
    """``/type <TYPE> image|text`` (admins): whether an admin-added type takes a photo."""
    message = update.effective_message
    caller = await context.caller()
    if message is None or caller is None or not addressed_to_us(message.text, context):
        return
    services = context.services
    if caller.user_id not in services.config.admin_ids:
        await context.reply("admin.refused")
        return
    args = command_args(message.text).split()
    if len(args) != 2 or args[1].lower() not in ("image", "text") or not command_for(args[0]):
        await context.reply("actions.type_usage")
        return
    name, kind = args[0].upper(), args[1].lower()
    if is_builtin(name):
        await context.reply("actions.type_builtin", type=name)
        return
    await services.storage.type_options.set_input(name, kind)
    await after_type_change(services)
    key = "actions.type_set_image" if kind == "image" else "actions.type_set_text"
    await context.reply(key, type=name, command=command_for(name))
