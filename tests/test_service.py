"""GenerationService end to end against FakeComfyDeploy (through its MockTransport and the real
ComfyDeployClient), with the in-memory store, a fake clock and webhooks routed in process."""

from __future__ import annotations

import asyncio
import base64
import io
import random
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from PIL import Image

from generation import (
    AuthFailedError,
    ChargeState,
    DeliveryState,
    DeploymentRole,
    ErrorCode,
    EventBus,
    GenerationCancelled,
    GenerationCompleted,
    GenerationContext,
    GenerationEvent,
    GenerationFailed,
    GenerationProgress,
    GenerationQueued,
    GenerationRequest,
    GenerationService,
    GenerationSettings,
    GenerationStarted,
    InputImage,
    InsufficientBalanceError,
    MediaAvailable,
    MediaOutput,
    MediaType,
    NoDeploymentsAvailableError,
    QueueFullError,
    RunRecord,
    RunStatus,
)
from generation.client import ComfyDeployClient
from generation.tokens import webhook_token
from tests.fakes.comfydeploy import FakeComfyDeploy, Timeline
from tests.fakes.memory_store import MemoryStore

SECRET = "webhook-secret"
HOOK = "http://bot.test/cd/webhook"
USER, OTHER = 101, 202
WAIT = 5.0  # upper bound for event waits (never reached when things work)


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


async def instant_sleep(_: float) -> None:
    return None


class Recorder:
    """Collects bus events; waits for a condition without sleeping (bounded by a timeout)."""

    def __init__(self, bus: EventBus) -> None:
        self.events: list[GenerationEvent] = []
        self._changed = asyncio.Event()
        bus.subscribe(self._on_event)

    async def _on_event(self, event: GenerationEvent) -> None:
        self.events.append(event)
        self._changed.set()

    def of(self, kind: type[GenerationEvent], run_id: str | None = None) -> list[Any]:
        return [
            e for e in self.events if isinstance(e, kind) and (run_id is None or e.run_id == run_id)
        ]

    def names(self, run_id: str) -> list[str]:
        return [e.name for e in self.events if e.run_id == run_id]

    async def wait(self, predicate: Callable[[], bool]) -> None:
        async with asyncio.timeout(WAIT):
            while not predicate():
                self._changed.clear()
                await self._changed.wait()

    async def wait_for(self, kind: type[GenerationEvent], run_id: str, count: int = 1) -> Any:
        await self.wait(lambda: len(self.of(kind, run_id)) >= count)
        return self.of(kind, run_id)[-1]


@dataclass
class Env:
    fake: FakeComfyDeploy
    store: MemoryStore
    clock: Clock
    services: list[GenerationService] = field(default_factory=list)
    clients: list[ComfyDeployClient] = field(default_factory=list)
    service: GenerationService | None = None
    recorder: Recorder | None = None

    def make(
        self,
        *,
        api_key: str | None = None,
        wrap: Callable[[Any], Any] | None = None,
        **overrides: Any,
    ) -> GenerationService:
        client = ComfyDeployClient(
            api_key or self.fake.auth_token,
            self.fake.base_url,
            transport=self.fake.transport,
            sleep=instant_sleep,
            max_per_second=None,
        )
        self.clients.append(client)
        options: dict[str, Any] = {
            "webhook_url": HOOK,
            "webhook_secret": SECRET,
            "poll_interval": 3600.0,  # the background poller never fires in a test
            "webhook_poll_interval": 3600.0,
            "run_deadline": 900.0,
        }
        settings = GenerationSettings(**{**options, **overrides})
        bus = EventBus()
        service = GenerationService(
            backend=wrap(client) if wrap else client,
            runs=self.store,
            balances=self.store,
            deployments=self.store,
            loras=self.store,
            bus=bus,
            settings=settings,
            clock=self.clock,
            rng=random.Random(1),
        )
        self.services.append(service)
        self.service = service
        self.recorder = Recorder(bus)
        self.fake.webhook_sink = self.sink
        return service

    async def sink(self, url: str, payload: dict[str, Any] | None) -> int:
        if payload is None:
            return 405
        query = parse_qs(urlsplit(url).query)
        assert self.service is not None
        ok = await self.service.process_webhook(
            payload, query.get("t", [None])[0], query.get("r", [None])[0]
        )
        return 200 if ok else 403

    def deployment(self, type_: str = "MAKE", timeline: Timeline | None = None, **kw: Any) -> str:
        dep_id = self.fake.add_deployment(
            inputs=kw.pop("inputs", ("input_prompt", "input_seed", "input_negative")),
            timeline=timeline,
        )
        self.store.add_deployment(dep_id, type_, **kw)
        return dep_id

    async def settle(self) -> None:
        assert self.service is not None
        await self.service.bus.drain()


