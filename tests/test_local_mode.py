"""Local mode in process: the real bot behind the Bot API emulator, driven through the web chat
API on 127.0.0.1 (no browser), with the preview backend on a fast timeline. Plus the
emulator's Telegram-like answers and the backend selection. (``python -m bot`` without a token
is tested in tests/test_config.py.)
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from bot.app import build_application, get_runtime, initialize, shutdown
from bot.config import Settings, load_settings
from bot.local.emulator import BotApiEmulator, command_entities
from bot.local.runner import LOCAL_USER_ID, LocalRuntime
from bot.local.webchat import language_code
from generation.client import ComfyDeployClient
from generation.preview import PREVIEW_DEPLOYMENTS, PreviewBackend
from handlers.deps import services_of
from tests.e2e.local import (
    HEADERS,
    Chat,
    answer_to,
    bot_photos,
    local_runtime,
    make_settings,
    png_bytes,
    reply_to,
)

PROMPT = "a lighthouse at dusk"


@pytest.fixture
async def runtime(tmp_path: Path) -> AsyncIterator[LocalRuntime]:
    async with local_runtime(tmp_path) as rt:
        yield rt


@pytest.fixture
async def client(runtime: LocalRuntime) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=runtime.url, headers=HEADERS, timeout=10) as c:
        yield c


# ------------------------------------------------------------------ the whole flow


async def test_make_shows_live_progress_then_the_photo_and_buttons_work(
    runtime: LocalRuntime, client: httpx.AsyncClient
) -> None:
    chat = Chat(client)
    first = await chat.refresh(wait=0)
    assert first["backend"] == "preview" and first["messages"] == []
    assert any(c["command"] == "make" for c in first["commands"])  # the bot's command menu

    request_id = await chat.send(f"/make {PROMPT}")
    progress = await chat.until(reply_to(request_id), "the progress message")
    assert "preview" in progress["text"]  # the preview backend is named in the progress text

    photo = (await chat.until(bot_photos, "the photo"))[0]
    assert PROMPT in photo["caption"]
    final = next(m for m in chat.state["messages"] if m["id"] == progress["id"])
    assert final["edits"] >= 1  # the same message was edited in place, not re-sent
    assert len(chat.seen_texts[progress["id"]]) >= 2, chat.seen_texts[progress["id"]]

    media = await client.get(photo["media"])
    assert media.status_code == 200 and media.headers["content-type"] == "image/png"
    with Image.open(io.BytesIO(media.content)) as image:
        assert image.size == (photo["w"], photo["h"]) == (1024, 1024)

    # a result button: "again with a new seed" makes a second photo
    buttons = [b for row in photo["buttons"] for b in row if "callback_data" in b]
    assert buttons, photo
    again = next(b for b in buttons if b["callback_data"].startswith("x:ag:"))
    r = await client.post(
        "/api/press", json={"message_id": photo["id"], "data": again["callback_data"]}
    )
    assert r.status_code == 200, r.text
    photos = await chat.until(lambda ms: len(bot_photos(ms)) >= 2 and bot_photos(ms), "2nd photo")
    assert photos[1]["caption"] != photos[0]["caption"]  # a new seed


async def test_uploaded_photo_with_i2i_caption_is_transformed(
    runtime: LocalRuntime, client: httpx.AsyncClient
) -> None:
    chat = Chat(client)
    r = await client.post(
        "/api/upload",
        data={"caption": "/i2i as a watercolor", "lang": "en", "as_file": "0"},
        files={"file": ("cat.png", png_bytes((300, 200)), "image/png")},
    )
    assert r.status_code == 200, r.text
    upload_id = r.json()["message_id"]
    state = await chat.refresh(wait=0)
    sent = next(m for m in state["messages"] if m["id"] == upload_id)
    assert sent["out"] and sent["kind"] == "photo" and (sent["w"], sent["h"]) == (300, 200)

    photo = (await chat.until(bot_photos, "the i2i result"))[0]
    result = await client.get(photo["media"])
    with Image.open(io.BytesIO(result.content)) as image:
        assert image.size == (300, 200)  # rendered from the uploaded photo (its aspect)


async def test_local_user_is_an_admin_and_sees_the_preview_deployments(
    runtime: LocalRuntime, client: httpx.AsyncClient
) -> None:
    chat = Chat(client)
    request_id = await chat.send("/deployments")
    answer = await chat.until(answer_to(request_id), "the deployments list")
    assert PREVIEW_DEPLOYMENTS["MAKE"] in answer["text"]
    services = services_of(runtime.application)
    assert LOCAL_USER_ID in services.config.admin_ids
    assert isinstance(get_runtime(runtime.application).backend, PreviewBackend)


async def test_browser_language_reaches_the_bot(
    runtime: LocalRuntime, client: httpx.AsyncClient
) -> None:
    chat = Chat(client)
    request_id = await chat.send("/help", lang="de-DE")
    answer = await chat.until(answer_to(request_id), "the help text")
    i18n = services_of(runtime.application).i18n
    assert answer["text"].startswith(i18n.t("de", "help.user"))
    assert i18n.t("de", "help.user") != i18n.t("en", "help.user")


async def test_posts_need_the_local_header_and_a_loopback_host(
    runtime: LocalRuntime,
) -> None:
    async with httpx.AsyncClient(base_url=runtime.url, timeout=5) as bare:
        r = await bare.post("/api/send", json={"text": "/start"})
        assert r.status_code == 403
        r = await bare.get("/api/state", headers={"host": "evil.example"})
        assert r.status_code == 400  # DNS rebinding guard
        page = await bare.get("/")
        assert page.status_code == 200 and "app.js" in page.text
        assert "default-src 'self'" in page.headers["content-security-policy"]
        for asset in ("/static/app.js", "/static/style.css"):
            assert (await bare.get(asset)).status_code == 200
    assert runtime.emulator.messages(LOCAL_USER_ID) == []  # nothing reached the bot


async def test_bad_uploads_and_presses_are_refused(
    runtime: LocalRuntime, client: httpx.AsyncClient
) -> None:
    r = await client.post(
        "/api/upload", files={"file": ("x.png", b"not an image", "image/png")}, data={}
    )
    assert r.status_code == 400 and "image" in r.json()["error"]
    r = await client.post("/api/press", json={"message_id": 99, "data": "zz"})
    assert r.status_code == 404
    r = await client.post("/api/send", json={"text": "   "})
    assert r.status_code == 400
    assert (await client.get("/media/nope")).status_code == 404


# ------------------------------------------------------------------ the emulator itself


async def call(emulator: BotApiEmulator, method: str, **params: Any) -> httpx.Response:
    async with httpx.AsyncClient(transport=emulator.transport) as c:
        return await c.post(f"http://api.local/bot{emulator.token}/{method}", json=params)


async def test_emulator_answers_like_telegram() -> None:
    emulator = BotApiEmulator()
    user = {"id": 5, "is_bot": False, "first_name": "U"}
    emulator.send_text(user, "/start")
    sent = await call(emulator, "sendMessage", chat_id=5, text="hello")
    message_id = sent.json()["result"]["message_id"]
    same = await call(emulator, "editMessageText", chat_id=5, message_id=message_id, text="hello")
    assert same.status_code == 400 and "not modified" in same.json()["description"]
    edited = await call(emulator, "editMessageText", chat_id=5, message_id=message_id, text="hi")
    assert edited.json()["result"]["edit_date"]
    assert (await call(emulator, "sendMessage", chat_id=6, text="x")).status_code == 400
    assert (await call(emulator, "sendMessage", chat_id=5, text=" ")).status_code == 400
    too_long = {"inline_keyboard": [[{"text": "b", "callback_data": "x" * 65}]]}
    r = await call(emulator, "sendMessage", chat_id=5, text="k", reply_markup=too_long)
    assert r.status_code == 400
    r = await call(emulator, "answerCallbackQuery", callback_query_id="123")
    assert r.status_code == 400
    wrong_token = await httpx.AsyncClient(transport=emulator.transport).post(
        "http://api.local/bot2:other/getMe"
    )
    assert wrong_token.status_code == 401
    updates = (await call(emulator, "getUpdates", offset=0, timeout=0)).json()["result"]
    assert updates[0]["message"]["entities"][0]["type"] == "bot_command"


async def test_emulator_long_polls_and_serves_uploaded_files() -> None:
    emulator = BotApiEmulator(long_poll_cap=5)
    user = {"id": 5, "is_bot": False, "first_name": "U"}
    waiting = asyncio.create_task(call(emulator, "getUpdates", timeout=5))
    await asyncio.sleep(0)  # let the poll start waiting
    assert not waiting.done()
    msg = emulator.send_photo(user, png_bytes(), caption="/i2i x")
    updates = (await asyncio.wait_for(waiting, 5)).json()["result"]
    photo = updates[0]["message"]["photo"][-1]
    assert updates[0]["message"]["caption_entities"][0]["length"] == 4
    info = (await call(emulator, "getFile", file_id=photo["file_id"])).json()["result"]
    async with httpx.AsyncClient(transport=emulator.transport) as c:
        data = await c.get(f"http://api.local/file/bot{emulator.token}/{info['file_path']}")
    assert data.content == png_bytes() and msg.file_id == photo["file_id"]
    # a callback on a button that does not exist is refused; on one that does, it queues
    with pytest.raises(LookupError):
        emulator.press(user, msg.message_id, "nope")


async def test_wait_changed_returns_on_change_or_after_the_wait() -> None:
    emulator = BotApiEmulator()
    version = emulator.version
    assert await emulator.wait_changed(version, 0.01) == version  # nothing changed
    waiter = asyncio.create_task(emulator.wait_changed(version, 5))
    await asyncio.sleep(0)
    emulator.send_text({"id": 1, "is_bot": False, "first_name": "U"}, "hi")
    assert await asyncio.wait_for(waiter, 5) > version
    # at shutdown every long poll (the page's and the bot's) answers at once
    waiter = asyncio.create_task(emulator.wait_changed(emulator.version, 30))
    poll = asyncio.create_task(call(emulator, "getUpdates", offset=10**6, timeout=30))
    await asyncio.sleep(0)
    emulator.close()
    await asyncio.wait_for(asyncio.gather(waiter, poll), 5)
    assert await emulator.wait_changed(emulator.version, 30) == emulator.version


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("de-AT", "de"), ("pt_BR", "pt"), ("EN", "en"), ("", None), ("1x", None), (None, None)],
)
def test_language_code(raw: Any, expected: str | None) -> None:
    assert language_code(raw) == expected


def test_command_entities() -> None:
    assert command_entities("/make@bot x") == [{"type": "bot_command", "offset": 0, "length": 9}]
    assert command_entities("make x") is None
    assert command_entities("/ nope") is None


# ------------------------------------------------------------------ settings and wiring


@pytest.mark.parametrize(
    ("backend", "key", "preview"),
    [
        ("auto", None, True),
        ("auto", "k", False),
        ("preview", "k", True),
        ("comfydeploy", None, False),
    ],
)
def test_backend_selection(backend: str, key: str | None, preview: bool) -> None:
    settings = Settings(_env_file=None, generation_backend=backend, comfydeploy_api_key=key)
    assert settings.preview_backend is preview


def test_local_mode_listens_on_loopback_unless_told(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LISTEN_HOST", raising=False)
    assert load_settings(_env_file=None).local_listen_host == "127.0.0.1"
    monkeypatch.setenv("LISTEN_HOST", "")
    assert load_settings(_env_file=None).local_listen_host == "127.0.0.1"
    assert load_settings(_env_file=None).listen_host == "0.0.0.0"  # webhook mode default
    monkeypatch.setenv("LISTEN_HOST", "0.0.0.0")
    assert load_settings(_env_file=None).local_listen_host == "0.0.0.0"


async def test_preview_setting_with_a_token_uses_the_preview_backend(tmp_path: Path) -> None:
    emulator = BotApiEmulator(token="42:TestToken")
    from telegram.request import HTTPXRequest

    def request() -> HTTPXRequest:
        return HTTPXRequest(httpx_kwargs={"transport": emulator.transport})

    async def start(**extra: Any) -> Any:
        settings = make_settings(tmp_path, telegram_bot_token=emulator.token, **extra)
        app = build_application(settings, request=request(), get_updates_request=request())
        await initialize(app)
        return app

    app = await start(generation_backend="preview", comfydeploy_api_key="real-key")
    try:
        services = services_of(app)
        assert isinstance(get_runtime(app).backend, PreviewBackend)
        assert services.backend_label == "preview"
        assert services.http_transport is get_runtime(app).backend.transport
        stored = await services.storage.deployments.list_deployments("MAKE")
        assert [d.deployment_id for d in stored] == [PREVIEW_DEPLOYMENTS["MAKE"]]
    finally:
        await shutdown(app)
    # back on ComfyDeploy: the preview deployments are removed, nothing is labelled preview
    app = await start(generation_backend="comfydeploy", comfydeploy_api_key="real-key")
    try:
        services = services_of(app)
        assert isinstance(get_runtime(app).backend, ComfyDeployClient)
        assert services.backend_label is None
        assert await services.storage.deployments.list_deployments() == []
    finally:
        await shutdown(app)


async def test_a_batch_arrives_as_an_album_in_the_web_chat(
    runtime: LocalRuntime, client: httpx.AsyncClient
) -> None:
    """Local mode end to end: ``--batch 3`` on the preview backend renders three images; the
    emulator's sendMediaGroup delivers them as one album, then the U/V buttons; U2 works."""
    chat = Chat(client)
    await chat.refresh(wait=0)
    await chat.send("/make three lighthouses --batch 3 --ar 3:2")
    photos = await chat.until(lambda ms: len(bot_photos(ms)) >= 3 and bot_photos(ms), "album")
    assert abs(photos[0]["w"] / photos[0]["h"] - 1.5) < 0.01  # --ar 3:2 (the preview scales)
    keyboard = await chat.until(
        lambda ms: next((m for m in ms if m.get("buttons") and m.get("kind") is None), None),
        "the U/V buttons",
    )
    labels = [b["text"] for row in keyboard["buttons"] for b in row]
    assert labels[:6] == ["U1", "U2", "U3", "V1", "V2", "V3"]
    u2 = next(b for row in keyboard["buttons"] for b in row if b["text"] == "U2")
    r = await client.post(
        "/api/press", json={"message_id": keyboard["id"], "data": u2["callback_data"]}
    )
    assert r.status_code == 200, r.text
    await chat.until(lambda ms: len(bot_photos(ms)) >= 4 and bot_photos(ms), "the upscale")
    storage = services_of(runtime.application).storage
    runs = await storage.runs.list_user_runs(LOCAL_USER_ID, active_only=False)
    assert [r.type for r in runs[:2]] == ["UPSCALE", "MAKE"] and runs[1].request["batch"] == 3
