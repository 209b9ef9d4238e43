"""Graph substitution: every External node kind, chains, defaults, titles, refusals."""

from __future__ import annotations

import json

import pytest

from generation.comfyui.graph import (
    GraphError,
    ImageRef,
    analyse,
    image_input_names,
    parse_workflow,
    substitute,
)
from tests.comfyui_support import workflow_file


def ext(cls: str, input_id: str, default: object = None) -> dict:
    inputs: dict = {"input_id": input_id}
    if default is not None:
        inputs["default_value"] = default
    return {"class_type": f"ComfyUIDeployExternal{cls}", "inputs": inputs}


def save(src: str) -> dict:
    return {"class_type": "SaveImage", "inputs": {"images": [src, 0], "filename_prefix": "t"}}


def test_scalars_of_every_kind_are_inlined_and_the_external_nodes_removed() -> None:
    graph = {
        "1": ext("Text", "input_prompt", "default text"),
        "2": ext("TextAny", "input_sampler", "euler"),
        "3": ext("NumberInt", "input_steps", 20),
        "4": ext("Number", "input_cfg", 7.0),
        "5": ext("NumberSlider", "input_strength", 0.5),
        "6": ext("NumberSliderInt", "input_batch", 1),
        "7": ext("Seed", "input_seed", -1),
        "8": ext("Boolean", "input_flag", False),
        "9": ext("Checkpoint", "input_checkpoint", "a.safetensors"),
        "10": ext("Enum", "input_scheduler", "karras"),
        "20": {
            "class_type": "Consumer",
            "inputs": {
                "text": ["1", 0],
                "sampler": ["2", 0],
                "steps": ["3", 0],
                "cfg": ["4", 0],
                "denoise": ["5", 0],
                "batch": ["6", 0],
                "seed": ["7", 0],
                "flag": ["8", 0],
                "ckpt": ["9", 0],
                "scheduler": ["10", 0],
                "also_text": ["1", 0],
            },
        },
        "21": save("20"),
    }
    values = {
        "input_prompt": "a fox",
        "input_sampler": "dpmpp_2m",
        "input_steps": "12",  # coerced
        "input_cfg": 4,
        "input_strength": 0.25,
        "input_batch": 2,
        "input_seed": 123456789,
        "input_flag": "true",
        "input_checkpoint": "sdxl.safetensors",
        "input_scheduler": "normal",
    }
    out = substitute(graph, values)
    assert set(out) == {"20", "21"}
    assert out["20"]["inputs"] == {
        "text": "a fox",
        "sampler": "dpmpp_2m",
        "steps": 12,
        "cfg": 4.0,
        "denoise": 0.25,
        "batch": 2,
        "seed": 123456789,
        "flag": True,
        "ckpt": "sdxl.safetensors",
        "scheduler": "normal",
        "also_text": "a fox",
    }
    assert isinstance(out["20"]["inputs"]["steps"], int)
    assert isinstance(out["20"]["inputs"]["cfg"], float)
    assert graph["20"]["inputs"]["text"] == ["1", 0]  # the stored graph is not mutated


def test_missing_inputs_keep_their_defaults() -> None:
    graph = {
        "1": ext("Text", "input_prompt", "default text"),
        "2": ext("NumberInt", "input_steps", 20),
        "3": {"class_type": "C", "inputs": {"text": ["1", 0], "steps": ["2", 0]}},
        "4": save("3"),
    }
    out = substitute(graph, {"input_prompt": "given"})
    assert out["3"]["inputs"] == {"text": "given", "steps": 20}


def test_an_input_without_value_or_default_is_refused_with_its_node() -> None:
    graph = {"1": ext("Text", "input_prompt"), "2": {"class_type": "C", "inputs": {"t": ["1", 0]}}}
    with pytest.raises(GraphError) as info:
        substitute(graph, {})
    assert info.value.code == "missing_input"
    assert info.value.node_id == "1" and info.value.input_name == "input_prompt"


def test_a_bad_value_is_refused() -> None:
    graph = {
        "1": ext("NumberInt", "input_steps", 3),
        "2": {"class_type": "C", "inputs": {"s": ["1", 0]}},
    }
    with pytest.raises(GraphError) as info:
        substitute(graph, {"input_steps": "many"})
    assert info.value.code == "bad_value"
    with pytest.raises(GraphError):
        substitute(graph, {"input_steps": 2.5})


