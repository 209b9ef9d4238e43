"""/settings menus through the real Application + FakeTelegram + real storage."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from generation.request import MAX_SEED
from handlers import keyboards as kb
from handlers.callbacks import MenuAction
from storage import Storage, UserSettings
from tests.fakes.telegram import FakeMessage, FakeUser
from tests.test_handlers_account import Harness, make_harness

ALICE = 1001
BOB = 1002


@pytest.fixture
async def h(storage: Storage) -> AsyncIterator[Harness]:
    await storage.checkpoints.add("pony-xl")  # the checkpoint menu offers configured ones
    async with make_harness(storage) as harness:
        yield harness


async def open_menu(h: Harness, user: FakeUser, chat_id: int | None = None) -> FakeMessage:
    menu = await h.command(user, "/settings", chat_id)
    assert menu.buttons, "the settings menu has no buttons"
    return menu


def current(h: Harness, msg: FakeMessage) -> FakeMessage:
    fresh = h.fake.message(msg.chat_id, msg.message_id)
    assert fresh is not None
    return fresh


async def settings_of(h: Harness, user_id: int) -> UserSettings:
    user = await h.storage.users.get(user_id)
    assert user is not None
    return user.settings


async def test_settings_shows_current_values_and_buttons(h: Harness) -> None:
    alice = h.fake.user(ALICE, language_code="en")
    menu = await open_menu(h, alice)
    assert menu.text.startswith(h.t("en", "settings.summary").split("\n")[0])
    assert "1024×1024" in menu.text
    assert h.t("en", "settings.btn.size") in menu.button_texts
    assert h.t("en", "settings.btn.png_off") in menu.button_texts
    for button in menu.buttons:
        data = button["callback_data"]
        assert data.startswith(f"m:{ALICE}:") and len(data.encode()) <= 64


@pytest.mark.parametrize(
    ("submenu", "button", "field", "expected"),
    [
        ("settings.btn.size", "832×1216", "width", 832),
        ("settings.btn.size", "1344×768", "height", 768),
        ("settings.btn.steps", "50", "steps", 50),
        ("settings.btn.checkpoint", "pony-xl", "checkpoint", "pony-xl"),
        ("settings.btn.negative", "settings.btn.neg_clear", "negative_prompt", ""),
    ],
)
async def test_each_menu_change_is_persisted_and_rerendered(
    h: Harness, submenu: str, button: str, field: str, expected: object
) -> None:
    alice = h.fake.user(ALICE)
    menu = await open_menu(h, alice)
    answer = await h.tap(alice, menu, h.t("en", submenu))
    assert answer["text"] is None  # just opened the submenu
    label = h.t("en", button) if button.startswith("settings.") else button
    answer = await h.tap(alice, current(h, menu), label)
    assert answer["text"] == h.t("en", "settings.saved")
    assert getattr(await settings_of(h, ALICE), field) == expected
    edited = current(h, menu)
    assert kb.MARK + label in edited.button_texts  # the new choice is marked
    assert edited.edit_count == 2


async def test_same_choice_twice_skips_the_edit(h: Harness) -> None:
    alice = h.fake.user(ALICE)
    menu = await open_menu(h, alice)
    await h.tap(alice, menu, h.t("en", "settings.btn.steps"))
    await h.tap(alice, current(h, menu), "40")
    edits_before = len(h.fake.calls("editMessageText"))
    answer = await h.tap(alice, current(h, menu), kb.MARK + "40")
    assert answer["answered"] and answer["text"] is None
    assert len(h.fake.calls("editMessageText")) == edits_before


async def test_back_and_png_toggle(h: Harness) -> None:
    alice = h.fake.user(ALICE)
    menu = await open_menu(h, alice)
    await h.tap(alice, menu, h.t("en", "settings.btn.png_off"))
    assert (await settings_of(h, ALICE)).png_as_file is True
    assert h.t("en", "settings.btn.png_on") in current(h, menu).button_texts
    assert h.t("en", "settings.value.on") in current(h, menu).text
    await h.tap(alice, current(h, menu), h.t("en", "settings.btn.png_on"))
    assert (await settings_of(h, ALICE)).png_as_file is False
    await h.tap(alice, current(h, menu), h.t("en", "settings.btn.seed"))
    await h.tap(alice, current(h, menu), h.t("en", "settings.btn.back"))
    assert h.t("en", "settings.btn.size") in current(h, menu).button_texts


async def test_language_switch_rerenders_at_once(h: Harness) -> None:
    alice = h.fake.user(ALICE, language_code="en")
    menu = await open_menu(h, alice)
    await h.tap(alice, menu, h.t("en", "settings.btn.language"))
    answer = await h.tap(alice, current(h, menu), "Deutsch")
    assert answer["text"] == h.t("de", "settings.saved")
    assert (await settings_of(h, ALICE)).language == "de"
    edited = current(h, menu)
    assert edited.text.startswith(h.t("de", "settings.summary").split("\n")[0])
    assert h.t("de", "settings.btn.back") in edited.button_texts
    # and everything afterwards speaks German, whatever Telegram says
    reply = await h.command(alice, "/help")
    assert reply.text.startswith(h.t("de", "help.user"))


async def test_typed_seed_with_a_mistake_then_a_number(h: Harness) -> None:
    alice = h.fake.user(ALICE)
    menu = await open_menu(h, alice)
    await h.tap(alice, menu, h.t("en", "settings.btn.seed"))
    await h.tap(alice, current(h, menu), h.t("en", "settings.btn.seed_type"))
    assert current(h, menu).text == h.t("en", "settings.ask_seed", max=MAX_SEED)
    await h.text(alice, "lucky")
    assert h.fake.last_message(ALICE).text == h.t("en", "settings.bad_seed", max=MAX_SEED)
    await h.text(alice, str(MAX_SEED + 1))
    assert (await settings_of(h, ALICE)).seed == -1
    await h.text(alice, "12345")
    assert h.fake.last_message(ALICE).text == h.t("en", "settings.seed_saved", seed=12345)
    assert (await settings_of(h, ALICE)).seed == 12345
    assert "12345" in current(h, menu).text  # the menu is back home with the new seed
    # the wait is over: a later plain text is not taken as a seed
    await h.text(alice, "999")
    assert (await settings_of(h, ALICE)).seed == 12345
    # and "random" resets it
    await h.tap(alice, current(h, menu), h.t("en", "settings.btn.seed"))
    await h.tap(alice, current(h, menu), h.t("en", "settings.btn.seed_random"))
    assert (await settings_of(h, ALICE)).seed == -1


async def test_typed_negative_prompt_and_default(h: Harness) -> None:
    alice = h.fake.user(ALICE, language_code="es")
    menu = await open_menu(h, alice)
    await h.tap(alice, menu, h.t("es", "settings.btn.negative"))
    await h.tap(alice, current(h, menu), h.t("es", "settings.btn.neg_type"))
    await h.text(alice, "  blurry, <b>text</b>  ")
    assert (await settings_of(h, ALICE)).negative_prompt == "blurry, <b>text</b>"
    assert h.fake.last_message(ALICE).text == h.t("es", "settings.negative_saved")
    assert "blurry, <b>text</b>" in current(h, menu).text
    await h.tap(alice, current(h, menu), h.t("es", "settings.btn.negative"))
    await h.tap(alice, current(h, menu), h.t("es", "settings.btn.neg_default"))
    assert (await settings_of(h, ALICE)).negative_prompt is None


async def test_cancel_drops_a_pending_input(h: Harness) -> None:
    alice = h.fake.user(ALICE)
    menu = await open_menu(h, alice)
    await h.tap(alice, menu, h.t("en", "settings.btn.seed"))
    await h.tap(alice, current(h, menu), h.t("en", "settings.btn.seed_type"))
    reply = await h.command(alice, "/cancel")
    assert reply.text == h.t("en", "settings.input_cancelled")
    await h.text(alice, "777")
    assert (await settings_of(h, ALICE)).seed == -1


async def test_someone_elses_menu_is_refused_and_nothing_changes(h: Harness) -> None:
    group = h.fake.group()
    alice = h.fake.user(ALICE, language_code="en")
    bob = h.fake.user(BOB, language_code="ru")
    menu = await open_menu(h, alice, group.id)
    before = h.fake.message(group.id, menu.message_id).text
    answer = await h.tap(bob, menu, h.t("en", "settings.btn.png_off"))
    assert answer["show_alert"] is True
    assert answer["text"] == h.t("ru", "settings.not_yours")
    assert (await settings_of(h, ALICE)).png_as_file is False
    bob_user = await h.storage.users.get(BOB)
    assert bob_user is None or bob_user.settings.png_as_file is False
    assert current(h, menu).text == before and current(h, menu).edit_count == 0


@pytest.mark.parametrize(
    "data",
    [
        "old_format_button",
        "set:steps:30",
        f"m:{ALICE}:gone:",
        f"m:{ALICE}:steps:31",
        f"m:{ALICE}:size:999x999",
        f"m:{ALICE}:lang:fr",
    ],
)
async def test_stale_or_unknown_buttons_get_a_polite_answer(h: Harness, data: str) -> None:
    alice = h.fake.user(ALICE)
    menu = await open_menu(h, alice)
    answer = await h.tap_data(alice, menu, data)
    assert answer["text"] == h.t("en", "settings.stale")
    assert current(h, menu).edit_count == 0
    assert (await settings_of(h, ALICE)).steps == 30


async def test_old_settings_action_menu_checks_the_replied_owner(h: Harness) -> None:
    alice = h.fake.user(ALICE)
    bob = h.fake.user(BOB)
    menu = await open_menu(h, alice)  # a reply to Alice's /settings
    assert (await h.tap_data(bob, menu, "s:steps:20"))["text"] == h.t("en", "settings.not_yours")
    await h.tap_data(alice, menu, "s:steps:20")
    assert (await settings_of(h, ALICE)).steps == 20


async def test_close_removes_the_keyboard(h: Harness) -> None:
    alice = h.fake.user(ALICE)
    menu = await open_menu(h, alice)
    await h.tap(alice, menu, h.t("en", "settings.btn.close"))
    closed = current(h, menu)
    assert closed.text == h.t("en", "settings.closed")
    assert closed.buttons == []


def test_menu_action_carries_the_owner() -> None:
    assert MenuAction(ALICE, kb.SIZE, "512x512").pack() == f"m:{ALICE}:size:512x512"


async def test_old_settings_action_in_a_group_uses_the_quoted_command(h: Harness) -> None:
    group = h.fake.group()
    alice = h.fake.user(ALICE)
    bob = h.fake.user(BOB)
    menu = await open_menu(h, alice, group.id)
    assert menu.reply_to_message_id is not None  # PTB quotes the command in groups
    assert (await h.tap_data(bob, menu, "s:steps:20"))["text"] == h.t("en", "settings.not_yours")
    await h.tap_data(alice, menu, "s:steps:20")
    assert (await settings_of(h, ALICE)).steps == 20
