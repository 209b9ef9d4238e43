"""Catalogue parity: every language has the same keys with the same placeholders; every
GenerationError code has a message; every key the generation handlers use exists."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from generation.errors import ErrorCode
from handlers.i18n import LOCALES_DIR, SUPPORTED_LANGUAGES, placeholders

CATALOGUES = {p.stem: json.loads(p.read_text(encoding="utf-8")) for p in LOCALES_DIR.glob("*.json")}
HANDLERS = Path(__file__).resolve().parent.parent / "handlers"
MY_PREFIXES = ("gen.", "progress.", "result.", "error.", "inpaint.", "i2i.", "cancel.", "common.")


def test_all_supported_languages_present() -> None:
    assert set(SUPPORTED_LANGUAGES) <= set(CATALOGUES)


@pytest.mark.parametrize("lang", sorted(set(CATALOGUES) - {"en"}))
def test_same_keys_and_placeholders_as_english(lang: str) -> None:
    en, other = CATALOGUES["en"], CATALOGUES[lang]
    assert set(other) == set(en), {
        "missing": sorted(set(en) - set(other)),
        "extra": sorted(set(other) - set(en)),
    }
    wrong = {
        k: (placeholders(en[k]), placeholders(other[k]))
        for k in en
        if placeholders(en[k]) != placeholders(other[k])
    }
    assert not wrong


@pytest.mark.parametrize("lang", sorted(CATALOGUES))
def test_every_error_code_has_a_message(lang: str) -> None:
    missing = [c.value for c in ErrorCode if not CATALOGUES[lang].get(f"error.{c.value}")]
    assert not missing


@pytest.mark.parametrize("lang", sorted(set(CATALOGUES) - {"en"}))
def test_translations_are_not_english_copies(lang: str) -> None:
    mine = [k for k in CATALOGUES["en"] if k.startswith(MY_PREFIXES)]
    same = [
        k
        for k in mine
        if CATALOGUES[lang][k] == CATALOGUES["en"][k]
        and any(ch.isalpha() for ch in CATALOGUES["en"][k])
    ]
    # a few strings are legitimately identical (e.g. "{prompt}\nSeed: {seed}" in German)
    assert len(same) <= 3, same


def _literal_keys() -> set[str]:
    keys: set[str] = set()
    for path in HANDLERS.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and node.value.startswith(MY_PREFIXES)
                and " " not in node.value
                and not node.value.endswith(".")
                and not node.value.endswith((".png", ".jpg", ".gif", ".mp4"))
            ):
                keys.add(node.value)
    return keys


def test_keys_used_by_handlers_exist() -> None:
    keys = _literal_keys()
    assert "progress.done" in keys  # the scan finds them
    missing = sorted(k for k in keys if k not in CATALOGUES["en"])
    assert not missing
