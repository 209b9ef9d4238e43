"""LoRA trigger words: insert ``<lora:NAME:WEIGHT>`` tags into a prompt (docs/legacy.md).

Rules:

* Only enabled catalogue entries whose ``min_balance`` the user's balance reaches are used.
* Family: an entry is skipped only when both its family and the checkpoint's family are known
  and differ (compared case-insensitively, ignoring punctuation: ``SD1.5`` == ``sd15``).
* Triggers match whole words (not inside another word; letters, digits and ``_`` are word
  characters), case-insensitively. Multi-word triggers are tried first, then longer ones.
* Each LoRA is inserted at most once, right before its first matched trigger; the trigger word
  stays. A ``trigger:0.6`` suffix sets the weight and is consumed; otherwise the entry's
  ``default_weight`` is used.
* A LoRA already tagged in the prompt is not inserted again, and text inside existing tags is
  never matched.
* Any internal error returns the original prompt (and is logged).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass

from generation.models import LoraEntry

logger = logging.getLogger(__name__)

_TAG_RE = re.compile(r"<lora:([^:>]*)(?::[^>]*)?>", re.IGNORECASE)
# Optional ``:weight`` right after a trigger; it must not run into a word (``cat:0.6abc``).
_WEIGHT = r"(?::(-?(?:\d+(?:\.\d+)?|\.\d+))(?!\w|\.\w))?"


@dataclass(frozen=True)
class LoraResult:
    prompt: str
    applied: tuple[str, ...] = ()


def format_weight(weight: float) -> str:
    """Compact weight: 1 → "1", 0.6 → "0.6", 0.125 → "0.125"."""
    text = f"{weight:.4f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def _norm_family(family: str | None) -> str | None:
    if not family:
        return None
    return re.sub(r"[^A-Z0-9]", "", family.upper()) or None


def _family_ok(entry_family: str | None, family: str | None) -> bool:
    a, b = _norm_family(entry_family), _norm_family(family)
    return a is None or b is None or a == b


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
) -> LoraResult:
    """Insert LoRA tags for the triggers found in ``prompt``. Never raises."""
    try:
        return _apply(prompt, loras, balance=balance, family=family)
    except Exception:
        logger.exception("LoRA trigger processing failed; using the original prompt")
        return LoraResult(prompt, ())


def _apply(
    prompt: str, loras: Sequence[LoraEntry], *, balance: int | None, family: str | None
) -> LoraResult:
    if not prompt or not loras:
        return LoraResult(prompt, ())
    available = 0 if balance is None else balance

    protected: list[tuple[int, int]] = []
    used: set[str] = set()
    for m in _TAG_RE.finditer(prompt):
        protected.append(m.span())
        used.add(m.group(1).strip().lower())

    candidates: list[tuple[str, LoraEntry]] = []
    for entry in loras:
        if not entry.enabled or entry.min_balance > available:
            continue
        if not _family_ok(entry.family, family) or entry.name.lower() in used:
            continue
        for trigger in entry.triggers:
            trigger = trigger.strip()
            if trigger:
                candidates.append((trigger, entry))
    # Multi-word triggers first, then longer ones; catalogue order otherwise (stable sort).
    candidates.sort(key=lambda c: (-len(c[0].split()), -len(c[0])))

    # (start, end, replacement) edits on the original prompt; claimed spans never overlap.
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
            weight = float(m.group(2)) if m.group(2) is not None else entry.default_weight
            tag = f"<lora:{entry.name}:{format_weight(weight)}>"
            edits.append((start, end, f"{tag} {m.group(1)}", entry.name))
            claimed.append((start, end))
            applied.add(key)
            break

    if not edits:
        return LoraResult(prompt, ())
    edits.sort()
    out: list[str] = []
    pos = 0
    for start, end, replacement, _name in edits:
        out.append(prompt[pos:start])
        out.append(replacement)
        pos = end
    out.append(prompt[pos:])
    return LoraResult("".join(out), tuple(name for *_, name in edits))


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
