"""The workflow contract (generation/contract.py, docs/workflow-contract.md) says what the
prompt builder really sends: for every type, a request with everything set builds exactly the
contract's inputs; a request with nothing optional builds only "always" inputs; the required
groups are what validation and the builder refuse without; the doc file is current."""

from __future__ import annotations

from pathlib import Path

import pytest

from generation.contract import (
    contract_for,
    missing_inputs,
    render_markdown,
    required_inputs,
)
from generation.errors import InvalidInputError
from generation.prompt_builder import FEATURE_KNOBS, PromptBuilder
from generation.request import GenerationRequest, InputImage
from generation.types import GENERATION_TYPES, validate_request

ROOT = Path(__file__).resolve().parent.parent
IMG = InputImage(data=b"\x89PNG\r\n\x1a\nfake")
URI = "data:image/png;base64,AAAA"
ALL_IMAGES = {name: URI for name in ("input_image", "input_mask")} | {
    knob[0]: URI for knob in FEATURE_KNOBS.values()
}


def _full_request(type_name: str) -> GenerationRequest:
    spec = GENERATION_TYPES[type_name]
    features = {f: True for f in ("control", "style", "pose") if spec.supports(f)}
    images = {f"{f}_image": IMG for f in features}
    return GenerationRequest(
        type=type_name,
        prompt="a fox",
        seed=5,
        checkpoint="flux-dev" if spec.family == "FLUX" else "sdxl-base",
        image=IMG,
        mask=IMG,
        inpaint_target="the sky",
        **features,
        **images,
    )


def _built(request: GenerationRequest, images: dict[str, str]) -> dict[str, object]:
    resolved = validate_request(request)
    return (
        PromptBuilder()
        .build(request, resolved, deployment_inputs=None, loras=[], balance=0, image_values=images)
        .inputs
    )


@pytest.mark.parametrize("type_name", list(GENERATION_TYPES))
def test_a_full_request_sends_exactly_the_contract(type_name: str) -> None:
    names = {i.name for i in contract_for(type_name).inputs}
    assert set(_built(_full_request(type_name), ALL_IMAGES)) == names


@pytest.mark.parametrize("type_name", list(GENERATION_TYPES))
def test_a_minimal_request_sends_only_what_is_always_sent(type_name: str) -> None:
    spec = GENERATION_TYPES[type_name]
    request = GenerationRequest(
        type=type_name,
        prompt="a fox" if spec.requires_prompt else "",
        seed=5,
        image=IMG if spec.requires_image else None,
        mask=IMG if spec.requires_mask else None,
    )
    sent = set(_built(request, {"input_image": URI, "input_mask": URI}))
    for spec_input in contract_for(type_name).inputs:
        if spec_input.when.startswith("always"):
            assert spec_input.name in sent, spec_input
    optional = {i.name for i in contract_for(type_name).inputs if not i.when.startswith("always")}
    assert sent & optional <= {"input_mask"}  # the mask is "when sent", and it was sent here


@pytest.mark.parametrize("type_name", list(GENERATION_TYPES))
def test_each_required_input_is_really_needed(type_name: str) -> None:
    for group in required_inputs(type_name):
        request = _full_request(type_name)
        images = dict(ALL_IMAGES)
        if "input_prompt" in group:
            with pytest.raises(InvalidInputError):
                validate_request(request.model_copy(update={"prompt": ""}))
            continue
        for name in group:
            images.pop(name, None)
        update = {"inpaint_target": None} if "input_inpaint_target" in group else {}
        with pytest.raises(InvalidInputError):
            _built(request.model_copy(update=update), images)


def test_required_groups() -> None:
    assert required_inputs("MAKE") == (("input_prompt",),)
    assert required_inputs("I2I") == (("input_prompt",), ("input_image",))
    assert required_inputs("UPSCALE") == (("input_image",),)
    assert ("input_mask", "input_inpaint_target") in required_inputs("INPAINT")
    assert ("input_control_image",) in required_inputs("MAKE_PLUS_CANNY")
    assert required_inputs("MY_OWN_TYPE") == (("input_prompt",),)
    assert missing_inputs("I2I", ["input_prompt", "input_seed"]) == ["input_image"]
    assert missing_inputs("INPAINT", ["input_prompt", "input_image", "input_inpaint_target"]) == []


def test_ranges_and_defaults_come_from_the_request_model() -> None:
    by_name = {i.name: i for i in contract_for("I2I").inputs}
    fields = GenerationRequest.model_fields
    assert by_name["input_steps"].default == str(fields["steps"].default) == "30"
    assert by_name["input_steps"].range == "1–150"
    assert by_name["input_strength"].default == "0.6"
    assert by_name["input_width"].range == "64–2048"


def test_the_doc_is_current() -> None:
    text = (ROOT / "docs" / "workflow-contract.md").read_text(encoding="utf-8")
    assert text == render_markdown(), (
        "docs/workflow-contract.md is stale: python -m generation.contract > "
        "docs/workflow-contract.md"
    )
