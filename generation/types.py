"""The generation type registry, combined-type resolution and request validation.

A *type* is the name admins configure deployments under (``/deployment add MAKE <id>``). The
registry says what each type needs (prompt? image? mask?), which feature knobs it supports and
which prompt-builder template builds its inputs.

Combined types (docs/legacy.md): a name such as ``MAKE_PLUS_STYLE_POSE`` is a base type plus
features, written as suffixes in the fixed order ``_CANNY``, ``_STYLE``, ``_POSE``. Features can
also be switched on by the request flags (``control``/``style``/``pose``). Either way the resolved
type is named canonically (base + suffixes in order), and deployment selection tries that combined
name first, then the base type's deployment with the feature knobs set.

Feature support: ``supports_controlnet`` covers *control* (canny) and *pose* (OpenPose is a
ControlNet too); ``supports_style_transfer`` covers *style* (IP-Adapter).

``MAKE_PLUS`` follows the legacy ``QUICKMAKE_PLUS`` semantics: one SDXL workflow whose
control/style/pose features are switched by strength knobs. FLUX ``MAKE`` has no such knobs.
"""

from __future__ import annotations

from dataclasses import dataclass

from generation.errors import InvalidInputError
from generation.request import GenerationRequest


@dataclass(frozen=True)
class GenerationTypeSpec:
    name: str
    requires_prompt: bool
    requires_image: bool
    requires_mask: bool
    supports_controlnet: bool
    supports_style_transfer: bool
    template: str
    deployment_key: str
    family: str | None = None
    # A deployment that declares ``input_inpaint_target`` takes a text description of the area
    # instead of a mask; for such types ``requires_mask`` is met by either.
    accepts_inpaint_target: bool = False
    description_key: str = ""

    def supports(self, feature: str) -> bool:
        if feature in ("control", "pose"):
            return self.supports_controlnet
        if feature == "style":
            return self.supports_style_transfer
        return False


def _spec(
    name: str,
    *,
    template: str,
    family: str | None,
    prompt: bool = True,
    image: bool = False,
    mask: bool = False,
    controlnet: bool = False,
    style: bool = False,
    inpaint_target: bool = False,
) -> GenerationTypeSpec:
    return GenerationTypeSpec(
        name=name,
        requires_prompt=prompt,
        requires_image=image,
        requires_mask=mask,
        supports_controlnet=controlnet,
        supports_style_transfer=style,
        template=template,
        deployment_key=name,
        family=family,
        accepts_inpaint_target=inpaint_target,
        description_key=f"type.{name}",
    )


GENERATION_TYPES: dict[str, GenerationTypeSpec] = {
    s.name: s
    for s in (
        # FLUX txt2img (legacy: /make, checkpoint flux-schnell).
        _spec("MAKE", template="make", family="FLUX"),
        # SDXL-family txt2img; the checkpoint decides SDXL / SD1.5 / Pony.
        _spec("QUICKMAKE", template="make", family="SDXL"),
        # The legacy QUICKMAKE_PLUS workflow: SDXL txt2img with control/style/pose knobs.
        _spec("MAKE_PLUS", template="plus", family="SDXL", controlnet=True, style=True),
        # FLUX img2img (legacy /effect).
        _spec("I2I", template="i2i", family="FLUX", image=True),
        # SDXL img2img (legacy /quickeffect, /ms2).
        _spec("QUICKI2I", template="i2i", family="SDXL", image=True),
        # SDXL img2img with the PLUS knobs (legacy QUICKI2I_PLUS / I2I_PLUS).
        _spec("I2I_PLUS", template="plus", family="SDXL", image=True, controlnet=True, style=True),
        # FLUX inpaint: photo + mask (or the legacy text target) + prompt.
        _spec(
            "INPAINT",
            template="inpaint",
            family="FLUX",
            image=True,
            mask=True,
            inpaint_target=True,
        ),
        # Upscale: a photo only.
        _spec("UPSCALE", template="upscale", family=None, prompt=False, image=True),
    )
}

