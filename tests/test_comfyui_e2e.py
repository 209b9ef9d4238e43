"""Self-hosted ComfyUI end to end: the real PTB application (bot.app, make_backend from the
settings) talking to the Telegram double, with the ComfyUI double on 127.0.0.1 — /workflow
add, /make, /i2i, /inpaint, /cancel (pending and running), a runtime error, a validation error
(users and admins told differently), a server restart, a bot restart mid-run, failover to a
second server and to ComfyDeploy."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from generation.comfyui import ComfyUIBackend, ids
from generation.models import RunStatus
from generation.routing import RoutingBackend
from tests.comfyui_support import (
    add_workflow,
    comfy_e2e,
    delivered,
    half_mask,
    last_text,
    png,
    wait_done,
)
from tests.e2e.inprocess import ADMIN_ID, E2E
from tests.fakes.comfydeploy import FakeComfyDeploy, Timeline
from tests.fakes.comfyui import FakeComfyUI
from tests.fakes.telegram import FakeTelegram


@pytest.fixture
async def comfy() -> AsyncIterator[FakeComfyUI]:
    server = FakeComfyUI()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def e2e(tmp_path: Path, comfy: FakeComfyUI) -> AsyncIterator[E2E]:
    env, close = await comfy_e2e(tmp_path, [comfy.url])
    try:
        yield env
    finally:
        await close()


async def test_workflow_add_make_and_the_result_photo(e2e: E2E, comfy: FakeComfyUI) -> None:
    assert isinstance(e2e.services.backend, ComfyUIBackend)
    reply = await add_workflow(e2e, "MAKE", "model-free/make", "mf")
    assert "mf" in reply and "MAKE" in reply
    assert "input_width (node 1) → 3 EmptyImage.width" in reply
    assert "input_height (node 2) → 3 EmptyImage.height" in reply
    alice = e2e.fake.user(3001)
    await e2e.command(alice, "/make a red fox")
    run = await delivered(e2e, alice)
    assert run.deployment_id == "workflow:mf" and ids.is_comfyui_run(run.backend_run_id)
    photo = e2e.fake.sent_media(alice.id)[-1]
    assert photo.media_kind == "photo"
    listing = (await e2e.command(e2e.fake.user(ADMIN_ID), "/workflows")) and last_text(
        e2e, ADMIN_ID
    )
    assert "mf — MAKE" in listing and "input_width" in listing


async def test_i2i_and_inpaint_through_telegram(e2e: E2E, comfy: FakeComfyUI) -> None:
    await add_workflow(e2e, "I2I", "model-free/i2i", "i2i")
    await add_workflow(e2e, "INPAINT", "model-free/inpaint", "inpaint")
    bob = e2e.fake.user(3002)
    await e2e.feed(bob.send_photo(png("red", (80, 60)), caption="/i2i a blue bird", queue=False))
    await delivered(e2e, bob)
    assert any(n.startswith("tgbot_") and n.endswith("_image.png") for n in comfy.inputs)

    carol = e2e.fake.user(3003)
    await e2e.command(carol, "/inpaint")
    await e2e.feed(carol.send_photo(png("red", (96, 64)), queue=False))
    await e2e.feed(carol.send_document(half_mask((96, 64)), "mask.png", "image/png", queue=False))
    await e2e.feed(carol.send_text("paint it green", queue=False))
    await delivered(e2e, carol)
    assert any(n.endswith("_mask.png") for n in comfy.inputs)


async def test_cancel_pending_and_running(e2e: E2E, comfy: FakeComfyUI) -> None:
    await add_workflow(e2e, "MAKE", "model-free/make", "mf")
    comfy.pause()
    dave, erin = e2e.fake.user(3004), e2e.fake.user(3005)
    await e2e.command(dave, "/make first")
    await e2e.backend_id((await e2e.latest_run(dave.id)).id)
    running = await comfy.wait_running()
    await e2e.command(erin, "/make second")
    erin_run = await e2e.latest_run(erin.id)
    await e2e.backend_id(erin_run.id)
    dave_run = await e2e.latest_run(dave.id)
    if running == ids.prompt_id_for(erin_run.id):
        dave, erin, dave_run, erin_run = erin, dave, erin_run, dave_run
    await e2e.command(erin, "/cancel")  # pending
    assert (await wait_done(e2e, erin)).status is RunStatus.CANCELLED
    assert {"delete": [ids.prompt_id_for(erin_run.id)]} in [
        b for _, p, _, b in comfy.requests if p == "/queue"
    ]
    await e2e.command(dave, "/cancel")  # running
    assert (await wait_done(e2e, dave)).status is RunStatus.CANCELLED
    interrupts = [b for _, p, _, b in comfy.requests if p == "/interrupt"]
    assert interrupts == [{"prompt_id": ids.prompt_id_for(dave_run.id)}]
    assert (
        e2e.t("progress.cancelled")
        in e2e.progress_message(dave.id, await e2e.storage.runs.get_run(dave_run.id)).text
    )
    comfy.resume()
    await comfy.wait_idle()
    assert ids.prompt_id_for(erin_run.id) not in comfy.executed_prompts


async def test_runtime_error_is_a_clean_failure(e2e: E2E, comfy: FakeComfyUI) -> None:
    await add_workflow(e2e, "MAKE", "model-free/runtime_error", "broken")
    frank = e2e.fake.user(3006)
    await e2e.command(frank, "/make boom")
    run = await wait_done(e2e, frank)
    assert run.status is RunStatus.FAILED and run.error_code == "RUN_FAILED"
    text = e2e.progress_message(frank.id, run).text
    assert e2e.t("progress.failed", reason=e2e.t("error.RUN_FAILED")) in text
    assert "SaveImage" not in text and "Traceback" not in text


async def test_validation_error_users_told_misconfigured_admins_told_where(e2e: E2E) -> None:
    await add_workflow(e2e, "MAKE", "model-free/invalid", "bad")
    gina = e2e.fake.user(3007)
    await e2e.command(gina, "/make nope")
    run = await wait_done(e2e, gina)
    assert run.error_code == "WORKFLOW_INVALID"
    text = e2e.progress_message(gina.id, run).text
    assert e2e.t("error.WORKFLOW_INVALID") in text and "EmptyImage" not in text
    alert = await e2e.fake.wait_for_message(ADMIN_ID, "⚠️")
    assert "workflow:bad" in alert.text and "node 2 (EmptyImage) input height" in alert.text
    hugo = e2e.fake.user(3014)  # the same broken workflow again: no second alert for a while
    await e2e.command(hugo, "/make again")
    assert (await wait_done(e2e, hugo)).error_code == "WORKFLOW_INVALID"
    alerts = [m for m in e2e.fake.messages(ADMIN_ID) if "⚠️" in (m.text or "")]
    assert len(alerts) == 1


async def test_server_restart_fails_the_run_and_releases_the_hold(
    e2e: E2E, comfy: FakeComfyUI
) -> None:
    await add_workflow(e2e, "MAKE", "model-free/make", "mf")
    await e2e.command(e2e.fake.user(ADMIN_ID), "/price MAKE 3")
    harry = e2e.fake.user(3008)
    await e2e.storage.users.get_or_create(harry.id)
    await e2e.command(e2e.fake.user(ADMIN_ID), f"/grant {harry.id} 10")
    comfy.pause()
    await e2e.command(harry, "/make lost")
    run = await e2e.latest_run(harry.id)
    await e2e.backend_id(run.id)
    await comfy.wait_running()
    assert await e2e.storage.ledger.get_balance(harry.id) == 7
    await comfy.restart()
    for _ in range(3):
        await e2e.service.tracker.poll_once()
    run = await wait_done(e2e, harry)
    assert run.status is RunStatus.FAILED
    assert await e2e.storage.ledger.get_balance(harry.id) == 10


async def test_bot_restart_mid_run_delivers_after_restart(
    tmp_path: Path, comfy: FakeComfyUI
) -> None:
    fake = FakeTelegram()
    first, close = await comfy_e2e(tmp_path, [comfy.url], fake=fake)
    await add_workflow(first, "MAKE", "model-free/make", "mf")
    ivy = fake.user(3009)
    comfy.pause()
    await first.command(ivy, "/make survive a restart")
    run = await first.latest_run(ivy.id)
    await first.backend_id(run.id)
    await comfy.wait_running()
    await close()  # the bot goes away; the prompt keeps running on the server
    second, close = await comfy_e2e(tmp_path, [comfy.url], fake=fake)
    try:
        assert second.service.tracker.is_tracked(run.id)
        comfy.resume()
        await comfy.wait_idle()
        await second.service.tracker.poll_once()
        await delivered(second, ivy)
    finally:
        await close()


async def test_failover_to_a_second_server(tmp_path: Path, comfy: FakeComfyUI) -> None:
    dead = FakeComfyUI()
    await dead.start()
    await dead.stop()
    env, close = await comfy_e2e(tmp_path, [dead.url, comfy.url])
    try:
        await add_workflow(env, "MAKE", "model-free/make", "mf")
        jack = env.fake.user(3010)
        await env.command(jack, "/make elsewhere")
        run = await delivered(env, jack)
        assert run.backend_run_id.startswith(f"comfyui:{ids.server_key(comfy.url)}:")
    finally:
        await close()


async def test_failover_to_comfydeploy(tmp_path: Path) -> None:
    dead = FakeComfyUI()
    await dead.start()
    await dead.stop()
    cd = FakeComfyDeploy()
    env, close = await comfy_e2e(tmp_path, [dead.url], cd=cd)
    try:
        assert isinstance(env.services.backend, RoutingBackend)
        dep = await env.add_deployment("MAKE", timeline=Timeline.success("png"))
        await add_workflow(env, "MAKE", "model-free/make", "mf")
        await env.command(env.fake.user(ADMIN_ID), "/deployments")
        kate = env.fake.user(3011)
        # two targets, equal weights: whichever is drawn, the run ends on ComfyDeploy
        await env.command(kate, "/make on the cloud")
        run = await env.latest_run(kate.id)
        backend = await env.backend_id(run.id)
        assert not ids.is_comfyui_run(backend)
        assert (await env.storage.runs.get_run(run.id)).deployment_id == dep
        await env.cd.run_to_end(backend)
        await env.service.tracker.poll_once()
        await delivered(env, kate)
    finally:
        await close()


async def test_workflow_add_explains_ui_format_and_refuses_unknown_nodes(e2e: E2E) -> None:
    admin = e2e.fake.user(ADMIN_ID)
    ui = {"last_node_id": 3, "nodes": [{"id": 1, "type": "KSampler"}], "links": [], "version": 0.4}
    await e2e.feed(
        admin.send_document(
            json.dumps(ui).encode(),
            "ui.json",
            "application/json",
            "/workflow add MAKE ui",
            queue=False,
        )
    )
    assert last_text(e2e, ADMIN_ID) == e2e.t("workflow.refused.ui_format")
    unknown = {
        "1": {"class_type": "FancyNode", "inputs": {}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}},
    }
    await e2e.feed(
        admin.send_document(
            json.dumps(unknown).encode(),
            "u.json",
            "application/json",
            "/workflow add MAKE fancy",
            queue=False,
        )
    )
    reply = last_text(e2e, ADMIN_ID)
    assert "FancyNode" in reply and "fancy" in reply
    assert await e2e.storage.workflows.get_by_name("fancy") is None
    reply = await add_workflow(e2e, "I2I", "model-free/make", "noimage")
    assert "input_image" in reply  # the type needs an image input the workflow lacks
    assert await e2e.storage.workflows.get_by_name("noimage") is None
    stranger = e2e.fake.user(3012)
    await e2e.feed(
        stranger.send_document(
            b"{}", "w.json", "application/json", "/workflow add MAKE x", queue=False
        )
    )
    assert last_text(e2e, stranger.id) == e2e.t("admin.refused")


async def test_workflow_remove_lets_the_run_in_flight_finish(e2e: E2E, comfy: FakeComfyUI) -> None:
    await add_workflow(e2e, "MAKE", "model-free/make", "mf")
    liam = e2e.fake.user(3013)
    comfy.pause()
    await e2e.command(liam, "/make keep going")
    run = await e2e.latest_run(liam.id)
    await e2e.backend_id(run.id)
    await e2e.command(e2e.fake.user(ADMIN_ID), "/workflow remove mf")
    assert last_text(e2e, ADMIN_ID) == e2e.t("workflow.removed", name="mf")
    assert await e2e.storage.workflows.list_workflows() == []
    comfy.resume()
    await delivered(e2e, liam)


async def test_local_mode_with_comfyui_url_generates_real_images(
    tmp_path: Path, comfy: FakeComfyUI
) -> None:
    import httpx

    from handlers.deps import services_of
    from tests.comfyui_support import register
    from tests.e2e.local import HEADERS, Chat, bot_photos, local_runtime

    async with local_runtime(tmp_path, comfyui_url=comfy.url) as rt:
        services = services_of(rt.application)
        assert isinstance(services.backend, ComfyUIBackend)
        await register(services.storage, "MAKE", "mf", "model-free/make")
        async with httpx.AsyncClient(base_url=rt.url, headers=HEADERS, timeout=10) as client:
            chat = Chat(client)
            first = await chat.refresh(wait=0)
            assert first["backend"] == "comfyui"
            await chat.send("/make a lighthouse")
            photo = (await chat.until(bot_photos, "the photo"))[0]
            media = await client.get(photo["media"])
            assert media.status_code == 200 and media.content.startswith(b"\x89PNG")
            assert (photo["w"], photo["h"]) == (1024, 1024)  # the request's size, rendered
    assert comfy.executed_prompts, "the ComfyUI double ran nothing"


async def test_workflow_for_an_unknown_type_gives_its_command(e2e: E2E, comfy: FakeComfyUI) -> None:
    """`/workflow add ANIMATE` (a type the bot does not know) → `/animate` works at once, is
    in /help and in the command menu, and runs on that workflow."""
    reply = await add_workflow(e2e, "ANIMATE", "model-free/make", "anim")
    assert "anim" in reply and "ANIMATE" in reply
    menu = {c["command"] for cs in e2e.fake.commands.values() for c in cs}
    assert "animate" in menu
    gus = e2e.fake.user(3010)
    await e2e.command(gus, "/help")
    assert "/animate" in last_text(e2e, gus.id)
    await e2e.command(gus, "/animate a dancing cat --seed 4")
    run = await delivered(e2e, gus)
    assert run.type == "ANIMATE" and run.deployment_id == "workflow:anim"
    assert run.request["seed"] == 4 and run.meta["prompt"] == "a dancing cat"
    assert e2e.fake.sent_media(gus.id)[-1].media_kind == "photo"
    await e2e.command(e2e.fake.user(ADMIN_ID), "/workflow remove anim")
    await e2e.command(gus, "/animate a cat")
    assert last_text(e2e, gus.id) == e2e.t("common.unknown_command")