def test_images_become_load_image_nodes_with_the_same_id() -> None:
    graph = {
        "1": ext("Image", "input_image"),
        "2": ext("ImageAlpha", "input_mask"),
        "3": {"class_type": "ImageToMask", "inputs": {"image": ["2", 0], "channel": "red"}},
        "4": {"class_type": "Mix", "inputs": {"image": ["1", 0], "mask": ["3", 0]}},
        "5": save("4"),
    }
    out = substitute(
        graph,
        {"input_image": ImageRef("bot (1).png"), "input_mask": ImageRef("m.png", "sub")},
    )
    assert out["1"]["class_type"] == "LoadImage" and out["1"]["inputs"] == {"image": "bot (1).png"}
    assert out["2"]["inputs"] == {"image": "sub/m.png"}
    assert out["4"]["inputs"]["image"] == ["1", 0]  # link unchanged: LoadImage output 0
    assert image_input_names(graph) == {"input_image", "input_mask"}


def test_an_image_without_value_falls_back_to_its_default_link() -> None:
    graph = {
        "9": {"class_type": "LoadImage", "inputs": {"image": "example.png"}},
        "1": ext("Image", "input_image", ["9", 0]),
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": save("2"),
    }
    out = substitute(graph, {})
    assert "1" not in out
    assert out["2"]["inputs"]["image"] == ["9", 0]
    with pytest.raises(GraphError):
        substitute({"1": ext("Image", "input_image"), "2": save("1")}, {})
    with pytest.raises(GraphError):  # a string is not an uploaded image
        substitute({"1": ext("Image", "input_image"), "2": save("1")}, {"input_image": "x.png"})


def test_chains_of_external_nodes_resolve() -> None:
    graph = {
        "1": ext("Text", "input_style", "watercolor"),
        "2": ext("Text", "input_prompt", ["1", 0]),  # default: whatever input_style says
        "3": {"class_type": "C", "inputs": {"text": ["2", 0]}},
        "4": save("3"),
    }
    assert substitute(graph, {})["3"]["inputs"]["text"] == "watercolor"
    assert substitute(graph, {"input_style": "ink"})["3"]["inputs"]["text"] == "ink"
    assert substitute(graph, {"input_prompt": "fox"})["3"]["inputs"]["text"] == "fox"
    cyclic = {"1": ext("Text", "a", ["2", 0]), "2": ext("Text", "b", ["1", 0])}
    with pytest.raises(GraphError):
        substitute(cyclic, {})


def test_titles_map_inputs_onto_the_single_widget_of_the_type() -> None:
    graph = {
        "6": {
            "class_type": "CLIPTextEncode",
            "inputs": {"text": "old", "clip": ["4", 1]},
            "_meta": {"title": "input_prompt"},
        },
        "7": {
            "class_type": "KSampler",
            "inputs": {"seed": 1, "steps": 20, "cfg": 7.5, "model": ["4", 0]},
            "_meta": {"title": "input_cfg"},
        },
        "8": {
            "class_type": "LoadImage",
            "inputs": {"image": "example.png", "upload": "image"},
            "_meta": {"title": "input_image"},
        },
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "a"}},
        "9": save("8"),
    }
    result = analyse(parse_workflow(graph))
    by_name = {i.name: i for i in result.inputs}
    assert (
        by_name["input_prompt"].via_title
        and by_name["input_prompt"].consumers[0].input_name == "text"
    )
    assert by_name["input_image"].consumers[0].input_name == "image"
    out = substitute(
        graph, {"input_prompt": "a fox", "input_cfg": 3, "input_image": ImageRef("u.png")}
    )
    assert out["6"]["inputs"]["text"] == "a fox"
    assert out["7"]["inputs"]["cfg"] == 3.0 and out["7"]["inputs"]["steps"] == 20
    assert out["8"]["inputs"]["image"] == "u.png"
    # not given: the widget keeps its value
    assert substitute(graph, {})["6"]["inputs"]["text"] == "old"


