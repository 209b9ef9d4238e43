"""The write-through run cache (storage/run_cache.py): served without a database hop, kept true
by every writer of ``runs`` (holds settling/releasing, prune, conditional updates, cancelled
writers), bounded, and immutable to callers."""

from __future__ import annotations

import asyncio
import copy
import json
import threading
from typing import Any

import pytest

from generation.models import ChargeState, DeliveryState, RunRecord, RunStatus
from storage import Storage
from storage.run_cache import RunCache, freeze
from storage.runs import _record

BOUND = 5.0


def _run(run_id: str = "run-1", *, user_id: int = 1, **kw: Any) -> RunRecord:
    kw.setdefault("request", {"prompt": "a red fox", "seed": 7, "loras": [{"name": "a"}]})
    kw.setdefault("meta", {"lang": "en"})
    return RunRecord(id=run_id, user_id=user_id, chat_id=-100, type="MAKE", created_at=100.0, **kw)


async def _in_db(storage: Storage, run_id: str) -> RunRecord | None:
    """The row as the table has it, bypassing the cache."""
    async with storage.db.read() as conn:
        rows = await conn.execute_fetchall("SELECT * FROM runs WHERE id = ?", (run_id,))
    return _record(rows[0]) if rows else None


async def test_reads_after_writes_cost_no_hop(storage: Storage, hops: list[str]) -> None:
    created = await storage.runs.create_run(_run())
    updated = await storage.runs.update_run("run-1", status=RunStatus.RUNNING, progress=0.5)
    hops.clear()
    for _ in range(3):
        assert await storage.runs.get_run("run-1") == updated
    assert hops == []
    assert updated != created and await _in_db(storage, "run-1") == updated


async def test_a_miss_reads_once_then_serves(storage: Storage, hops: list[str]) -> None:
    await storage.runs.create_run(_run())
    storage.db.run_cache.clear()
    hops.clear()
    first = await storage.runs.get_run("run-1")
    assert first is not None and len(hops) == 1
    assert await storage.runs.get_run("run-1") == first and len(hops) == 1
    assert await storage.runs.get_run("nope") is None  # unknown ids are not cached
    assert await storage.runs.get_run("nope") is None and len(hops) == 3


@pytest.mark.parametrize(
    ("resolve", "state"),
    [("settle_hold", ChargeState.SETTLED), ("release_hold", ChargeState.RELEASED)],
)
async def test_holds_changing_charge_state_update_the_cached_run(
    storage: Storage, resolve: str, state: ChargeState
) -> None:
    await storage.users.get_or_create(1, starting_balance=10)
    held = await storage.runs.create_run(_run(price=4), hold_amount=4)
    assert (await storage.runs.get_run("run-1")) == held and held.charge_state is ChargeState.HELD
    assert await getattr(storage.ledger, resolve)("run-1") is True
    cached = await storage.runs.get_run("run-1")
    assert cached is not None and cached.charge_state is state
    assert cached == await _in_db(storage, "run-1")  # updated_at included
    assert await getattr(storage.ledger, resolve)("run-1") is False  # nothing to resolve
    assert await storage.runs.get_run("run-1") == await _in_db(storage, "run-1")


async def test_resolving_an_uncached_run_does_not_cache_a_guess(storage: Storage) -> None:
    await storage.users.get_or_create(1, starting_balance=10)
    await storage.runs.create_run(_run(price=4), hold_amount=4)
    storage.db.run_cache.clear()
    assert await storage.ledger.settle_hold("run-1")
    assert "run-1" not in storage.db.run_cache
    run = await storage.runs.get_run("run-1")
    assert run is not None and run.charge_state is ChargeState.SETTLED


async def test_prune_drops_what_it_deletes(storage: Storage) -> None:
    await storage.runs.create_run(_run("old"))
    await storage.runs.create_run(_run("young"))
    await storage.runs.update_run("old", status=RunStatus.FAILED, finished_at=200.0)
    await storage.runs.update_run("young", status=RunStatus.FAILED, finished_at=900.0)
    assert await storage.runs.get_run("old") is not None
    assert await storage.runs.prune_runs(500.0) == 1
    assert await storage.runs.get_run("old") is None
    assert await storage.runs.get_run("young") == await _in_db(storage, "young")


async def test_update_if_active_on_a_terminal_run(storage: Storage, hops: list[str]) -> None:
    await storage.runs.create_run(_run())
    done = await storage.runs.update_run(
        "run-1", status=RunStatus.SUCCESS, delivery_state=DeliveryState.DELIVERED
    )
    hops.clear()
    assert await storage.runs.update_run_if_active("run-1", progress=0.9) is None
    assert hops == []  # the cache knows the run is terminal: the UPDATE would match nothing
    assert await storage.runs.get_run("run-1") == done == await _in_db(storage, "run-1")
    storage.db.run_cache.clear()  # and the same answer through the database
    assert await storage.runs.update_run_if_active("run-1", progress=0.9) is None
    assert await storage.runs.get_run("run-1") == done


