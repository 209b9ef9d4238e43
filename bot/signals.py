"""Operating signals: the generation series of ``/metrics``, fed by the event bus.

:class:`GenerationSignals` subscribes to the terminal events of the generation service and, for
each finished run, reads its record once (type, timestamps) to count it and time it. Gauges and
the credits counter are read at scrape time from the scheduler and the ledger. Every series is
documented in docs/metrics.md (a test checks the list matches what is registered), and
docs/grafana-dashboard.json charts them.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from bot.metrics import Metrics
from generation.events import (
    EventBus,
    GenerationCancelled,
    GenerationCompleted,
    GenerationEvent,
    GenerationFailed,
)
from generation.models import RunRecord

log = logging.getLogger(__name__)

# Seconds: a generation takes from under a second (preview) to minutes (video, cold GPU).
DURATION_BUCKETS = (1, 2.5, 5, 10, 20, 30, 45, 60, 90, 120, 180, 300, 600, 1200)
WAIT_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300)


class _Runs(Protocol):
    async def get_run(self, run_id: str) -> RunRecord | None: ...


class _Scheduler(Protocol):
    @property
    def in_flight(self) -> int: ...

    def queued_count(self, user_id: int | None = None) -> int: ...


def declare(metrics: Metrics) -> None:
    """Declare the generation series so they render (as 0) before the first run."""
    metrics.counter("generations_total", "Finished generations by type and status")
    metrics.counter("generation_errors_total", "Failed generations by stable error code")
    metrics.counter("telegram_retry_after_total", "Telegram 429 answers (flood control)")
    metrics.histogram(
        "generation_duration_seconds",
        "Seconds from request accepted to result ready, successful runs, by type",
        DURATION_BUCKETS,
    )
    metrics.histogram(
        "generation_queue_wait_seconds",
        "Seconds a run waited in the bot's queue before the backend accepted it, by type",
        WAIT_BUCKETS,
    )


class GenerationSignals:
    """Counts and times finished runs; see the module docstring."""

    def __init__(self, metrics: Metrics, runs: _Runs) -> None:
        self._metrics = metrics
        self._runs = runs
        declare(metrics)

    def subscribe(self, bus: EventBus) -> Callable[[], None]:
        return bus.subscribe(
            self.on_event, GenerationCompleted, GenerationFailed, GenerationCancelled
        )

    async def on_event(self, event: GenerationEvent) -> None:
        try:
            run = await self._runs.get_run(event.run_id)
        except Exception:  # metrics must never break the bot
            log.warning("run %s: metrics could not read the run", event.run_id, exc_info=True)
            return
        if run is None:
            return
        self.record(run, event)

    def record(self, run: RunRecord, event: GenerationEvent) -> None:
        status = {
            GenerationCompleted: "success",
            GenerationFailed: "failed",
            GenerationCancelled: "cancelled",
        }.get(type(event), "other")
        labels = {"type": run.type}
        self._metrics.inc("generations_total", labels={**labels, "status": status})
        if isinstance(event, GenerationFailed):
            self._metrics.inc("generation_errors_total", labels={"code": event.error_code})
        if run.submitted_at is not None:
            wait = max(0.0, run.submitted_at - run.created_at)
            self._metrics.observe("generation_queue_wait_seconds", wait, labels)
        if status == "success" and run.finished_at is not None:
            duration = max(0.0, run.finished_at - run.created_at)
            self._metrics.observe("generation_duration_seconds", duration, labels)


def count_retry_after(metrics: Metrics) -> Callable[[str], None]:
    """A callback for the rate limiter: one call per 429 answer from Telegram."""

    def on_retry_after(endpoint: str) -> None:
        metrics.inc("telegram_retry_after_total")

    return on_retry_after


def install_gauges(
    metrics: Metrics,
    scheduler: _Scheduler,
    credits_spent: Callable[[], Awaitable[int]],
) -> None:
    """Scrape-time series: the queue, runs in flight, credits spent (from the ledger)."""
    metrics.gauge_callback(
        "generation_queue_depth",
        lambda: scheduler.queued_count(),
        "Runs waiting in the bot's fair queue",
    )
    metrics.gauge_callback(
        "generations_in_flight",
        lambda: scheduler.in_flight,
        "Runs submitted to the backend and not finished",
    )

    async def spent() -> Any:
        return await credits_spent()

    metrics.counter_callback(
        "credits_spent_total", spent, "Credits charged for delivered generations (ledger)"
    )
