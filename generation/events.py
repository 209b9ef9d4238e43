"""Typed generation events and a small in-process async event bus.

Publishing never blocks on subscribers: each subscriber has its own bounded queue and its
own task, so a slow or failing subscriber cannot stall or break the others. When a
subscriber's queue is full, droppable events (progress) are dropped for that subscriber;
other events wait for room only in that subscriber's own queue task, never in ``publish``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import ClassVar

from generation.models import MediaOutput, RunStatus

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class GenerationEvent:
    name: ClassVar[str] = "generation:event"
    droppable: ClassVar[bool] = False
    run_id: str
    user_id: int
    chat_id: int


@dataclass(frozen=True, slots=True)
class GenerationQueued(GenerationEvent):
    """The request waits in the bot's own fair queue (position is 1-based)."""

    name: ClassVar[str] = "generation:queued"
    droppable: ClassVar[bool] = True
    position: int = 0


@dataclass(frozen=True, slots=True)
class GenerationStarted(GenerationEvent):
    """The backend accepted the run (create-run returned a run id)."""

    name: ClassVar[str] = "generation:started"
    backend_run_id: str = ""
    deployment_id: str = ""


@dataclass(frozen=True, slots=True)
class GenerationProgress(GenerationEvent):
    name: ClassVar[str] = "generation:progress"
    droppable: ClassVar[bool] = True
    status: RunStatus = RunStatus.WAITING
    progress: float = 0.0
    live_status: str | None = None
    queue_position: int | None = None


@dataclass(frozen=True, slots=True)
class GenerationCompleted(GenerationEvent):
    name: ClassVar[str] = "generation:completed"
    outputs: tuple[MediaOutput, ...] = ()


@dataclass(frozen=True, slots=True)
class GenerationFailed(GenerationEvent):
    name: ClassVar[str] = "generation:failed"
    error_code: str = "RUN_FAILED"
    message: str = ""


@dataclass(frozen=True, slots=True)
class GenerationCancelled(GenerationEvent):
    name: ClassVar[str] = "generation:cancelled"


@dataclass(frozen=True, slots=True)
class MediaAvailable(GenerationEvent):
    name: ClassVar[str] = "media:available"
    output: MediaOutput | None = None
    index: int = 0


Handler = Callable[[GenerationEvent], Awaitable[None]]


@dataclass(eq=False)
class _Subscription:
    handler: Handler
    types: tuple[type[GenerationEvent], ...]
    maxsize: int
    queue: deque[GenerationEvent] = field(default_factory=deque)
    wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    idle: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    dropped: int = 0


class EventBus:
    """Fan-out of events to subscribers, each served by its own task."""

    def __init__(self, *, max_pending: int = 1000) -> None:
        self._subs: list[_Subscription] = []
        self._max_pending = max_pending
        self._closed = False

    def subscribe(
        self,
        handler: Handler,
        *types: type[GenerationEvent],
        max_pending: int | None = None,
    ) -> Callable[[], None]:
        """Call ``handler`` for every event of the given types (all when none given).

        Returns an ``unsubscribe`` callable."""
        sub = _Subscription(handler, types or (GenerationEvent,), max_pending or self._max_pending)
        self._subs.append(sub)
        return lambda: self.unsubscribe(handler)

    def unsubscribe(self, handler: Handler) -> None:
        for sub in [s for s in self._subs if s.handler is handler]:
            self._subs.remove(sub)
            if sub.task is not None:
                sub.task.cancel()

    def publish(self, event: GenerationEvent) -> None:
        """Queue ``event`` for every matching subscriber. Never blocks, never raises."""
        if self._closed:
            return
        for sub in self._subs:
            if not isinstance(event, sub.types):
                continue
            if len(sub.queue) >= sub.maxsize:
                if event.droppable:
                    sub.dropped += 1
                    continue
                # Make room by dropping the oldest droppable event, if any.
                for i, queued in enumerate(sub.queue):
                    if queued.droppable:
                        del sub.queue[i]
                        sub.dropped += 1
                        break
            sub.queue.append(event)
            sub.idle.clear()
            sub.wakeup.set()
            if sub.task is None or sub.task.done():
                sub.task = asyncio.get_running_loop().create_task(self._serve(sub))

    async def _serve(self, sub: _Subscription) -> None:
        while True:
            while sub.queue:
                event = sub.queue.popleft()
                try:
                    await sub.handler(event)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception(
                        "event subscriber failed on %s (run %s)", event.name, event.run_id
                    )
            sub.wakeup.clear()
            sub.idle.set()
            if self._closed:
                return
            await sub.wakeup.wait()

    async def drain(self) -> None:
        """Wait until every subscriber has handled everything published so far (for tests
        and shutdown)."""
        for sub in list(self._subs):
            if sub.queue or (sub.task is not None and not sub.task.done()):
                await sub.idle.wait()

    async def aclose(self) -> None:
        self._closed = True
        for sub in self._subs:
            sub.wakeup.set()
            if sub.task is not None:
                sub.task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await sub.task
        self._subs.clear()
