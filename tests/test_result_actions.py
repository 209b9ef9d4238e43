"""Result actions (handlers/result_actions.py): callback data, which buttons a result gets,
and the follow-up request each action starts from the stored run."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from generation.models import MediaOutput, MediaType, RunRecord
from generation.request import GenerationRequest
from handlers.callbacks import MAX_CALLBACK_BYTES
from handlers.result_actions import (
    VERBS,
    ButtonSpec,
    ResultAction,
    applied_loras,
    follow_up,
    has_deployment,
    params_fields,
    plan_buttons,
    vary_type,
)

RID = "0123456789abcdef0123456789abcdef"
ALL = {"MAKE", "QUICKMAKE", "I2I", "QUICKI2I", "UPSCALE"}


def _run(type_: str = "MAKE", images: int = 1, **request: Any) -> RunRecord:
    outputs = tuple(
        MediaOutput(url=f"https://x/{i}.png", media_type=MediaType.IMAGE) for i in range(images)
    )
    base = {"prompt": "a fox", "seed": 7, "steps": 20, "cfg": 3.5, "width": 1024, "height": 768}
    return RunRecord(
        id=RID,
        user_id=1,
        chat_id=1,
        type=type_,
        request={**base, **request},
        outputs=outputs,
        meta={"prompt": "a fox"},
    )


def _datas(rows: list[list[ButtonSpec]]) -> list[list[str]]:
    return [[b.data.split(":")[1] + b.data.split(":")[2] for b in row] for row in rows]


@given(
    verb=st.sampled_from(VERBS),
    item=st.integers(0, 9),
    rid=st.from_regex(r"[0-9a-f]{32}", fullmatch=True),
)
def test_callback_data_round_trips_within_64_bytes(verb: str, item: int, rid: str) -> None:
    data = ResultAction(verb, rid, item).pack()
    assert len(data.encode()) <= MAX_CALLBACK_BYTES
    assert ResultAction.parse(data) == ResultAction(verb, rid, item)


@pytest.mark.parametrize(
    "data",
    [
        "",
        "x:zz:0:" + RID,
        "x:up:10:" + RID,
        "x:up:0:" + RID.upper(),
        "x:up:0:" + RID + "\n",
        "r:ag:" + RID,
    ],
)
def test_bad_callback_data_does_not_parse(data: str) -> None:
    assert ResultAction.parse(data) is None


def test_pack_refuses_bad_values() -> None:
    for bad in (ResultAction("zz", RID), ResultAction("up", "nope"), ResultAction("up", RID, 10)):
        with pytest.raises(ValueError):
            bad.pack()
    assert ResultAction("up", RID).spends and not ResultAction("pm", RID).spends


def test_single_image_gets_every_action() -> None:
    rows = plan_buttons(_run(), ALL)
    assert _datas(rows) == [["ag0", "up0"], ["vs0", "vx0"], ["pm0", "og0"]]
    keys = [b.label_key for row in rows for b in row]
    assert keys == [
        "actions.again",
        "actions.upscale",
        "actions.vary_subtle",
        "actions.vary_strong",
        "actions.params",
        "actions.original",
    ]


def test_a_batch_names_its_images() -> None:
    rows = plan_buttons(_run(images=4), ALL)
    assert _datas(rows) == [
        ["up0", "up1", "up2", "up3"],
        ["vx0", "vx1", "vx2", "vx3"],
        ["ag0", "pm0"],
    ]
    assert [dict(b.params) for b in rows[0]] == [{"n": 1}, {"n": 2}, {"n": 3}, {"n": 4}]


def test_actions_without_a_deployment_are_not_shown() -> None:
    rows = plan_buttons(_run(), {"MAKE"})  # no UPSCALE, no img2img type
    assert _datas(rows) == [["ag0"], ["pm0", "og0"]]
    rows = plan_buttons(_run(), {"UPSCALE", "QUICKI2I"})  # MAKE itself gone: no Again
    assert _datas(rows) == [["up0"], ["vs0", "vx0"], ["pm0", "og0"]]
    rows = plan_buttons(_run("UPSCALE", image={"bytes": 9}), ALL)  # no upscale of an upscale
    assert _datas(rows) == [["vs0", "vx0"], ["pm0", "og0"]]
    assert _datas(plan_buttons(_run(), ALL, original=False))[-1] == ["pm0"]


def test_runs_with_an_input_photo_are_not_repeated() -> None:
    run = _run("I2I", image={"mime_type": "image/png", "bytes": 100})
    assert all("ag0" not in row for row in _datas(plan_buttons(run, ALL)))
    assert follow_up(ResultAction("ag", RID), run, ALL) is None


def test_deployment_routing_and_vary_types() -> None:
    assert has_deployment("MAKE_PLUS_STYLE", {"make_plus"})
    assert not has_deployment("MAKE", {"QUICKMAKE"})
    assert vary_type("MAKE", ALL) == "I2I"
    assert vary_type("QUICKMAKE", ALL) == "QUICKI2I"
    assert vary_type("MAKE", {"QUICKI2I"}) == "QUICKI2I"
    assert vary_type("ANIMATE", {"I2I"}) == "I2I"
    assert vary_type("MAKE", {"MAKE"}) is None


def test_follow_ups_from_the_stored_run() -> None:
    run = _run(images=2, checkpoint="sdxl.safetensors", negative_prompt="blurry", batch=2)
    again = follow_up(ResultAction("ag", RID), run, ALL)
    assert again is not None and not again.needs_image
    assert again.type == "MAKE" and again.prompt == "a fox" and again.fields["seed"] == -1
    assert again.fields["batch"] == 2 and again.fields["width"] == 1024
    GenerationRequest(type=again.type, prompt=again.prompt, **again.fields)  # valid as is

    up = follow_up(ResultAction("up", RID, 1), run, ALL)
    assert up is not None and (up.type, up.prompt, up.needs_image, up.item) == (
        "UPSCALE",
        "",
        True,
        1,
    )

    subtle = follow_up(ResultAction("vs", RID, 0), run, ALL)
    strong = follow_up(ResultAction("vx", RID, 1), run, ALL)
    assert subtle is not None and strong is not None
    assert (subtle.type, subtle.fields["strength"]) == ("I2I", 0.35)
    assert strong.fields["strength"] == 0.7 and strong.item == 1
    assert subtle.fields["negative_prompt"] == "blurry" and "checkpoint" not in subtle.fields
    GenerationRequest(type=subtle.type, prompt=subtle.prompt, **subtle.fields)

    assert follow_up(ResultAction("up", RID, 5), run, ALL) is None  # no such output
    assert follow_up(ResultAction("up", RID), run, {"MAKE"}) is None  # not deployed
    assert follow_up(ResultAction("pm", RID), run, ALL) is None  # nothing to start


def test_parameters_show_the_loras_actually_applied() -> None:
    run = _run(
        prompt="a fox, pixel art",
        final_prompt="a fox, <lora:PixelArt:0.8> pixel art",
        applied_loras=["PixelArt", "Other"],
    )
    assert applied_loras(run) == ["PixelArt:0.8", "Other:1"]
    fields = params_fields(run)
    assert fields["loras"] == "PixelArt:0.8, Other:1"
    assert fields["prompt"] == "a fox" and fields["negative"] == "—"
    assert params_fields(_run())["loras"] == "—"
