"""ProgressRenderer on FakeTelegram with a fake clock: throttle, coalescing, identical text,
groups, RetryAfter, "message is not modified", final states."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import pytest
from telegram import Bot

from generation.events import (
    EventBus,
    GenerationCancelled,
    GenerationFailed,
    GenerationProgress,
    GenerationQueued,
)
from generation.models import RunRecord, RunStatus
from handlers.deps import HandlerConfig, Services
from handlers.i18n import Translator
from handlers.progress import ProgressRenderer
from tests.e2e.inprocess import FakeClock
from tests.fakes.telegram import FakeTelegram

RUN = "a" * 32
USER = 501


class StubRuns:
    def __init__(self) -> None:
        self.records: dict[str, RunRecord] = {}

    async def get_run(self, run_id: str) -> RunRecord | None:
        return self.records.get(run_id)


class StubGeneration:
    def __init__(self) -> None:
        self.bus = EventBus()

    def queue_position(self, run_id: str) -> int | None:
        return 1


@dataclass
class Env:
    fake: FakeTelegram
    bot: Bot
    clock: FakeClock
    renderer: ProgressRenderer
    services: Services
    runs: StubRuns

    def t(self, key: str, **params: object) -> str:
        return self.services.i18n.t("en", key, **params)

    def edits(self) -> list[Any]:
        return self.fake.calls("editMessageText")

    async def settle(self) -> None:
        for _ in range(200):  # bounded: until every flush task waits on the clock or is done
            await self.services.generation.bus.drain()
            busy = [p.task for p in self.renderer._runs.values() if p.task and not p.task.done()]
            if len(busy) <= self.clock.sleepers:
                await asyncio.sleep(0)
                busy = [
                    p.task for p in self.renderer._runs.values() if p.task and not p.task.done()
                ]
                if len(busy) <= self.clock.sleepers:
                    return
            await asyncio.sleep(0)
        raise AssertionError("renderer did not settle")

    def publish(self, event: Any) -> None:
        self.services.generation.bus.publish(event)

    async def start(self, chat_id: int, chat_type: str = "private") -> int:
        """Send the progress message like the handler does and register it."""
        self.runs.records[RUN] = RunRecord(
            id=RUN,
            user_id=USER,
            chat_id=chat_id,
            type="MAKE",
            request={},
            meta={"lang": "en", "chat_type": chat_type},
        )
        text = self.renderer.queued_text("en", 1)
        msg = await self.bot.send_message(
            chat_id, text, reply_markup=self.renderer.cancel_markup(RUN, "en")
        )
        self.renderer.register(self.runs.records[RUN], msg.message_id, text)
        return msg.message_id


def progress(
    pct: float, status: RunStatus = RunStatus.RUNNING, chat_id: int = USER, live: str | None = None
) -> GenerationProgress:
    return GenerationProgress(RUN, USER, chat_id, status=status, progress=pct, live_status=live)


@pytest.fixture
async def env() -> AsyncIterator[Env]:
    fake = FakeTelegram()
    fake.user(USER)
    bot = fake.bot()
    await bot.initialize()
    runs = StubRuns()
    services = Services(
        storage=SimpleNamespace(runs=runs),  # type: ignore[arg-type]
        generation=StubGeneration(),  # type: ignore[arg-type]
        i18n=Translator.load(),
        config=HandlerConfig(progress_edit_interval=1.5),
    )
    clock = FakeClock()
    renderer = ProgressRenderer(
        bot,
        services,  # type: ignore[arg-type]
        clock=clock,
        sleep=clock.sleep,
    )
    renderer._unsubscribe = services.generation.bus.subscribe(  # type: ignore[attr-defined]
        renderer._on_event
    )
    services.progress = renderer
    yield Env(fake, bot, clock, renderer, services, runs)
    renderer._unsubscribe()
    for p in list(renderer._runs.values()):
        if p.task:
            p.task.cancel()
    await services.generation.bus.aclose()
    await bot.shutdown()


async def test_throttle_and_coalesce(env: Env) -> None:
    msg_id = await env.start(USER)
    env.publish(progress(0.1))
    env.publish(progress(0.2))
    env.publish(progress(0.3, live="Executing KSampler"))
    await env.settle()
    assert env.edits() == []  # the message was sent at t=0; nothing due before 1.5 s
    env.clock.advance(1.0)
    await env.settle()
    assert env.edits() == []
    env.clock.advance(0.5)
    await env.settle()
    assert len(env.edits()) == 1  # one edit, with the newest state only
    msg = env.fake.message(USER, msg_id)
    step = env.t("actions.executing", node="KSampler")  # ComfyUI's English, localized
    assert msg.text == env.t("progress.running_status", percent=30, status=step)
    assert msg.buttons[0]["callback_data"] == f"r:cx:{RUN}"

    env.publish(progress(0.5))
    await env.settle()
    assert len(env.edits()) == 1
    env.clock.advance(1.5)
    await env.settle()
    assert len(env.edits()) == 2
    assert env.fake.message(USER, msg_id).text == env.t("progress.running", percent=50)


async def test_identical_state_is_not_sent_again(env: Env) -> None:
    await env.start(USER)
    env.clock.advance(2)
    env.publish(progress(0.4))
    await env.settle()
    env.clock.advance(2)
    env.publish(progress(0.4))
    env.publish(progress(0.401))  # rounds to the same 40 %
    await env.settle()
    env.clock.advance(2)
    await env.settle()
    assert len(env.edits()) == 1


async def test_group_interval_is_at_least_three_seconds(env: Env) -> None:
    group = env.fake.group()
    await env.start(group.id, "supergroup")
    env.publish(progress(0.2, chat_id=group.id))
    env.clock.advance(1.5)
    await env.settle()
    assert env.edits() == []
    env.clock.advance(1.5)
    await env.settle()
    assert len(env.edits()) == 1


async def test_final_state_waits_out_throttle_removes_button_and_wins(env: Env) -> None:
    msg_id = await env.start(USER)
    env.publish(GenerationFailed(RUN, USER, USER, error_code="RUN_TIMEOUT"))
    env.publish(progress(0.9))  # stale: after the end
    await env.settle()
    assert env.edits() == []
    env.clock.advance(1.5)
    await env.settle()
    msg = env.fake.message(USER, msg_id)
    reason = env.t("error.RUN_TIMEOUT")
    assert msg.text == env.t("progress.failed", reason=reason)
    assert msg.buttons == []
    assert len(env.edits()) == 1
    assert env.renderer.is_finished(RUN)


async def test_retry_after_drops_intermediate_edit_and_backs_off(env: Env) -> None:
    msg_id = await env.start(USER)
    env.clock.advance(2)
    env.fake.fail_next("editMessageText", 429, retry_after=5)
    env.publish(progress(0.2))
    await env.settle()
    assert [c.status for c in env.edits()] == [429]
    env.publish(progress(0.3))
    env.clock.advance(4)
    await env.settle()
    assert len(env.edits()) == 1  # still backing off
    env.clock.advance(1)
    await env.settle()
    assert [c.status for c in env.edits()] == [429, 200]
    assert env.fake.message(USER, msg_id).text == env.t("progress.running", percent=30)


async def test_final_edit_is_retried_after_flood_control(env: Env) -> None:
    msg_id = await env.start(USER)
    env.clock.advance(2)
    env.fake.fail_next("editMessageText", 429, retry_after=2)
    env.publish(GenerationCancelled(RUN, USER, USER))
    await env.settle()
    assert [c.status for c in env.edits()] == [429]
    env.clock.advance(2.2)
    await env.settle()
    assert [c.status for c in env.edits()] == [429, 200]
    assert env.fake.message(USER, msg_id).text == env.t("progress.cancelled")


async def test_message_not_modified_counts_as_success(env: Env) -> None:
    text = env.t("progress.waiting")
    msg = await env.bot.send_message(USER, text)  # the chat already shows this text
    env.runs.records[RUN] = RunRecord(
        id=RUN, user_id=USER, chat_id=USER, type="MAKE", request={}, meta={"lang": "en"}
    )
    env.renderer.register(env.runs.records[RUN], msg.message_id, "something else", has_button=False)
    env.clock.advance(2)
    env.publish(GenerationProgress(RUN, USER, USER, status=RunStatus.WAITING))
    # same text, but the renderer adds the Cancel button → a real edit; then repeat without it
    await env.settle()
    assert [c.status for c in env.edits()] == [200]
    env.renderer._runs[RUN].sent = ("stale", True)  # pretend we lost track of what is shown
    env.clock.advance(2)
    env.publish(GenerationProgress(RUN, USER, USER, status=RunStatus.WAITING))
    await env.settle()
    assert [c.status for c in env.edits()] == [200, 400]  # "not modified": accepted, no retry
    env.clock.advance(5)
    await env.settle()
    assert len(env.edits()) == 2


async def test_events_before_registration_are_shown_after_it(env: Env) -> None:
    env.runs.records[RUN] = RunRecord(
        id=RUN, user_id=USER, chat_id=USER, type="MAKE", request={}, meta={"lang": "en"}
    )
    env.publish(GenerationQueued(RUN, USER, USER, position=2))
    env.publish(progress(0.0, status=RunStatus.STARTING))
    await env.settle()
    assert env.edits() == []  # no message yet
    text = env.renderer.queued_text("en", 2)
    msg = await env.bot.send_message(USER, text)
    env.renderer.register(env.runs.records[RUN], msg.message_id, text)
    env.clock.advance(1.5)
    await env.settle()
    assert env.fake.message(USER, msg.message_id).text == env.t("progress.starting")
