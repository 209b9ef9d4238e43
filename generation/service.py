"""GenerationService: the public face of the generation module.

Flow of one generation::

    generate(request, context)
      validate (type registry: prompt? image? mask?)      → InvalidInputError(field=...)
      a deployment exists for the type?                   → NoDeploymentsAvailableError
      per-user queued cap                                  → QueueFullError
      global queued cap (MAX_QUEUED_TOTAL)                 → QueueBusyError
      draw the concrete seed, persist the run + hold price → InsufficientBalanceError
      enqueue in the fair queue; publish GenerationQueued
      return the RunRecord at once (status QUEUED)
    worker (own asyncio tasks, at most max_in_flight runs in flight)
      select deployment (role, weight, health, circuit breaker)
      build inputs (PromptBuilder + LoRA triggers gated by balance; images → data URI/upload)
      status SUBMITTING persisted → backend.create_run (retries inside the client)
      → failover to another deployment of the type on BackendUnavailable / RateLimited /
        DeploymentNotFound; AuthFailed / InvalidInput / SubmitUncertain fail at once
      backend run id persisted; publish GenerationStarted
    tracker (generation.tracker)
      webhooks (process_webhook) + polling backstop (GET /run/{id}) → one state machine/run
      publish GenerationProgress / GenerationCompleted (+ MediaAvailable per output) /
      GenerationFailed / GenerationCancelled. Holds are released by the service on
      failed/timeout/cancelled; on success the caller delivers and calls mark_delivered().
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from generation.cancellation import cancel_run, cancel_user_runs
from generation.counters import GenerationCounters
from generation.errors import (
    ErrorCode,
    NoDeploymentsAvailableError,
    QueueBusyError,
    QueueFullError,
    RunNotFoundError,
)
from generation.events import EventBus, GenerationQueued
from generation.loops import every, worker
from generation.maintenance import Maintenance
from generation.models import DeliveryState, RunRecord, RunStatus
from generation.orphans import Orphans
from generation.ports import (
    Backend,
    BalanceStore,
    DeploymentStore,
    ImageStore,
    LoraStore,
    RunStore,
)
from generation.request import GenerationContext, GenerationRequest
from generation.resume import Resumer
from generation.run_inputs import RunInputs, without_images
from generation.scheduler import FairScheduler, QueueItem
from generation.selection import DeploymentSelector
from generation.settings import GenerationSettings
from generation.submission import Pending, Submitter
from generation.tracker import RunTracker
from generation.types import deployment_keys_for, validate_request
from generation.webhooks import apply_webhook, webhook_is_ours

log = logging.getLogger(__name__)

REPLY_WAIT = 0.3  # seconds the first reply waits at most for the create-run (``submitted``)


class GenerationService:
    def __init__(
        self,
        *,
        backend: Backend,
        runs: RunStore,
        balances: BalanceStore,
        deployments: DeploymentStore,
        loras: LoraStore,
        bus: EventBus | None = None,
        settings: GenerationSettings | None = None,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        images: ImageStore | None = None,
    ) -> None:
        self.backend = backend
        self.runs = runs
        self.balances = balances
        self.deployments = deployments
        self.loras = loras
        self.bus = bus or EventBus()
        self.settings = settings or GenerationSettings()
        self.clock = clock
        self.counters = GenerationCounters()
        s = self.settings
        self.selector = DeploymentSelector(
            deployments,
            clock=clock,
            rng=rng or random.Random(),
            breaker_threshold=s.breaker_threshold,
            breaker_cooldown=s.breaker_cooldown,
        )
        self.scheduler = FairScheduler(
            max_in_flight=s.max_in_flight,
            max_active_per_user=s.max_active_per_user,
            max_queued_per_user=s.max_queued_per_user,
            on_position=self._publish_position,
            position_interval=s.queue_position_interval,
        )
        self.tracker = RunTracker(
            runs=runs,
            balances=balances,
            backend=backend,
            bus=self.bus,
            clock=clock,
            on_finished=self._on_finished,
            max_outputs=s.max_outputs_per_run,
            counters=self.counters,
        )
        self.orphans = Orphans(
            self.tracker,
            runs=runs,
            backend=backend,
            clock=clock,
            counters=self.counters,
            webhook_is_ours=functools.partial(webhook_is_ours, s.webhook_secret),
        )
        self.maintenance = Maintenance(
            runs,
            balances,
            retention_days=s.run_retention_days,
            clock=clock,
            counters=self.counters,
        )
        # Input images of accepted runs live in ``images`` (not in memory) until the run ends;
        # None keeps them in memory (and a restart loses queued runs with images).
        self.inputs = RunInputs(
            images,
            backend,
            spawn=self.tracker.spawn,
            memory_max_bytes=s.image_memory_max_bytes,
            inline_max_bytes=s.inline_image_max_bytes,
        )
        self.submitter = Submitter(
            backend=backend,
            runs=runs,
            balances=balances,
            loras=loras,
            bus=self.bus,
            settings=s,
            clock=clock,
            counters=self.counters,
            selector=self.selector,
            scheduler=self.scheduler,
            tracker=self.tracker,
            orphans=self.orphans,
            inputs=self.inputs,
        )
        self._pending = self.submitter.pending
        self._reserved: Counter[int] = Counter()  # queue slots taken by generate() in progress
        self._tasks: list[asyncio.Task[None]] = []
        self._busy: set[asyncio.Task[Any]] = set()  # workers inside dispatch()
        self._stopping = False
        self._started = False

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Start worker/tracker tasks and resume every unfinished run from the RunStore."""
        if self._started:
            return
        self._started = True
        self._stopping = False
        set_sink = getattr(self.backend, "set_update_sink", None)
        if set_sink is not None:
            set_sink(self.submitter.on_backend_update)
        await self._resume()
        loop = asyncio.get_running_loop()
        workers = max(1, self.settings.max_in_flight)
        self._tasks = [
            loop.create_task(
                worker(self.scheduler, self.dispatch, self.tracker, self._busy, self._is_stopping),
                name=f"generation-worker-{i}",
            )
            for i in range(workers)
        ]
        s = self.settings
        interval = s.webhook_poll_interval if s.webhook_url else s.poll_interval
        poll = every(interval, self._poll_tick, "poll tick")
        self._tasks.append(loop.create_task(poll, name="generation-poller"))
        if s.maintenance_interval > 0:
            tidy = every(s.maintenance_interval, self.maintenance.run_once, "maintenance pass")
            self._tasks.append(loop.create_task(tidy, name="generation-maintenance"))

    def _is_stopping(self) -> bool:
        return self._stopping

    async def stop(self) -> None:
        """Stop taking work, cancel our tasks cleanly; persisted runs resume on next start.

        Workers inside a create call get ``shutdown_grace`` seconds to finish it, so a
        graceful shutdown leaves every run QUEUED (resubmitted later) or created (tracked
        later) rather than "may or may not have reached the backend"."""
        self._started = False
        self._stopping = True
        tasks, self._tasks = self._tasks, []
        busy = [task for task in tasks if task in self._busy]
        for task in tasks:
            if task not in busy:
                task.cancel()
        if busy:
            _, late = await asyncio.wait(busy, timeout=max(0.0, self.settings.shutdown_grace))
            for task in late:
                task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.tracker.aclose()

    async def _resume(self) -> None:
        await Resumer(self.submitter).resume()

    # -- public API ---------------------------------------------------------------------------

    async def generate(self, request: GenerationRequest, context: GenerationContext) -> RunRecord:
        resolved = validate_request(request)
        keys = deployment_keys_for(resolved)
        if not await self.selector.has_candidates(keys, request.mode):
            raise NoDeploymentsAvailableError(
                f"no deployment configured for {resolved.name}", keys=keys
            )
        user_id = request.user_id
        queued = self.scheduler.queued_count(user_id) + self._reserved[user_id]
        if queued >= self.scheduler.max_queued_per_user:
            self.counters.inc("generation_runs_refused_total", code=ErrorCode.QUEUE_FULL.value)
            raise QueueFullError("too many queued requests", user_id=user_id)
        total = self.scheduler.queued_count() + self._reserved.total()
        if total >= self.settings.max_queued_total:
            self.counters.inc("generation_runs_refused_total", code=ErrorCode.QUEUE_BUSY.value)
            raise QueueBusyError("the bot's queue is full", limit=self.settings.max_queued_total)
        self._reserved[user_id] += 1
        refs: list[str] = []
        try:
            request = request.with_concrete_seed()
            record = request.to_record()
            refs = await self.inputs.store_images(request, record)
            now = self.clock()
            run = RunRecord(
                id=uuid.uuid4().hex,
                user_id=user_id,
                chat_id=request.chat_id,
                type=request.type,
                request=record,
                status=RunStatus.QUEUED,
                price=context.price,
                meta=dict(context.meta),
                created_at=now,
                updated_at=now,
            )
            run = await self.runs.create_run(run, hold_amount=context.price)
        except BaseException:
            await self.inputs.drop_unused(refs)
            raise
        finally:
            self._reserved[user_id] -= 1
            if self._reserved[user_id] <= 0:
                del self._reserved[user_id]
        if refs:
            self.inputs.hold(run.id, refs)
            request = without_images(request)  # the bytes are on disk, not in memory
        self.counters.inc("generation_runs_created_total", type=resolved.base.name)
        self._pending[run.id] = Pending(request, context.balance, run)
        # Publishes GenerationQueued (via _publish_position) for this run and any that moved.
        self.scheduler.submit(QueueItem(run.id, run.user_id, run.chat_id), enforce_cap=False)
        log.info(
            "run %s accepted: type=%s user=%s price=%d", run.id, run.type, run.user_id, run.price
        )
        return run

    async def check_status(self, run_id: str) -> RunRecord:
        """Current record (polls the backend once when the run is in flight)."""
        if self.tracker.is_tracked(run_id):
            await self.tracker.poll_once(run_id)
        run = await self.runs.get_run(run_id)
        if run is None:
            raise RunNotFoundError("unknown run", run_id=run_id)
        return run

    async def cancel_generation(self, run_id: str) -> RunRecord:
        """Cancel a queued or running generation; terminal runs are returned unchanged."""
        return await cancel_run(self.runs, self.scheduler, self.tracker, self.backend, run_id)

    async def cancel_user_generations(self, user_id: int) -> list[RunRecord]:
        """Cancel all of a user's queued and running generations; returns those cancelled."""
        return await cancel_user_runs(self.runs, self.cancel_generation, user_id)

    async def process_webhook(
        self, payload: Mapping[str, Any], token: str | None = None, run_ref: str | None = None
    ) -> bool:
        """Apply a ComfyDeploy webhook (``generation/webhooks.py: apply_webhook``); counts
        the outcome."""
        ok = await apply_webhook(
            self.runs,
            self.tracker,
            self.orphans,
            self.settings.webhook_secret,
            payload,
            token,
            run_ref,
            self.submitter.wait_created,
        )
        self.counters.inc("generation_webhooks_total", result="accepted" if ok else "rejected")
        return ok

    def queue_position(self, run_id: str) -> int | None:
        return self.scheduler.position(run_id)

    async def submitted(self, run_id: str, timeout: float = REPLY_WAIT) -> None:  # noqa: ASYNC109
        """Return once the run just accepted by ``generate`` is as far as it goes now: a
        worker woken for it has had its loop turn and, if it took the run, its create-run
        has left (at most ``timeout`` seconds). The handler replies after this, so the
        reply's work on the event loop never delays the create-run."""
        await asyncio.sleep(0)  # a woken worker takes the run (scheduler.take) now
        await self.submitter.wait_issued(run_id, timeout)

    async def attach_progress_message(self, run_id: str, message_id: int) -> RunRecord:
        """Persist the progress message's id (read after a restart). One single-column
        UPDATE, so not under the run's lock: it must not queue in front of the worker's or a
        webhook's change of the run."""
        return await self.runs.update_run(
            run_id, progress_message_id=message_id, updated_at=self.clock()
        )

    async def mark_delivered(self, run_id: str) -> RunRecord:
        """The caller delivered the result: settle the hold (exactly once)."""
        run, settled = await self._end_delivery(
            run_id, DeliveryState.DELIVERED, self.balances.settle_hold
        )
        if settled:
            self.counters.inc("generation_runs_delivered_total")
        return run

    async def mark_delivery_failed(self, run_id: str) -> RunRecord:
        """The caller could not deliver: release the hold (exactly once)."""
        run, _ = await self._end_delivery(run_id, DeliveryState.FAILED, self.balances.release_hold)
        return run

    async def _end_delivery(
        self, run_id: str, state: DeliveryState, resolve: Callable[[str], Awaitable[bool]]
    ) -> tuple[RunRecord, bool]:
        async with self.tracker.lock(run_id):
            run = await self.runs.update_run(run_id, delivery_state=state, updated_at=self.clock())
            resolved = await resolve(run_id)
            if resolved:
                run = await self.runs.get_run(run_id) or run
        return run, resolved

    # -- scheduler / tracker hooks --------------------------------------------------------------

    def _publish_position(self, item: QueueItem, position: int) -> None:
        self.bus.publish(GenerationQueued(item.run_id, item.user_id, item.chat_id, position))

    def _on_finished(self, run: RunRecord) -> None:
        self.scheduler.remove(run.id)
        self.scheduler.release(run.id)
        self._pending.pop(run.id, None)
        self.inputs.release_run(run.id)

    # -- workers ------------------------------------------------------------------------------

    async def _poll_tick(self) -> None:
        await self.tracker.poll_once()
        await self.tracker.check_deadlines()

    def metrics_snapshot(self) -> dict[str, Any]:
        """Counters plus live gauges, for /metrics (no database access)."""
        return {
            "counters": self.counters.snapshot(),
            "gauges": {
                "generation_queued": self.scheduler.queued_count(),
                "generation_in_flight": self.scheduler.in_flight,
                "generation_tracked": len(self.tracker.tracked_ids),
            },
        }

    async def dispatch(self, item: QueueItem) -> None:
        """Submit one run taken from the queue (``generation/submission.py``).

        Public so tests and tools can drive dispatch without background workers."""
        await self.submitter.dispatch(item)
