"""Types admins add that the bot does not know, e.g. ``/deployment add ANIMATE <id>``.

Any type name with a deployment but no entry in :data:`generation.types.GENERATION_TYPES` (and
not a combined name of a known base, such as ``MAKE_PLUS_STYLE``) is a *custom type*. It is
built by the default builder (every input the request has; the deployment's declared inputs
filter them), gets a command named after it (``ANIMATE`` → ``/animate``) and takes a prompt —
or a photo and a prompt when an admin marked it so (``/type ANIMATE image``).

:func:`custom_types` computes the list from the deployment type names and the stored options;
:class:`CustomTypeRegistry` keeps the current list for the bot (commands, /help, specs).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace

from generation.types import GENERATION_TYPES, GenerationTypeSpec, default_spec, resolve_type

# Telegram bot commands: 1–32 of lower-case letters, digits and underscores.
_COMMAND_RE = re.compile(r"[a-z0-9_]{1,32}")


@dataclass(frozen=True)
class CustomType:
    name: str
    command: str
    takes_image: bool
    spec: GenerationTypeSpec


def is_builtin(type_name: str) -> bool:
    """A registered type or a combined name of one (``MAKE_PLUS_CANNY``)."""
    return resolve_type(type_name).base.name in GENERATION_TYPES


def command_for(type_name: str) -> str | None:
    """The command of a type (``ANIMATE`` → ``animate``); ``None`` when it cannot be one."""
    command = type_name.strip().lower()
    return command if _COMMAND_RE.fullmatch(command) else None


def custom_spec(type_name: str, *, takes_image: bool = False) -> GenerationTypeSpec:
    """The default-builder spec of a custom type; ``takes_image`` makes the photo required."""
    return replace(default_spec(type_name.strip().upper()), requires_image=takes_image)


def custom_types(
    deployment_types: Iterable[str],
    input_kinds: Mapping[str, str] | None = None,
    *,
    reserved_commands: Iterable[str] = (),
) -> list[CustomType]:
    """Custom types among ``deployment_types``, sorted by name.

    ``input_kinds`` maps type → ``'image'``/``'text'`` (from ``/type``). A type whose command
    would shadow one in ``reserved_commands`` (the bot's own, e.g. ``help``) or is not a valid
    command name is left out: it stays reachable through the admin tools, never through a
    command that hides another.
    """
    kinds = {k.strip().upper(): v for k, v in (input_kinds or {}).items()}
    reserved = {c.lower() for c in reserved_commands}
    found: dict[str, CustomType] = {}
    for raw in deployment_types:
        name = raw.strip().upper()
        if not name or name in found or is_builtin(name):
            continue
        command = command_for(name)
        if command is None or command in reserved:
            continue
        takes_image = kinds.get(name) == "image"
        found[name] = CustomType(
            name, command, takes_image, custom_spec(name, takes_image=takes_image)
        )
    return [found[n] for n in sorted(found)]


class CustomTypeRegistry:
    """The current custom types; :meth:`refresh` after deployments or options change."""

    def __init__(self, reserved_commands: Iterable[str] = ()) -> None:
        self._reserved = frozenset(c.lower() for c in reserved_commands)
        self._types: dict[str, CustomType] = {}

    def refresh(
        self, deployment_types: Iterable[str], input_kinds: Mapping[str, str] | None = None
    ) -> bool:
        """Recompute; returns whether the set of commands changed (re-publish them then)."""
        before = self.commands()
        self._types = {
            t.name: t
            for t in custom_types(deployment_types, input_kinds, reserved_commands=self._reserved)
        }
        return self.commands() != before

    def all(self) -> list[CustomType]:
        return list(self._types.values())

    def commands(self) -> dict[str, str]:
        """command → type name."""
        return {t.command: t.name for t in self._types.values()}

    def by_command(self, command: str) -> CustomType | None:
        name = self.commands().get(command.strip().lower().lstrip("/"))
        return self._types.get(name) if name else None

    def get(self, type_name: str) -> CustomType | None:
        return self._types.get(type_name.strip().upper())

    def spec(self, type_name: str) -> GenerationTypeSpec | None:
        found = self.get(type_name)
        return found.spec if found else None
