"""Admin-added types (generation/custom_types.py): which names become commands, their specs
and the default builder."""

from __future__ import annotations

from generation.custom_types import (
    CustomTypeRegistry,
    command_for,
    custom_spec,
    custom_types,
    is_builtin,
)
from generation.prompt_builder import PromptBuilder
from generation.request import GenerationRequest
from generation.types import resolve_type


def test_builtin_and_combined_names_are_not_custom() -> None:
    assert is_builtin("MAKE") and is_builtin("upscale") and is_builtin("MAKE_PLUS_STYLE_POSE")
    assert not is_builtin("ANIMATE") and not is_builtin("MAKE_VIDEO")
    found = custom_types(["MAKE", "MAKE_PLUS_CANNY", "ANIMATE", "animate", "VIDEO_2"])
    assert [(t.name, t.command, t.takes_image) for t in found] == [
        ("ANIMATE", "animate", False),
        ("VIDEO_2", "video_2", False),
    ]


def test_reserved_and_invalid_command_names_are_left_out() -> None:
    found = custom_types(["HELP", "MY-TYPE", "A" * 33, "START", "GIF"], reserved_commands=["help"])
    assert [t.command for t in found] == ["gif", "start"]
    assert command_for("MY-TYPE") is None and command_for("X1") == "x1"


def test_image_taking_types() -> None:
    found = custom_types(["ANIMATE", "CLIP"], {"animate": "image"})
    by_name = {t.name: t for t in found}
    assert by_name["ANIMATE"].takes_image and by_name["ANIMATE"].spec.requires_image
    assert not by_name["CLIP"].spec.requires_image
    assert by_name["ANIMATE"].spec.template == "default"
    assert custom_spec("clip").name == "CLIP"


def test_registry_reports_command_changes() -> None:
    registry = CustomTypeRegistry(reserved_commands=["make", "help"])
    assert registry.refresh(["MAKE", "ANIMATE"])
    assert registry.commands() == {"animate": "ANIMATE"}
    assert not registry.refresh(["ANIMATE", "MAKE"])  # same commands
    assert not registry.refresh(["ANIMATE"], {"ANIMATE": "image"})  # only the input kind changed
    custom = registry.by_command("/Animate")
    assert custom is not None and custom.takes_image
    assert registry.spec("animate") is custom.spec
    assert registry.refresh([])
    assert registry.all() == [] and registry.get("ANIMATE") is None


def test_default_builder_sends_what_the_request_has() -> None:
    request = GenerationRequest(type="ANIMATE", prompt="a dancing cat", seed=5, batch=2)
    resolved = resolve_type("ANIMATE")
    built = PromptBuilder().build(
        request,
        resolved,
        deployment_inputs=["input_prompt", "input_seed", "input_image", "input_frames"],
        loras=[],
        balance=None,
        image_values={"input_image": "data:image/png;base64,AAAA"},
    )
    assert built.inputs["input_prompt"] == "a dancing cat"
    assert built.inputs["input_seed"] == 5
    assert built.inputs["input_image"].startswith("data:image/png")
    assert "input_batch" not in built.inputs  # not declared by the deployment
