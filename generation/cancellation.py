"""Cancelling a run: locally first (from then on late webhooks and polls change nothing),
then on the backend, whose failure is tolerated."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from generation.errors import RunNotFoundError
from generation.models import RunRecord, RunStatus
from generation.ports import Backend, RunStore
from generation.scheduler import FairScheduler
from generation.tracker import RunTracker

log = logging.getLogger(__name__)


async def cancel_run(
    runs: RunStore, scheduler: FairScheduler, tracker: RunTracker, backend: Backend, run_id: str
) -> RunRecord:
    """Cancel a queued or running generation; terminal runs are returned unchanged."""
    run = await runs.get_run(run_id)
    if run is None:
        raise RunNotFoundError("unknown run", run_id=run_id)
    if run.is_terminal:
        return run
    backend_run_id = run.backend_run_id
    scheduler.remove(run_id)
    final = await tracker.finish(run_id, RunStatus.CANCELLED, message="cancelled by the user")
    if final is not None and final.status is RunStatus.CANCELLED and backend_run_id:
        try:
            await backend.cancel_run(backend_run_id)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # tolerated: the run is cancelled locally anyway
            log.info("run %s: backend cancel failed: %r", run_id, exc)
    return final or run


async def cancel_user_runs(
    runs: RunStore, cancel: Callable[[str], Awaitable[RunRecord]], user_id: int
) -> list[RunRecord]:
    """Cancel all of a user's queued and running generations; returns those cancelled."""
    cancelled: list[RunRecord] = []
    for run in await runs.list_user_runs(user_id, active_only=True):
        if run.is_terminal:
            continue
        final = await cancel(run.id)
        if final.status is RunStatus.CANCELLED and not run.is_terminal:
            cancelled.append(final)
    return cancelled
