"""Update processor: different chats concurrently, one chat strictly in order.

PTB's default processes updates one at a time; ``concurrent_updates(True)`` runs them all at once,
which breaks ordering within a chat (conversation state, "photo then /i2i"). This processor keys
each update by its chat (falling back to the user, then to "no key" for custom update objects),
serializes updates per key with an :class:`asyncio.Lock`, and bounds how many handler coroutines
run at once. Locks are dropped as soon as no update of that chat is pending, so memory stays flat.

Why two bounds: PTB's own semaphore (``max_concurrent_updates``) is taken *before*
``do_process_update`` runs, i.e. also by updates that merely wait for their chat's lock. If that
were the tight bound, one chat flooding the bot could fill every slot with waiters and stall all
other chats. So the PTB bound is generous (``max_pending``) and the real concurrency bound
(``max_running``) is taken only after the chat lock is held.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Hashable
from typing import Any

from telegram import Update
from telegram.ext import BaseUpdateProcessor


def chat_key(update: object) -> Hashable | None:
    """The ordering key of an update: its chat, else its user, else ``None`` (no ordering)."""
    if isinstance(update, Update):
        if update.effective_chat is not None:
            return ("chat", update.effective_chat.id)
        if update.effective_user is not None:
            return ("user", update.effective_user.id)
    return None


def _close(coroutine: Awaitable[Any]) -> None:
    close = getattr(coroutine, "close", None)
    if close is not None:
        close()  # no-op for a coroutine that already ran


class _Slot:
    __slots__ = ("lock", "users")

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.users = 0


class PerChatUpdateProcessor(BaseUpdateProcessor):
    """Concurrent across chats, sequential within a chat."""

    def __init__(self, max_running: int = 256, max_pending: int = 4096) -> None:
        super().__init__(max_concurrent_updates=max(max_pending, max_running))
        if max_running < 1:
            raise ValueError("max_running must be positive")
        self._running = asyncio.Semaphore(max_running)
        self._slots: dict[Hashable, _Slot] = {}

    @property
    def active_keys(self) -> int:
        """How many chats currently hold or wait for a lock (for tests and metrics)."""
        return len(self._slots)

    async def do_process_update(self, update: object, coroutine: Awaitable[Any]) -> None:
        key = chat_key(update)
        if key is None:
            async with self._running:
                await coroutine
            return
        slot = self._slots.get(key)
        if slot is None:
            slot = self._slots[key] = _Slot()
        slot.users += 1
        try:
            async with slot.lock, self._running:
                await coroutine
        except asyncio.CancelledError:
            _close(coroutine)  # cancelled while waiting: never leave an un-awaited coroutine
            raise
        finally:
            slot.users -= 1
            if slot.users == 0 and self._slots.get(key) is slot:
                del self._slots[key]

    async def initialize(self) -> None:
        """Nothing to allocate."""

    async def shutdown(self) -> None:
        """Nothing to free; pending updates finish through PTB's own stop()."""
