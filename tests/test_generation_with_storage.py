"""The generation module and the real SQLite storage plug together without glue code."""

from __future__ import annotations

import asyncio
import random
from typing import Any
from urllib.parse import parse_qs, urlsplit

from generation import (
    ChargeState,
    DeliveryState,
    EventBus,
    GenerationCompleted,
    GenerationContext,
    GenerationEvent,
    GenerationFailed,
    GenerationRequest,
    GenerationService,
    GenerationSettings,
    GenerationStarted,
    RunStatus,
)
from generation.client import ComfyDeployClient
from generation.ports import BalanceStore, DeploymentStore, LoraStore, RunStore
from storage import Storage
from tests.fakes.comfydeploy import FakeComfyDeploy, Timeline

USER = 7


async def _instant(_: float) -> None:
    return None


async def _service(storage: Storage, fake: FakeComfyDeploy) -> tuple[GenerationService, list]:
    client = ComfyDeployClient(
        fake.auth_token, fake.base_url, transport=fake.transport, sleep=_instant
    )
    bus = EventBus()
    events: list[GenerationEvent] = []
    changed = asyncio.Event()

    async def record(event: GenerationEvent) -> None:
        events.append(event)
        changed.set()

    bus.subscribe(record)
    service = GenerationService(
        backend=client,
        runs=storage.runs,
        balances=storage.ledger,
        deployments=storage.deployments,
        loras=storage.loras,
        bus=bus,
        settings=GenerationSettings(
            webhook_url="http://bot.test/comfydeploy/webhook",
            webhook_secret="s3cret",
            poll_interval=3600,
            webhook_poll_interval=3600,
        ),
        rng=random.Random(3),
    )

    async def sink(url: str, payload: dict[str, Any] | None) -> int:
        if payload is None:
            return 405
        q = parse_qs(urlsplit(url).query)
        ok = await service.process_webhook(payload, q["t"][0], q["r"][0])
        return 200 if ok else 403

    fake.webhook_sink = sink
    service._test_client = client  # type: ignore[attr-defined]
    service._test_changed = changed  # type: ignore[attr-defined]
    return service, events


async def _wait(service: GenerationService, events: list, kind: type, run_id: str) -> Any:
    changed: asyncio.Event = service._test_changed  # type: ignore[attr-defined]
    async with asyncio.timeout(5):
        while not any(isinstance(e, kind) and e.run_id == run_id for e in events):
            changed.clear()
            await changed.wait()
    return next(e for e in events if isinstance(e, kind) and e.run_id == run_id)


def test_repositories_satisfy_the_ports(storage: Storage) -> None:
    assert isinstance(storage.runs, RunStore)
    assert isinstance(storage.ledger, BalanceStore)
    assert isinstance(storage.deployments, DeploymentStore)
    assert isinstance(storage.loras, LoraStore)


async def test_generate_deliver_settles_on_real_storage(storage: Storage) -> None:
    fake = FakeComfyDeploy()
    dep = fake.add_deployment(
        inputs=["input_prompt", "input_negative", "input_seed", "input_checkpoint"],
        timeline=Timeline.success("png"),
    )
    await storage.deployments.add("MAKE", dep)
    await storage.users.get_or_create(USER, starting_balance=10)
    await storage.loras.add("foxy", ["red fox"], default_weight=0.8, min_balance=5, family="FLUX")
    service, events = await _service(storage, fake)
    await service.start()
    try:
        run = await service.generate(
            GenerationRequest(prompt="a red fox in snow", user_id=USER, chat_id=USER),
            GenerationContext(price=4),
        )
        assert await storage.ledger.get_balance(USER) == 6
        assert (await storage.runs.get_run(run.id)).charge_state is ChargeState.HELD

        started = await _wait(service, events, GenerationStarted, run.id)
        backend_id = started.backend_run_id
        await fake.run_to_end(backend_id)
        done = await _wait(service, events, GenerationCompleted, run.id)
        assert done.outputs and done.outputs[0].url.endswith(".png")
        # LoRA applied: the balance (6 after the hold) reaches min_balance 5
        assert "<lora:foxy:0.8> red fox" in fake.create_calls[0]["inputs"]["input_prompt"]

        stored = await storage.runs.get_run(run.id)
        assert stored.status is RunStatus.SUCCESS and stored.backend_run_id == backend_id
        await service.mark_delivered(run.id)
        await service.mark_delivered(run.id)  # twice: still one debit
        stored = await storage.runs.get_run(run.id)
        assert stored.delivery_state is DeliveryState.DELIVERED
        assert stored.charge_state is ChargeState.SETTLED
        assert await storage.ledger.get_total(USER) == 6
        assert await storage.ledger.get_held(USER) == 0
        assert await storage.ledger.check_consistency() == []
    finally:
        await service.stop()
        await service.bus.aclose()
        await service._test_client.aclose()  # type: ignore[attr-defined]
        await fake.aclose()


async def test_failed_run_releases_hold_on_real_storage(storage: Storage) -> None:
    fake = FakeComfyDeploy()
    dep = fake.add_deployment(inputs=["input_prompt"], timeline=Timeline.failed())
    await storage.deployments.add("MAKE", dep)
    await storage.users.get_or_create(USER, starting_balance=10)
    service, events = await _service(storage, fake)
    await service.start()
    try:
        run = await service.generate(
            GenerationRequest(prompt="x", user_id=USER, chat_id=USER), GenerationContext(price=4)
        )
        started = await _wait(service, events, GenerationStarted, run.id)
        await fake.run_to_end(started.backend_run_id)
        failed = await _wait(service, events, GenerationFailed, run.id)
        assert failed.error_code == "RUN_FAILED"
        assert await storage.ledger.get_balance(USER) == 10
        stored = await storage.runs.get_run(run.id)
        assert stored.charge_state is ChargeState.RELEASED
        assert await storage.runs.list_unfinished_runs() == []
    finally:
        await service.stop()
        await service.bus.aclose()
        await service._test_client.aclose()  # type: ignore[attr-defined]
        await fake.aclose()
