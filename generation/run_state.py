"""The pure part of a run's state machine (generation/tracker.py applies it): what a
backend snapshot changes in a stored run, and the events a finished run publishes."""

from __future__ import annotations

from typing import Any

from generation.errors import ErrorCode
from generation.events import (
    GenerationCancelled,
    GenerationCompleted,
    GenerationEvent,
    GenerationFailed,
    MediaAvailable,
)
from generation.models import RunRecord, RunSnapshot, RunStatus

ERROR_FOR_STATUS = {
    RunStatus.FAILED: ErrorCode.RUN_FAILED,
    RunStatus.TIMEOUT: ErrorCode.RUN_TIMEOUT,
}


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


def final_events(run: RunRecord) -> list[GenerationEvent]:
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


def snapshot_changes(run: RunRecord, snap: RunSnapshot) -> dict[str, Any]:
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
            snap.progress > run.progress or (snap.progress == run.progress and not run.live_status)
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
