"""The submit path of a queued run: a worker takes it from the queue, picks a deployment,
builds the inputs and calls the backend, failing over to another deployment of the type on
BackendUnavailable / RateLimited / DeploymentNotFound; then the backend run is tracked (or,
when the run ended meanwhile, cancelled as an orphan)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from generation.counters import GenerationCounters
from generation.errors import (
    BackendUnavailableError,
    DeploymentNotFoundError,
    GenerationError,
    InterruptedError_,
    NoDeploymentsAvailableError,
    RateLimitedError,
    SubmitUncertainError,
)
from generation.events import EventBus, GenerationStarted
from generation.models import ChargeState, DeploymentConfig, RunRecord, RunStatus
from generation.orphans import Orphans
from generation.ports import Backend, BalanceStore, LoraStore, RunStore
from generation.prompt_builder import PromptBuilder
from generation.request import IMAGE_FIELDS, GenerationRequest
from generation.run_inputs import RunInputs
from generation.scheduler import FairScheduler, QueueItem
from generation.selection import DeploymentSelector
from generation.settings import GenerationSettings
from generation.tokens import webhook_url
from generation.tracker import RunTracker
from generation.types import ResolvedType, deployment_keys_for, validate_request

log = logging.getLogger(__name__)

_FAILOVER_ERRORS = (BackendUnavailableError, RateLimitedError, DeploymentNotFoundError)
MAX_CREATES_TRACKED = 10_000  # in-flight creates others may wait for (bounded memory)


@dataclass(slots=True)
class Pending:
    """What a queued run needs that is not persisted: image bytes and the caller's balance."""

    request: GenerationRequest
    balance: int | None = None
    run: RunRecord | None = None  # the record as created (spares dispatch a re-read)


@dataclass(slots=True)
class _Create:
    """A dispatch in progress: ``issued`` once its create-run call has left (or the dispatch
    ended), ``stored`` once the answer is stored (or the dispatch ended without one)."""

    issued: asyncio.Event = field(default_factory=asyncio.Event)
    stored: asyncio.Event = field(default_factory=asyncio.Event)


async def _wait(event: asyncio.Event, timeout: float) -> None:  # noqa: ASYNC109
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            await event.wait()


