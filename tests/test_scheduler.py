import asyncio

import pytest

from generation.errors import QueueFullError
from generation.scheduler import FairScheduler, QueueItem


def items(user: int, n: int) -> list[QueueItem]:
    return [QueueItem(f"u{user}-{i}", user) for i in range(n)]


def test_round_robin_across_users_fifo_within_user() -> None:
    s = FairScheduler(max_in_flight=100, max_active_per_user=100, max_queued_per_user=10)
    for it in items(1, 3) + items(2, 2):
        s.submit(it)
    assert [i.run_id for i in s.dispatch_order()] == ["u1-0", "u2-0", "u1-1", "u2-1", "u1-2"]
    assert s.position("u2-0") == 2
    assert s.position("u1-2") == 5
    taken = [s.try_take() for _ in range(5)]
    assert [t.run_id for t in taken if t] == ["u1-0", "u2-0", "u1-1", "u2-1", "u1-2"]
    assert s.try_take() is None


def test_queued_cap_raises_queue_full() -> None:
    s = FairScheduler(max_queued_per_user=2)
    s.submit(QueueItem("a", 1))
    s.submit(QueueItem("b", 1))
    with pytest.raises(QueueFullError):
        s.submit(QueueItem("c", 1))
    s.submit(QueueItem("d", 2))  # other users unaffected
    s.submit(QueueItem("c", 1), enforce_cap=False)
    assert s.queued_count(1) == 3


def test_per_user_active_cap_skips_user_keeping_place() -> None:
    s = FairScheduler(max_in_flight=10, max_active_per_user=1, max_queued_per_user=10)
    for it in items(1, 2) + items(2, 2):
        s.submit(it)
    assert s.try_take().run_id == "u1-0"  # type: ignore[union-attr]
    assert s.try_take().run_id == "u2-0"  # type: ignore[union-attr]
    assert s.try_take() is None  # both users at their active cap
    assert s.release("u2-0")
    assert s.try_take().run_id == "u2-1"  # type: ignore[union-attr]
    s.release("u1-0")
    assert s.try_take().run_id == "u1-1"  # type: ignore[union-attr]
    assert not s.release("nope")


def test_global_in_flight_cap() -> None:
    s = FairScheduler(max_in_flight=2, max_active_per_user=5, max_queued_per_user=10)
    for it in items(1, 3):
        s.submit(it)
    assert s.try_take() and s.try_take()
    assert s.in_flight == 2
    assert s.try_take() is None
    s.release("u1-0")
    assert s.try_take().run_id == "u1-2"  # type: ignore[union-attr]


def test_remove_and_positions_republished() -> None:
    published: list[tuple[str, int]] = []
    s = FairScheduler(
        max_in_flight=1, on_position=lambda item, pos: published.append((item.run_id, pos))
    )
    s.submit(QueueItem("a", 1))
    s.submit(QueueItem("b", 2))
    s.submit(QueueItem("c", 3))
    assert published == [("a", 1), ("b", 2), ("c", 3)]
    published.clear()
    assert s.remove("a") is not None
    assert s.remove("a") is None
    assert s.position("a") is None
    assert published == [("b", 1), ("c", 2)]
    published.clear()
    s.submit(QueueItem("d", 4))  # nothing else moved: only d is published
    assert published == [("d", 3)]
    published.clear()
    assert s.try_take().run_id == "b"  # type: ignore[union-attr]
    assert published == [("c", 1), ("d", 2)]


def test_mark_active_counts_against_caps() -> None:
    s = FairScheduler(max_in_flight=1)
    s.mark_active("resumed", 1)
    s.submit(QueueItem("x", 2))
    assert s.try_take() is None
    s.release("resumed")
    assert s.try_take().run_id == "x"  # type: ignore[union-attr]


async def test_take_waits_without_polling() -> None:
    s = FairScheduler(max_in_flight=1)
    waiter = asyncio.create_task(s.take())
    await asyncio.sleep(0)
    assert not waiter.done()
    s.submit(QueueItem("a", 1))
    item = await asyncio.wait_for(waiter, 1)
    assert item.run_id == "a"
    # Capacity full: the next take waits until a release.
    s.submit(QueueItem("b", 1))
    waiter = asyncio.create_task(s.take())
    await asyncio.sleep(0)
    assert not waiter.done()
    s.release("a")
    assert (await asyncio.wait_for(waiter, 1)).run_id == "b"


async def test_many_waiters_each_get_one_item() -> None:
    s = FairScheduler(max_in_flight=10, max_active_per_user=10, max_queued_per_user=10)
    waiters = [asyncio.create_task(s.take()) for _ in range(3)]
    await asyncio.sleep(0)
    for it in items(1, 3):
        s.submit(it)
    got = await asyncio.wait_for(asyncio.gather(*waiters), 1)
    assert sorted(i.run_id for i in got) == ["u1-0", "u1-1", "u1-2"]
