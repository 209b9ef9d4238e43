"""LoRA trigger insertion: one table of cases plus error handling and checkpoint families."""

from __future__ import annotations

import logging

import pytest

from generation.loras import apply_lora_triggers, checkpoint_family, format_weight
from generation.models import LoraEntry

PEPE = LoraEntry("pepe", ("pepe the frog", "pepe"), default_weight=0.8, family="SDXL")
CAT = LoraEntry("catlora", ("cat",), family=None)
FROG = LoraEntry("froggy", ("frog",))
GATED = LoraEntry("gated", ("psyduck",), min_balance=500)
FLUXY = LoraEntry("fluxy", ("fluxart",), family="FLUX")
OFF = LoraEntry("off", ("ghost",), enabled=False)
META = LoraEntry("meta", ("c++ (v2)",), default_weight=0.5)
DOLLAR = LoraEntry("cult", ("$CULT",))
SD15 = LoraEntry("old", ("retro",), family="SD1.5")

CASES = [
    # id, prompt, loras, balance, family, expected prompt, applied
    ("single", "a cat on a mat", [CAT], 0, None, "a <lora:catlora:1> cat on a mat", ("catlora",)),
    (
        "multi_word",
        "pepe the frog smiling",
        [PEPE],
        0,
        "SDXL",
        "<lora:pepe:0.8> pepe the frog smiling",
        ("pepe",),
    ),
    (
        "multi_word_before_single",
        "pepe and pepe the frog",
        [PEPE],
        0,
        None,
        "pepe and <lora:pepe:0.8> pepe the frog",
        ("pepe",),
    ),
    (
        "multi_word_claims_span_from_other_lora",
        "pepe the frog",
        [FROG, PEPE],
        0,
        None,
        "<lora:pepe:0.8> pepe the frog",
        ("pepe",),
    ),
    (
        "multi_word_flexible_spacing",
        "PEPE  the\tfrog",
        [PEPE],
        0,
        None,
        "<lora:pepe:0.8> PEPE  the\tfrog",
        ("pepe",),
    ),
    (
        "weight_suffix",
        "a cat:0.6 sits",
        [CAT],
        0,
        None,
        "a <lora:catlora:0.6> cat sits",
        ("catlora",),
    ),
    (
        "weight_suffix_multi_word",
        "pepe the frog:1.25, happy",
        [PEPE],
        0,
        None,
        "<lora:pepe:1.25> pepe the frog, happy",
        ("pepe",),
    ),
    (
        "weight_suffix_sentence_end",
        "a cat:1.",
        [CAT],
        0,
        None,
        "a <lora:catlora:1> cat.",
        ("catlora",),
    ),
    ("case_insensitive", "A CAT", [CAT], 0, None, "A <lora:catlora:1> CAT", ("catlora",)),
    ("whole_word_only", "a catalog of bobcats", [CAT], 0, None, "a catalog of bobcats", ()),
    ("underscore_is_word_char", "cat_girl", [CAT], 0, None, "cat_girl", ()),
    (
        "once_per_lora",
        "cat and cat and cat",
        [CAT],
        0,
        None,
        "<lora:catlora:1> cat and cat and cat",
        ("catlora",),
    ),
    (
        "existing_tag_respected",
        "<lora:catlora:0.3> a cat",
        [CAT],
        0,
        None,
        "<lora:catlora:0.3> a cat",
        (),
    ),
    (
        "text_inside_tags_never_matched",
        "<lora:froggy:0.3> a cat",
        [LoraEntry("froggy", ("froggy",)), CAT],
        0,
        None,
        "<lora:froggy:0.3> a <lora:catlora:1> cat",
        ("catlora",),
    ),
    (
        "tag_of_a_lora_not_in_the_catalogue_removed",
        "<lora:cat:0.3> a frog",
        [CAT, FROG],
        0,
        None,
        "a <lora:froggy:1> frog",
        ("froggy",),
    ),
    ("family_match", "pepe", [PEPE], 0, "sdxl", "<lora:pepe:0.8> pepe", ("pepe",)),
    ("family_mismatch", "pepe", [PEPE], 0, "FLUX", "pepe", ()),
    (
        "family_unknown_checkpoint",
        "fluxart",
        [FLUXY],
        0,
        None,
        "<lora:fluxy:1> fluxart",
        ("fluxy",),
    ),
    ("family_normalized", "retro", [SD15], 0, "sd15", "<lora:old:1> retro", ("old",)),
    ("min_balance_below", "psyduck", [GATED], 499, None, "psyduck", ()),
    ("min_balance_equal", "psyduck", [GATED], 500, None, "<lora:gated:1> psyduck", ("gated",)),
    ("min_balance_above", "psyduck", [GATED], 10_000, None, "<lora:gated:1> psyduck", ("gated",)),
    ("balance_none_is_zero", "psyduck", [GATED], None, None, "psyduck", ()),
    ("disabled", "a ghost", [OFF], 0, None, "a ghost", ()),
    (
        "punctuation_around_trigger",
        "(cat), frog!",
        [CAT, FROG],
        0,
        None,
        "(<lora:catlora:1> cat), <lora:froggy:1> frog!",
        ("catlora", "froggy"),
    ),
    (
        "two_loras_in_prompt_order",
        "frog meets cat",
        [CAT, FROG],
        0,
        None,
        "<lora:froggy:1> frog meets <lora:catlora:1> cat",
        ("froggy", "catlora"),
    ),
    (
        "regex_metacharacters",
        "code in C++ (v2) style",
        [META],
        0,
        None,
        "code in <lora:meta:0.5> C++ (v2) style",
        ("meta",),
    ),
    (
        "trigger_with_symbol",
        "join $cult now",
        [DOLLAR],
        0,
        None,
        "join <lora:cult:1> $cult now",
        ("cult",),
    ),
    ("empty_prompt", "", [CAT], 0, None, "", ()),
    ("no_loras", "a cat", [], 0, None, "a cat", ()),
    (
        "weight_not_glued_to_word",
        "cat:0.6abc",
        [CAT],
        0,
        None,
        "<lora:catlora:1> cat:0.6abc",
        ("catlora",),
    ),
    (
        "unicode_word_boundary",
        "кошка cat",
        [CAT],
        0,
        None,
        "кошка <lora:catlora:1> cat",
        ("catlora",),
    ),
    ("unicode_glued", "catжук", [CAT], 0, None, "catжук", ()),
]


