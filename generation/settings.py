"""GenerationSettings: the knobs of the run lifecycle (filled from bot/config.py by
bot/backends.py: generation_settings)."""

from __future__ import annotations

from dataclasses import dataclass


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
