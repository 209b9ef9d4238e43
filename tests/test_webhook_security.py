"""Safe ComfyDeploy webhooks (issue #5 point 2), through the real starlette app of webhook mode
and the real GenerationService/storage: forged, unknown, cross-run, malformed and replayed
calls change nothing; valid calls are answered before they are processed; duplicates and
out-of-order calls are harmless; polling stays the (slower) backstop.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from bot.app import get_runtime
from bot.backends import generation_settings
from bot.config import Settings
from bot.server import COMFYDEPLOY_PATH, create_app
from generation.models import ChargeState, DeliveryState, RunStatus
from generation.tokens import webhook_token
from tests.e2e.inprocess import E2E, build_harness
from tests.fakes.comfydeploy import Timeline


class Hooks:
    """Catches the double's webhooks instead of applying them (the test replays them)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []

    async def __call__(self, url: str, payload: dict[str, Any] | None) -> int:
        if payload is not None:
            self.calls.append((url, payload))
        return 200

    def by_status(self, status: str) -> tuple[str, dict[str, Any]]:
        return next((u, p) for u, p in self.calls if p["status"] == status)


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[E2E]:
    harness, close = await build_harness(tmp_path)
    try:
        yield harness
    finally:
        await close()


@pytest.fixture
async def server(env: E2E) -> AsyncIterator[tuple[httpx.AsyncClient, Any]]:
    settings = Settings(_env_file=None, public_url="http://bot.test")
    app = create_app(
        env.app,
        settings,
        env.services,
        webhook_secret=get_runtime(env.app).webhook_secret,
        run_webhook_key=get_runtime(env.app).run_webhook_key,
    )
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://bot.test") as http:
        yield http, app
        await app.state.webhook_tasks.drain()


async def _post(http: httpx.AsyncClient, url: str, body: Any, *, raw: bool = False) -> int:
    parts = urlsplit(url)
    target = f"{parts.path}?{parts.query}" if parts.query else parts.path
    if raw:
        response = await http.post(target, content=body)
    else:
        response = await http.post(target, json=body)
    return response.status_code


async def _started_run(env: E2E, user_id: int, hooks: Hooks) -> tuple[Any, str]:
    env.cd.webhook_sink = hooks
    user = env.fake.user(user_id)
    await env.command(user, "/make a quiet harbour")
    run = await env.latest_run(user.id)
    await env.events.wait(lambda: "generation:started" in env.events.names(run.id))
    backend = (await env.storage.runs.get_run(run.id)).backend_run_id
    return run, backend


async def _snapshot(env: E2E, run_id: str) -> tuple[Any, ...]:
    run = await env.storage.runs.get_run(run_id)
    return (run.status, run.progress, run.live_status, run.outputs, run.charge_state)


async def test_forged_unknown_cross_run_and_malformed_calls_change_nothing(
    env: E2E, server: tuple[httpx.AsyncClient, Any]
) -> None:
    http, app = server
    # The run never ends at the backend: a success claim (even with the right token) is
    # confirmed with GET /run/{id} first (issue 11), which says it is still waiting.
    await env.add_deployment(timeline=Timeline.stall())
    hooks = Hooks()
    run, backend = await _started_run(env, 4001, hooks)
    other, _ = await _started_run(env, 4002, hooks)
    url = env.cd.runs[backend].webhook or ""
    success = {"run_id": backend, "status": "success", "progress": 1, "outputs": []}
    assert urlsplit(url).path == COMFYDEPLOY_PATH
    before = await _snapshot(env, run.id)
    sent_before = len(env.fake.call_log)
    base = f"http://bot.test{COMFYDEPLOY_PATH}"
    secret = get_runtime(env.app).run_webhook_key

    forged = [
        f"{base}?r={run.id}&t={'0' * 32}",  # wrong token
        f"{base}?r={run.id}",  # no token
        f"{base}?t={webhook_token(secret, run.id)}",  # no run
        f"{base}?r={run.id}&t={webhook_token(secret, run.id)[:-1]}",  # truncated token
        f"{base}?r={run.id}&t={webhook_token('guessed-secret', run.id)}",  # other key
        # keyed by Telegram's secret_token (sent in every update header): not the run key
        f"{base}?r={run.id}&t={webhook_token(get_runtime(env.app).webhook_secret, run.id)}",
        f"{base}?r={run.id}&t={webhook_token(secret, other.id)}",  # another run's token
        f"{base}?r={other.id}&t={webhook_token(secret, run.id)}",
        base,
    ]
    for target in forged:
        assert await _post(http, target, success) == 403, target
    # a valid token of a run we do not know: accepted by the server, ignored by the service
    ghost = "f" * 32
    assert await _post(http, f"{base}?r={ghost}&t={webhook_token(secret, ghost)}", success) == 200
    # the right token but a body that is not a run callback
    for body in (b"not json", b"[1, 2]", b"null", b'"success"', b"{" * 5000):
        assert await _post(http, url, body, raw=True) == 400
    for body in (
        {},
        {"status": "success"},  # no run id
        {"run_id": "someone-else", "status": "success", "outputs": []},  # another backend run
        {"run_id": backend, "status": 17, "outputs": "x"},
        {"run_id": backend, "status": "success", "progress": "NaN", "outputs": [{"data": 5}]},
        success,  # well formed, but GET says the run has not even started
    ):
        await _post(http, url, body)
    await app.state.webhook_tasks.drain()
    await env.settle()
    assert await _snapshot(env, run.id) == before
    assert before[0] is not RunStatus.SUCCESS
    assert not env.fake.sent_media(4001)
    # nothing was sent to Telegram because of these calls
    sent = [c.method for c in env.fake.call_log[sent_before:]]
    assert "sendPhoto" not in sent and "sendMessage" not in sent

    # the genuine call still works afterwards (the run now really ends at the backend)
    env.cd.runs[backend].timeline = Timeline.success("png")
    await env.cd.run_to_end(backend)
    url, success = hooks.by_status("success")
    assert await _post(http, url, success) == 200
    await app.state.webhook_tasks.drain()
    await env.events.wait(lambda: "generation:completed" in env.events.names(run.id))
    await env.settle()
    assert [m.media_kind for m in env.fake.sent_media(4001)] == ["photo"]
    assert await env.storage.ledger.check_consistency() == []