async def test_cancelled_writer_leaves_no_stale_entry(storage: Storage) -> None:
    await storage.runs.create_run(_run())
    assert await storage.runs.get_run("run-1") is not None  # cached
    conn = storage.db._conn
    release = threading.Event()
    # Hold the database thread so the UPDATE below is queued, then cancel its caller.
    blocker = asyncio.ensure_future(conn._execute(lambda: release.wait(BOUND)))
    task = asyncio.create_task(storage.runs.update_run("run-1", progress=0.75))
    for _ in range(10):
        await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    release.set()
    await blocker
    run = await storage.runs.get_run("run-1")  # the write still happened: the cache must say so
    assert run is not None and run.progress == 0.75 == (await _in_db(storage, "run-1")).progress


async def test_backend_id_lookup_follows_the_newest_run(storage: Storage, hops: list[str]) -> None:
    await storage.runs.create_run(_run("a"))
    await storage.runs.update_run("a", backend_run_id="b-1")
    first = await storage.runs.get_run_by_backend_id("b-1")
    assert first is not None and first.id == "a"
    hops.clear()
    assert await storage.runs.get_run_by_backend_id("b-1") == first and hops == []
    await storage.runs.create_run(
        RunRecord(id="c", user_id=1, chat_id=-100, type="MAKE", request={}, created_at=500.0)
    )
    await storage.runs.update_run("c", backend_run_id="b-1")  # the same id, a newer run
    found = await storage.runs.get_run_by_backend_id("b-1")
    assert found is not None and found.id == "c"
    await storage.runs.update_run("c", backend_run_id="b-2")
    back = await storage.runs.get_run_by_backend_id("b-1")
    assert back is not None and back.id == "a"


def test_lru_bound_evicts_terminal_runs_first() -> None:
    cache = RunCache(capacity=3)
    cache.put(_run("active-1"))
    cache.put(_run("done-1", status=RunStatus.SUCCESS))
    cache.put(_run("active-2"))
    cache.put(_run("active-3"))  # over the bound: the terminal one goes, not the oldest
    assert len(cache) == 3 and "done-1" not in cache
    assert cache.get("active-1") is not None  # now the most recently used
    cache.put(_run("active-4"))  # no terminal run left: the least recently used goes
    assert len(cache) == 3 and "active-2" not in cache and "active-1" in cache
    for i in range(100):
        cache.put(_run(f"x{i}", status=RunStatus.FAILED if i % 2 else RunStatus.QUEUED))
    assert len(cache) == 3


def test_finished_runs_are_bounded_apart_from_active_ones() -> None:
    cache = RunCache(capacity=100, terminal_capacity=2)
    for i in range(5):
        cache.put(_run(f"active-{i}"))
    for i in range(5):
        cache.put(_run(f"done-{i}", status=RunStatus.SUCCESS))
    assert len(cache) == 7  # every active run, the two newest finished ones
    assert all(f"active-{i}" in cache for i in range(5))
    assert "done-4" in cache and "done-3" in cache and "done-2" not in cache


async def test_records_are_immutable(storage: Storage) -> None:
    request = {"prompt": "a red fox", "loras": [{"name": "a"}]}
    created = await storage.runs.create_run(_run(request=request))
    request["prompt"] = "changed by the caller afterwards"  # the caller's dict stays theirs
    request["loras"].append({"name": "b"})
    run = await storage.runs.get_run("run-1")
    assert run is not None and run.request == {"prompt": "a red fox", "loras": [{"name": "a"}]}
    assert run == created
    with pytest.raises(TypeError):
        run.meta["lang"] = "de"  # type: ignore[index]
    with pytest.raises(TypeError):
        run.request["loras"].append({})
    with pytest.raises(TypeError):
        run.request["loras"][0]["name"] = "z"
    with pytest.raises(TypeError):
        run.meta.update(x=1)
    with pytest.raises(AttributeError):
        run.status = RunStatus.FAILED  # type: ignore[misc]
    # Still plain JSON data to everything that reads it.
    assert json.loads(json.dumps(run.request)) == run.request
    copied = copy.deepcopy(run.request)
    copied["loras"].append({"name": "c"})  # copies are ordinary, mutable containers
    assert {**run.meta, "lang": "de"} == {"lang": "de"}
    assert isinstance(run.request, dict) and isinstance(run.request["loras"], list)
    updated = await storage.runs.update_run("run-1", meta={**run.meta, "extra": 1})
    assert updated.meta == {"lang": "en", "extra": 1}
    with pytest.raises(TypeError):
        updated.meta["extra"] = 2


def test_freeze_is_deep_and_equal() -> None:
    data = {"a": [1, {"b": [2, 3]}], "c": (4, [5])}
    frozen = freeze(data)
    assert frozen == data
    with pytest.raises(TypeError):
        frozen["a"][1]["b"].append(4)
    with pytest.raises(TypeError):
        frozen["c"][1].append(6)
