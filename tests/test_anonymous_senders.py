"""Anonymous senders share no identity (issue 11, point 9): anonymous group admins and "send as
channel" users are refused with a localized message, before any handler — admin commands
included; channel posts are ignored."""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.inprocess import ADMIN_ID, E2E, make_e2e

GROUP_ANONYMOUS_BOT = {
    "id": 1087968824,
    "is_bot": True,
    "first_name": "Group",
    "username": "GroupAnonymousBot",
}


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[E2E]:
    harness, close = await make_e2e(tmp_path)
    try:
        yield harness
    finally:
        await close()


def _as_chat(
    update: dict[str, Any], sender_chat: dict[str, Any], sender: dict[str, Any] | None = None
) -> dict[str, Any]:
    out = copy.deepcopy(update)
    out["message"]["sender_chat"] = sender_chat
    if sender is not None:
        out["message"]["from"] = sender
    return out


async def test_anonymous_admin_make_is_refused_and_starts_no_run(env: E2E) -> None:
    await env.add_deployment()
    group = env.fake.group()
    user = env.fake.user(5101)
    update = user.send_command("/make a fox", chat_id=group.id, queue=False)
    anon = _as_chat(update, group.to_dict(), GROUP_ANONYMOUS_BOT)
    await env.feed(anon)
    await env.settle()
    assert await env.storage.runs.list_user_runs(GROUP_ANONYMOUS_BOT["id"], active_only=False) == []
    assert await env.storage.users.get(GROUP_ANONYMOUS_BOT["id"]) is None  # no shared account
    last = env.fake.last_message(group.id)
    assert last is not None and last.content == env.t("hardening.anonymous_refused")


async def test_admin_commands_never_accept_a_sender_chat(env: E2E) -> None:
    group = env.fake.group()
    admin = env.fake.user(ADMIN_ID)
    update = admin.send_command("/grant 5102 100", chat_id=group.id, queue=False)
    channel = {"id": -1009999, "type": "channel", "title": "A channel"}
    await env.feed(_as_chat(update, channel))  # "send as channel", even with an admin's id
    await env.settle()
    assert await env.storage.ledger.get_balance(5102) == 0


async def test_channel_posts_are_ignored(env: E2E) -> None:
    channel = {"id": -1008888, "type": "channel", "title": "News"}
    env.fake.add_chat(channel["id"], type_="channel", title="News")
    post = {
        "update_id": 990001,
        "channel_post": {
            "message_id": 1,
            "date": 1700000000,
            "chat": channel,
            "sender_chat": channel,
            "text": "/make a fox",
            "entities": [{"type": "bot_command", "offset": 0, "length": 5}],
        },
    }
    await env.feed(post)
    await env.settle()
    assert env.fake.messages(channel["id"]) == []


async def test_a_redelivered_again_press_starts_no_second_run(env: E2E) -> None:
    """Point 10: Telegram redelivers an unconfirmed callback query after a restart with the
    same id; the "Again" press it carries starts one run, not two."""
    await env.add_deployment()
    user = env.fake.user(5201)
    await env.command(user, "/make a fox")
    first = await env.latest_run(user.id)
    await env.finish(first.id)
    await env.settle()
    result = env.fake.sent_media(user.id)[-1]
    press = user.tap(result, env.t("result.again_button"), queue=False)
    await env.feed(press)
    await env.settle()
    await env.feed(copy.deepcopy(press))  # the same update again
    await env.settle()
    runs = await env.storage.runs.list_user_runs(user.id, active_only=False)
    assert len(runs) == 2  # the original and ONE again