@pytest.fixture
async def env() -> AsyncIterator[Env]:
    fake = FakeComfyDeploy()
    e = Env(fake, MemoryStore(), Clock())
    yield e
    for service in e.services:
        await service.stop()
        await service.bus.aclose()
    for client in e.clients:
        await client.aclose()
    await fake.aclose()


def make_request(user: int = USER, **kw: Any) -> GenerationRequest:
    return GenerationRequest(
        prompt=kw.pop("prompt", "a red fox in snow"), user_id=user, chat_id=user, **kw
    )


async def started(env: Env, run: RunRecord) -> GenerationStarted:
    assert env.recorder is not None
    return await env.recorder.wait_for(GenerationStarted, run.id)


async def failed(env: Env, run: RunRecord) -> GenerationFailed:
    assert env.recorder is not None
    return await env.recorder.wait_for(GenerationFailed, run.id)


def png_bytes(size: tuple[int, int] = (40, 30), mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, 255 if mode == "L" else (10, 200, 30)).save(buf, "PNG")
    return buf.getvalue()


# ------------------------------------------------------------------------------ happy path


async def test_generate_end_to_end_events_and_outputs(env: Env) -> None:
    env.deployment(timeline=Timeline.success("png", "gif"))
    env.store.set_balance(USER, 10)
    service = env.make()
    await service.start()
    run = await service.generate(make_request(), GenerationContext(price=3, meta={"lang": "de"}))
    assert run.status is RunStatus.QUEUED
    assert run.charge_state is ChargeState.HELD
    assert run.meta == {"lang": "de"}
    assert 0 <= run.request["seed"] <= 2**32 - 1  # concrete seed recorded
    assert await env.store.get_balance(USER) == 7

    start = await started(env, run)
    assert env.recorder is not None
    body = env.fake.create_calls[0]
    assert body["inputs"]["input_prompt"] == "a red fox in snow"
    assert body["inputs"]["input_seed"] == run.request["seed"]
    hook = parse_qs(urlsplit(body["webhook"]).query)
    assert hook == {"r": [run.id], "t": [webhook_token(SECRET, run.id)]}
    assert body["webhook_intermediate_status"] is True
    stored = await env.store.get_run(run.id)
    assert stored is not None and stored.backend_run_id == start.backend_run_id
    assert stored.status is RunStatus.WAITING
    assert stored.deadline_at == env.clock.now + 900.0
    assert stored.request["final_prompt"] == "a red fox in snow"

    await env.fake.run_to_end(start.backend_run_id)
    await env.settle()
    names = env.recorder.names(run.id)
    assert names[0] == "generation:queued"
    assert names[1] == "generation:started"
    assert "generation:progress" in names
    assert names[-3:] == ["generation:completed", "media:available", "media:available"]
    progress = env.recorder.of(GenerationProgress, run.id)
    values = [p.progress for p in progress]
    assert values == sorted(values)
    assert any(p.live_status == "Executing KSampler" for p in progress)
    done = env.recorder.of(GenerationCompleted, run.id)[0]
    assert [o.media_type for o in done.outputs] == [MediaType.IMAGE, MediaType.ANIMATION]
    media = env.recorder.of(MediaAvailable, run.id)
    assert [m.index for m in media] == [0, 1]
    assert env.fake.file_bytes(media[0].output.url) is not None

    final = await service.check_status(run.id)
    assert final.status is RunStatus.SUCCESS and len(final.outputs) == 2
    assert final.charge_state is ChargeState.HELD  # held until delivered
    delivered = await service.mark_delivered(run.id)
    assert delivered.delivery_state is DeliveryState.DELIVERED
    assert delivered.charge_state is ChargeState.SETTLED
    assert env.store.credits[USER] == 7 and await env.store.get_balance(USER) == 7
    await service.mark_delivered(run.id)  # exactly once
    assert env.store.credits[USER] == 7
    assert service.scheduler.in_flight == 0


