"""The checkpoint catalogue (migration 6): add with a given or guessed family, unique names
case-insensitively, remove, order kept, cache dropped by writes."""

from __future__ import annotations

import pytest

from storage import Checkpoint, DuplicateError, Storage, ValidationError


async def test_add_list_remove(storage: Storage) -> None:
    assert await storage.checkpoints.list_checkpoints() == []
    assert await storage.checkpoints.add("flux-dev") == Checkpoint("flux-dev", "FLUX")
    assert await storage.checkpoints.add("juggernautXL_v9", "sdxl") == Checkpoint(
        "juggernautXL_v9", "SDXL"
    )
    assert await storage.checkpoints.add("mystery_model") == Checkpoint("mystery_model", None)
    names = [c.name for c in await storage.checkpoints.list_checkpoints()]
    assert names == ["flux-dev", "juggernautXL_v9", "mystery_model"]
    assert (await storage.checkpoints.get("FLUX-DEV")) == Checkpoint("flux-dev", "FLUX")

    with pytest.raises(DuplicateError):
        await storage.checkpoints.add("Flux-Dev")
    assert await storage.checkpoints.remove("FLUX-dev") is True
    assert await storage.checkpoints.remove("flux-dev") is False
    assert [c.name for c in await storage.checkpoints.list_checkpoints()] == [
        "juggernautXL_v9",
        "mystery_model",
    ]


@pytest.mark.parametrize(
    ("name", "family"),
    [("two words", None), ("<b>", None), ("x" * 49, None), ("ok", "not a family!"), ("", None)],
)
async def test_bad_input_is_refused(storage: Storage, name: str, family: str | None) -> None:
    with pytest.raises(ValidationError):
        await storage.checkpoints.add(name, family)
    assert await storage.checkpoints.list_checkpoints() == []


async def test_kept_across_restarts(tmp_path) -> None:
    store = await Storage.open(tmp_path / "bot.sqlite3")
    await store.checkpoints.add("pony-xl")
    await store.close()
    store = await Storage.open(tmp_path / "bot.sqlite3")
    try:
        assert await store.checkpoints.list_checkpoints() == [Checkpoint("pony-xl", "PONYXL")]
    finally:
        await store.close()
