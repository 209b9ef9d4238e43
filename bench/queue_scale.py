"""Figure 6, the scale of the queue: ``python -m bench.queue_scale [N ...]`` (default 1000 10000).

Runs in its own process (so its RSS is the queue's) the bot's real ``GenerationService`` over
the real SQLite ``Storage``, with no workers started: every ``generate`` persists its run and
queues it, nothing is dispatched, so the queue grows to N. One service grows through every
checkpoint; at each checkpoint N it reports

* submit cost: mean wall time of one ``generate`` over the last ``WINDOW`` submits (queue ≈ N);
* position updates per submit: ``GenerationQueued`` events published per ``generate`` there;
* dispatch: mean time of taking the head of the queue (``FairScheduler.try_take``, what a
  worker does; positions are only marked stale there);
* position flush: the one pass that publishes the positions that changed (the service runs it
  at most once per ``queue_position_interval``; here explicitly, right after the dispatches,
  when every queued run has moved): its time and updates, per queued run;
* memory per queued run: VmRSS growth since the empty queue, divided by N;
* the worst event-loop turn of ``bench/queue_bench.py`` (the hardening figure, reused): N
  submits to a bare ``FairScheduler``, one per turn, 5 per user, the service's 1 s interval,
  every turn timed until all positions are published (each slice of the pass is one turn).

Users: each run comes from its own user (the cheapest round-robin case: a new run joins at the
end and moves nobody). The last line is one JSON object, read by ``bench/run.py``.
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.procstat import rss_kb
from generation import (
    EventBus,
    GenerationContext,
    GenerationQueued,
    GenerationRequest,
    GenerationService,
    GenerationSettings,
)
from generation.models import DeploymentInfo, RunSnapshot
from storage import Storage

WINDOW = 200  # submits averaged per checkpoint
TAKES = 20  # dispatches measured per checkpoint
DEPLOYMENT = "00000000-0000-4000-8000-000000000001"


class _IdleBackend:
    """A backend nothing reaches: no worker runs in this benchmark."""

    async def create_run(self, deployment_id: str, inputs: dict[str, Any], **_: Any) -> str:
        raise AssertionError("no dispatch in the queue benchmark")

    async def get_run(self, run_id: str) -> RunSnapshot:
        raise AssertionError("no polling in the queue benchmark")

    async def cancel_run(self, run_id: str) -> None:
        return None

    async def upload_file(self, data: bytes, filename: str, content_type: str) -> str:
        raise AssertionError("no uploads in the queue benchmark")

    async def list_deployments(self) -> list[DeploymentInfo]:
        return []

    async def aclose(self) -> None:
        return None


def _settings() -> GenerationSettings:
    """Caps lifted (the global queue cap, MAX_QUEUED_TOTAL, included when this version of
    the service has it): the benchmark measures the queue's cost, not its refusals."""
    settings = GenerationSettings(
        max_in_flight=1_000_000, max_active_per_user=1, max_queued_per_user=1
    )
    if hasattr(settings, "max_queued_total"):
        settings.max_queued_total = 10**9
    return settings


class _Counter:
    def __init__(self) -> None:
        self.positions = 0

    def on_publish(self, bus: EventBus) -> None:
        publish = bus.publish

        def counting(event: Any) -> None:
            if isinstance(event, GenerationQueued):
                self.positions += 1
            publish(event)

        bus.publish = counting  # type: ignore[method-assign]


async def queue_scale(checkpoints: list[int], tmp: Path) -> dict[str, Any]:
    checkpoints = sorted(checkpoints)
    counter = _Counter()
    bus = EventBus()
    counter.on_publish(bus)
    out: dict[str, Any] = {"checkpoints": {}}
    async with await Storage.open(tmp / "queue-scale.sqlite3") as storage:
        await storage.deployments.add("MAKE", DEPLOYMENT)
        service = GenerationService(
            backend=_IdleBackend(),
            runs=storage.runs,
            balances=storage.ledger,
            deployments=storage.deployments,
            loras=storage.loras,
            bus=bus,
            settings=_settings(),
        )
        base_rss = rss_kb()
        submitted = 0
        user = 0
        for n in checkpoints:
            times: list[float] = []
            positions_before = 0
            while submitted < n:
                user += 1
                if n - submitted == WINDOW:
                    positions_before = counter.positions
                request = GenerationRequest(prompt=f"queued {user}", user_id=user, chat_id=user)
                started = time.perf_counter()
                await service.generate(request, GenerationContext(price=0))
                times.append(time.perf_counter() - started)
                submitted += 1
            window = times[-WINDOW:]
            submit_positions = (counter.positions - positions_before) / len(window)
            rss = rss_kb()
            take_times: list[float] = []
            before = counter.positions
            for _ in range(TAKES):
                started = time.perf_counter()
                item = service.scheduler.try_take()
                take_times.append(time.perf_counter() - started)
                assert item is not None
                service.scheduler.release(item.run_id)
            submitted -= TAKES
            dispatch_positions = counter.positions - before
            flush = getattr(service.scheduler, "flush_positions", None)
            before = counter.positions
            started = time.perf_counter()
            if flush is not None:  # coalesced positions (else published by try_take itself)
                flush()
            flush_s = time.perf_counter() - started
            flush_positions = counter.positions - before + dispatch_positions
            queued = service.scheduler.queued_count()
            out["checkpoints"][str(n)] = {
                "submit_s": sum(window) / len(window),
                "positions_per_submit": submit_positions,
                "dispatch_s": sum(take_times) / TAKES,
                "flush_s_per_run": flush_s / queued,
                "flush_positions_per_run": flush_positions / queued,
                "rss_per_run_kb": (rss - base_rss) / n,
                "rss_kb": rss,
            }
            print(f"  queue {n}: {json.dumps(out['checkpoints'][str(n)])}", flush=True)
    for n in checkpoints:  # after the RSS figures: it allocates its own queue
        out["checkpoints"][str(n)]["worst_turn_s"] = await _worst_turn(n)
    return out


async def _worst_turn(n: int) -> float:
    """bench/queue_bench.py's worst event-loop turn for ``n`` submits (NaN without it)."""
    try:
        from bench.queue_bench import _run
    except ImportError:
        return float("nan")
    result = await _run(n, coalesce=True, burst=False, interval=1.0)
    return float(result["worst_turn_ms"]) / 1000


def main(argv: list[str] | None = None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    checkpoints = [int(a) for a in args] or [1000, 10_000]
    with tempfile.TemporaryDirectory(prefix="bench-queue-") as tmp:
        result = asyncio.run(queue_scale(checkpoints, Path(tmp)))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
