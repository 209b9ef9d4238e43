"""Midjourney-style inline parameters in a prompt line: ``a cat --ar 16:9 --seed 42 --no text``.

:func:`parse_inline_params` takes the text after a command and returns the prompt with the
parameters removed plus what they set (:class:`InlineParams`); :meth:`InlineParams.apply`
merges them into the fields of a :class:`~generation.request.GenerationRequest`. Pure code: no
Telegram, no I/O, so the bot, the web chat and the tests share one parser.

Parameters (names case-insensitive; phones turn ``--`` into an em or en dash, which is accepted):

``--ar W:H`` (alias ``--aspect``)
    aspect ratio; the size keeps the area of the current size setting at that ratio, both sides
    multiples of ``multiple`` (8, or 64 where the workflow needs it) and within the side limits.
``--seed N``, ``--steps N``, ``--cfg X``, ``--strength X`` (image types only), ``--batch N``
    numbers within the ranges of :class:`~generation.request.GenerationRequest`
    (``--batch`` 1–4); a decimal comma is accepted (``--cfg 7,5``).
``--no TEXT…``
    added to the negative prompt; runs up to the next parameter.
``--checkpoint NAME``
    one word.
``--style``, ``--pose``, ``--canny``
    flags without a value: the reference image is used as style / pose / canny control.

Anything else that looks like a parameter (``--foo``), a missing or malformed value, a value out
of range, or a parameter given twice raises :class:`ParamError`; it subclasses
:class:`~generation.errors.InvalidInputError`, and its :attr:`ParamError.locale_key` plus
:meth:`ParamError.format_args` give a localized reply naming the parameter and its range.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from generation.errors import InvalidInputError
from generation.request import (
    DEFAULT_NEGATIVE_PROMPT,
    MAX_PROMPT_LENGTH,
    MAX_SEED,
    MAX_SIDE,
    MIN_SIDE,
)

# A flag starts a whitespace-separated word: two ASCII hyphens, or one dash that phones
# substitute for them (em dash, en dash, minus sign, horizontal bar), then a letter.
_FLAG_RE: Final = re.compile(r"(?<!\S)(?:--|[\u2014\u2013\u2212\u2015])([A-Za-z][A-Za-z0-9_-]*)")
_INT_RE: Final = re.compile(r"[+-]?\d+")
_FLOAT_RE: Final = re.compile(r"[+-]?(?:\d+(?:[.,]\d*)?|[.,]\d+)")
_RATIO_RE: Final = re.compile(
    r"(\d+(?:[.,]\d+)?)\s*[:/xX×]\s*(\d+(?:[.,]\d+)?)"  # 16:9, 2.39:1, 16x9, 4/3
)
_CHECKPOINT_RE: Final = re.compile(r"[\w.\-/+()\[\]]{1,256}")

MAX_BATCH: Final = 4
MAX_RATIO: Final = 8.0  # the longer side at most 8× the shorter one
MAX_NEGATIVE_LENGTH: Final = MAX_PROMPT_LENGTH

# Reference-image flags → the request's feature flag (generation/types.py FEATURES).
REFERENCE_FLAGS: Final[Mapping[str, str]] = {"style": "style", "pose": "pose", "canny": "control"}


@dataclass(frozen=True)
class ParamSpec:
    """One parameter: canonical name, value kind and bounds (for the parser and for /help)."""

    name: str
    kind: str  # "int" | "float" | "ratio" | "text" | "word" | "flag"
    minimum: float | None = None
    maximum: float | None = None
    image_only: bool = False
    example: str = ""

    @property
    def flag(self) -> str:
        return f"--{self.name}"

    def range_text(self) -> str:
        """The accepted range as shown to users, e.g. ``1–150`` or ``1:8–8:1``."""
        if self.kind == "ratio":
            m = _fmt_number(MAX_RATIO)
            return f"1:{m}–{m}:1"
        if self.minimum is None or self.maximum is None:
            return ""
        return f"{_fmt_number(self.minimum)}–{_fmt_number(self.maximum)}"


PARAMS: Final[dict[str, ParamSpec]] = {
    s.name: s
    for s in (
        ParamSpec("ar", "ratio", example="16:9"),
        ParamSpec("seed", "int", 0, MAX_SEED, example="42"),
        ParamSpec("steps", "int", 1, 150, example="30"),
        ParamSpec("cfg", "float", 0.0, 30.0, example="7"),
        ParamSpec("strength", "float", 0.0, 1.0, image_only=True, example="0.6"),
        ParamSpec("no", "text", example="text, watermark"),
        ParamSpec("batch", "int", 1, MAX_BATCH, example="2"),
        ParamSpec("checkpoint", "word", example="sdxl_base.safetensors"),
        ParamSpec("style", "flag"),
        ParamSpec("pose", "flag"),
        ParamSpec("canny", "flag"),
    )
}
ALIASES: Final[Mapping[str, str]] = {"aspect": "ar", "negative": "no", "ckpt": "checkpoint"}


class ParamError(InvalidInputError):
    """A parameter in the prompt that cannot be used. ``reason`` is one of :data:`REASONS`."""

    REASONS: Final = ("unknown", "missing", "invalid", "range", "duplicate", "unsupported")

    def __init__(self, param: str, reason: str, *, value: str = "") -> None:
        if reason not in self.REASONS:
            raise ValueError(f"unknown reason {reason!r}")
        spec = PARAMS.get(param)
        self.param = param
        self.reason = reason
        self.value = value[:40]
        self.range = spec.range_text() if spec else ""
        self.example = spec.example if spec else ""
        super().__init__(
            f"parameter --{param}: {reason}", field="param", param=param, reason=reason
        )

    @property
    def flag(self) -> str:
        return f"--{self.param}"

    @property
    def locale_key(self) -> str:
        """``params.error.<reason>`` (``range`` and ``invalid`` without a range become
        ``params.error.invalid_value``)."""
        if self.reason in ("range", "invalid") and not self.range:
            return "params.error.invalid_value"
        return f"params.error.{self.reason}"

    def format_args(self) -> dict[str, str]:
        """Placeholders of the ``params.error.*`` texts: ``param``, ``value``, ``range``,
        ``example``."""
        return {
            "param": self.flag,
            "value": self.value,
            "range": self.range,
            "example": self.example,
        }


@dataclass(frozen=True)
class InlineParams:
    """What the parameters of one prompt line set; ``None``/empty = not given."""

    prompt: str
    aspect: tuple[float, float] | None = None
    seed: int | None = None
    steps: int | None = None
    cfg: float | None = None
    strength: float | None = None
    negative: str | None = None
    batch: int | None = None
    checkpoint: str | None = None
    references: frozenset[str] = frozenset()  # "style" / "pose" / "control"
    given: tuple[str, ...] = field(default=())  # canonical names, in the order typed

    @property
    def is_empty(self) -> bool:
        return not self.given

    def apply(
        self,
        fields: Mapping[str, Any],
        *,
        multiple: int = 8,
        min_side: int = MIN_SIDE,
        max_side: int = MAX_SIDE,
    ) -> dict[str, Any]:
        """``fields`` (request fields from the user's settings) with the parameters applied.

        ``width``/``height`` in ``fields`` are the current size setting (1024×1024 when
        absent); the prompt is set to :attr:`prompt`; reference flags switch the request's
        ``style``/``pose``/``control`` features on.
        """
        out = dict(fields)
        out["prompt"] = self.prompt
        if self.aspect is not None:
            width = int(out.get("width") or 1024)
            height = int(out.get("height") or 1024)
            out["width"], out["height"] = size_for_ratio(
                width * height,
                self.aspect,
                multiple=multiple,
                min_side=min_side,
                max_side=max_side,
            )
        for name in ("seed", "steps", "cfg", "strength", "batch", "checkpoint"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        if self.negative:
            out["negative_prompt"] = merge_negative(out.get("negative_prompt"), self.negative)
        for feature in self.references:
            out[feature] = True
        return out


def merge_negative(current: str | None, extra: str) -> str:
    """The negative prompt with ``extra`` appended (``None`` = the default negative)."""
    base = DEFAULT_NEGATIVE_PROMPT if current is None else current.strip()
    extra = extra.strip().strip(",").strip()
    merged = f"{base}, {extra}" if base else extra
    return merged[:MAX_NEGATIVE_LENGTH]


def size_for_ratio(
    area: int,
    ratio: tuple[float, float],
    *,
    multiple: int = 8,
    min_side: int = MIN_SIDE,
    max_side: int = MAX_SIDE,
) -> tuple[int, int]:
    """Width and height of about ``area`` pixels at ``ratio`` (W, H).

    Both sides are multiples of ``multiple`` within ``min_side..max_side`` (rounded inwards to
    the multiple). When the area at that ratio would push a side past a limit, the size is
    scaled to fit, keeping the ratio as closely as the grid allows.
    """
    if multiple < 1:
        raise ValueError("multiple must be ≥ 1")
    rw, rh = ratio
    if not (rw > 0 and rh > 0 and math.isfinite(rw) and math.isfinite(rh)):
        raise ValueError("ratio sides must be positive")
    lo = math.ceil(min_side / multiple) * multiple
    hi = (max_side // multiple) * multiple
    if lo > hi:
        raise ValueError(f"no multiple of {multiple} between {min_side} and {max_side}")
    r = rw / rh
    width, height = math.sqrt(area * r), math.sqrt(area / r)
    scale = min(1.0, hi / max(width, height))  # the long side within the limit...
    scale = max(scale, lo / min(width, height))  # ...and the short one at least the minimum
    width, height = width * scale, height * scale

    def options(side: float) -> set[int]:
        down = math.floor(side / multiple) * multiple
        return {int(min(hi, max(lo, v))) for v in (down, down + multiple)}

    def error(size: tuple[int, int]) -> float:  # log-distance from the ratio and the area
        w, h = size
        return abs(math.log((w / h) / r)) + 0.5 * abs(math.log((w * h) / (width * height)))

    return min(
        ((w, h) for w in options(width) for h in options(height)),
        key=lambda size: (error(size), -size[0] * size[1]),
    )


def _fmt_number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _number(text: str) -> float:
    return float(text.replace(",", "."))


def _parse_value(spec: ParamSpec, raw: str) -> Any:
    """The typed value of one parameter, or ParamError."""
    if spec.kind == "int":
        if not _INT_RE.fullmatch(raw):
            raise ParamError(spec.name, "invalid", value=raw)
        value: float = int(raw)
    elif spec.kind == "float":
        if not _FLOAT_RE.fullmatch(raw):
            raise ParamError(spec.name, "invalid", value=raw)
        value = _number(raw)
    elif spec.kind == "ratio":
        match = _RATIO_RE.fullmatch(raw)
        if not match:
            raise ParamError(spec.name, "invalid", value=raw)
        rw, rh = _number(match.group(1)), _number(match.group(2))
        if rw <= 0 or rh <= 0 or max(rw / rh, rh / rw) > MAX_RATIO:
            raise ParamError(spec.name, "range", value=raw)
        return (rw, rh)
    elif spec.kind == "word":
        if not _CHECKPOINT_RE.fullmatch(raw):
            raise ParamError(spec.name, "invalid", value=raw)
        return raw
    else:  # pragma: no cover - text and flag values are handled by the caller
        raise AssertionError(spec.kind)
    assert spec.minimum is not None and spec.maximum is not None
    if not spec.minimum <= value <= spec.maximum:
        raise ParamError(spec.name, "range", value=raw)
    return value


def _canonical(name: str) -> str:
    name = name.lower()
    name = ALIASES.get(name, name)
    if name not in PARAMS:
        raise ParamError(name, "unknown")
    return name


def parse_inline_params(text: str, *, allow_image_params: bool = True) -> InlineParams:
    """Split ``text`` into the prompt and its inline parameters.

    ``allow_image_params=False`` (a txt2img command) refuses ``--strength`` as unsupported.
    The returned prompt has the parameters and their values removed and runs of spaces
    collapsed; line breaks inside the prompt are kept.
    """
    text = text or ""
    values: dict[str, Any] = {}
    references: set[str] = set()
    given: list[str] = []
    kept: list[str] = []
    pos = 0
    matches = list(_FLAG_RE.finditer(text))
    for i, match in enumerate(matches):
        if match.start() < pos:  # inside the value of the previous parameter
            continue
        kept.append(text[pos : match.start()])
        name = _canonical(match.group(1))
        spec = PARAMS[name]
        if name in given:
            raise ParamError(name, "duplicate")
        if spec.image_only and not allow_image_params:
            raise ParamError(name, "unsupported")
        given.append(name)
        pos = match.end()
        if spec.kind == "flag":
            references.add(REFERENCE_FLAGS[name])
            continue
        if spec.kind == "text":  # --no: everything up to the next parameter
            end = next((m.start() for m in matches[i + 1 :] if m.start() >= pos), len(text))
            raw = " ".join(text[pos:end].split())
            if not raw:
                raise ParamError(name, "missing")
            values["negative"] = raw
            pos = end
            continue
        value_match = re.compile(r"\s*(\S+)").match(text, pos)
        raw = value_match.group(1) if value_match else ""
        if not raw or _FLAG_RE.match(raw):
            raise ParamError(name, "missing")
        assert value_match is not None
        parsed = _parse_value(spec, raw)
        values["aspect" if name == "ar" else name] = parsed
        pos = value_match.end()
    kept.append(text[pos:])
    prompt = _tidy("".join(kept))
    return InlineParams(
        prompt=prompt, references=frozenset(references), given=tuple(given), **values
    )


def _tidy(text: str) -> str:
    lines = [" ".join(line.split()) for line in text.splitlines()]
    return "\n".join(line for line in lines if line).strip()


def help_lines() -> list[tuple[str, str]]:
    """(flag, range) for every parameter, in the documented order (for /help)."""
    return [(spec.flag, spec.range_text()) for spec in PARAMS.values()]
