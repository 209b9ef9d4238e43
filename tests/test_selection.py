import random
from collections import Counter

import pytest

from generation.errors import NoDeploymentsAvailableError
from generation.models import DeploymentRole
from generation.request import RequestMode
from generation.selection import DeploymentSelector
from tests.fakes.memory_store import MemoryStore


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def make(store: MemoryStore, clock: Clock | None = None, **kw: object) -> DeploymentSelector:
    return DeploymentSelector(
        store,
        clock=clock or Clock(),
        rng=random.Random(7),
        breaker_threshold=kw.get("threshold", 3),  # type: ignore[arg-type]
        breaker_cooldown=kw.get("cooldown", 60.0),  # type: ignore[arg-type]
    )


async def test_first_key_with_enabled_deployment_wins() -> None:
    store = MemoryStore()
    store.add_deployment("combo-off", "MAKE_STYLE", enabled=False)
    store.add_deployment("base", "MAKE")
    sel = make(store)
    dep = await sel.select(["MAKE_STYLE", "MAKE"], RequestMode.DEFAULT)
    assert dep.deployment_id == "base"
    store.add_deployment("combo", "MAKE_STYLE")
    dep = await sel.select(["MAKE_STYLE", "MAKE"], RequestMode.DEFAULT)
    assert dep.deployment_id == "combo"


async def test_roles() -> None:
    store = MemoryStore()
    store.add_deployment("d", role=DeploymentRole.DEFAULT)
    store.add_deployment("c", role=DeploymentRole.COOK)
    sel = make(store)
    assert (await sel.select(["MAKE"], RequestMode.COOK)).deployment_id == "c"
    assert (await sel.select(["MAKE"], RequestMode.DEFAULT)).deployment_id == "d"
    # api falls back to default when there is no api deployment
    assert (await sel.select(["MAKE"], RequestMode.API)).deployment_id == "d"
    store.add_deployment("a", role=DeploymentRole.API)
    assert (await sel.select(["MAKE"], RequestMode.API)).deployment_id == "a"
    # api falls back to default when the api one is excluded (failover)
    assert (await sel.select(["MAKE"], RequestMode.API, {"a"})).deployment_id == "d"


async def test_cook_without_cook_deployment_is_unavailable() -> None:
    store = MemoryStore()
    store.add_deployment("d")
    sel = make(store)
    with pytest.raises(NoDeploymentsAvailableError):
        await sel.select(["MAKE"], RequestMode.COOK)
    assert not await sel.has_candidates(["MAKE"], RequestMode.COOK)
    assert await sel.has_candidates(["MAKE"], RequestMode.DEFAULT)


async def test_weighted_random() -> None:
    store = MemoryStore()
    store.add_deployment("heavy", weight=9)
    store.add_deployment("light", weight=1)
    store.add_deployment("zero", weight=0)
    sel = make(store)
    counts = Counter(
        [(await sel.select(["MAKE"], RequestMode.DEFAULT)).deployment_id for _ in range(1000)]
    )
    assert counts["zero"] == 0
    assert 820 < counts["heavy"] < 970
    assert counts["light"] > 30


async def test_exclude_and_none_left() -> None:
    store = MemoryStore()
    store.add_deployment("a")
    store.add_deployment("b")
    sel = make(store)
    assert (await sel.select(["MAKE"], RequestMode.DEFAULT, {"a"})).deployment_id == "b"
    with pytest.raises(NoDeploymentsAvailableError):
        await sel.select(["MAKE"], RequestMode.DEFAULT, {"a", "b"})
    with pytest.raises(NoDeploymentsAvailableError):
        await sel.select(["NOPE"], RequestMode.DEFAULT)


async def test_breaker_opens_half_opens_and_closes() -> None:
    store = MemoryStore()
    store.add_deployment("a")
    store.add_deployment("b")
    clock = Clock()
    sel = make(store, clock, threshold=2, cooldown=60.0)
    await sel.record_failure("a")
    assert not sel.is_open("a")
    await sel.record_failure("a")
    assert sel.is_open("a")
    assert store.deployments["a"].consecutive_failures == 2
    for _ in range(50):
        assert (await sel.select(["MAKE"], RequestMode.DEFAULT)).deployment_id == "b"
    clock.now += 60
    # half-open: exactly one probe goes to "a" (b excluded to force it)
    assert (await sel.select(["MAKE"], RequestMode.DEFAULT, {"b"})).deployment_id == "a"
    with pytest.raises(NoDeploymentsAvailableError):
        await sel.select(["MAKE"], RequestMode.DEFAULT, {"b"})
    await sel.record_success("a")
    assert not sel.is_open("a")
    assert store.deployments["a"].consecutive_failures == 0
    assert (await sel.select(["MAKE"], RequestMode.DEFAULT, {"b"})).deployment_id == "a"


async def test_failed_probe_reopens() -> None:
    store = MemoryStore()
    store.add_deployment("a")
    clock = Clock()
    sel = make(store, clock, threshold=1, cooldown=10.0)
    await sel.record_failure("a")
    with pytest.raises(NoDeploymentsAvailableError):
        await sel.select(["MAKE"], RequestMode.DEFAULT)
    clock.now += 10
    assert (await sel.select(["MAKE"], RequestMode.DEFAULT)).deployment_id == "a"
    await sel.record_failure("a")
    clock.now += 5
    with pytest.raises(NoDeploymentsAvailableError):
        await sel.select(["MAKE"], RequestMode.DEFAULT)


async def test_breaker_seeded_from_store() -> None:
    store = MemoryStore()
    clock = Clock(1000.0)
    store.add_deployment("bad", consecutive_failures=5, last_failure_at=990.0)
    store.add_deployment("ok")
    sel = make(store, clock, threshold=3, cooldown=60.0)
    for _ in range(20):
        assert (await sel.select(["MAKE"], RequestMode.DEFAULT)).deployment_id == "ok"
    clock.now = 1050.0  # 60 s after the last failure
    assert (await sel.select(["MAKE"], RequestMode.DEFAULT, {"ok"})).deployment_id == "bad"
