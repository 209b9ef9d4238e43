"""Inline keyboards of the /settings menus.

Every button carries a :class:`~handlers.callbacks.MenuAction` with the owner's user id, so a
press from anyone else is refused. ``menu`` names a submenu; an empty ``value`` opens it, a
non-empty one sets that value. Values are explicit (``png:on``/``png:off``, not a toggle) so a
double tap is harmless.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence

from telegram import InlineKeyboardButton, InlineKeyboardMarkup

from handlers.callbacks import MenuAction, RunAction
from handlers.i18n import Translator
from storage.users import UserSettings

SIZE_PRESETS: tuple[tuple[int, int], ...] = (
    (1024, 1024),
    (832, 1216),
    (1216, 832),
    (768, 1344),
    (1344, 768),
    (512, 512),
)
STEP_PRESETS: tuple[int, ...] = (20, 30, 40, 50)
# The checkpoint menu offers what admins configured (/checkpoint add, storage/checkpoints.py);
# "default" (None in the settings) lets the deployment decide.
DEFAULT_CHECKPOINT = "default"
_PLAIN_VALUE = re.compile(r"[A-Za-z0-9_.\-]{1,32}")  # what MenuAction values may hold
# Native names: a language menu must be readable by someone who does not read the current one.
LANGUAGE_NAMES: dict[str, str] = {
    "en": "English",
    "ru": "Русский",
    "es": "Español",
    "de": "Deutsch",
}

# menu names (≤ 8 lowercase letters, see MenuAction)
HOME, SIZE, STEPS, SEED, NEG, CKPT, LANG, PNG, CLOSE = (
    "home",
    "size",
    "steps",
    "seed",
    "neg",
    "ckpt",
    "lang",
    "png",
    "close",
)
SEED_RANDOM, ASK = "rnd", "ask"
NEG_DEFAULT, NEG_CLEAR = "def", "clr"
MARK = "✅ "


def size_value(width: int, height: int) -> str:
    return f"{width}x{height}"


def parse_size(value: str) -> tuple[int, int] | None:
    """A size preset from its callback value; ``None`` unless it is one of the presets."""
    for width, height in SIZE_PRESETS:
        if value == size_value(width, height):
            return width, height
    return None


def _button(text: str, owner: int, menu: str, value: str = "") -> InlineKeyboardButton:
    return InlineKeyboardButton(text, callback_data=MenuAction(owner, menu, value).pack())


def _mark(selected: bool, text: str) -> str:
    return MARK + text if selected else text


def _back_row(tr: Translator, lang: str, owner: int) -> list[InlineKeyboardButton]:
    return [_button(tr.t(lang, "settings.btn.back"), owner, HOME)]


def home_keyboard(
    tr: Translator, lang: str, owner: int, settings: UserSettings
) -> InlineKeyboardMarkup:
    png_on = bool(settings.png_as_file)
    png_label = tr.t(lang, "settings.btn.png_on" if png_on else "settings.btn.png_off")
    return InlineKeyboardMarkup(
        [
            [
                _button(tr.t(lang, "settings.btn.size"), owner, SIZE),
                _button(tr.t(lang, "settings.btn.steps"), owner, STEPS),
            ],
            [
                _button(tr.t(lang, "settings.btn.seed"), owner, SEED),
                _button(tr.t(lang, "settings.btn.negative"), owner, NEG),
            ],
            [
                _button(tr.t(lang, "settings.btn.checkpoint"), owner, CKPT),
                _button(tr.t(lang, "settings.btn.language"), owner, LANG),
            ],
            [_button(png_label, owner, PNG, "off" if png_on else "on")],
            [_button(tr.t(lang, "settings.btn.close"), owner, CLOSE, "x")],
        ]
    )


def size_keyboard(
    tr: Translator, lang: str, owner: int, settings: UserSettings
) -> InlineKeyboardMarkup:
    current = (settings.width, settings.height)
    buttons = [
        _button(_mark((w, h) == current, f"{w}×{h}"), owner, SIZE, size_value(w, h))
        for w, h in SIZE_PRESETS
    ]
    rows = [buttons[i : i + 2] for i in range(0, len(buttons), 2)]
    return InlineKeyboardMarkup([*rows, _back_row(tr, lang, owner)])


def steps_keyboard(
    tr: Translator, lang: str, owner: int, settings: UserSettings
) -> InlineKeyboardMarkup:
    row = [
        _button(_mark(steps == settings.steps, str(steps)), owner, STEPS, str(steps))
        for steps in STEP_PRESETS
    ]
    return InlineKeyboardMarkup([row, _back_row(tr, lang, owner)])


def seed_keyboard(
    tr: Translator, lang: str, owner: int, settings: UserSettings
) -> InlineKeyboardMarkup:
    random_label = _mark(settings.seed == -1, tr.t(lang, "settings.btn.seed_random"))
    return InlineKeyboardMarkup(
        [
            [_button(random_label, owner, SEED, SEED_RANDOM)],
            [_button(tr.t(lang, "settings.btn.seed_type"), owner, SEED, ASK)],
            _back_row(tr, lang, owner),
        ]
    )


def negative_keyboard(
    tr: Translator, lang: str, owner: int, settings: UserSettings
) -> InlineKeyboardMarkup:
    neg = settings.negative_prompt
    return InlineKeyboardMarkup(
        [
            [
                _button(
                    _mark(neg is None, tr.t(lang, "settings.btn.neg_default")),
                    owner,
                    NEG,
                    NEG_DEFAULT,
                )
            ],
            [_button(tr.t(lang, "settings.btn.neg_type"), owner, NEG, ASK)],
            [
                _button(
                    _mark(neg == "", tr.t(lang, "settings.btn.neg_clear")), owner, NEG, NEG_CLEAR
                )
            ],
            _back_row(tr, lang, owner),
        ]
    )


def checkpoint_value(name: str) -> str:
    """A checkpoint's button value: the name when it fits callback data, else a digest."""
    if _PLAIN_VALUE.fullmatch(name) and name != DEFAULT_CHECKPOINT:
        return name
    return "h" + hashlib.sha256(name.encode()).hexdigest()[:16]