async def test_i2i_image_sent_as_data_uri_and_inpaint_mask_sized(env: Env) -> None:
    env.deployment("INPAINT", inputs=("input_prompt", "input_image", "input_mask"))
    service = env.make()
    await service.start()
    image = InputImage(data=png_bytes((40, 30)), width=40, height=30)
    mask = InputImage(data=png_bytes((10, 10), "L"), filename="mask.png")
    run = await service.generate(
        make_request(type="INPAINT", image=image, mask=mask), GenerationContext()
    )
    await started(env, run)
    inputs = env.fake.create_calls[0]["inputs"]
    assert inputs["input_image"].startswith("data:image/png;base64,")
    assert inputs["input_mask"].startswith("data:image/png;base64,")
    mask_png = base64.b64decode(inputs["input_mask"].split(",", 1)[1])
    assert Image.open(io.BytesIO(mask_png)).size == (40, 30)
    stored = await env.store.get_run(run.id)
    assert stored is not None and stored.request["image"]["bytes"] == len(image.data)


async def test_large_image_goes_through_upload(env: Env) -> None:
    env.deployment("I2I", inputs=("input_prompt", "input_image"))
    service = env.make(inline_image_max_bytes=10)
    await service.start()
    run = await service.generate(
        make_request(type="I2I", image=InputImage(data=png_bytes())), GenerationContext()
    )
    await started(env, run)
    value = env.fake.create_calls[0]["inputs"]["input_image"]
    assert value == env.fake.uploads[0]["url"]


# ------------------------------------------------------------------------------ webhooks


async def test_lost_final_webhook_recovered_by_poll(env: Env) -> None:
    env.deployment()
    env.fake.drop_final_webhook = True
    service = env.make()
    await service.start()
    run = await service.generate(make_request(), GenerationContext())
    start = await started(env, run)
    await env.fake.run_to_end(start.backend_run_id)
    await env.settle()
    assert env.recorder is not None
    assert not env.recorder.of(GenerationCompleted, run.id)
    stored = await env.store.get_run(run.id)
    assert stored is not None and stored.status is RunStatus.RUNNING
    assert service.tracker.is_tracked(run.id)

    await service.tracker.poll_once()
    await env.settle()
    assert len(env.recorder.of(GenerationCompleted, run.id)) == 1
    stored = await env.store.get_run(run.id)
    assert stored is not None and stored.status is RunStatus.SUCCESS and stored.outputs
    assert not service.tracker.is_tracked(run.id)


async def test_duplicated_and_reordered_webhooks(env: Env) -> None:
    env.deployment()
    env.fake.duplicate_webhooks = True
    env.fake.reorder_webhooks = True
    service = env.make()
    await service.start()
    run = await service.generate(make_request(), GenerationContext())
    start = await started(env, run)
    await env.fake.run_to_end(start.backend_run_id)
    await env.settle()
    assert env.recorder is not None
    assert len(env.recorder.of(GenerationCompleted, run.id)) == 1
    assert len(env.recorder.of(MediaAvailable, run.id)) == 1
    progress = env.recorder.of(GenerationProgress, run.id)
    ranks = [p.status.rank for p in progress]
    assert ranks == sorted(ranks)
    running = [p.progress for p in progress if p.status is RunStatus.RUNNING]
    assert running == sorted(running)
    assert len({(p.status, p.progress, p.live_status) for p in progress}) == len(progress)

    # After terminal: more duplicates and a late "running" change nothing at all.
    writes = len(env.store.update_calls)
    events = len(env.recorder.events)
    await env.fake.set_status(start.backend_run_id, "success")
    await env.fake.set_status(start.backend_run_id, "running")
    late = {
        "run_id": start.backend_run_id,
        "status": "running",
        "progress": 0.3,
        "live_status": "x",
        "outputs": [],
    }
    assert await service.process_webhook(late, webhook_token(SECRET, run.id), run.id)
    await env.settle()
    assert len(env.store.update_calls) == writes
    assert len(env.recorder.events) == events
    stored = await env.store.get_run(run.id)
    assert stored is not None and stored.status is RunStatus.SUCCESS


