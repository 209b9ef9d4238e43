"""Operating signals: every /metrics series is documented, the Grafana dashboard charts only
real series (and the ones an operator needs), the generation series count and time real runs,
the INFO log tells one generation's story in a few lines that all carry the run id, and
apscheduler's per-job chatter is gone."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
from pathlib import Path

import pytest
from PIL import Image

from bot.app import get_runtime
from bot.logging_setup import setup_logging
from bot.metrics import Metrics, install_generation_metrics
from bot.signals import GenerationSignals, count_retry_after, install_credits_spent
from generation import (
    GenerationCancelled,
    GenerationCompleted,
    GenerationContext,
    GenerationEvent,
    GenerationFailed,
    GenerationRequest,
    GenerationStarted,
    InputImage,
)
from generation.counters import GenerationCounters
from storage import Storage
from tests.e2e.inprocess import make_e2e
from tests.fakes.comfydeploy import FakeComfyDeploy, Timeline
from tests.test_generation_with_storage import _service, _wait

ROOT = Path(__file__).resolve().parent.parent
_CALL = re.compile(
    r"metrics\.(?:inc|set|counter|gauge_callback|counter_callback|histogram|observe)\(\s*\"([a-z_]+)\"",
    re.DOTALL,
)
TERMINAL = (GenerationCompleted, GenerationFailed, GenerationCancelled)
NEEDED = {  # what an operator needs on the dashboard (issue: operating signals)
    "bot_generations_total",  # by status and by type
    "bot_generation_queued",  # queue depth
    "bot_generation_duration_seconds",  # latency percentiles
    "bot_telegram_retry_after_total",  # Telegram 429s
    "bot_generation_runs_finished_total",  # backend errors by code
    "bot_credits_spent_total",
}


class _Service:
    """What install_generation_metrics reads from the generation service."""

    counters = GenerationCounters()

    def metrics_snapshot(self) -> dict[str, object]:
        return {
            "gauges": {"generation_queued": 0, "generation_in_flight": 0, "generation_tracked": 0}
        }


async def registry(storage: Storage) -> Metrics:
    """Every series the composition root and bot/signals.py register (the HTTP server's are
    found in the source: they are registered when the server is built or first counted)."""
    metrics = Metrics()
    install_generation_metrics(metrics, _Service())
    GenerationSignals(metrics, storage.runs)
    install_credits_spent(metrics, storage.ledger)
    return metrics


async def series_in_code(storage: Storage) -> set[str]:
    names = set(re.findall(r"^# TYPE (\S+) ", await (await registry(storage)).render(), re.M))
    for path in (ROOT / "bot").rglob("*.py"):
        names |= {f"bot_{n}" for n in _CALL.findall(path.read_text(encoding="utf-8"))}
    return names


def documented() -> dict[str, str]:
    text = (ROOT / "docs" / "metrics.md").read_text(encoding="utf-8")
    return dict(re.findall(r"^\| `(bot_[a-z_]+)` \| (\w+) \|", text, re.MULTILINE))


async def test_every_series_is_documented_and_nothing_else(storage: Storage) -> None:
    assert set(documented()) == await series_in_code(storage)


async def test_documented_types_match_the_rendered_ones(storage: Storage) -> None:
    metrics = await registry(storage)
    rendered = dict(re.findall(r"^# TYPE (\S+) (\S+)$", await metrics.render(), re.MULTILINE))
    docs = documented()
    for name, kind in rendered.items():
        assert docs[name] == kind, name


def test_dashboard_uses_only_real_series_and_covers_the_needed_ones() -> None:
    dashboard = json.loads((ROOT / "docs" / "grafana-dashboard.json").read_text("utf-8"))
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = {
        re.sub(r"_(bucket|sum|count)$", "", name) if "seconds" in name else name
        for e in exprs
        for name in re.findall(r"\b(bot_[a-z_]+)", e)
    }
    assert used <= set(documented()), used - set(documented())
    assert used >= NEEDED, NEEDED - used
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    assert all(p["datasource"]["uid"] == "${DS_PROMETHEUS}" for p in dashboard["panels"])
    assert any("histogram_quantile(0.95" in e for e in exprs)
    for expr in exprs:
        assert expr.count("(") == expr.count(")"), expr


def _png() -> InputImage:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 60, 30)).save(buffer, "PNG")
    return InputImage(data=buffer.getvalue(), width=64, height=64)


async def test_generation_series_from_real_runs(storage: Storage) -> None:
    fake = FakeComfyDeploy()
    ok_dep = fake.add_deployment(inputs=["input_prompt"], timeline=Timeline.success("png"))
    await storage.deployments.add("MAKE", ok_dep)
    bad_dep = fake.add_deployment(
        inputs=["input_prompt", "input_image"], timeline=Timeline.failed()
    )
    await storage.deployments.add("UPSCALE", bad_dep)
    await storage.users.get_or_create(7, starting_balance=10)
    service, events = await _service(storage, fake)
    metrics = Metrics()
    signals = GenerationSignals(metrics, storage.runs)
    recorded: list[GenerationEvent] = []
    both = asyncio.Event()

    async def on_event(event: GenerationEvent) -> None:  # signals.on_event, then tell the test
        await signals.on_event(event)
        recorded.append(event)
        if len(recorded) == 2:
            both.set()

    service.bus.subscribe(on_event, *TERMINAL)
    install_credits_spent(metrics, storage.ledger)
    retry = count_retry_after(metrics)
    await service.start()
    try:
        good = await service.generate(
            GenerationRequest(prompt="a fox", user_id=7, chat_id=7), GenerationContext(price=4)
        )
        started = await _wait(service, events, GenerationStarted, good.id)
        await fake.run_to_end(started.backend_run_id)
        await _wait(service, events, GenerationCompleted, good.id)
        await service.mark_delivered(good.id)

        bad = await service.generate(
            GenerationRequest(type="UPSCALE", image=_png(), user_id=7, chat_id=7),
            GenerationContext(price=0),
        )
        started = await _wait(service, events, GenerationStarted, bad.id)
        await fake.run_to_end(started.backend_run_id)
        await _wait(service, events, GenerationFailed, bad.id)
        retry("sendMessage")
        async with asyncio.timeout(5):
            await both.wait()
        text = await metrics.render()
    finally:
        await service.stop()
        await service.bus.aclose()
        await service._test_client.aclose()  # type: ignore[attr-defined]
        await fake.aclose()
    assert 'bot_generations_total{status="success",type="MAKE"} 1' in text
    assert 'bot_generations_total{status="failed",type="UPSCALE"} 1' in text
    assert 'bot_generation_duration_seconds_count{type="MAKE"} 1' in text
    assert 'bot_generation_duration_seconds_count{type="UPSCALE"}' not in text  # failures
    assert 'bot_generation_queue_wait_seconds_count{type="UPSCALE"} 1' in text
    assert "bot_credits_spent_total 4" in text
    assert "bot_telegram_retry_after_total 1" in text
    # a second scrape reads only new ledger rows: the total stays, nothing counted twice
    assert "bot_credits_spent_total 4" in await metrics.render()


async def test_one_generation_tells_its_story_at_info(
    storage: Storage, caplog: pytest.LogCaptureFixture
) -> None:
    fake = FakeComfyDeploy()
    dep = fake.add_deployment(inputs=["input_prompt"], timeline=Timeline.success("png"))
    await storage.deployments.add("MAKE", dep)
    await storage.users.get_or_create(7, starting_balance=10)
    service, events = await _service(storage, fake)
    await service.start()
    caplog.set_level(logging.INFO)
    try:
        run = await service.generate(
            GenerationRequest(prompt="a fox", user_id=7, chat_id=7), GenerationContext(price=1)
        )
        started = await _wait(service, events, GenerationStarted, run.id)
        await fake.run_to_end(started.backend_run_id)
        await _wait(service, events, GenerationCompleted, run.id)
        await service.mark_delivered(run.id)
    finally:
        await service.stop()
        await service.bus.aclose()
        await service._test_client.aclose()  # type: ignore[attr-defined]
        await fake.aclose()
    ours = [
        r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.INFO and r.name.startswith(("generation", "storage", "bot"))
    ]
    story = [m for m in ours if run.id in m]
    assert ours == story, "every generation log line names its run"
    assert 3 <= len(story) <= 5, story
    assert story[0].startswith(f"run {run.id} accepted: type=MAKE user=7 price=1")
    assert any("submitted: deployment=" in m for m in story)
    assert re.search(r"finished: success after \d+\.\d s$", story[-1]), story


def test_apscheduler_job_noise_is_gone() -> None:
    root = logging.getLogger()
    saved = (root.level, list(root.handlers))
    try:
        setup_logging("INFO")
        assert not logging.getLogger("apscheduler.scheduler").isEnabledFor(logging.INFO)
        assert logging.getLogger("apscheduler.scheduler").isEnabledFor(logging.WARNING)
        assert logging.getLogger("generation.service").isEnabledFor(logging.INFO)
    finally:
        root.setLevel(saved[0])
        root.handlers[:] = saved[1]


async def test_the_whole_bot_tells_one_story_and_counts_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Through the real application (handlers, delivery): ≤ 5 INFO lines per generation, each
    with the run id, and the run counted on the application's /metrics registry."""
    env, close = await make_e2e(tmp_path)
    try:
        await env.add_deployment()
        await env.storage.prices.set("MAKE", 2)
        alice = env.fake.user(1001)
        await env.storage.users.get_or_create(alice.id, language_code="en")
        await env.storage.ledger.set_balance(alice.id, 5, actor=None)
        caplog.set_level(logging.INFO)
        await env.command(alice, "/make a red fox in snow")
        run = await env.latest_run(alice.id)
        await env.finish(run.id)
        metrics = get_runtime(env.app).metrics
        text = await metrics.render()
    finally:
        await close()
    story = [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.INFO and r.name.startswith(("generation", "handlers", "bot"))
    ]
    assert all(run.id in m for m in story), story
    assert 4 <= len(story) <= 5, story
    assert "delivered: 1 message(s) for 1 output(s), charged 2" in story[-1]
    assert 'bot_generations_total{status="success",type="MAKE"} 1' in text
    assert "bot_credits_spent_total 2" in text
    assert 'bot_generation_duration_seconds_count{type="MAKE"} 1' in text


async def test_install_signals_wires_the_rate_limiter(tmp_path: Path) -> None:
    from bot.rate_limit import BotRateLimiter
    from bot.signals import install_signals

    env, close = await make_e2e(tmp_path)
    try:
        runtime = get_runtime(env.app)
        limiter = BotRateLimiter()
        metrics = Metrics()
        runtime.metrics, saved = metrics, runtime.metrics
        try:
            install_signals(runtime, limiter)
        finally:
            runtime.metrics = saved
        assert limiter.on_retry_after is not None
        limiter.on_retry_after("sendPhoto")
        text = await metrics.render()
    finally:
        await close()
    assert "bot_telegram_retry_after_total 1" in text
    assert "# TYPE bot_generation_runs_finished_total counter" in text
    assert "# TYPE bot_credits_spent_total counter" in text
