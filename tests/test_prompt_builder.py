"""PromptBuilder: inputs per template, deployment filtering, knobs, seeds, LoRAs."""

from __future__ import annotations

import pytest

from generation.errors import InvalidInputError
from generation.models import LoraEntry
from generation.prompt_builder import FEATURE_KNOBS, PromptBuilder
from generation.request import DEFAULT_NEGATIVE_PROMPT, GenerationRequest, InputImage
from generation.types import resolve_type, validate_request

IMG = InputImage(data=b"\x89PNG\r\n\x1a\nfake")
URI = "data:image/png;base64,AAAA"
MASK_URI = "data:image/png;base64,BBBB"
CAT = LoraEntry("catlora", ("cat",), default_weight=0.7)
SDXL_ONLY = LoraEntry("xlonly", ("fox",), family="SDXL")

builder = PromptBuilder()


def _build(request: GenerationRequest, *, deployment_inputs=None, loras=(), balance=0, images=None):
    resolved = validate_request(request)
    return builder.build(
        request,
        resolved,
        deployment_inputs=deployment_inputs,
        loras=list(loras),
        balance=balance,
        image_values=images or {},
    )


def test_make_inputs() -> None:
    req = GenerationRequest(type="MAKE", prompt="a cat in snow", seed=42)
    built = _build(req, loras=[CAT])
    assert built.inputs == {
        "input_prompt": "a <lora:catlora:0.7> cat in snow",
        "input_negative": DEFAULT_NEGATIVE_PROMPT,
        "input_seed": 42,
        "input_width": 1024,
        "input_height": 1024,
        "input_steps": 30,
        "input_cfg": 7.0,
        "input_batch": 1,
        "input_strength": 1.0,
    }
    assert built.final_prompt == "a <lora:catlora:0.7> cat in snow"
    assert built.applied_loras == ("catlora",)


def test_make_ignores_stray_image_and_keeps_custom_values() -> None:
    req = GenerationRequest(
        type="QUICKMAKE",
        prompt="x",
        seed=1,
        negative_prompt="",
        width=512,
        height=768,
        steps=20,
        cfg=5.5,
        batch=2,
        checkpoint="zavychromaxl_v60",
    )
    inputs = _build(req, images={"input_image": URI}).inputs
    assert "input_image" not in inputs
    assert inputs["input_negative"] == ""
    assert (inputs["input_width"], inputs["input_height"], inputs["input_steps"]) == (512, 768, 20)
    assert (inputs["input_cfg"], inputs["input_batch"]) == (5.5, 2)
    assert inputs["input_checkpoint"] == "zavychromaxl_v60"


def test_i2i_inputs() -> None:
    req = GenerationRequest(type="I2I", prompt="oil painting", image=IMG, seed=7, strength=0.45)
    inputs = _build(req, images={"input_image": URI}).inputs
    assert inputs["input_image"] == URI
    assert inputs["input_strength"] == 0.45
    assert inputs["input_prompt"] == "oil painting"


def test_i2i_without_prepared_image_fails() -> None:
    req = GenerationRequest(type="I2I", prompt="x", image=IMG, seed=7)
    with pytest.raises(InvalidInputError) as info:
        _build(req)
    assert info.value.field == "image"


def test_inpaint_with_mask() -> None:
    req = GenerationRequest(type="INPAINT", prompt="a hat", image=IMG, mask=IMG, seed=3)
    inputs = _build(req, images={"input_image": URI, "input_mask": MASK_URI}).inputs
    assert inputs["input_image"] == URI
    assert inputs["input_mask"] == MASK_URI
    assert "input_inpaint_target" not in inputs
    assert inputs["input_strength"] == 0.6


def test_inpaint_with_text_target() -> None:
    req = GenerationRequest(
        type="INPAINT", prompt="a hat", image=IMG, inpaint_target="the cap", seed=3
    )
    inputs = _build(req, images={"input_image": URI}).inputs
    assert inputs["input_inpaint_target"] == "the cap"
    assert "input_mask" not in inputs


def test_upscale_without_prompt() -> None:
    req = GenerationRequest(type="UPSCALE", image=IMG, seed=9)
    built = _build(req, images={"input_image": URI})
    assert built.inputs == {"input_image": URI, "input_seed": 9}
    assert built.final_prompt == ""


def test_filter_by_deployment_inputs_keeps_prompt_and_negative() -> None:
    req = GenerationRequest(type="I2I", prompt="x", image=IMG, seed=5, checkpoint="flux-dev")
    inputs = _build(
        req,
        deployment_inputs=["input_image", "input_seed", "input_unknown"],
        images={"input_image": URI},
    ).inputs
    assert set(inputs) == {"input_image", "input_seed", "input_prompt", "input_negative"}


def test_empty_deployment_input_list_still_sends_prompt() -> None:
    req = GenerationRequest(type="MAKE", prompt="x", seed=5)
    assert set(_build(req, deployment_inputs=[]).inputs) == {"input_prompt", "input_negative"}


def test_plus_knobs_on_and_off() -> None:
    req = GenerationRequest(
        type="MAKE_PLUS",
        prompt="x",
        seed=5,
        style=True,
        style_image=IMG,
        pose=True,
        pose_image=IMG,
    )
    images = {"input_style_image": "https://files.example/s.png", "input_pose_image": URI}
    inputs = _build(req, images=images).inputs
    assert inputs["input_ipadapter_weight"] == 1
    assert (inputs["input_ipadapter_start"], inputs["input_ipadapter_end"]) == (0, 1)
    assert inputs["input_style_image"] == "https://files.example/s.png"
    assert (
        inputs["input_pose_strength"],
        inputs["input_pose_start"],
        inputs["input_pose_end"],
    ) == (
        1,
        0,
        1,
    )
    assert inputs["input_pose_image"] == URI
    # control is off: zeros and no image key
    assert inputs["input_apply_canny_strength"] == 0
    assert inputs["input_apply_canny_start_percent"] == 0
    assert inputs["input_apply_canny_end_percent"] == 0
    assert "input_control_image" not in inputs
    assert inputs["input_strength"] == 1.0
    assert "input_image" not in inputs