async def test_progress_never_goes_back_and_unchanged_updates_do_not_write(env: Env) -> None:
    env.deployment(timeline=Timeline.stall())
    service = env.make()
    await service.start()
    run = await service.generate(make_request(), GenerationContext())
    start = await started(env, run)
    token = webhook_token(SECRET, run.id)

    def body(status: str, progress: float = 0.0, live: str | None = None) -> dict[str, Any]:
        return {
            "run_id": start.backend_run_id,
            "status": status,
            "progress": progress,
            "live_status": live,
            "outputs": [],
        }

    assert await service.process_webhook(body("running", 0.5, "Executing KSampler"), token, run.id)
    writes = len(env.store.update_calls)
    for stale in (
        body("running", 0.2, "Executing Old"),
        body("started"),
        body("queued"),
        body("running", 0.5, "Executing KSampler"),
    ):
        assert await service.process_webhook(stale, token, run.id)
    assert len(env.store.update_calls) == writes
    stored = await env.store.get_run(run.id)
    assert stored is not None
    assert (stored.status, stored.progress, stored.live_status) == (
        RunStatus.RUNNING,
        0.5,
        "Executing KSampler",
    )
    assert await service.process_webhook(body("running", 0.7, "Executing VAE"), token, run.id)
    stored = await env.store.get_run(run.id)
    assert stored is not None and (stored.progress, stored.live_status) == (0.7, "Executing VAE")


async def test_forged_unknown_and_malformed_webhooks_rejected(env: Env) -> None:
    env.deployment(timeline=Timeline.stall())
    service = env.make()
    await service.start()
    run = await service.generate(make_request(), GenerationContext())
    other = await service.generate(make_request(), GenerationContext())
    start = await started(env, run)
    await started(env, other)
    good = {
        "run_id": start.backend_run_id,
        "status": "success",
        "progress": 1,
        "outputs": [{"data": {"images": [{"url": "https://x.test/a.png", "filename": "a.png"}]}}],
    }
    token = webhook_token(SECRET, run.id)
    writes = len(env.store.update_calls)

    assert not await service.process_webhook(good, None, run.id)
    assert not await service.process_webhook(good, "0" * 32, run.id)
    assert not await service.process_webhook(good, webhook_token("wrong", run.id), run.id)
    assert not await service.process_webhook(good, token, None)
    # a valid token of another run, used for this run
    assert not await service.process_webhook(good, webhook_token(SECRET, other.id), run.id)
    # a valid token for a run id we do not know
    assert not await service.process_webhook(good, webhook_token(SECRET, "nope"), "nope")
    # a payload for another backend run, with this run's token
    assert not await service.process_webhook({**good, "run_id": "someone-else"}, token, run.id)
    # malformed payloads
    assert not await service.process_webhook({"status": "success"}, token, run.id)
    assert not await service.process_webhook([1, 2], token, run.id)  # type: ignore[arg-type]
    assert not await service.process_webhook("junk", token, run.id)  # type: ignore[arg-type]

    assert len(env.store.update_calls) == writes
    stored = await env.store.get_run(run.id)
    assert stored is not None and stored.status is RunStatus.WAITING
    # A genuine webhook that says success is confirmed with GET /run/{id} first (issue 11):
    # the backend still says not-started, so nothing is finished or delivered.
    assert await service.process_webhook(good, token, run.id)
    stored = await env.store.get_run(run.id)
    assert stored is not None and stored.status is RunStatus.WAITING
    await env.fake.set_status(start.backend_run_id, "success")
    stored = await env.store.get_run(run.id)
    assert stored is not None and stored.status is RunStatus.SUCCESS
    assert stored.outputs == ()  # the outputs GET reported, not the ones the webhook claimed


# ------------------------------------------------------------------------------ cancel


