"""Midjourney-style next steps on a delivered result: what they are, when they are shown, their
callback data, and the follow-up request each one starts. No Telegram calls here.

Actions (``verb``): ``ag`` 🔁 again with a new seed, ``up`` ⬆️ upscale one output, ``vs``/``vx``
🎨 vary one output subtly/strongly (img2img of it), ``pm`` ℹ️ parameters, ``og`` 📎 original file.
Callback data is ``x:<verb>:<item>:<run id>`` (at most 39 bytes); ``item`` is the output's
index in the run, so a batch's buttons name their image (U1…U4, V1…V4).

An action is shown only when it can run: the type it starts has a deployment, the run's output
is an image where one is needed, and the run itself can be repeated (a run whose input photo
was not stored cannot be "again"-ed).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from generation.models import MediaType, RunRecord
from generation.request import GenerationRequest
from generation.types import GENERATION_TYPES, deployment_keys_for, resolve_type
from handlers.callbacks import MAX_CALLBACK_BYTES, CallbackData

_RUN_ID = r"[0-9a-f]{32}"
VERBS = ("ag", "up", "vs", "vx", "pm", "og")
SPENDING_VERBS = frozenset({"ag", "up", "vs", "vx"})  # start a paid run: the owner's only
PER_ITEM_VERBS = frozenset({"up", "vs", "vx", "og"})
VARY_STRENGTH: Mapping[str, float] = {"vs": 0.35, "vx": 0.7}
MAX_ITEMS = 10  # one digit in the callback data; a media group holds at most 10
_INPUT_IMAGES = ("image", "mask", "control_image", "style_image", "pose_image")
_LORA_TAG = re.compile(r"<lora:([^:>]+):([0-9.]+)>")
# Family of the run's type → img2img type for 🎨 Vary, in the order tried.
_VARY_TYPES: Mapping[str | None, tuple[str, ...]] = {
    "FLUX": ("I2I", "QUICKI2I"),
    "SDXL": ("QUICKI2I", "I2I"),
}


@dataclass(frozen=True, slots=True)
class ResultAction(CallbackData):
    """A result button: ``verb`` on output ``item`` of run ``run_id``."""

    verb: str
    run_id: str
    item: int = 0

    prefix: ClassVar[str] = "x"
    regex: ClassVar[re.Pattern[str]] = re.compile(rf"^x:({'|'.join(VERBS)}):([0-9]):({_RUN_ID})\Z")

    def pack(self) -> str:
        if (
            self.verb not in VERBS
            or not re.fullmatch(_RUN_ID, self.run_id)
            or not 0 <= self.item < MAX_ITEMS
        ):
            raise ValueError(f"bad result action {self.verb!r}/{self.run_id!r}/{self.item!r}")
        data = f"x:{self.verb}:{self.item}:{self.run_id}"
        assert len(data.encode()) <= MAX_CALLBACK_BYTES
        return data

    @classmethod
    def parse(cls, data: str | None) -> ResultAction | None:
        match = cls.regex.match(data or "")
        if match is None:
            return None
        return cls(match.group(1), match.group(3), int(match.group(2)))

    @property
    def spends(self) -> bool:
        return self.verb in SPENDING_VERBS


@dataclass(frozen=True, slots=True)
class ButtonSpec:
    """One button to draw: the label's locale key (+ params) and its callback data."""

    label_key: str
    data: str
    params: Mapping[str, Any] = field(default_factory=dict)


def has_deployment(type_name: str, deployed: Collection[str]) -> bool:
    """Whether a run of ``type_name`` could be routed (combined name or its base deployed)."""
    deployed_upper = {t.upper() for t in deployed}
    return any(key in deployed_upper for key in deployment_keys_for(resolve_type(type_name)))


def vary_type(run_type: str, deployed: Collection[str]) -> str | None:
    """The img2img type 🎨 Vary uses for an output of ``run_type``; None when none deployed."""
    family = resolve_type(run_type).base.family
    for candidate in _VARY_TYPES.get(family, ("I2I", "QUICKI2I")):
        if has_deployment(candidate, deployed):
            return candidate
    return None


def can_repeat(run: RunRecord, deployed: Collection[str]) -> bool:
    """🔁 Again: the type is deployed and the run had no input photo (photos are not kept)."""
    request = run.request or {}
    return has_deployment(run.type, deployed) and not any(request.get(n) for n in _INPUT_IMAGES)


def image_items(run: RunRecord) -> list[int]:
    return [i for i, o in enumerate(run.outputs) if o.media_type is MediaType.IMAGE][:MAX_ITEMS]


