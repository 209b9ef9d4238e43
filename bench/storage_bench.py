"""Storage figure (e): balance holds per second, each followed by its settle or release.

Runs in process against a fresh SQLite file with the bot's real :class:`storage.Storage`
(WAL, ``synchronous=NORMAL``, one connection owner). Even cycles settle, odd ones release.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

from storage import Storage

STARTING_BALANCE = 10**9


async def _cycle(storage: Storage, user_id: int, n: int) -> None:
    run_id = uuid.uuid4().hex
    await storage.ledger.hold(user_id, 1, run_id)
    if n % 2 == 0:
        ok = await storage.ledger.settle_hold(run_id)
    else:
        ok = await storage.ledger.release_hold(run_id)
    if not ok:
        raise RuntimeError(f"hold {run_id} was not resolved")


async def storage_benchmark(tmp: Path, cycles: int, *, concurrency: int = 50) -> dict[str, float]:
    """``{"holds/s single": ..., "holds/s N concurrent": ...}`` (hold + settle|release)."""
    results: dict[str, float] = {}
    async with await Storage.open(tmp / "storage-bench.sqlite3") as storage:
        for user_id in range(1, concurrency + 1):
            await storage.users.get_or_create(user_id, starting_balance=STARTING_BALANCE)
        for n in range(50):  # warm-up
            await _cycle(storage, 1, n)

        started = time.perf_counter()
        for n in range(cycles):
            await _cycle(storage, 1, n)
        results["holds/s single"] = cycles / (time.perf_counter() - started)

        per_worker = max(1, cycles // concurrency)

        async def worker(user_id: int) -> None:
            for n in range(per_worker):
                await _cycle(storage, user_id, n)

        started = time.perf_counter()
        await asyncio.gather(*(worker(u) for u in range(1, concurrency + 1)))
        elapsed = time.perf_counter() - started
        results[f"holds/s {concurrency} concurrent"] = per_worker * concurrency / elapsed

        problems = await storage.ledger.check_consistency()
        if problems:
            raise RuntimeError(f"ledger inconsistent after the benchmark: {problems[:3]}")
    for name, value in results.items():
        print(f"  {name}: {value:,.0f}")
    return results
