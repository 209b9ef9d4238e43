"""No GPU run is left running that the bot does not know about (issue 11, point 3), and a
webhook's word is not enough to deliver (point 2).

Against the ComfyDeploy double through the real client: a gateway answering 504 *after* the
run was queued, twice; runs created by lost attempts report to the same per-run webhook URL
and are adopted (one) or cancelled (all the others).
"""

from __future__ import annotations

import logging
from urllib.parse import parse_qs, urlsplit

from generation import (
    ChargeState,
    ErrorCode,
    GenerationCompleted,
    GenerationContext,
    GenerationFailed,
    RunStatus,
)
from generation.tokens import webhook_token
from tests.fakes.comfydeploy import Timeline
from tests.test_service import SECRET, USER, Env, env, make_request

__all__ = ["env"]


def _live_runs(env: Env) -> list[str]:
    return [r.id for r in env.fake.runs.values() if not r.terminal]


async def test_504_after_queueing_one_result_delivered_every_other_run_cancelled(
    env: Env,
) -> None:
    first = env.deployment(timeline=Timeline.success("png"))
    second = env.deployment(timeline=Timeline.success("png"))
    env.store.set_balance(USER, 10)
    env.fake.lose_next_create_answers(2, status=504)
    service = env.make()
    run = await service.generate(make_request(), GenerationContext(price=3))
    item = service.scheduler.try_take()
    assert item is not None
    await service.dispatch(item)

    # At most one more attempt after an uncertain answer, and no failover to `second`.
    assert len(env.fake.create_calls) == 2
    assert {c["deployment_id"] for c in env.fake.create_calls} == {first}
    hooks = {c["webhook"] for c in env.fake.create_calls}
    assert len(hooks) == 1  # every attempt carries the same per-run webhook URL
    assert parse_qs(urlsplit(hooks.pop()).query)["r"] == [run.id]
    waiting = await env.store.get_run(run.id)
    assert waiting is not None and not waiting.is_terminal and waiting.backend_run_id is None

    created = list(env.fake.runs)
    assert len(created) == 2
    a, b = created
    await env.fake.run_to_end(a)  # A's webhooks arrive: adopted, result confirmed by GET
    await env.fake.advance(b)  # B's first webhook arrives: B is an orphan → cancelled
    await env.fake.run_to_end(b)
    await env.fake.flush_webhooks()
    await env.settle()

    final = await env.store.get_run(run.id)
    assert final is not None and final.status is RunStatus.SUCCESS
    assert final.backend_run_id == a and len(final.outputs) == 1
    assert env.recorder is not None
    assert len(env.recorder.of(GenerationCompleted, run.id)) == 1
    assert env.fake.cancel_calls == [b]
    assert env.fake.runs[b].status == "cancelled"
    assert _live_runs(env) == []
    assert second not in {r.deployment_id for r in env.fake.runs.values()}
    delivered = await service.mark_delivered(run.id)
    assert delivered.charge_state is ChargeState.SETTLED
    assert await env.store.get_balance(USER) == 7  # charged once


async def test_lost_first_answer_then_success_cancels_the_first_run(env: Env) -> None:
    env.deployment(timeline=Timeline.success("png"))
    env.fake.lose_next_create_answers(1, status=504)
    service = env.make()
    run = await service.generate(make_request(), GenerationContext())
    item = service.scheduler.try_take()
    assert item is not None
    await service.dispatch(item)
    a, b = list(env.fake.runs)
    stored = await env.store.get_run(run.id)
    assert stored is not None and stored.backend_run_id == b
    await env.fake.advance(a)  # the lost attempt's run reports: it is the orphan
    await env.fake.run_to_end(b)
    await env.fake.flush_webhooks()
    final = await env.store.get_run(run.id)
    assert final is not None and final.status is RunStatus.SUCCESS and final.backend_run_id == b
    assert env.fake.cancel_calls == [a]
    assert _live_runs(env) == []


async def test_uncertain_create_without_any_webhook_fails_after_the_window(env: Env) -> None:
    env.deployment(timeline=Timeline.stall())
    env.store.set_balance(USER, 5)
    env.fake.fail_next_creates(2, status=500)  # nothing queued, but we cannot know that
    service = env.make(adopt_window=120.0)
    run = await service.generate(make_request(), GenerationContext(price=2))
    item = service.scheduler.try_take()
    assert item is not None
    await service.dispatch(item)
    assert len(env.fake.create_calls) == 2
    await service.tracker.check_deadlines()
    assert not (await env.store.get_run(run.id)).is_terminal  # type: ignore[union-attr]
    env.clock.now += 121.0
    await service.tracker.check_deadlines()
    await env.settle()
    final = await env.store.get_run(run.id)
    assert final is not None and final.status is RunStatus.FAILED
    assert final.error_code == ErrorCode.SUBMIT_UNCERTAIN
    assert final.charge_state is ChargeState.RELEASED
    assert await env.store.get_balance(USER) == 5


