"""The strict fake Bot API, exercised through a real python-telegram-bot ``Bot``."""

from __future__ import annotations

import datetime as dt
import io

import httpx
import pytest
from PIL import Image
from telegram import Bot, BotCommand, InlineKeyboardButton, InlineKeyboardMarkup, Update
from telegram.error import BadRequest, Conflict, InvalidToken, RetryAfter, TimedOut
from telegram.ext import ApplicationBuilder, CallbackQueryHandler, CommandHandler, ContextTypes

import tests.fakes.telegram as fake_module
from tests.fakes.telegram import FakeTelegram, FloodControl

pytestmark = pytest.mark.filterwarnings("ignore::telegram.warnings.PTBDeprecationWarning")

USER = 1001


def png(width: int = 32, height: int = 32) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(buf, "PNG")
    return buf.getvalue()


def keyboard(data: str) -> InlineKeyboardMarkup:
    return InlineKeyboardMarkup([[InlineKeyboardButton("Cancel", callback_data=data)]])


def seconds(value: int | dt.timedelta) -> float:
    return value.total_seconds() if isinstance(value, dt.timedelta) else float(value)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def fake() -> FakeTelegram:
    fake = FakeTelegram()
    fake.user(USER)
    return fake


@pytest.fixture
async def bot(fake: FakeTelegram) -> Bot:
    bot = fake.bot()
    await bot.initialize()
    yield bot
    await bot.shutdown()


async def test_get_me_and_send_message(fake: FakeTelegram, bot: Bot) -> None:
    assert bot.username == fake.bot_username
    sent = await bot.send_message(USER, "hello", reply_markup=keyboard("cx:1"))
    stored = fake.last_message(USER)
    assert stored is not None and stored.message_id == sent.message_id
    assert stored.text == "hello" and stored.button_texts == ["Cancel"]
    assert fake.calls("sendMessage")[0].params["reply_markup"]["inline_keyboard"]


async def test_identical_edit_is_not_modified(fake: FakeTelegram, bot: Bot) -> None:
    sent = await bot.send_message(USER, "queued", reply_markup=keyboard("cx:1"))
    await bot.edit_message_text("running", USER, sent.message_id, reply_markup=keyboard("cx:1"))
    with pytest.raises(BadRequest, match=r"(?i)message is not modified"):
        await bot.edit_message_text("running", USER, sent.message_id, reply_markup=keyboard("cx:1"))
    # same text but a different keyboard is a real change
    await bot.edit_message_text("running", USER, sent.message_id)
    msg = fake.message(USER, sent.message_id)
    assert msg is not None and msg.edit_count == 2 and msg.reply_markup is None


async def test_edit_markup_not_modified_and_unknown_message(bot: Bot) -> None:
    sent = await bot.send_message(USER, "x", reply_markup=keyboard("a"))
    with pytest.raises(BadRequest, match=r"(?i)not modified"):
        await bot.edit_message_reply_markup(USER, sent.message_id, reply_markup=keyboard("a"))
    with pytest.raises(BadRequest, match=r"(?i)message to edit not found"):
        await bot.edit_message_text("y", USER, 999)


async def test_callback_data_limit_is_64_bytes(bot: Bot) -> None:
    await bot.send_message(USER, "ok", reply_markup=keyboard("x" * 64))
    with pytest.raises(BadRequest, match=r"(?i)BUTTON_DATA_INVALID"):
        await bot.send_message(USER, "too long", reply_markup=keyboard("x" * 65))
    with pytest.raises(
        BadRequest, match=r"(?i)BUTTON_DATA_INVALID"
    ):  # 33 × 2-byte chars = 66 bytes
        await bot.send_message(USER, "bytes count", reply_markup=keyboard("é" * 33))


async def test_text_and_caption_limits(bot: Bot) -> None:
    await bot.send_message(USER, "a" * 4096)
    with pytest.raises(BadRequest, match=r"(?i)message is too long"):
        await bot.send_message(USER, "a" * 4097)
    with pytest.raises(BadRequest, match=r"(?i)message text is empty"):
        await bot.send_message(USER, "   ")
    with pytest.raises(BadRequest, match=r"(?i)caption is too long"):
        await bot.send_photo(USER, png(), caption="c" * 1025)


async def test_unknown_chat_and_missing_reply_target(bot: Bot) -> None:
    with pytest.raises(BadRequest, match=r"(?i)chat not found"):
        await bot.send_message(424242, "hi")
    with pytest.raises(BadRequest, match=r"(?i)message to be replied not found"):
        await bot.send_message(USER, "hi", reply_to_message_id=777)


