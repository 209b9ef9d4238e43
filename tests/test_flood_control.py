"""Flood control (issue #5 point 4): 100 users send ``/make`` at the same instant.

The fake Telegram API enforces its flood model (≈1 message/s per private chat with a burst of 3,
30 per second overall) on the real monotonic clock and answers 429 with ``retry_after``. The bot
runs as in production: real ``Application`` with the ``AIORateLimiter``, the per-chat update
processor, the real-time progress renderer and delivery, the real generation service and
storage; generations are near-instant in the ComfyDeploy double.

Checked: every user gets exactly one photo and a final progress state; every 429 is honoured
(no call to that chat before ``retry_after`` has passed); whatever was refused and never shown
is an intermediate progress edit, never a result or a final state. The number of 429s is
printed (``-s``) for the closing report.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from telegram import Update
from telegram.request import HTTPXRequest

from tests.e2e.inprocess import E2E, build_harness
from tests.fakes.comfydeploy import Timeline
from tests.fakes.telegram import FakeTelegram, FloodControl

USERS = 100
LIMIT_SECONDS = 25.0
_SENDS = {"sendMessage", "sendPhoto", "sendDocument", "editMessageText"}


@dataclass(slots=True)
class Stamped:
    at: float
    method: str
    chat_id: int | None
    params: dict[str, Any]
    status: int
    retry_after: int | None


class Recorder:
    """Wraps the fake's transport and timestamps every call on the fake's clock."""

    def __init__(self, fake: FakeTelegram) -> None:
        self.fake = fake
        self.calls: list[Stamped] = []
        self.transport = httpx.MockTransport(self._handle)

    async def _handle(self, request: httpx.Request) -> httpx.Response:
        index = len(self.fake.call_log)
        at = self.fake.clock()
        response = await self.fake._handle(request)
        if len(self.fake.call_log) > index:
            call = self.fake.call_log[index]
            retry_after = None
            if response.status_code == 429:
                retry_after = response.json()["parameters"]["retry_after"]
            chat = call.params.get("chat_id")
            self.calls.append(
                Stamped(
                    at,
                    call.method,
                    int(chat) if chat not in (None, "") else None,
                    call.params,
                    response.status_code,
                    retry_after,
                )
            )
        return response

    def request(self) -> HTTPXRequest:
        return HTTPXRequest(
            httpx_kwargs={"transport": self.transport}, connection_pool_size=256, pool_timeout=30
        )


@pytest.fixture
async def flood(
    tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[tuple[E2E, Recorder]]:
    model = getattr(request, "param", None) or FloodControl()
    fake = FakeTelegram(flood_control=model)  # clock: time.monotonic
    recorder = Recorder(fake)
    fake.request = recorder.request  # type: ignore[method-assign]
    env, close = await build_harness(
        tmp_path,
        fake=fake,
        rate_limit=True,  # production: AIORateLimiter
        fake_progress_clock=False,  # production: real-time renderer and delivery
        progress_edit_interval=1.5,
        max_in_flight=USERS,
        generation={"max_in_flight": USERS},
    )
    try:
        yield env, recorder
    finally:
        await close()


async def _drive(env: E2E, run_ids: dict[int, str], deadline: float) -> None:
    """Play every run to its end as soon as it reached the double (bounded by ``deadline``)."""
    done: set[str] = set()
    while len(done) < len(run_ids):
        assert time.monotonic() < deadline, f"only {len(done)} runs reached the backend"
        for run_id in run_ids.values():
            if run_id in done:
                continue
            run = await env.storage.runs.get_run(run_id)
            if run.backend_run_id:
                await env.cd.run_to_end(run.backend_run_id)
                done.add(run_id)
        await asyncio.sleep(0.05)


async def test_burst_of_100_users_loses_nothing_and_honours_every_429(
    flood: tuple[E2E, Recorder],
) -> None:
    refused = await _burst(*flood, USERS)
    print(f"\nflood burst of {USERS} users: {refused} answered 429")


STRICT = FloodControl(private_rate=0.5, private_burst=1.0)


@pytest.mark.parametrize("flood", [STRICT], indirect=True)
async def test_strict_flood_model_429s_are_all_honoured(flood: tuple[E2E, Recorder]) -> None:
    """One message per 2 s per chat, no burst: 429s happen; each is waited out."""
    refused = await _burst(*flood, 8)
    assert refused > 0
    print(f"\nstrict flood model, 8 users: {refused} answered 429, all honoured")


async def _burst(env: E2E, recorder: Recorder, count: int) -> int:
    """``count`` users send /make at once; checks everything; returns the number of 429s."""
    await env.add_deployment(timeline=Timeline.success("png", ticks=((0.5, "Executing KSampler"),)))
    users = [env.fake.user(5000 + i) for i in range(count)]
    started = time.monotonic()
    deadline = started + LIMIT_SECONDS
    updates = [u.send_command(f"/make burst picture {u.id}", queue=False) for u in users]
    for update in updates:  # all at once, through the bot's concurrent update processor
        await env.app.update_queue.put(Update.de_json(update, env.app.bot))

    run_ids: dict[int, str] = {}
    while len(run_ids) < count:
        assert time.monotonic() < deadline, f"only {len(run_ids)} runs were created"
        for user in users:
            if user.id not in run_ids:
                runs = await env.storage.runs.list_user_runs(user.id, active_only=False)
                if runs:
                    run_ids[user.id] = runs[0].id
        await asyncio.sleep(0.05)
    await _drive(env, run_ids, deadline)

    done_text = env.t("progress.done")
    renderer = env.renderer

    def finished() -> bool:
        for user in users:
            photos = [m for m in env.fake.sent_media(user.id) if m.media_kind == "photo"]
            if len(photos) != 1:
                return False
        return all(renderer.is_finished(r) for r in run_ids.values())

    while not finished():
        assert time.monotonic() < deadline, "not every user got a photo and a final state"
        await asyncio.sleep(0.1)
    elapsed = time.monotonic() - started

    # every user: one photo, the progress message in its final state, the charge settled
    for user in users:
        run = await env.storage.runs.get_run(run_ids[user.id])
        assert run.progress_message_id is not None
        assert env.fake.message(user.id, run.progress_message_id).text == done_text
        assert len([m for m in env.fake.sent_media(user.id) if m.media_kind == "photo"]) == 1
    assert await env.storage.ledger.check_consistency() == []

    limited = [c for c in recorder.calls if c.method in _SENDS]
    refused = [c for c in limited if c.status == 429]
    # every 429 honoured: the bot did not call that chat again before retry_after had passed
    for bad in refused:
        later = [c for c in limited if c.chat_id == bad.chat_id and c.at > bad.at and c is not bad]
        early = [c for c in later if c.at < bad.at + bad.retry_after - 0.05]
        assert not early, f"{bad.method} to {bad.chat_id} retried {early[0].at - bad.at:.2f}s "
    # what was refused and never shown is an intermediate edit, never a result or final state
    for bad in refused:
        shown = any(
            c.status == 200
            and c.method == bad.method
            and c.chat_id == bad.chat_id
            and c.params.get("text") == bad.params.get("text")
            and c.params.get("caption") == bad.params.get("caption")
            for c in limited
        )
        if not shown:
            assert bad.method == "editMessageText", bad
            assert bad.params.get("text") != done_text
    print(f"\n{count} users: {len(limited)} limited calls, {len(refused)} × 429, {elapsed:.1f}s")
    return len(refused)
