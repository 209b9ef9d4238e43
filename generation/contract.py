"""The workflow contract: which inputs the bot sends to a deployment of each type, and what it
expects back. Derived from the code that does it, so it cannot drift:

* the input names and when each is sent: :mod:`generation.prompt_builder` (one builder per
  template) and :data:`generation.prompt_builder.FEATURE_KNOBS`;
* what a type needs (prompt, image, mask) and its family: :mod:`generation.types`;
* ranges and defaults: the fields of :class:`generation.request.GenerationRequest`;
* outputs: :mod:`generation.outputs` (media type from the file extension).

``python -m generation.contract`` prints the Markdown of ``docs/workflow-contract.md`` (a test
checks the file is current). :func:`required_inputs` is what ``python -m bot doctor`` checks a
deployment's declared inputs against.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from generation.outputs import MEDIA_EXTENSIONS
from generation.prompt_builder import ALWAYS_SENT, FEATURE_KNOBS
from generation.request import MAX_PROMPT_LENGTH, MAX_SEED, GenerationRequest
from generation.types import GENERATION_TYPES, GenerationTypeSpec, resolve_type

# The ComfyDeploy External node that supplies each kind of input.
NODE_FOR_KIND: dict[str, tuple[str, ...]] = {
    "text": ("ComfyUIDeployExternalText",),
    "integer": ("ComfyUIDeployExternalNumberInt",),
    "seed": ("ComfyUIDeployExternalSeed", "ComfyUIDeployExternalNumberInt"),
    "number": ("ComfyUIDeployExternalNumber",),
    "image": ("ComfyUIDeployExternalImage",),
    "checkpoint": ("ComfyUIDeployExternalCheckpoint", "ComfyUIDeployExternalText"),
}


@dataclass(frozen=True, slots=True)
class InputSpec:
    name: str
    kind: str  # a key of NODE_FOR_KIND
    range: str
    default: str
    when: str

    @property
    def nodes(self) -> tuple[str, ...]:
        return NODE_FOR_KIND[self.kind]


@dataclass(frozen=True, slots=True)
class TypeContract:
    type: str
    spec: GenerationTypeSpec
    inputs: tuple[InputSpec, ...]
    # Every group must have one name declared by the deployment (doctor's check).
    required: tuple[tuple[str, ...], ...]


def _bounds(field: str) -> tuple[Any, Any]:
    low = high = None
    for item in GenerationRequest.model_fields[field].metadata:
        low = getattr(item, "ge", low)
        high = getattr(item, "le", high)
    return low, high


def _default(field: str) -> Any:
    return GenerationRequest.model_fields[field].default


def _ranged(name: str, field: str, kind: str, when: str, default: str | None = None) -> InputSpec:
    low, high = _bounds(field)
    return InputSpec(name, kind, f"{low}–{high}", default or str(_default(field)), when)


_USER = "always; the user's /settings value"


def _seed(when: str) -> InputSpec:
    """−1 (random) is drawn by the bot before sending, so a workflow never sees it."""
    return InputSpec("input_seed", "seed", f"0–{MAX_SEED}", "random (drawn by the bot)", when)


def _common(spec: GenerationTypeSpec) -> list[InputSpec]:
    family = spec.family or "any"
    ckpt_when = "when the user picked a checkpoint in /settings"
    if spec.family in ("FLUX", "SD3"):
        ckpt_when += f" of family {family} (or of unknown family)"
    return [
        InputSpec(
            "input_prompt",
            "text",
            f"1–{MAX_PROMPT_LENGTH} characters",
            "—",
            "always; LoRA tags `<lora:NAME:WEIGHT>` inserted for matching trigger words",
        ),
        InputSpec(
            "input_negative",
            "text",
            "any text",
            "a built-in list (lowres, bad anatomy, …)",
            "always; the user's /settings value",
        ),
        _seed("always; the concrete seed (shown under the result)"),
        _ranged("input_width", "width", "integer", _USER),
        _ranged("input_height", "height", "integer", _USER),
        _ranged("input_steps", "steps", "integer", _USER),
        _ranged("input_cfg", "cfg", "number", "always"),
        _ranged("input_batch", "batch", "integer", "always"),
        InputSpec("input_checkpoint", "checkpoint", "a checkpoint name", "—", ckpt_when),
    ]


def _image(name: str, when: str) -> InputSpec:
    return InputSpec(name, "image", "PNG/JPEG data URI, or an uploaded file's URL", "—", when)


def _strength(fixed: bool) -> InputSpec:
    if fixed:
        return InputSpec("input_strength", "number", "1.0", "1.0", "always (text to image)")
    return _ranged("input_strength", "strength", "number", "always (denoise of the photo)")


def _knobs() -> list[InputSpec]:
    out: list[InputSpec] = []
    for feature, (image, strength, start, end) in FEATURE_KNOBS.items():
        out.append(_image(image, f"when {feature} is on"))
        for knob in (strength, start, end):
            out.append(
                InputSpec(knob, "number", "0–1", "0", f"always: on 1/0/1, off 0/0/0 ({feature})")
            )
    return out


def _inputs(spec: GenerationTypeSpec) -> list[InputSpec]:
    template = spec.template
    if template == "upscale":
        return [
            _image("input_image", "always (the photo)"),
            _seed("always; the concrete seed"),
            InputSpec("input_prompt", "text", "any text", "—", "only when the user gave one"),
            InputSpec("input_negative", "text", "any text", "—", "with input_prompt"),
            InputSpec("input_checkpoint", "checkpoint", "a name", "—", "when the user picked one"),
        ]
    inputs = _common(spec)
    if template in ("make", "txt2img") or (template == "plus" and not spec.requires_image):
        inputs.append(_strength(fixed=True))
    else:
        inputs.append(_strength(fixed=False))
        inputs.append(_image("input_image", "always (the user's photo)"))
    if template == "inpaint":
        inputs.append(_image("input_mask", "when the user sent a mask (white = repaint)"))
        inputs.append(
            InputSpec("input_inpaint_target", "text", "any text", "—", "when the area is described")
        )
    if template == "plus":
        inputs.extend(_knobs())
    return inputs


def _required(spec: GenerationTypeSpec) -> tuple[tuple[str, ...], ...]:
    groups: list[tuple[str, ...]] = []
    if spec.requires_prompt:
        groups.append(("input_prompt",))
    if spec.requires_image:
        groups.append(("input_image",))
    if spec.requires_mask:
        groups.append(
            ("input_mask", "input_inpaint_target")
            if spec.accepts_inpaint_target
            else ("input_mask",)
        )
    return tuple(groups)


def contract_for(type_name: str) -> TypeContract:
    """The contract of a registered type (``KeyError`` for a type the registry does not know)."""
    spec = GENERATION_TYPES[type_name.strip().upper()]
    return TypeContract(spec.name, spec, tuple(_inputs(spec)), _required(spec))


def required_inputs(type_name: str) -> tuple[tuple[str, ...], ...]:
    """Groups of input names a deployment of ``type_name`` must declare (one of each group).

    A combined name (``MAKE_PLUS_CANNY``) also needs the image input of each feature it names;
    an admin-defined type the registry does not know needs only ``input_prompt``."""
    resolved = resolve_type(type_name)
    groups = list(_required(resolved.base))
    for feature in sorted(resolved.features):
        groups.append((FEATURE_KNOBS[feature][0],))
    return tuple(groups)


def missing_inputs(type_name: str, declared: tuple[str, ...] | list[str]) -> list[str]:
    """The groups of :func:`required_inputs` that ``declared`` does not cover, as text."""
    have = set(declared)
    return [" or ".join(group) for group in required_inputs(type_name) if not have & set(group)]


def summary_lines() -> list[str]:
    """One line per type, ``MAKE: input_prompt*, input_negative, …`` (``*``: required), for
    the admins' /help."""
    lines = []
    for name in GENERATION_TYPES:
        contract = contract_for(name)
        required = {n for group in contract.required for n in group}
        names = [f"{i.name}*" if i.name in required else i.name for i in contract.inputs]
        lines.append(f"{name}: {', '.join(names)}")
    return lines