def plan_buttons(
    run: RunRecord,
    deployed: Collection[str],
    *,
    items: list[int] | None = None,
    original: bool = True,
) -> list[list[ButtonSpec]]:
    """The result keyboard of ``run``: one image → named buttons; a batch → U1…/V1… rows.

    ``items`` are the output indexes the keyboard is about (default: the run's images);
    ``original=False`` drops 📎 (the originals were sent as files already).
    """
    items = image_items(run) if items is None else items
    upscale = run.type != "UPSCALE" and has_deployment("UPSCALE", deployed)
    vary = vary_type(run.type, deployed) is not None
    rid = run.id

    def button(key: str, verb: str, item: int = 0, **params: Any) -> ButtonSpec:
        return ButtonSpec(key, ResultAction(verb, rid, item).pack(), params)

    rows: list[list[ButtonSpec]] = []
    if len(items) > 1:
        if upscale:
            rows.append([button("actions.upscale_n", "up", i, n=n) for n, i in enumerate(items, 1)])
        if vary:
            rows.append([button("actions.vary_n", "vx", i, n=n) for n, i in enumerate(items, 1)])
        last: list[ButtonSpec] = []
        if can_repeat(run, deployed):
            last.append(button("actions.again", "ag"))
        last.append(button("actions.params", "pm"))
        rows.append(last)
        return rows
    first: list[ButtonSpec] = []
    if can_repeat(run, deployed):
        first.append(button("actions.again", "ag"))
    item = items[0] if items else 0
    if upscale and items:
        first.append(button("actions.upscale", "up", item))
    if first:
        rows.append(first)
    if vary and items:
        rows.append(
            [
                button("actions.vary_subtle", "vs", item),
                button("actions.vary_strong", "vx", item),
            ]
        )
    last = [button("actions.params", "pm")]
    if original and items:
        last.append(button("actions.original", "og", item))
    rows.append(last)
    return rows


# -- follow-up requests ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FollowUp:
    """What an action starts: the type, the prompt and the request fields (no image yet:
    ``needs_image`` says the run's output ``item`` goes in as ``image``)."""

    type: str
    prompt: str
    fields: dict[str, Any]
    needs_image: bool
    item: int = 0


_CARRIED = ("negative_prompt", "steps", "cfg", "checkpoint", "width", "height")


def user_prompt(run: RunRecord) -> str:
    """The prompt as the user wrote it (without LoRA tags or parameters)."""
    request = run.request or {}
    return str((run.meta or {}).get("prompt") or request.get("prompt") or "")


def follow_up(action: ResultAction, run: RunRecord, deployed: Collection[str]) -> FollowUp | None:
    """The run ``action`` starts from ``run``; None when it cannot (not deployed, no image)."""
    request = run.request or {}
    carried = {
        k: request[k]
        for k in _CARRIED
        if k in request and request[k] is not None and k in GenerationRequest.model_fields
    }
    if action.verb == "ag":
        if not can_repeat(run, deployed):
            return None
        base = {
            k: v
            for k, v in request.items()
            if k in GenerationRequest.model_fields and k not in _INPUT_IMAGES
        }
        for k in ("type", "prompt", "user_id", "chat_id", "mode", "priority"):
            base.pop(k, None)
        base["seed"] = -1
        return FollowUp(run.type, user_prompt(run), base, needs_image=False)
    if action.verb not in ("up", "vs", "vx"):
        return None
    if action.item not in image_items(run):
        return None
    if action.verb == "up":
        if run.type == "UPSCALE" or not has_deployment("UPSCALE", deployed):
            return None
        return FollowUp("UPSCALE", "", {"seed": -1}, needs_image=True, item=action.item)
    target = vary_type(run.type, deployed)
    if target is None:
        return None
    fields = {**carried, "seed": -1, "strength": VARY_STRENGTH[action.verb]}
    if target in GENERATION_TYPES and GENERATION_TYPES[target].family == "FLUX":
        fields.pop("checkpoint", None)  # a FLUX workflow ignores SDXL checkpoints anyway
    return FollowUp(target, user_prompt(run), fields, needs_image=True, item=action.item)


# -- ℹ️ parameters ----------------------------------------------------------------------------


def applied_loras(run: RunRecord) -> list[str]:
    """``name:weight`` of every LoRA the stored record says was applied (weights from the final
    prompt's tags); ``[]`` when none were."""
    request = run.request or {}
    names = [str(n) for n in request.get("applied_loras") or ()]
    weights = {
        m.group(1).lower(): m.group(2)
        for m in _LORA_TAG.finditer(str(request.get("final_prompt") or ""))
    }
    return [f"{name}:{weights.get(name.lower(), '1')}" for name in names]


def params_fields(run: RunRecord) -> dict[str, Any]:
    """Placeholders of ``result.params`` from the stored run."""
    r = run.request or {}
    return {
        "type": run.type,
        "prompt": user_prompt(run),
        "negative": r.get("negative_prompt") or "—",
        "width": r.get("width", "?"),
        "height": r.get("height", "?"),
        "steps": r.get("steps", "?"),
        "cfg": r.get("cfg", "?"),
        "seed": r.get("seed", "?"),
        "checkpoint": r.get("checkpoint") or "—",
        "loras": ", ".join(applied_loras(run)) or "—",
    }


def label(t: Callable[..., str], lang: str, spec: ButtonSpec) -> str:
    return t(lang, spec.label_key, **spec.params)
