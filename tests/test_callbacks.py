"""Pack/parse contract of handlers/callbacks.py: round-trips, 64-byte limit, anchored patterns."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from handlers import keyboards as kb
from handlers.callbacks import (
    MAX_CALLBACK_BYTES,
    MenuAction,
    RunAction,
    SettingsAction,
    parse,
)

RUN_ID = "0123456789abcdef0123456789abcdef"
TOKEN_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-"


@pytest.mark.parametrize("action", sorted(RunAction.ACTIONS))
def test_run_action_round_trip(action: str) -> None:
    data = RunAction(action, RUN_ID).pack()
    assert data == f"r:{action}:{RUN_ID}"
    assert parse(data) == RunAction(action, RUN_ID)
    assert RunAction.pattern().match(data)
    assert RunAction.action_pattern(action).match(data)
    assert not RunAction.action_pattern("zz").match(data)


@pytest.mark.parametrize(
    ("action", "run_id"),
    [("xx", RUN_ID), ("cx", RUN_ID[:-1]), ("cx", RUN_ID.upper()), ("cx", RUN_ID + "0")],
)
def test_run_action_rejects_bad_values(action: str, run_id: str) -> None:
    with pytest.raises(ValueError):
        RunAction(action, run_id).pack()


def test_settings_action_round_trip_and_longest() -> None:
    longest = SettingsAction("a" * 12, "v" * 40)
    data = longest.pack()
    assert len(data.encode()) <= MAX_CALLBACK_BYTES
    assert parse(data) == longest
    assert parse("s:home:") == SettingsAction("home", "")
    with pytest.raises(ValueError):
        SettingsAction("a" * 13, "x").pack()
    with pytest.raises(ValueError):
        SettingsAction("size", "v" * 41).pack()
    with pytest.raises(ValueError):
        SettingsAction("size", "a b").pack()


def test_menu_action_longest_fits_64_bytes() -> None:
    longest = MenuAction(10**16 - 1, "a" * 8, "v" * 32)
    data = longest.pack()
    assert len(data.encode()) == 60 <= MAX_CALLBACK_BYTES
    assert parse(data) == longest


@pytest.mark.parametrize(
    "bad",
    [
        MenuAction(0, "size", "x"),
        MenuAction(-5, "size", "x"),
        MenuAction(10**16, "size", "x"),
        MenuAction(1, "toolongmenu", "x"),
        MenuAction(1, "Size", "x"),
        MenuAction(1, "size", "v" * 33),
        MenuAction(1, "size", "a:b"),
    ],
)
def test_menu_action_rejects_bad_values(bad: MenuAction) -> None:
    with pytest.raises(ValueError):
        bad.pack()


@given(
    owner=st.integers(min_value=1, max_value=10**16 - 1),
    menu=st.text(alphabet="abcdefghijklmnopqrstuvwxyz", min_size=1, max_size=8),
    value=st.text(alphabet=TOKEN_CHARS, min_size=0, max_size=32),
)
def test_menu_action_round_trip_property(owner: int, menu: str, value: str) -> None:
    action = MenuAction(owner, menu, value)
    data = action.pack()
    assert len(data.encode()) <= MAX_CALLBACK_BYTES
    assert parse(data) == action
    assert MenuAction.pattern().match(data)


def test_every_settings_keyboard_button_parses_back() -> None:
    """All buttons our menus build are valid, ≤ 64 bytes and parse to a MenuAction."""
    from handlers.i18n import Translator
    from storage.users import UserSettings

    tr = Translator.load()
    owner = 10**16 - 1
    settings = UserSettings()
    count = 0
    for lang in ("en", "ru", "es", "de"):
        for build in kb.MENU_KEYBOARDS.values():
            for row in build(tr, lang, owner, settings).inline_keyboard:
                for button in row:
                    data = button.callback_data
                    assert isinstance(data, str)
                    assert len(data.encode()) <= MAX_CALLBACK_BYTES
                    parsed = parse(data)
                    assert isinstance(parsed, MenuAction) and parsed.owner == owner
                    count += 1
    assert count > 40


@pytest.mark.parametrize(
    "data",
    [
        f"xr:cx:{RUN_ID}",  # prefix before
        f"r:cx:{RUN_ID}x",  # suffix after
        f" r:cx:{RUN_ID}",
        "m:1:size:1024x1024:extra",
        "xm:1:size:1024x1024",
        "m:1:size:1024x1024\n",
        "m:01:size:x",  # leading zero owner
        "s:size",  # missing separator
        "s:size:a b",
        "",
        None,
        "r:" + "x" * 70,
        "old_format_button",
        "m:1:size:" + "x" * 60,
    ],
)
def test_unknown_stale_or_malformed_parse_to_none(data: str | None) -> None:
    assert parse(data) is None


@pytest.mark.parametrize(
    ("cls", "data"),
    [
        (RunAction, f"xr:cx:{RUN_ID}"),
        (RunAction, f"r:cx:{RUN_ID}0"),
        (SettingsAction, "xs:size:1"),
        (SettingsAction, "s:size:1 "),
        (MenuAction, "xm:1:size:1"),
        (MenuAction, "m:1:size:1 "),
        (MenuAction, "m:1:size:1\n"),
    ],
)
def test_handler_patterns_are_anchored(cls: type, data: str) -> None:
    assert cls.pattern().match(data) is None


def test_size_values_round_trip() -> None:
    for width, height in kb.SIZE_PRESETS:
        assert kb.parse_size(kb.size_value(width, height)) == (width, height)
    assert kb.parse_size("1000x1000") is None
    assert kb.parse_size("1024x1024x") is None


def test_trailing_newline_is_not_accepted() -> None:
    """``$`` would match before a trailing newline; the patterns use ``\\Z``."""
    from handlers.callbacks import RunAction, SettingsAction, parse

    packed = RunAction("cx", "0" * 32).pack()
    assert parse(packed) == RunAction("cx", "0" * 32)
    assert parse(packed + "\n") is None
    assert parse(SettingsAction("size", "512x512").pack() + "\n") is None