async def test_cancel_running_run(env: Env) -> None:
    env.deployment()
    env.store.set_balance(USER, 5)
    service = env.make()
    await service.start()
    run = await service.generate(make_request(), GenerationContext(price=5))
    start = await started(env, run)
    await env.fake.advance(start.backend_run_id, steps=4)  # queued, started, running, tick
    stored = await env.store.get_run(run.id)
    assert stored is not None and stored.status is RunStatus.RUNNING

    cancelled = await service.cancel_generation(run.id)
    assert cancelled.status is RunStatus.CANCELLED
    assert cancelled.charge_state is ChargeState.RELEASED
    assert env.fake.cancel_calls == [start.backend_run_id]
    assert await env.store.get_balance(USER) == 5 and env.store.credits[USER] == 5
    await env.fake.flush_webhooks()  # the backend's own "cancelled" webhook
    # a late success webhook is ignored
    late = {
        "run_id": start.backend_run_id,
        "status": "success",
        "progress": 1,
        "outputs": [{"data": {"images": [{"url": "https://x.test/a.png"}]}}],
    }
    assert await service.process_webhook(late, webhook_token(SECRET, run.id), run.id)
    await env.settle()
    assert env.recorder is not None
    assert len(env.recorder.of(GenerationCancelled, run.id)) == 1
    assert not env.recorder.of(GenerationCompleted, run.id)
    stored = await env.store.get_run(run.id)
    assert stored is not None and stored.status is RunStatus.CANCELLED and not stored.outputs
    assert service.scheduler.in_flight == 0
    # terminal: unchanged
    again = await service.cancel_generation(run.id)
    assert again.status is RunStatus.CANCELLED and env.fake.cancel_calls == [start.backend_run_id]


async def test_cancel_queued_run_and_cancel_user_generations(env: Env) -> None:
    env.deployment(timeline=Timeline.stall())
    env.store.set_balance(USER, 10)
    service = env.make(max_in_flight=1)
    await service.start()
    first = await service.generate(make_request(), GenerationContext(price=2))
    await started(env, first)
    queued = await service.generate(make_request(), GenerationContext(price=2))
    third = await service.generate(make_request(), GenerationContext(price=2))
    assert service.queue_position(queued.id) == 1
    assert service.queue_position(third.id) == 2
    result = await service.cancel_generation(queued.id)
    assert result.status is RunStatus.CANCELLED
    assert service.queue_position(queued.id) is None
    assert service.queue_position(third.id) == 1
    service.scheduler.flush_positions()  # moved positions are published coalesced
    await env.settle()
    assert env.recorder is not None
    assert env.recorder.of(GenerationQueued, third.id)[-1].position == 1
    assert await env.store.get_balance(USER) == 6
    assert len(env.fake.create_calls) == 1  # never sent

    cancelled = await service.cancel_user_generations(USER)
    assert {r.id for r in cancelled} == {first.id, third.id}
    assert await env.store.get_balance(USER) == 10
    assert len(env.fake.cancel_calls) == 1


class GatedBackend:
    """Holds create_run until the test opens the gate (a cancel lands mid-submit)."""

    def __init__(self, inner: ComfyDeployClient) -> None:
        self.inner = inner
        self.entered = asyncio.Event()
        self.gate = asyncio.Event()
        self.cancelled = asyncio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def cancel_run(self, run_id: str) -> None:
        await self.inner.cancel_run(run_id)
        self.cancelled.set()

    async def create_run(self, *args: Any, **kwargs: Any) -> str:
        self.entered.set()
        await self.gate.wait()
        return await self.inner.create_run(*args, **kwargs)


async def test_cancel_while_submitting_cancels_backend_run_afterwards(env: Env) -> None:
    env.deployment(timeline=Timeline.stall())
    env.store.set_balance(USER, 2)
    gated: list[GatedBackend] = []
    service = env.make(wrap=lambda c: gated.append(GatedBackend(c)) or gated[0])
    await service.start()
    run = await service.generate(make_request(), GenerationContext(price=2))
    async with asyncio.timeout(WAIT):
        await gated[0].entered.wait()
    stored = await env.store.get_run(run.id)
    assert stored is not None and stored.status is RunStatus.SUBMITTING
    cancelled = await service.cancel_generation(run.id)
    assert cancelled.status is RunStatus.CANCELLED
    assert env.store.hold_outcomes[run.id] is ChargeState.RELEASED
    gated[0].gate.set()
    async with asyncio.timeout(WAIT):
        await gated[0].cancelled.wait()
    assert env.recorder is not None
    (backend_run,) = env.fake.runs.values()
    assert env.fake.cancel_calls == [backend_run.id]
    await env.settle()
    assert not env.recorder.of(GenerationStarted, run.id)
    stored = await env.store.get_run(run.id)
    assert stored is not None and stored.status is RunStatus.CANCELLED


# ------------------------------------------------------------------------------ failures


async def test_5xx_twice_then_success(env: Env) -> None:
    dep = env.deployment()
    env.fake.fail_next_creates(2, status=503)
    service = env.make()
    await service.start()
    run = await service.generate(make_request(), GenerationContext())
    start = await started(env, run)
    assert start.deployment_id == dep
    assert len(env.fake.create_calls) == 3
    assert len(env.fake.runs) == 1
    assert env.store.deployments[dep].consecutive_failures == 0
    assert env.store.deployments[dep].success_count == 1


async def test_auth_failure_no_retry_no_failover(env: Env) -> None:
    env.deployment()
    env.deployment()
    env.store.set_balance(USER, 4)
    service = env.make(api_key="wrong-key")
    await service.start()
    run = await service.generate(make_request(), GenerationContext(price=4))
    failure = await failed(env, run)
    assert failure.error_code == ErrorCode.AUTH_FAILED == AuthFailedError.code
    assert len(env.fake.create_calls) == 1
    stored = await env.store.get_run(run.id)
    assert stored is not None and stored.status is RunStatus.FAILED
    assert stored.error_code == "AUTH_FAILED"
    assert stored.charge_state is ChargeState.RELEASED
    assert await env.store.get_balance(USER) == 4


async def test_failover_to_second_deployment(env: Env) -> None:
    a = env.deployment()
    b = env.deployment()
    env.fake.fail_next_creates(4, status=503)  # the client tries 4 times per deployment
    service = env.make()
    await service.start()
    run = await service.generate(make_request(), GenerationContext())
    start = await started(env, run)
    tried = [c["deployment_id"] for c in env.fake.create_calls]
    assert len(tried) == 5
    assert len(set(tried[:4])) == 1 and tried[4] != tried[0]
    assert start.deployment_id == tried[4]
    assert {a, b} == set(tried)
    assert env.store.deployments[tried[0]].consecutive_failures == 1
    stored = await env.store.get_run(run.id)
    assert stored is not None and stored.deployment_id == tried[4]


async def test_all_deployments_failing_fails_the_run(env: Env) -> None:
    env.deployment()
    env.fake.fail_next_creates(4, status=503)
    env.store.set_balance(USER, 1)
    service = env.make()
    await service.start()
    run = await service.generate(make_request(), GenerationContext(price=1))
    failure = await failed(env, run)
    assert failure.error_code == "BACKEND_UNAVAILABLE"
    assert await env.store.get_balance(USER) == 1


async def test_no_deployments_configured_fails_at_generate(env: Env) -> None:
    env.deployment("I2I")  # another type only
    env.store.deployments["off"] = env.store.add_deployment("off", "MAKE", enabled=False)
    env.store.set_balance(USER, 5)
    service = env.make()
    await service.start()
    with pytest.raises(NoDeploymentsAvailableError):
        await service.generate(make_request(), GenerationContext(price=5))
    with pytest.raises(NoDeploymentsAvailableError):  # cook mode needs a cook deployment
        env.deployment("MAKE")
        await service.generate(make_request(mode="cook"), GenerationContext(price=5))
    assert env.store.runs == {}
    assert await env.store.get_balance(USER) == 5


async def test_open_breaker_everywhere_fails_run_no_deployments(env: Env) -> None:
    env.deployment(consecutive_failures=3, last_failure_at=Clock().now)
    service = env.make()
    await service.start()
    run = await service.generate(make_request(), GenerationContext())
    failure = await failed(env, run)
    assert failure.error_code == "NO_DEPLOYMENTS_AVAILABLE"
    assert env.fake.create_calls == []


async def test_backend_failed_run(env: Env) -> None:
    env.deployment(timeline=Timeline.failed())
    env.store.set_balance(USER, 2)
    service = env.make()
    await service.start()
    run = await service.generate(make_request(), GenerationContext(price=2))
    start = await started(env, run)
    await env.fake.run_to_end(start.backend_run_id)
    failure = await failed(env, run)
    assert failure.error_code == "RUN_FAILED"
    assert env.store.hold_outcomes[run.id] is ChargeState.RELEASED


async def test_deadline_times_out_run(env: Env) -> None:
    env.deployment(timeline=Timeline.stall())
    env.store.set_balance(USER, 3)
    service = env.make(run_deadline=60.0)
    await service.start()
    run = await service.generate(make_request(), GenerationContext(price=3))
    start = await started(env, run)
    env.clock.now += 59
    assert await service.tracker.check_deadlines() == []
    env.clock.now += 1
    assert await service.tracker.check_deadlines() == [run.id]
    failure = await failed(env, run)
    assert failure.error_code == "RUN_TIMEOUT"
    stored = await env.store.get_run(run.id)
    assert stored is not None and stored.status is RunStatus.TIMEOUT
    assert env.fake.cancel_calls == [start.backend_run_id]
    assert await env.store.get_balance(USER) == 3
    assert service.scheduler.in_flight == 0


async def test_poll_errors_do_not_kill_tracker_and_lost_run_fails(env: Env) -> None:
    env.deployment(timeline=Timeline.stall())
    service = env.make()
    await service.start()
    run = await service.generate(make_request(), GenerationContext())
    start = await started(env, run)
    env.fake.fail_next_gets(8, status=500)  # 2 polls × 4 attempts
    await service.tracker.poll_once()
    await service.tracker.poll_once()
    assert service.tracker.is_tracked(run.id)
    del env.fake.runs[start.backend_run_id]  # the backend forgot the run: 404
    for _ in range(3):
        await service.tracker.poll_once()
    failure = await failed(env, run)
    assert failure.error_code == "RUN_FAILED"


async def test_insufficient_balance_queues_nothing(env: Env) -> None:
    env.deployment()
    env.store.set_balance(USER, 2)
    service = env.make()
    await service.start()
    with pytest.raises(InsufficientBalanceError):
        await service.generate(make_request(), GenerationContext(price=5))
    await env.settle()
    assert env.store.runs == {}
    assert service.scheduler.queued_count() == 0
    assert env.recorder is not None and env.recorder.events == []
    assert env.fake.create_calls == []


# ------------------------------------------------------------------------------ fair queue


async def test_fair_queue_two_users_and_caps(env: Env) -> None:
    env.deployment(timeline=Timeline.success())
    service = env.make(max_in_flight=1, max_active_per_user=1, max_queued_per_user=3)
    a_runs = [await service.generate(make_request(USER), GenerationContext()) for _ in range(3)]
    with pytest.raises(QueueFullError):
        await service.generate(make_request(USER), GenerationContext())
    b_runs = [await service.generate(make_request(OTHER), GenerationContext()) for _ in range(2)]
    expected = [a_runs[0], b_runs[0], a_runs[1], b_runs[1], a_runs[2]]
    assert [service.queue_position(r.id) for r in expected] == [1, 2, 3, 4, 5]
    await service.start()
    assert env.recorder is not None
    order: list[str] = []
    for _ in range(5):  # bounded: one run at a time (max_in_flight=1)
        await env.recorder.wait(lambda: len(env.recorder.of(GenerationStarted)) > len(order))
        start = env.recorder.of(GenerationStarted)[len(order)]
        assert service.scheduler.in_flight == 1
        order.append(start.run_id)
        await env.fake.run_to_end(start.backend_run_id)
    assert order == [r.id for r in expected]
    await env.settle()
    assert len(env.recorder.of(GenerationCompleted)) == 5
    # a user whose queue emptied can queue again
    await service.generate(make_request(USER), GenerationContext())


# ------------------------------------------------------------------------------ restart


async def _record(env: Env, status: RunStatus, *, price: int = 1, **changes: Any) -> RunRecord:
    request = make_request(seed=7, type=changes.pop("type", "MAKE"))
    run = RunRecord(
        id=f"run-{status.value}-{len(env.store.runs)}",
        user_id=USER,
        chat_id=USER,
        type=request.type,
        request={**request.to_record(), **changes.pop("request_extra", {})},
        price=price,
        created_at=env.clock.now + len(env.store.runs),
    )
    await env.store.create_run(run, hold_amount=price)
    return await env.store.update_run(run.id, status=status, **changes)


async def test_resume_after_restart(env: Env) -> None:
    dep = env.deployment(timeline=Timeline.success())
    env.store.set_balance(USER, 100)
    # A real in-flight run from a first service instance, stopped mid-run.
    first = env.make()
    await first.start()
    live = await first.generate(make_request(), GenerationContext(price=1))
    start = await started(env, live)
    await env.fake.advance(start.backend_run_id, steps=3)
    await first.stop()

    queued = await _record(env, RunStatus.QUEUED)
    images_lost = await _record(
        env,
        RunStatus.QUEUED,
        type="I2I",
        request_extra={"image": {"mime_type": "image/png", "bytes": 10}},
    )
    submitting = await _record(env, RunStatus.SUBMITTING, deployment_id=dep)
    success = await _record(
        env,
        RunStatus.SUCCESS,
        backend_run_id="b-1",
        outputs=(_outputs(),),
        progress=1.0,
    )
    failed_held = await _record(env, RunStatus.FAILED, error_code="RUN_FAILED")
    delivered_held = await _record(
        env, RunStatus.SUCCESS, delivery_state=DeliveryState.DELIVERED, outputs=(_outputs(),)
    )
    assert await env.store.get_balance(USER) == 100 - 7

    second = env.make()  # "restart": a new service on the same store
    await second.start()
    assert env.recorder is not None
    rec = env.recorder

    # QUEUED without images: re-enqueued and submitted
    await rec.wait_for(GenerationStarted, queued.id)
    # QUEUED for a type that needs images: they are gone
    assert (await rec.wait_for(GenerationFailed, images_lost.id)).error_code == "INTERRUPTED"
    # SUBMITTING: we cannot know whether it reached the backend
    assert (await rec.wait_for(GenerationFailed, submitting.id)).error_code == "SUBMIT_UNCERTAIN"
    # SUCCESS not delivered: re-published for delivery
    done = await rec.wait_for(GenerationCompleted, success.id)
    assert done.outputs == success.outputs
    await rec.wait_for(MediaAvailable, success.id)
    # in flight: tracked by polling (webhooks of the old instance are gone)
    assert second.tracker.is_tracked(live.id)
    env.fake.webhook_sink = None
    env.fake.drop_final_webhook = True
    await env.fake.run_to_end(start.backend_run_id)
    await second.tracker.poll_once()
    await rec.wait_for(GenerationCompleted, live.id)

    store = env.store
    assert store.hold_outcomes[images_lost.id] is ChargeState.RELEASED
    assert store.hold_outcomes[submitting.id] is ChargeState.RELEASED
    assert store.hold_outcomes[failed_held.id] is ChargeState.RELEASED
    assert store.hold_outcomes[delivered_held.id] is ChargeState.SETTLED
    assert success.id in store.holds and queued.id in store.holds and live.id in store.holds
    assert not rec.of(GenerationFailed, failed_held.id)  # nothing re-announced
    unfinished = {r.id for r in await store.list_unfinished_runs()}
    assert images_lost.id not in unfinished and submitting.id not in unfinished


def _outputs() -> MediaOutput:
    return MediaOutput(url="https://x.test/out.png", media_type=MediaType.IMAGE)


async def test_stop_leaves_queued_runs_resumable(env: Env) -> None:
    env.deployment(timeline=Timeline.stall(), role=DeploymentRole.DEFAULT)
    service = env.make(max_in_flight=1)
    await service.start()
    first = await service.generate(make_request(), GenerationContext())
    await started(env, first)
    waiting = await service.generate(make_request(), GenerationContext())
    await service.stop()
    stored = await env.store.get_run(waiting.id)
    assert stored is not None and stored.status is RunStatus.QUEUED
    second = env.make(max_in_flight=2)
    await second.start()
    await started(env, waiting)
    assert second.tracker.is_tracked(first.id)
