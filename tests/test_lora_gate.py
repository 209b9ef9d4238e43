"""The LoRA gate: only the catalogue may put a LoRA into what is sent (issue 11, point 1).

A table of typed-tag cases, the negative prompt, weight clamping, the balance-before-hold rule
(through the service), and a hypothesis property over any prompt and any catalogue.
"""

from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from generation import GenerationContext, GenerationRequest, GenerationService
from generation.loras import apply_lora_triggers, entitled_loras, filter_lora_tags
from generation.models import LoraEntry
from generation.prompt_builder import PromptBuilder
from generation.types import validate_request

FOXY = LoraEntry("foxy", ("red fox",), default_weight=0.8)
PREMIUM = LoraEntry("premium", ("gold",), min_balance=100)
OFF = LoraEntry("off", ("ghost",), enabled=False)
FLUXY = LoraEntry("fluxy", ("fluxart",), family="FLUX")
HEAVY = LoraEntry("heavy", ("brick",), default_weight=7.0)
CATALOGUE = [FOXY, PREMIUM, OFF, FLUXY, HEAVY]

GATE_CASES = [
    # id, prompt, balance, family, expected
    ("paid_lora_without_balance", "<lora:premium:1.5> cat", 0, None, "cat"),
    ("paid_lora_just_below", "cat <lora:premium:1> dog", 99, None, "cat dog"),
    ("paid_lora_at_minimum", "<lora:premium:1.5> cat", 100, None, "<lora:premium:1.5> cat"),
    ("not_in_catalogue", "<lora:secret_file:1> cat", 10_000, None, "cat"),
    ("path_to_worker_file", "<lora:../models/x.safetensors:1> a", 10_000, None, "a"),
    ("disabled", "a <lora:off:1> ghost", 10_000, None, "a ghost"),
    ("other_family", "<lora:fluxy:1> fluxart", 10_000, "SDXL", "fluxart"),
    ("entitled_kept", "<lora:foxy:0.5> a fox", 0, None, "<lora:foxy:0.5> a fox"),
    ("entitled_kept_once", "<lora:foxy:0.5> <lora:FOXY:1> fox", 0, None, "<lora:foxy:0.5> fox"),
    ("typed_weight_clamped", "<lora:foxy:9999> fox", 0, None, "<lora:foxy:2> fox"),
    ("typed_negative_weight_clamped", "<lora:foxy:-50> fox", 0, None, "<lora:foxy:-2> fox"),
    ("typed_without_weight_uses_default", "<lora:foxy> fox", 0, None, "<lora:foxy:0.8> fox"),
    ("trigger_weight_clamped", "red fox:9999", 0, None, "<lora:foxy:2> red fox"),
    ("default_weight_clamped", "a brick", 0, None, "a <lora:heavy:2> brick"),
    ("upper_case_tag_removed", "<LORA:premium:1> cat", 0, None, "cat"),
    ("lyco_tag_removed", "<lyco:premium:1> cat", 0, None, "cat"),
    ("spaced_tag_removed", "< lora : premium : 1 > cat", 0, None, "cat"),
    ("unclosed_opening_neutralized", "cat <lora:premium:1", 0, None, "cat lora:premium:1"),
    (
        "nested_removal_cannot_form_a_tag",
        "<lo<lora:x:1>ra:premium:1> c",
        0,
        None,
        "lora:premium:1> c",
    ),
    (
        "unclosed_before_trigger",
        "<lora:premium:1 red fox",
        0,
        None,
        "lora:premium:1 <lora:foxy:0.8> red fox",
    ),
]


@pytest.mark.parametrize(
    ("prompt", "balance", "family", "expected"),
    [pytest.param(*case[1:], id=case[0]) for case in GATE_CASES],
)
def test_typed_lora_tags_are_gated(
    prompt: str, balance: int, family: str | None, expected: str
) -> None:
    result = apply_lora_triggers(prompt, CATALOGUE, balance=balance, family=family, weight_max=2.0)
    assert result.prompt == expected


def test_negative_prompt_is_gated_too() -> None:
    text = "blurry, <lora:premium:1>, <lora:foxy:30>, <lora:nothere:1>"
    out = filter_lora_tags(text, CATALOGUE, balance=0, family=None, weight_max=2.0)
    assert out == "blurry, , <lora:foxy:2>, "


def _built(prompt: str, negative: str, balance: int) -> dict[str, object]:
    request = GenerationRequest(type="QUICKMAKE", prompt=prompt, negative_prompt=negative, seed=1)
    built = PromptBuilder().build(
        request,
        validate_request(request),
        deployment_inputs=None,
        loras=CATALOGUE,
        balance=balance,
        image_values={},
        lora_weight_max=1.5,
    )
    return built.inputs


def test_prompt_builder_gates_prompt_and_negative_and_uses_the_weight_max() -> None:
    inputs = _built("<lora:premium:1> red fox:3", "<lora:premium:1> ugly", balance=0)
    assert inputs["input_prompt"] == "<lora:foxy:1.5> red fox"
    assert inputs["input_negative"] == "ugly"