def checkpoint_for(value: str, checkpoints: Sequence[str]) -> str | None:
    """The configured checkpoint a button value stands for (``None``: stale or unknown)."""
    return next((name for name in checkpoints if checkpoint_value(name) == value), None)


def checkpoint_keyboard(
    tr: Translator,
    lang: str,
    owner: int,
    settings: UserSettings,
    checkpoints: Sequence[str] = (),
) -> InlineKeyboardMarkup:
    current = settings.checkpoint or DEFAULT_CHECKPOINT
    rows = [
        [
            _button(
                _mark(current == DEFAULT_CHECKPOINT, tr.t(lang, "settings.btn.ckpt_default")),
                owner,
                CKPT,
                DEFAULT_CHECKPOINT,
            )
        ]
    ]
    rows += [
        [_button(_mark(current == name, name), owner, CKPT, checkpoint_value(name))]
        for name in checkpoints
    ]
    return InlineKeyboardMarkup([*rows, _back_row(tr, lang, owner)])


def language_keyboard(
    tr: Translator, lang: str, owner: int, settings: UserSettings
) -> InlineKeyboardMarkup:
    row = [
        _button(_mark(code == lang, name), owner, LANG, code)
        for code, name in LANGUAGE_NAMES.items()
    ]
    return InlineKeyboardMarkup([row[:2], row[2:], _back_row(tr, lang, owner)])


def cancel_input_keyboard(tr: Translator, lang: str, owner: int) -> InlineKeyboardMarkup:
    """Shown while the bot waits for a typed seed or negative prompt."""
    return InlineKeyboardMarkup([_back_row(tr, lang, owner)])


MENU_KEYBOARDS = {
    HOME: home_keyboard,
    SIZE: size_keyboard,
    STEPS: steps_keyboard,
    SEED: seed_keyboard,
    NEG: negative_keyboard,
    CKPT: checkpoint_keyboard,
    LANG: language_keyboard,
}


def cancel_keyboard(i18n: Translator, run_id: str, lang: str) -> InlineKeyboardMarkup:
    """The Cancel button of a progress message (callback data ``r:cx:<run id>``)."""
    button = InlineKeyboardButton(
        i18n.t(lang, "progress.cancel_button"), callback_data=RunAction("cx", run_id).pack()
    )
    return InlineKeyboardMarkup([[button]])