async def test_polling_mode_504_fails_clearly_after_one_attempt_and_logs_the_deployment(
    env: Env, caplog
) -> None:
    dep = env.deployment(timeline=Timeline.success("png"))
    env.deployment(timeline=Timeline.success("png"))
    env.fake.lose_next_create_answers(1, status=504)
    service = env.make(webhook_url=None)
    run = await service.generate(make_request(), GenerationContext())
    item = service.scheduler.try_take()
    assert item is not None
    with caplog.at_level(logging.WARNING, logger="generation.client"):
        await service.dispatch(item)
    assert len(env.fake.create_calls) == 1  # no second run nobody could ever find
    final = await env.store.get_run(run.id)
    assert final is not None and final.status is RunStatus.FAILED
    assert final.error_code == ErrorCode.SUBMIT_UNCERTAIN
    assert env.recorder is not None
    await env.settle()
    assert env.recorder.of(GenerationFailed, run.id)
    line = next(r.getMessage() for r in caplog.records if "uncertain" in r.getMessage())
    assert dep in line and "at=" in line


async def test_502_and_503_are_retried_on_the_same_deployment(env: Env) -> None:
    env.deployment(timeline=Timeline.success("png"))
    env.fake.fail_next_creates(1, status=502)
    env.fake.fail_next_creates(1, status=503)
    service = env.make()
    run = await service.generate(make_request(), GenerationContext())
    item = service.scheduler.try_take()
    assert item is not None
    await service.dispatch(item)
    stored = await env.store.get_run(run.id)
    assert stored is not None and stored.backend_run_id in env.fake.runs
    assert len(env.fake.create_calls) == 3 and len(env.fake.runs) == 1


async def test_foreign_backend_run_not_created_for_this_run_is_left_alone(env: Env) -> None:
    """A leaked run URL must not let anyone make us cancel (or adopt) another run."""
    env.deployment(timeline=Timeline.stall())
    service = env.make()
    run = await service.generate(make_request(), GenerationContext())
    other = await service.generate(make_request(), GenerationContext())
    for _ in range(2):
        item = service.scheduler.try_take()
        assert item is not None
        await service.dispatch(item)
    victim = (await env.store.get_run(other.id)).backend_run_id  # type: ignore[union-attr]
    payload = {"run_id": victim, "status": "running", "progress": 0.5, "outputs": []}
    accepted = await service.process_webhook(payload, webhook_token(SECRET, run.id), run.id)
    assert not accepted
    assert env.fake.cancel_calls == []


async def test_webhook_success_is_confirmed_by_get_before_delivery(env: Env) -> None:
    """Point 2: a webhook claiming success with its own output URLs delivers nothing; the
    outputs delivered are the ones GET /run/{id} reports."""
    env.deployment(timeline=Timeline.success("png"))
    service = env.make()
    run = await service.generate(make_request(), GenerationContext())
    item = service.scheduler.try_take()
    assert item is not None
    await service.dispatch(item)
    backend_id = (await env.store.get_run(run.id)).backend_run_id  # type: ignore[union-attr]
    forged = {
        "run_id": backend_id,
        "status": "success",
        "outputs": [{"data": {"images": [{"url": "http://169.254.169.254/latest/meta-data"}]}}],
    }
    assert await service.process_webhook(forged, webhook_token(SECRET, run.id), run.id)
    stored = await env.store.get_run(run.id)
    assert stored is not None and stored.status is not RunStatus.SUCCESS
    await env.fake.run_to_end(backend_id)  # type: ignore[arg-type]
    final = await env.store.get_run(run.id)
    assert final is not None and final.status is RunStatus.SUCCESS
    assert all("169.254" not in o.url for o in final.outputs)
    assert env.fake.file_bytes(final.outputs[0].url) is not None


async def test_outputs_per_run_are_capped(env: Env) -> None:
    env.deployment(timeline=Timeline.success(*(["png"] * 5)))
    service = env.make(max_outputs_per_run=3)
    run = await service.generate(make_request(), GenerationContext())
    item = service.scheduler.try_take()
    assert item is not None
    await service.dispatch(item)
    backend_id = (await env.store.get_run(run.id)).backend_run_id  # type: ignore[union-attr]
    await env.fake.run_to_end(backend_id)  # type: ignore[arg-type]
    final = await env.store.get_run(run.id)
    assert final is not None and final.status is RunStatus.SUCCESS
    assert len(final.outputs) == 3
