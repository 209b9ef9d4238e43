"""Commands of admin-added types (handlers/custom_commands.py): the registry follows storage,
commands are matched at update time (with/without @botusername, captions), and listed."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

import pytest
from telegram import Chat, Message, Update

from generation.custom_types import CustomTypeRegistry
from handlers.custom_commands import (
    CustomCommandFilter,
    command_of,
    help_lines,
    menu_commands,
    refresh_registry,
)
from storage import Storage

BOT = "fake_test_bot"


def t(lang: str, key: str, /, **params: Any) -> str:
    return f"{key}:" + ",".join(f"{k}={params[k]}" for k in sorted(params))


def msg(text: str | None = None, caption: str | None = None) -> Message:
    return Message(
        message_id=1,
        date=dt.datetime.now(dt.UTC),
        chat=Chat(-100, "supergroup"),
        text=text,
        caption=caption,
    )


async def test_registry_follows_deployments_and_type_options(storage: Storage) -> None:
    registry = CustomTypeRegistry(reserved_commands=["make", "help"])
    assert not await refresh_registry(storage, registry)
    await storage.deployments.add("MAKE", "dep-make")
    await storage.deployments.add("ANIMATE", "dep-animate")
    await storage.deployments.add("HELP", "dep-help")  # would shadow /help: no command
    assert await refresh_registry(storage, registry)
    assert registry.commands() == {"animate": "ANIMATE"}
    await storage.type_options.set_input("ANIMATE", "image")
    assert not await refresh_registry(storage, registry)  # same commands...
    animate = registry.by_command("animate")
    assert animate is not None and animate.takes_image  # ...but now photo-taking
    await storage.deployments.set_enabled("dep-animate", False)
    assert await refresh_registry(storage, registry)
    assert registry.commands() == {}


def test_commands_addressed_to_us() -> None:
    assert command_of(msg("/animate a cat"), BOT) == ("animate", "a cat")
    assert command_of(msg(f"/Animate@{BOT.upper()}  a cat "), BOT) == ("animate", "a cat")
    assert command_of(msg("/animate@other_bot a cat"), BOT) is None
    assert command_of(msg(caption="/animate dancing"), BOT) == ("animate", "dancing")
    assert command_of(msg("animate"), BOT) is None
    assert command_of(None, BOT) is None


def test_filter_matches_registered_commands_at_update_time() -> None:
    registry = CustomTypeRegistry()
    check = CustomCommandFilter(registry, lambda: BOT)
    update = Update(1, message=msg("/animate x"))
    assert not check.check_update(update)
    registry.refresh(["ANIMATE"])
    assert check.check_update(update)
    assert not check.check_update(Update(2, message=msg("/animate@other_bot x")))
    assert not check.check_update(Update(3, message=msg("/video x")))


def test_help_and_menu_entries() -> None:
    registry = CustomTypeRegistry()
    registry.refresh(["ANIMATE", "VIDEO"], {"VIDEO": "image"})
    assert help_lines(t, "en", registry.all()).splitlines() == [
        "actions.custom_help_title:",
        "actions.custom_help_line:command=animate,type=ANIMATE",
        "actions.custom_help_line_photo:command=video,type=VIDEO",
    ]
    assert help_lines(t, "en", []) == ""
    menu = menu_commands(t, "en", registry.all())
    assert [(c.command, c.description) for c in menu] == [
        ("animate", "actions.custom_command_description:type=ANIMATE"),
        ("video", "actions.custom_command_description:type=VIDEO"),
    ]


async def test_no_admin_added_type_shadows_a_command_of_the_bot(tmp_path: Any) -> None:
    """Every command the bot registers is reserved: a deployment of type BUY or REFUND gets
    no /buy, /refund (the flows that match admin-added types are tried before them)."""
    from telegram.ext import CommandHandler

    from handlers.custom_commands import BUILTIN_COMMANDS
    from tests.e2e.inprocess import make_e2e

    env, close = await make_e2e(tmp_path)
    try:
        registered: set[str] = set()
        for handlers in env.app.handlers.values():
            for handler in handlers:
                nested = getattr(handler, "entry_points", [])
                for h in [handler, *nested]:
                    if isinstance(h, CommandHandler):
                        registered |= set(h.commands)
        assert registered and registered <= BUILTIN_COMMANDS, registered - BUILTIN_COMMANDS
        registry = CustomTypeRegistry(reserved_commands=BUILTIN_COMMANDS)
        registry.refresh(["BUY", "REFUND", "TERMS", "BAN", "CHECKPOINT", "ANIMATE"])
        assert registry.commands() == {"animate": "ANIMATE"}
    finally:
        await close()


@pytest.mark.parametrize("lang", ["en", "ru", "es", "de"])
async def test_help_lists_every_command_and_parameter_in_every_language(
    tmp_path: Any, lang: str
) -> None:
    """An admin's /help (with Stars packages set) names every command the bot registers and
    every inline parameter, in each language."""
    from telegram.ext import CommandHandler

    from generation.params import PARAMS
    from tests.e2e.inprocess import ADMIN_ID, make_e2e

    env, close = await make_e2e(tmp_path, star_packages="100:50")
    try:
        registered: set[str] = set()
        for handlers in env.app.handlers.values():
            for handler in handlers:
                for h in [handler, *getattr(handler, "entry_points", [])]:
                    if isinstance(h, CommandHandler):
                        registered |= set(h.commands)
        admin = env.fake.user(ADMIN_ID, language_code=lang)
        await env.command(admin, "/help")
        text = "\n".join(m.text or "" for m in env.fake.messages(admin.id))
        listed = set(re.findall(r"/([a-z0-9_]+)", text))
        assert registered - {"start"} <= listed, registered - listed
        flags = set(re.findall(r"--([a-z]+)", text))
        assert set(PARAMS) <= flags, set(PARAMS) - flags
    finally:
        await close()