@pytest.mark.parametrize(
    ("prompt", "loras", "balance", "family", "expected", "applied"),
    [pytest.param(*case[1:], id=case[0]) for case in CASES],
)
def test_apply_lora_triggers(prompt, loras, balance, family, expected, applied) -> None:
    result = apply_lora_triggers(prompt, loras, balance=balance, family=family)
    assert result.prompt == expected
    assert result.applied == applied


def test_table_is_large_enough() -> None:
    assert len(CASES) >= 20


def test_internal_error_returns_original_prompt_and_logs(caplog) -> None:
    broken = LoraEntry("broken", None)  # type: ignore[arg-type]  # iterating None raises
    with caplog.at_level(logging.ERROR, logger="generation.loras"):
        result = apply_lora_triggers("a cat", [CAT, broken], balance=0, family=None)
    assert result.prompt == "a cat"
    assert result.applied == ()
    assert any(r.exc_info for r in caplog.records)


@pytest.mark.parametrize(
    ("weight", "text"), [(1, "1"), (1.0, "1"), (0.6, "0.6"), (0.125, "0.125"), (-0.5, "-0.5")]
)
def test_format_weight(weight: float, text: str) -> None:
    assert format_weight(weight) == text


@pytest.mark.parametrize(
    ("checkpoint", "family"),
    [
        ("flux-schnell", "FLUX"),
        ("ponydiffusionv6", "PONYXL"),
        ("zavychromaxl_v60.safetensors", "SDXL"),
        ("juggernautXL_juggernautX", "SDXL"),
        ("proteus_v0.4", "SDXL"),
        ("sd15_base", "SD1.5"),
        ("dreamshaper_631BakedVae", "SD1.5"),
        ("sd3_medium", "SD3"),
        ("mystery", None),
        (None, None),
        ("", None),
    ],
)
def test_checkpoint_family(checkpoint: str | None, family: str | None) -> None:
    assert checkpoint_family(checkpoint) == family