async def test_retry_after_from_scripted_429(fake: FakeTelegram, bot: Bot) -> None:
    fake.fail_next("sendMessage", status=429, retry_after=3)
    with pytest.raises(RetryAfter) as info:
        await bot.send_message(USER, "hi")
    assert seconds(info.value.retry_after) == 3
    await bot.send_message(USER, "hi")  # only the next call failed
    assert [c.status for c in fake.calls("sendMessage")] == [429, 200]


async def test_scripted_timeout_and_bad_request(fake: FakeTelegram, bot: Bot) -> None:
    fake.fail_next("sendMessage", timeout=True)
    with pytest.raises(TimedOut):
        await bot.send_message(USER, "hi")
    fake.fail_next("sendMessage", status=400, description="Bad Request: scripted")
    with pytest.raises(BadRequest, match=r"(?i)scripted"):
        await bot.send_message(USER, "hi")


async def test_flood_control_private_burst_then_429(bot: Bot) -> None:
    clock = Clock()
    fake = FakeTelegram(clock=clock, flood_control=True)
    fake.user(USER)
    flood_bot = fake.bot()
    await flood_bot.initialize()
    try:
        for _ in range(3):  # the short burst
            await flood_bot.send_message(USER, "x")
        with pytest.raises(RetryAfter) as info:
            await flood_bot.send_message(USER, "x")
        assert seconds(info.value.retry_after) >= 1
        clock.now += 1.0
        await flood_bot.send_message(USER, "x")
    finally:
        await flood_bot.shutdown()


async def test_flood_control_group_per_minute_and_overall() -> None:
    clock = Clock()
    fake = FakeTelegram(clock=clock, flood_control=FloodControl(private_burst=100))
    group = fake.group(-100777)
    for uid in range(1, 40):
        fake.user(uid)
    flood_bot = fake.bot()
    await flood_bot.initialize()
    try:
        for i in range(20):
            clock.now += 0.1
            await flood_bot.send_message(group.id, f"g{i}")
        with pytest.raises(RetryAfter) as info:
            await flood_bot.send_message(group.id, "one too many")
        assert 1 <= seconds(info.value.retry_after) <= 60
        clock.now += 61
        await flood_bot.send_message(group.id, "after a minute")
        clock.now += 5
        for uid in range(1, 31):  # 30 different chats within one second are fine
            await flood_bot.send_message(uid, "hi")
        with pytest.raises(RetryAfter):
            await flood_bot.send_message(31, "the 31st in the same second")
    finally:
        await flood_bot.shutdown()


