"""The bot's Telegram rate limiter: PTB's ``AIORateLimiter`` made burst-safe and loss-free.

Two things the stock configuration gets wrong under a burst (found by the 100-user flood test):

* ``AsyncLimiter(30, 1)`` is a leaky bucket: it lets 30 requests out at once and then one every
  33 ms, so within the first second about 60 go out — twice Telegram's "30 per second". Here the
  overall rate is spread evenly (one request per ``1/OVERALL_PER_SECOND`` s, no burst), which never
  puts more than 30 requests into any one-second window.
* With ``max_retries=0`` a ``RetryAfter`` reaches the caller; a handler's plain reply (say the
  progress message of ``/make``) would then crash and be lost. With ``max_retries>0`` the stock
  limiter instead pauses *every* request for ``retry_after``. Here a refused request waits
  ``retry_after`` (plus a margin) and is retried on its own, others keep flowing; only progress
  edits — which the progress renderer drops and supersedes — and callback answers (useless once
  late) are handed back at once.
* A ``retry_after`` concerns the whole chat, not just the refused call: while a chat is blocked,
  other requests to it (a progress edit while a photo waits, say) are held back until the block
  ends — or, when droppable, refused locally with ``RetryAfter`` without reaching Telegram.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable, Coroutine
from typing import Any

from telegram.error import RetryAfter
from telegram.ext import AIORateLimiter

from handlers.progress import retry_after_seconds

log = logging.getLogger(__name__)

OVERALL_PER_SECOND = 29  # a little under Telegram's 30/s, spread evenly
RETRY_ATTEMPTS = 4
RETRY_MARGIN = 0.1
# Returned to the caller on RetryAfter: the renderer drops/retries edits itself.
DROPPABLE_ENDPOINTS = frozenset(
    {"editMessageText", "editMessageCaption", "editMessageReplyMarkup", "answerCallbackQuery"}
)


class BotRateLimiter(AIORateLimiter):
    """Evenly spread overall limit, per-group limit as PTB's, per-request ``retry_after``."""

    def __init__(
        self,
        *,
        sleep: Callable[[float], Any] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
        on_retry_after: Callable[[str], None] | None = None,
    ) -> None:
        """``on_retry_after(endpoint)`` is called for every 429 answer (the metrics count; the
        composition root may set the attribute later)."""
        self.on_retry_after = on_retry_after
        super().__init__(
            overall_max_rate=1,
            overall_time_period=1 / OVERALL_PER_SECOND,
            max_retries=0,
        )
        self._sleep = sleep
        self._clock = clock
        self._blocked: dict[Any, float] = {}  # chat id -> end of its flood-control block

    def _remaining(self, chat_id: Any) -> float:
        until = self._blocked.get(chat_id)
        if until is None:
            return 0.0
        left = until - self._clock()
        if left <= 0:
            del self._blocked[chat_id]
            return 0.0
        return left

    def _block(self, chat_id: Any, seconds: float) -> None:
        until = self._clock() + seconds
        self._blocked[chat_id] = max(until, self._blocked.get(chat_id, until))

    async def process_request(
        self,
        callback: Callable[..., Coroutine[Any, Any, Any]],
        args: Any,
        kwargs: dict[str, Any],
        endpoint: str,
        data: dict[str, Any],
        rate_limit_args: int | None,
    ) -> Any:
        chat_id: Any = data.get("chat_id")
        with contextlib.suppress(ValueError, TypeError):
            chat_id = int(chat_id)
        group: int | str | bool = False
        if (isinstance(chat_id, int) and chat_id < 0) or isinstance(chat_id, str):
            group = chat_id
        attempts = 1 if endpoint in DROPPABLE_ENDPOINTS else RETRY_ATTEMPTS
        if rate_limit_args is not None:
            attempts = max(1, rate_limit_args + 1)
        for attempt in range(1, attempts + 1):
            wait = self._remaining(chat_id)
            if wait > 0:
                if endpoint in DROPPABLE_ENDPOINTS:
                    raise RetryAfter(max(1, math.ceil(wait)))
                await self._sleep(wait + RETRY_MARGIN)
            try:
                return await self._run_request(
                    chat=chat_id is not None,
                    group=group,
                    allow_paid_broadcast=bool(data.get("allow_paid_broadcast", False)),
                    callback=callback,
                    args=args,
                    kwargs=kwargs,
                )
            except RetryAfter as exc:
                if self.on_retry_after is not None:
                    self.on_retry_after(endpoint)
                self._block(chat_id, retry_after_seconds(exc))
                if attempt >= attempts:
                    raise
                delay = retry_after_seconds(exc) + RETRY_MARGIN
                log.info("%s: flood control, retrying in %.1f s", endpoint, delay)
                await self._sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover
