"""The generation service on the ComfyUI backend, against the ComfyUI double on 127.0.0.1:
make, i2i, inpaint, cancel (pending and running), runtime and validation errors, a server
restart, a bot restart mid-run, failover between servers and to ComfyDeploy."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator

import httpx
import pytest
from PIL import Image

from generation import (
    ChargeState,
    GenerationCancelled,
    GenerationCompleted,
    GenerationContext,
    GenerationFailed,
    GenerationProgress,
    GenerationRequest,
    GenerationStarted,
    InputImage,
    RunStatus,
)
from generation.comfyui import ids
from storage import Storage
from tests.comfyui_support import half_mask, harness, png, register
from tests.fakes.comfydeploy import FakeComfyDeploy, Timeline
from tests.fakes.comfyui import FakeComfyUI

USER = 11
PRICE = 3


@pytest.fixture
async def fake() -> AsyncIterator[FakeComfyUI]:
    server = FakeComfyUI()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def _user(storage: Storage, balance: int = 10) -> None:
    await storage.users.get_or_create(USER, starting_balance=balance)


def _request(type_: str = "MAKE", **kw: object) -> GenerationRequest:
    return GenerationRequest(type=type_, prompt="a red fox", user_id=USER, chat_id=USER, **kw)


async def _download(transport: httpx.AsyncBaseTransport, url: str) -> Image.Image:
    async with httpx.AsyncClient(transport=transport) as client:
        response = await client.get(url)
        response.raise_for_status()
    return Image.open(io.BytesIO(response.content)).convert("RGB")


async def test_make_runs_the_workflow_and_progress_arrives_over_the_websocket(
    storage: Storage, fake: FakeComfyUI
) -> None:
    await _user(storage)
    await register(storage, "MAKE", "make", "model-free/make")
    async with harness(storage, [fake.url]) as h:
        run = await h.service.generate(
            _request(width=256, height=128), GenerationContext(price=PRICE)
        )
        assert await storage.ledger.get_balance(USER) == 10 - PRICE
        started = await h.wait(GenerationStarted, run.id)
        assert ids.is_comfyui_run(started.backend_run_id)
        assert started.deployment_id == "workflow:make"
        # no poll tick happens (poll interval 3600 s): the WebSocket push brings the result
        done = await h.wait(GenerationCompleted, run.id)
        image = await _download(h.comfyui.transport, done.outputs[0].url)
        assert image.size == (256, 128)
        assert image.getpixel((128, 64)) == (255 - 0x33, 255 - 0x66, 255 - 0xCC)  # inverted
        stored = await storage.runs.get_run(run.id)
        assert stored.status is RunStatus.SUCCESS and stored.charge_state is ChargeState.HELD
        await h.service.mark_delivered(run.id)
        assert await storage.ledger.get_balance(USER) == 10 - PRICE
        assert (await storage.runs.get_run(run.id)).charge_state is ChargeState.SETTLED
        body = next(b for m, p, _, b in fake.requests if m == "POST" and p == "/prompt")
        assert body["client_id"] == h.comfyui.client_id
        assert body["prompt_id"] == ids.prompt_id_for(run.id)
        assert not any(n["class_type"].startswith("ComfyUIDeploy") for n in body["prompt"].values())


async def test_progress_and_queue_position_come_from_the_server(
    storage: Storage, fake: FakeComfyUI
) -> None:
    await _user(storage, 100)
    await register(storage, "MAKE", "make", "model-free/make")
    async with harness(storage, [fake.url]) as h:
        fake.pause()
        first = await h.service.generate(_request(width=64, height=64), GenerationContext())
        second = await h.service.generate(_request(width=72, height=64), GenerationContext())
        await h.wait(GenerationStarted, first.id)
        await h.wait(GenerationStarted, second.id)
        pid = await fake.wait_running()
        # two workers submit at once: either may have reached the server first
        if pid == ids.prompt_id_for(second.id):
            first, second = second, first
        await h.service.tracker.poll_once()
        waiting = await storage.runs.get_run(second.id)
        assert waiting.status is RunStatus.WAITING and waiting.queue_position == 2
        running = await storage.runs.get_run(first.id)
        assert running.status is RunStatus.RUNNING
        assert running.live_status == "Canvas"  # the running node's title
        fake.resume()
        await h.wait(GenerationCompleted, first.id)
        await h.wait(GenerationCompleted, second.id)
        progress = [e for e in h.of(GenerationProgress, first.id) if e.status is RunStatus.RUNNING]
        assert progress and all(0 <= e.progress < 1 for e in progress)


async def test_i2i_uploads_the_photo_and_feeds_it_from_load_image(
    storage: Storage, fake: FakeComfyUI
) -> None:
    await _user(storage)
    await register(storage, "I2I", "i2i", "model-free/i2i")
    async with harness(storage, [fake.url]) as h:
        photo = InputImage(data=png((10, 20, 30), (80, 60)), mime_type="image/png")
        run = await h.service.generate(
            _request("I2I", image=photo, width=160, height=120), GenerationContext(price=PRICE)
        )
        done = await h.wait(GenerationCompleted, run.id)
        image = await _download(h.comfyui.transport, done.outputs[0].url)
        assert image.size == (160, 120) and image.getpixel((5, 5)) == (245, 235, 225)
        uploads = [n for n in fake.inputs if n.startswith("tgbot_")]
        assert len(uploads) == 1 and uploads[0].endswith("_image.png")


async def test_inpaint_uploads_photo_and_mask(storage: Storage, fake: FakeComfyUI) -> None:
    await _user(storage)
    await register(storage, "INPAINT", "inpaint", "model-free/inpaint")
    async with harness(storage, [fake.url]) as h:
        run = await h.service.generate(
            _request(
                "INPAINT",
                image=InputImage(data=png("red", (96, 64))),
                mask=InputImage(data=half_mask((96, 64))),
            ),
            GenerationContext(price=PRICE),
        )
        done = await h.wait(GenerationCompleted, run.id)
        image = await _download(h.comfyui.transport, done.outputs[0].url)
        assert image.getpixel((10, 30)) == (0, 255, 0)  # masked: repainted
        assert image.getpixel((90, 30)) == (255, 0, 0)  # kept


async def test_cancel_pending_deletes_it_from_the_queue(
    storage: Storage, fake: FakeComfyUI
) -> None:
    await _user(storage, 100)
    await register(storage, "MAKE", "make", "model-free/make")
    async with harness(storage, [fake.url]) as h:
        fake.pause()
        # Both runs hold the price; which one the server picks first is not ours to decide.
        first = await h.service.generate(
            _request(width=64, height=64), GenerationContext(price=PRICE)
        )
        second = await h.service.generate(
            _request(width=80, height=64), GenerationContext(price=PRICE)
        )
        await h.wait(GenerationStarted, first.id)
        await h.wait(GenerationStarted, second.id)
        assert await storage.ledger.get_balance(USER) == 100 - 2 * PRICE
        if await fake.wait_running() == ids.prompt_id_for(second.id):
            first, second = second, first
        final = await h.service.cancel_generation(second.id)
        assert final.status is RunStatus.CANCELLED
        await h.wait(GenerationCancelled, second.id)
        # The pending run's hold is released at once; the running one's is still held.
        assert await storage.ledger.get_balance(USER) == 100 - PRICE
        second_pid = ids.prompt_id_for(second.id)
        assert ("POST", "/queue", {"delete": [second_pid]}) in [
            (m, p, b) for m, p, _, b in fake.requests
        ]
        assert not any(p == "/interrupt" for _, p, _, _ in fake.requests)
        fake.resume()
        await h.wait(GenerationCompleted, first.id)
        assert second_pid not in fake.executed_prompts


async def test_cancel_running_interrupts_that_prompt_only(
    storage: Storage, fake: FakeComfyUI
) -> None:
    await _user(storage, 100)
    await register(storage, "MAKE", "make", "model-free/make")
    async with harness(storage, [fake.url]) as h:
        fake.pause()
        run = await h.service.generate(
            _request(width=64, height=64), GenerationContext(price=PRICE)
        )
        pid = ids.prompt_id_for(run.id)
        await h.wait(GenerationStarted, run.id)
        await fake.wait_running(pid)
        final = await h.service.cancel_generation(run.id)
        assert final.status is RunStatus.CANCELLED
        assert await storage.ledger.get_balance(USER) == 100
        interrupts = [b for m, p, _, b in fake.requests if p == "/interrupt"]
        assert interrupts == [{"prompt_id": pid}]  # never a global interrupt
        fake.resume()
        await fake.wait_idle()
        entry = fake.history[pid]
        assert entry["status"]["messages"][-1][0] == "execution_interrupted"
        assert entry["outputs"] == {}


async def test_a_runtime_error_fails_the_run_with_a_clean_message(
    storage: Storage, fake: FakeComfyUI
) -> None:
    await _user(storage)
    await register(storage, "MAKE", "broken", "model-free/runtime_error")
    async with harness(storage, [fake.url]) as h:
        run = await h.service.generate(_request(), GenerationContext(price=PRICE))
        failed = await h.wait(GenerationFailed, run.id)
        assert failed.error_code == "RUN_FAILED"
        assert "Exception in SaveImage" in failed.message
        assert "outside the output folder" in failed.message
        assert "tensor" not in failed.message and "Traceback" not in failed.message
        assert "\n" not in failed.message
        assert await storage.ledger.get_balance(USER) == 10


async def test_a_validation_error_names_node_and_input_and_is_not_retried(
    storage: Storage, fake: FakeComfyUI
) -> None:
    await _user(storage)
    await register(storage, "MAKE", "invalid", "model-free/invalid")
    async with harness(storage, [fake.url]) as h:
        run = await h.service.generate(_request(), GenerationContext(price=PRICE))
        failed = await h.wait(GenerationFailed, run.id)
        assert failed.error_code == "WORKFLOW_INVALID"
        assert "node 2 (EmptyImage) input height" in failed.message
        assert "value_bigger_than_max" in failed.message
        assert sum(1 for m, p, _, _ in fake.requests if (m, p) == ("POST", "/prompt")) == 1
        assert await storage.ledger.get_balance(USER) == 10


async def test_a_server_restart_fails_the_lost_prompt_and_releases_the_hold(
    storage: Storage, fake: FakeComfyUI
) -> None:
    await _user(storage)
    await register(storage, "MAKE", "make", "model-free/make")
    async with harness(storage, [fake.url]) as h:
        fake.pause()
        run = await h.service.generate(
            _request(width=64, height=64), GenerationContext(price=PRICE)
        )
        await fake.wait_running(ids.prompt_id_for(run.id))
        await fake.restart()  # queue and history are gone
        for _ in range(3):  # the tracker gives a lost run a few polls
            await h.service.tracker.poll_once()
        failed = await h.wait(GenerationFailed, run.id)
        assert failed.error_code == "RUN_FAILED"
        assert await storage.ledger.get_balance(USER) == 10


async def test_bot_restart_mid_run_recovers_and_delivers(
    storage: Storage, fake: FakeComfyUI
) -> None:
    await _user(storage)
    await register(storage, "MAKE", "make", "model-free/make")
    async with harness(storage, [fake.url]) as first:
        fake.pause()
        run = await first.service.generate(
            _request(width=64, height=64), GenerationContext(price=PRICE)
        )
        await first.wait(GenerationStarted, run.id)
        await fake.wait_running(ids.prompt_id_for(run.id))
    # the first process is gone; its prompt still runs on the server
    stored = await storage.runs.get_run(run.id)
    assert stored.backend_run_id and not stored.is_terminal
    async with harness(storage, [fake.url]) as second:
        assert second.comfyui.client_id != first.comfyui.client_id
        assert second.service.tracker.is_tracked(run.id)
        fake.resume()
        await fake.wait_idle()
        await second.service.tracker.poll_once()
        done = await second.wait(GenerationCompleted, run.id)
        assert done.outputs[0].filename.startswith("make_")


async def test_a_crash_during_submit_is_reconciled_from_the_servers_queue(
    storage: Storage, fake: FakeComfyUI
) -> None:
    await _user(storage)
    dep = await register(storage, "MAKE", "make", "model-free/make")
    async with harness(storage, [fake.url], start=False) as h:
        run = await h.service.generate(
            _request(width=64, height=64), GenerationContext(price=PRICE)
        )
        # the process dies inside create_run: the prompt reached the server, the id was not saved
        await storage.runs.update_run(run.id, status=RunStatus.SUBMITTING, deployment_id=dep)
        fake.pause()
        await h.comfyui.create_run(dep, {"input_width": 64, "input_height": 64}, run_ref=run.id)
    async with harness(storage, [fake.url]) as h:
        recovered = await storage.runs.get_run(run.id)
        assert recovered.backend_run_id == ids.run_id(
            ids.server_key(fake.url), ids.prompt_id_for(run.id)
        )
        fake.resume()
        await fake.wait_idle()
        await h.service.tracker.poll_once()
        await h.wait(GenerationCompleted, run.id)


async def test_a_crash_during_submit_that_never_reached_the_server_fails_uncertain(
    storage: Storage, fake: FakeComfyUI
) -> None:
    await _user(storage)
    dep = await register(storage, "MAKE", "make", "model-free/make")
    async with harness(storage, [fake.url], start=False) as h:
        run = await h.service.generate(_request(), GenerationContext(price=PRICE))
        await storage.runs.update_run(run.id, status=RunStatus.SUBMITTING, deployment_id=dep)
    async with harness(storage, [fake.url]):
        stored = await storage.runs.get_run(run.id)
        assert stored.status is RunStatus.FAILED and stored.error_code == "SUBMIT_UNCERTAIN"
        assert await storage.ledger.get_balance(USER) == 10


async def test_failover_to_a_second_server_and_the_breaker_skips_the_dead_one(
    storage: Storage, fake: FakeComfyUI
) -> None:
    await _user(storage, 100)
    await register(storage, "MAKE", "make", "model-free/make")
    dead = FakeComfyUI()
    await dead.start()
    await dead.stop()  # its port now refuses connections
    async with harness(storage, [dead.url, fake.url], breaker_threshold=1) as h:
        run = await h.service.generate(_request(width=64, height=64), GenerationContext())
        started = await h.wait(GenerationStarted, run.id)
        assert started.backend_run_id.startswith(f"comfyui:{ids.server_key(fake.url)}:")
        await h.wait(GenerationCompleted, run.id)
        assert h.comfyui.breaker_open(dead.url)
        again = await h.service.generate(_request(width=72, height=64), GenerationContext())
        await h.wait(GenerationCompleted, again.id)
        assert len(fake.executed_prompts) == 2


async def test_failover_to_comfydeploy_when_the_own_server_is_down(storage: Storage) -> None:
    await _user(storage)
    cd = FakeComfyDeploy()
    cd_dep = cd.add_deployment(
        inputs=["input_prompt", "input_seed"], timeline=Timeline.success("png")
    )
    await storage.deployments.add("MAKE", cd_dep, weight=1)
    await register(storage, "MAKE", "make", "model-free/make", weight=1000)  # tried first
    dead = FakeComfyUI()
    await dead.start()
    await dead.stop()
    try:
        async with harness(storage, [dead.url], comfydeploy=cd) as h:
            run = await h.service.generate(_request(), GenerationContext(price=PRICE))
            started = await h.wait(GenerationStarted, run.id)
            assert started.deployment_id == cd_dep
            assert not ids.is_comfyui_run(started.backend_run_id)
            await cd.run_to_end(started.backend_run_id)
            await h.service.tracker.poll_once()
            await h.wait(GenerationCompleted, run.id)
            assert len(cd.create_calls) == 1
            assert (await storage.deployments.get("workflow:make")).consecutive_failures == 1
    finally:
        await cd.aclose()


async def test_failover_to_comfydeploy_when_the_own_queue_is_long(
    storage: Storage, fake: FakeComfyUI
) -> None:
    await _user(storage, 100)
    cd = FakeComfyDeploy()
    cd_dep = cd.add_deployment(inputs=["input_prompt"], timeline=Timeline.success("png"))
    await storage.deployments.add("MAKE", cd_dep, weight=1)
    await register(storage, "MAKE", "make", "model-free/make", weight=1000)
    try:
        async with harness(storage, [fake.url], comfydeploy=cd, max_queue=1) as h:
            fake.pause()
            first = await h.service.generate(_request(width=64, height=64), GenerationContext())
            assert ids.is_comfyui_run((await h.wait(GenerationStarted, first.id)).backend_run_id)
            second = await h.service.generate(_request(width=64, height=72), GenerationContext())
            started = await h.wait(GenerationStarted, second.id)
            assert started.deployment_id == cd_dep  # the own queue is full: ComfyDeploy
            fake.resume()
    finally:
        await cd.aclose()


async def test_removing_a_workflow_lets_runs_in_flight_finish(
    storage: Storage, fake: FakeComfyUI
) -> None:
    await _user(storage)
    await register(storage, "MAKE", "make", "model-free/make")
    async with harness(storage, [fake.url]) as h:
        fake.pause()
        run = await h.service.generate(
            _request(width=64, height=64), GenerationContext(price=PRICE)
        )
        await fake.wait_running(ids.prompt_id_for(run.id))
        assert await storage.workflows.remove("make")
        assert await storage.deployments.list_deployments("MAKE") == []
        fake.resume()
        await h.wait(GenerationCompleted, run.id)


async def test_auth_header_goes_on_http_ws_and_downloads(storage: Storage) -> None:
    secured = FakeComfyUI(require_auth="Bearer s3cret-token")
    await secured.start()
    try:
        await _user(storage)
        await register(storage, "MAKE", "make", "model-free/make")
        async with harness(storage, [secured.url], auth="Bearer s3cret-token") as h:
            run = await h.service.generate(_request(width=64, height=64), GenerationContext())
            done = await h.wait(GenerationCompleted, run.id)
            assert (await _download(h.comfyui.transport, done.outputs[0].url)).size == (64, 64)
            assert secured.ws_connects >= 1
            assert all(
                hd.get("authorization") == "Bearer s3cret-token"
                for hd in secured.ws_upgrade_headers
            )
            assert all(
                hd.get("authorization") == "Bearer s3cret-token" for _, _, hd, _ in secured.requests
            )
            async with httpx.AsyncClient() as plain:  # without the header: refused
                assert (await plain.get(done.outputs[0].url)).status_code == 401
    finally:
        await secured.stop()
