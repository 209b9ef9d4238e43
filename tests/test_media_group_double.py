"""``sendMediaGroup`` in the Bot API doubles (bot/local/emulator.py), through a real PTB Bot:
one album = separate messages with one media_group_id, each with its caption; Telegram's
limits (2–10 items, documents only with documents) are enforced."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator

import pytest
from PIL import Image
from telegram import Bot, InputMediaDocument, InputMediaPhoto, ReplyParameters
from telegram.error import BadRequest

from tests.fakes.telegram import FakeTelegram

USER = 1001


def png(color: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), color).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture
def fake() -> FakeTelegram:
    fake = FakeTelegram()
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


async def test_send_album_records_files_and_adds_the_keyboard(
    fake: FakeTelegram, bot: Bot, tmp_path
) -> None:
    from telegram import InlineKeyboardButton, InlineKeyboardMarkup

    from handlers.albums import send_album
    from handlers.context import reply_to
    from storage import Storage

    request = await bot.send_message(USER, "make 3")

    async def send(method: str, **kwargs):
        return await getattr(bot, method)(**kwargs)

    keyboard = InlineKeyboardMarkup(
        [[InlineKeyboardButton("U1", callback_data="x:up:0:" + "a" * 32)]]
    )
    async with await Storage.open(tmp_path / "bot.sqlite3") as storage:
        sent = await send_album(
            send,
            storage,
            "a" * 32,
            [(i, png((i * 60, 10, 10)), f"r{i}.png") for i in range(3)],
            caption="a fox\nSeed: 1",
            base={
                "chat_id": USER,
                "reply_parameters": reply_to(request.message_id),
                "parse_mode": None,
            },
            keyboard=keyboard,
            keyboard_text="pick",
        )
        assert sent == 3
        files = await storage.result_files.for_run("a" * 32)
        assert [(f.item, f.kind) for f in files] == [(0, "photo"), (1, "photo"), (2, "photo")]
    album = fake.sent_media(USER)
    assert [m.caption for m in album] == ["a fox\nSeed: 1", None, None]
    assert all(m.reply_to_message_id == request.message_id for m in album)
    last = fake.last_message(USER)
    assert last.text == "pick" and last.button_texts == ["U1"]
    assert last.reply_to_message_id == album[0].message_id
