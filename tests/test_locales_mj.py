"""Texts of this issue's features: every key the new modules use exists in every language,
and button labels stay short enough for two or four buttons in a row on a phone."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest

from handlers.i18n import LOCALES_DIR

ROOT = Path(__file__).resolve().parent.parent
CATALOGUES = {p.stem: json.loads(p.read_text(encoding="utf-8")) for p in LOCALES_DIR.glob("*.json")}
PREFIXES = ("params.", "actions.", "users.", "groups.")
# labels drawn side by side on result messages (two per row; U1…U4 four per row)
BUTTONS = {
    "actions.again": 14,
    "actions.upscale": 14,
    "actions.vary_subtle": 14,
    "actions.vary_strong": 14,
    "actions.params": 14,
    "actions.original": 14,
    "actions.upscale_n": 4,
    "actions.vary_n": 4,
    "progress.cancel_button": 14,
}


def _used_keys() -> set[str]:
    keys: set[str] = set()
    for path in [*ROOT.joinpath("handlers").glob("*.py"), ROOT / "generation" / "params.py"]:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and node.value.startswith(PREFIXES)
                and " " not in node.value
                and not node.value.endswith(".")
            ):
                keys.add(node.value)
    return keys


def test_keys_used_by_the_new_modules_exist() -> None:
    used = _used_keys()
    assert {"actions.not_yours", "users.unknown_id", "params.reference_needs_photo"} <= used
    missing = sorted(k for k in used if k not in CATALOGUES["en"])
    assert not missing


def test_every_parameter_error_and_help_text_exists() -> None:
    from generation.params import PARAMS, ParamError

    for reason in ParamError.REASONS:
        assert f"params.error.{reason}" in CATALOGUES["en"]
    assert "params.error.invalid_value" in CATALOGUES["en"]
    for name in PARAMS:
        assert f"params.help.{name}" in CATALOGUES["en"]


@pytest.mark.parametrize("lang", sorted(CATALOGUES))
def test_button_labels_are_short(lang: str) -> None:
    too_long = {
        key: CATALOGUES[lang][key]
        for key, limit in BUTTONS.items()
        if len(CATALOGUES[lang][key].format(n=4)) > limit
    }
    assert not too_long


@pytest.mark.parametrize("lang", sorted(set(CATALOGUES) - {"en"}))
def test_new_texts_are_translated(lang: str) -> None:
    mine = [k for k in CATALOGUES["en"] if k.startswith(PREFIXES)]
    same = [
        k
        for k in mine
        if CATALOGUES[lang][k] == CATALOGUES["en"][k]
        and sum(ch.isalpha() for ch in re.sub(r"\{\w+\}", "", CATALOGUES["en"][k])) > 8
    ]
    assert not same