async def test_media_roundtrip_and_size_limits(
    fake: FakeTelegram, bot: Bot, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = png(64, 48)
    photo_msg = await bot.send_photo(USER, data, caption="seed 7")
    assert photo_msg.photo[-1].width == 64
    assert fake.sent_media(USER)[0].media == data
    tg_file = await bot.get_file(photo_msg.photo[-1].file_id)
    assert bytes(await tg_file.download_as_bytearray()) == data

    with pytest.raises(BadRequest, match=r"(?i)IMAGE_PROCESS_FAILED"):
        await bot.send_photo(USER, b"not an image")
    with pytest.raises(BadRequest, match=r"(?i)PHOTO_INVALID_DIMENSIONS"):
        await bot.send_photo(USER, png(2100, 100))
    with pytest.raises(BadRequest, match=r"(?i)photo is too big"):
        await bot.send_photo(USER, b"\0" * (10 * 1024 * 1024 + 1))

    monkeypatch.setattr(fake_module, "FILE_UPLOAD_LIMIT", 1000)
    doc = await bot.send_document(USER, b"d" * 1000, filename="orig.png")
    assert doc.document.file_name == "orig.png"
    with pytest.raises(BadRequest, match=r"(?i)file is too big"):
        await bot.send_document(USER, b"d" * 1001, filename="big.png")
    anim = await bot.send_animation(USER, b"GIF89a", filename="a.gif")
    video = await bot.send_video(USER, b"mp4", filename="v.mp4")
    assert anim.animation is not None and video.video is not None
    assert [m.media_kind for m in fake.sent_media(USER)] == [
        "photo",
        "document",
        "animation",
        "video",
    ]


async def test_get_file_download_limit(fake: FakeTelegram, bot: Bot) -> None:
    big = fake.register_file(b"\0" * (20 * 1024 * 1024 + 1), kind="photo")
    with pytest.raises(BadRequest, match=r"(?i)file is too big"):
        await bot.get_file(big.file_id)
    with pytest.raises(BadRequest, match=r"(?i)invalid file_id"):
        await bot.get_file("nope")


async def test_user_photo_can_be_fetched_by_the_bot(fake: FakeTelegram, bot: Bot) -> None:
    user = fake.users[USER]
    data = png(40, 30)
    payload = user.send_photo(data, caption="/i2i make it blue")
    update = Update.de_json(payload, bot)
    assert update.message is not None and update.message.caption == "/i2i make it blue"
    largest = update.message.photo[-1]
    assert (largest.width, largest.height) == (40, 30)
    tg_file = await bot.get_file(largest.file_id)
    assert bytes(await tg_file.download_as_bytearray()) == data


async def test_unknown_method_wrong_token_and_webhook_conflict(
    fake: FakeTelegram, bot: Bot
) -> None:
    async with httpx.AsyncClient(transport=fake.transport) as client:
        response = await client.post(f"https://api.telegram.org/bot{fake.token}/noSuchMethod")
    assert response.status_code == 404 and response.json()["ok"] is False
    stranger = Bot("1:wrong", request=fake.request())
    with pytest.raises(InvalidToken):
        await stranger.get_me()
    await bot.set_webhook("https://bot.example/telegram", secret_token="s3cr3t")
    assert fake.webhook is not None and fake.webhook["secret_token"] == "s3cr3t"
    with pytest.raises(Conflict):
        await bot.get_updates()
    await bot.delete_webhook()
    assert await bot.get_updates() == ()


async def test_set_my_commands_is_validated_and_stored(fake: FakeTelegram, bot: Bot) -> None:
    await bot.set_my_commands([BotCommand("make", "Generate")], language_code="de")
    assert fake.commands[('{"type": "default"}', "de")][0]["command"] == "make"
    with pytest.raises(BadRequest, match=r"(?i)BOT_COMMAND_INVALID"):
        await bot.set_my_commands([BotCommand("Make-It", "bad name")])


async def test_tap_and_answer_callback_query(fake: FakeTelegram, bot: Bot) -> None:
    user = fake.users[USER]
    sent = await bot.send_message(USER, "progress", reply_markup=keyboard("cx:abc"))
    stored = fake.message(USER, sent.message_id)
    assert stored is not None
    payload = user.tap(stored, "Cancel")
    query = Update.de_json(payload, bot).callback_query
    assert query is not None and query.data == "cx:abc"
    assert user.callback_answer(payload) is None
    await query.answer("cancelled", show_alert=True)
    answer = user.callback_answer(payload)
    assert answer is not None and answer["text"] == "cancelled" and answer["show_alert"]
    with pytest.raises(BadRequest, match=r"(?i)query is too old"):
        await query.answer()
    with pytest.raises(AssertionError, match=r"(?i)no button"):
        user.tap(stored, "Missing")


async def test_wait_for_message_is_bounded(fake: FakeTelegram) -> None:
    with pytest.raises(AssertionError, match=r"(?i)timed out"):
        await fake.wait_for_message(USER, "never", timeout=0.05)


async def test_polling_delivers_updates_to_the_application(fake: FakeTelegram) -> None:
    async def make(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        assert update.effective_message is not None
        await update.effective_message.reply_text(f"got {' '.join(context.args)}")

    async def on_button(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        assert update.callback_query is not None
        await update.callback_query.answer()
        await update.callback_query.edit_message_text("cancelled")

    app = (
        ApplicationBuilder()
        .token(fake.token)
        .request(fake.request())
        .get_updates_request(fake.request())
        .build()
    )
    app.add_handler(CommandHandler("make", make))
    app.add_handler(CallbackQueryHandler(on_button, pattern=r"^cx:"))
    user = fake.users[USER]
    async with app:
        await app.start()
        await app.updater.start_polling(poll_interval=0.0, timeout=1)
        try:
            user.send_command("/make a red fox")
            await fake.wait_for_message(USER, "got a red fox")
            await app.bot.send_message(USER, "progress", reply_markup=keyboard("cx:1"))
            progress = await fake.wait_for_message(USER, "progress")
            tapped = user.tap(progress, "cx:1")
            await fake.wait_for_message(USER, "cancelled")
            await fake.wait_for(lambda: user.callback_answer(tapped), what="the answer")
        finally:
            await app.updater.stop()
            await app.stop()
    assert not fake.pending_updates or all(
        u["update_id"] > tapped["update_id"] for u in fake.pending_updates
    )
