"""GenerationService: the public face of the generation module.

CONTRACT SKELETON — the orchestration helper implements the bodies; signatures are fixed
because the bot (handlers/) codes against them.

Flow of one generation::

    generate(request, context)
      validate (type registry: prompt? image? mask?)      → InvalidInputError(field=...)
      per-user caps (active + queued)                      → QueueFullError
      draw the concrete seed, persist the run + hold price → InsufficientBalanceError
      enqueue in the fair queue; publish GenerationQueued
      return the RunRecord at once (status QUEUED)
    worker (own asyncio tasks, at most max_in_flight runs in flight)
      select deployment (role, weight, health, circuit breaker)
      build inputs (PromptBuilder + LoRA triggers gated by balance; images → data URI/upload)
      status SUBMITTING persisted → backend.create_run (retries inside the client)
      → failover to another deployment of the type on BackendUnavailable
      backend run id persisted; publish GenerationStarted
    tracker
      webhooks (process_webhook) + polling backstop (GET /run/{id}) → one state machine/run
      publish GenerationProgress / GenerationCompleted (+ MediaAvailable per output) /
      GenerationFailed / GenerationCancelled. Holds are released by the service on
      failed/timeout/cancelled; on success the caller delivers and calls mark_delivered().
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from generation.events import EventBus
from generation.models import RunRecord
from generation.ports import Backend, BalanceStore, DeploymentStore, LoraStore, RunStore
from generation.request import GenerationContext, GenerationRequest


@dataclass(slots=True)
class GenerationSettings:
    webhook_url: str | None = None  # e.g. "https://bot.example/comfydeploy/webhook"; None → polling only
    webhook_secret: str = ""  # HMAC key for per-run webhook tokens
    poll_interval: float = 3.0  # seconds between GET /run/{id} polls (polling mode)
    webhook_poll_interval: float = 15.0  # slower backstop when webhooks are on
    run_deadline: float = 900.0  # seconds from submit after which a run fails with RUN_TIMEOUT
    max_in_flight: int = 10
    max_active_per_user: int = 2
    max_queued_per_user: int = 5
    inline_image_max_bytes: int = 4_000_000  # larger inputs go through upload_file
    breaker_threshold: int = 3  # consecutive create failures that open a deployment's breaker
    breaker_cooldown: float = 60.0  # seconds before a half-open probe


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
    ) -> None:
        raise NotImplementedError

    bus: EventBus

    async def start(self) -> None:
        """Start worker/tracker tasks and resume every unfinished run from the RunStore."""
        raise NotImplementedError

    async def stop(self) -> None:
        """Stop taking work, cancel our tasks cleanly; persisted runs resume on next start."""
        raise NotImplementedError

    async def generate(self, request: GenerationRequest, context: GenerationContext) -> RunRecord:
        raise NotImplementedError

    async def check_status(self, run_id: str) -> RunRecord:
        """Current record (polls the backend once when the run is in flight)."""
        raise NotImplementedError

    async def cancel_generation(self, run_id: str) -> RunRecord:
        """Cancel a queued or running generation; terminal runs are returned unchanged."""
        raise NotImplementedError

    async def cancel_user_generations(self, user_id: int) -> list[RunRecord]:
        """Cancel all of a user's queued and running generations; returns those cancelled."""
        raise NotImplementedError

    async def process_webhook(self, payload: Mapping[str, Any], token: str | None = None,
                              run_ref: str | None = None) -> bool:
        """Apply a ComfyDeploy webhook. ``run_ref``/``token`` are the ``r``/``t`` query
        parameters of our webhook URL. Returns False (and changes nothing) when the call is
        forged, unknown or malformed."""
        raise NotImplementedError

    def queue_position(self, run_id: str) -> int | None:
        raise NotImplementedError

    async def attach_progress_message(self, run_id: str, message_id: int) -> RunRecord:
        raise NotImplementedError

    async def mark_delivered(self, run_id: str) -> RunRecord:
        """The caller delivered the result: settle the hold (exactly once)."""
        raise NotImplementedError

    async def mark_delivery_failed(self, run_id: str) -> RunRecord:
        """The caller could not deliver: release the hold (exactly once)."""
        raise NotImplementedError
