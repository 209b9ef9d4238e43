"""Normalize ComfyDeploy run statuses and parse run bodies (GET /run/{id} or a webhook)."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

from generation.errors import BackendError
from generation.models import RunSnapshot, RunStatus
from generation.outputs import parse_outputs

log = logging.getLogger(__name__)

_STATUS_MAP: dict[str, RunStatus] = {
    "not-started": RunStatus.WAITING,
    "queued": RunStatus.WAITING,
    "started": RunStatus.STARTING,
    "running": RunStatus.RUNNING,
    "uploading": RunStatus.RUNNING,
    "success": RunStatus.SUCCESS,
    "failed": RunStatus.FAILED,
    "error": RunStatus.FAILED,
    "timeout": RunStatus.TIMEOUT,
    "cancelled": RunStatus.CANCELLED,
}


def normalize_status(raw: str | None) -> RunStatus:
    """Map a backend status to ours. Unknown values count as WAITING (never terminal), so a
    surprise value can never end a run early; the polling backstop and deadline still apply."""
    if isinstance(raw, str):
        status = _STATUS_MAP.get(raw.strip().lower())
        if status is not None:
            return status
    log.warning("unknown ComfyDeploy run status %r; treating as waiting", raw)
    return RunStatus.WAITING


def _progress(value: Any) -> float:
    if isinstance(value, bool):
        return 0.0
    try:
        number = float(value)
    except (TypeError, ValueError):
        return 0.0
    if not math.isfinite(number):
        return 0.0
    return min(1.0, max(0.0, number))


def _queue_position(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value if value >= 0 else None


def snapshot_from_payload(payload: Mapping[str, Any]) -> RunSnapshot:
    """Parse a GET /run/{id} body (``id``) or a webhook body (``run_id``).

    Tolerates missing and garbage fields; raises :class:`BackendError` only when the body is
    not an object or carries no run id.
    """
    if not isinstance(payload, Mapping):
        raise BackendError("run body is not a JSON object", body_type=type(payload).__name__)
    run_id = payload.get("run_id")
    if not isinstance(run_id, str) or not run_id.strip():
        run_id = payload.get("id")
    if not isinstance(run_id, str) or not run_id.strip():
        raise BackendError("run body has no run id")
    raw_status = payload.get("status")
    raw = raw_status if isinstance(raw_status, str) else ""
    status = normalize_status(raw_status)
    live_status = payload.get("live_status")
    progress = 1.0 if status is RunStatus.SUCCESS else _progress(payload.get("progress"))
    return RunSnapshot(
        backend_run_id=run_id.strip(),
        status=status,
        raw_status=raw,
        progress=progress,
        live_status=live_status if isinstance(live_status, str) and live_status else None,
        queue_position=_queue_position(payload.get("queue_position")),
        outputs=parse_outputs(payload.get("outputs")),
        webhook=webhook if isinstance(webhook := payload.get("webhook"), str) and webhook else None,
    )
