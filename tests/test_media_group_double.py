"""``sendMediaGroup`` in the Bot API doubles (bot/local/media_group.py), through a real PTB Bot:
one album = separate messages with one media_group_id, each with its caption; Telegram's
limits (2–10 items, documents only with documents) are enforced."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator

import pytest
from PIL import Image
from telegram import Bot, InputMediaDocument, InputMediaPhoto, ReplyParameters
from telegram.error import BadRequest

from bot.local.media_group import MediaGroupMixin
from tests.fakes.telegram import FakeTelegram

USER = 1001


class AlbumTelegram(MediaGroupMixin, FakeTelegram):
    """The fake with albums (until the core mixes them in itself)."""


def png(color: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), color).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture
def fake() -> FakeTelegram:
    fake = AlbumTelegram() if not hasattr(FakeTelegram, "_m_sendMediaGroup") else FakeTelegram()
    fake.user(USER)
    return fake


@pytest.fixture
async def bot(fake: FakeTelegram) -> AsyncIterator[Bot]:
    bot = fake.bot()
    await bot.initialize()
    yield bot
    await bot.shutdown()


async def test_an_album_of_photos(fake: FakeTelegram, bot: Bot) -> None:
    request = await bot.send_message(USER, "make 3")
    sent = await bot.send_media_group(
        USER,
        [InputMediaPhoto(png((i * 80, 0, 0)), caption=f"#{i + 1}") for i in range(3)],
        reply_parameters=ReplyParameters(request.message_id),
    )
    assert len(sent) == 3
    assert len({m.media_group_id for m in sent}) == 1 and sent[0].media_group_id
    assert [m.caption for m in sent] == ["#1", "#2", "#3"]
    assert all(m.photo and m.reply_to_message.message_id == request.message_id for m in sent)
    # the file ids work for later sends (an action after a restart)
    again = await bot.send_photo(USER, sent[1].photo[-1].file_id)
    assert fake.files[again.photo[-1].file_id].data == fake.files[sent[1].photo[-1].file_id].data
    assert [m.caption for m in fake.sent_media(USER)][:3] == ["#1", "#2", "#3"]


@pytest.mark.parametrize(
    "media",
    [
        [InputMediaPhoto(png((1, 2, 3)))],  # one item is not an album
        [InputMediaPhoto(png((1, 2, 3))) for _ in range(11)],
        [InputMediaPhoto(png((1, 2, 3))), InputMediaDocument(png((3, 2, 1)), filename="a.png")],
    ],
)
async def test_album_limits(bot: Bot, media: list) -> None:
    with pytest.raises(BadRequest):
        await bot.send_media_group(USER, media)
