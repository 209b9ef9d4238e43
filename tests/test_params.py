"""Inline prompt parameters (generation/params.py): a table of well-formed and malformed lines,
the size arithmetic of ``--ar``, merging into request fields, and properties."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from generation.errors import InvalidInputError
from generation.params import (
    MAX_BATCH,
    PARAMS,
    InlineParams,
    ParamError,
    help_lines,
    merge_negative,
    parse_inline_params,
    size_for_ratio,
)
from generation.request import DEFAULT_NEGATIVE_PROMPT, MAX_SEED, GenerationRequest

# (text, expected prompt, expected attributes) — well-formed lines.
OK_CASES: list[tuple[str, str, dict[str, Any]]] = [
    ("a cat", "a cat", {}),
    ("", "", {}),
    ("a cat --ar 16:9", "a cat", {"aspect": (16.0, 9.0)}),
    ("a cat --AR 16:9", "a cat", {"aspect": (16.0, 9.0)}),
    ("a cat --aspect 2:3", "a cat", {"aspect": (2.0, 3.0)}),
    ("a cat --ar 2.39:1", "a cat", {"aspect": (2.39, 1.0)}),
    ("a cat --ar 16x9", "a cat", {"aspect": (16.0, 9.0)}),
    ("a cat —ar 3:2", "a cat", {"aspect": (3.0, 2.0)}),  # em dash, as phones type it
    ("a cat –seed 7", "a cat", {"seed": 7}),  # en dash
    ("a cat --seed 0", "a cat", {"seed": 0}),
    (f"a cat --seed {MAX_SEED}", "a cat", {"seed": MAX_SEED}),
    ("a cat --steps 1", "a cat", {"steps": 1}),
    ("a cat --steps 150", "a cat", {"steps": 150}),
    ("a cat --cfg 7.5", "a cat", {"cfg": 7.5}),
    ("a cat --cfg 7,5", "a cat", {"cfg": 7.5}),  # decimal comma
    ("a cat --cfg 0", "a cat", {"cfg": 0.0}),
    ("a cat --strength 0.35", "a cat", {"strength": 0.35}),
    ("a cat --batch 4", "a cat", {"batch": 4}),
    (
        "a cat --checkpoint sdxl_base-1.0.safetensors",
        "a cat",
        {"checkpoint": "sdxl_base-1.0.safetensors"},
    ),
    ("a cat --no text, watermark", "a cat", {"negative": "text, watermark"}),
    ("a cat --no blurry --seed 3", "a cat", {"negative": "blurry", "seed": 3}),
    ("--seed 3 a cat on a mat", "a cat on a mat", {"seed": 3}),
    ("a cat --seed 3 on a mat", "a cat on a mat", {"seed": 3}),
    ("a cat --style", "a cat", {"references": frozenset({"style"})}),
    ("--pose --canny a dancer", "a dancer", {"references": frozenset({"pose", "control"})}),
    ("a -- b", "a -- b", {}),  # a bare double dash is text
    ("a well-known cat - dog", "a well-known cat - dog", {}),
    ("pre–war house", "pre–war house", {}),  # a dash inside a word is text
    ("cat   --seed 5   dog", "cat dog", {"seed": 5}),
    ("line one\nline two --steps 9", "line one\nline two", {"steps": 9}),
    (
        "knight --ar 9:16 --seed 1 --steps 20 --cfg 4 --batch 2 --no red --checkpoint x",
        "knight",
        {
            "aspect": (9.0, 16.0),
            "seed": 1,
            "steps": 20,
            "cfg": 4.0,
            "batch": 2,
            "negative": "red",
            "checkpoint": "x",
        },
    ),
]

# (text, parameter named, reason) — malformed lines.
BAD_CASES: list[tuple[str, str, str]] = [
    ("a cat --ar 0:1", "ar", "range"),
    ("a cat --ar 1:0", "ar", "range"),
    ("a cat --ar 9:1", "ar", "range"),
    ("a cat --ar wide", "ar", "invalid"),
    ("a cat --ar 16:", "ar", "invalid"),
    ("a cat --ar", "ar", "missing"),
    ("a cat --seed abc", "seed", "invalid"),
    ("a cat --seed 1.5", "seed", "invalid"),
    ("a cat --seed -1", "seed", "range"),
    (f"a cat --seed {MAX_SEED + 1}", "seed", "range"),
    ("a cat --steps", "steps", "missing"),
    ("a cat --steps --seed 4", "steps", "missing"),
    ("a cat --steps 0", "steps", "range"),
    ("a cat --steps 151", "steps", "range"),
    ("a cat --cfg high", "cfg", "invalid"),
    ("a cat --cfg 31", "cfg", "range"),
    ("a cat --strength 1.5", "strength", "range"),
    ("a cat --batch 0", "batch", "range"),
    ("a cat --batch 5", "batch", "range"),
    ("a cat --batch two", "batch", "invalid"),
    ("a cat --no", "no", "missing"),
    ("a cat --no --seed 1", "no", "missing"),
    ("a cat --checkpoint", "checkpoint", "missing"),
    ("a cat --checkpoint <script>", "checkpoint", "invalid"),
    ("a cat --v 6", "v", "unknown"),
    ("a cat —quality 2", "quality", "unknown"),
    ("a cat --seed 1 --seed 2", "seed", "duplicate"),
    ("a cat --ar 1:1 —ar 2:3", "ar", "duplicate"),
    ("a cat --style --style", "style", "duplicate"),
]


@pytest.mark.parametrize(("text", "prompt", "expected"), OK_CASES)
def test_well_formed_lines(text: str, prompt: str, expected: dict[str, Any]) -> None:
    parsed = parse_inline_params(text)
    assert parsed.prompt == prompt
    for name, value in expected.items():
        got = getattr(parsed, name)
        if isinstance(value, float):
            assert got == pytest.approx(value)
        else:
            assert got == value, name
    untouched = {"aspect", "seed", "steps", "cfg", "strength", "negative", "batch", "checkpoint"}
    for name in untouched - set(expected):
        assert getattr(parsed, name) is None, name


@pytest.mark.parametrize(("text", "param", "reason"), BAD_CASES)
def test_malformed_lines_name_the_parameter(text: str, param: str, reason: str) -> None:
    with pytest.raises(ParamError) as info:
        parse_inline_params(text)
    err = info.value
    assert (err.param, err.reason) == (param, reason)
    assert isinstance(err, InvalidInputError) and err.field == "param"
    args = err.format_args()
    assert args["param"] == f"--{param}"
    if reason == "range":
        assert args["range"], "an out-of-range error shows the range"
    assert err.locale_key.startswith("params.error.")


def test_table_is_large_enough() -> None:
    assert len(OK_CASES) + len(BAD_CASES) >= 30


def test_strength_refused_where_no_image_is_taken() -> None:
    with pytest.raises(ParamError) as info:
        parse_inline_params("a cat --strength 0.5", allow_image_params=False)
    assert info.value.reason == "unsupported"
    assert parse_inline_params("a cat --seed 1", allow_image_params=False).seed == 1


def test_range_texts() -> None:
    assert PARAMS["steps"].range_text() == "1–150"
    assert PARAMS["batch"].range_text() == f"1–{MAX_BATCH}"
    assert PARAMS["ar"].range_text() == "1:8–8:1"
    assert PARAMS["strength"].range_text() == "0–1"
    flags = [flag for flag, _ in help_lines()]
    assert flags[:2] == ["--ar", "--seed"] and "--canny" in flags


# --------------------------------------------------------------------------- sizes


@pytest.mark.parametrize(
    ("area", "ratio", "multiple", "expected"),
    [
        (1024 * 1024, (1, 1), 8, (1024, 1024)),
        (1024 * 1024, (16, 9), 8, (1368, 768)),
        (1024 * 1024, (9, 16), 8, (768, 1368)),
        (1024 * 1024, (2, 3), 64, (832, 1280)),
        (512 * 512, (4, 3), 8, (592, 440)),
        (2048 * 2048, (8, 1), 8, (2048, 256)),  # the long side hits the limit: scaled down
        (64 * 64, (8, 1), 8, (512, 64)),  # the short side at least the minimum
    ],
)
def test_size_for_ratio(
    area: int, ratio: tuple[int, int], multiple: int, expected: tuple[int, int]
) -> None:
    assert size_for_ratio(area, ratio, multiple=multiple) == expected


@given(
    side_w=st.integers(64, 2048),
    side_h=st.integers(64, 2048),
    rw=st.integers(1, 8),
    rh=st.integers(1, 8),
    multiple=st.sampled_from([8, 64]),
)
@settings(max_examples=300, deadline=None)
def test_sizes_are_on_the_grid_within_limits_and_near_the_ratio(
    side_w: int, side_h: int, rw: int, rh: int, multiple: int
) -> None:
    width, height = size_for_ratio(side_w * side_h, (rw, rh), multiple=multiple)
    assert width % multiple == 0 and height % multiple == 0
    assert 64 <= width <= 2048 and 64 <= height <= 2048
    # GenerationRequest accepts the result as it is.
    GenerationRequest(prompt="x", width=width, height=height)
    exact_w = math.sqrt(side_w * side_h * rw / rh)
    exact_h = math.sqrt(side_w * side_h * rh / rw)
    if 64 < min(exact_w, exact_h) and max(exact_w, exact_h) < 2048:  # not pinned to a limit
        grid = multiple / min(width, height)  # one grid step, relative to the short side
        assert math.isclose(width / height, rw / rh, rel_tol=grid + 0.05)
        assert math.isclose(width * height, side_w * side_h, rel_tol=2 * grid + 0.1)


def test_apply_merges_into_request_fields() -> None:
    parsed = parse_inline_params("a fox --ar 16:9 --seed 9 --no snow --style --batch 2")
    fields = parsed.apply({"width": 1024, "height": 1024, "steps": 25, "negative_prompt": "rain"})
    assert fields == {
        "prompt": "a fox",
        "width": 1368,
        "height": 768,
        "steps": 25,
        "seed": 9,
        "batch": 2,
        "negative_prompt": "rain, snow",
        "style": True,
    }
    request = GenerationRequest(**fields, style_image=None)
    assert request.negative_prompt == "rain, snow"
    no_settings = parse_inline_params("x --no snow").apply({})
    assert no_settings["negative_prompt"] == f"{DEFAULT_NEGATIVE_PROMPT}, snow"
    assert parse_inline_params("x --ar 2:3").apply({}, multiple=64)["width"] % 64 == 0


def test_merge_negative_with_an_empty_negative() -> None:
    assert merge_negative("", "snow, ") == "snow"
    assert merge_negative(None, "snow").endswith(", snow")


def test_param_error_validates_its_reason() -> None:
    with pytest.raises(ValueError):
        ParamError("seed", "bogus")
    assert ParamError("checkpoint", "invalid").locale_key == "params.error.invalid_value"


# --------------------------------------------------------------------------- properties

_WORDS = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cs", "Cc", "Zl", "Zp")),
    min_size=1,
    max_size=12,
).filter(lambda w: w.strip() == w and w and not w.startswith(("-", "—", "–", "−", "―")))


@given(st.lists(_WORDS, max_size=12))
@settings(max_examples=300, deadline=None)
def test_text_without_parameters_is_kept(words: list[str]) -> None:
    text = " ".join(words)
    assert parse_inline_params(text).prompt == " ".join(text.split())


@given(
    prompt=st.lists(_WORDS, max_size=6),
    seed=st.none() | st.integers(0, MAX_SEED),
    steps=st.none() | st.integers(1, 150),
    batch=st.none() | st.integers(1, MAX_BATCH),
    ratio=st.none() | st.tuples(st.integers(1, 8), st.integers(1, 8)),
    dash=st.sampled_from(["--", "—", "–"]),
    data=st.data(),
)
@settings(max_examples=300, deadline=None)
def test_rendered_parameters_round_trip(
    prompt: list[str],
    seed: int | None,
    steps: int | None,
    batch: int | None,
    ratio: tuple[int, int] | None,
    dash: str,
    data: st.DataObject,
) -> None:
    parts = []
    if seed is not None:
        parts.append(f"{dash}seed {seed}")
    if steps is not None:
        parts.append(f"{dash}steps {steps}")
    if batch is not None:
        parts.append(f"{dash}batch {batch}")
    if ratio is not None:
        parts.append(f"{dash}ar {ratio[0]}:{ratio[1]}")
    order = data.draw(st.permutations(parts))
    text = " ".join([*prompt, *order])
    parsed = parse_inline_params(text)
    assert parsed.prompt == " ".join(" ".join(prompt).split())
    assert (parsed.seed, parsed.steps, parsed.batch) == (seed, steps, batch)
    assert parsed.aspect == (None if ratio is None else (float(ratio[0]), float(ratio[1])))


@given(st.text(max_size=80))
@settings(max_examples=500, deadline=None)
def test_any_text_parses_or_raises_param_error(text: str) -> None:
    try:
        parsed = parse_inline_params(text)
    except ParamError as exc:
        assert exc.param and exc.reason in ParamError.REASONS
    else:
        assert isinstance(parsed, InlineParams)
        assert "--seed" not in parsed.prompt.split()
