"""The webhook-mode HTTP server: Telegram updates, ComfyDeploy callbacks, health, metrics."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from telegram import Update
from telegram.ext import Application, ApplicationBuilder

from bot.config import Settings
from bot.metrics import Metrics, default_metrics
from bot.server import SECRET_HEADER, create_app
from generation.tokens import webhook_token
from handlers.deps import HandlerConfig, Services
from handlers.i18n import Translator
from storage import Storage
from tests.fakes.telegram import FakeTelegram

SECRET = "hook_secret-123"


class StubGeneration:
    """Records process_webhook calls; can hold them to prove the reply does not wait."""

    def __init__(self) -> None:
        self.calls: list[tuple[dict[str, Any], str | None, str | None]] = []
        self.release = asyncio.Event()
        self.release.set()
        self.called = asyncio.Event()

    async def process_webhook(
        self, payload: dict[str, Any], token: str | None = None, run_ref: str | None = None
    ) -> bool:
        self.calls.append((payload, token, run_ref))
        self.called.set()
        await self.release.wait()
        return True


@pytest.fixture
def fake() -> FakeTelegram:
    fake = FakeTelegram()
    fake.user(1001)
    return fake


@pytest.fixture
def application(fake: FakeTelegram) -> Application:
    return ApplicationBuilder().token(fake.token).request(fake.request()).updater(None).build()


@pytest.fixture
def metrics() -> Metrics:
    return default_metrics()


@pytest.fixture
def generation() -> StubGeneration:
    return StubGeneration()


@pytest.fixture
async def client(
    application: Application, storage: Storage, generation: StubGeneration, metrics: Metrics
) -> AsyncIterator[httpx.AsyncClient]:
    services = Services(
        storage=storage,
        generation=generation,  # type: ignore[arg-type]
        i18n=Translator.load(),
        config=HandlerConfig(),
    )
    settings = Settings(_env_file=None, public_url="http://bot.test")
    app = create_app(application, settings, services, webhook_secret=SECRET, metrics=metrics)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://bot.test") as http:
        http.app = app  # type: ignore[attr-defined]
        yield http
    await app.state.webhook_tasks.drain(grace=1.0)


async def test_telegram_wrong_or_missing_secret_is_403(
    client: httpx.AsyncClient, application: Application, fake: FakeTelegram
) -> None:
    update = fake.users[1001].send_text("hi", queue=False)
    for headers in ({SECRET_HEADER: "wrong"}, {}):
        response = await client.post("/telegram", json=update, headers=headers)
        assert response.status_code == 403
    assert application.update_queue.empty()


async def test_telegram_update_is_queued(
    client: httpx.AsyncClient, application: Application, fake: FakeTelegram
) -> None:
    payload = fake.users[1001].send_command("/make a fox", queue=False)
    response = await client.post("/telegram", json=payload, headers={SECRET_HEADER: SECRET})
    assert response.status_code == 200
    queued = application.update_queue.get_nowait()
    assert isinstance(queued, Update)
    assert queued.update_id == payload["update_id"]
    assert queued.effective_message is not None
    assert queued.effective_message.text == "/make a fox"


async def test_telegram_bad_json_is_400(
    client: httpx.AsyncClient, application: Application
) -> None:
    response = await client.post("/telegram", content=b"{not json", headers={SECRET_HEADER: SECRET})
    assert response.status_code == 400
    assert application.update_queue.empty()


async def test_comfydeploy_forged_or_missing_token_is_403(
    client: httpx.AsyncClient, generation: StubGeneration, metrics: Metrics
) -> None:
    body = {"run_id": "x", "status": "success"}
    forged = webhook_token("another-secret", "run-1")
    for query in (f"?r=run-1&t={forged}", "?r=run-1", f"?t={webhook_token(SECRET, 'run-1')}", ""):
        response = await client.post(f"/comfydeploy/webhook{query}", json=body)
        assert response.status_code == 403, query
    # a valid token for one run does not open another
    other = webhook_token(SECRET, "run-2")
    response = await client.post(f"/comfydeploy/webhook?r=run-1&t={other}", json=body)
    assert response.status_code == 403
    assert generation.calls == []
    assert metrics.value("webhook_rejected_total", {"source": "comfydeploy"}) == 5


async def test_comfydeploy_valid_call_is_answered_before_processing(
    client: httpx.AsyncClient, generation: StubGeneration
) -> None:
    generation.release.clear()  # processing blocks until we say so
    token = webhook_token(SECRET, "run-1")
    body = {"run_id": "backend-1", "status": "running", "progress": 0.4}
    response = await client.post(f"/comfydeploy/webhook?r=run-1&t={token}", json=body)
    assert response.status_code == 200  # answered while process_webhook is still held
    await asyncio.wait_for(generation.called.wait(), 2.0)
    assert generation.calls == [(body, token, "run-1")]
    tasks = client.app.state.webhook_tasks  # type: ignore[attr-defined]
    assert len(tasks) == 1
    generation.release.set()
    await tasks.drain(grace=2.0)
    assert len(tasks) == 0


async def test_comfydeploy_malformed_json_is_400_and_get_is_ignored(
    client: httpx.AsyncClient, generation: StubGeneration
) -> None:
    token = webhook_token(SECRET, "run-1")
    url = f"/comfydeploy/webhook?r=run-1&t={token}"
    assert (await client.post(url, content=b"[broken")).status_code == 400
    assert (await client.post(url, json=[1, 2])).status_code == 400
    assert (await client.get(url)).status_code == 200
    assert (await client.get("/comfydeploy/webhook")).status_code == 200
    assert generation.calls == []


async def test_healthz(client: httpx.AsyncClient, storage: Storage) -> None:
    response = await client.get("/healthz")
    assert response.status_code == 200
    assert response.json()["status"] == "ok"
    await storage.close()
    response = await client.get("/healthz")
    assert response.status_code == 503
    assert response.json()["status"] == "error"


_SAMPLE = re.compile(r'^[a-zA-Z_:][a-zA-Z0-9_:]*(\{([a-zA-Z_]\w*="[^"]*",?)*\})? -?[0-9.e+Inf]+$')


async def test_metrics_prometheus_text(client: httpx.AsyncClient, metrics: Metrics) -> None:
    metrics.inc("updates_total", 3)
    metrics.inc("errors_total")

    async def runs() -> dict[Any, float]:
        return {(("status", "queued"),): 2, (("status", "success"),): 5}

    metrics.gauge_callback("runs", runs, "Generation runs by status")
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    text = response.text
    assert "# TYPE bot_updates_total counter" in text
    assert "bot_updates_total 3" in text.splitlines()
    assert 'bot_runs{status="queued"} 2' in text.splitlines()
    assert "# TYPE bot_webhook_tasks gauge" in text
    for line in text.splitlines():
        if line and not line.startswith("#"):
            assert _SAMPLE.match(line), line


async def test_metrics_collector_failure_does_not_break_scrape(metrics: Metrics) -> None:
    def broken() -> float:
        raise RuntimeError("db down")

    metrics.gauge_callback("broken", broken)
    metrics.inc("updates_total")
    text = await metrics.render()
    assert "bot_updates_total 1" in text
    assert "# TYPE bot_broken gauge" in text
