"""A ``--batch 2..4`` result as one media group, Midjourney style: the images arrive as one
album (the caption on the first), then one message with the per-image buttons (U1…U4 upscale,
V1…V4 vary) — Telegram albums cannot carry buttons. The file id of every image is recorded
for the actions (:func:`handlers.actions.record_delivered`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from telegram import InlineKeyboardMarkup, InputMediaPhoto, Message

from handlers.actions import record_delivered

Send = Callable[..., Awaitable[Any]]  # (method name, **kwargs) -> the Bot API result
MIN_ALBUM, MAX_ALBUM = 2, 10
_ALBUM_KWARGS = ("chat_id", "reply_parameters", "message_thread_id")


async def send_album(
    send: Send,
    storage: Any,
    run_id: str,
    items: Sequence[tuple[int, bytes, str]],
    *,
    caption: str,
    base: dict[str, Any],
    keyboard: InlineKeyboardMarkup | None,
    keyboard_text: str,
) -> int:
    """Send ``items`` (output index, photo bytes, file name) as one album and the keyboard
    message; returns how many images Telegram accepted."""
    if not MIN_ALBUM <= len(items) <= MAX_ALBUM:
        raise ValueError("an album holds 2 to 10 images")
    media = [
        InputMediaPhoto(data, filename=name, caption=caption if n == 0 else None, parse_mode=None)
        for n, (_, data, name) in enumerate(items)
    ]
    kwargs = {k: v for k, v in base.items() if k in _ALBUM_KWARGS}
    messages: Sequence[Message] = await send("send_media_group", media=media, **kwargs)
    for (index, _, _), message in zip(items, messages, strict=False):
        await record_delivered(storage, run_id, index, message)
    if keyboard is not None and messages:
        await send(
            "send_message",
            text=keyboard_text,
            reply_markup=keyboard,
            **{**base, "reply_parameters": _reply(messages[0])},
        )
    return len(messages)


def _reply(message: Message) -> Any:
    from handlers.context import reply_to

    return reply_to(message.message_id)
