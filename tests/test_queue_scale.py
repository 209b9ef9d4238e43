"""Queue positions at scale and the global queue cap (issue 11, point 8)."""

from __future__ import annotations

import asyncio

import pytest

from generation import ErrorCode, GenerationContext, QueueBusyError
from generation.scheduler import FLUSH_SLICE, FairScheduler, QueueItem
from tests.test_service import USER, Env, env, make_request

__all__ = ["env"]


async def test_a_burst_of_submits_publishes_each_position_once_in_one_pass() -> None:
    published: list[tuple[str, int]] = []
    s = FairScheduler(
        max_in_flight=1,
        max_queued_per_user=5,
        on_position=lambda item, pos: published.append((item.run_id, pos)),
    )
    for user in range(100):
        for n in range(5):
            s.submit(QueueItem(f"{user}-{n}", user))
    assert published == []  # coalesced: nothing computed yet
    for _ in range(FLUSH_SLICE):  # the pass: one slice of FLUSH_SLICE runs per loop turn
        await asyncio.sleep(0)
        if not s.flush_pending:
            break
    assert s.position_flushes == 1
    assert len(published) == 500
    assert sorted(pos for _, pos in published) == list(range(1, 501))
    assert dict(published) == {i.run_id: n for n, i in enumerate(s.dispatch_order(), 1)}


async def test_only_changed_positions_are_published() -> None:
    published: list[tuple[str, int]] = []
    s = FairScheduler(max_in_flight=1, on_position=lambda i, p: published.append((i.run_id, p)))
    for user in range(10):
        s.submit(QueueItem(f"u{user}", user))
    await asyncio.sleep(0)
    published.clear()
    s.submit(QueueItem("late", 99))  # joins at the end: nothing else moves
    s.remove("u9")
    await asyncio.sleep(0)
    assert published == [("late", 10)]


async def test_global_queue_cap_refuses_politely(env: Env) -> None:
    env.deployment()
    service = env.make(max_queued_total=3, max_queued_per_user=5)
    for user in (1, 2, 3):
        await service.generate(make_request(user), GenerationContext())
    with pytest.raises(QueueBusyError) as caught:
        await service.generate(make_request(USER), GenerationContext())
    assert caught.value.code is ErrorCode.QUEUE_BUSY
    assert len(await env.store.list_user_runs(USER)) == 0  # nothing stored, nothing held


async def test_new_runs_position_is_published_at_once_and_matches_the_order() -> None:
    published: dict[str, int] = {}
    s = FairScheduler(
        max_in_flight=1,
        max_queued_per_user=5,
        on_position=lambda i, p: published.__setitem__(i.run_id, p),
        position_interval=60.0,
    )
    order = [(u, n) for n in range(3) for u in range(4)] + [(9, 0), (2, 3), (0, 3)]
    for user, n in order:
        run_id = f"{user}-{n}"
        s.submit(QueueItem(run_id, user))
        assert published[run_id] == s.position(run_id)  # published synchronously, right
