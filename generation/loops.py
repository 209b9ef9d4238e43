"""The background tasks of ``GenerationService``: the workers that dispatch queued runs, and
the timers (polling backstop and deadlines, maintenance) whose failures are logged, never
fatal."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from generation.errors import BackendError
from generation.scheduler import FairScheduler, QueueItem
from generation.tracker import RunTracker

log = logging.getLogger(__name__)


async def worker(
    scheduler: FairScheduler,
    dispatch: Callable[[QueueItem], Awaitable[None]],
    tracker: RunTracker,
    busy: set[asyncio.Task[Any]],
    stopping: Callable[[], bool],
) -> None:
    """Take runs from the queue and dispatch them until ``stopping()``; while dispatching,
    the task is in ``busy`` (``GenerationService.stop`` lets those finish first)."""
    me = asyncio.current_task()
    assert me is not None
    while not stopping():
        item = await scheduler.take()
        busy.add(me)
        try:
            await dispatch(item)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("run %s: dispatch crashed", item.run_id)
            await tracker.fail(item.run_id, BackendError(f"internal error: {exc!r}"))
        finally:
            busy.discard(me)


async def every(interval: float, tick: Callable[[], Awaitable[Any]], what: str) -> None:
    """Await ``tick()`` every ``interval`` seconds, for ever."""
    while True:
        await asyncio.sleep(interval)
        try:
            await tick()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s failed", what)
