"""Commands of admin-added types (handlers/custom_commands.py): the registry follows storage,
commands are matched at update time (with/without @botusername, captions), and listed."""

from __future__ import annotations

import datetime as dt
from typing import Any

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
