"""The webhook server cannot be starved (issue 11, point 6) and /metrics is guarded and served
from in-process counters (point 10)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import uvicorn

from bot.app import get_runtime
from bot.config import Settings
from bot.server import COMFYDEPLOY_PATH, MAX_BODY_BYTES, create_app, http_limits
from generation.tokens import webhook_token
from handlers.deps import HandlerConfig, Services
from handlers.i18n import Translator
from storage import Storage
from tests.e2e.inprocess import build_harness
from tests.test_server import SECRET, StubGeneration, application, fake

__all__ = ["application", "fake"]


@pytest.fixture
async def served(
    application, storage: Storage
) -> AsyncIterator[tuple[httpx.AsyncClient, object, StubGeneration]]:
    generation = StubGeneration()
    services = Services(
        storage=storage,
        generation=generation,  # type: ignore[arg-type]
        i18n=Translator.load(),
        config=HandlerConfig(),
    )
    settings = Settings(_env_file=None, public_url="http://bot.test", metrics_token="m3trics")
    app = create_app(application, settings, services, webhook_secret=SECRET)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://bot.test") as http:
        yield http, app, generation
    generation.release.set()
    await app.state.webhook_tasks.drain(grace=1.0)


def _hook(run: str = "r1") -> str:
    return f"{COMFYDEPLOY_PATH}?r={run}&t={webhook_token(SECRET, run)}"


async def test_a_huge_streamed_body_is_cut_off_while_streaming(served) -> None:
    http, _app, generation = served
    sent = 0
    total = 200  # 200 × 64 KiB = 12.8 MB, far over the 1 MB cap

    async def body() -> AsyncIterator[bytes]:
        nonlocal sent
        for _ in range(total):
            sent += 1
            yield b" " * 65536

    response = await http.post(_hook(), content=body())
    assert response.status_code == 413
    assert sent * 65536 <= MAX_BODY_BYTES + 2 * 65536  # stopped reading right past the cap
    assert generation.calls == []


async def test_a_declared_oversized_body_is_refused_before_reading(served) -> None:
    http, _app, _generation = served
    response = await http.post(
        _hook(), content=b"{}", headers={"content-length": str(MAX_BODY_BYTES + 1)}
    )
    assert response.status_code == 413


async def test_webhook_tasks_in_flight_are_bounded(served) -> None:
    http, app, generation = served
    app.state.webhook_tasks.limit = 2
    generation.release.clear()  # processing hangs: tasks pile up
    codes = [
        (await http.post(_hook(f"r{i}"), json={"run_id": "x", "status": "running"})).status_code
        for i in range(3)
    ]
    assert codes == [200, 200, 503]
    assert len(app.state.webhook_tasks) == 2


async def test_metrics_need_the_token_when_one_is_set(served) -> None:
    http, _app, _generation = served
    assert (await http.get("/metrics")).status_code == 401
    assert (
        await http.get("/metrics", headers={"authorization": "Bearer wrong"})
    ).status_code == 401
    ok = await http.get("/metrics", headers={"authorization": "Bearer m3trics"})
    assert ok.status_code == 200 and "# TYPE" in ok.text


def test_uvicorn_limits_are_set() -> None:
    config = uvicorn.Config(lambda *a: None, **http_limits())
    assert config.limit_concurrency and config.limit_concurrency > 0
    assert 0 < config.timeout_keep_alive <= 10
    assert config.h11_max_incomplete_event_size and config.h11_max_incomplete_event_size <= 65536
    assert config.http == "h11"  # the limit above binds only the h11 parser


async def test_metrics_come_from_in_process_counters(tmp_path: Path, monkeypatch) -> None:
    env, close = await build_harness(tmp_path)
    try:

        async def no_scan() -> dict[str, int]:
            raise AssertionError("a scrape must not COUNT the runs table")

        monkeypatch.setattr(env.storage.runs, "count_by_status", no_scan)
        await env.add_deployment()
        user = env.fake.user(4701)
        await env.command(user, "/make a fox")
        run = await env.latest_run(user.id)
        await env.finish(run.id)
        await env.settle()
        text = await get_runtime(env.app).metrics.render()
        lines = text.splitlines()
        assert any(line.startswith("bot_generation_runs_created_total") for line in lines)
        assert any(
            line.startswith("bot_generation_runs_finished_total") and 'status="success"' in line
            for line in lines
        )
        assert "bot_generation_queued 0" in lines
        await asyncio.sleep(0)
    finally:
        await close()
