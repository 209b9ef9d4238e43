"""Run tracking: one monotonic state machine per run, fed by webhooks and polling.

Every change of a run after it was accepted goes through :class:`RunTracker`:

* :meth:`RunTracker.apply` merges a :class:`RunSnapshot` (webhook or GET) into the stored run.
  Statuses only move forward (``RunStatus.rank``); a terminal state is final; duplicates and
  out-of-order updates change nothing; within RUNNING the progress only grows. The store is
  written only when something changed, and each change publishes one event.
* :meth:`RunTracker.finish` is the single way a run becomes terminal: persist, release the
  hold when the run did not succeed (before publishing, so the user's balance is right when
  the message arrives), free the scheduler slot, publish the final event(s).
* :meth:`RunTracker.poll_once` and :meth:`RunTracker.check_deadlines` are the polling
  backstop and deadline check; the service's background loop calls them on a timer and tests
  call them directly.
* A webhook reporting success is never taken at its word: the run is finished from the
  answer of ``GET /run/{id}`` (its outputs, its status), fetched in a helper task.
* At most ``max_outputs`` outputs of a run are kept (``MAX_OUTPUTS_PER_RUN``).
* Orphans (issue 11, point 3): a webhook for one of our runs naming a backend run we do not
  track is checked with ``GET /run/{id}`` (its ``webhook`` must be this run's URL, token
  included), then *adopted* when the run has no backend run yet (a create whose answer was
  lost) or *cancelled* at the backend otherwise. A run whose create was uncertain waits for
  adoption until its window ends (:meth:`RunTracker.await_adoption`), then fails as
  SUBMIT_UNCERTAIN.

All changes to one run are serialized by a per-run lock, so a webhook and a poll (or a
cancel) can never interleave their read-modify-write.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from generation.counters import GenerationCounters
from generation.errors import ErrorCode, GenerationError, RunNotFoundError, SubmitUncertainError
from generation.events import (
    EventBus,
    GenerationCancelled,
    GenerationCompleted,
    GenerationEvent,
    GenerationFailed,
    GenerationProgress,
    MediaAvailable,
)
from generation.models import MediaOutput, RunRecord, RunSnapshot, RunStatus
from generation.ports import Backend, BalanceStore, RunStore

log = logging.getLogger(__name__)

_ERROR_FOR_STATUS = {
    RunStatus.FAILED: ErrorCode.RUN_FAILED,
    RunStatus.TIMEOUT: ErrorCode.RUN_TIMEOUT,
}


@dataclass(slots=True)
class _Tracked:
    backend_run_id: str
    deadline_at: float | None
    not_found: int = 0


def completion_events(run: RunRecord) -> list[GenerationEvent]:
    """GenerationCompleted plus one MediaAvailable per output (also used on resume)."""
    events: list[GenerationEvent] = [
        GenerationCompleted(run.id, run.user_id, run.chat_id, outputs=run.outputs)
    ]
    events += [
        MediaAvailable(run.id, run.user_id, run.chat_id, output=output, index=i)
        for i, output in enumerate(run.outputs)
    ]
    return events


class RunTracker:
    def __init__(
        self,
        *,
        runs: RunStore,
        balances: BalanceStore,
        backend: Backend,
        bus: EventBus,
        clock: Callable[[], float] = time.time,
        on_finished: Callable[[RunRecord], None] | None = None,
        not_found_limit: int = 3,
        poll_concurrency: int = 8,
        max_outputs: int = 16,
        webhook_is_ours: Callable[[str, str | None], bool] | None = None,
        counters: GenerationCounters | None = None,
    ) -> None:
        self._runs = runs
        self._balances = balances
        self._backend = backend
        self._bus = bus
        self._clock = clock
        self._on_finished = on_finished
        self._not_found_limit = max(1, not_found_limit)
        self._poll_limit = asyncio.Semaphore(max(1, poll_concurrency))
        self._tracked: dict[str, _Tracked] = {}
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._max_outputs = max(1, max_outputs)
        # (our run id, backend webhook URL) → is that URL the one we gave that run?
        self._webhook_is_ours = webhook_is_ours or (lambda _run_id, _url: False)
        self._awaiting: dict[str, float] = {}  # run id → end of its adoption window
        self._foreign: set[str] = set()  # backend run ids already adopted/cancelled/checking
        self.orphans_cancelled: list[str] = []  # backend run ids cancelled as orphans
        self._counters = counters or GenerationCounters()

    # -- bookkeeping --------------------------------------------------------------------------

    def lock(self, run_id: str) -> asyncio.Lock:
        """The lock serializing every change of ``run_id``."""
        lock = self._locks.get(run_id)
        if lock is None:
            lock = asyncio.Lock()
            self._locks[run_id] = lock
        return lock

    def track(self, run: RunRecord) -> None:
        """Poll ``run`` (which has a backend id) until it ends; watch its deadline."""
        if run.backend_run_id is None or run.is_terminal:
            return
        self._tracked[run.id] = _Tracked(run.backend_run_id, run.deadline_at)

    def untrack(self, run_id: str) -> None:
        self._tracked.pop(run_id, None)
        self._awaiting.pop(run_id, None)

    def await_adoption(self, run_id: str, until: float) -> None:
        """The create of ``run_id`` was uncertain: wait for a webhook of the run it may have
        created until ``until`` (clock time), then fail it as SUBMIT_UNCERTAIN."""
        self._awaiting[run_id] = until

    def is_awaiting(self, run_id: str) -> bool:
        return run_id in self._awaiting

    def is_tracked(self, run_id: str) -> bool:
        return run_id in self._tracked

    @property
    def tracked_ids(self) -> list[str]:
        return list(self._tracked)

    async def aclose(self) -> None:
        """Cancel helper tasks (follow-up polls)."""
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()

    async def drain(self) -> None:
        """Wait for the helper tasks (confirmations, orphan checks) running now, and those
        they start (bounded)."""
        for _ in range(20):
            pending = [t for t in self._tasks if not t.done()]
            if not pending:
                return
            await asyncio.gather(*pending, return_exceptions=True)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    spawn = _spawn  # helper tasks of the service too (cancelled by aclose, awaited by drain)

    # -- state machine ------------------------------------------------------------------------

    async def apply(self, run_id: str, snapshot: RunSnapshot, *, source: str = "poll") -> bool:
        """Merge ``snapshot`` into the run. Returns True when something changed."""
        async with self.lock(run_id):
            run = await self._runs.get_run(run_id)
            if run is None or run.is_terminal:
                return False
            if run.backend_run_id and snapshot.backend_run_id != run.backend_run_id:
                log.warning("run %s: snapshot for another backend run ignored", run_id)
                return False
            status = snapshot.status
            if status.is_terminal:
                if status is RunStatus.SUCCESS and source == "webhook":
                    # Never deliver on a webhook's word: GET (authoritative) confirms it, and
                    # its outputs are the ones delivered.
                    self._spawn(
                        self._confirm(run_id, run.backend_run_id or snapshot.backend_run_id)
                    )
                    return False
                return await self._finish_locked(
                    run,
                    status,
                    outputs=snapshot.outputs,
                    error_code=_ERROR_FOR_STATUS.get(status),
                    message=f"backend status {snapshot.raw_status or status.value}",
                    backend_run_id=snapshot.backend_run_id,
                )
            changes = self._changes(run, snapshot)
            if not changes:
                return False
            changes["updated_at"] = self._clock()
            run = await self._runs.update_run(run_id, **changes)
        self._bus.publish(
            GenerationProgress(
                run.id,
                run.user_id,
                run.chat_id,
                status=run.status,
                progress=run.progress,
                live_status=run.live_status,
                queue_position=run.queue_position,
            )
        )
        return True

    @staticmethod
    def _changes(run: RunRecord, snap: RunSnapshot) -> dict[str, Any]:
        changes: dict[str, Any] = {}
        if run.backend_run_id is None:
            changes["backend_run_id"] = snap.backend_run_id
        if snap.status.rank > run.status.rank:
            changes["status"] = snap.status
            if snap.status is RunStatus.RUNNING:
                changes["progress"] = max(run.progress, snap.progress)
                changes["live_status"] = snap.live_status or run.live_status
        elif snap.status is run.status:
            if run.status is RunStatus.RUNNING and (
                snap.progress > run.progress
                or (snap.progress == run.progress and not run.live_status)
            ):
                changes["progress"] = snap.progress
                if snap.live_status:
                    changes["live_status"] = snap.live_status
        else:
            return {}  # out of order: an older state never replaces a newer one
        status = changes.get("status", run.status)
        if status is RunStatus.WAITING and snap.queue_position != run.queue_position:
            if snap.queue_position is not None:
                changes["queue_position"] = snap.queue_position
        elif status is not RunStatus.WAITING and run.queue_position is not None:
            changes["queue_position"] = None
        return {k: v for k, v in changes.items() if getattr(run, k) != v}

    async def finish(
        self,
        run_id: str,
        status: RunStatus,
        *,
        outputs: tuple[MediaOutput, ...] = (),
        error_code: str | None = None,
        message: str = "",
    ) -> RunRecord | None:
        """Make a run terminal (no-op when it already is). Returns the final record."""
        async with self.lock(run_id):
            run = await self._runs.get_run(run_id)
            if run is None:
                return None
            if run.is_terminal:
                return run
            await self._finish_locked(
                run, status, outputs=outputs, error_code=error_code, message=message
            )
        return await self._runs.get_run(run_id)

    async def fail(self, run_id: str, error: GenerationError) -> RunRecord | None:
        """Fail a run with ``error``'s code (a CANCELLED code cancels it)."""
        status = RunStatus.CANCELLED if error.code is ErrorCode.CANCELLED else RunStatus.FAILED
        if error.code is ErrorCode.RUN_TIMEOUT:
            status = RunStatus.TIMEOUT
        return await self.finish(run_id, status, error_code=error.code, message=error.message)

    async def _finish_locked(
        self,
        run: RunRecord,
        status: RunStatus,
        *,
        outputs: tuple[MediaOutput, ...] = (),
        error_code: str | None = None,
        message: str = "",
        backend_run_id: str | None = None,
    ) -> bool:
        now = self._clock()
        changes: dict[str, Any] = {
            "status": status,
            "updated_at": now,
            "finished_at": now,
            "queue_position": None,
        }
        if backend_run_id and run.backend_run_id is None:
            changes["backend_run_id"] = backend_run_id
        if status is RunStatus.SUCCESS:
            if len(outputs) > self._max_outputs:
                log.warning(
                    "run %s: %d outputs, keeping the first %d",
                    run.id,
                    len(outputs),
                    self._max_outputs,
                )
                outputs = outputs[: self._max_outputs]
            changes["outputs"] = outputs
            changes["progress"] = 1.0
        else:
            code = error_code or (ErrorCode.CANCELLED if status is RunStatus.CANCELLED else None)
            changes["error_code"] = str(code) if code else None
            changes["error_message"] = message or None
        run = await self._runs.update_run(run.id, **changes)
        self.untrack(run.id)
        if status is not RunStatus.SUCCESS:
            try:
                await self._balances.release_hold(run.id)
            except Exception:
                log.exception("run %s: releasing the hold failed", run.id)
        if self._on_finished is not None:
            self._on_finished(run)
        self._counters.inc(
            "generation_runs_finished_total", status=status.value, code=run.error_code or ""
        )
        elapsed = (run.finished_at or run.updated_at) - run.created_at
        log.info(
            "run %s finished: %s%s after %.1f s",
            run.id,
            status.value,
            f" {run.error_code}" if run.error_code else "",
            elapsed,
        )
        for event in self._final_events(run):
            self._bus.publish(event)
        return True

    @staticmethod
    def _final_events(run: RunRecord) -> list[GenerationEvent]:
        if run.status is RunStatus.SUCCESS:
            return completion_events(run)
        if run.status is RunStatus.CANCELLED:
            return [GenerationCancelled(run.id, run.user_id, run.chat_id)]
        return [
            GenerationFailed(
                run.id,
                run.user_id,
                run.chat_id,
                error_code=run.error_code or ErrorCode.RUN_FAILED.value,
                message=run.error_message or "",
            )
        ]

    async def confirm(self, run_id: str, backend_run_id: str) -> None:
        """Apply ``GET /run/{id}`` after a webhook said success (a failed GET leaves the run to
        the polling backstop)."""
        try:
            snapshot = await self._backend.get_run(backend_run_id)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("run %s: confirming a reported success failed: %r", run_id, exc)
            return
        if snapshot.backend_run_id != backend_run_id:
            log.warning("run %s: confirmation answered for another run; ignored", run_id)
            return
        try:
            await self.apply(run_id, snapshot, source="confirm")
        except Exception:
            log.exception("run %s: applying a confirmed snapshot failed", run_id)

    # -- orphans ------------------------------------------------------------------------------

    async def foreign_webhook(self, run_id: str, backend_run_id: str) -> bool:
        """A valid webhook of ``run_id`` named ``backend_run_id``, which the run does not
        track: check it, then adopt or cancel it. Each foreign backend run id is handled once
        (its later webhooks cost nothing). False when the backend run was not created for
        ``run_id`` (or could not be checked)."""
        if backend_run_id in self._foreign:
            return True
        if len(self._foreign) > 100_000:  # bounded memory; a repeat only costs one more GET
            self._foreign.clear()
        self._foreign.add(backend_run_id)
        return await self._reconcile_foreign(run_id, backend_run_id)

    async def _reconcile_foreign(self, run_id: str, backend_run_id: str) -> bool:
        try:
            snapshot = await self._backend.get_run(backend_run_id)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("run %s: checking foreign backend run failed: %r", run_id, exc)
            self._foreign.discard(backend_run_id)  # the next webhook tries again
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
        async with self.lock(run_id):
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
                self._awaiting.pop(run_id, None)
                self.track(run)
                adopted = True
                self._counters.inc("generation_orphans_adopted_total")
        if adopted:
            if not own:
                log.info(
                    "run %s: adopted backend run %s (its create answer was lost)",
                    run_id,
                    backend_run_id,
                )
            await self.apply(run_id, snapshot, source="confirm")
            return True
        await self.cancel_orphan(run_id, backend_run_id)
        return True

    async def cancel_orphan(self, run_id: str, backend_run_id: str) -> None:
        """Cancel a backend run created for ``run_id`` that the run does not use."""
        self._foreign.add(backend_run_id)
        self.orphans_cancelled.append(backend_run_id)
        self._counters.inc("generation_orphans_cancelled_total")
        log.warning("run %s: cancelling orphan backend run %s", run_id, backend_run_id)
        try:
            await self._backend.cancel_run(backend_run_id)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("run %s: cancelling orphan %s failed: %r", run_id, backend_run_id, exc)

    # -- polling backstop ---------------------------------------------------------------------

    async def poll_once(self, run_id: str | None = None) -> None:
        """GET every tracked run (or just ``run_id``) once and apply the answers.

        A poll error never escapes: it is logged and retried on the next tick. A run the
        backend keeps answering 404 for is failed with RUN_FAILED after a few tries."""
        ids = [run_id] if run_id is not None else list(self._tracked)
        await asyncio.gather(*(self._poll_run(rid) for rid in ids))

    async def _poll_run(self, run_id: str) -> None:
        tracked = self._tracked.get(run_id)
        if tracked is None:
            return
        async with self._poll_limit:
            try:
                snapshot = await self._backend.get_run(tracked.backend_run_id)
            except RunNotFoundError:
                tracked.not_found += 1
                log.warning("run %s: backend says not found (%d)", run_id, tracked.not_found)
                if tracked.not_found >= self._not_found_limit:
                    await self.finish(
                        run_id,
                        RunStatus.FAILED,
                        error_code=ErrorCode.RUN_FAILED,
                        message="backend lost the run",
                    )
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # never kill the tracker
                log.warning("run %s: poll failed: %r", run_id, exc)
                return
        tracked.not_found = 0
        try:
            await self.apply(run_id, snapshot, source="poll")
        except Exception:
            log.exception("run %s: applying a polled snapshot failed", run_id)

    async def check_deadlines(self) -> list[str]:
        """Fail every tracked run past its deadline with RUN_TIMEOUT (and cancel it at the
        backend, best effort). Returns the ids timed out."""
        now = self._clock()
        expired = [
            (rid, t.backend_run_id)
            for rid, t in list(self._tracked.items())
            if t.deadline_at is not None and now >= t.deadline_at
        ]
        timed_out: list[str] = []
        for run_id, until in list(self._awaiting.items()):
            if now >= until:
                self._awaiting.pop(run_id, None)
                await self.fail(
                    run_id, SubmitUncertainError("no run reported after an uncertain create")
                )
        for run_id, backend_run_id in expired:
            run = await self.finish(
                run_id,
                RunStatus.TIMEOUT,
                error_code=ErrorCode.RUN_TIMEOUT,
                message="run deadline exceeded",
            )
            if run is not None and run.status is RunStatus.TIMEOUT:
                timed_out.append(run_id)
                try:
                    await self._backend.cancel_run(backend_run_id)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    log.info("run %s: backend cancel after timeout failed: %r", run_id, exc)
        return timed_out
