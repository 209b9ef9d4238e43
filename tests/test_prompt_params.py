"""Handler-side helpers without Telegram: inline parameters applied for one command, reference
types, user targets of admin commands, live status and Telegram's text limits."""

from __future__ import annotations

from typing import Any

import pytest

from generation.params import ParamError
from generation.request import GenerationRequest, InputImage
from handlers.prompt_params import (
    error_text,
    help_text,
    prepare,
    reference_fields,
    reference_type,
    side_multiple,
)
from handlers.text_fit import fit, localize_live_status, utf16_len
from handlers.user_target import TargetError, resolve_target
from storage import Storage


def t(lang: str, key: str, /, **params: Any) -> str:
    """A stand-in translator that shows the key and its parameters."""
    return f"{lang}|{key}|" + ",".join(f"{k}={params[k]}" for k in sorted(params))


def test_prepare_applies_parameters_to_the_settings() -> None:
    settings = {"width": 832, "height": 1216, "steps": 28, "seed": -1}
    prepared = prepare(
        "castle --ar 1:1 --steps 12 --style", settings, type_name="MAKE", takes_image=False
    )
    assert prepared.prompt == "castle"
    assert prepared.references == frozenset({"style"})
    assert prepared.fields["steps"] == 12 and prepared.fields["seed"] == -1
    assert prepared.fields["width"] == prepared.fields["height"] == 1008  # same area, 1:1
    assert "style" not in prepared.fields  # the handler decides type and images
    GenerationRequest(type="MAKE", prompt=prepared.prompt, **prepared.fields)


def test_plus_workflows_get_sides_in_multiples_of_64() -> None:
    assert side_multiple("MAKE_PLUS_STYLE") == 64 and side_multiple("MAKE") == 8
    prepared = prepare("x --ar 3:2", {}, type_name="MAKE_PLUS", takes_image=False)
    assert prepared.fields["width"] % 64 == 0 and prepared.fields["height"] % 64 == 0


def test_strength_only_on_photo_commands() -> None:
    with pytest.raises(ParamError):
        prepare("x --strength 0.3", {}, type_name="MAKE", takes_image=False)
    assert prepare("x --strength 0.3", {}, type_name="I2I", takes_image=True).fields[
        "strength"
    ] == pytest.approx(0.3)


def test_reference_types_and_fields() -> None:
    assert reference_type("MAKE", frozenset({"style"})) == "MAKE_STYLE"
    assert reference_type("make", frozenset({"pose", "style"})) == "MAKE_STYLE_POSE"
    assert reference_type("MAKE_PLUS", frozenset({"control", "pose"})) == "MAKE_PLUS_CANNY_POSE"
    assert reference_type("ANIMATE", frozenset({"style"})) == "ANIMATE"
    assert reference_type("MAKE", frozenset()) == "MAKE"
    image = InputImage(data=b"png")
    fields = reference_fields(frozenset({"style", "control"}), image)
    assert fields == {"control_image": image, "style_image": image}
    request = GenerationRequest(type="MAKE_STYLE", prompt="x", **fields)
    assert request.style_image is image


def test_error_and_help_texts() -> None:
    try:
        prepare("x --steps 500", {}, type_name="MAKE", takes_image=False)
    except ParamError as err:
        assert error_text(t, "de", err) == (
            "de|params.error.range|example=30,param=--steps,range=1–150,value=500"
        )
    else:  # pragma: no cover
        pytest.fail("no error")
    lines = help_text(t, "ru").splitlines()
    assert lines[0] == "ru|params.help_title|"
    assert "ru|params.help.ar|range=1:8–8:1" in lines and len(lines) == 12


# -------------------------------------------------------------------------- user targets


async def test_targets_by_id_username_and_reply(storage: Storage) -> None:
    await storage.users.get_or_create(1001)
    await storage.directory.remember(1001, "alice")
    by_id = await resolve_target(storage.directory, ["1001", "50"], other_args=1)
    assert by_id.user.id == 1001 and by_id.rest == ["50"] and not by_id.via_reply
    by_name = await resolve_target(storage.directory, ["@ALICE", "50"], other_args=1)
    assert by_name.user.id == 1001 and by_name.rest == ["50"]
    by_reply = await resolve_target(storage.directory, ["50"], other_args=1, reply_user_id=1001)
    assert by_reply.user.id == 1001 and by_reply.rest == ["50"] and by_reply.via_reply
    # a reply, but the user is named explicitly: the name wins
    named = await resolve_target(
        storage.directory, ["@alice", "50"], other_args=1, reply_user_id=999
    )
    assert named.user.id == 1001
    profile = await resolve_target(storage.directory, [], other_args=0, reply_user_id=1001)
    assert profile.user.id == 1001 and profile.rest == []


