"""Where a result goes and how it was asked for: the typed form of ``RunRecord.meta``.

The submit seam writes an :class:`Origin` into the run's ``meta`` (``to_meta``); progress,
delivery and the result buttons read it back with :meth:`Origin.of`. The keys are the ones
the bot has always stored, so runs written by older versions (crash recovery, old databases)
read the same way. ``delivered_items`` (items of a result already sent) lives in the same
``meta`` and is owned by ``handlers/delivery.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from telegram import Message

from generation.models import RunRecord
from handlers.common import is_group
from handlers.context import reply_to

DELIVERED_ITEMS_KEY = "delivered_items"


@dataclass(frozen=True, slots=True)
class Origin:
    lang: str | None = None  # the requester's language
    reply_to_message_id: int | None = None  # the request message; results reply to it
    chat_type: str | None = None  # "private", "group", ...
    prompt: str = ""  # the prompt as the user typed it (the request holds the final one)
    message_thread_id: int | None = None  # forum topic of the request
    callback_query_id: str | None = None  # the button press that started it ("Again")

    @classmethod
    def of_message(cls, message: Message, lang: str, prompt: str) -> Origin:
        topic = message.message_thread_id if message.is_topic_message else None
        return cls(lang, message.message_id, message.chat.type, prompt, topic or None)

    @classmethod
    def of(cls, run: RunRecord) -> Origin:
        meta = run.meta or {}
        return cls(
            lang=meta.get("lang"),
            reply_to_message_id=meta.get("reply_to_message_id"),
            chat_type=meta.get("chat_type"),
            prompt=str(meta.get("prompt") or ""),
            message_thread_id=meta.get("message_thread_id"),
            callback_query_id=meta.get("callback_query_id"),
        )

    def to_meta(self) -> dict[str, Any]:
        meta: dict[str, Any] = {
            "lang": self.lang,
            "reply_to_message_id": self.reply_to_message_id,
            "chat_type": self.chat_type,
            "prompt": self.prompt,
        }
        if self.message_thread_id:
            meta["message_thread_id"] = self.message_thread_id
        if self.callback_query_id:
            meta["callback_query_id"] = self.callback_query_id
        return meta

    @property
    def group(self) -> bool:
        return is_group(self.chat_type)

    def prompt_of(self, run: RunRecord) -> str:
        """The prompt to show: as typed, else the stored request's."""
        return self.prompt or str((run.request or {}).get("prompt") or "")

    def reply_kwargs(self) -> dict[str, Any]:
        """Bot API arguments that make a message a reply to the request (in its topic)."""
        kwargs: dict[str, Any] = {
            "reply_parameters": reply_to(self.reply_to_message_id),
            "parse_mode": None,
        }
        if self.message_thread_id:
            kwargs["message_thread_id"] = self.message_thread_id
        return kwargs
