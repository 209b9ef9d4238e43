"""LoRA tags in prompts: the catalogue gate and trigger words (docs/legacy.md).

Only the catalogue may put a LoRA into what is sent. A user is *entitled* to an entry that is
enabled, whose ``min_balance`` their balance reaches and whose family fits the checkpoint.

Gate (prompt and negative prompt alike):

* A ``<lora:NAME[:W...]>`` tag the user typed is kept only when NAME is an entry the user is
  entitled to, and only once; it is rewritten as ``<lora:NAME:W>`` with the weight clamped to
  ±``weight_max``. Every other tag is removed, and any ``<lora:``/``<lyco:`` opening left over
  (unclosed, nested, or formed by a removal) loses its ``<``, so no prompt parser downstream can
  read a LoRA the catalogue did not grant.
* On an internal error the prompt goes out with every LoRA tag removed (fail closed).

Triggers (prompt only):

* Family: an entry is skipped only when both its family and the checkpoint's family are known
  and differ (compared case-insensitively, ignoring punctuation: ``SD1.5`` == ``sd15``).
* Triggers match whole words (not inside another word; letters, digits and ``_`` are word
  characters), case-insensitively. Multi-word triggers are tried first, then longer ones.
* Each LoRA is inserted at most once, right before its first matched trigger; the trigger word
  stays. A ``trigger:0.6`` suffix sets the weight (clamped) and is consumed; otherwise the
  entry's ``default_weight`` (clamped) is used.
* A LoRA already tagged in the prompt is not inserted again, and text inside kept tags is
  never matched.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

from generation.models import LoraEntry

logger = logging.getLogger(__name__)

DEFAULT_WEIGHT_MAX = 2.0

_TAG_RE = re.compile(r"<lora:([^:>]*)(?::[^>]*)?>", re.IGNORECASE)
# A tag as prompt parsers read it: ``<lora:name>``, ``<lora:name:w>``, ``<lora:name:w:clip>``.
_ANY_TAG_RE = re.compile(r"<\s*(?:lora|lyco|lycoris)\s*:([^:<>]*)((?::[^:<>]*)*)>", re.IGNORECASE)
# The opening alone (what remains of a malformed or half-removed tag).
_OPENING_RE = re.compile(r"<(?=\s*(?:lora|lyco|lycoris)\s*:)", re.IGNORECASE)
# Optional ``:weight`` right after a trigger; it must not run into a word (``cat:0.6abc``).
_WEIGHT = r"(?::(-?(?:\d+(?:\.\d+)?|\.\d+))(?!\w|\.\w))?"
_MAX_NEUTRALIZE_ROUNDS = 10_000


@dataclass(frozen=True)
class LoraResult:
    prompt: str
    applied: tuple[str, ...] = ()  # inserted for a trigger
    kept: tuple[str, ...] = ()  # typed by the user and allowed


def format_weight(weight: float) -> str:
    """Compact weight: 1 → "1", 0.6 → "0.6", 0.125 → "0.125"."""
    text = f"{weight:.4f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def clamp_weight(weight: float, weight_max: float) -> float:
    """``weight`` limited to ±``weight_max``; a non-finite weight becomes 1."""
    limit = abs(weight_max) if math.isfinite(weight_max) else DEFAULT_WEIGHT_MAX
    if not math.isfinite(weight):
        weight = 1.0
    return max(-limit, min(limit, weight))


def _norm_family(family: str | None) -> str | None:
    if not family:
        return None
    return re.sub(r"[^A-Z0-9]", "", family.upper()) or None


def _family_ok(entry_family: str | None, family: str | None) -> bool:
    a, b = _norm_family(entry_family), _norm_family(family)
    return a is None or b is None or a == b


def entitled_loras(
    loras: Sequence[LoraEntry], *, balance: int | None, family: str | None
) -> dict[str, LoraEntry]:
    """Entries the user may use, by lower-cased name (the first of duplicate names wins)."""
    available = 0 if balance is None else balance
    out: dict[str, LoraEntry] = {}
    for entry in loras:
        if not entry.enabled or entry.min_balance > available:
            continue
        if not _family_ok(entry.family, family):
            continue
        out.setdefault(entry.name.strip().lower(), entry)
    return out


def _neutralize(text: str) -> str:
    """Drop the ``<`` of every LoRA-tag opening, until none is left (a removal can form one)."""
    for _ in range(_MAX_NEUTRALIZE_ROUNDS):
        cleaned = _OPENING_RE.sub("", text)
        if cleaned == text:
            return text
        text = cleaned
    return text.replace("<", "")  # pragma: no cover - each round removes a character


def _tag_weight(rest: str, entry: LoraEntry, weight_max: float) -> float:
    parts = rest.split(":")
    weight = entry.default_weight
    if len(parts) > 1 and parts[1].strip():
        try:
            weight = float(parts[1].strip())
        except ValueError:
            weight = entry.default_weight
    return clamp_weight(weight, weight_max)


def _gate_tags(
    text: str, entitled: dict[str, LoraEntry], weight_max: float
) -> tuple[str, tuple[str, ...]]:
    """Keep (once, canonical, clamped) the tags of entitled LoRAs; remove every other tag."""
    texts: list[str] = []  # free text between kept tags
    tags: list[str] = []
    kept: list[str] = []
    current = ""
    pos = 0
    for m in _ANY_TAG_RE.finditer(text):
        before = text[pos : m.start()]
        pos = m.end()
        key = m.group(1).strip().lower()
        entry = entitled.get(key)
        if entry is None or entry.name in kept:
            # Removed; do not leave a double space behind.
            if not current + before or (current + before)[-1:].isspace():
                nxt = text[pos:]
                pos += len(nxt) - len(nxt.lstrip(" \t"))
            current += before
            continue
        weight = _tag_weight(m.group(2), entry, weight_max)
        texts.append(current + before)
        tags.append(f"<lora:{entry.name}:{format_weight(weight)}>")
        kept.append(entry.name)
        current = ""
    texts.append(current + text[pos:])
    out = [_neutralize(texts[0])]
    for tag, free in zip(tags, texts[1:], strict=True):
        out.append(tag)
        out.append(_neutralize(free))
    return "".join(out), tuple(kept)


def strip_lora_tags(text: str) -> str:
    """``text`` with every LoRA tag (and tag opening) removed."""
    try:
        return _gate_tags(text, {}, DEFAULT_WEIGHT_MAX)[0]
    except Exception:  # pragma: no cover - regexes only; fail closed anyway
        return text.replace("<", "")


def filter_lora_tags(
    text: str,
    loras: Sequence[LoraEntry],
    *,
    balance: int | None,
    family: str | None,
    weight_max: float = DEFAULT_WEIGHT_MAX,
) -> str:
    """The gate alone (for the negative prompt): entitled tags kept once, others removed."""
    if not text:
        return text
    try:
        entitled = entitled_loras(loras, balance=balance, family=family)
        return _gate_tags(text, entitled, weight_max)[0]
    except Exception:
        logger.exception("LoRA tag filtering failed; removing every LoRA tag")
        return strip_lora_tags(text)


def _trigger_pattern(trigger: str) -> re.Pattern[str]:
    body = r"\s+".join(re.escape(word) for word in trigger.split())
    return re.compile(rf"(?<!\w)({body})(?!\w){_WEIGHT}", re.IGNORECASE)


def _overlaps(start: int, end: int, spans: list[tuple[int, int]]) -> bool:
    return any(start < s_end and s_start < end for s_start, s_end in spans)


def apply_lora_triggers(
    prompt: str,
    loras: Sequence[LoraEntry],
    *,
    balance: int | None,
    family: str | None,
    weight_max: float = DEFAULT_WEIGHT_MAX,
) -> LoraResult:
    """Gate the user's LoRA tags, then insert tags for the triggers found. Never raises.

    ``balance`` is what the user had before this run's own hold was placed."""
    try:
        return _apply(prompt, loras, balance=balance, family=family, weight_max=weight_max)
    except Exception:
        logger.exception("LoRA trigger processing failed; removing every LoRA tag")
        return LoraResult(strip_lora_tags(prompt), ())


