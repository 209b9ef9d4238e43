"""Callback data contracts: compact, prefixed, at most 64 bytes, matched by anchored patterns.

Every inline button's ``callback_data`` is built with ``pack`` of one of these dataclasses and
read back with :func:`parse`. Unknown or stale data parses to ``None`` (the caller answers
politely). Prefixes are two letters; run ids are our 32-hex run ids.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import ClassVar

MAX_CALLBACK_BYTES = 64
_RUN_ID = r"[0-9a-f]{32}"
_TOKEN = r"[A-Za-z0-9_.\-]{1,40}"


class CallbackData:
    prefix: ClassVar[str]
    regex: ClassVar[re.Pattern[str]]

    def pack(self) -> str:
        raise NotImplementedError

    @classmethod
    def pattern(cls) -> re.Pattern[str]:
        """Anchored pattern for ``CallbackQueryHandler(pattern=...)``."""
        return cls.regex


def _check(data: str) -> str:
    if len(data.encode("utf-8")) > MAX_CALLBACK_BYTES:
        raise ValueError(f"callback data longer than {MAX_CALLBACK_BYTES} bytes: {data!r}")
    return data


@dataclass(frozen=True, slots=True)
class RunAction(CallbackData):
    """A button about one run: cancel, again with a new seed, show parameters, original file."""

    action: str  # "cx" cancel | "ag" again | "pm" params | "og" original
    run_id: str

    prefix: ClassVar[str] = "r"
    regex: ClassVar[re.Pattern[str]] = re.compile(rf"^r:(cx|ag|pm|og):({_RUN_ID})\Z")
    ACTIONS: ClassVar[frozenset[str]] = frozenset({"cx", "ag", "pm", "og"})

    def pack(self) -> str:
        if self.action not in self.ACTIONS or not re.fullmatch(_RUN_ID, self.run_id):
            raise ValueError(f"bad run action {self.action!r}/{self.run_id!r}")
        return _check(f"r:{self.action}:{self.run_id}")

    @classmethod
    def action_pattern(cls, action: str) -> re.Pattern[str]:
        return re.compile(rf"^r:{re.escape(action)}:({_RUN_ID})\Z")


@dataclass(frozen=True, slots=True)
class SettingsAction(CallbackData):
    """A settings-menu button: ``menu`` (e.g. "size", "steps", "lang", "home") and a value."""

    menu: str
    value: str = ""

    prefix: ClassVar[str] = "s"
    regex: ClassVar[re.Pattern[str]] = re.compile(rf"^s:([a-z]{{1,12}}):({_TOKEN})?\Z")

    def pack(self) -> str:
        if not re.fullmatch(r"[a-z]{1,12}", self.menu) or (
            self.value and not re.fullmatch(_TOKEN, self.value)
        ):
            raise ValueError(f"bad settings action {self.menu!r}/{self.value!r}")
        return _check(f"s:{self.menu}:{self.value}")


@dataclass(frozen=True, slots=True)
class MenuAction(CallbackData):
    """A settings-menu button that belongs to one user (``owner``, a Telegram user id).

    The owner id is public information (it is the user who opened the menu); it lets the
    handler refuse presses from anyone else in a group chat. Longest form:
    ``m:`` + 16 digits + ``:`` + 8-letter menu + ``:`` + 32-char value = 60 bytes.
    """

    owner: int
    menu: str
    value: str = ""

    prefix: ClassVar[str] = "m"
    regex: ClassVar[re.Pattern[str]] = re.compile(
        r"^m:([1-9][0-9]{0,15}):([a-z]{1,8}):([A-Za-z0-9_.\-]{1,32})?\Z"  # \Z: no "\n"
    )

    def pack(self) -> str:
        if (
            not 0 < self.owner < 10**16
            or not re.fullmatch(r"[a-z]{1,8}", self.menu)
            or (self.value and not re.fullmatch(r"[A-Za-z0-9_.\-]{1,32}", self.value))
        ):
            raise ValueError(f"bad menu action {self.owner!r}/{self.menu!r}/{self.value!r}")
        return _check(f"m:{self.owner}:{self.menu}:{self.value}")


@dataclass(frozen=True, slots=True)
class BuyAction(CallbackData):
    """A /buy package button: ``b:<credits>:<stars>`` (the handler checks the package is still
    offered; the invoice payload, not this data, is what the payment trusts)."""

    credits: int
    stars: int

    prefix: ClassVar[str] = "b"
    regex: ClassVar[re.Pattern[str]] = re.compile(r"^b:([1-9][0-9]{0,11}):([1-9][0-9]{0,5})\Z")

    def pack(self) -> str:
        if not (0 < self.credits < 10**12 and 0 < self.stars < 10**6):
            raise ValueError(f"bad package {self.credits!r}:{self.stars!r}")
        return _check(f"b:{self.credits}:{self.stars}")


def parse(data: str | None) -> CallbackData | None:
    """Parse any of our callback payloads; ``None`` for unknown, stale or malformed data."""
    if not data or len(data.encode("utf-8")) > MAX_CALLBACK_BYTES:
        return None
    if m := RunAction.regex.match(data):
        return RunAction(m.group(1), m.group(2))
    if m := SettingsAction.regex.match(data):
        return SettingsAction(m.group(1), m.group(2) or "")
    if m := MenuAction.regex.match(data):
        return MenuAction(int(m.group(1)), m.group(2), m.group(3) or "")
    if m := BuyAction.regex.match(data):
        return BuyAction(int(m.group(1)), int(m.group(2)))
    return None
