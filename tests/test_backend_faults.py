"""Backend faults end to end (issue #5 point 3): retries with backoff on transport errors and
5xx, failover to another deployment of the same type, the circuit breaker (open → skip →
half-open probe → closed), a full outage (every user told in their language, holds released,
ledger consistent) and recovery without a restart.

Real ``Application`` + real ``GenerationService`` + real SQLite storage + both fakes, built by
``tests.e2e.inprocess.build_harness``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from generation.models import ChargeState, RunStatus
from tests.e2e.inprocess import (
    E2E,
    MAKE_INPUTS,
    FakeClock,
    build_harness,
)
from tests.fakes.comfydeploy import _Resp


class Sleeps:
    """Records the backoff delays the client asks for (no real waiting)."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


@pytest.fixture
def breaker_clock() -> FakeClock:
    return FakeClock(start=10_000.0)


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


@pytest.fixture
async def env(tmp_path: Path, breaker_clock: FakeClock, sleeps: Sleeps) -> AsyncIterator[E2E]:
    harness, close = await build_harness(
        tmp_path,
        service_clock=breaker_clock,
        client_sleep=sleeps,
        generation={"breaker_threshold": 2, "breaker_cooldown": 60.0},
    )
    try:
        yield harness
    finally:
        await close()


async def _fund(env: E2E, user_id: int, amount: int, lang: str = "en") -> None:
    await env.storage.users.get_or_create(user_id, language_code=lang)
    await env.storage.ledger.set_balance(user_id, amount, actor=None)


async def _terminal(env: E2E, run_id: str) -> Any:
    await env.events.wait(
        lambda: any(
            n in env.events.names(run_id)
            for n in ("generation:completed", "generation:failed", "generation:cancelled")
        )
    )
    await env.settle()
    return await env.storage.runs.get_run(run_id)


def _creates_to(env: E2E, dep_id: str) -> int:
    return sum(
        1
        for r in env.cd.requests
        if r.path == "/run/deployment/queue" and (r.json or {}).get("deployment_id") == dep_id
    )


async def test_transport_errors_and_5xx_are_retried_with_backoff(env: E2E, sleeps: Sleeps) -> None:
    dep = await env.add_deployment()
    alice = env.fake.user(3001)
    env.cd.fail_next_transport(2, httpx.ConnectError, route="create")
    env.cd.fail_next_creates(1, status=503)
    await env.command(alice, "/make a fox")
    run = await env.latest_run(alice.id)
    await env.finish(run.id)
    final = await env.storage.runs.get_run(run.id)
    assert final.status is RunStatus.SUCCESS and final.deployment_id == dep
    assert env.cd.transport_faults_raised == ["create", "create"]
    statuses = [r.status for r in env.cd.requests if r.path == "/run/deployment/queue"]
    assert statuses == [503, 200]  # the two connect errors never reached the double
    assert len(sleeps.delays) == 3 and all(d >= 0 for d in sleeps.delays)
    assert len(env.cd.runs) == 1  # no double submission
    assert [m.media_kind for m in env.fake.sent_media(alice.id)] == ["photo"]


async def test_failover_to_another_deployment_of_the_same_type(env: E2E) -> None:
    # `broken` is drawn first almost always (weight 1000 vs 1) and answers 502 every time.
    broken = env.cd.add_deployment(inputs=MAKE_INPUTS)
    await env.storage.deployments.add("MAKE", broken, inputs=list(MAKE_INPUTS), weight=1000)
    healthy = await env.add_deployment()
    original = env.cd._create

    def create(body: Any) -> Any:
        if isinstance(body, dict) and body.get("deployment_id") == broken:
            return _Resp(502, b"Bad Gateway", "text/plain")
        return original(body)

    env.cd._create = create  # type: ignore[method-assign]
    for user_id in range(3011, 3015):
        user = env.fake.user(user_id)
        await env.command(user, f"/make picture {user_id}")
        run = await env.latest_run(user.id)
        fake_run = await env.finish(run.id)
        assert fake_run.status == "success"
        assert (await env.storage.runs.get_run(run.id)).deployment_id == healthy
        assert [m.media_kind for m in env.fake.sent_media(user.id)] == ["photo"]
    # two failed submissions (threshold 2) opened the breaker: `broken` got 2 × 4 attempts,
    # then was skipped for the later runs
    assert _creates_to(env, broken) == 8
    assert env.service.selector.is_open(broken)
    assert not env.service.selector.is_open(healthy)


