"""Fuzzing Telegram updates (issue #5 point 5) with hypothesis.

Random updates — text and captions with commands, entities with wrong offsets, photos, documents
of any MIME type and claimed size, callback data, edited messages, channel posts, groups — go
through ``Application.process_update`` of the real bot (real handlers, generation service,
storage, fake Telegram and ComfyDeploy). No example may crash a handler: the error handler's
"unhandled error" (or any ERROR record) counts as a failure. Afterwards the ledger must be
consistent (balances equal the ledger's sum, holds match runs).

One application serves every example (a sync test drives its own event loop), so 1,000 examples
run in seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from telegram import Update

from tests.e2e.inprocess import ADMIN_ID, E2E, MAKE_INPUTS, build_harness
from tests.fakes.comfydeploy import Timeline
from tests.fakes.telegram import FakeMessage

EXAMPLES = 1000

COMMANDS = [
    "/make", "/i2i", "/inpaint", "/cancel", "/balance", "/settings", "/start", "/help",
    "/deployments", "/deployment", "/loras", "/lora", "/price", "/setbalance", "/grant",
    "/stats", "/frobnicate", "/make@fake_test_bot", "/make@other_bot", "/MAKE",
]  # fmt: skip
CALLBACK_PREFIXES = ["r:cx:", "r:ag:", "r:pm:", "r:of:", "s:", "m:", "x", "", "s:lang:", "a:"]
USER_IDS = [ADMIN_ID, 7001, 7002, 7003]
CHATS = [
    {"id": 7001, "type": "private"},
    {"id": 7002, "type": "private"},
    {"id": -100777, "type": "group", "title": "G"},
    {"id": -1001234567890, "type": "supergroup", "title": "S"},
    {"id": -1009999999999, "type": "channel", "title": "C"},
]
ENTITY_TYPES = ["bot_command", "bold", "mention", "url", "text_link", "code", "pre", "hashtag"]


class ErrorRecords(logging.Handler):
    """Collects every ERROR (and worse) record, from any logger."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextlib.contextmanager
def fuzz_session(tmp_path: Path) -> Iterator[tuple[asyncio.AbstractEventLoop, E2E, ErrorRecords]]:
    """One event loop and one end-to-end harness for all examples of a fuzz target (hypothesis'
    ``@given`` runs synchronously), with every ERROR record of any logger collected."""
    loop = asyncio.new_event_loop()
    errors = ErrorRecords()
    root = logging.getLogger()
    root.addHandler(errors)
    env, close = loop.run_until_complete(build_harness(tmp_path))
    try:
        yield loop, env, errors
    finally:
        root.removeHandler(errors)
        loop.run_until_complete(close())
        loop.close()


def _png(w: int, h: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (w % 256, h % 256, 9)).save(buf, "PNG")
    return buf.getvalue()


def _describe(record: logging.LogRecord) -> str:
    text = record.getMessage()[:300]
    if record.exc_info:
        text += "\n" + logging.Formatter().formatException(record.exc_info)[-1500:]
    return text


texts = st.one_of(
    st.text(max_size=60),
    st.builds(
        lambda c, rest: f"{c} {rest}".rstrip(),
        st.sampled_from(COMMANDS),
        st.one_of(
            st.text(max_size=40),
            st.sampled_from(["add MAKE x", "remove", "add", "1 2", "-5", "9" * 30, "a b c d e"]),
        ),
    ),
    st.just("x" * 5000),
)
entities = st.lists(
    st.fixed_dictionaries(
        {
            "type": st.sampled_from(ENTITY_TYPES),
            "offset": st.integers(-5, 80),
            "length": st.integers(-2, 80),
        },
        optional={"url": st.just("https://example.org")},
    ),
    max_size=3,
)


@st.composite
def media(draw: st.DrawFn, env: E2E) -> dict[str, Any]:
    kind = draw(st.sampled_from(["photo", "document", "sticker", "none"]))
    if kind == "none":
        return {}
    choice = draw(st.sampled_from(["png", "junk", "empty", "tiny"]))
    data = {
        "png": _png(draw(st.integers(1, 40)), draw(st.integers(1, 40))),
        "junk": draw(st.binary(max_size=64)),
        "empty": b"",
        "tiny": b"\x89PNG\r\n\x1a\n",
    }[choice]
    fake_file = env.fake.register_file(data, kind=kind, ext="png")
    claimed = draw(st.one_of(st.none(), st.integers(0, 200 * 1024 * 1024)))
    base = {"file_id": fake_file.file_id, "file_unique_id": fake_file.file_unique_id}
    if claimed is not None:
        base["file_size"] = claimed
    if kind == "photo":
        size = {"width": draw(st.integers(1, 40000)), "height": draw(st.integers(1, 40000))}
        return {"photo": [{**base, **size}]}
    if kind == "sticker":
        return {
            "sticker": {
                **base,
                "type": "regular",
                "width": 512,
                "height": 512,
                "is_animated": False,
                "is_video": False,
            }
        }
    mime = draw(
        st.one_of(
            st.none(),
            st.sampled_from(["image/png", "image/jpeg", "image/webp", "application/pdf", "image/"]),
            st.text(max_size=20),
        )
    )
    doc = {**base, "file_name": draw(st.text(max_size=20))}
    if mime is not None:
        doc["mime_type"] = mime
    return {"document": doc}


