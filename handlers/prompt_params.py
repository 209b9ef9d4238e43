"""Inline parameters applied to a prompt command, reference-image types, and their texts.

The parsing itself is :mod:`generation.params`; this module turns its result into the fields
of a :class:`~generation.request.GenerationRequest` for one command and renders the localized
error and help texts. No Telegram objects here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from generation.params import PARAMS, ParamError, parse_inline_params
from generation.request import InputImage
from generation.types import GENERATION_TYPES, combined_name, resolve_type

Translate = Callable[..., str]

# Workflows whose preprocessors (ControlNet, IP-Adapter) want sides in multiples of 64.
ALIGN_64_TEMPLATES = frozenset({"plus"})
# Reference flag feature → the request field its image goes into
REFERENCE_FIELDS: Mapping[str, str] = {
    "style": "style_image",
    "pose": "pose_image",
    "control": "control_image",
}


@dataclass(frozen=True, slots=True)
class Prepared:
    prompt: str
    fields: dict[str, Any]
    references: frozenset[str]


def side_multiple(type_name: str) -> int:
    return 64 if resolve_type(type_name).base.template in ALIGN_64_TEMPLATES else 8


def prepare(
    text: str, base_fields: Mapping[str, Any], *, type_name: str, takes_image: bool
) -> Prepared:
    """Parse ``text`` (the command's arguments) and apply its parameters to ``base_fields``
    (the user's settings). Raises :class:`ParamError`."""
    parsed = parse_inline_params(text, allow_image_params=takes_image)
    fields = parsed.apply(base_fields, multiple=side_multiple(type_name))
    for feature in parsed.references:  # the caller decides the type and the images
        fields.pop(feature, None)
    prompt = fields.pop("prompt")
    return Prepared(prompt, fields, parsed.references)


def reference_type(base_type: str, references: frozenset[str]) -> str:
    """The combined type of ``base_type`` + reference features (``MAKE`` + style →
    ``MAKE_STYLE``), named canonically as :mod:`generation.types` resolves it."""
    base = GENERATION_TYPES.get(base_type.upper())
    if base is None or not references:
        return base_type.upper()
    return combined_name(base, references)


def reference_fields(references: frozenset[str], image: InputImage) -> dict[str, Any]:
    """The reference image in every field its features read."""
    return {REFERENCE_FIELDS[f]: image for f in sorted(references)}


def error_text(t: Translate, lang: str, err: ParamError) -> str:
    return t(lang, err.locale_key, **err.format_args())


def help_text(t: Translate, lang: str) -> str:
    """One line per parameter: ``--seed N — …`` from ``params.help.<name>``."""
    lines = [t(lang, "params.help_title")]
    for name, spec in PARAMS.items():
        lines.append(t(lang, f"params.help.{name}", range=spec.range_text()))
    return "\n".join(lines)
