"""/checkpoint add|remove, /checkpoints and the /settings checkpoint menu built from them;
/deployment add names the inputs a type still needs (the workflow contract)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from generation.models import DeploymentInfo
from handlers import keyboards as kb
from storage import Storage
from tests.test_handlers_account import Harness, make_harness
from tests.test_handlers_admin import DEP, FakeBackend, admin_says

LONG = "realvisxl-v4.0-lightning+baked-vae_really-long-name"[:48]  # '+' and > 32 characters


@pytest.fixture
async def h(storage: Storage) -> AsyncIterator[Harness]:
    async with make_harness(storage) as harness:
        yield harness


async def test_admin_manages_the_catalogue(h: Harness) -> None:
    assert await admin_says(h, "/checkpoints") == h.t("en", "checkpoint.list_empty")
    added = await admin_says(h, "/checkpoint add flux-dev")
    assert added == h.t("en", "checkpoint.added", name="flux-dev", family="FLUX")
    assert await admin_says(h, "/checkpoint add juggernautXL_v9 sdxl") == h.t(
        "en", "checkpoint.added", name="juggernautXL_v9", family="SDXL"
    )
    unknown = h.t("en", "checkpoint.family_unknown")
    assert await admin_says(h, "/checkpoint add mystery") == h.t(
        "en", "checkpoint.added", name="mystery", family=unknown
    )
    assert await admin_says(h, "/checkpoint add FLUX-DEV") == h.t(
        "en", "checkpoint.exists", name="FLUX-DEV"
    )
    assert await admin_says(h, "/checkpoint add <b>") == h.t("en", "checkpoint.invalid", max=48)
    assert await admin_says(h, "/checkpoint add x not-a-family!") == h.t(
        "en", "checkpoint.invalid", max=48
    )
    listing = await admin_says(h, "/checkpoints")
    assert listing.splitlines() == [
        h.t("en", "checkpoint.list_title", count=3),
        h.t("en", "checkpoint.line", name="flux-dev", family="FLUX"),
        h.t("en", "checkpoint.line", name="juggernautXL_v9", family="SDXL"),
        h.t("en", "checkpoint.line", name="mystery", family=unknown),
    ]
    assert await admin_says(h, "/checkpoint remove flux-dev") == h.t(
        "en", "checkpoint.removed", name="flux-dev"
    )
    assert await admin_says(h, "/checkpoint remove flux-dev") == h.t(
        "en", "checkpoint.not_found", name="flux-dev"
    )
    for wrong in ("/checkpoint", "/checkpoint drop x", "/checkpoint add a b c"):
        assert await admin_says(h, wrong) == h.t("en", "checkpoint.usage")


async def test_others_are_refused(h: Harness) -> None:
    alice = h.fake.user(1001, "Alice", language_code="de")
    reply = await h.command(alice, "/checkpoint add flux-dev")
    assert reply.text == h.t("de", "admin.refused")
    assert await h.storage.checkpoints.list_checkpoints() == []


async def _checkpoint_menu(h: Harness, user_id: int) -> tuple[object, object]:
    user = h.fake.user(user_id)
    menu = await h.command(user, "/settings")
    await h.tap(user, menu, h.t("en", "settings.btn.checkpoint"))
    return user, h.fake.message(menu.chat_id, menu.message_id)


async def test_the_menu_offers_exactly_the_configured_checkpoints(h: Harness) -> None:
    user, menu = await _checkpoint_menu(h, 1001)
    default = h.t("en", "settings.btn.ckpt_default")
    assert menu.button_texts == [kb.MARK + default, h.t("en", "settings.btn.back")]
    assert h.t("en", "checkpoint.menu_empty") in menu.text

    await h.storage.checkpoints.add("flux-dev")
    await h.storage.checkpoints.add(LONG)
    user, menu = await _checkpoint_menu(h, 1002)
    assert menu.button_texts[1:3] == ["flux-dev", LONG]
    assert all(len(b["callback_data"].encode()) <= 64 for b in menu.buttons)

    answer = await h.tap(user, menu, LONG)
    assert answer["text"] == h.t("en", "settings.saved")
    assert (await h.storage.users.get(1002)).settings.checkpoint == LONG
    menu = h.fake.message(menu.chat_id, menu.message_id)
    assert kb.MARK + LONG in menu.button_texts

    await h.storage.checkpoints.remove("flux-dev")  # removed after the menu was shown
    answer = await h.tap(user, menu, "flux-dev")
    assert answer["text"] == h.t("en", "settings.stale")
    assert (await h.storage.users.get(1002)).settings.checkpoint == LONG


async def test_deployment_add_names_missing_inputs(storage: Storage) -> None:
    backend = FakeBackend([DeploymentInfo(DEP, "i2i", ("input_prompt", "input_seed"))])
    async with make_harness(storage, backend=backend) as h:
        text = await admin_says(h, f"/deployment add I2I {DEP}")
    added, missing = text.split("\n")[0:2], text.split("\n")[-1]
    assert added[0].startswith("Added I2I deployment")
    assert missing == h.t("en", "contract.missing_inputs", type="I2I", missing="input_image")


async def test_deployment_add_with_everything_needed_says_nothing_more(storage: Storage) -> None:
    backend = FakeBackend([DeploymentInfo(DEP, "make", ("input_prompt",))])
    async with make_harness(storage, backend=backend) as h:
        text = await admin_says(h, f"/deployment add MAKE {DEP}")
    assert text == h.t(
        "en",
        "admin.deployment_added",
        type="MAKE",
        id=DEP,
        role="default",
        weight=1,
        inputs="input_prompt",
    )