def _existing(env: E2E, chat_id: int) -> int:
    """A new message id in ``chat_id``, stored in the fake (so replies to it work)."""
    message = FakeMessage(
        message_id=env.fake._new_message_id(chat_id),
        chat_id=chat_id,
        from_bot=False,
        sender={"id": 1, "is_bot": False, "first_name": "U"},
        date=1_700_000_000,
        text="x",
    )
    env.fake._store(message)
    return message.message_id


@st.composite
def updates(draw: st.DrawFn, env: E2E, counter: list[int]) -> dict[str, Any]:
    counter[0] += 1
    user_id = draw(st.sampled_from(USER_IDS))
    user = {"id": user_id, "is_bot": False, "first_name": "U"}
    lang = draw(st.sampled_from([None, "en", "ru", "de-AT", "es", "zz", ""]))
    if lang:
        user["language_code"] = lang
    chat = dict(draw(st.sampled_from([{"id": user_id, "type": "private"}, *CHATS])))
    env.fake.add_chat(chat["id"], type_=chat["type"])
    message: dict[str, Any] = {
        "message_id": _existing(env, chat["id"]),  # Telegram only sends messages that exist
        "date": 1_700_000_000,
        "chat": chat,
    }
    if chat["type"] != "channel" or draw(st.booleans()):
        message["from"] = user
    body = draw(media(env))
    message.update(body)
    text = draw(texts)
    if body:
        if draw(st.booleans()):
            message["caption"] = text
            message["caption_entities"] = draw(entities)
    else:
        message["text"] = text
        ents = draw(entities)
        if text.startswith("/") and draw(st.booleans()):
            ents = [{"type": "bot_command", "offset": 0, "length": len(text.split()[0])}, *ents]
        message["entities"] = ents
    if draw(st.booleans()):
        message["reply_to_message"] = {
            "message_id": _existing(env, chat["id"]),
            "date": 1_700_000_000,
            "chat": chat,
            **draw(media(env)),
        }
    kind = draw(st.sampled_from(["message", "edited_message", "channel_post", "callback_query"]))
    update: dict[str, Any] = {"update_id": counter[0]}
    if kind == "callback_query":
        data = draw(st.sampled_from(CALLBACK_PREFIXES)) + draw(st.text(max_size=40))
        query_id = f"fz{counter[0]}"
        env.fake.callback_queries[query_id] = {"answered": False, "user_id": user_id}
        # buttons only exist on the bot's own messages: the query's message is one of those
        bot_message = FakeMessage(
            message_id=env.fake._new_message_id(chat["id"]),
            chat_id=chat["id"],
            from_bot=True,
            sender=env.fake.bot_user,
            date=1_700_000_000,
            text=draw(st.text(min_size=1, max_size=30)),
        )
        env.fake._store(bot_message)
        update["callback_query"] = {
            "id": query_id,
            "from": user,
            "chat_instance": "1",
            "data": data.encode()[:64].decode(errors="ignore"),
            "message": env.fake.message_dict(bot_message),
        }
    elif kind == "edited_message":
        message["edit_date"] = 1_700_000_001
        update["edited_message"] = message
    elif kind == "channel_post":
        message["chat"] = CHATS[-1]
        message.pop("from", None)
        update["channel_post"] = message
    else:
        update["message"] = message
    return update


def test_random_updates_never_crash_the_bot(tmp_path: Path) -> None:
    counter = [0]
    ran = [0]
    with fuzz_session(tmp_path) as (loop, env, errors):

        async def setup() -> None:
            await env.add_deployment(timeline=Timeline.stall())
            await env.add_deployment("I2I", inputs=(*MAKE_INPUTS, "input_image"))
            await env.storage.prices.set("MAKE", 1)
            for uid in USER_IDS:
                await env.storage.users.get_or_create(uid, language_code="en")
                await env.storage.ledger.set_balance(uid, 3, actor=None)

        loop.run_until_complete(setup())

        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            database=None,
        )
        @given(data=st.data())
        def one(data: st.DataObject) -> None:
            update = data.draw(updates(env, counter))
            before = len(errors.records)

            async def feed() -> None:
                await env.app.process_update(Update.de_json(update, env.app.bot))
                await env.service.bus.drain()

            loop.run_until_complete(asyncio.wait_for(feed(), 10))
            ran[0] += 1
            new = errors.records[before:]
            assert not new, f"{_describe(new[0])}\nfor {update}"

        one()
        assert ran[0] >= EXAMPLES
        loop.run_until_complete(env.settle())
        assert loop.run_until_complete(env.storage.ledger.check_consistency()) == []
        print(f"\nfuzzed updates: {ran[0]} examples")