def _output_text() -> str:
    kinds: dict[str, list[str]] = {}
    for ext, media in MEDIA_EXTENSIONS.items():
        kinds.setdefault(media.value, []).append(ext)
    listed = "; ".join(f"{kind}: {', '.join(exts)}" for kind, exts in kinds.items())
    return (
        "The run's `outputs[].data.<key>[]` items that have a `url` (any key: `images` from "
        "Save Image, `gifs` from VideoHelperSuite, `files`, `videos`, …), in order. The file "
        f"extension of the URL (or of `filename`) decides how it is sent ({listed}); "
        "other files are sent as documents. Each item becomes one message."
    )


def render_markdown(level: int = 1) -> str:
    """The Markdown of docs/workflow-contract.md; ``level`` 2 nests it in the README."""
    h1, h2 = "#" * level, "#" * (level + 1)
    lines = [
        f"{h1} The workflow contract",
        "",
        "<!-- Generated by `python -m generation.contract > docs/workflow-contract.md`;"
        " tests/test_workflow_contract.py checks it is current. -->",
        "",
        "What the bot sends to a deployment of each type and what it expects back. Build the "
        "ComfyDeploy workflow with one **External** input node per input you need (its "
        "`input_id` is the name below), deploy it, then `/deployment add <TYPE> <id>`: the bot "
        "reads the inputs the deployment declares and sends only those (plus "
        f"{' and '.join(f'`{n}`' for n in ALWAYS_SENT)}), so a workflow may leave out any "
        "input it does not use. `python -m bot doctor` says when a deployment lacks an input "
        "its type needs.",
        "",
        "| kind | External node |",
        "|---|---|",
        *[
            f"| {kind} | {' or '.join(f'`{n}`' for n in nodes)} |"
            for kind, nodes in NODE_FOR_KIND.items()
        ],
        "",
        "Input images are PNG or JPEG (others are converted; large ones scaled down) and are "
        "sent as a data URI, or uploaded through ComfyDeploy's file upload when large; never as "
        "a Telegram URL.",
        "",
        f"{h2} Output",
        "",
        _output_text(),
        "",
    ]
    for name in GENERATION_TYPES:
        contract = contract_for(name)
        spec = contract.spec
        needs = ", ".join(" or ".join(f"`{n}`" for n in group) for group in contract.required)
        lines += [
            f"{h2} {name}",
            "",
            f"Family: {spec.family or 'any'}. The deployment must declare: {needs or 'nothing'}.",
            "",
            "| input | kind | range | default | when it is sent |",
            "|---|---|---|---|---|",
            *[
                f"| `{i.name}` | {i.kind} | {i.range} | {i.default} | {i.when} |"
                for i in contract.inputs
            ],
            "",
        ]
    lines += [
        f"{h2} Combined types",
        "",
        "A type name may carry features as suffixes in this order: `_CANNY`, `_STYLE`, `_POSE` "
        "(e.g. `MAKE_PLUS_CANNY_STYLE`). The bot first looks for a deployment of the combined "
        "name, then uses the base type's deployment with the feature knobs set. A combined "
        "deployment must also declare the image input of each feature "
        f"({', '.join(f'`{k[0]}`' for k in FEATURE_KNOBS.values())}).",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    print(render_markdown(), end="")