def _apply(
    prompt: str,
    loras: Sequence[LoraEntry],
    *,
    balance: int | None,
    family: str | None,
    weight_max: float,
) -> LoraResult:
    if not prompt:
        return LoraResult(prompt, ())
    entitled = entitled_loras(loras, balance=balance, family=family)
    prompt, kept = _gate_tags(prompt, entitled, weight_max)
    if not entitled:
        return LoraResult(prompt, (), kept)

    protected: list[tuple[int, int]] = []
    used: set[str] = set()
    for m in _TAG_RE.finditer(prompt):
        protected.append(m.span())
        used.add(m.group(1).strip().lower())

    candidates: list[tuple[str, LoraEntry]] = []
    for key, entry in entitled.items():
        if key in used:
            continue
        for trigger in entry.triggers:
            trigger = trigger.strip()
            if trigger:
                candidates.append((trigger, entry))
    # Multi-word triggers first, then longer ones; catalogue order otherwise (stable sort).
    candidates.sort(key=lambda c: (-len(c[0].split()), -len(c[0])))

    # (start, end, replacement) edits on the gated prompt; claimed spans never overlap.
    edits: list[tuple[int, int, str, str]] = []
    claimed: list[tuple[int, int]] = []
    applied: set[str] = set()
    for trigger, entry in candidates:
        key = entry.name.lower()
        if key in applied:
            continue
        for m in _trigger_pattern(trigger).finditer(prompt):
            start, end = m.start(), m.end()
            if _overlaps(start, end, protected) or _overlaps(start, end, claimed):
                continue
            raw = float(m.group(2)) if m.group(2) is not None else entry.default_weight
            weight = clamp_weight(raw, weight_max)
            tag = f"<lora:{entry.name}:{format_weight(weight)}>"
            edits.append((start, end, f"{tag} {m.group(1)}", entry.name))
            claimed.append((start, end))
            applied.add(key)
            break

    if not edits:
        return LoraResult(prompt, (), kept)
    edits.sort()
    out: list[str] = []
    pos = 0
    for start, end, replacement, _name in edits:
        out.append(prompt[pos:start])
        out.append(replacement)
        pos = end
    out.append(prompt[pos:])
    return LoraResult("".join(out), tuple(name for *_, name in edits), kept)