@pytest.mark.parametrize(
    ("args", "reply", "key"),
    [
        (["424242", "5"], None, "users.unknown_id"),
        (["@ghost_user", "5"], None, "users.unknown_username"),
        (["@seen_in_group", "5"], None, "users.no_account"),
        (["alice!", "5"], None, "users.invalid"),
        ([], None, "users.missing"),
        (["5"], 777, "users.unknown_id"),  # replying to someone who never used the bot
    ],
)
async def test_target_refusals_create_nobody(
    storage: Storage, args: list[str], reply: int | None, key: str
) -> None:
    await storage.directory.remember(555, "seen_in_group")
    with pytest.raises(TargetError) as info:
        await resolve_target(storage.directory, args, other_args=1, reply_user_id=reply)
    assert info.value.key == key
    assert await storage.users.count() == 0


async def test_reply_to_a_bot_is_refused(storage: Storage) -> None:
    with pytest.raises(TargetError) as info:
        await resolve_target(
            storage.directory, ["5"], other_args=1, reply_user_id=42, reply_is_bot=True
        )
    assert info.value.key == "users.is_bot"


# -------------------------------------------------------------------------- texts


def test_live_status_is_localized() -> None:
    assert (
        localize_live_status(t, "ru", "Executing KSampler") == "ru|actions.executing|node=KSampler"
    )
    assert localize_live_status(t, "en", "executing node VAEDecode ") == (
        "en|actions.executing|node=VAEDecode"
    )
    assert localize_live_status(t, "en", "Loading models") == "Loading models"
    assert (
        localize_live_status(t, "en", "  ") is None and localize_live_status(t, "en", None) is None
    )
    assert len(localize_live_status(t, "en", "x" * 300) or "") == 80


def test_fit_tells_the_limit() -> None:
    assert fit(t, "en", "short", 4096) == "short"
    long = "😀" * 3000  # 6000 UTF-16 units: over the limit although only 3000 characters
    fitted = fit(t, "es", long, 4096)
    assert utf16_len(fitted) <= 4096
    assert fitted.endswith("es|actions.truncated|limit=4096")
    assert fit(t, "en", "a" * 4096) == "a" * 4096


# -------------------------------------------------------------------------- /id and /user


def test_id_texts() -> None:
    from handlers.user_info import id_text

    assert id_text(t, "en", own_id=5) == "en|users.id_self|id=5"
    assert id_text(t, "en", own_id=5, other=(7, "Bob"), chat_id=-100).splitlines() == [
        "en|users.id_other|id=7,name=Bob",
        "en|users.id_chat|chat_id=-100",
    ]


async def test_profile_text(storage: Storage) -> None:
    from generation.models import RunRecord, RunStatus
    from handlers.user_info import profile_text

    await storage.users.get_or_create(9, language_code="es", starting_balance=20)
    await storage.directory.remember(9, "nina")
    empty = await storage.directory.profile(9)
    assert empty is not None
    text = profile_text(t, "en", empty)
    assert "runs=en|users.no_runs|" in text and "username=@nina" in text
    assert "available=20" in text and "language=es" in text
    await storage.runs.create_run(
        RunRecord(
            id="r1",
            user_id=9,
            chat_id=9,
            type="MAKE",
            request={},
            status=RunStatus.SUCCESS,
            price=3,
            created_at=0.0,
        )
    )
    full = await storage.directory.profile(9)
    assert full is not None
    assert "price=3,status=success,type=MAKE" in profile_text(t, "en", full)


def test_compact_deployment_list_and_inputs_on_demand() -> None:
    from generation.models import DeploymentConfig, DeploymentRole
    from handlers.deployment_list import compact_list, inputs_text
    from handlers.i18n import Translator

    i18n = Translator.load()
    deps = [
        DeploymentConfig("bbbb", "MAKE", inputs=("input_prompt", "input_seed"), success_count=3),
        DeploymentConfig("aaaa", "I2I", role=DeploymentRole.COOK, enabled=False, weight=2),
    ]
    text = compact_list(i18n.t, "en", deps)
    lines = text.splitlines()
    assert lines[0] == i18n.t("en", "admin.deployments_title", count=2)
    assert lines[1].startswith("⚪ I2I · cook · ×2") and lines[1].endswith("aaaa")
    assert lines[2].startswith("🟢 MAKE · default · ×1 · ✔3 ✖0")
    assert "input_prompt" not in text  # inputs only on demand
    assert lines[-1] == i18n.t("en", "actions.deployments_hint")
    assert "input_prompt, input_seed" in inputs_text(i18n.t, "de", deps[0])
    many = [DeploymentConfig(f"{n:036d}", "MAKE") for n in range(300)]
    long = compact_list(i18n.t, "ru", many)
    assert len(long) <= 4096 and long.endswith(i18n.t("ru", "actions.truncated", limit=4096))