def test_inpaint_target_never_carries_a_lora() -> None:
    request = GenerationRequest(
        type="INPAINT",
        prompt="a hat",
        inpaint_target="<lora:foxy:1> the hat",
        seed=1,
        image={"data": b"x"},
    )
    built = PromptBuilder().build(
        request,
        validate_request(request),
        deployment_inputs=None,
        loras=CATALOGUE,
        balance=0,
        image_values={"input_image": "data:image/png;base64,AA=="},
    )
    assert built.inputs["input_inpaint_target"] == "the hat"


def test_internal_error_removes_every_tag() -> None:
    broken = LoraEntry("broken", None)  # type: ignore[arg-type]  # iterating None raises
    result = apply_lora_triggers(
        "<lora:foxy:1> <lora:premium:1> cat", [FOXY, broken], balance=0, family=None
    )
    assert "<lora" not in result.prompt.lower()


# ------------------------------------------------------------------ the balance before the hold


class _Balances:
    def __init__(self, available: int) -> None:
        self.available = available

    async def get_balance(self, user_id: int) -> int:
        return self.available


async def test_gate_uses_the_balance_before_this_runs_own_hold() -> None:
    """A user with exactly 100 credits pays 10 for the run: the 100-credit LoRA still applies."""
    from generation.models import ChargeState, RunRecord, RunStatus

    service = GenerationService.__new__(GenerationService)
    service.balances = _Balances(90)  # type: ignore[assignment]  # 100 minus the 10 on hold
    run = RunRecord(
        id="r1",
        user_id=1,
        chat_id=1,
        type="MAKE",
        request={},
        status=RunStatus.QUEUED,
        price=10,
        charge_state=ChargeState.HELD,
    )
    assert await service._balance_before_hold(run) == 100


# ------------------------------------------------------------------ the property

_NAMES = ["foxy", "premium", "off", "fluxy", "FOXY", "x", "heavy"]
_TOKENS = [
    "<lora:",
    "<LORA:",
    "<lyco:",
    "< lora :",
    "<",
    ">",
    ":",
    "1",
    "9999",
    "-3",
    ".5",
    " ",
    ",",
    "red fox",
    "gold",
    "brick",
    "fluxart",
    "cat",
    "lora",
    "ra:",
    *_NAMES,
]

_entries = st.builds(
    LoraEntry,
    name=st.sampled_from(_NAMES),
    triggers=st.lists(
        st.sampled_from(["red fox", "gold", "brick", "cat", "fluxart"]), max_size=2
    ).map(tuple),
    default_weight=st.floats(-20, 20, allow_nan=False),
    min_balance=st.integers(0, 3),
    family=st.sampled_from([None, "FLUX", "SDXL"]),
    enabled=st.booleans(),
)
_prompts = st.one_of(
    st.lists(st.sampled_from(_TOKENS), max_size=25).map("".join),
    st.text(max_size=60),
)
_OPENING = re.compile(r"<\s*(?:lora|lyco|lycoris)\s*:", re.IGNORECASE)
_CANONICAL = re.compile(r"<lora:([^:<>]+):(-?[0-9.]+)>")


def _assert_only_entitled(
    text: str, catalogue: list[LoraEntry], balance: int, family: str | None
) -> None:
    allowed = entitled_loras(catalogue, balance=balance, family=family)
    seen: set[str] = set()
    for m in _OPENING.finditer(text):
        tag = _CANONICAL.match(text, m.start())
        assert tag is not None, f"stray LoRA opening in {text!r}"
        name = tag.group(1).lower()
        assert name in allowed, f"{name!r} not entitled in {text!r}"
        assert name not in seen, f"{name!r} twice in {text!r}"
        assert abs(float(tag.group(2))) <= 2.0
        seen.add(name)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    prompt=_prompts,
    catalogue=st.lists(_entries, max_size=5),
    balance=st.integers(0, 4),
    family=st.sampled_from([None, "FLUX", "SDXL"]),
)
def test_every_lora_sent_is_one_the_user_is_entitled_to(
    prompt: str, catalogue: list[LoraEntry], balance: int, family: str | None
) -> None:
    result = apply_lora_triggers(prompt, catalogue, balance=balance, family=family, weight_max=2.0)
    _assert_only_entitled(result.prompt, catalogue, balance, family)
    negative = filter_lora_tags(prompt, catalogue, balance=balance, family=family, weight_max=2.0)
    _assert_only_entitled(negative, catalogue, balance, family)


async def test_service_sends_no_paid_lora_to_a_user_without_balance() -> None:
    """End to end through the service: /make <lora:premium:1.5> cat with balance 0."""
    from tests.fakes.comfydeploy import FakeComfyDeploy
    from tests.fakes.memory_store import MemoryStore
    from tests.test_service import Clock, Env, make_request

    fake = FakeComfyDeploy()
    env = Env(fake, MemoryStore(), Clock())
    try:
        env.deployment()
        env.store.loras = [PREMIUM, FOXY]
        service = env.make()
        run = await service.generate(
            make_request(prompt="<lora:premium:1.5> cat"), GenerationContext()
        )
        await service.dispatch(service.scheduler.try_take())  # type: ignore[arg-type]
        sent = fake.create_calls[-1]["inputs"]
        assert "premium" not in sent["input_prompt"]
        assert sent["input_prompt"] == "cat"
        assert run.id
    finally:
        for svc in env.services:
            await svc.stop()
        for client in env.clients:
            await client.aclose()
        await fake.aclose()
