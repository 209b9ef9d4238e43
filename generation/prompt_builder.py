"""Build the ComfyDeploy ``inputs`` dict of a request, one builder per template.

Input names are the legacy ones (docs/legacy.md): ``input_prompt``, ``input_negative``,
``input_seed``, ``input_width``, ``input_height``, ``input_steps``, ``input_cfg``,
``input_strength``, ``input_checkpoint``, ``input_batch``, ``input_image``, ``input_mask``,
``input_inpaint_target`` and the PLUS knobs. When the deployment's input list is known
only the names it declares are sent, plus ``input_prompt`` and ``input_negative``.

Images are not handled here: the service prepares them (PNG/JPEG data URI or uploaded URL) and
passes them in ``image_values``. A Telegram file URL (it carries the bot token) is refused.

Checkpoints: a type with a fixed family (FLUX, SD3) ignores a user checkpoint of another known
family (legacy forced ``flux-schnell`` for FLUX types), so a user's SDXL checkpoint setting
never reaches a FLUX workflow. The checkpoint name is sent as set (no ``.safetensors`` added).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from generation.errors import InvalidInputError
from generation.loras import (
    DEFAULT_WEIGHT_MAX,
    apply_lora_triggers,
    checkpoint_family,
    filter_lora_tags,
    strip_lora_tags,
)
from generation.models import LoraEntry
from generation.request import GenerationRequest
from generation.types import ResolvedType

ALWAYS_SENT = ("input_prompt", "input_negative")
_FIXED_FAMILIES = frozenset({"FLUX", "SD3"})
_TELEGRAM_FILE_RE = re.compile(r"api\.telegram\.org/file/|/file/bot\d+:", re.IGNORECASE)

# feature → (image input, strength, start, end) input names (docs/legacy.md)
FEATURE_KNOBS: dict[str, tuple[str, str, str, str]] = {
    "control": (
        "input_control_image",
        "input_apply_canny_strength",
        "input_apply_canny_start_percent",
        "input_apply_canny_end_percent",
    ),
    "style": (
        "input_style_image",
        "input_ipadapter_weight",
        "input_ipadapter_start",
        "input_ipadapter_end",
    ),
    "pose": ("input_pose_image", "input_pose_strength", "input_pose_start", "input_pose_end"),
}


@dataclass(frozen=True)
class BuiltInputs:
    inputs: dict[str, Any]
    final_prompt: str
    applied_loras: tuple[str, ...]
    kept_loras: tuple[str, ...] = ()


@dataclass(frozen=True)
class _Ctx:
    request: GenerationRequest
    resolved: ResolvedType
    image_values: Mapping[str, str]
    prompt: str
    checkpoint: str | None
    negative: str = ""
    inpaint_target: str = ""


_Builder = Callable[[_Ctx], dict[str, Any]]


class PromptBuilder:
    """Turns a validated request into the inputs of one deployment."""

    def __init__(self) -> None:
        self._builders: dict[str, _Builder] = {
            "make": self._build_make,
            "txt2img": self._build_make,
            "i2i": self._build_i2i,
            "plus": self._build_plus,
            "inpaint": self._build_inpaint,
            "upscale": self._build_upscale,
        }

    def build(
        self,
        request: GenerationRequest,
        resolved: ResolvedType,
        *,
        deployment_inputs: Sequence[str] | None,
        loras: Sequence[LoraEntry],
        balance: int | None,
        image_values: Mapping[str, str],
        lora_weight_max: float = DEFAULT_WEIGHT_MAX,
    ) -> BuiltInputs:
        """Build the inputs; ``request.seed`` must already be concrete (the service draws it).

        ``balance`` is the user's balance before this run's own hold (it gates LoRAs). LoRA
        tags the user typed survive only for entries they are entitled to (generation.loras),
        in the prompt and the negative prompt; the inpaint target never carries any."""
        if request.seed < 0:
            raise ValueError("the request's seed must be concrete (draw it before building)")
        spec = resolved.base
        checkpoint = request.checkpoint.strip() if request.checkpoint else None
        ckpt_family = checkpoint_family(checkpoint)
        if spec.family in _FIXED_FAMILIES and ckpt_family and ckpt_family != spec.family:
            checkpoint, ckpt_family = None, None
        family = ckpt_family or spec.family

        applied: tuple[str, ...] = ()
        kept: tuple[str, ...] = ()
        prompt = request.prompt
        if prompt:
            result = apply_lora_triggers(
                prompt, loras, balance=balance, family=family, weight_max=lora_weight_max
            )
            prompt, applied, kept = result.prompt, result.applied, result.kept
        negative = filter_lora_tags(
            request.effective_negative_prompt,
            loras,
            balance=balance,
            family=family,
            weight_max=lora_weight_max,
        )
        target = strip_lora_tags((request.inpaint_target or "").strip())

        ctx = _Ctx(request, resolved, image_values, prompt, checkpoint, negative, target)
        builder = self._builders.get(spec.template, self._build_default)
        inputs = builder(ctx)
        if resolved.features and not any(knob[1] in inputs for knob in FEATURE_KNOBS.values()):
            # An explicit combined type (e.g. MAKE_STYLE_POSE) on a base without its own knobs:
            # the base's deployment gets the feature knobs set (docs/legacy.md).
            inputs.update(self._knobs(ctx))

        if deployment_inputs is not None:
            declared = set(deployment_inputs) | set(ALWAYS_SENT)
            inputs = {k: v for k, v in inputs.items() if k in declared}
        _refuse_telegram_urls(inputs)
        return BuiltInputs(
            inputs=inputs, final_prompt=prompt, applied_loras=applied, kept_loras=kept
        )

    # --- shared pieces -------------------------------------------------------------------

    @staticmethod
    def _common(ctx: _Ctx) -> dict[str, Any]:
        r = ctx.request
        inputs: dict[str, Any] = {
            "input_prompt": ctx.prompt,
            "input_negative": ctx.negative,
            "input_seed": r.seed,
            "input_width": r.width,
            "input_height": r.height,
            "input_steps": r.steps,
            "input_cfg": r.cfg,
            "input_batch": r.batch,
        }
        if ctx.checkpoint:
            inputs["input_checkpoint"] = ctx.checkpoint
        return inputs

    @staticmethod
    def _image(ctx: _Ctx, name: str = "input_image", field: str = "image") -> str:
        value = ctx.image_values.get(name)
        if not value:
            raise InvalidInputError(f"{ctx.resolved.name} needs {field}", field=field)
        return value

    @staticmethod
    def _knobs(ctx: _Ctx) -> dict[str, Any]:
        """Feature knobs: on = strength 1/start 0/end 1 + image; off = 0/0/0, no image."""
        inputs: dict[str, Any] = {}
        for feature, (image_key, strength, start, end) in FEATURE_KNOBS.items():
            if feature in ctx.resolved.features:
                field = image_key.removeprefix("input_")
                inputs[image_key] = PromptBuilder._image(ctx, image_key, field)
                inputs.update({strength: 1, start: 0, end: 1})
            else:
                inputs.update({strength: 0, start: 0, end: 0})
        return inputs

    # --- one builder per template ----------------------------------------------------------

    def _build_make(self, ctx: _Ctx) -> dict[str, Any]:
        """txt2img: no input image; strength 1 (legacy txt2img cleanup)."""
        inputs = self._common(ctx)
        inputs["input_strength"] = 1.0
        return inputs

    def _build_i2i(self, ctx: _Ctx) -> dict[str, Any]:
        inputs = self._common(ctx)
        inputs["input_strength"] = ctx.request.strength
        inputs["input_image"] = self._image(ctx)
        return inputs

    def _build_plus(self, ctx: _Ctx) -> dict[str, Any]:
        """The PLUS workflow: txt2img or img2img (by the type) with control/style/pose knobs."""
        if ctx.resolved.base.requires_image:
            inputs = self._build_i2i(ctx)
        else:
            inputs = self._build_make(ctx)
        inputs.update(self._knobs(ctx))
        return inputs

    def _build_inpaint(self, ctx: _Ctx) -> dict[str, Any]:
        inputs = self._common(ctx)
        inputs["input_strength"] = ctx.request.strength
        inputs["input_image"] = self._image(ctx)
        mask = ctx.image_values.get("input_mask")
        target = ctx.inpaint_target
        if mask:
            inputs["input_mask"] = mask
        if target:
            inputs["input_inpaint_target"] = target
        if not mask and not target:
            raise InvalidInputError(f"{ctx.resolved.name} needs a mask", field="mask")
        return inputs

    def _build_upscale(self, ctx: _Ctx) -> dict[str, Any]:
        """Upscale: the image (and a prompt only if the user gave one)."""
        inputs: dict[str, Any] = {"input_image": self._image(ctx), "input_seed": ctx.request.seed}
        if ctx.prompt:
            inputs["input_prompt"] = ctx.prompt
            inputs["input_negative"] = ctx.negative
        if ctx.checkpoint:
            inputs["input_checkpoint"] = ctx.checkpoint
        return inputs

    def _build_default(self, ctx: _Ctx) -> dict[str, Any]:
        """Unknown template: everything the request has; the deployment's list filters it."""
        inputs = self._common(ctx)
        image = ctx.image_values.get("input_image")
        inputs["input_strength"] = ctx.request.strength if image else 1.0
        if image:
            inputs["input_image"] = image
        if mask := ctx.image_values.get("input_mask"):
            inputs["input_mask"] = mask
        if target := ctx.inpaint_target:
            inputs["input_inpaint_target"] = target
        return inputs


def _refuse_telegram_urls(inputs: Mapping[str, Any]) -> None:
    for key, value in inputs.items():
        if isinstance(value, str) and _TELEGRAM_FILE_RE.search(value):
            raise InvalidInputError(
                "a Telegram file URL must never be sent to the backend",
                field=key.removeprefix("input_"),
            )
