"""Runs: atomic create-with-hold, updates, lookups, restart listing, JSON roundtrip."""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
from pathlib import Path
from typing import Any

import pytest

from generation.errors import InsufficientBalanceError
from generation.models import (
    ChargeState,
    DeliveryState,
    MediaOutput,
    MediaType,
    RunRecord,
    RunStatus,
)
from generation.ports import BalanceStore, DeploymentStore, LoraStore, RunStore
from storage import DuplicateError, NotFoundError, Storage, ValidationError


def _run(
    run_id: str = "run-1", *, user_id: int = 1, created_at: float = 100.0, **kw: Any
) -> RunRecord:
    kw.setdefault("request", {"prompt": "a red fox", "seed": 7})
    return RunRecord(
        id=run_id, user_id=user_id, chat_id=-100, type="MAKE", created_at=created_at, **kw
    )


async def test_create_run_with_hold(storage: Storage) -> None:
    await storage.users.get_or_create(1, starting_balance=10)
    stored = await storage.runs.create_run(_run(price=4), hold_amount=4)
    assert stored.charge_state is ChargeState.HELD
    assert await storage.runs.get_run("run-1") == stored
    assert await storage.ledger.get_balance(1) == 6
    assert (await storage.ledger.list_open_holds())[0].run_id == "run-1"

    assert await storage.ledger.settle_hold("run-1")
    run = await storage.runs.get_run("run-1")
    assert run is not None and run.charge_state is ChargeState.SETTLED
    assert await storage.ledger.get_total(1) == 6
    assert await storage.ledger.check_consistency() == []


async def test_release_syncs_run_charge_state(storage: Storage) -> None:
    await storage.users.get_or_create(1, starting_balance=10)
    await storage.runs.create_run(_run(), hold_amount=4)
    assert await storage.ledger.release_hold("run-1")
    assert not await storage.ledger.settle_hold("run-1")
    run = await storage.runs.get_run("run-1")
    assert run is not None and run.charge_state is ChargeState.RELEASED
    assert await storage.ledger.get_balance(1) == 10


async def test_create_run_insufficient_writes_nothing(storage: Storage) -> None:
    await storage.users.get_or_create(1, starting_balance=3)
    with pytest.raises(InsufficientBalanceError) as info:
        await storage.runs.create_run(_run(), hold_amount=4)
    assert (info.value.required, info.value.available) == (4, 3)
    assert await storage.runs.get_run("run-1") is None
    assert await storage.ledger.list_open_holds() == []
    assert await storage.ledger.get_balance(1) == 3


async def test_create_run_duplicate_writes_nothing(storage: Storage) -> None:
    await storage.users.get_or_create(1, starting_balance=10)
    await storage.runs.create_run(_run())  # no hold (price 0)
    with pytest.raises(DuplicateError):
        await storage.runs.create_run(_run(), hold_amount=2)
    assert await storage.ledger.get_held(1) == 0
    assert await storage.ledger.list_open_holds() == []
    with pytest.raises(ValidationError):
        await storage.runs.create_run(_run("run-2"), hold_amount=-1)
    with pytest.raises(ValidationError):
        await storage.runs.create_run(_run("run-3", request={"x": object()}))
    assert await storage.runs.count_by_status() == {"queued": 1}


async def test_concurrent_create_run_never_overdraws(storage: Storage) -> None:
    await storage.users.get_or_create(1, starting_balance=20)
    results = await asyncio.gather(
        *(storage.runs.create_run(_run(f"r{i}"), hold_amount=3) for i in range(30)),
        return_exceptions=True,
    )
    created = [r for r in results if isinstance(r, RunRecord)]
    assert len(created) == 6  # 6 × 3 = 18 ≤ 20 < 21
    assert all(isinstance(r, InsufficientBalanceError) for r in results if r not in created)
    assert len(await storage.runs.list_unfinished_runs()) == 6
    assert await storage.ledger.get_balance(1) == 2
    assert await storage.ledger.check_consistency() == []