async def test_full_outage_tells_users_releases_holds_then_recovers(
    env: E2E, breaker_clock: FakeClock
) -> None:
    dep_a = await env.add_deployment()
    dep_b = await env.add_deployment()
    await env.storage.prices.set("MAKE", 2)
    users = {3101: "en", 3102: "de", 3103: "ru", 3104: "es"}
    for uid, lang in users.items():
        await _fund(env, uid, 5, lang)
    env.cd.fail_next_creates(10_000, status=503)  # everything answers 503 from now on

    runs = {}
    for uid, lang in users.items():
        user = env.fake.user(uid, language_code=lang)
        await env.command(user, "/make a lighthouse")
        runs[uid] = await env.latest_run(uid)
        # The price was held with the run (released below: RELEASED follows only a hold). The
        # create-run leaves before the handler replies, so the run may have failed already.
        assert runs[uid].price == 2
    for uid, lang in users.items():
        final = await _terminal(env, runs[uid].id)
        assert final.status is RunStatus.FAILED
        assert final.error_code in ("BACKEND_UNAVAILABLE", "NO_DEPLOYMENTS_AVAILABLE")
        assert final.charge_state is ChargeState.RELEASED
        assert await env.storage.ledger.get_balance(uid) == 5
        assert await env.storage.ledger.get_held(uid) == 0
        shown = env.progress_message(uid, final).text
        reason = env.t(f"error.{final.error_code}", lang)
        assert shown == env.t("progress.failed", lang, reason=reason)
        assert not env.fake.sent_media(uid)
    assert await env.storage.ledger.check_consistency() == []
    # Both breakers are open: later requests are not even sent while they cool down.
    assert env.service.selector.is_open(dep_a) and env.service.selector.is_open(dep_b)
    sent_before = len(env.cd.create_calls)
    await _fund(env, 3105, 5)
    late = env.fake.user(3105)
    await env.command(late, "/make during the outage")
    late_run = await _terminal(env, (await env.latest_run(late.id)).id)
    assert late_run.status is RunStatus.FAILED and len(env.cd.create_calls) == sent_before
    assert "BACKEND_UNAVAILABLE" in late_run.error_code or "NO_DEPLOYMENTS" in late_run.error_code

    # The backend comes back; after the cooldown a half-open probe goes through, no restart.
    env.cd._create_faults.clear()
    breaker_clock.advance(61.0)
    back = env.fake.user(3101, language_code="en")
    await env.command(back, "/make after the outage")
    run = await env.latest_run(back.id)
    fake_run = await env.finish(run.id)
    assert fake_run.status == "success"
    assert [m.media_kind for m in env.fake.sent_media(back.id)] == ["photo"]
    assert await env.storage.ledger.get_balance(back.id) == 3  # 2 settled
    used = (await env.storage.runs.get_run(run.id)).deployment_id
    assert not env.service.selector.is_open(used)
    assert await env.storage.ledger.check_consistency() == []


async def test_breaker_skips_open_deployment_until_cooldown(
    env: E2E, breaker_clock: FakeClock
) -> None:
    dep = await env.add_deployment()
    env.cd.fail_next_creates(8, status=503)  # two runs × four attempts
    for uid in (3201, 3202):
        user = env.fake.user(uid)
        await env.command(user, "/make x")
        final = await _terminal(env, (await env.latest_run(uid)).id)
        assert final.status is RunStatus.FAILED
    assert env.service.selector.is_open(dep)
    creates = _creates_to(env, dep)
    assert creates == 8
    # open: a third request fails at once without touching the backend
    user = env.fake.user(3203)
    await env.command(user, "/make y")
    await _terminal(env, (await env.latest_run(user.id)).id)
    assert _creates_to(env, dep) == creates
    # half-open after the cooldown: one probe, success closes the breaker
    breaker_clock.advance(60.0)
    await env.command(user, "/make z")
    run = await env.latest_run(user.id)
    await env.finish(run.id)
    assert (await env.storage.runs.get_run(run.id)).status is RunStatus.SUCCESS
    assert _creates_to(env, dep) == creates + 1
    assert not env.service.selector.is_open(dep)
