"""/make and /i2i end to end, on the in-process harness of ``tests/e2e/inprocess.py``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from generation.models import ChargeState, DeliveryState, RunStatus
from generation.request import MAX_PROMPT_LENGTH
from tests.e2e.inprocess import (
    E2E,
    MAKE_INPUTS,
    jpeg,
    make_e2e,
    png,
)
from tests.fakes.comfydeploy import Timeline
from tests.fakes.telegram import FakeUser


@pytest.fixture
async def e2e(tmp_path: Path) -> AsyncIterator[E2E]:
    env, close = await make_e2e(tmp_path)
    try:
        yield env
    finally:
        await close()


# ---------------------------------------------------------------------------------------- /make


async def test_make_progress_photo_buttons_and_settled_hold(e2e: E2E) -> None:
    await e2e.add_deployment()
    await e2e.storage.prices.set("MAKE", 2)
    alice = e2e.fake.user(1001)
    await e2e.storage.users.get_or_create(alice.id, language_code="en")
    await e2e.storage.ledger.set_balance(alice.id, 5, actor=None)

    request = await e2e.command(alice, "/make a red fox in snow")
    run = await e2e.latest_run(alice.id)
    # The create-run left before the handler replied (handlers/submit.py).
    assert run.status in (RunStatus.SUBMITTING, RunStatus.WAITING)
    assert run.charge_state is ChargeState.HELD
    assert run.meta["reply_to_message_id"] == request["message"]["message_id"]
    assert run.meta["prompt"] == "a red fox in snow" and run.meta["lang"] == "en"
    assert await e2e.storage.ledger.get_balance(alice.id) == 3  # 2 held

    # the progress message: a reply to the request, with a Cancel button for this run
    progress = e2e.fake.messages(alice.id)[0]
    assert progress.reply_to_message_id == request["message"]["message_id"]
    assert progress.buttons[0]["callback_data"] == f"r:cx:{run.id}"
    assert progress.text in (
        e2e.t("progress.queued", position=1),
        e2e.t("progress.submitting"),
        e2e.t("progress.waiting"),
    )

    fake_run = await e2e.finish(run.id)
    assert fake_run.status == "success"
    photos = [m for m in e2e.fake.sent_media(alice.id) if m.media_kind == "photo"]
    assert len(photos) == 1
    photo = photos[0]
    assert photo.reply_to_message_id == request["message"]["message_id"]
    seed = (await e2e.storage.runs.get_run(run.id)).request["seed"]
    assert photo.caption == e2e.t("result.caption", prompt="a red fox in snow", seed=seed)
    data = {b["callback_data"] for b in photo.buttons}
    assert {f"x:ag:0:{run.id}", f"x:pm:0:{run.id}"} <= data

    final = await e2e.storage.runs.get_run(run.id)
    assert final.delivery_state is DeliveryState.DELIVERED
    assert final.charge_state is ChargeState.SETTLED
    assert await e2e.storage.ledger.get_balance(alice.id) == 3
    assert await e2e.storage.ledger.get_held(alice.id) == 0
    done = e2e.fake.message(alice.id, progress.message_id)
    assert done.text == e2e.t("progress.done") and not done.buttons
    # the seed sent to the backend is the one shown
    assert e2e.cd.create_calls[0]["inputs"]["input_seed"] == seed


async def test_progress_edits_are_throttled_on_the_fake_clock(e2e: E2E) -> None:
    e2e.services.config.progress_edit_interval = 1.5
    await e2e.add_deployment(timeline=Timeline.success("png"))
    alice = e2e.fake.user(1002)
    await e2e.command(alice, "/make a lighthouse")
    run = await e2e.latest_run(alice.id)
    backend = await e2e.backend_id(run.id)
    await e2e.settle()
    progress_id = (await e2e.storage.runs.get_run(run.id)).progress_message_id
    edits_before = len(e2e.fake.calls("editMessageText"))

    # Several backend steps at the same instant: no edit is due before 1.5 s have passed.
    await e2e.cd.advance(backend, steps=5)
    await e2e.settle()
    assert len(e2e.fake.calls("editMessageText")) == edits_before
    e2e.clock.advance(1.5)
    await e2e.settle()
    edits = e2e.fake.calls("editMessageText")
    assert len(edits) == edits_before + 1  # coalesced into one edit with the newest state
    shown = e2e.fake.message(alice.id, progress_id)
    assert "%" in shown.text and shown.buttons  # generating N %, still cancellable

    # the rest of the run: the final state waits out the throttle too, then appears
    await e2e.cd.run_to_end(backend)
    await e2e.events.wait(lambda: "generation:completed" in e2e.events.names(run.id))
    await e2e.settle()
    for _ in range(5):  # bounded: each round lets one due edit through
        e2e.clock.advance(1.5)
        await e2e.settle()
    assert e2e.fake.message(alice.id, progress_id).text == e2e.t("progress.done")
    texts = [c.params["text"] for c in e2e.fake.calls("editMessageText")]
    assert len(texts) == len(set(texts)), "an identical edit was sent"


async def test_make_without_prompt_gets_usage(e2e: E2E) -> None:
    alice = e2e.fake.user(1003)
    await e2e.command(alice, "/make")
    assert e2e.fake.last_message(alice.id).text == e2e.t("gen.make_usage")
    assert not e2e.cd.create_calls


async def test_too_long_prompt_is_refused_with_the_limit(e2e: E2E) -> None:
    await e2e.add_deployment()
    alice = e2e.fake.user(1004)
    await e2e.command(alice, "/make " + "x" * 5000)
    text = e2e.fake.last_message(alice.id).text
    assert text == e2e.t("gen.prompt_too_long", limit=MAX_PROMPT_LENGTH, length=5000)
    assert await e2e.storage.runs.list_user_runs(alice.id, active_only=False) == []


async def test_cannot_afford_generation(e2e: E2E) -> None:
    await e2e.add_deployment()
    await e2e.storage.prices.set("MAKE", 3)
    bob = e2e.fake.user(1005, "Bob", language_code="de")
    await e2e.command(bob, "/make ein Fuchs")
    text = e2e.fake.last_message(bob.id).text
    assert text == e2e.t("gen.insufficient_balance", "de", price=3, balance=0)
    assert "/balance" in text
    assert await e2e.storage.runs.list_user_runs(bob.id, active_only=False) == []
    await e2e.service.bus.drain()
    assert not e2e.cd.create_calls


async def test_no_deployment_gives_localized_error(e2e: E2E) -> None:
    alice = e2e.fake.user(1006, language_code="ru")
    await e2e.command(alice, "/make кот")
    assert e2e.fake.last_message(alice.id).text == e2e.t("error.NO_DEPLOYMENTS_AVAILABLE", "ru")


async def test_failed_run_shows_localized_reason_and_releases_hold(e2e: E2E) -> None:
    await e2e.add_deployment(timeline=Timeline.failed())
    await e2e.storage.prices.set("MAKE", 1)
    alice = e2e.fake.user(1007, language_code="es")
    await e2e.storage.users.get_or_create(alice.id, language_code="es")
    await e2e.storage.ledger.set_balance(alice.id, 1, actor=None)
    await e2e.command(alice, "/make un zorro")
    run = await e2e.latest_run(alice.id)
    await e2e.finish(run.id)
    msg = e2e.progress_message(alice.id, await e2e.storage.runs.get_run(run.id))
    reason = e2e.t("error.RUN_FAILED", "es")
    assert msg.text == e2e.t("progress.failed", "es", reason=reason)
    assert not msg.buttons
    assert await e2e.storage.ledger.get_balance(alice.id) == 1
    assert not e2e.fake.sent_media(alice.id)


async def test_sticker_and_unknown_command_get_answers(e2e: E2E) -> None:
    alice = e2e.fake.user(1008)
    await e2e.feed(alice.send_sticker(queue=False))
    assert e2e.fake.last_message(alice.id).text == e2e.t("common.unknown_message")
    await e2e.command(alice, "/frobnicate")
    assert e2e.fake.last_message(alice.id).text == e2e.t("common.unknown_command")


async def test_again_with_new_seed_and_show_parameters(e2e: E2E) -> None:
    await e2e.add_deployment()
    alice = e2e.fake.user(1009)
    await e2e.command(alice, "/make a castle")
    first = await e2e.latest_run(alice.id)
    await e2e.finish(first.id)
    photo = e2e.fake.sent_media(alice.id)[-1]

    answer = await e2e.tap(alice, photo, f"x:pm:0:{first.id}")
    assert answer["text"] == e2e.t("result.params_shown")
    params = e2e.fake.last_message(alice.id).text
    seed = (await e2e.storage.runs.get_run(first.id)).request["seed"]
    assert "a castle" in params and str(seed) in params and "MAKE" in params

    await e2e.tap(alice, photo, f"x:ag:0:{first.id}")
    second = await e2e.latest_run(alice.id)
    assert second.id != first.id and second.type == "MAKE"
    assert second.meta["prompt"] == "a castle"
    await e2e.finish(second.id)
    assert len(e2e.cd.create_calls) == 2
    seeds = [c["inputs"]["input_seed"] for c in e2e.cd.create_calls]
    assert seeds[1] == (await e2e.storage.runs.get_run(second.id)).request["seed"]


async def test_stale_run_button_gets_polite_answer(e2e: E2E) -> None:
    alice = e2e.fake.user(1010)
    await e2e.command(alice, "/make")  # any bot message to hang an old button on
    msg = e2e.fake.last_message(alice.id)
    msg.reply_markup = {"inline_keyboard": [[{"text": "x", "callback_data": "r:ag:" + "0" * 32}]]}
    answer = await e2e.tap(alice, msg, "x")
    assert answer["text"] == e2e.t("common.stale_button")


async def test_lora_applied_only_when_balance_reaches_min(e2e: E2E) -> None:
    await e2e.add_deployment()
    await e2e.storage.loras.add("pixelart", ["pixel"], min_balance=10)
    poor, rich = e2e.fake.user(1011), e2e.fake.user(1012)
    for user, balance in ((poor, 0), (rich, 10)):
        await e2e.storage.users.get_or_create(user.id, language_code="en")
        if balance:
            await e2e.storage.ledger.set_balance(user.id, balance, actor=None)
    await e2e.command(poor, "/make pixel cat")
    await e2e.backend_id((await e2e.latest_run(poor.id)).id)
    await e2e.command(rich, "/make pixel cat")
    await e2e.backend_id((await e2e.latest_run(rich.id)).id)
    prompts = [c["inputs"]["input_prompt"] for c in e2e.cd.create_calls]
    assert "<lora:pixelart" not in prompts[0]
    assert "<lora:pixelart" in prompts[1]


async def test_parameters_show_the_applied_loras(e2e: E2E) -> None:
    """The "Parameters" button lists the LoRAs the run applied (stored ``applied_loras``),
    not tags parsed from the prompt the user typed (which has none)."""
    await e2e.add_deployment()
    await e2e.storage.loras.add("pixelart", ["pixel"], min_balance=0)
    alice = e2e.fake.user(1013)
    await e2e.command(alice, "/make pixel cat")
    run = await e2e.latest_run(alice.id)
    await e2e.finish(run.id)
    stored = (await e2e.storage.runs.get_run(run.id)).request
    assert stored["applied_loras"] and all("pixelart" in name for name in stored["applied_loras"])
    photo = e2e.fake.sent_media(alice.id)[-1]
    await e2e.tap(alice, photo, f"x:pm:0:{run.id}")
    params = e2e.fake.last_message(alice.id).text
    loras_line = next(line for line in params.splitlines() if line.startswith("LoRAs:"))
    assert loras_line == "LoRAs: " + ", ".join(f"{n}:1" for n in stored["applied_loras"])
    assert loras_line != "LoRAs: —"


# ----------------------------------------------------------------------------------------- /i2i


async def _i2i_created(e2e: E2E, user: FakeUser) -> dict[str, Any]:
    run = await e2e.latest_run(user.id)
    assert run.type == "I2I"
    await e2e.backend_id(run.id)
    body = e2e.cd.create_calls[-1]
    image = body["inputs"].get("input_image")
    assert isinstance(image, str) and not image.startswith("https://api.telegram.org")
    assert e2e.fake.token not in image
    return body


async def test_i2i_photo_with_caption(e2e: E2E) -> None:
    await e2e.add_deployment("I2I", inputs=(*MAKE_INPUTS, "input_image"))
    alice = e2e.fake.user(1020)
    await e2e.feed(alice.send_photo(jpeg(), caption="/i2i make it blue", queue=False))
    body = await _i2i_created(e2e, alice)
    assert body["inputs"]["input_prompt"].startswith("make it blue")


async def test_i2i_as_reply_to_a_photo(e2e: E2E) -> None:
    await e2e.add_deployment("I2I", inputs=(*MAKE_INPUTS, "input_image"))
    alice = e2e.fake.user(1021)
    photo = await e2e.feed(alice.send_document(png(), "in.png", "image/png", queue=False))
    await e2e.command(alice, "/i2i watercolor", reply_to=photo["message"]["message_id"])
    await _i2i_created(e2e, alice)


async def test_i2i_photo_sent_next_and_non_image_document(e2e: E2E) -> None:
    await e2e.add_deployment("I2I", inputs=(*MAKE_INPUTS, "input_image"))
    alice = e2e.fake.user(1022)
    await e2e.command(alice, "/i2i oil painting")
    assert e2e.fake.last_message(alice.id).text == e2e.t("i2i.send_photo")
    await e2e.feed(alice.send_document(b"%PDF-1.4", "doc.pdf", "application/pdf", queue=False))
    assert e2e.fake.last_message(alice.id).text == e2e.t("gen.not_an_image")
    await e2e.feed(alice.send_photo(jpeg(), queue=False))
    body = await _i2i_created(e2e, alice)
    assert body["inputs"]["input_prompt"].startswith("oil painting")


async def test_i2i_without_photo_then_cancel(e2e: E2E) -> None:
    alice = e2e.fake.user(1023)
    await e2e.command(alice, "/i2i something")
    await e2e.feed(alice.send_text("where is the photo?", queue=False))
    assert e2e.fake.last_message(alice.id).text == e2e.t("i2i.send_photo")
    await e2e.command(alice, "/cancel")
    assert e2e.fake.last_message(alice.id).text == e2e.t("cancel.flow_ended")
    await e2e.feed(alice.send_photo(jpeg(), queue=False))  # the flow is over
    assert e2e.fake.last_message(alice.id).text == e2e.t("common.unknown_message")
    assert not e2e.cd.create_calls


async def test_again_on_i2i_result_asks_for_the_photo(e2e: E2E) -> None:
    await e2e.add_deployment("I2I", inputs=(*MAKE_INPUTS, "input_image"))
    alice = e2e.fake.user(1024)
    await e2e.feed(alice.send_photo(jpeg(), caption="/i2i neon", queue=False))
    run = await e2e.latest_run(alice.id)
    await e2e.finish(run.id)
    photo = e2e.fake.sent_media(alice.id)[-1]
    assert not any(b["callback_data"].startswith("x:ag:") for b in photo.buttons)  # not shown
    # a button from before result actions existed still answers sensibly
    photo.reply_markup = {"inline_keyboard": [[{"text": "a", "callback_data": f"r:ag:{run.id}"}]]}
    answer = await e2e.tap(alice, photo, f"r:ag:{run.id}")
    assert answer["text"] == e2e.t("result.again_needs_photo") and answer["show_alert"]
    assert len(e2e.cd.create_calls) == 1


async def test_reply_to_a_deleted_command_is_still_sent(e2e: E2E) -> None:
    """The user deletes their command before the bot answers: the answer still arrives."""
    alice = e2e.fake.user(1099)
    update = alice.send_command("/make", None, queue=False)
    e2e.fake.message(alice.id, update["message"]["message_id"]).deleted = True
    await e2e.feed(update)
    assert e2e.fake.last_message(alice.id).text == e2e.t("gen.make_usage")


async def test_same_message_twice_starts_one_run(e2e: E2E) -> None:
    """Telegram redelivers updates that were not confirmed before a crash: one run only."""
    await e2e.add_deployment()
    alice = e2e.fake.user(1098)
    update = alice.send_command("/make a fox", None, queue=False)
    await e2e.feed(update)
    await e2e.feed(update)
    runs = await e2e.storage.runs.list_user_runs(alice.id, active_only=False)
    assert len(runs) == 1
    progress = [m for m in e2e.fake.messages(alice.id) if m.reply_to_message_id]
    assert len(progress) == 1
