import asyncio

from generation.events import (
    EventBus,
    GenerationCompleted,
    GenerationEvent,
    GenerationProgress,
    GenerationQueued,
)


def progress(i: int) -> GenerationProgress:
    return GenerationProgress(f"r{i}", 1, 1, progress=i / 100)


async def test_subscribe_filter_and_unsubscribe() -> None:
    bus = EventBus()
    got: list[GenerationEvent] = []
    only: list[GenerationEvent] = []

    async def all_events(e: GenerationEvent) -> None:
        got.append(e)

    async def completed(e: GenerationEvent) -> None:
        only.append(e)

    unsubscribe = bus.subscribe(all_events)
    bus.subscribe(completed, GenerationCompleted)
    bus.publish(GenerationQueued("r", 1, 1, position=1))
    bus.publish(GenerationCompleted("r", 1, 1))
    await bus.drain()
    assert [e.name for e in got] == ["generation:queued", "generation:completed"]
    assert [e.name for e in only] == ["generation:completed"]
    unsubscribe()
    bus.publish(GenerationCompleted("r2", 1, 1))
    await bus.drain()
    assert len(got) == 2
    assert len(only) == 2
    await bus.aclose()


async def test_slow_subscriber_does_not_stall_others() -> None:
    bus = EventBus()
    gate = asyncio.Event()
    fast: list[str] = []
    fast_done = asyncio.Event()

    async def slow(e: GenerationEvent) -> None:
        await gate.wait()

    async def quick(e: GenerationEvent) -> None:
        fast.append(e.run_id)
        if len(fast) == 3:
            fast_done.set()

    bus.subscribe(slow)
    bus.subscribe(quick)
    for i in range(3):
        bus.publish(GenerationCompleted(f"r{i}", 1, 1))  # publish never blocks
    await asyncio.wait_for(fast_done.wait(), 1)
    assert fast == ["r0", "r1", "r2"]
    gate.set()
    await asyncio.wait_for(bus.drain(), 1)
    await bus.aclose()


async def test_failing_subscriber_does_not_break_others() -> None:
    bus = EventBus()
    seen: list[str] = []
    failures = 0

    async def broken(e: GenerationEvent) -> None:
        nonlocal failures
        failures += 1
        raise RuntimeError("boom")

    async def ok(e: GenerationEvent) -> None:
        seen.append(e.run_id)

    bus.subscribe(broken)
    bus.subscribe(ok)
    bus.publish(GenerationCompleted("a", 1, 1))
    bus.publish(GenerationCompleted("b", 1, 1))
    await bus.drain()
    assert seen == ["a", "b"]
    assert failures == 2  # the broken one keeps being served after an error
    await bus.aclose()


async def test_droppable_events_dropped_when_queue_full() -> None:
    bus = EventBus()
    gate = asyncio.Event()
    seen: list[GenerationEvent] = []

    async def handler(e: GenerationEvent) -> None:
        await gate.wait()
        seen.append(e)

    bus.subscribe(handler, max_pending=3)
    bus.publish(progress(0))
    await asyncio.sleep(0)  # the serving task takes the first event and blocks on the gate
    for i in range(1, 10):
        bus.publish(progress(i))
    bus.publish(GenerationCompleted("done", 1, 1))  # never dropped: evicts a progress event
    gate.set()
    await bus.drain()
    names = [e.name for e in seen]
    assert names[-1] == "generation:completed"
    assert len(seen) == 4  # the one in hand + 3 queued
    assert names.count("generation:progress") == 3
    await bus.aclose()


async def test_drain_waits_for_everything_published() -> None:
    bus = EventBus()
    handled: list[int] = []

    async def handler(e: GenerationEvent) -> None:
        await asyncio.sleep(0)
        handled.append(1)

    bus.subscribe(handler)
    for i in range(20):
        bus.publish(progress(i))
    await asyncio.wait_for(bus.drain(), 1)
    assert len(handled) == 20
    await bus.drain()  # nothing pending: returns at once
    await bus.aclose()
    bus.publish(progress(99))  # closed: ignored, no error
    assert len(handled) == 20
