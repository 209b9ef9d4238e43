"""Result actions end to end: the real application, FakeTelegram, storage and the ComfyDeploy
double. Each action on a delivered result (upscale, vary subtle/strong, again, parameters with
the LoRAs applied, original file), owner-only spending, the owner's price, and the buttons
still working after a restart of the bot."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from handlers.result_actions import ResultAction
from tests.e2e.inprocess import E2E, MAKE_INPUTS, build_harness
from tests.fakes.comfydeploy import FakeComfyDeploy
from tests.fakes.telegram import FakeMessage, FakeTelegram, FakeUser

I2I_INPUTS = ("input_prompt", "input_negative", "input_seed", "input_image", "input_strength")
UPSCALE_INPUTS = ("input_image", "input_seed")


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[dict[str, Any]]:
    fake, cd = FakeTelegram(), FakeComfyDeploy()
    env, close = await build_harness(tmp_path, fake=fake, cd=cd)
    state: dict[str, Any] = {"env": env, "close": close, "fake": fake, "cd": cd, "tmp": tmp_path}
    try:
        yield state
    finally:
        await state["close"]()


async def _restart(world: dict[str, Any]) -> E2E:
    await world["close"]()
    env, close = await build_harness(world["tmp"], fake=world["fake"], cd=world["cd"])
    world["env"], world["close"] = env, close
    return env


async def _deploy_all(env: E2E) -> None:
    await env.add_deployment("MAKE", inputs=MAKE_INPUTS)
    await env.add_deployment("I2I", inputs=I2I_INPUTS)
    await env.add_deployment("UPSCALE", inputs=UPSCALE_INPUTS)


async def _result(env: E2E, user: FakeUser, prompt: str = "a red fox") -> tuple[Any, FakeMessage]:
    await env.command(user, f"/make {prompt}")
    run = await env.latest_run(user.id)
    await env.finish(run.id)
    photos = [m for m in env.fake.sent_media(user.id) if m.media_kind == "photo"]
    return run, photos[-1]


async def _press(env: E2E, user: FakeUser, message: FakeMessage, data: str) -> dict[str, Any]:
    update = await env.feed(env.fake._callback_query(user.to_dict(), message, data, queue=False))
    answer = user.callback_answer(update)
    assert answer is not None, "the button press was not answered"
    return answer


async def test_upscale_and_vary_work_on_the_delivered_output(world: dict[str, Any]) -> None:
    env: E2E = world["env"]
    await _deploy_all(env)
    alice = env.fake.user(3001)
    run, photo = await _result(env, alice)

    await _press(env, alice, photo, ResultAction("up", run.id, 0).pack())
    upscale = await env.latest_run(alice.id)
    assert upscale.type == "UPSCALE" and upscale.id != run.id
    await env.backend_id(upscale.id)
    sent = env.cd.create_calls[-1]["inputs"]
    assert sent["input_image"].startswith("data:image/")  # the output, fetched again
    assert upscale.meta["reply_to_message_id"] == photo.message_id  # replies to the result
    await env.finish(upscale.id)

    await _press(env, alice, photo, ResultAction("vs", run.id, 0).pack())
    subtle = await env.latest_run(alice.id)
    assert subtle.type == "I2I" and subtle.request["strength"] == 0.35
    assert subtle.request["prompt"] == "a red fox"
    await env.finish(subtle.id)
    await _press(env, alice, photo, ResultAction("vx", run.id, 0).pack())
    strong = await env.latest_run(alice.id)
    assert strong.type == "I2I" and strong.request["strength"] == 0.7


async def test_spending_actions_are_the_owners_at_the_owners_price(world: dict[str, Any]) -> None:
    env: E2E = world["env"]
    await _deploy_all(env)
    await env.storage.prices.set("UPSCALE", 3)
    owner, other = env.fake.user(3002), env.fake.user(3003)
    await env.storage.users.get_or_create(owner.id, starting_balance=10)
    run, photo = await _result(env, owner)
    runs_before = len(await env.storage.runs.list_user_runs(other.id, active_only=False))
    answer = await _press(env, other, photo, ResultAction("up", run.id, 0).pack())
    assert answer["text"] == env.t("actions.not_yours") and answer["show_alert"]
    assert len(await env.storage.runs.list_user_runs(other.id, active_only=False)) == runs_before
    await _press(env, owner, photo, ResultAction("up", run.id, 0).pack())
    upscale = await env.latest_run(owner.id)
    assert upscale.type == "UPSCALE" and upscale.price == 3
    assert await env.storage.ledger.get_balance(owner.id) == 7  # 3 held


async def test_parameters_show_applied_loras_and_original_file(world: dict[str, Any]) -> None:
    env: E2E = world["env"]
    await _deploy_all(env)
    await env.storage.loras.add("PixelArt", ["pixel art"], default_weight=0.8)
    bob = env.fake.user(3004)
    run, photo = await _result(env, bob, "a castle, pixel art")
    await _press(env, bob, photo, ResultAction("pm", run.id, 0).pack())
    info = env.fake.last_message(bob.id)
    assert "PixelArt:0.8" in info.text and info.reply_to_message_id == photo.message_id
    await _press(env, bob, photo, ResultAction("og", run.id, 0).pack())
    original = env.fake.last_message(bob.id)
    assert original.media_kind == "document" and original.filename.endswith(".png")


async def test_actions_keep_working_after_a_restart(world: dict[str, Any]) -> None:
    env: E2E = world["env"]
    await _deploy_all(env)
    cara = env.fake.user(3005)
    run, photo = await _result(env, cara)
    env = await _restart(world)
    await _press(env, cara, photo, ResultAction("vx", run.id, 0).pack())
    strong = await env.latest_run(cara.id)
    assert strong.type == "I2I" and strong.id != run.id
    await env.finish(strong.id)
    assert [m for m in env.fake.sent_media(cara.id) if m.media_kind == "photo"][-1] != photo


async def test_actions_without_a_deployment_refuse(world: dict[str, Any]) -> None:
    env: E2E = world["env"]
    await env.add_deployment("MAKE", inputs=MAKE_INPUTS)
    dan = env.fake.user(3006)
    run, photo = await _result(env, dan)
    answer = await _press(env, dan, photo, ResultAction("up", run.id, 0).pack())
    assert answer["text"] == env.t("actions.unavailable")
    stale = await _press(env, dan, photo, ResultAction("up", "f" * 32, 0).pack())
    assert stale["text"] == env.t("common.stale_button")