async def test_valid_call_is_answered_before_it_is_processed(
    env: E2E, server: tuple[httpx.AsyncClient, Any]
) -> None:
    http, app = server
    await env.add_deployment()
    hooks = Hooks()
    run, backend = await _started_run(env, 4011, hooks)
    await env.cd.advance(backend, steps=3)  # queued, started, running
    url, payload = hooks.calls[-1]
    # While the run's lock is held, processing cannot happen — the answer must come anyway.
    async with env.service.tracker.lock(run.id):
        status = await asyncio.wait_for(_post(http, url, payload), timeout=5)
        assert status == 200
        assert len(app.state.webhook_tasks) == 1  # accepted, processing still pending
        assert (await env.storage.runs.get_run(run.id)).status is RunStatus.WAITING
    await app.state.webhook_tasks.drain()
    assert (await env.storage.runs.get_run(run.id)).status is RunStatus.RUNNING


async def test_replayed_duplicate_and_out_of_order_calls_are_harmless(
    env: E2E, server: tuple[httpx.AsyncClient, Any]
) -> None:
    http, app = server
    await env.add_deployment()
    await env.storage.prices.set("MAKE", 1)
    await env.storage.users.get_or_create(4021, language_code="en")
    await env.storage.ledger.set_balance(4021, 3, actor=None)
    hooks = Hooks()
    run, backend = await _started_run(env, 4021, hooks)
    await env.cd.run_to_end(backend)
    calls = list(hooks.calls)
    assert [p["status"] for _, p in calls][-1] == "success"

    # out of order: the final call first, then every earlier one, then all of them again
    order = [calls[-1], *reversed(calls[:-1]), *calls, *calls]
    for url, payload in order:
        assert await _post(http, url, payload) == 200
        await app.state.webhook_tasks.drain()
        await env.settle()
    final = await env.storage.runs.get_run(run.id)
    assert final.status is RunStatus.SUCCESS
    assert final.delivery_state is DeliveryState.DELIVERED
    assert final.charge_state is ChargeState.SETTLED
    assert env.events.names(run.id).count("generation:completed") == 1
    assert [m.media_kind for m in env.fake.sent_media(4021)] == ["photo"]
    assert await env.storage.ledger.get_balance(4021) == 2  # charged exactly once
    assert env.fake.message(4021, final.progress_message_id).text == env.t("progress.done")
    assert await env.storage.ledger.check_consistency() == []
    snapshot = await _snapshot(env, run.id)
    # a late replay of an intermediate state after the end still changes nothing
    running = next(p for _, p in calls if p["status"] == "running")
    await _post(http, calls[0][0], running)
    await app.state.webhook_tasks.drain()
    assert await _snapshot(env, run.id) == snapshot


async def test_polling_is_the_slower_backstop_when_webhooks_are_lost(env: E2E) -> None:
    key = {"comfydeploy_api_key": "k"}  # a real backend (not the local preview one)
    webhook_mode = Settings(
        _env_file=None, public_url="https://bot.example", run_poll_interval=3, **key
    )
    polling_mode = Settings(_env_file=None, run_poll_interval=3, **key)
    hooked = generation_settings(webhook_mode, "s")
    polled = generation_settings(polling_mode, "s")
    assert hooked.webhook_url == "https://bot.example/comfydeploy/webhook"
    assert polled.webhook_url is None
    assert hooked.webhook_poll_interval > polled.poll_interval

    await env.add_deployment()
    user = env.fake.user(4031)
    env.cd.drop_final_webhook = True
    await env.command(user, "/make lost in the post")
    run = await env.latest_run(user.id)
    backend = await env.backend_id(run.id)
    await env.cd.run_to_end(backend)
    await env.settle()
    assert (await env.storage.runs.get_run(run.id)).status is not RunStatus.SUCCESS
    await env.service.tracker.poll_once()  # the backstop finds the result
    await env.events.wait(lambda: "generation:completed" in env.events.names(run.id))
    await env.settle()
    assert [m.media_kind for m in env.fake.sent_media(user.id)] == ["photo"]
