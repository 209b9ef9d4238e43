"""The image a result action works on (handlers/result_source.py): Telegram's file of the
delivered item first (works after a restart), the stored output URL next, else a clear
refusal."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator

import pytest
from PIL import Image
from telegram import Bot

from generation.models import MediaOutput, MediaType, RunRecord
from handlers.media import MediaError
from handlers.result_source import output_image
from storage import Storage
from tests.fakes.telegram import FakeTelegram

USER = 1001
RID = "ab" * 16


def png(color: tuple[int, int, int], size: tuple[int, int] = (48, 32)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return buf.getvalue()


def run_with(outputs: int) -> RunRecord:
    return RunRecord(
        id=RID,
        user_id=USER,
        chat_id=USER,
        type="MAKE",
        request={},
        outputs=tuple(
            MediaOutput(f"https://cdn.example/{i}.png", MediaType.IMAGE) for i in range(outputs)
        ),
    )


@pytest.fixture
async def bot() -> AsyncIterator[tuple[FakeTelegram, Bot]]:
    fake = FakeTelegram()
    fake.user(USER)
    bot = fake.bot()
    await bot.initialize()
    yield fake, bot
    await bot.shutdown()


async def test_the_delivered_file_is_used_first(
    bot: tuple[FakeTelegram, Bot], storage: Storage
) -> None:
    _, tg = bot
    photo = await tg.send_photo(USER, png((255, 0, 0)))
    doc = await tg.send_document(USER, png((0, 0, 255), (64, 40)), filename="r.png")
    await storage.result_files.record(
        RID, 0, "photo", photo.photo[-1].file_id, chat_id=USER, message_id=photo.message_id
    )
    await storage.result_files.record(
        RID, 0, "document", doc.document.file_id, chat_id=USER, message_id=doc.message_id
    )

    async def no_download(url: str) -> bytes:  # pragma: no cover - must not be needed
        raise AssertionError("the output URL must not be fetched")

    image = await output_image(tg, storage, run_with(1), 0, no_download)
    assert (image.width, image.height) == (64, 40)  # the original document, not the photo
    assert image.mime_type == "image/png"


async def test_falls_back_to_the_photo_then_the_output_url(
    bot: tuple[FakeTelegram, Bot], storage: Storage
) -> None:
    _, tg = bot
    await storage.result_files.record(RID, 0, "document", "GONE", chat_id=USER, message_id=1)
    photo = await tg.send_photo(USER, png((0, 255, 0)))
    await storage.result_files.record(
        RID, 0, "photo", photo.photo[-1].file_id, chat_id=USER, message_id=photo.message_id
    )
    image = await output_image(tg, storage, run_with(2), 0, None)
    assert (image.width, image.height) == (48, 32)

    fetched: list[str] = []

    async def download(url: str) -> bytes:
        fetched.append(url)
        return png((9, 9, 9), (20, 10))

    image = await output_image(tg, storage, run_with(2), 1, download)  # item 1: never sent
    assert fetched == ["https://cdn.example/1.png"] and (image.width, image.height) == (20, 10)


async def test_nothing_left_is_a_clear_refusal(
    bot: tuple[FakeTelegram, Bot], storage: Storage
) -> None:
    _, tg = bot

    async def broken(url: str) -> bytes:
        raise OSError("expired")

    with pytest.raises(MediaError) as info:
        await output_image(tg, storage, run_with(1), 0, broken)
    assert info.value.key == "actions.output_gone"
    with pytest.raises(MediaError):
        await output_image(tg, storage, run_with(1), 3, None)

    async def not_an_image(url: str) -> bytes:
        return b"<html>expired</html>"

    with pytest.raises(MediaError) as info:
        await output_image(tg, storage, run_with(1), 0, not_an_image)
    assert info.value.key == "gen.not_an_image"
