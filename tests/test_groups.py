"""A group chat session through the Telegram double: commands with and without @botusername,
another bot's command ignored, a reply to the bot's question continuing a flow, results
replying to the request, forum topics keeping their thread, and progress edits in groups at
least 3 s apart and coalesced."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.e2e.inprocess import E2E, make_e2e, png

GROUP = -1001234567890
BOT = "fake_test_bot"


@pytest.fixture
async def e2e(tmp_path: Path) -> AsyncIterator[E2E]:
    env, close = await make_e2e(tmp_path)
    try:
        yield env
    finally:
        await close()


async def test_commands_with_and_without_our_username(e2e: E2E) -> None:
    await e2e.add_deployment()
    e2e.fake.add_chat(GROUP, title="Artists")
    alice = e2e.fake.user(2001, "Alice", username="alice")

    other = await e2e.command(alice, "/make@other_bot a fox", GROUP)
    assert not e2e.fake.messages(GROUP), "another bot's command got an answer"
    assert not await e2e.storage.runs.list_user_runs(alice.id, active_only=False)

    mine = await e2e.command(alice, f"/make@{BOT} a fox", GROUP)
    run = await e2e.latest_run(alice.id)
    assert run.meta["prompt"] == "a fox"
    progress = e2e.fake.messages(GROUP)[0]
    assert progress.reply_to_message_id == mine["message"]["message_id"]
    await e2e.finish(run.id)
    photo = next(m for m in e2e.fake.sent_media(GROUP) if m.media_kind == "photo")
    assert photo.reply_to_message_id == mine["message"]["message_id"]  # threads stay readable

    plain = await e2e.command(alice, "/make a cat", GROUP)
    second = await e2e.latest_run(alice.id)
    assert (
        second.id != run.id and second.meta["reply_to_message_id"] == plain["message"]["message_id"]
    )
    assert other["message"]["message_id"] not in {
        r.meta.get("reply_to_message_id")
        for r in await e2e.storage.runs.list_user_runs(alice.id, active_only=False)
    }


async def test_forum_topics_keep_their_thread(e2e: E2E) -> None:
    await e2e.add_deployment()
    e2e.fake.add_chat(GROUP, title="Forum")
    bob = e2e.fake.user(2002, "Bob")
    await e2e.feed(bob.send_command("/make a dog", GROUP, queue=False, thread_id=77))
    run = await e2e.latest_run(bob.id)
    assert run.meta.get("message_thread_id") == 77
    await e2e.finish(run.id)
    sent = e2e.fake.messages(GROUP)
    assert sent and all(m.message_thread_id == 77 for m in sent), [
        (m.text or m.caption, m.message_thread_id) for m in sent
    ]


async def test_a_reply_to_the_bot_continues_the_flow(e2e: E2E) -> None:
    await e2e.add_deployment("I2I", inputs=("input_prompt", "input_image", "input_strength"))
    e2e.fake.add_chat(GROUP, title="Artists")
    cara = e2e.fake.user(2003, "Cara")
    await e2e.command(cara, f"/i2i@{BOT}", GROUP)
    ask_photo = e2e.fake.last_message(GROUP)
    assert ask_photo.text == e2e.t("i2i.send_photo")
    await e2e.feed(cara.reply_to(ask_photo, photo=png(), queue=False))
    ask_prompt = e2e.fake.last_message(GROUP)
    assert ask_prompt.text == e2e.t("i2i.send_prompt")
    answer = await e2e.feed(cara.reply_to(ask_prompt, "as a watercolor", queue=False))
    run = await e2e.latest_run(cara.id)
    assert run.type == "I2I" and run.meta["prompt"] == "as a watercolor"
    assert run.meta["reply_to_message_id"] == answer["message"]["message_id"]


async def test_group_progress_edits_are_three_seconds_apart_and_coalesced(e2e: E2E) -> None:
    e2e.services.config.progress_edit_interval = 0.5  # private chats: 0.5 s; groups: ≥ 3 s
    await e2e.add_deployment()
    e2e.fake.add_chat(GROUP, title="Artists")
    dan = e2e.fake.user(2004, "Dan")
    await e2e.command(dan, "/make a lighthouse", GROUP)
    run = await e2e.latest_run(dan.id)
    backend = await e2e.backend_id(run.id)
    await e2e.settle()
    before = len(e2e.fake.calls("editMessageText"))
    await e2e.cd.advance(backend, steps=4)
    await e2e.settle()
    e2e.clock.advance(2.9)
    await e2e.settle()
    assert len(e2e.fake.calls("editMessageText")) == before  # not yet: 3 s in groups
    e2e.clock.advance(0.2)
    await e2e.settle()
    assert len(e2e.fake.calls("editMessageText")) == before + 1  # four steps, one edit
