"""Result delivery on FakeTelegram with output files served by FakeComfyDeploy: media kinds,
re-encoding over the photo limits, PNG as file, captions, buttons, retries, exactly once."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from PIL import Image
from telegram import Bot

from generation.events import EventBus, GenerationCompleted
from generation.models import DeliveryState, MediaOutput, MediaType, RunRecord
from handlers.delivery import Delivery
from handlers.deps import HandlerConfig, Services
from handlers.i18n import Translator
from handlers.origin import DELIVERED_ITEMS_KEY
from handlers.telegram_io import CAPTION_LIMIT, prepare_photo, truncate_prompt
from storage import Storage
from tests.fakes.comfydeploy import FakeComfyDeploy
from tests.fakes.telegram import FakeTelegram

USER = 601
RUN = "b" * 32


class RecordingGeneration:
    def __init__(self, storage: Storage) -> None:
        self.bus = EventBus()
        self.storage = storage
        self.delivered: list[str] = []
        self.failed: list[str] = []

    async def mark_delivered(self, run_id: str) -> RunRecord:
        self.delivered.append(run_id)
        return await self.storage.runs.update_run(run_id, delivery_state=DeliveryState.DELIVERED)

    async def mark_delivery_failed(self, run_id: str) -> RunRecord:
        self.failed.append(run_id)
        return await self.storage.runs.update_run(run_id, delivery_state=DeliveryState.FAILED)


async def no_sleep(_: float) -> None:
    return None


@dataclass
class Env:
    fake: FakeTelegram
    cd: FakeComfyDeploy
    storage: Storage
    generation: RecordingGeneration
    delivery: Delivery
    services: Services
    request_id: int

    def serve(self, name: str, data: bytes, content_type: str = "image/png") -> str:
        self.cd.files[name] = (data, content_type)
        return f"{self.cd.base_url}/files/{name}"

    async def run(self, outputs: list[MediaOutput], prompt: str = "a fox") -> RunRecord:
        record = RunRecord(
            id=RUN,
            user_id=USER,
            chat_id=USER,
            type="MAKE",
            request={"prompt": prompt, "seed": 1234, "type": "MAKE"},
            outputs=tuple(outputs),
            meta={"lang": "en", "reply_to_message_id": self.request_id, "prompt": prompt},
        )
        return await self.storage.runs.create_run(record)

    async def complete(self, run: RunRecord, times: int = 1) -> None:
        for _ in range(times):
            self.generation.bus.publish(GenerationCompleted(run.id, USER, USER, run.outputs))
        await self.generation.bus.drain()
        await self.delivery.drain()

    def t(self, key: str, **params: object) -> str:
        return self.services.i18n.t("en", key, **params)


def png(size: tuple[int, int] = (64, 48)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (200, 60, 30)).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture
async def env(storage: Storage) -> AsyncIterator[Env]:
    fake = FakeTelegram()
    user = fake.user(USER)
    request = user.send_command("/make a fox", queue=False)
    bot: Bot = fake.bot()
    await bot.initialize()
    cd = FakeComfyDeploy()
    await storage.users.get_or_create(USER, language_code="en")
    generation = RecordingGeneration(storage)
    services = Services(
        storage=storage,
        generation=generation,  # type: ignore[arg-type]
        i18n=Translator.load(),
        config=HandlerConfig(trusted_output_urls=(cd.base_url,)),  # the backend's origin
    )
    delivery = Delivery(
        bot,
        services,  # type: ignore[arg-type]
        transport=cd.transport,
        sleep=no_sleep,
    ).attach()
    yield Env(fake, cd, storage, generation, delivery, services, request["message"]["message_id"])
    await delivery.detach()
    await generation.bus.aclose()
    await bot.shutdown()
    await cd.aclose()


async def test_image_as_photo_reply_with_caption_and_buttons(env: Env) -> None:
    await env.storage.deployments.add("MAKE", "dep-make")  # Again needs a deployment
    url = env.serve("r.png", png())
    run = await env.run([MediaOutput(url, MediaType.IMAGE, filename="r.png")])
    await env.complete(run)
    media = env.fake.sent_media(USER)
    assert [m.media_kind for m in media] == ["photo"]
    photo = media[0]
    assert photo.reply_to_message_id == env.request_id
    assert photo.caption == env.t("result.caption", prompt="a fox", seed=1234)
    # no UPSCALE or img2img deployment: those actions are not shown
    assert {b["callback_data"] for b in photo.buttons} == {
        f"x:ag:0:{RUN}",
        f"x:pm:0:{RUN}",
        f"x:og:0:{RUN}",
    }
    files = await env.storage.result_files.for_run(RUN)
    assert [(f.item, f.kind, f.message_id) for f in files] == [(0, "photo", photo.message_id)]
    assert env.generation.delivered == [RUN] and env.generation.failed == []


async def test_png_as_file_adds_the_original_document(env: Env) -> None:
    await env.storage.users.update_settings(USER, png_as_file=True)
    data = png()
    url = env.serve("r.png", data)
    run = await env.run([MediaOutput(url, MediaType.IMAGE, filename="r.png")])
    await env.complete(run)
    kinds = [m.media_kind for m in env.fake.sent_media(USER)]
    assert kinds == ["photo", "document"]
    document = env.fake.sent_media(USER)[1]
    assert document.media == data and document.filename == "r.png"
    assert f"x:og:0:{RUN}" not in {b["callback_data"] for b in document.buttons}


async def test_oversized_image_is_reencoded_and_original_sent_as_file(env: Env) -> None:
    big = png((9000, 1200))  # width + height > 10000: not allowed as a photo
    url = env.serve("big.png", big)
    run = await env.run([MediaOutput(url, MediaType.IMAGE, filename="big.png")])
    await env.complete(run)
    photo, document = env.fake.sent_media(USER)
    assert photo.media_kind == "photo" and photo.width + photo.height <= 10000
    assert document.media_kind == "document" and document.media == big
    assert env.generation.delivered == [RUN]


async def test_gif_video_and_unknown_types(env: Env) -> None:
    outputs = [
        MediaOutput(
            env.serve("a.gif", b"GIF89a...", "image/gif"), MediaType.ANIMATION, filename="a.gif"
        ),
        MediaOutput(
            env.serve("v.mp4", b"\x00\x00\x00\x18ftypisom", "video/mp4"),
            MediaType.VIDEO,
            filename="v.mp4",
        ),
        MediaOutput(
            env.serve("x.json", b"{}", "application/json"), MediaType.UNKNOWN, filename="x.json"
        ),
    ]
    run = await env.run(outputs)
    await env.complete(run)
    media = env.fake.sent_media(USER)
    assert [m.media_kind for m in media] == ["animation", "video", "document"]
    assert media[-1].buttons and not media[0].buttons  # buttons on the last media only


async def test_delivered_once_even_if_completed_twice(env: Env) -> None:
    url = env.serve("r.png", png())
    run = await env.run([MediaOutput(url, MediaType.IMAGE)])
    await env.complete(run, times=2)
    await env.complete(run)
    assert len(env.fake.sent_media(USER)) == 1
    assert env.generation.delivered == [RUN]


async def test_send_retried_after_flood_control(env: Env) -> None:
    env.fake.fail_next("sendPhoto", 429, retry_after=1)
    url = env.serve("r.png", png())
    run = await env.run([MediaOutput(url, MediaType.IMAGE)])
    await env.complete(run)
    assert [c.status for c in env.fake.calls("sendPhoto")] == [429, 200]
    assert env.generation.delivered == [RUN]


async def test_undeliverable_result_tells_user_and_releases(env: Env) -> None:
    run = await env.run([MediaOutput(f"{env.cd.base_url}/files/missing.png", MediaType.IMAGE)])
    await env.complete(run)
    assert env.fake.last_message(USER).text == env.t("result.delivery_failed")
    assert env.generation.failed == [RUN] and env.generation.delivered == []


async def test_long_prompt_caption_fits() -> None:
    i18n = Translator.load()
    caption = truncate_prompt(
        lambda p: i18n.t("en", "result.caption", prompt=p, seed=42), "y" * 2000, CAPTION_LIMIT
    )
    assert len(caption) <= CAPTION_LIMIT and caption.endswith("42") and "…" in caption


def test_prepare_photo_keeps_small_images_and_refuses_extreme_ratio() -> None:
    small = png()
    assert prepare_photo(small).photo == small
    assert prepare_photo(png((2100, 100))).photo is None  # ratio > 20


async def test_an_items_mark_is_durable_before_the_next_send(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A crash while the second item is on its way repeats at most that item: the second
    send waits until the first item's delivery mark is written."""
    await env.storage.users.update_settings(USER, png_as_file=True)  # photo, then document
    url = env.serve("r.png", png())
    run = await env.run([MediaOutput(url, MediaType.IMAGE, filename="r.png")])
    marked = asyncio.Event()
    update_run = env.storage.runs.update_run

    async def slow_mark(run_id: str, **changes: object) -> RunRecord:
        if DELIVERED_ITEMS_KEY in (changes.get("meta") or {}):  # type: ignore[operator]
            await marked.wait()
        return await update_run(run_id, **changes)

    monkeypatch.setattr(env.storage.runs, "update_run", slow_mark)
    completing = asyncio.create_task(env.complete(run))
    try:
        await env.fake.wait_for(lambda: env.fake.calls("sendPhoto"), what="the photo")
        for _ in range(50):  # bounded: turns enough for a send that did not wait
            await asyncio.sleep(0)
        assert not env.fake.calls("sendDocument")  # held back until the photo is marked
    finally:
        marked.set()
        await completing
    assert [m.media_kind for m in env.fake.sent_media(USER)] == ["photo", "document"]
    stored = await env.storage.runs.get_run(run.id)
    assert stored is not None and len(stored.meta[DELIVERED_ITEMS_KEY]) == 2
