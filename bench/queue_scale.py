"""Figure 6, the scale of the queue: ``python -m bench.queue_scale [N ...]`` (default 1000 10000).

Runs in its own process (so its RSS is the queue's) the bot's real ``GenerationService`` over
the real SQLite ``Storage``, with no workers started: every ``generate`` persists its run and
queues it, nothing is dispatched, so the queue grows to N. One service grows through every
checkpoint; at each checkpoint N it reports

* submit cost: mean wall time of one ``generate`` over the last ``WINDOW`` submits (queue ≈ N);
* position updates per submit: ``GenerationQueued`` events published per ``generate`` there;
* dispatch: mean time of taking the head of the queue (``FairScheduler.try_take``, what a
  worker does) and the position updates it publishes (every run behind it moves up one);
* memory per queued run: VmRSS growth since the empty queue, divided by N.

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
            settings=GenerationSettings(
                max_in_flight=1_000_000, max_active_per_user=1, max_queued_per_user=1
            ),
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
            out["checkpoints"][str(n)] = {
                "submit_s": sum(window) / len(window),
                "positions_per_submit": submit_positions,
                "dispatch_s": sum(take_times) / TAKES,
                "positions_per_dispatch": (counter.positions - before) / TAKES,
                "rss_per_run_kb": (rss - base_rss) / n,
                "rss_kb": rss,
            }
            print(f"  queue {n}: {json.dumps(out['checkpoints'][str(n)])}", flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    checkpoints = [int(a) for a in args] or [1000, 10_000]
    with tempfile.TemporaryDirectory(prefix="bench-queue-") as tmp:
        result = asyncio.run(queue_scale(checkpoints, Path(tmp)))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
