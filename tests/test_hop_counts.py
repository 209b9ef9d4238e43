"""Database hops per generation (issue 16): under load latency is roughly the number of
sequential awaits that yield to the loop times the loop's turn time, and every aiosqlite call
is one hop to its thread. These tests count hops (``aiosqlite.Connection._execute`` calls),
not time, for a warm user's ``/make`` in the in-process harness (tests/e2e/inprocess.py).

Figures (hops; update → create-run at the ComfyDeploy double / update → result delivered and
settled). "before" is main at 5969aff (ae3147c in brackets); "after" adds the run cache, the
one-hop transactions and the single users read per update (storage/run_cache.py,
storage/database.py, storage/users.py):

=========  ========================  ===========
price      before                    after
=========  ========================  ===========
0          5 / 40  (8 / 42)          4 / 18
5          13 / 54  (16 / 56)        5 / 19
=========  ========================  ===========

The bounds are today's figures: a change that adds a hop to the hot path fails here.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiosqlite
import pytest

from tests.e2e.inprocess import E2E, make_e2e
from tests.fakes.comfydeploy import FakeComfyDeploy

USER = 4001
BOUNDS = {0: (4, 18), 5: (5, 19)}  # price -> (hops to create-run, hops per generation)


class HopCounter:
    def __init__(self) -> None:
        self.hops = 0
        self.statements = 0
        self.at_create: list[int] = []


@pytest.fixture
def counter(monkeypatch: pytest.MonkeyPatch) -> HopCounter:
    counter = HopCounter()
    original_execute = aiosqlite.Connection._execute
    original_create = FakeComfyDeploy._create

    async def execute(self: Any, fn: Any, *args: Any, **kwargs: Any) -> Any:
        counter.hops += 1
        return await original_execute(self, fn, *args, **kwargs)

    def create(self: FakeComfyDeploy, body: Any) -> Any:
        counter.at_create.append(counter.hops)
        return original_create(self, body)

    monkeypatch.setattr(aiosqlite.Connection, "_execute", execute)
    monkeypatch.setattr(FakeComfyDeploy, "_create", create)
    return counter


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[E2E]:
    e2e, close = await make_e2e(tmp_path)
    try:
        await e2e.add_deployment()
        yield e2e
    finally:
        await close()


async def _generate(env: E2E, prompt: str) -> str:
    await env.command(env.fake.user(USER), f"/make {prompt}")
    run = await env.latest_run(USER)
    await env.finish(run.id)
    return run.id


@pytest.mark.parametrize("price", [0, 5])
async def test_hops_per_generation(env: E2E, counter: HopCounter, price: int) -> None:
    await _generate(env, "warm up")  # first contact: the user row, the caches, the pools
    if price:
        await env.storage.prices.set("MAKE", price)
        await env.storage.ledger.credit(USER, 100, reason="test")
    counter.hops = 0
    counter.at_create.clear()

    run_id = await _generate(env, "a cat")
    hops = counter.hops

    run = await env.storage.runs.get_run(run_id)
    assert run is not None and run.status.value == "success"
    assert run.delivery_state.value == "delivered" and run.price == price
    if price:
        assert run.charge_state.value == "settled"
        assert await env.storage.ledger.get_balance(USER) == 100 - price
    assert len(counter.at_create) == 1
    to_create, per_generation = BOUNDS[price]
    assert counter.at_create[0] <= to_create, f"{counter.at_create[0]} hops to create-run"
    assert hops <= per_generation, f"{hops} hops per generation"
    assert await env.storage.ledger.check_consistency() == []


async def test_one_users_read_per_update(env: E2E) -> None:
    """The access gate reads the user's row; the caller lookup (handlers/context.py) and the
    PNG-as-file setting at delivery are then served from the user cache (storage/users.py)."""
    user = env.fake.user(USER)
    await _generate(env, "warm up")
    env.storage.db.user_cache.clear()  # as after a restart: nothing cached for this user
    statements: list[str] = []
    await env.storage.db.call(lambda conn: conn.set_trace_callback(statements.append))
    try:
        await env.command(user, "/make a cat")
        run = await env.latest_run(USER)
        await env.finish(run.id)
    finally:
        await env.storage.db.call(lambda conn: conn.set_trace_callback(None))
    users_reads = [
        s for s in statements if s.lstrip().upper().startswith("SELECT") and "FROM users" in s
    ]
    assert len(users_reads) == 1, users_reads
    assert "SELECT * FROM users" in users_reads[0]
