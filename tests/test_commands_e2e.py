"""New commands end to end with the doubles: /quickmake with inline parameters, reference
photos (--style/--pose/--canny), /upscale in its three forms, commands of admin-added types
(/type marks them photo-taking), /id and /user with every lookup form and refusal."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from handlers.custom_commands import refresh_registry
from tests.e2e.inprocess import ADMIN_ID, E2E, MAKE_INPUTS, make_e2e, png

UUID = "123e4567-e89b-12d3-a456-4266141740{:02d}"
STYLE_INPUTS = (*MAKE_INPUTS, "input_style_image", "input_pose_image", "input_control_image")


@pytest.fixture
async def e2e(tmp_path: Path) -> AsyncIterator[E2E]:
    env, close = await make_e2e(tmp_path)
    try:
        yield env
    finally:
        await close()


# ---------------------------------------------------------------- /quickmake + parameters


async def test_quickmake_with_inline_parameters(e2e: E2E) -> None:
    await e2e.add_deployment("QUICKMAKE", inputs=(*MAKE_INPUTS, "input_steps", "input_batch"))
    alice = e2e.fake.user(4001)
    await e2e.command(alice, "/quickmake a castle --ar 16:9 --seed 5 --steps 12 --no fog")
    run = await e2e.latest_run(alice.id)
    assert run.type == "QUICKMAKE" and run.meta["prompt"] == "a castle"
    await e2e.backend_id(run.id)
    inputs = e2e.cd.create_calls[-1]["inputs"]
    assert inputs["input_prompt"] == "a castle"
    assert (inputs["input_width"], inputs["input_height"]) == (1368, 768)
    assert inputs["input_seed"] == 5 and inputs["input_steps"] == 12
    assert inputs["input_negative"].endswith(", fog")


@pytest.mark.parametrize(
    ("line", "key", "params"),
    [
        ("/quickmake a castle --seed abc", "params.error.invalid", {"value": "abc"}),
        ("/quickmake a castle --batch 9", "params.error.range", {"value": "9"}),
        ("/quickmake a castle --v 6", "params.error.unknown", {}),
        ("/quickmake a castle --strength 0.5", "params.error.unsupported", {}),
        ("/quickmake --seed 4", "actions.quickmake_usage", None),
        ("/quickmake a knight --style", "params.reference_needs_photo", None),
    ],
)
async def test_bad_parameters_get_a_reply_and_no_run(
    e2e: E2E, line: str, key: str, params: dict[str, str] | None
) -> None:
    from generation.params import PARAMS

    await e2e.add_deployment("QUICKMAKE")
    bob = e2e.fake.user(4002)
    await e2e.command(bob, line)
    assert not await e2e.storage.runs.list_user_runs(bob.id, active_only=False)
    text = e2e.fake.last_message(bob.id).text
    if params is None:
        assert text == e2e.t(key)
        return
    name = line.split("--")[1].split()[0]
    spec = PARAMS.get(name)
    expected = e2e.t(
        key,
        param=f"--{name}",
        range=spec.range_text() if spec else "",
        example=spec.example if spec else "",
        **{"value": "", **params},
    )
    assert text == expected


async def test_reference_photo_builds_the_combined_type(e2e: E2E) -> None:
    await e2e.add_deployment("MAKE", inputs=STYLE_INPUTS)
    cara = e2e.fake.user(4003)
    await e2e.feed(cara.send_photo(png(), caption="/make a knight --style --pose", queue=False))
    run = await e2e.latest_run(cara.id)
    assert run.type == "MAKE_STYLE_POSE" and run.meta["prompt"] == "a knight"
    await e2e.backend_id(run.id)
    inputs = e2e.cd.create_calls[-1]["inputs"]
    assert inputs["input_style_image"].startswith("data:image/")
    assert inputs["input_pose_image"] == inputs["input_style_image"]
    assert "input_control_image" not in inputs

    sent = await e2e.feed(cara.send_photo(png((70, 50)), queue=False))
    photo_id = sent["message"]["message_id"]
    refused = await e2e.feed(
        cara.reply_to(photo_id, "/quickmake a dancer --canny", chat_id=cara.id, queue=False)
    )
    assert refused  # QUICKMAKE has no deployment yet: told, no run
    assert (await e2e.latest_run(cara.id)).id == run.id
    await e2e.add_deployment("QUICKMAKE", inputs=STYLE_INPUTS)
    await e2e.feed(
        cara.reply_to(photo_id, "/quickmake a dancer --canny", chat_id=cara.id, queue=False)
    )
    canny = await e2e.latest_run(cara.id)
    assert canny.type == "QUICKMAKE_CANNY"


# ---------------------------------------------------------------- /upscale


async def test_upscale_three_ways(e2e: E2E) -> None:
    await e2e.add_deployment("UPSCALE", inputs=("input_image", "input_seed"))
    dan = e2e.fake.user(4004)
    photo = await e2e.feed(dan.send_photo(png(), queue=False))
    await e2e.feed(
        dan.reply_to(photo["message"]["message_id"], "/upscale", chat_id=dan.id, queue=False)
    )
    first = await e2e.latest_run(dan.id)
    assert first.type == "UPSCALE" and first.request["prompt"] == ""
    await e2e.finish(first.id)  # (at most two active runs per user)
    assert "input_prompt" not in e2e.cd.create_calls[-1]["inputs"]
    assert e2e.cd.create_calls[-1]["inputs"]["input_image"].startswith("data:image/")

    await e2e.feed(dan.send_photo(png((80, 60)), caption="/upscale", queue=False))
    second = await e2e.latest_run(dan.id)
    assert second.id != first.id and second.request["image"]["width"] == 80

    await e2e.command(dan, "/upscale")
    assert e2e.fake.last_message(dan.id).text == e2e.t("actions.upscale_send_photo")
    await e2e.feed(dan.send_text("hello", queue=False))  # not a photo: reminded
    assert e2e.fake.last_message(dan.id).text == e2e.t("actions.upscale_send_photo")
    await e2e.feed(dan.send_photo(png((96, 64)), queue=False))
    third = await e2e.latest_run(dan.id)
    assert third.id != second.id and third.request["image"]["width"] == 96


# ---------------------------------------------------------------- admin-added types


async def test_admin_added_type_gets_a_command(e2e: E2E) -> None:
    admin = e2e.fake.user(ADMIN_ID)
    eve = e2e.fake.user(4005)
    dep = await e2e.add_deployment("ANIMATE", inputs=("input_prompt", "input_seed", "input_image"))
    assert dep
    assert await refresh_registry(e2e.storage, e2e.services.custom_types)
    await e2e.command(eve, "/animate a dancing cat --seed 3")
    run = await e2e.latest_run(eve.id)
    assert run.type == "ANIMATE" and run.request["seed"] == 3
    assert run.meta["prompt"] == "a dancing cat"

    await e2e.command(eve, "/type ANIMATE image")
    assert e2e.fake.last_message(eve.id).text == e2e.t("admin.refused")
    await e2e.command(admin, "/type MAKE image")
    assert e2e.fake.last_message(admin.id).text == e2e.t("actions.type_builtin", type="MAKE")
    await e2e.command(admin, "/type ANIMATE image")
    assert e2e.fake.last_message(admin.id).text == e2e.t(
        "actions.type_set_image", type="ANIMATE", command="animate"
    )
    await e2e.command(eve, "/animate a dancing cat")
    assert e2e.fake.last_message(eve.id).text == e2e.t(
        "actions.custom_send_photo", command="animate"
    )
    await e2e.feed(eve.send_photo(png(), caption="/animate a dancing cat", queue=False))
    photo_run = await e2e.latest_run(eve.id)
    assert photo_run.id != run.id and photo_run.request["image"] is not None
    await e2e.command(eve, "/animate@other_bot a cat")
    assert (await e2e.latest_run(eve.id)).id == photo_run.id


# ---------------------------------------------------------------- /id and /user


async def test_id_for_everyone(e2e: E2E) -> None:
    fay = e2e.fake.user(4006, "Fay")
    gus = e2e.fake.user(4007, "Gus")
    group = -1009999
    e2e.fake.add_chat(group, title="Team")
    await e2e.command(fay, "/id")
    assert e2e.fake.last_message(fay.id).text == e2e.t("users.id_self", id=fay.id)
    said = await e2e.feed(gus.send_text("hi all", group, queue=False))
    await e2e.feed(fay.reply_to(said["message"]["message_id"], "/id", chat_id=group, queue=False))
    assert e2e.fake.last_message(group).text.splitlines() == [
        e2e.t("users.id_other", name="Gus", id=gus.id),
        e2e.t("users.id_chat", chat_id=group),
    ]


async def test_user_lookup_forms_and_refusals(e2e: E2E) -> None:
    admin = e2e.fake.user(ADMIN_ID)
    hal = e2e.fake.user(4008, "Hal", username="hal_9000")
    await e2e.command(hal, "/balance")  # Hal uses the bot once: now known by name
    for query in ("/user 4008", "/user @hal_9000", "/user @HAL_9000"):
        await e2e.command(admin, query)
        text = e2e.fake.last_message(admin.id).text
        assert "4008" in text and "@hal_9000" in text, query
    said = await e2e.feed(hal.send_text("hello", queue=False))
    assert said
    users_before = await e2e.storage.users.count()
    for query, key, params in [
        ("/user 777777", "users.unknown_id", {"query": "777777"}),
        ("/user @nobody_known", "users.unknown_username", {"query": "@nobody_known"}),
        ("/user what?", "users.invalid", {"query": "what?"}),
        ("/user", "users.usage", {}),
    ]:
        await e2e.command(admin, query)
        assert e2e.fake.last_message(admin.id).text == e2e.t(key, **params), query
    assert await e2e.storage.users.count() == users_before  # nobody created
    await e2e.command(hal, "/user 4008")
    assert e2e.fake.last_message(hal.id).text == e2e.t("admin.refused")


async def test_inline_parameters_on_i2i(e2e: E2E) -> None:
    await e2e.add_deployment("I2I", inputs=(*MAKE_INPUTS, "input_image", "input_strength"))
    gil = e2e.fake.user(4009)
    await e2e.feed(
        gil.send_photo(png(), caption="/i2i as a watercolor --strength 0,3 --seed 9", queue=False)
    )
    run = await e2e.latest_run(gil.id)
    assert run.type == "I2I" and run.meta["prompt"] == "as a watercolor"
    assert run.request["strength"] == 0.3 and run.request["seed"] == 9
    await e2e.feed(gil.send_photo(png(), caption="/i2i a cat --style", queue=False))
    assert e2e.fake.last_message(gil.id).text == e2e.t(
        "params.error.unsupported", param="--style", value="", range="", example=""
    )
    await e2e.feed(gil.send_photo(png(), caption="/i2i --seed 4", queue=False))
    assert e2e.fake.last_message(gil.id).text == e2e.t("gen.need_prompt")
    assert (await e2e.latest_run(gil.id)).id == run.id


async def test_access_and_payments_commands_take_names_and_replies(e2e: E2E) -> None:
    admin = e2e.fake.user(ADMIN_ID)
    ivy = e2e.fake.user(4010, "Ivy", username="ivy_k")
    await e2e.command(ivy, "/balance")  # seen: known by name from now on
    await e2e.command(admin, "/ban @IVY_K")
    assert e2e.fake.last_message(admin.id).text == e2e.t("access.banned_user", user_id=ivy.id)
    assert (await e2e.storage.access.get(ivy.id)).banned
    await e2e.command(admin, "/ban @never_seen_here")
    assert e2e.fake.last_message(admin.id).text == e2e.t(
        "users.unknown_username", query="@never_seen_here"
    )
    group = -100555
    e2e.fake.add_chat(group, title="Team")
    said = await e2e.feed(ivy.send_text("hello", group, queue=False))
    await e2e.feed(admin.reply_to(said["message"]["message_id"], "/unban", chat_id=group))
    assert e2e.fake.last_message(group).text == e2e.t("access.unbanned_user", user_id=ivy.id)
    await e2e.command(admin, "/payments @ivy_k")
    assert e2e.fake.last_message(admin.id).text == e2e.t("pay.payments_none")


async def test_photo_taking_admin_type_takes_the_photo_sent_next(e2e: E2E) -> None:
    admin = e2e.fake.user(ADMIN_ID)
    kit = e2e.fake.user(4011)
    await e2e.add_deployment("ANIMATE", inputs=("input_prompt", "input_seed", "input_image"))
    await e2e.command(admin, "/type ANIMATE image")
    await e2e.command(kit, "/animate a dancing cat --seed 7")
    assert e2e.fake.last_message(kit.id).text == e2e.t(
        "actions.custom_send_photo", command="animate"
    )
    assert not await e2e.storage.runs.list_user_runs(kit.id, active_only=False)
    await e2e.feed(kit.send_text("hello", queue=False))  # not a photo: reminded
    assert e2e.fake.last_message(kit.id).text == e2e.t(
        "actions.custom_send_photo", command="animate"
    )
    await e2e.feed(kit.send_photo(png((96, 64)), queue=False))  # the photo sent next
    run = await e2e.latest_run(kit.id)
    assert run.type == "ANIMATE" and run.meta["prompt"] == "a dancing cat"
    assert run.request["seed"] == 7 and run.request["image"]["width"] == 96
    await e2e.feed(kit.send_photo(png(), queue=False))  # the flow ended: no second run
    assert len(await e2e.storage.runs.list_user_runs(kit.id, active_only=False)) == 1
    await e2e.command(kit, "/animate a sleeping cat")  # waits again; /cancel ends it
    await e2e.command(kit, "/cancel")
    await e2e.feed(kit.send_photo(png(), queue=False))
    assert len(await e2e.storage.runs.list_user_runs(kit.id, active_only=False)) == 1


async def test_deployment_add_for_an_unknown_type_gives_its_command(e2e: E2E) -> None:
    """Through the admin's own command (no manual refresh): `/deployment add ANIMATE <id>` →
    `/animate` in the menu, in /help and working; its removal takes the command away."""
    admin = e2e.fake.user(ADMIN_ID)
    liv = e2e.fake.user(4012)
    dep = e2e.cd.add_deployment(inputs=("input_prompt", "input_seed"))
    await e2e.command(admin, f"/deployment add ANIMATE {dep}")
    assert "animate" in {c["command"] for cs in e2e.fake.commands.values() for c in cs}
    await e2e.command(liv, "/help")
    assert "/animate" in e2e.fake.last_message(liv.id).text
    await e2e.command(liv, "/animate a dancing cat")
    run = await e2e.latest_run(liv.id)
    assert run.type == "ANIMATE" and run.meta["prompt"] == "a dancing cat"
    await e2e.command(admin, f"/deployment remove {dep}")
    await e2e.command(liv, "/animate a cat")
    assert e2e.fake.last_message(liv.id).text == e2e.t("common.unknown_command")


async def test_a_captioned_command_is_not_swallowed_by_a_waiting_flow(e2e: E2E) -> None:
    """While /upscale waits for its photo, a document captioned /workflow add goes to that
    command (not the "send the photo" reminder), and a photo captioned /make --style makes."""
    await e2e.add_deployment("MAKE_STYLE", inputs=STYLE_INPUTS)
    admin = e2e.fake.user(ADMIN_ID)
    await e2e.command(admin, "/upscale")
    await e2e.feed(
        admin.send_document(
            b"{}", "w.json", "application/json", "/workflow add MAKE x", queue=False
        )
    )
    assert e2e.fake.last_message(ADMIN_ID).text != e2e.t("actions.upscale_send_photo")
    await e2e.feed(admin.send_photo(png(), caption="/make a knight --style", queue=False))
    run = await e2e.latest_run(ADMIN_ID)
    assert run.type == "MAKE_STYLE"


async def test_workflow_caption_for_another_bot_is_ignored_in_a_group(e2e: E2E) -> None:
    admin = e2e.fake.user(ADMIN_ID)
    group = -100321
    e2e.fake.add_chat(group, title="Ops")
    for caption in ("/workflow@other_bot add MAKE x", f"/workflow@{e2e.fake.bot_username} add"):
        await e2e.feed(
            admin.send_document(b"{}", "w.json", "application/json", caption, chat_id=group)
        )
    texts = [m.text for m in e2e.fake.messages(group)]
    assert len(texts) == 1 and texts[0] != e2e.t("workflow.no_server"), texts  # ours only