def test_plus_all_off_when_no_features() -> None:
    req = GenerationRequest(type="MAKE_PLUS", prompt="x", seed=5)
    inputs = _build(req).inputs
    for image_key, strength, start, end in FEATURE_KNOBS.values():
        assert image_key not in inputs
        assert inputs[strength] == inputs[start] == inputs[end] == 0


def test_plus_feature_by_suffix() -> None:
    req = GenerationRequest(type="MAKE_PLUS_CANNY", prompt="x", seed=5, control_image=IMG)
    inputs = _build(req, images={"input_control_image": URI}).inputs
    assert inputs["input_apply_canny_strength"] == 1
    assert inputs["input_apply_canny_end_percent"] == 1
    assert inputs["input_control_image"] == URI


def test_i2i_plus_keeps_image_and_strength() -> None:
    req = GenerationRequest(type="I2I_PLUS", prompt="x", image=IMG, seed=5, strength=0.3)
    inputs = _build(req, images={"input_image": URI}).inputs
    assert inputs["input_image"] == URI and inputs["input_strength"] == 0.3
    assert inputs["input_pose_strength"] == 0


def test_seed_must_be_concrete() -> None:
    req = GenerationRequest(type="MAKE", prompt="x")
    with pytest.raises(ValueError, match="seed"):
        _build(req)


def test_default_builder_for_unknown_type() -> None:
    req = GenerationRequest(type="RMBG", prompt="x", image=IMG, seed=11, inpaint_target="bg")
    resolved = resolve_type("RMBG")
    assert resolved.base.template == "default"
    built = builder.build(
        req,
        resolved,
        deployment_inputs=None,
        loras=[],
        balance=None,
        image_values={"input_image": URI, "input_mask": MASK_URI},
    )
    assert built.inputs["input_image"] == URI
    assert built.inputs["input_mask"] == MASK_URI
    assert built.inputs["input_inpaint_target"] == "bg"
    assert built.inputs["input_strength"] == 0.6
    assert built.inputs["input_seed"] == 11


@pytest.mark.parametrize(
    "url",
    [
        "https://api.telegram.org/file/bot123:ABC/photos/file_1.jpg",
        "http://127.0.0.1:8081/file/bot123456:AAbb-cc/photos/x.jpg",
    ],
)
def test_telegram_file_url_refused(url: str) -> None:
    req = GenerationRequest(type="I2I", prompt="x", image=IMG, seed=1)
    with pytest.raises(InvalidInputError) as info:
        _build(req, images={"input_image": url})
    assert info.value.field == "image"


def test_lora_family_from_checkpoint() -> None:
    req = GenerationRequest(type="QUICKMAKE", prompt="a fox", seed=1, checkpoint="ponydiffusionv6")
    assert _build(req, loras=[SDXL_ONLY]).applied_loras == ()  # PONYXL ≠ SDXL
    req = GenerationRequest(type="QUICKMAKE", prompt="a fox", seed=1, checkpoint="animagineXLV31")
    assert _build(req, loras=[SDXL_ONLY]).applied_loras == ("xlonly",)


def test_lora_family_from_type_when_checkpoint_unknown() -> None:
    req = GenerationRequest(type="MAKE", prompt="a fox", seed=1)
    assert _build(req, loras=[SDXL_ONLY]).applied_loras == ()  # MAKE is FLUX
    req = GenerationRequest(type="QUICKMAKE", prompt="a fox", seed=1)
    assert _build(req, loras=[SDXL_ONLY]).applied_loras == ("xlonly",)


def test_flux_type_drops_foreign_checkpoint() -> None:
    req = GenerationRequest(type="MAKE", prompt="a fox", seed=1, checkpoint="zavychromaxl_v60")
    built = _build(req, loras=[SDXL_ONLY])
    assert "input_checkpoint" not in built.inputs
    assert built.applied_loras == ()


def test_lora_gated_by_balance() -> None:
    gated = LoraEntry("rich", ("cat",), min_balance=100)
    req = GenerationRequest(type="MAKE", prompt="a cat", seed=1)
    assert _build(req, loras=[gated], balance=99).inputs["input_prompt"] == "a cat"
    assert _build(req, loras=[gated], balance=100).inputs["input_prompt"] == "a <lora:rich:1> cat"


def test_combined_name_on_plain_base_sets_knobs() -> None:
    from generation.types import validate_request

    req = GenerationRequest(
        type="MAKE_STYLE_POSE", prompt="a fox", seed=1, style_image=IMG, pose_image=IMG
    )
    resolved = validate_request(req)
    built = PromptBuilder().build(
        req,
        resolved,
        deployment_inputs=None,
        loras=[],
        balance=0,
        image_values={"input_style_image": "data:image/png;base64,AA", "input_pose_image": "u"},
    )
    assert built.inputs["input_ipadapter_weight"] == 1
    assert built.inputs["input_pose_strength"] == 1
    assert built.inputs["input_apply_canny_strength"] == 0
    assert "input_control_image" not in built.inputs
