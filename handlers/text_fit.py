"""Localized live status and texts that must fit Telegram's limits. No Telegram calls here.

ComfyDeploy reports ``live_status`` as ComfyUI's English ``"Executing KSampler"``; users see
it through the ``actions.executing`` template (``node`` = the node name). A text longer than
Telegram allows (4096 characters in a message, 1024 in a caption) is cut and ends with a
localized note naming the limit, rather than failing to send.
"""

from __future__ import annotations

import re
from collections.abc import Callable

Translate = Callable[..., str]

MESSAGE_LIMIT = 4096
CAPTION_LIMIT = 1024
_EXECUTING = re.compile(r"^\s*Executing\s+(?:node\s+)?(.{1,80}?)\s*$", re.IGNORECASE)
_MAX_STATUS = 80


def localize_live_status(t: Translate, lang: str, live_status: str | None) -> str | None:
    """``"Executing KSampler"`` → e.g. ``"Schritt: KSampler"``; other statuses pass shortened."""
    if not live_status or not live_status.strip():
        return None
    match = _EXECUTING.match(live_status)
    if match:
        return t(lang, "actions.executing", node=match.group(1))
    text = " ".join(live_status.split())
    return text if len(text) <= _MAX_STATUS else text[: _MAX_STATUS - 1] + "…"


def utf16_len(text: str) -> int:
    """Length as Telegram counts it (UTF-16 code units: an emoji is often 2)."""
    return len(text.encode("utf-16-le")) // 2


def _cut(text: str, units: int) -> str:
    """The longest prefix of ``text`` within ``units`` UTF-16 code units."""
    out, used = [], 0
    for char in text:
        used += 2 if ord(char) > 0xFFFF else 1
        if used > units:
            break
        out.append(char)
    return "".join(out)


def fit(t: Translate, lang: str, text: str, limit: int = MESSAGE_LIMIT) -> str:
    """``text`` unchanged when within ``limit`` (UTF-16 units); else cut, with the note."""
    if utf16_len(text) <= limit:
        return text
    note = "\n\n" + t(lang, "actions.truncated", limit=limit)
    room = max(0, limit - utf16_len(note) - 1)
    return _cut(text, room).rstrip() + "…" + note