@dataclass(frozen=True, slots=True)
class Checkpoint:
    name: str
    family: str


# Well-known names whose family the heuristic in checkpoint_family cannot guess (or guesses
# wrongly; docs/legacy.md). The /settings menu offers what admins configure instead
# (storage/checkpoints.py, /checkpoint add).
CHECKPOINTS: tuple[Checkpoint, ...] = (
    Checkpoint("flux-schnell", "FLUX"),
    Checkpoint("flux-dev", "FLUX"),
    Checkpoint("sdxl-base", "SDXL"),
    Checkpoint("pony-xl", "PONYXL"),
    Checkpoint("proteus_v0.4", "SDXL"),
    Checkpoint("dreamshaper_631bakedvae", "SD1.5"),
    Checkpoint("frankenstein_v2", "SD1.5"),
    Checkpoint("realisticvisionv60b1_v51hypervae", "SD1.5"),
    Checkpoint("picxreal_10", "SD1.5"),
)
_FAMILIES = {c.name: c.family for c in CHECKPOINTS}


def checkpoint_family(checkpoint: str | None) -> str | None:
    """Guess a checkpoint's family from its name ("FLUX", "PONYXL", "SDXL", "SD3", "SD1.5")."""
    if not checkpoint or not checkpoint.strip():
        return None
    name = checkpoint.strip().lower().removesuffix(".safetensors").removesuffix(".ckpt")
    if name in _FAMILIES:
        return _FAMILIES[name]
    if "flux" in name:
        return "FLUX"
    if "pony" in name:
        return "PONYXL"
    if "sd3" in name:
        return "SD3"
    if "xl" in name:
        return "SDXL"
    if "1.5" in name or "15" in name or "sd15" in name:
        return "SD1.5"
    return None
