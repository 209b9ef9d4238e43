"""Operating signals: the per-type generation series of ``/metrics``, fed by the event bus.

:class:`GenerationSignals` subscribes to the terminal events of the generation service and, for
each finished run, reads its record once (type, timestamps) to count it by type and time it
(the service's own counters, ``generation/counters.py``, count by status and code). Credits
spent are summed from the ledger incrementally (only rows newer than the last scrape are read).
Every series is documented in docs/metrics.md (a test checks the list matches what is
registered), and docs/grafana-dashboard.json charts them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Protocol

from bot.metrics import Metrics, install_generation_metrics
from bot.rate_limit import BotRateLimiter
from generation.events import (
    EventBus,
    GenerationCancelled,
    GenerationCompleted,
    GenerationEvent,
    GenerationFailed,
)
from generation.models import RunRecord
from generation.service import GenerationService
from storage import Storage

log = logging.getLogger(__name__)

# Seconds: a generation takes from under a second (preview) to minutes (video, cold GPU).
DURATION_BUCKETS = (1, 2.5, 5, 10, 20, 30, 45, 60, 90, 120, 180, 300, 600, 1200)
WAIT_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300)


class _Runs(Protocol):
    async def get_run(self, run_id: str) -> RunRecord | None: ...


class _Ledger(Protocol):
    async def credits_spent_since(self, after_id: int) -> tuple[int, int]: ...


def declare(metrics: Metrics) -> None:
    """Declare the generation series so they render (as 0) before the first run."""
    metrics.counter("generations_total", "Finished generations by type and status")
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


class CreditsSpent:
    """``credits_spent_total``: the ledger's generation debits, read incrementally."""

    def __init__(self, ledger: _Ledger) -> None:
        self._ledger = ledger
        self._total = 0
        self._after = 0  # the last ledger id already summed
        self._lock = asyncio.Lock()  # two scrapes at once must not count rows twice

    async def __call__(self) -> int:
        async with self._lock:
            spent, last = await self._ledger.credits_spent_since(self._after)
            self._total += spent
            self._after = max(self._after, last)
            return self._total


def install_credits_spent(metrics: Metrics, ledger: _Ledger) -> None:
    metrics.counter_callback(
        "credits_spent_total",
        CreditsSpent(ledger),
        "Credits charged for delivered generations (ledger; free and paid)",
    )


class _Runtime(Protocol):
    """What :func:`install_signals` needs of ``bot/app.py``'s Runtime."""

    metrics: Metrics
    storage: Storage | None
    service: GenerationService | None


def install_signals(runtime: _Runtime, rate_limiter: object) -> None:
    """Every generation series for the composition root: the service's in-process counters
    (``bot/metrics.py: install_generation_metrics``), the per-type series from its bus, the
    credits spent from the ledger, and the 429s of ``rate_limiter`` (a :class:`BotRateLimiter`;
    ``None`` when the bot runs without one)."""
    if runtime.service is None or runtime.storage is None:
        return
    install_generation_metrics(runtime.metrics, runtime.service)
    GenerationSignals(runtime.metrics, runtime.storage.runs).subscribe(runtime.service.bus)
    install_credits_spent(runtime.metrics, runtime.storage.ledger)
    if isinstance(rate_limiter, BotRateLimiter):
        rate_limiter.on_retry_after = count_retry_after(runtime.metrics)
