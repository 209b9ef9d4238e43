"""Small helpers shared by the handlers that need no services: group chats, command words,
whether a command is addressed to us, and the filters of image messages."""

from __future__ import annotations

import re

from telegram.constants import ChatType
from telegram.ext import filters

from handlers.context import BotContext

IMAGE_MESSAGE = filters.PHOTO | filters.Document.ALL
# What a waiting flow step takes: not a message that is another command, as text or as a
# caption (a document captioned /workflow add, a photo captioned /make --style go there).
_NO_CAPTION_COMMAND = ~filters.CaptionRegex(r"^/[A-Za-z0-9_]")
FLOW_IMAGE = IMAGE_MESSAGE & _NO_CAPTION_COMMAND
FLOW_OTHER = ~filters.COMMAND & _NO_CAPTION_COMMAND


def is_group(chat_type: str | None) -> bool:
    return chat_type in (ChatType.GROUP, ChatType.SUPERGROUP)


def command_args(text: str | None) -> str:
    """Everything after the command word (``/make@bot a b`` → ``"a b"``), newlines kept."""
    if not text:
        return ""
    parts = text.split(maxsplit=1)
    return parts[1].strip() if len(parts) > 1 else ""


def caption_command(name: str) -> filters.MessageFilter:
    """A photo/document whose caption starts with ``/name`` (CommandHandler ignores captions)."""
    return filters.CaptionRegex(re.compile(rf"^/{name}(?:@\w+)?(?:\s|$)", re.IGNORECASE))


def addressed_to_us(text: str | None, context: BotContext) -> bool:
    """``/cmd@OtherBot`` in a group is not for us."""
    match = re.match(r"^/\w+@(\w+)", text or "")
    return match is None or match.group(1).lower() == (context.bot.username or "").lower()
