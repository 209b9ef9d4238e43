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
import logging
import random
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from generation.counters import GenerationCounters
from generation.errors import (
    AuthFailedError,
    BackendError,
    BackendUnavailableError,
    DeploymentNotFoundError,
    ErrorCode,
    GenerationError,
    InterruptedError_,
    InvalidInputError,
    NoDeploymentsAvailableError,
    QueueBusyError,
    QueueFullError,
    RateLimitedError,
    RunNotFoundError,
    SubmitUncertainError,
)
from generation.events import EventBus, GenerationQueued, GenerationStarted
from generation.images import (
    ImageMemoryBudget,
    aprepare_image,
    aprepare_mask,
    decoded_size_estimate,
    image_input_value,
)
from generation.maintenance import Maintenance
from generation.models import (
    ChargeState,
    DeliveryState,
    DeploymentConfig,
    RunRecord,
    RunStatus,
)
from generation.ports import (
    Backend,
    BalanceStore,
    DeploymentStore,
    ImageStore,
    LoraStore,
    RunStore,
)
from generation.prompt_builder import PromptBuilder
from generation.request import IMAGE_FIELDS, GenerationContext, GenerationRequest, InputImage
from generation.scheduler import FairScheduler, QueueItem
from generation.selection import DeploymentSelector
from generation.status import snapshot_from_payload
from generation.tokens import verify_webhook_token, webhook_url
from generation.tracker import RunTracker, completion_events
from generation.types import ResolvedType, deployment_keys_for, validate_request

log = logging.getLogger(__name__)

_FAILOVER_ERRORS = (BackendUnavailableError, RateLimitedError, DeploymentNotFoundError)


@dataclass(slots=True)
class GenerationSettings:
    # e.g. "https://bot.example/comfydeploy/webhook"; None → polling only
    webhook_url: str | None = None
    webhook_secret: str = ""  # HMAC key for per-run webhook tokens
    poll_interval: float = 3.0  # seconds between GET /run/{id} polls (polling mode)
    webhook_poll_interval: float = 15.0  # slower backstop when webhooks are on
    run_deadline: float = 900.0  # seconds from submit after which a run fails with RUN_TIMEOUT
    max_in_flight: int = 10
    max_active_per_user: int = 2
    max_queued_per_user: int = 5
    inline_image_max_bytes: int = 4_000_000  # larger inputs go through upload_file
    lora_weight_max: float = 2.0  # every LoRA weight sent is clamped to ±this (LORA_WEIGHT_MAX)
    max_outputs_per_run: int = 16  # outputs kept per run (MAX_OUTPUTS_PER_RUN)
    max_queued_total: int = 1000  # queued runs of all users together (MAX_QUEUED_TOTAL)
    # queue-position events are coalesced: at most one publishing pass per this many seconds
    queue_position_interval: float = 1.0
    run_retention_days: float = 90.0  # terminal runs deleted after this (RUN_RETENTION_DAYS)
    maintenance_interval: float = 600.0  # seconds between hold reconciliation + pruning passes
    # image bytes being prepared (file + decoded pixels) at once, process-wide
    image_memory_max_bytes: int = 256 * 1024 * 1024
    # seconds an uncertain create (webhook mode) waits for its run's webhook to be adopted
    adopt_window: float = 300.0
    breaker_threshold: int = 3  # consecutive create failures that open a deployment's breaker
    breaker_cooldown: float = 60.0  # seconds before a half-open probe
    # stop(): seconds in-flight create calls may take to finish (else they end SUBMITTING,
    # which the next start can only fail as SUBMIT_UNCERTAIN)
    shutdown_grace: float = 10.0


@dataclass(slots=True)
class _Pending:
    """What a queued run needs that is not persisted: image bytes and the caller's balance."""

    request: GenerationRequest
    balance: int | None = None
    run: RunRecord | None = None  # the record as created (spares dispatch a re-read)


