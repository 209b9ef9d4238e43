"""The ``pay.`` and ``access.`` texts: translated in every language (not English copies), with
invoice titles within Telegram's 32 characters and labels that format."""

from __future__ import annotations

import json

import pytest

from handlers.i18n import LOCALES_DIR

CATALOGUES = {p.stem: json.loads(p.read_text(encoding="utf-8")) for p in LOCALES_DIR.glob("*.json")}
PREFIXES = ("pay.", "access.")


def test_every_language_has_the_money_texts() -> None:
    en = {k for k in CATALOGUES["en"] if k.startswith(PREFIXES)}
    assert len(en) > 40
    for lang, catalogue in CATALOGUES.items():
        assert en <= set(catalogue), lang


@pytest.mark.parametrize("lang", sorted(set(CATALOGUES) - {"en"}))
def test_money_texts_are_translated(lang: str) -> None:
    en, other = CATALOGUES["en"], CATALOGUES[lang]
    same = [k for k in en if k.startswith(PREFIXES) and other[k] == en[k]]
    assert not same


@pytest.mark.parametrize("lang", sorted(CATALOGUES))
def test_invoice_texts_fit_telegram(lang: str) -> None:
    t = CATALOGUES[lang]
    assert len(t["pay.invoice_title"].format(credits=10**6)) <= 32
    assert len(t["pay.invoice_description"].format(credits=10**6, stars=10**5)) <= 255
    assert t["pay.package_button"].format(credits=100, stars=50)