@dataclass(kw_only=True, eq=False)
class Submitter:
    """Takes queued runs to the backend (``GenerationService`` wires it; ``resume.py`` uses
    its pending requests and ``after_create`` too)."""

    backend: Backend
    runs: RunStore
    balances: BalanceStore
    loras: LoraStore
    bus: EventBus
    settings: GenerationSettings
    clock: Callable[[], float]
    counters: GenerationCounters
    selector: DeploymentSelector
    scheduler: FairScheduler
    tracker: RunTracker
    orphans: Orphans
    inputs: RunInputs
    pending: dict[str, Pending] = field(default_factory=dict)
    # backend run ids pushed before tracked
    _early_updates: dict[str, None] = field(default_factory=dict)
    # run id → its dispatch in progress (until the create's answer is stored)
    _creating: dict[str, _Create] = field(default_factory=dict)

    def creating(self, run_id: str) -> bool:
        """Is a worker dispatching ``run_id`` (its create not answered and stored yet)?"""
        return run_id in self._creating

    async def wait_issued(self, run_id: str, timeout: float) -> None:  # noqa: ASYNC109
        """Wait at most ``timeout`` seconds for the create-run of ``run_id``, if a worker is
        dispatching it, to leave (at once when none is)."""
        create = self._creating.get(run_id)
        if create is not None:
            await _wait(create.issued, timeout)

    async def wait_created(self, run_id: str, timeout: float) -> bool:  # noqa: ASYNC109
        """Wait at most ``timeout`` seconds for the create of ``run_id`` in flight to be
        answered and its backend run id stored (or for the dispatch to end without one).
        False at once when no create of that run is in flight."""
        create = self._creating.get(run_id)
        if create is None:
            return False
        await _wait(create.stored, timeout)
        return True

    def _issued(self, run_id: str) -> None:
        create = self._creating.get(run_id)
        if create is not None:
            create.issued.set()

    def _created(self, run_id: str) -> None:
        create = self._creating.pop(run_id, None)
        if create is not None:
            create.issued.set()
            create.stored.set()

    async def on_backend_update(self, backend_run_id: str) -> None:
        """A backend pushed "this run changed" (ComfyUI's WebSocket): poll it now. A push
        that arrives before the create call returned is kept and applied once tracked."""
        run = await self.runs.get_run_by_backend_id(backend_run_id)
        if run is not None and self.tracker.is_tracked(run.id):
            await self.tracker.poll_once(run.id)
            return
        self._early_updates[backend_run_id] = None
        while len(self._early_updates) > 1000:
            del self._early_updates[next(iter(self._early_updates))]

    async def dispatch(self, item: QueueItem) -> None:
        """Submit one run taken from the queue (what a worker does with each item)."""
        if len(self._creating) < MAX_CREATES_TRACKED:
            self._creating.setdefault(item.run_id, _Create())
        try:
            await self._dispatch(item)
        finally:
            self._created(item.run_id)

    async def _dispatch(self, item: QueueItem) -> None:
        pending = self.pending.get(item.run_id)
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
            request = await self.inputs.load(run, pending.request)
            resolved = validate_request(request)
            image_values = await self.inputs.values(request)
            loras = [entry for entry in await self.loras.list_loras() if entry.enabled]
            balance = pending.balance
            if balance is None and loras:  # the balance only gates LoRAs (min_balance)
                balance = await self.balance_before_hold(run)
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

    def _record(self, run: RunRecord, request: GenerationRequest, built: Any) -> dict[str, Any]:
        """The request as stored once built: the stored images' refs (deleted when the run
        ends), the final prompt and the LoRAs applied."""
        record = request.to_record()
        for name in IMAGE_FIELDS:
            meta = run.request.get(name)
            if isinstance(meta, Mapping) and meta.get("ref") and isinstance(record.get(name), dict):
                record[name]["ref"] = meta["ref"]
        record["final_prompt"] = built.final_prompt
        record["applied_loras"] = list(built.applied_loras)
        if built.kept_loras:
            record["kept_loras"] = list(built.kept_loras)
        return record

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
        record = self._record(run, request, built)
        now = self.clock()
        async with self.tracker.lock(run.id):
            submitting = await self.runs.update_run_if_active(
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
        self._issued(run.id)  # the first reply goes right behind it (service.submitted)
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
            await self._uncertain(run, dep_id, exc, polling=hook is None)
            return None
        except GenerationError as exc:  # AuthFailed, InvalidInput, ...: fail at once
            await self.tracker.fail(run.id, exc)
            return None
        self.pending.pop(run.id, None)  # the image bytes are not needed any more
        await self.after_create(run, backend_run_id, dep_id)
        await self.selector.record_success(dep_id)  # after the answer is stored: not before
        return None

    async def _uncertain(
        self, run: RunRecord, dep_id: str, exc: SubmitUncertainError, *, polling: bool
    ) -> None:
        self.counters.inc("generation_creates_uncertain_total")
        await self.selector.record_failure(dep_id)
        if polling:  # polling mode: nothing could ever find that run; fail clearly
            await self.tracker.fail(run.id, exc)
            return
        # Webhook mode: a run created by a lost attempt reports to this run's URL and is
        # adopted then (generation/orphans.py); until the window ends the run waits.
        self.pending.pop(run.id, None)
        self.tracker.await_adoption(run.id, self.clock() + self.settings.adopt_window)
        log.warning("run %s: create on %s uncertain; waiting for its webhook", run.id, dep_id)

    async def balance_before_hold(self, run: RunRecord) -> int:
        """The user's available balance as it was before this run's own hold: a user exactly
        at a LoRA's ``min_balance`` who pays for this run still gets the LoRA."""
        available = await self.balances.get_balance(run.user_id)
        if run.charge_state is ChargeState.HELD:
            available += run.price
        return available

    async def after_create(self, run: RunRecord, backend_run_id: str, dep_id: str) -> None:
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
        if unused or current.is_terminal:
            self._created(run.id)
            if unused:
                await self.orphans.cancel(run.id, backend_run_id)
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
        self._created(run.id)  # webhooks that beat this answer (webhooks.py) go on now
        log.info("run %s submitted: deployment=%s backend=%s", run.id, dep_id, backend_run_id)
        if self._early_updates.pop(backend_run_id, 0) is None:
            await self.tracker.poll_once(run.id)
