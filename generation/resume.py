"""What ``GenerationService.start`` does with the runs a previous process left unfinished:
queued runs are queued again, runs in flight tracked again, a submit that may or may not
have reached the backend is never repeated, finished runs get their delivery or hold
settled."""

from __future__ import annotations

import logging

from generation.errors import GenerationError, InterruptedError_, SubmitUncertainError
from generation.models import ChargeState, DeliveryState, RunRecord, RunStatus
from generation.run_inputs import image_refs, images_stored, record_had_images, request_from_record
from generation.run_state import completion_events
from generation.scheduler import QueueItem
from generation.submission import Pending, Submitter
from generation.types import validate_request

log = logging.getLogger(__name__)


class Resumer:
    def __init__(self, submitter: Submitter) -> None:
        self.submitter = submitter
        self.backend = submitter.backend
        self.runs = submitter.runs
        self.balances = submitter.balances
        self.bus = submitter.bus
        self.scheduler = submitter.scheduler
        self.tracker = submitter.tracker
        self.inputs = submitter.inputs

    async def resume(self) -> None:
        keep: set[str] = set()
        for run in await self.runs.list_unfinished_runs():
            if not run.is_terminal:
                keep.update(image_refs(run.request))
            try:
                await self._resume_run(run)
            except Exception:
                log.exception("run %s: resume failed", run.id)
        await self.inputs.sweep(keep)

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
                await self.submitter.after_create(run, found, run.deployment_id or "")
        elif not status.is_terminal:
            self.scheduler.mark_active(run.id, run.user_id)
            self.tracker.track(run)
        elif status is RunStatus.SUCCESS:
            await self._resume_success(run)
        elif run.charge_state is ChargeState.HELD:
            await self.balances.release_hold(run.id)

    async def _resume_success(self, run: RunRecord) -> None:
        if run.delivery_state is DeliveryState.PENDING:
            for event in completion_events(run):
                self.bus.publish(event)
        elif run.charge_state is ChargeState.HELD:
            if run.delivery_state is DeliveryState.DELIVERED:
                await self.balances.settle_hold(run.id)
            else:
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

    async def _resume_queued(self, run: RunRecord) -> None:
        pending = self.submitter.pending.get(run.id)
        request = pending.request if pending else None
        if request is None:
            try:
                request = request_from_record(run.request)
                on_disk = self.inputs.store is not None and images_stored(run.request)
                if record_had_images(run.request) and not on_disk:
                    raise InterruptedError_("input images were lost in a restart")
                if not on_disk:
                    validate_request(request)
            except (GenerationError, ValueError) as exc:
                err = exc if isinstance(exc, InterruptedError_) else InterruptedError_(str(exc))
                await self.tracker.fail(run.id, err)
                return
            self.submitter.pending[run.id] = Pending(request)
            self.inputs.hold(run.id, image_refs(run.request))
        if not self.scheduler.is_queued(run.id) and not self.scheduler.is_active(run.id):
            self.scheduler.submit(QueueItem(run.id, run.user_id, run.chat_id), enforce_cap=False)
