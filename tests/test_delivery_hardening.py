"""Delivery under attack and outage (issue 11, points 2 and 5): an output URL that redirects
inside is refused and ends the run as a localized failure with the hold released; results
ready while Telegram fails are delivered once it recovers (within DELIVERY_RETRY_WINDOW,
across a restart), exactly once and charged once; a media upload that timed out is not
repeated. FakeTelegram and a scripted output origin; fake time throughout."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest
from PIL import Image
from telegram import Bot

from generation.events import GenerationCompleted
from generation.models import DeliveryState, MediaOutput, MediaType, RunRecord, RunStatus
from handlers.delivery import Delivery
from handlers.deps import HandlerConfig, Services
from handlers.i18n import Translator
from handlers.telegram_io import upload_timeouts
from storage import Storage
from tests.fakes.telegram import FakeTelegram
from tests.test_delivery import RecordingGeneration

USER = 611
RUN = "c" * 32
ORIGIN = "http://comfydeploy.test/api"


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)  # let other tasks run (a restart may cut the wait)


def png(color: tuple[int, int, int] = (200, 60, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), color).save(buf, "PNG")
    return buf.getvalue()


SECRET_IMAGE = png((1, 2, 3))  # what the "metadata service" would answer


def outputs_web(request: httpx.Request) -> httpx.Response:
    """The backend's file origin; one file redirects to the cloud metadata address."""
    url = str(request.url)
    if url == f"{ORIGIN}/files/ok.png":
        return httpx.Response(200, content=png(), headers={"content-type": "image/png"})
    if url == f"{ORIGIN}/files/evil.png":
        return httpx.Response(302, headers={"location": "http://169.254.169.254/latest/x.png"})
    if request.url.host == "169.254.169.254":
        return httpx.Response(200, content=SECRET_IMAGE, headers={"content-type": "image/png"})
    return httpx.Response(404)


@dataclass
class Env:
    fake: FakeTelegram
    storage: Storage
    generation: RecordingGeneration
    services: Services
    clock: Clock
    bot: Bot
    delivery: Delivery | None = None

    def attach(self) -> Delivery:
        self.delivery = Delivery(
            self.bot,
            self.services,  # type: ignore[arg-type]
            transport=httpx.MockTransport(outputs_web),
            sleep=self.clock.sleep,
            clock=self.clock,
        ).attach()
        return self.delivery

    async def detach(self) -> None:
        if self.delivery is not None:
            await self.delivery.detach()
            self.delivery = None

    async def run(self, name: str) -> RunRecord:
        record = RunRecord(
            id=RUN,
            user_id=USER,
            chat_id=USER,
            type="MAKE",
            request={"prompt": "a fox", "seed": 1, "type": "MAKE"},
            status=RunStatus.SUCCESS,
            outputs=(MediaOutput(f"{ORIGIN}/files/{name}", MediaType.IMAGE, filename=name),),
            meta={"lang": "en", "prompt": "a fox"},
            finished_at=self.clock.now,
        )
        return await self.storage.runs.create_run(record)

    async def complete(self, run: RunRecord) -> None:
        self.generation.bus.publish(GenerationCompleted(run.id, USER, USER, run.outputs))
        await self.generation.bus.drain()
        assert self.delivery is not None
        await self.delivery.drain()


@pytest.fixture
async def env(storage: Storage) -> AsyncIterator[Env]:
    clock = Clock()
    fake = FakeTelegram(clock=clock)
    fake.user(USER)
    bot: Bot = fake.bot()
    await bot.initialize()
    await storage.users.get_or_create(USER, language_code="en")
    generation = RecordingGeneration(storage)
    services = Services(
        storage=storage,
        generation=generation,  # type: ignore[arg-type]
        i18n=Translator.load(),
        config=HandlerConfig(trusted_output_urls=(ORIGIN,), delivery_retry_window=900.0),
    )
    e = Env(fake, storage, generation, services, clock, bot)
    e.attach()
    yield e
    await e.detach()
    await generation.bus.aclose()
    await bot.shutdown()


async def test_output_redirecting_to_an_internal_address_fails_the_run(env: Env) -> None:
    run = await env.run("evil.png")
    await env.complete(run)
    assert env.fake.sent_media(USER) == []  # the metadata answer never reached the chat
    assert env.generation.failed == [RUN] and env.generation.delivered == []
    last = env.fake.last_message(USER)
    assert last is not None
    assert last.content == env.services.i18n.t("en", "error.OUTPUT_REFUSED")


async def test_telegram_down_for_60_s_one_photo_after_recovery_one_charge(env: Env) -> None:
    env.fake.outage(until=env.clock.now + 60)
    run = await env.run("ok.png")
    await env.complete(run)
    media = env.fake.sent_media(USER)
    assert [m.media_kind for m in media] == ["photo"]
    assert env.generation.delivered == [RUN] and env.generation.failed == []
    assert env.clock.now >= env.fake._outage[0]  # type: ignore[index]  # delivered after it
    assert max(env.clock.slept) <= 60.0  # backoff, capped


async def test_delivery_resumes_after_a_restart_within_the_window(env: Env) -> None:
    env.fake.outage(until=env.clock.now + 10_000)
    run = await env.run("ok.png")
    env.generation.bus.publish(GenerationCompleted(run.id, USER, USER, run.outputs))
    await env.generation.bus.drain()
    # The bot stops while Telegram is still down: the result stays pending, nothing charged.
    started = env.clock.now
    for _ in range(10_000):  # bounded: the delivery retries in fake time meanwhile
        if env.clock.now > started + 30:
            break
        await asyncio.sleep(0)
    assert env.clock.now > started + 30
    await env.detach()
    stored = await env.storage.runs.get_run(RUN)
    assert stored is not None and stored.delivery_state is DeliveryState.PENDING
    assert env.generation.delivered == [] and env.generation.failed == []
    # Telegram is back; the restarted bot republishes the undelivered result.
    env.fake.outage(until=0)
    env.attach()
    await env.complete(stored)
    assert [m.media_kind for m in env.fake.sent_media(USER)] == ["photo"]
    assert env.generation.delivered == [RUN]


async def test_after_the_window_the_hold_is_released(env: Env) -> None:
    env.services.config.delivery_retry_window = 100.0
    env.fake.outage(until=env.clock.now + 10_000)
    run = await env.run("ok.png")
    await env.complete(run)
    assert env.fake.sent_media(USER) == []
    assert env.generation.failed == [RUN] and env.generation.delivered == []
    assert env.clock.now - run.finished_at <= 100.0 + 60.0  # type: ignore[operator]


async def test_a_timed_out_upload_is_not_repeated(env: Env) -> None:
    env.fake.fail_next("sendPhoto", timeout=True)
    run = await env.run("ok.png")
    await env.complete(run)
    assert len(env.fake.calls("sendPhoto")) == 1  # no blind second upload
    assert env.generation.delivered == [RUN]


def test_upload_timeouts_fit_the_size() -> None:
    small, big = upload_timeouts(10_000), upload_timeouts(50 * 1024 * 1024)
    assert small["read_timeout"] > 5.0  # PTB's default read time-out cut uploads short
    assert big["write_timeout"] > small["write_timeout"] >= 20.0
    assert big["write_timeout"] >= 50 * 1024 * 1024 / (256 * 1024)