async def test_full_record_roundtrip(storage: Storage) -> None:
    outputs = (
        MediaOutput(
            url="https://cdn.example/a.png",
            media_type=MediaType.IMAGE,
            filename="a.png",
            format="png",
            width=1024,
            height=768,
            size=12345,
            key="images",
        ),
        MediaOutput(url="https://cdn.example/b.mp4", media_type=MediaType.VIDEO),
    )
    run = RunRecord(
        id="full",
        user_id=2,
        chat_id=2,
        type="MAKE_STYLE",
        request={"prompt": "ünïcode 🦊", "nested": {"list": [1, 2.5, None, True]}},
        status=RunStatus.SUCCESS,
        deployment_id="dep",
        backend_run_id="be-1",
        progress=1.0,
        live_status="done",
        queue_position=None,
        outputs=outputs,
        error_code=None,
        error_message=None,
        price=0,
        charge_state=ChargeState.NONE,
        delivery_state=DeliveryState.DELIVERED,
        progress_message_id=555,
        meta={"lang": "de", "reply_to": 9},
        created_at=1.5,
        updated_at=2.5,
        submitted_at=1.75,
        finished_at=2.5,
        deadline_at=900.0,
    )
    await storage.runs.create_run(run)
    assert await storage.runs.get_run("full") == run
    assert await storage.runs.get_run_by_backend_id("be-1") == run
    assert await storage.runs.get_run_by_backend_id("be-unknown") is None


async def test_update_run(storage: Storage) -> None:
    await storage.runs.create_run(_run())
    output = MediaOutput(url="https://cdn.example/x.gif", media_type=MediaType.ANIMATION)
    updated = await storage.runs.update_run(
        "run-1",
        status=RunStatus.RUNNING,
        backend_run_id="be-9",
        progress=0.42,
        live_status="Executing KSampler",
        outputs=(output,),
        meta={"k": "v"},
        progress_message_id=77,
    )
    assert updated.status is RunStatus.RUNNING and updated.progress == 0.42
    assert updated.outputs == (output,) and updated.meta == {"k": "v"}
    assert updated.updated_at > 0  # stamped automatically
    assert await storage.runs.get_run("run-1") == updated
    assert await storage.runs.get_run_by_backend_id("be-9") == updated
    done = await storage.runs.update_run("run-1", status="success", finished_at=5.0)
    assert done.status is RunStatus.SUCCESS and done.finished_at == 5.0


async def test_update_run_errors_change_nothing(storage: Storage) -> None:
    before = await storage.runs.create_run(_run())
    with pytest.raises(KeyError):
        await storage.runs.update_run("missing", status=RunStatus.RUNNING)
    with pytest.raises(NotFoundError):
        await storage.runs.update_run("missing", progress=0.1)
    bad_changes: list[dict[str, Any]] = [
        {"user_id": 5},  # not updatable
        {"price": 1},
        {"status": "exploded"},
        {"charge_state": "stolen"},
        {"outputs": ["not-a-media-output"]},
        {"meta": ["not", "a", "dict"]},
        {"progress": "half"},
        {"progress_message_id": "12"},
        {"status": RunStatus.RUNNING, "nonsense": 1},
    ]
    for changes in bad_changes:
        with pytest.raises(ValueError):
            await storage.runs.update_run("run-1", **changes)
    assert await storage.runs.get_run("run-1") == before