def test_an_ambiguous_title_is_a_problem() -> None:
    graph = {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": 5, "height": 6},
            "_meta": {"title": "input_steps"},
        },
        "2": save("1"),
    }
    assert any(p.startswith("title_widget_ambiguous:1") for p in analyse(graph).problems)


def test_the_concrete_seed_reaches_literal_seed_widgets_when_there_is_no_seed_input() -> None:
    graph = {
        "1": {"class_type": "KSampler", "inputs": {"seed": 0, "noise_seed": 3}},
        "2": save("1"),
    }
    out = substitute(graph, {}, seed=987)
    assert out["1"]["inputs"] == {"seed": 987, "noise_seed": 987}
    with_input = {
        **graph,
        "3": ext("Seed", "input_seed", 1),
        "1": {"class_type": "KSampler", "inputs": {"seed": ["3", 0]}},
    }
    assert substitute(with_input, {"input_seed": 42}, seed=42)["1"]["inputs"]["seed"] == 42


def test_ui_format_is_recognised_and_explained() -> None:
    ui = {"last_node_id": 9, "nodes": [{"id": 1, "type": "KSampler"}], "links": [], "version": 0.4}
    with pytest.raises(GraphError) as info:
        parse_workflow(json.dumps(ui))
    assert info.value.code == "ui_format" and "API" in info.value.message


@pytest.mark.parametrize(
    ("document", "code"),
    [
        ("{not json", "not_json"),
        ("[]", "not_api_format"),
        ('{"1": {"inputs": {}}}', "not_api_format"),
        ("{}", "not_api_format"),
    ],
)
def test_other_documents_are_refused(document: str, code: str) -> None:
    with pytest.raises(GraphError) as info:
        parse_workflow(document)
    assert info.value.code == code


def test_a_saved_prompt_body_is_accepted() -> None:
    graph = parse_workflow(json.dumps({"prompt": {"1": save("1")["inputs"] and save("2")}}))
    assert graph["1"]["class_type"] == "SaveImage"


def test_analysis_names_inputs_the_node_each_feeds_and_problems() -> None:
    graph = parse_workflow(workflow_file("inpaint_sdxl"))
    result = analyse(graph)
    by_name = {i.name: i for i in result.inputs}
    assert set(by_name) >= {
        "input_checkpoint",
        "input_prompt",
        "input_negative",
        "input_seed",
        "input_steps",
        "input_cfg",
        "input_image",
        "input_mask",
        "input_strength",
    }
    assert {c.class_type for c in by_name["input_prompt"].consumers} == {"CLIPTextEncode"}
    assert by_name["input_checkpoint"].default == "sd_xl_base_1.0.safetensors"
    assert by_name["input_image"].kind == "image"
    assert result.ok, result.problems
    info = {"SaveImage": {"output_node": True}, "KSampler": {}}
    checked = analyse(graph, object_info=info)
    assert "unknown_class:CLIPTextEncode" in checked.problems
    assert "unknown_class:LoadImage" in checked.problems  # images need LoadImage
    no_output = analyse({"1": {"class_type": "EmptyImage", "inputs": {}}})
    assert "no_output_node" in no_output.problems
    dangling = analyse({"1": save("7")})
    assert "dangling_link:1.images->7" in dangling.problems


@pytest.mark.parametrize(
    "name",
    [
        "make_sdxl",
        "i2i_sdxl",
        "inpaint_sdxl",
        "model-free/make",
        "model-free/i2i",
        "model-free/inpaint",
    ],
)
def test_the_documented_workflows_substitute_to_plain_comfyui(name: str) -> None:
    graph = parse_workflow(workflow_file(name))
    values = {
        "input_prompt": "p",
        "input_negative": "n",
        "input_seed": 7,
        "input_width": 512,
        "input_height": 512,
        "input_steps": 4,
        "input_cfg": 5.0,
        "input_strength": 0.5,
        "input_image": ImageRef("a.png"),
        "input_mask": ImageRef("b.png"),
    }
    out = substitute(graph, values, seed=7)
    assert not any(n["class_type"].startswith("ComfyUIDeployExternal") for n in out.values())
    for node in out.values():
        for value in node["inputs"].values():
            if isinstance(value, list) and len(value) == 2 and isinstance(value[1], int):
                assert value[0] in out
