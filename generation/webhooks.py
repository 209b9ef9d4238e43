"""ComfyDeploy webhooks: is a call ours (the ``r``/``t`` query parameters of the URL we gave
the run), and applying one to the run it names."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from generation.models import RunStatus
from generation.orphans import Orphans
from generation.ports import RunStore
from generation.status import snapshot_from_payload
from generation.tokens import verify_webhook_token
from generation.tracker import RunTracker

log = logging.getLogger(__name__)

# How long a webhook that beat its run's create answer waits for that answer before it is
# checked as a foreign backend run (a GET) instead.
CREATE_ANSWER_WAIT = 10.0


def webhook_is_ours(secret: str, run_id: str, url: str | None) -> bool:
    """Is ``url`` the webhook URL we gave ``run_id`` (same run ref, valid token)?"""
    if not url:
        return False
    query = dict(parse_qsl(urlsplit(url).query))
    return query.get("r") == run_id and verify_webhook_token(secret, run_id, query.get("t"))


async def apply_webhook(
    runs: RunStore,
    tracker: RunTracker,
    orphans: Orphans,
    secret: str,
    payload: Mapping[str, Any],
    token: str | None,
    run_ref: str | None,
    wait_created: Callable[[str, float], Awaitable[bool]] | None = None,
) -> bool:
    """Apply a ComfyDeploy webhook. ``run_ref``/``token`` are the ``r``/``t`` query
    parameters of our webhook URL. Returns False (and changes nothing) when the call is
    forged, unknown or malformed. A reported success is confirmed with ``GET /run/{id}``
    before anything is delivered, and a backend run the run does not track is checked the
    same way (adopted or cancelled), so the HTTP layer runs this in a task of its own.

    ``wait_created(run_id, timeout)`` waits for the create of that run in flight (False when
    none is): a webhook that overtook its create's answer waits for the answer rather than
    paying a GET as a foreign run; a backend run still unknown after it is checked as before."""
    if not run_ref or not verify_webhook_token(secret, run_ref, token):
        log.warning("webhook rejected: bad token")
        return False
    run = await runs.get_run(run_ref)
    if run is None:
        log.warning("webhook rejected: unknown run")
        return False
    try:
        snapshot = snapshot_from_payload(payload)
    except Exception as exc:
        log.warning("webhook rejected for run %s: %r", run_ref, exc)
        return False
    if (
        run.backend_run_id is None
        and wait_created is not None
        and await wait_created(run.id, CREATE_ANSWER_WAIT)
    ):
        run = await runs.get_run(run.id) or run
    if run.backend_run_id is None or snapshot.backend_run_id != run.backend_run_id:
        # A backend run we do not track reports to this run's URL: a create whose answer
        # was lost (adopted when the run has none yet) or a duplicate (cancelled).
        return await orphans.foreign_webhook(run.id, snapshot.backend_run_id)
    if snapshot.status is RunStatus.SUCCESS:
        if not run.is_terminal:
            await tracker.confirm(run.id, run.backend_run_id)
        return True
    await tracker.apply(run.id, snapshot, source="webhook")
    return True