FEATURE_SUFFIXES = ("_CANNY", "_STYLE", "_POSE")
FEATURES = ("control", "style", "pose")  # same order as FEATURE_SUFFIXES
_SUFFIX_FEATURE = dict(zip(FEATURE_SUFFIXES, FEATURES, strict=True))
_FEATURE_IMAGE_FIELD = {"control": "control_image", "style": "style_image", "pose": "pose_image"}


@dataclass(frozen=True)
class ResolvedType:
    """A type name resolved to its base spec plus the features switched on."""

    name: str
    base: GenerationTypeSpec
    features: frozenset[str] = frozenset()


def default_spec(name: str) -> GenerationTypeSpec:
    """The spec of a type the registry does not know: admins may configure any type name."""
    return GenerationTypeSpec(
        name=name,
        requires_prompt=True,
        requires_image=False,
        requires_mask=False,
        supports_controlnet=False,
        supports_style_transfer=False,
        template="default",
        deployment_key=name,
    )


def combined_name(base: GenerationTypeSpec, features: frozenset[str]) -> str:
    """Canonical name of ``base`` + ``features``: suffixes in the order _CANNY, _STYLE, _POSE."""
    return base.name + "".join(
        suffix for suffix, feat in _SUFFIX_FEATURE.items() if feat in features
    )


def resolve_type(name: str) -> ResolvedType:
    """Resolve a type name: an exact registered name wins, then base + suffixes, else a default.

    Suffixes must come in the fixed order (``MAKE_PLUS_CANNY_STYLE``, not ``..._STYLE_CANNY``);
    a name that does not parse is treated as an admin-defined type of its own.
    """
    name = name.strip().upper()
    if name in GENERATION_TYPES:
        return ResolvedType(name, GENERATION_TYPES[name], frozenset())
    rest, features = name, set()
    for suffix in reversed(FEATURE_SUFFIXES):  # strip from the end: _POSE, _STYLE, _CANNY
        if rest.endswith(suffix) and len(rest) > len(suffix):
            rest = rest[: -len(suffix)]
            features.add(_SUFFIX_FEATURE[suffix])
    if features and rest in GENERATION_TYPES:
        return ResolvedType(name, GENERATION_TYPES[rest], frozenset(features))
    return ResolvedType(name, default_spec(name), frozenset())


def deployment_keys_for(resolved: ResolvedType) -> list[str]:
    """Deployment keys to try, in order: the combined name first, then the base's key."""
    keys = [resolved.name]
    if resolved.base.deployment_key not in keys:
        keys.append(resolved.base.deployment_key)
    return keys


def validate_request(request: GenerationRequest) -> ResolvedType:
    """Check the request against its type before anything is sent.

    Returns the resolved type with the features of both the name suffixes and the request
    flags. Raises :class:`InvalidInputError` whose ``field`` names what is wrong or missing.
    """
    resolved = resolve_type(request.type)
    spec = resolved.base
    flags = {f for f in FEATURES if getattr(request, f)}
    features = frozenset(resolved.features | flags)

    # A combined name given explicitly (e.g. MAKE_STYLE_POSE) names a deployment an admin set up
    # for that combination, so its features are trusted; flags asked on top must be supported.
    unsupported = sorted(f for f in flags - resolved.features if not spec.supports(f))
    if unsupported:
        raise InvalidInputError(
            f"type {spec.name} does not support {', '.join(unsupported)}",
            field="type",
            features=unsupported,
        )
    if spec.requires_prompt and not request.prompt.strip():
        raise InvalidInputError(f"type {spec.name} needs a prompt", field="prompt")
    if spec.requires_image and request.image is None:
        raise InvalidInputError(f"type {spec.name} needs an image", field="image")
    if spec.requires_mask and request.mask is None:
        has_target = bool(request.inpaint_target and request.inpaint_target.strip())
        if not (spec.accepts_inpaint_target and has_target):
            raise InvalidInputError(f"type {spec.name} needs a mask", field="mask")
    for feat in FEATURES:
        image_field = _FEATURE_IMAGE_FIELD[feat]
        if feat in features and getattr(request, image_field) is None:
            raise InvalidInputError(
                f"feature {feat} needs an image ({image_field})", field=image_field
            )

    if features == resolved.features:
        return resolved
    return ResolvedType(combined_name(spec, features), spec, features)
