"""Localized text: flat JSON catalogues in ``locales/<lang>.json`` with ``{name}`` placeholders.

Language choice: the user's setting, else Telegram's ``language_code`` (primary subtag), else
English. A key missing from a catalogue falls back to English (the parity test keeps that from
happening); a key missing everywhere renders as the key itself, so the bot never goes silent.
"""

from __future__ import annotations

import json
import logging
import string
from pathlib import Path

log = logging.getLogger(__name__)

LOCALES_DIR = Path(__file__).resolve().parent.parent / "locales"
DEFAULT_LANGUAGE = "en"
SUPPORTED_LANGUAGES = ("en", "ru", "es", "de")


class _SafeDict(dict):
    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


def placeholders(text: str) -> set[str]:
    """The ``{name}`` placeholders of a catalogue string."""
    return {name for _, name, _, _ in string.Formatter().parse(text) if name}


class Translator:
    def __init__(self, catalogues: dict[str, dict[str, str]]) -> None:
        if DEFAULT_LANGUAGE not in catalogues:
            raise ValueError("the English catalogue is required")
        self._catalogues = catalogues

    @classmethod
    def load(cls, directory: Path = LOCALES_DIR) -> Translator:
        catalogues: dict[str, dict[str, str]] = {}
        for path in sorted(directory.glob("*.json")):
            catalogues[path.stem] = json.loads(path.read_text(encoding="utf-8"))
        return cls(catalogues)

    @property
    def languages(self) -> tuple[str, ...]:
        return tuple(sorted(self._catalogues))

    def resolve_language(self, user_setting: str | None, telegram_code: str | None) -> str:
        for candidate in (user_setting, telegram_code):
            if candidate:
                primary = candidate.replace("_", "-").split("-")[0].lower()
                if primary in self._catalogues:
                    return primary
        return DEFAULT_LANGUAGE

    def has(self, key: str) -> bool:
        return key in self._catalogues[DEFAULT_LANGUAGE]

    def t(self, lang: str | None, key: str, /, **params: object) -> str:
        catalogue = self._catalogues.get(lang or DEFAULT_LANGUAGE, {})
        text = catalogue.get(key)
        if text is None:
            text = self._catalogues[DEFAULT_LANGUAGE].get(key)
            if text is None:
                log.warning("missing locale key %r", key)
                return key
        return text.format_map(_SafeDict(params)) if params else text
