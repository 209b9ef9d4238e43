"""Batches, stored result files and admin-added types end to end (the real application,
FakeTelegram, storage, the ComfyDeploy double): ``--batch 3`` arrives as one media group with
U1…U3 / V1…V3 buttons naming the images; actions after a restart fetch the output through
Telegram's file id; an admin-added type gets a command (also in set_my_commands) and its gif
comes back as an animation; /help lists everything in every language."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from handlers.result_actions import ResultAction
from tests.e2e.inprocess import ADMIN_ID, E2E, MAKE_INPUTS, build_harness
from tests.fakes.comfydeploy import FakeComfyDeploy, Timeline
from tests.fakes.telegram import FakeTelegram

BATCH_INPUTS = (*MAKE_INPUTS, "input_batch")
UUID = "123e4567-e89b-12d3-a456-4266141740aa"


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[dict[str, Any]]:
    fake, cd = FakeTelegram(), FakeComfyDeploy()
    env, close = await build_harness(tmp_path, fake=fake, cd=cd)
    state: dict[str, Any] = {"env": env, "close": close, "fake": fake, "cd": cd, "tmp": tmp_path}
    try:
        yield state
    finally:
        await state["close"]()


async def _press(env: E2E, user: Any, message: Any, data: str) -> dict[str, Any]:
    update = await env.feed(env.fake._callback_query(user.to_dict(), message, data, queue=False))
    answer = user.callback_answer(update)
    assert answer is not None
    return answer


async def test_a_batch_is_one_album_with_buttons_naming_the_images(
    world: dict[str, Any],
) -> None:
    env: E2E = world["env"]
    await env.add_deployment(
        "MAKE", inputs=BATCH_INPUTS, timeline=Timeline.success("png", "png", "png")
    )
    await env.add_deployment("UPSCALE", inputs=("input_image", "input_seed"))
    await env.add_deployment("I2I", inputs=(*MAKE_INPUTS, "input_image", "input_strength"))
    alice = env.fake.user(5001)
    request = await env.command(alice, "/make three foxes --batch 3")
    run = await env.latest_run(alice.id)
    assert run.request["batch"] == 3
    await env.backend_id(run.id)
    assert env.cd.create_calls[-1]["inputs"]["input_batch"] == 3
    await env.finish(run.id)

    album = [m for m in env.fake.sent_media(alice.id) if m.media_kind == "photo"]
    assert len(album) == 3
    groups = {m.extra.get("media_group_id") for m in album}
    assert len(groups) == 1 and None not in groups  # one media group
    assert album[0].caption and album[1].caption is None
    assert all(m.reply_to_message_id == request["message"]["message_id"] for m in album)
    keyboard = env.fake.last_message(alice.id)
    assert keyboard.text == env.t("actions.batch_pick", count=3)
    assert keyboard.button_texts == [
        "U1",
        "U2",
        "U3",
        "V1",
        "V2",
        "V3",
        env.t("actions.again"),
        env.t("actions.params"),
    ]
    files = await env.storage.result_files.for_run(run.id)
    assert [f.item for f in files] == [0, 1, 2]
    assert {f.message_id for f in files} == {m.message_id for m in album}

    gets = len(env.fake.calls("getFile"))
    await env.tap(alice, keyboard, "U2")
    upscale = await env.latest_run(alice.id)
    assert upscale.type == "UPSCALE" and upscale.meta["reply_to_message_id"] == keyboard.message_id
    assert len(env.fake.calls("getFile")) == gets + 1  # output 2 came from Telegram's file
    await env.finish(upscale.id)
    await env.tap(alice, keyboard, "V3")
    vary = await env.latest_run(alice.id)
    assert vary.type == "I2I" and vary.request["strength"] == 0.7


async def test_actions_after_a_restart_use_the_delivered_file(world: dict[str, Any]) -> None:
    env: E2E = world["env"]
    await env.add_deployment("MAKE")
    await env.add_deployment("UPSCALE", inputs=("input_image", "input_seed"))
    bob = env.fake.user(5002)
    await env.command(bob, "/make a lighthouse")
    run = await env.latest_run(bob.id)
    await env.finish(run.id)
    photo = [m for m in env.fake.sent_media(bob.id) if m.media_kind == "photo"][-1]

    await world["close"]()  # restart: a new application on the same database and doubles
    env, world["close"] = await build_harness(world["tmp"], fake=world["fake"], cd=world["cd"])
    downloads = len(world["cd"].file_requests) if hasattr(world["cd"], "file_requests") else None
    gets = len(env.fake.calls("getFile"))
    await _press(env, bob, photo, ResultAction("up", run.id, 0).pack())
    upscale = await env.latest_run(bob.id)
    assert upscale.type == "UPSCALE" and upscale.id != run.id
    assert len(env.fake.calls("getFile")) == gets + 1
    if downloads is not None:
        assert len(world["cd"].file_requests) == downloads  # not fetched from the backend


async def test_admin_added_type_command_menu_and_animation(world: dict[str, Any]) -> None:
    env: E2E = world["env"]
    admin = env.fake.user(ADMIN_ID)
    cara = env.fake.user(5003)
    dep = env.cd.add_deployment(
        inputs=("input_prompt", "input_seed"), timeline=Timeline.success("gif")
    )
    menus_before = len(env.fake.calls("setMyCommands"))
    await env.command(admin, f"/deployment add ANIMATE {dep}")
    menus = env.fake.calls("setMyCommands")[menus_before:]
    assert menus and all(
        "animate" in [c["command"] for c in call.params["commands"]] for call in menus
    )
    await env.command(cara, "/help")
    assert "/animate" in env.fake.last_message(cara.id).text
    await env.command(cara, "/animate a dancing cat")
    run = await env.latest_run(cara.id)
    assert run.type == "ANIMATE"
    await env.finish(run.id)
    sent = env.fake.sent_media(cara.id)
    assert [m.media_kind for m in sent] == ["animation"]
    assert env.t("actions.params") in sent[0].button_texts

    await env.command(admin, f"/deployment remove {dep}")
    await env.command(cara, "/animate a dancing cat")
    assert env.fake.last_message(cara.id).text == env.t("common.unknown_command")


@pytest.mark.parametrize("lang", ["en", "ru", "es", "de"])
async def test_help_lists_everything_in_every_language(world: dict[str, Any], lang: str) -> None:
    env: E2E = world["env"]
    user = env.fake.user(5010, language_code=lang)
    await env.command(user, "/help")
    text = env.fake.last_message(user.id).text
    for command in ("/make", "/quickmake", "/i2i", "/inpaint", "/upscale", "/id", "--ar", "--no"):
        assert command in text, (lang, command)
    assert env.t("params.help_title", lang) in text


async def test_no_deployment_tells_an_admin_what_to_add(world: dict[str, Any]) -> None:
    env: E2E = world["env"]
    admin, dan = env.fake.user(ADMIN_ID), env.fake.user(5004)
    await env.command(admin, "/quickmake a castle")
    assert env.fake.last_message(admin.id).text == env.t(
        "actions.no_deployment_admin", type="QUICKMAKE"
    )
    await env.command(dan, "/quickmake a castle")
    assert env.fake.last_message(dan.id).text == env.t("error.NO_DEPLOYMENTS_AVAILABLE")