async def test_list_unfinished_and_user_runs(storage: Storage) -> None:
    await storage.users.get_or_create(1, starting_balance=10)
    specs: list[tuple[str, dict[str, Any]]] = [
        ("queued", {"status": RunStatus.QUEUED}),
        ("running", {"status": RunStatus.RUNNING}),
        ("undelivered", {"status": RunStatus.SUCCESS}),
        ("delivered", {"status": RunStatus.SUCCESS, "delivery_state": DeliveryState.DELIVERED}),
        ("failed", {"status": RunStatus.FAILED}),
        ("cancelled", {"status": RunStatus.CANCELLED, "delivery_state": DeliveryState.FAILED}),
    ]
    for i, (run_id, kw) in enumerate(specs):
        await storage.runs.create_run(_run(run_id, created_at=100.0 + i, **kw))
    await storage.runs.create_run(
        _run("failed-held", created_at=50.0, status=RunStatus.FAILED), hold_amount=1
    )
    await storage.runs.create_run(_run("other-user", user_id=2, created_at=200.0))

    unfinished = [r.id for r in await storage.runs.list_unfinished_runs()]
    assert unfinished == ["failed-held", "queued", "running", "undelivered", "other-user"]

    active = [r.id for r in await storage.runs.list_user_runs(1)]
    assert active == ["running", "queued"]  # newest first
    everything = [r.id for r in await storage.runs.list_user_runs(1, active_only=False)]
    assert everything[0] == "cancelled" and everything[-1] == "failed-held"
    assert len(everything) == 7
    counts = await storage.runs.count_by_status()
    assert counts == {"queued": 2, "running": 1, "success": 2, "failed": 2, "cancelled": 1}

    await storage.ledger.release_hold("failed-held")
    assert "failed-held" not in [r.id for r in await storage.runs.list_unfinished_runs()]


async def test_runs_survive_restart(tmp_path: Path) -> None:
    path = tmp_path / "bot.sqlite3"
    store = await Storage.open(path)
    await store.users.get_or_create(1, starting_balance=5)
    await store.runs.create_run(_run(status=RunStatus.SUBMITTING), hold_amount=5)
    await store.close()
    store = await Storage.open(path)
    try:
        (run,) = await store.runs.list_unfinished_runs()
        assert run.id == "run-1" and run.status is RunStatus.SUBMITTING
        assert run.charge_state is ChargeState.HELD
        assert await store.ledger.get_balance(1) == 0
    finally:
        await store.close()


async def test_repositories_implement_generation_ports(storage: Storage) -> None:
    pairs = [
        (storage.runs, RunStore),
        (storage.ledger, BalanceStore),
        (storage.deployments, DeploymentStore),
        (storage.loras, LoraStore),
    ]
    for repo, protocol in pairs:
        assert isinstance(repo, protocol)
        for name, member in vars(protocol).items():
            if name.startswith("_") or not inspect.iscoroutinefunction(member):
                continue
            mine = inspect.signature(getattr(repo, name))
            theirs = inspect.signature(member)
            expected = [p for p in theirs.parameters.values() if p.name != "self"]
            assert [(p.name, p.kind, p.default) for p in mine.parameters.values()] == [
                (p.name, p.kind, p.default) for p in expected
            ], f"{type(repo).__name__}.{name} does not match {protocol.__name__}"
            assert inspect.iscoroutinefunction(getattr(repo, name))
    assert dataclasses.is_dataclass(await storage.runs.create_run(_run()))


async def test_find_run_for_message(storage) -> None:  # type: ignore[no-untyped-def]
    from generation.models import RunRecord

    run = RunRecord(
        id="a" * 32,
        user_id=5,
        chat_id=-9,
        type="MAKE",
        request={},
        meta={"reply_to_message_id": 77},
    )
    await storage.runs.create_run(run)
    assert (await storage.runs.find_run_for_message(5, -9, 77)).id == run.id
    assert await storage.runs.find_run_for_message(5, -9, 78) is None
    assert await storage.runs.find_run_for_message(6, -9, 77) is None


async def test_find_run_for_message_uses_the_index(storage) -> None:  # type: ignore[no-untyped-def]
    async with storage.db.read() as conn:
        plan = await conn.execute_fetchall(
            "EXPLAIN QUERY PLAN SELECT * FROM runs WHERE user_id = ? AND chat_id = ?"
            " AND json_extract(meta, '$.reply_to_message_id') = ?",
            (1, 1, 1),
        )
    assert "runs_by_request_message" in " ".join(str(tuple(row)) for row in plan)
