"""Orphans: backend runs created for one of our runs that the run does not track. A webhook
for one of our runs naming such a backend run is checked with ``GET /run/{id}`` (its
``webhook`` must be this run's URL, token included), then *adopted* when the run has no
backend run yet (a create whose answer was lost) or *cancelled* at the backend otherwise."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from generation.counters import GenerationCounters
from generation.models import RunStatus
from generation.ports import Backend, RunStore
from generation.tracker import RunTracker

log = logging.getLogger(__name__)


class Orphans:
    def __init__(
        self,
        tracker: RunTracker,
        *,
        runs: RunStore,
        backend: Backend,
        clock: Callable[[], float],
        counters: GenerationCounters,
        webhook_is_ours: Callable[[str, str | None], bool],
    ) -> None:
        self._tracker = tracker
        self._runs = runs
        self._backend = backend
        self._clock = clock
        self._counters = counters
        # (our run id, backend webhook URL) → is that URL the one we gave that run?
        self._webhook_is_ours = webhook_is_ours
        self._seen: set[str] = set()  # backend run ids already adopted/cancelled/checking
        self.cancelled: list[str] = []  # backend run ids cancelled as orphans

    async def foreign_webhook(self, run_id: str, backend_run_id: str) -> bool:
        """A valid webhook of ``run_id`` named ``backend_run_id``, which the run does not
        track: check it, then adopt or cancel it. Each foreign backend run id is handled once
        (its later webhooks cost nothing). False when the backend run was not created for
        ``run_id`` (or could not be checked)."""
        if backend_run_id in self._seen:
            return True
        if len(self._seen) > 100_000:  # bounded memory; a repeat only costs one more GET
            self._seen.clear()
        self._seen.add(backend_run_id)
        return await self._reconcile(run_id, backend_run_id)

    async def _reconcile(self, run_id: str, backend_run_id: str) -> bool:
        try:
            snapshot = await self._backend.get_run(backend_run_id)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("run %s: checking foreign backend run failed: %r", run_id, exc)
            self._seen.discard(backend_run_id)  # the next webhook tries again
            return False
        if snapshot.backend_run_id != backend_run_id or not self._webhook_is_ours(
            run_id, snapshot.webhook
        ):
            log.warning("run %s: a webhook named a backend run not created for it", run_id)
            return False
        known = await self._runs.get_run_by_backend_id(backend_run_id)
        if known is not None and known.id != run_id:
            return False  # another run of ours tracks it
        adopted = False
        async with self._tracker.lock(run_id):
            run = await self._runs.get_run(run_id)
            own = run is not None and run.backend_run_id == backend_run_id
            if own:
                adopted = True  # the create's answer arrived meanwhile: it is this run's own
            elif run is not None and not run.is_terminal and run.backend_run_id is None:
                changes: dict[str, Any] = {
                    "backend_run_id": backend_run_id,
                    "updated_at": self._clock(),
                }
                if run.status.rank < RunStatus.WAITING.rank:
                    changes["status"] = RunStatus.WAITING
                run = await self._runs.update_run(run_id, **changes)
                self._tracker.stop_awaiting(run_id)
                self._tracker.track(run)
                adopted = True
                self._counters.inc("generation_orphans_adopted_total")
        if adopted:
            if not own:
                log.info(
                    "run %s: adopted backend run %s (its create answer was lost)",
                    run_id,
                    backend_run_id,
                )
            await self._tracker.apply(run_id, snapshot, source="confirm")
            return True
        await self.cancel(run_id, backend_run_id)
        return True

    async def cancel(self, run_id: str, backend_run_id: str) -> None:
        """Cancel a backend run created for ``run_id`` that the run does not use."""
        self._seen.add(backend_run_id)
        self.cancelled.append(backend_run_id)
        self._counters.inc("generation_orphans_cancelled_total")
        log.warning("run %s: cancelling orphan backend run %s", run_id, backend_run_id)
        try:
            await self._backend.cancel_run(backend_run_id)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("run %s: cancelling orphan %s failed: %r", run_id, backend_run_id, exc)
