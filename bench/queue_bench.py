"""Queue figure: queue positions for 10,000 queued runs (issue 11, point 8).

``python -m bench.queue_bench`` submits N runs (users × 5 each, in user order, one submit per
event-loop turn or all in one burst) to :class:`generation.scheduler.FairScheduler` and prints
the position events published, the publishing passes and the longest time the loop was
blocked by one turn (the total includes the wait for the interval flush): coalesced per turn,
with the service's 1 s interval, and, for a smaller N, the per-change publishing it replaced
(``coalesce=False``). The turns are timed until the scheduler has nothing left to publish, so
every slice of its passes is one measured turn (the synchronous ``flush_positions``, which the
bot never calls, is not a loop turn and is not timed here; bench/queue_scale.py times it per
queued run).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import time

from generation.scheduler import FairScheduler, QueueItem

PER_USER = 5


async def _run(
    total: int, *, coalesce: bool, burst: bool, interval: float = 0.0
) -> dict[str, float]:
    """The cyclic garbage collector is paused while the turns are timed (as ``timeit`` does):
    a full collection costs O(heap), whatever the queue does, and lands in one turn at random."""
    enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        return await _timed_run(total, coalesce=coalesce, burst=burst, interval=interval)
    finally:
        if enabled:
            gc.enable()


async def _timed_run(
    total: int, *, coalesce: bool, burst: bool, interval: float
) -> dict[str, float]:
    events = 0

    def count(_item: QueueItem, _pos: int) -> None:
        nonlocal events
        events += 1

    s = FairScheduler(
        max_in_flight=1,
        max_queued_per_user=PER_USER,
        on_position=count,
        coalesce=coalesce,
        position_interval=interval,
    )
    users = total // PER_USER
    worst = 0.0
    started = time.perf_counter()
    for user in range(users):
        for n in range(PER_USER):
            t0 = time.perf_counter()
            s.submit(QueueItem(f"{user}-{n}", user))
            if not burst:
                await asyncio.sleep(0)  # the flush runs in this turn
            worst = max(worst, time.perf_counter() - t0)
    worst = max(worst, await _drain(s, interval))
    elapsed = time.perf_counter() - started
    t0 = time.perf_counter()
    s.position(f"{users - 1}-{PER_USER - 1}")
    lookup = time.perf_counter() - t0
    return {
        "runs": users * PER_USER,
        "events": events,
        "flushes": s.position_flushes,
        "total_s": elapsed,
        "worst_turn_ms": worst * 1000,
        "position_lookup_ms": lookup * 1000,
    }


async def _drain(s: FairScheduler, interval: float) -> float:
    """The longest loop turn until ``s`` has published everything (the interval's pass and
    each of its slices included): one ``sleep(0)`` per turn, so this spins while it waits."""
    worst = 0.0
    deadline = time.perf_counter() + interval + 10.0  # bounded, whatever happens
    while time.perf_counter() < deadline:
        t0 = time.perf_counter()
        await asyncio.sleep(0)
        worst = max(worst, time.perf_counter() - t0)
        if not s.flush_pending:
            break
    return worst


def _line(label: str, r: dict[str, float]) -> str:
    return (
        f"{label:<34} runs={int(r['runs']):>6} events={int(r['events']):>9} "
        f"flushes={int(r['flushes']):>6} total={r['total_s']:.3f}s "
        f"worst_turn={r['worst_turn_ms']:.1f}ms lookup={r['position_lookup_ms']:.2f}ms"
    )


async def main(total: int, old_total: int) -> None:
    print(_line("coalesced, burst", await _run(total, coalesce=True, burst=True)))
    print(_line("coalesced, one submit per turn", await _run(total, coalesce=True, burst=False)))
    one_second = await _run(total, coalesce=True, burst=False, interval=1.0)
    print(_line("1 s interval (service default)", one_second))
    print(
        _line("per-change (old), one per turn", await _run(old_total, coalesce=False, burst=False))
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--old-runs", type=int, default=2_000)
    args = parser.parse_args()
    asyncio.run(main(args.runs, args.old_runs))
