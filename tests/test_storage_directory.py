"""Finding users (storage/directory.py): usernames seen, lookups that never create users, the
/user profile; admin-added type options (storage/type_options.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from generation.models import RunRecord, RunStatus
from storage import Storage, UserLookupError, ValidationError
from storage.directory import normalize_username


def _run(run_id: str, user_id: int, created_at: float, status: RunStatus) -> RunRecord:
    return RunRecord(
        id=run_id,
        user_id=user_id,
        chat_id=user_id,
        type="MAKE",
        created_at=created_at,
        status=status,
        request={"prompt": run_id},
    )


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("@Alice_01", "Alice_01"),
        ("alice", "alice"),
        ("  @bob_the_builder ", "bob_the_builder"),
        ("@a", None),  # too short
        ("1alice", None),  # starts with a digit
        ("ali ce", None),
        ("@" + "a" * 33, None),  # too long
        ("алиса", None),
        ("", None),
        (None, None),
    ],
)
def test_normalize_username(raw: str | None, expected: str | None) -> None:
    assert normalize_username(raw) == expected


async def test_resolve_by_id_and_by_username_case_insensitively(storage: Storage) -> None:
    await storage.users.get_or_create(42)
    assert await storage.directory.remember(42, "Alice_W")
    for query in ("42", 42, "@Alice_W", "@alice_w", "ALICE_W", " @alice_w "):
        user = await storage.directory.resolve(query)
        assert user.id == 42, query
    assert await storage.directory.username_of(42) == "Alice_W"


async def test_a_repeat_sighting_writes_nothing(storage: Storage) -> None:
    await storage.users.get_or_create(1)
    assert await storage.directory.remember(1, "carol")
    assert not await storage.directory.remember(1, "carol")
    assert not await storage.directory.remember(1, "@Carol")  # same name, other spelling
    assert await storage.directory.remember(1, "carol2")  # a rename is written
    assert await storage.directory.id_for_username("carol") is None  # the old name is gone
    assert await storage.directory.id_for_username("carol2") == 1


async def test_a_username_moves_to_its_new_owner(storage: Storage) -> None:
    for uid in (1, 2):
        await storage.users.get_or_create(uid)
    await storage.directory.remember(1, "dave")
    await storage.directory.remember(2, "Dave")  # Telegram gave the name to someone else
    assert (await storage.directory.resolve("@dave")).id == 2
    assert await storage.directory.username_of(1) is None


async def test_dropping_a_username(storage: Storage) -> None:
    await storage.users.get_or_create(3)
    await storage.directory.remember(3, "erin")
    assert await storage.directory.remember(3, None)
    with pytest.raises(UserLookupError) as info:
        await storage.directory.resolve("@erin")
    assert info.value.reason == "unknown_username"


@pytest.mark.parametrize(
    ("query", "reason"),
    [
        ("999", "unknown_id"),
        ("@nobody_here", "unknown_username"),
        ("@seen_only", "no_account"),
        ("@x", "invalid"),
        ("hello world", "invalid"),
        ("0", "invalid"),
        ("-5", "invalid"),
        ("9" * 20, "invalid"),
        ("", "invalid"),
    ],
)
async def test_lookups_refuse_and_never_create(storage: Storage, query: str, reason: str) -> None:
    await storage.directory.remember(77, "seen_only")  # seen in a group, never used the bot
    before = await storage.users.count()
    with pytest.raises(UserLookupError) as info:
        await storage.directory.resolve(query)
    assert info.value.reason == reason
    assert isinstance(info.value, KeyError)  # a NotFoundError for callers of the ports
    assert await storage.users.count() == before == 0
    if reason == "no_account":
        assert info.value.user_id == 77


async def test_invalid_ids_are_not_remembered(storage: Storage) -> None:
    assert not await storage.directory.remember(0, "zero_user")
    assert not await storage.directory.remember(True, "bool_user")  # type: ignore[arg-type]
    assert await storage.directory.id_for_username("zero_user") is None


async def test_profile_shows_balance_holds_runs_and_language(storage: Storage) -> None:
    await storage.users.get_or_create(5, language_code="de", starting_balance=50)
    await storage.directory.remember(5, "frank")
    for i, status in enumerate([RunStatus.SUCCESS, RunStatus.FAILED, RunStatus.RUNNING]):
        await storage.runs.create_run(
            _run(f"r{i}", 5, 100.0 + i, status), hold_amount=7 if i == 2 else 0
        )
    await storage.runs.create_run(_run("other", 6, 200.0, RunStatus.SUCCESS))
    profile = await storage.directory.profile(5, recent=2)
    assert profile is not None
    assert profile.username == "frank"
    assert (profile.balance, profile.held, profile.available) == (50, 7, 43)
    assert [h.run_id for h in profile.open_holds] == ["r2"]
    assert [r.id for r in profile.recent_runs] == ["r2", "r1"]  # newest first, limited
    assert profile.language == "de"
    await storage.users.update_settings(5, language="ru")
    again = await storage.directory.profile(5)
    assert again is not None and again.language == "ru" and len(again.recent_runs) == 3
    assert await storage.directory.profile(404) is None


async def test_usernames_survive_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "bot.sqlite3"
    async with await Storage.open(path) as store:
        await store.users.get_or_create(8)
        await store.directory.remember(8, "grace")
    async with await Storage.open(path) as store:
        assert (await store.directory.resolve("@GRACE")).id == 8


async def test_type_options(storage: Storage) -> None:
    assert await storage.type_options.input_kind("ANIMATE") == "text"
    await storage.type_options.set_input("animate", "image")
    assert await storage.type_options.input_kinds() == {"ANIMATE": "image"}
    await storage.type_options.set_input("ANIMATE", "text")
    assert await storage.type_options.input_kind("animate") == "text"
    with pytest.raises(ValidationError):
        await storage.type_options.set_input("ANIMATE", "video")
    assert await storage.type_options.remove("ANIMATE")
    assert not await storage.type_options.remove("ANIMATE")
    assert await storage.type_options.input_kinds() == {}


async def test_result_files_are_kept_per_item_and_kind(tmp_path: Path) -> None:
    path = tmp_path / "bot.sqlite3"
    async with await Storage.open(path) as store:
        files = store.result_files
        await files.record("run-a", 0, "photo", "PHOTO0", chat_id=-100, message_id=10)
        await files.record("run-a", 0, "document", "DOC0", chat_id=-100, message_id=11)
        await files.record("run-a", 1, "photo", "PHOTO1", chat_id=-100, message_id=12)
        await files.record("run-a", 1, "photo", "PHOTO1b", chat_id=-100, message_id=13)  # resent
        with pytest.raises(ValueError):
            await files.record("run-a", 2, "sticker", "X", chat_id=1, message_id=1)
        with pytest.raises(ValidationError):
            await files.record("run-a", -1, "photo", "X", chat_id=1, message_id=1)
    async with await Storage.open(path) as store:  # after a restart
        files = store.result_files
        best0 = await files.best("run-a", 0)
        assert best0 is not None and best0.file_id == "DOC0"  # the original first
        photo0 = await files.best("run-a", 0, ("photo",))
        assert photo0 is not None and photo0.file_id == "PHOTO0"
        best1 = await files.best("run-a", 1)
        assert best1 is not None and (best1.file_id, best1.message_id) == ("PHOTO1b", 13)
        assert await files.best("run-a", 5) is None
        assert len(await files.for_run("run-a")) == 3
        assert await files.run_for_message(-100, 12) is None  # overwritten by the resend
        assert await files.run_for_message(-100, 13) == "run-a"
        assert await files.run_for_message(-100, 99) is None
