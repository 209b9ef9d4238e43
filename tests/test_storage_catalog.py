"""Deployments, LoRAs, settings and prices: happy paths and bad input that writes nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from generation.models import DeploymentRole
from storage import DuplicateError, NotFoundError, Storage, ValidationError

# -- deployments ------------------------------------------------------------------------------


async def test_deployment_lifecycle(storage: Storage) -> None:
    repo = storage.deployments
    dep = await repo.add("make", "dep-1", role="cook", weight=3, inputs=["input_prompt"])
    assert dep.type == "MAKE" and dep.role is DeploymentRole.COOK and dep.weight == 3
    assert dep.inputs == ("input_prompt",)
    await repo.add("I2I", "dep-2")
    assert await repo.get("dep-1") == dep
    assert [d.deployment_id for d in await repo.list_deployments("make")] == ["dep-1"]
    assert {d.deployment_id for d in await repo.list_deployments()} == {"dep-1", "dep-2"}

    disabled = await repo.set_enabled("dep-1", False)
    assert disabled.enabled is False
    assert (await repo.list_deployments("MAKE"))[0].enabled is False  # listed, not hidden
    updated = await repo.set_inputs("dep-2", ["input_image", "input_prompt"])
    assert updated.inputs == ("input_image", "input_prompt")
    assert (await repo.set_inputs("dep-2", None)).inputs is None

    assert await repo.remove("dep-2") is True
    assert await repo.remove("dep-2") is False
    assert await repo.get("dep-2") is None


async def test_deployment_health_counters(storage: Storage) -> None:
    repo = storage.deployments
    await repo.add("MAKE", "dep-1")
    await repo.record_failure("dep-1")
    await repo.record_failure("dep-1")
    dep = await repo.get("dep-1")
    assert dep is not None
    assert (dep.failure_count, dep.consecutive_failures) == (2, 2)
    assert dep.last_failure_at is not None
    await repo.record_success("dep-1")
    dep = await repo.get("dep-1")
    assert dep is not None
    assert (dep.success_count, dep.failure_count, dep.consecutive_failures) == (1, 2, 0)
    await repo.record_success("removed-mid-run")  # ignored, no error
    await repo.record_failure("removed-mid-run")
    assert len(await repo.list_deployments()) == 1


@pytest.mark.parametrize(
    ("args", "kwargs", "error"),
    [
        (("MAKE", "dep-1"), {}, DuplicateError),
        (("MAKE", "  "), {}, ValidationError),
        (("", "dep-9"), {}, ValidationError),
        (("MAKE", "dep-9"), {"role": "boss"}, ValidationError),
        (("MAKE", "dep-9"), {"weight": 0}, ValidationError),
        (("MAKE", "dep-9"), {"weight": 1.5}, ValidationError),
        (("MAKE", "dep-9"), {"weight": True}, ValidationError),
        (("MAKE", "dep-9"), {"inputs": "input_prompt"}, ValidationError),
    ],
)
async def test_deployment_bad_input_writes_nothing(
    storage: Storage, args: tuple[Any, ...], kwargs: dict[str, Any], error: type[Exception]
) -> None:
    await storage.deployments.add("MAKE", "dep-1")
    with pytest.raises(error):
        await storage.deployments.add(*args, **kwargs)
    assert [d.deployment_id for d in await storage.deployments.list_deployments()] == ["dep-1"]


async def test_deployment_unknown_ids(storage: Storage) -> None:
    with pytest.raises(NotFoundError, match="unknown deployment"):
        await storage.deployments.set_enabled("nope", True)
    with pytest.raises(NotFoundError):
        await storage.deployments.set_inputs("nope", ["a"])
    with pytest.raises(ValidationError):
        await storage.deployments.set_enabled("nope", "yes")  # type: ignore[arg-type]
    assert await storage.deployments.list_deployments() == []


# -- LoRAs ------------------------------------------------------------------------------------


async def test_lora_lifecycle(storage: Storage) -> None:
    repo = storage.loras
    entry = await repo.add(
        "pixelart",
        ["  pixel art ", "8bit", "Pixel  Art", "sprite"],
        default_weight=0.8,
        min_balance=100,
        family="sdxl",
    )
    assert entry.triggers == ("pixel art", "8bit", "sprite")  # trimmed, order kept, deduped
    assert entry.family == "SDXL" and entry.min_balance == 100 and entry.default_weight == 0.8
    assert await repo.get("pixelart") == entry
    await repo.add("anime", ["anime"], enabled=False)
    assert [e.name for e in await repo.list_loras()] == ["anime", "pixelart"]
    assert (await repo.set_enabled("anime", True)).enabled is True
    assert await repo.remove("anime") is True
    assert await repo.remove("anime") is False
    with pytest.raises(NotFoundError):
        await repo.set_enabled("anime", True)


@pytest.mark.parametrize(
    ("name", "triggers", "kwargs", "error"),
    [
        ("existing", ["x"], {}, DuplicateError),
        ("EXISTING", ["x"], {}, DuplicateError),  # names are unique case-insensitively
        ("new", [], {}, ValidationError),
        ("new", ["ok", "   "], {}, ValidationError),
        ("new", "just a string", {}, ValidationError),
        ("new", [None], {}, ValidationError),
        ("has space", ["x"], {}, ValidationError),
        ("a:b", ["x"], {}, ValidationError),
        ("new", ["x"], {"min_balance": -1}, ValidationError),
        ("new", ["x"], {"min_balance": 1.5}, ValidationError),
        ("new", ["x"], {"default_weight": float("nan")}, ValidationError),
        ("new", ["x"], {"default_weight": "1"}, ValidationError),
    ],
)
async def test_lora_bad_input_writes_nothing(
    storage: Storage, name: str, triggers: Any, kwargs: dict[str, Any], error: type[Exception]
) -> None:
    await storage.loras.add("existing", ["trigger"])
    with pytest.raises(error):
        await storage.loras.add(name, triggers, **kwargs)
    assert await storage.loras.count() == 1
    assert [e.name for e in await storage.loras.list_loras()] == ["existing"]


# -- settings ---------------------------------------------------------------------------------


async def test_settings_roundtrip(storage: Storage) -> None:
    repo = storage.settings
    assert await repo.get("missing") is None
    await repo.set("mode", "polling")
    await repo.set("mode", "webhook")
    assert await repo.get("mode") == "webhook"
    await repo.set_json("menu", {"sizes": [512, 1024], "note": "ünïcode"})
    assert await repo.get_json("menu") == {"sizes": [512, 1024], "note": "ünïcode"}
    assert await repo.get_json("absent", default=[]) == []
    assert await repo.delete("mode") is True
    assert await repo.get("mode") is None


async def test_settings_bad_input(storage: Storage) -> None:
    repo = storage.settings
    await repo.set("raw", "{not json")
    with pytest.raises(ValidationError, match="malformed JSON"):
        await repo.get_json("raw")
    with pytest.raises(ValidationError, match="not JSON-serializable"):
        await repo.set_json("obj", {"x": object()})
    with pytest.raises(ValidationError):
        await repo.set_json("nan", float("nan"))
    with pytest.raises(ValidationError):
        await repo.set("num", 5)  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        await repo.set("", "value")
    assert await repo.count() == 1


async def test_secret_is_generated_once(tmp_path: Path) -> None:
    path = tmp_path / "bot.sqlite3"
    store = await Storage.open(path)
    secret = await store.settings.get_or_create_secret("webhook_secret")
    assert len(secret) >= 40
    assert await store.settings.get_or_create_secret("webhook_secret") == secret
    await store.close()
    store = await Storage.open(path)
    try:
        assert await store.settings.get_or_create_secret("webhook_secret") == secret
        assert await store.settings.get_or_create_secret("other") != secret
    finally:
        await store.close()


# -- prices -----------------------------------------------------------------------------------


async def test_prices(storage: Storage) -> None:
    repo = storage.prices
    assert await repo.get("MAKE") == 0  # unset types are free
    await repo.set("make", 5)
    await repo.set("I2I", 0)
    await repo.set("MAKE", 7)
    assert await repo.get("Make") == 7
    assert await repo.all() == {"I2I": 0, "MAKE": 7}
    for bad in (-1, 1.5, True, "3"):
        with pytest.raises(ValidationError):
            await repo.set("UPSCALE", bad)  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        await repo.set(" ", 1)
    assert await repo.all() == {"I2I": 0, "MAKE": 7}
