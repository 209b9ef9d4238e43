"""Composition root: build_application + post_init/post_shutdown against the fakes, the
per-chat update processor, polling and webhook mode end to end."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from telegram import Update
from telegram.ext import Application, ContextTypes, TypeHandler

from bot.app import build_application, get_runtime, initialize, shutdown
from bot.config import Settings
from bot.processor import PerChatUpdateProcessor
from bot.server import SECRET_HEADER, serve_webhook
from generation.service import GenerationService
from handlers.deps import Services, services_of
from handlers.i18n import SUPPORTED_LANGUAGES, Translator
from tests.fakes.comfydeploy import FakeComfyDeploy
from tests.fakes.telegram import FakeTelegram

API_KEY_MARK = "ComfyKey-VerySecret-0042"


@pytest.fixture
def fake() -> FakeTelegram:
    fake = FakeTelegram()
    fake.user(1001, language_code="ru")
    return fake


@pytest.fixture
async def comfy() -> AsyncIterator[FakeComfyDeploy]:
    fake = FakeComfyDeploy(auth_token=API_KEY_MARK)
    yield fake
    await fake.aclose()


def make_settings(
    tmp_path: Path, fake: FakeTelegram, comfy: FakeComfyDeploy, **extra: Any
) -> Settings:
    values: dict[str, Any] = {
        "telegram_bot_token": fake.token,
        "comfydeploy_api_key": comfy.auth_token,
        "comfydeploy_api_url": comfy.base_url,
        "database_path": str(tmp_path / "db" / "bot.sqlite3"),
        "admin_ids": "7",
    }
    values.update(extra)
    return Settings(_env_file=None, **values)


def build(settings: Settings, fake: FakeTelegram, comfy: FakeComfyDeploy) -> Application:
    return build_application(
        settings,
        request=fake.request(),
        get_updates_request=fake.request(),
        comfy_transport=comfy.transport,
    )


async def test_post_init_wires_everything_and_shutdown_closes_it(
    tmp_path: Path, fake: FakeTelegram, comfy: FakeComfyDeploy
) -> None:
    app = build(make_settings(tmp_path, fake, comfy), fake, comfy)
    await initialize(app)
    try:
        services = services_of(app)
        assert isinstance(services, Services)
        assert isinstance(services.generation, GenerationService)
        assert services.config.admin_ids == frozenset({7})
        assert (tmp_path / "db" / "bot.sqlite3").exists()
        # the webhook secret was generated, stored and handed to the generation module
        stored = await services.storage.settings.get("webhook_secret")
        assert stored and get_runtime(app).webhook_secret == stored
        run_key = await services.storage.settings.get("run_webhook_key")
        # The per-run webhook tokens have a key of their own, not Telegram's secret_token.
        assert run_key and run_key != stored
        assert services.generation.settings.webhook_secret == run_key
        assert services.generation.settings.webhook_url is None  # polling mode
        # localized command menus: default (English) + one per language
        i18n = Translator.load()
        languages = {lang for (_scope, lang) in fake.commands}
        assert languages == {"", *(lang for lang in SUPPORTED_LANGUAGES if lang != "en")}
        ru = {c["command"]: c["description"] for c in fake.commands[('{"type": "default"}', "ru")]}
        assert ru["make"] == i18n.t("ru", "bot.cmd.make") != i18n.t("en", "bot.cmd.make")
        assert len(app.handlers) > 1  # handlers.register added the bot's handlers
    finally:
        await shutdown(app)
    infra = get_runtime(app)
    assert infra.closed and not infra.service_started
    assert infra.storage.db.closed


async def test_configured_webhook_secret_is_used_in_webhook_mode(
    tmp_path: Path, fake: FakeTelegram, comfy: FakeComfyDeploy
) -> None:
    settings = make_settings(
        tmp_path, fake, comfy, webhook_secret="configured_Secret-1", public_url="https://b.example"
    )
    app = build(settings, fake, comfy)
    assert app.updater is None  # webhook mode: our own server feeds update_queue
    await initialize(app)
    try:
        services = services_of(app)
        assert get_runtime(app).webhook_secret == "configured_Secret-1"
        assert await services.storage.settings.get("webhook_secret") is None
        gen = services.generation.settings
        assert gen.webhook_url == "https://b.example/comfydeploy/webhook"
    finally:
        await shutdown(app)


async def test_missing_api_key_starts_with_a_warning(
    tmp_path: Path, fake: FakeTelegram, comfy: FakeComfyDeploy, caplog: pytest.LogCaptureFixture
) -> None:
    app = build(make_settings(tmp_path, fake, comfy, comfydeploy_api_key=None), fake, comfy)
    with caplog.at_level(logging.WARNING, logger="bot.backends"):
        await initialize(app)
    try:
        assert any("COMFYDEPLOY_API_KEY" in r.getMessage() for r in caplog.records)
        assert get_runtime(app).service_started
    finally:
        await shutdown(app)


async def test_polling_delivers_updates_and_counts_them(
    tmp_path: Path, fake: FakeTelegram, comfy: FakeComfyDeploy, caplog: pytest.LogCaptureFixture
) -> None:
    app = build(make_settings(tmp_path, fake, comfy), fake, comfy)
    seen = asyncio.Event()

    async def spy(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        seen.set()

    app.add_handler(TypeHandler(Update, spy), group=1000)
    with caplog.at_level(logging.DEBUG):
        await initialize(app)
        try:
            await app.start()
            assert app.updater is not None
            await app.updater.start_polling(poll_interval=0.0, timeout=1)
            fake.users[1001].send_command("/start")
            await asyncio.wait_for(seen.wait(), 3.0)
            reply = await fake.wait_for(lambda: fake.last_message(1001), what="a reply")
            assert reply.content  # the handlers answered /start
            assert get_runtime(app).metrics.value("updates_total") >= 1
            await app.updater.stop()
        finally:
            await shutdown(app)
    secret = get_runtime(app).webhook_secret
    for value in (fake.token, API_KEY_MARK, secret):
        assert value not in caplog.text


async def test_webhook_mode_serves_and_stops_cleanly(
    tmp_path: Path, fake: FakeTelegram, comfy: FakeComfyDeploy
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    settings = make_settings(
        tmp_path,
        fake,
        comfy,
        public_url="http://127.0.0.1:1",
        listen_host="127.0.0.1",
        listen_port=port,
        webhook_secret="wh_secret",
    )
    app = build(settings, fake, comfy)
    seen = asyncio.Event()

    async def spy(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        seen.set()

    app.add_handler(TypeHandler(Update, spy), group=1000)
    runner = asyncio.create_task(serve_webhook(app, settings))
    infra = get_runtime(app)
    await asyncio.wait_for(infra.http_ready.wait(), 10.0)
    await fake.wait_for(lambda: fake.webhook is not None, what="setWebhook after listening")
    assert fake.webhook is not None
    assert fake.webhook["url"] == "http://127.0.0.1:1/telegram"
    assert fake.webhook["secret_token"] == "wh_secret"
    assert "callback_query" in fake.webhook["allowed_updates"]
    base = f"http://127.0.0.1:{port}"
    async with httpx.AsyncClient(base_url=base, timeout=5) as client:
        assert (await client.get("/healthz")).json()["status"] == "ok"
        update = fake.users[1001].send_command("/help", queue=False)
        wrong = await client.post("/telegram", json=update, headers={SECRET_HEADER: "nope"})
        assert wrong.status_code == 403
        right = await client.post("/telegram", json=update, headers={SECRET_HEADER: "wh_secret"})
        assert right.status_code == 200
        await asyncio.wait_for(seen.wait(), 3.0)
    infra.http_server.should_exit = True
    await asyncio.wait_for(runner, 10.0)
    assert infra.closed and infra.storage.db.closed
    assert not app.running


# ------------------------------------------------------------------ update processor


def chat_update(chat_id: int, update_id: int) -> Update:
    return Update.de_json(
        {
            "update_id": update_id,
            "message": {
                "message_id": update_id,
                "date": 0,
                "chat": {"id": chat_id, "type": "private", "first_name": "U"},
                "from": {"id": chat_id, "is_bot": False, "first_name": "U"},
                "text": "hi",
            },
        },
        None,
    )


async def test_processor_orders_within_a_chat_and_runs_chats_concurrently() -> None:
    processor = PerChatUpdateProcessor(max_running=8)
    order: list[str] = []
    gate = asyncio.Event()

    async def job(name: str, wait: asyncio.Event | None = None) -> None:
        order.append(f"start {name}")
        if wait is not None:
            await wait.wait()
        order.append(f"end {name}")

    async with processor:
        a1 = asyncio.create_task(processor.process_update(chat_update(1, 1), job("a1", gate)))
        a2 = asyncio.create_task(processor.process_update(chat_update(1, 2), job("a2")))
        b1 = asyncio.create_task(processor.process_update(chat_update(2, 3), job("b1")))
        await asyncio.wait_for(b1, 2.0)  # chat 2 is not stuck behind chat 1
        assert order == ["start a1", "start b1", "end b1"]
        assert not a2.done()  # chat 1's second update waits for the first
        assert processor.active_keys == 1
        gate.set()
        await asyncio.wait_for(asyncio.gather(a1, a2), 2.0)
    assert order[-4:] == ["end b1", "end a1", "start a2", "end a2"]
    assert processor.active_keys == 0  # locks are dropped when idle


async def test_processor_bounds_running_updates() -> None:
    processor = PerChatUpdateProcessor(max_running=2)
    gate = asyncio.Event()
    running = 0
    peak = 0

    async def job() -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await gate.wait()
        running -= 1

    tasks = [
        asyncio.create_task(processor.process_update(chat_update(i, i), job())) for i in range(1, 6)
    ]
    for _ in range(20):  # let every task reach its wait point (bounded, no sleeps)
        await asyncio.sleep(0)
    assert running == 2
    gate.set()
    await asyncio.wait_for(asyncio.gather(*tasks), 2.0)
    assert peak == 2
