"""Type registry, combined-type resolution and request validation."""

from __future__ import annotations

import pytest

from generation.errors import ErrorCode, InvalidInputError
from generation.request import GenerationRequest, InputImage
from generation.types import (
    FEATURE_SUFFIXES,
    GENERATION_TYPES,
    deployment_keys_for,
    resolve_type,
    validate_request,
)

IMG = InputImage(data=b"\x89PNG\r\n\x1a\nfake")


@pytest.mark.parametrize(
    ("name", "prompt", "image", "mask", "control", "style", "template", "family"),
    [
        ("MAKE", True, False, False, False, False, "make", "FLUX"),
        ("QUICKMAKE", True, False, False, False, False, "make", "SDXL"),
        ("MAKE_PLUS", True, False, False, True, True, "plus", "SDXL"),
        ("I2I", True, True, False, False, False, "i2i", "FLUX"),
        ("INPAINT", True, True, True, False, False, "inpaint", "FLUX"),
        ("UPSCALE", False, True, False, False, False, "upscale", None),
    ],
)
def test_registry_flags(name, prompt, image, mask, control, style, template, family) -> None:
    spec = GENERATION_TYPES[name]
    assert spec.name == name
    assert spec.deployment_key == name
    assert (spec.requires_prompt, spec.requires_image, spec.requires_mask) == (prompt, image, mask)
    assert (spec.supports_controlnet, spec.supports_style_transfer) == (control, style)
    assert spec.template == template
    assert spec.family == family
    assert spec.accepts_inpaint_target is (name == "INPAINT")


def test_feature_suffix_order() -> None:
    assert FEATURE_SUFFIXES == ("_CANNY", "_STYLE", "_POSE")


def test_exact_name_wins() -> None:
    r = resolve_type("MAKE_PLUS")
    assert r.base is GENERATION_TYPES["MAKE_PLUS"]
    assert r.features == frozenset()


def test_resolve_make_style_pose() -> None:
    r = resolve_type("MAKE_STYLE_POSE")
    assert r.name == "MAKE_STYLE_POSE"
    assert r.base is GENERATION_TYPES["MAKE"]
    assert r.features == {"style", "pose"}
    assert deployment_keys_for(r) == ["MAKE_STYLE_POSE", "MAKE"]


def test_resolve_make_canny_style_pose_lowercase() -> None:
    r = resolve_type("make_canny_style_pose")
    assert r.base.name == "MAKE"
    assert r.features == {"control", "style", "pose"}


def test_resolve_plus_canny() -> None:
    r = resolve_type("MAKE_PLUS_CANNY")
    assert r.base.name == "MAKE_PLUS"
    assert r.features == {"control"}
    assert deployment_keys_for(r) == ["MAKE_PLUS_CANNY", "MAKE_PLUS"]


@pytest.mark.parametrize("name", ["RMBG", "MAKE_POSE_STYLE", "FOO_STYLE", "MS3.2"])
def test_unknown_type_gets_default_spec(name: str) -> None:
    r = resolve_type(name)
    assert r.name == name
    assert r.base.template == "default"
    assert r.base.deployment_key == name
    assert r.base.requires_prompt
    assert not r.base.requires_image
    assert r.features == frozenset()
    assert deployment_keys_for(r) == [name]


def test_plain_type_deployment_keys() -> None:
    assert deployment_keys_for(resolve_type("I2I")) == ["I2I"]


def _field(request: GenerationRequest) -> str | None:
    with pytest.raises(InvalidInputError) as info:
        validate_request(request)
    assert info.value.code is ErrorCode.INVALID_INPUT
    return info.value.field


def test_missing_prompt_names_field() -> None:
    assert _field(GenerationRequest(type="MAKE", prompt="   ")) == "prompt"


def test_unknown_type_requires_prompt() -> None:
    assert _field(GenerationRequest(type="WHATEVER")) == "prompt"


def test_missing_image_names_field() -> None:
    assert _field(GenerationRequest(type="I2I", prompt="a fox")) == "image"


def test_missing_mask_names_field() -> None:
    assert _field(GenerationRequest(type="INPAINT", prompt="a fox", image=IMG)) == "mask"


def test_blank_inpaint_target_does_not_count_as_mask() -> None:
    req = GenerationRequest(type="INPAINT", prompt="a fox", image=IMG, inpaint_target="  ")
    assert _field(req) == "mask"


def test_inpaint_with_target_and_no_mask_passes() -> None:
    req = GenerationRequest(type="INPAINT", prompt="a fox", image=IMG, inpaint_target="the hat")
    assert validate_request(req).base.name == "INPAINT"


def test_inpaint_with_mask_passes() -> None:
    req = GenerationRequest(type="INPAINT", prompt="a fox", image=IMG, mask=IMG)
    assert validate_request(req).name == "INPAINT"


def test_upscale_needs_no_prompt() -> None:
    r = validate_request(GenerationRequest(type="UPSCALE", image=IMG))
    assert r.base.name == "UPSCALE"


def test_feature_flag_on_unsupported_type() -> None:
    assert _field(GenerationRequest(type="MAKE", prompt="x", style=True, style_image=IMG)) == "type"


def test_explicit_combined_name_is_trusted() -> None:
    """MAKE_STYLE_POSE names an admin-configured combination: it resolves to MAKE + knobs."""
    req = GenerationRequest(type="MAKE_STYLE_POSE", prompt="x", style_image=IMG, pose_image=IMG)
    resolved = validate_request(req)
    assert resolved.base.name == "MAKE"
    assert resolved.features == {"style", "pose"}
    assert deployment_keys_for(resolved) == ["MAKE_STYLE_POSE", "MAKE"]
    assert _field(GenerationRequest(type="MAKE_STYLE_POSE", prompt="x")) == "style_image"


def test_feature_without_its_image() -> None:
    assert _field(GenerationRequest(type="MAKE_PLUS", prompt="x", style=True)) == "style_image"
    assert _field(GenerationRequest(type="MAKE_PLUS_CANNY", prompt="x")) == "control_image"


def test_flags_and_suffixes_combine_into_canonical_name() -> None:
    req = GenerationRequest(
        type="MAKE_PLUS_POSE", prompt="x", control=True, control_image=IMG, pose_image=IMG
    )
    r = validate_request(req)
    assert r.name == "MAKE_PLUS_CANNY_POSE"
    assert r.features == {"control", "pose"}
    assert deployment_keys_for(r) == ["MAKE_PLUS_CANNY_POSE", "MAKE_PLUS"]


def test_valid_plain_make() -> None:
    r = validate_request(GenerationRequest(type="make", prompt="a fox"))
    assert (r.name, r.features) == ("MAKE", frozenset())
