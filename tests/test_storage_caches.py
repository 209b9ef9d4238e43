"""In-memory caches of the read-mostly catalogues (prices, LoRAs, deployments) and the
single-statement run writes: what a cached read returns always equals a fresh read from the
table, after every kind of write."""

from __future__ import annotations

import pytest

from generation.models import RunRecord, RunStatus
from storage import DuplicateError, Storage
from storage.deployments import DeploymentRepository
from storage.loras import LoraRepository
from storage.prices import PriceRepository


async def test_prices_cache_follows_set(storage: Storage) -> None:
    assert await storage.prices.get("MAKE") == 0  # fills the cache
    await storage.prices.set("make", 3)
    assert await storage.prices.get("MAKE") == 3
    assert await storage.prices.get(" make ") == 3
    await storage.prices.set("MAKE", 5)
    assert await storage.prices.get("MAKE") == 5
    prices = await storage.prices.all()
    prices["MAKE"] = 99  # the caller's copy, not the cache
    assert await storage.prices.get("MAKE") == 5
    assert await PriceRepository(storage.db).all() == await storage.prices.all()


async def test_lora_cache_follows_every_write(storage: Storage) -> None:
    assert await storage.loras.list_loras() == []  # fills the cache
    await storage.loras.add("foxy", ["fox"])
    await storage.loras.add("owl", ["owl"], min_balance=3)
    assert [e.name for e in await storage.loras.list_loras()] == ["foxy", "owl"]
    await storage.loras.set_enabled("owl", False)
    cached = await storage.loras.list_loras()
    assert not cached[1].enabled
    cached.clear()  # the caller's list, not the cache
    assert await storage.loras.remove("foxy")
    assert await storage.loras.list_loras() == await LoraRepository(storage.db).list_loras()
    assert [e.name for e in await storage.loras.list_loras()] == ["owl"]


async def test_deployment_cache_follows_admin_writes_and_health(storage: Storage) -> None:
    repo = storage.deployments
    assert await repo.list_deployments("MAKE") == []
    await repo.add("MAKE", "dep-a")
    await repo.add("make", "dep-b", weight=3)
    await repo.add("I2I", "dep-c")
    assert [d.deployment_id for d in await repo.list_deployments("MAKE")] == ["dep-a", "dep-b"]
    await repo.set_enabled("dep-a", False)
    await repo.record_failure("dep-b")
    await repo.record_failure("dep-b")
    await repo.record_success("dep-c")
    await repo.record_success("unknown")  # ignored, like the table
    fresh = DeploymentRepository(storage.db)
    assert await repo.list_deployments() == await fresh.list_deployments()
    b = next(d for d in await repo.list_deployments("MAKE") if d.deployment_id == "dep-b")
    assert (b.failure_count, b.consecutive_failures) == (2, 2)
    assert b.last_failure_at is not None
    await repo.record_success("dep-b")
    await repo.set_inputs("dep-c", ["input_prompt"])
    assert await repo.remove("dep-a")
    assert (
        await repo.list_deployments() == await DeploymentRepository(storage.db).list_deployments()
    )
    assert [d.deployment_id for d in await repo.list_deployments("MAKE")] == ["dep-b"]


def _run(run_id: str) -> RunRecord:
    return RunRecord(
        id=run_id,
        user_id=1,
        chat_id=1,
        type="MAKE",
        request={"prompt": "p"},
        created_at=1.0,
        updated_at=1.0,
    )


async def test_update_run_if_active(storage: Storage) -> None:
    await storage.runs.create_run(_run("r1"))
    with pytest.raises(DuplicateError):
        await storage.runs.create_run(_run("r1"))  # the single-INSERT path (no hold)
    updated = await storage.runs.update_run_if_active("r1", status=RunStatus.SUBMITTING)
    assert updated is not None and updated.status is RunStatus.SUBMITTING
    await storage.runs.update_run("r1", status=RunStatus.CANCELLED)
    assert await storage.runs.update_run_if_active("r1", status=RunStatus.SUBMITTING) is None
    run = await storage.runs.get_run("r1")
    assert run is not None and run.status is RunStatus.CANCELLED
    assert await storage.runs.update_run_if_active("missing", status=RunStatus.WAITING) is None