def request_from_record(data: Mapping[str, Any]) -> GenerationRequest:
    """Rebuild a request from its stored form (images are not stored: they come back None)."""
    fields = {
        k: v
        for k, v in data.items()
        if k in GenerationRequest.model_fields and k not in IMAGE_FIELDS
    }
    return GenerationRequest.model_validate(fields)


def _record_had_images(data: Mapping[str, Any]) -> bool:
    return any(data.get(name) for name in IMAGE_FIELDS)


def _image_refs(data: Mapping[str, Any]) -> list[str]:
    """The image-store refs a run record holds."""
    refs: list[str] = []
    for name in IMAGE_FIELDS:
        meta = data.get(name)
        if isinstance(meta, Mapping) and isinstance(meta.get("ref"), str):
            refs.append(meta["ref"])
    return refs


def _images_stored(data: Mapping[str, Any]) -> bool:
    """Every image of the record is in the image store (has a ref)."""
    metas = [data.get(name) for name in IMAGE_FIELDS if data.get(name)]
    return bool(metas) and all(isinstance(m, Mapping) and m.get("ref") for m in metas)


def _without_images(request: GenerationRequest) -> GenerationRequest:
    return request.model_copy(update={name: None for name in IMAGE_FIELDS})


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
        # Input images of accepted runs live here (not in memory) until the run ends; None
        # keeps them in memory (and a restart loses queued runs with images).
        self.images = images
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
            webhook_is_ours=self._webhook_is_ours,
            counters=self.counters,
        )
        self.maintenance = Maintenance(
            runs,
            balances,
            retention_days=s.run_retention_days,
            clock=clock,
            counters=self.counters,
        )
        self._pending: dict[str, _Pending] = {}
        self._early_updates: dict[str, None] = {}  # backend run ids pushed before tracked
        self._run_refs: dict[str, list[str]] = {}  # run id → image refs it holds on disk
        self._ref_counts: Counter[str] = Counter()
        self.image_budget = ImageMemoryBudget(s.image_memory_max_bytes)
        self._reserved: Counter[int] = Counter()  # queue slots taken by generate() in progress
        self._tasks: list[asyncio.Task[None]] = []
        self._busy: set[asyncio.Task[Any]] = set()  # workers inside dispatch()
        self._stopping = False
        self._started = False

    bus: EventBus

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Start worker/tracker tasks and resume every unfinished run from the RunStore."""
        if self._started:
            return
        self._started = True
        self._stopping = False
        set_sink = getattr(self.backend, "set_update_sink", None)
        if set_sink is not None:
            set_sink(self._on_backend_update)
        await self._resume()
        loop = asyncio.get_running_loop()
        workers = max(1, self.settings.max_in_flight)
        self._tasks = [
            loop.create_task(self._worker(), name=f"generation-worker-{i}") for i in range(workers)
        ]
        self._tasks.append(loop.create_task(self._poll_loop(), name="generation-poller"))
        if self.settings.maintenance_interval > 0:
            self._tasks.append(
                loop.create_task(self._maintenance_loop(), name="generation-maintenance")
            )

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
        keep: set[str] = set()
        for run in await self.runs.list_unfinished_runs():
            if not run.is_terminal:
                keep.update(_image_refs(run.request))
            try:
                await self._resume_run(run)
            except Exception:
                log.exception("run %s: resume failed", run.id)
        if self.images is not None:
            keep.update(self._ref_counts)
            removed = await self.images.sweep(keep)
            if removed:
                log.info("removed %d stored input images no run needs", removed)

    async def _resume_run(self, run: RunRecord) -> None:
        status = run.status
        if status is RunStatus.QUEUED:
            await self._resume_queued(run)
        elif status is RunStatus.SUBMITTING or (not status.is_terminal and not run.backend_run_id):
            # The create call may or may not have reached the backend: never resubmit. A
            # backend that names its runs after ours can tell whether it got this one.
            found = await self._find_submitted(run)
            if found is None:
                await self.tracker.fail(
                    run.id, SubmitUncertainError("interrupted while submitting")
                )
            else:
                self.scheduler.mark_active(run.id, run.user_id)
                await self._after_create(run, found, run.deployment_id or "")
        elif not status.is_terminal:
            self.scheduler.mark_active(run.id, run.user_id)
            self.tracker.track(run)
        elif status is RunStatus.SUCCESS:
            if run.delivery_state is DeliveryState.PENDING:
                for event in completion_events(run):
                    self.bus.publish(event)
            elif run.charge_state is ChargeState.HELD:
                if run.delivery_state is DeliveryState.DELIVERED:
                    await self.balances.settle_hold(run.id)
                else:
                    await self.balances.release_hold(run.id)
        elif run.charge_state is ChargeState.HELD:
            await self.balances.release_hold(run.id)

    async def _find_submitted(self, run: RunRecord) -> str | None:
        find = getattr(self.backend, "find_submitted", None)
        if find is None or not run.deployment_id:
            return None
        try:
            found = await find(run.deployment_id, run.id)
            return found if isinstance(found, str) else None
        except GenerationError as exc:
            log.warning("run %s: looking up the interrupted submit failed: %r", run.id, exc)
            return None

    async def _on_backend_update(self, backend_run_id: str) -> None:
        """A backend pushed "this run changed" (ComfyUI's WebSocket): poll it now. A push
        that arrives before the create call returned is kept and applied once tracked."""
        run = await self.runs.get_run_by_backend_id(backend_run_id)
        if run is not None and self.tracker.is_tracked(run.id):
            await self.tracker.poll_once(run.id)
            return
        self._early_updates[backend_run_id] = None
        while len(self._early_updates) > 1000:
            del self._early_updates[next(iter(self._early_updates))]

    async def _resume_queued(self, run: RunRecord) -> None:
        pending = self._pending.get(run.id)
        request = pending.request if pending else None
        if request is None:
            try:
                request = request_from_record(run.request)
                on_disk = self.images is not None and _images_stored(run.request)
                if _record_had_images(run.request) and not on_disk:
                    raise InterruptedError_("input images were lost in a restart")
                if not on_disk:
                    validate_request(request)
            except (GenerationError, ValueError) as exc:
                err = exc if isinstance(exc, InterruptedError_) else InterruptedError_(str(exc))
                await self.tracker.fail(run.id, err)
                return
            self._pending[run.id] = _Pending(request)
            self._hold_refs(run.id, _image_refs(run.request))
        if not self.scheduler.is_queued(run.id) and not self.scheduler.is_active(run.id):
            self.scheduler.submit(QueueItem(run.id, run.user_id, run.chat_id), enforce_cap=False)

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
            refs = await self._store_images(request, record)
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
            await self._drop_unused_refs(refs)
            raise
        finally:
            self._reserved[user_id] -= 1
            if self._reserved[user_id] <= 0:
                del self._reserved[user_id]
        if refs:
            self._hold_refs(run.id, refs)
            request = _without_images(request)  # the bytes are on disk, not in memory
        self.counters.inc("generation_runs_created_total", type=resolved.base.name)
        self._pending[run.id] = _Pending(request, context.balance, run)
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
        run = await self.runs.get_run(run_id)
        if run is None:
            raise RunNotFoundError("unknown run", run_id=run_id)
        if run.is_terminal:
            return run
        backend_run_id = run.backend_run_id
        self.scheduler.remove(run_id)
        # Locally first: from here on late webhooks and polls change nothing.
        final = await self.tracker.finish(
            run_id, RunStatus.CANCELLED, message="cancelled by the user"
        )
        if final is not None and final.status is RunStatus.CANCELLED and backend_run_id:
            await self._cancel_backend(run_id, backend_run_id)
        return final or run

    async def _cancel_backend(self, run_id: str, backend_run_id: str) -> None:
        try:
            await self.backend.cancel_run(backend_run_id)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # tolerated: the run is cancelled locally anyway
            log.info("run %s: backend cancel failed: %r", run_id, exc)

    async def cancel_user_generations(self, user_id: int) -> list[RunRecord]:
        """Cancel all of a user's queued and running generations; returns those cancelled."""
        cancelled: list[RunRecord] = []
        for run in await self.runs.list_user_runs(user_id, active_only=True):
            if run.is_terminal:
                continue
            final = await self.cancel_generation(run.id)
            if final.status is RunStatus.CANCELLED and not run.is_terminal:
                cancelled.append(final)
        return cancelled

    async def process_webhook(
        self, payload: Mapping[str, Any], token: str | None = None, run_ref: str | None = None
    ) -> bool:
        """See :meth:`_process_webhook`; counts the outcome."""
        ok = await self._process_webhook(payload, token, run_ref)
        self.counters.inc("generation_webhooks_total", result="accepted" if ok else "rejected")
        return ok

    async def _process_webhook(
        self, payload: Mapping[str, Any], token: str | None, run_ref: str | None
    ) -> bool:
        """Apply a ComfyDeploy webhook. ``run_ref``/``token`` are the ``r``/``t`` query
        parameters of our webhook URL. Returns False (and changes nothing) when the call is
        forged, unknown or malformed. A reported success is confirmed with ``GET /run/{id}``
        before anything is delivered, and a backend run the run does not track is checked the
        same way (adopted or cancelled), so the HTTP layer runs this in a task of its own."""
        secret = self.settings.webhook_secret
        if not run_ref or not verify_webhook_token(secret, run_ref, token):
            log.warning("webhook rejected: bad token")
            return False
        run = await self.runs.get_run(run_ref)
        if run is None:
            log.warning("webhook rejected: unknown run")
            return False
        try:
            snapshot = snapshot_from_payload(payload)
        except Exception as exc:
            log.warning("webhook rejected for run %s: %r", run_ref, exc)
            return False
        if run.backend_run_id is None or snapshot.backend_run_id != run.backend_run_id:
            # A backend run we do not track reports to this run's URL: a create whose answer
            # was lost (adopted when the run has none yet) or a duplicate (cancelled).
            return await self.tracker.foreign_webhook(run.id, snapshot.backend_run_id)
        if snapshot.status is RunStatus.SUCCESS:
            if not run.is_terminal:
                await self.tracker.confirm(run.id, run.backend_run_id)
            return True
        await self.tracker.apply(run.id, snapshot, source="webhook")
        return True

    def _webhook_is_ours(self, run_id: str, url: str | None) -> bool:
        """Is ``url`` the webhook URL we gave ``run_id`` (same run ref, valid token)?"""
        if not url:
            return False
        query = dict(parse_qsl(urlsplit(url).query))
        return query.get("r") == run_id and verify_webhook_token(
            self.settings.webhook_secret, run_id, query.get("t")
        )

    def queue_position(self, run_id: str) -> int | None:
        return self.scheduler.position(run_id)

    async def attach_progress_message(self, run_id: str, message_id: int) -> RunRecord:
        async with self.tracker.lock(run_id):
            return await self.runs.update_run(
                run_id, progress_message_id=message_id, updated_at=self.clock()
            )

    async def mark_delivered(self, run_id: str) -> RunRecord:
        """The caller delivered the result: settle the hold (exactly once)."""
        async with self.tracker.lock(run_id):
            run = await self.runs.update_run(
                run_id, delivery_state=DeliveryState.DELIVERED, updated_at=self.clock()
            )
            if await self.balances.settle_hold(run_id):
                run = await self.runs.get_run(run_id) or run
                self.counters.inc("generation_runs_delivered_total")
        return run

    async def mark_delivery_failed(self, run_id: str) -> RunRecord:
        """The caller could not deliver: release the hold (exactly once)."""
        async with self.tracker.lock(run_id):
            run = await self.runs.update_run(
                run_id, delivery_state=DeliveryState.FAILED, updated_at=self.clock()
            )
            if await self.balances.release_hold(run_id):
                run = await self.runs.get_run(run_id) or run
        return run

    # -- scheduler / tracker hooks --------------------------------------------------------------

    def _publish_position(self, item: QueueItem, position: int) -> None:
        self.bus.publish(GenerationQueued(item.run_id, item.user_id, item.chat_id, position))

    def _on_finished(self, run: RunRecord) -> None:
        self.scheduler.remove(run.id)
        self.scheduler.release(run.id)
        self._pending.pop(run.id, None)
        refs = self._run_refs.pop(run.id, None)
        if refs:
            self._release_refs(refs)

    # -- input images on disk -------------------------------------------------------------------

    async def _store_images(self, request: GenerationRequest, record: dict[str, Any]) -> list[str]:
        """Write the request's images to the image store; their refs go into ``record``."""
        if self.images is None:
            return []
        refs: list[str] = []
        for name in IMAGE_FIELDS:
            img: InputImage | None = getattr(request, name)
            if img is None:
                continue
            ref = await self.images.put(img.data)
            record[name] = {**(record.get(name) or {}), "ref": ref}
            refs.append(ref)
        return refs

    def _hold_refs(self, run_id: str, refs: list[str]) -> None:
        if not refs or run_id in self._run_refs:
            return
        self._run_refs[run_id] = list(refs)
        self._ref_counts.update(refs)

    def _release_refs(self, refs: list[str]) -> None:
        unused: list[str] = []
        for ref in refs:
            self._ref_counts[ref] -= 1
            if self._ref_counts[ref] <= 0:
                del self._ref_counts[ref]
                unused.append(ref)
        if unused and self.images is not None:
            self.tracker.spawn(self._drop_unused_refs(unused))

    async def _drop_unused_refs(self, refs: list[str]) -> None:
        if self.images is None:
            return
        for ref in dict.fromkeys(refs):
            if self._ref_counts.get(ref, 0) > 0:
                continue  # another run still needs the same bytes
            try:
                await self.images.delete(ref)
            except Exception:
                log.warning("could not delete a stored input image", exc_info=True)

    async def _load_images(self, run: RunRecord, request: GenerationRequest) -> GenerationRequest:
        """``request`` with the images of ``run`` read back from the image store."""
        if self.images is None or not _images_stored(run.request):
            return request
        updates: dict[str, InputImage] = {}
        for name in IMAGE_FIELDS:
            meta = run.request.get(name)
            if not isinstance(meta, Mapping) or not meta.get("ref"):
                continue
            data = await self.images.get(str(meta["ref"]))
            if data is None:
                raise InterruptedError_("a stored input image is gone", field=name)
            updates[name] = InputImage(
                data=data,
                mime_type=str(meta.get("mime_type") or "image/png"),
                filename=str(meta.get("filename") or "image.png"),
                width=meta.get("width"),
                height=meta.get("height"),
            )
        return request.model_copy(update=updates)

    # -- workers ------------------------------------------------------------------------------

    async def _worker(self) -> None:
        me = asyncio.current_task()
        assert me is not None
        while not self._stopping:
            item = await self.scheduler.take()
            self._busy.add(me)
            try:
                await self.dispatch(item)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.exception("run %s: dispatch crashed", item.run_id)
                await self.tracker.fail(item.run_id, BackendError(f"internal error: {exc!r}"))
            finally:
                self._busy.discard(me)

    async def _poll_loop(self) -> None:
        s = self.settings
        interval = s.webhook_poll_interval if s.webhook_url else s.poll_interval
        while True:
            await asyncio.sleep(interval)
            try:
                await self.tracker.poll_once()
                await self.tracker.check_deadlines()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("poll tick failed")

    async def _maintenance_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.maintenance_interval)
            try:
                await self.maintenance.run_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("maintenance pass failed")

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
        """Submit one run taken from the queue (what a worker does with each item).

        Public so tests and tools can drive dispatch without background workers."""
        pending = self._pending.get(item.run_id)
        # A pending entry exists only while the run is queued (finishing a run drops it), so
        # the record kept from ``generate`` is current enough here; ``_submit_to`` re-reads it
        # under the run's lock before anything is written.
        run = pending.run if pending is not None else None
        if run is None:
            run = await self.runs.get_run(item.run_id)
        if run is None or run.status is not RunStatus.QUEUED or pending is None:
            self.scheduler.release(item.run_id)
            if run is not None and run.status is RunStatus.QUEUED:
                await self.tracker.fail(run.id, InterruptedError_("request data lost"))
            return
        try:
            request = await self._load_images(run, pending.request)
            resolved = validate_request(request)
            image_values = await self._image_values(request)
            loras = [entry for entry in await self.loras.list_loras() if entry.enabled]
            balance = pending.balance
            if balance is None and loras:  # the balance only gates LoRAs (min_balance)
                balance = await self._balance_before_hold(run)
        except GenerationError as exc:
            await self.tracker.fail(run.id, exc)
            return

        keys = deployment_keys_for(resolved)
        exclude: set[str] = set()
        last_error: GenerationError | None = None
        while True:
            try:
                deployment = await self.selector.select(keys, request.mode, exclude)
            except NoDeploymentsAvailableError as exc:
                await self.tracker.fail(run.id, last_error or exc)
                return
            exclude.add(deployment.deployment_id)
            outcome = await self._submit_to(
                run, request, resolved, deployment, image_values, loras, balance
            )
            if outcome is None:
                return
            last_error = outcome

    async def _submit_to(
        self,
        run: RunRecord,
        request: GenerationRequest,
        resolved: ResolvedType,
        deployment: DeploymentConfig,
        image_values: dict[str, str],
        loras: list[Any],
        balance: int | None,
    ) -> GenerationError | None:
        """Try one deployment. Returns the error to fail over on, or None when done."""
        dep_id = deployment.deployment_id
        try:
            built = PromptBuilder().build(
                request,
                resolved,
                deployment_inputs=deployment.inputs,
                loras=loras,
                balance=balance,
                image_values=image_values,
                lora_weight_max=self.settings.lora_weight_max,
            )
        except GenerationError as exc:
            await self.tracker.fail(run.id, exc)
            return None
        record = request.to_record()
        for name in IMAGE_FIELDS:  # keep the stored images' refs (deleted when the run ends)
            meta = run.request.get(name)
            if isinstance(meta, Mapping) and meta.get("ref") and isinstance(record.get(name), dict):
                record[name]["ref"] = meta["ref"]
        record["final_prompt"] = built.final_prompt
        record["applied_loras"] = list(built.applied_loras)
        if built.kept_loras:
            record["kept_loras"] = list(built.kept_loras)
        now = self.clock()
        async with self.tracker.lock(run.id):
            submitting = await self._update_if_active(
                run.id,
                status=RunStatus.SUBMITTING,
                deployment_id=dep_id,
                request=record,
                submitted_at=now,
                deadline_at=now + self.settings.run_deadline,
                updated_at=now,
            )
            if submitting is None:
                return None  # cancelled while we prepared
        hook = None
        if self.settings.webhook_url:
            hook = webhook_url(self.settings.webhook_url, run.id, self.settings.webhook_secret)
        try:
            backend_run_id = await self.backend.create_run(
                dep_id,
                built.inputs,
                webhook=hook,
                webhook_intermediate_status=True,
                run_ref=run.id,
            )
        except _FAILOVER_ERRORS as exc:
            log.warning("run %s: deployment %s failed: %s", run.id, dep_id, exc.code.value)
            await self.selector.record_failure(dep_id)
            return exc
        except SubmitUncertainError as exc:
            self.counters.inc("generation_creates_uncertain_total")
            await self.selector.record_failure(dep_id)
            if hook is None:  # polling mode: nothing could ever find that run; fail clearly
                await self.tracker.fail(run.id, exc)
                return None
            # Webhook mode: a run created by a lost attempt reports to this run's URL and is
            # adopted then (tracker.foreign_webhook); until the window ends the run waits.
            self._pending.pop(run.id, None)
            self.tracker.await_adoption(run.id, self.clock() + self.settings.adopt_window)
            log.warning("run %s: create on %s uncertain; waiting for its webhook", run.id, dep_id)
            return None
        except (AuthFailedError, InvalidInputError) as exc:
            await self.tracker.fail(run.id, exc)
            return None
        except GenerationError as exc:
            await self.tracker.fail(run.id, exc)
            return None
        self._pending.pop(run.id, None)  # the image bytes are not needed any more
        await self.selector.record_success(dep_id)
        await self._after_create(run, backend_run_id, dep_id)
        return None

    async def _balance_before_hold(self, run: RunRecord) -> int:
        """The user's available balance as it was before this run's own hold: a user exactly
        at a LoRA's ``min_balance`` who pays for this run still gets the LoRA."""
        available = await self.balances.get_balance(run.user_id)
        if run.charge_state is ChargeState.HELD:
            available += run.price
        return available

    async def _update_if_active(self, run_id: str, **changes: Any) -> RunRecord | None:
        """Write ``changes`` unless the run is gone or terminal (caller holds the run's lock)."""
        return await self.runs.update_run_if_active(run_id, **changes)

    async def _after_create(self, run: RunRecord, backend_run_id: str, dep_id: str) -> None:
        async with self.tracker.lock(run.id):
            current = await self.runs.get_run(run.id)
            if current is None:
                return
            orphan = current.backend_run_id not in (None, backend_run_id)
            if current.is_terminal:
                # Cancelled meanwhile, or ended (e.g. as uncertain) without this backend run:
                # nobody will deliver it, so it must not keep running.
                unused = current.status is RunStatus.CANCELLED or orphan
                unused = unused or current.backend_run_id is None
            elif orphan:
                unused = True  # a run adopted from an earlier attempt's webhook is the one
            else:
                unused = False
                changes: dict[str, Any] = {"updated_at": self.clock()}
                if current.backend_run_id != backend_run_id:
                    changes["backend_run_id"] = backend_run_id
                if current.status.rank < RunStatus.WAITING.rank:
                    changes["status"] = RunStatus.WAITING
                current = await self.runs.update_run(run.id, **changes)
                self.tracker.track(current)
        if unused:
            await self.tracker.cancel_orphan(run.id, backend_run_id)
            return
        if current.is_terminal:
            return
        self.bus.publish(
            GenerationStarted(
                run.id,
                run.user_id,
                run.chat_id,
                backend_run_id=backend_run_id,
                deployment_id=dep_id,
            )
        )
        log.info("run %s submitted: deployment=%s backend=%s", run.id, dep_id, backend_run_id)
        if self._early_updates.pop(backend_run_id, 0) is None:
            await self.tracker.poll_once(run.id)

    async def _image_values(self, request: GenerationRequest) -> dict[str, str]:
        """Prepare every input image of ``request`` (off the event loop) and turn it into a
        data URI or an uploaded URL, keyed by input name (``input_image``, ``input_mask``...).
        The mask is sized to the prepared photo."""
        estimate = sum(
            decoded_size_estimate(img.data)
            for name in IMAGE_FIELDS
            if (img := getattr(request, name)) is not None
        )
        async with self.image_budget.hold(estimate):
            return await self._prepare_image_values(request)

    async def _prepare_image_values(self, request: GenerationRequest) -> dict[str, str]:
        values: dict[str, str] = {}
        photo: InputImage | None = None
        if request.image is not None:
            photo = await aprepare_image(request.image, field="image")
        for name in IMAGE_FIELDS:
            img: InputImage | None = getattr(request, name)
            if img is None:
                continue
            if name == "image":
                img = photo
            elif name == "mask":
                if photo is not None and photo.width and photo.height:
                    size = (photo.width, photo.height)
                else:
                    size = (request.width, request.height)
                img = await aprepare_mask(img, size=size, field="mask")
            else:
                img = await aprepare_image(img, field=name)
            assert img is not None
            values[f"input_{name}"] = await image_input_value(
                img, self.backend, inline_max_bytes=self.settings.inline_image_max_bytes
            )
        return values
