"""``sendMediaGroup`` for the Bot API emulator core (local mode and the test fake).

Mixed into :class:`bot.local.emulator.BotApiCore`: 2–10 photos/videos (or 2–10 documents) sent
as separate messages sharing one ``media_group_id``, each with its own caption, all replying
to the same message and in the same forum topic; no reply markup (Telegram has none for
albums). Items reference uploads (``attach://name``) or known file ids, like single sends.
"""

from __future__ import annotations

import itertools
from typing import Any

MIN_ITEMS, MAX_ITEMS = 2, 10
_VISUAL = frozenset({"photo", "video"})
_KINDS = frozenset({"photo", "video", "document", "audio"})


class MediaGroupMixin:
    """Adds ``_m_sendMediaGroup``; relies on the core's ``_send_media`` and ``message``."""

    _media_group_seq = itertools.count(13_000_000_000_000_000)

    def _m_sendMediaGroup(self, params: dict[str, Any], files: dict[str, Any]) -> list[Any]:
        from bot.local.emulator import bad_request  # the core imports this module

        core: Any = self
        items = params.get("media")
        if not isinstance(items, list) or not MIN_ITEMS <= len(items) <= MAX_ITEMS:
            raise bad_request("wrong number of media items: a group holds 2 to 10")
        kinds = []
        for item in items:
            kind = item.get("type") if isinstance(item, dict) else None
            if kind not in _KINDS or not item.get("media"):
                raise bad_request("wrong media type in the group")
            kinds.append(kind)
        if not (set(kinds) <= _VISUAL or len(set(kinds)) == 1):
            raise bad_request("documents and audio can only be grouped with their own kind")
        core._known_chat(params)
        group_id = str(next(self._media_group_seq))
        shared = {
            k: params[k]
            for k in ("chat_id", "reply_parameters", "reply_to_message_id", "message_thread_id")
            if k in params
        }
        sent: list[Any] = []
        for item, kind in zip(items, kinds, strict=True):
            one = {**shared, kind: item["media"]}
            if item.get("caption") is not None:
                one["caption"] = item["caption"]
            result = core._send_media(kind, one, files)
            msg = core.message(result["chat"]["id"], result["message_id"])
            msg.media_fields = {**msg.media_fields, "media_group_id": group_id}
            sent.append(core.message_dict(msg))
        return sent
