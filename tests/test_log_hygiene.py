"""No prompt and no presigned output URL in any log line at INFO or above (issue 11, point 10),
through the whole bot: a delivered run, a run whose output download fails, a refused request."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.e2e.inprocess import E2E, make_e2e
from tests.fakes.comfydeploy import Timeline

PROMPT = "zebra-private-prompt-91"


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[E2E]:
    harness, close = await make_e2e(tmp_path)
    try:
        yield harness
    finally:
        await close()


async def test_prompts_and_presigned_urls_stay_out_of_info_logs(env: E2E, caplog) -> None:
    env.cd.presigned_outputs = True
    await env.add_deployment(timeline=Timeline.success("png"))
    with caplog.at_level(logging.INFO):
        user = env.fake.user(5301)
        await env.command(user, f"/make {PROMPT}")
        first = await env.latest_run(user.id)
        await env.finish(first.id)
        # a second run whose output file is gone when delivery fetches it (404)
        await env.command(user, f"/make {PROMPT} again")
        second = await env.latest_run(user.id)
        backend = await env.backend_id(second.id)
        fake_run = env.cd.runs[backend]
        await env.cd.advance(backend, steps=len(fake_run.timeline.steps) - 1)
        env.cd.files.clear()
        await env.cd.advance(backend)
        await env.settle()
        # an invalid request: the validation error must not echo the prompt
        await env.command(user, "/make " + PROMPT * 120)
        await env.settle()
    assert "X-Amz-Signature" in (await env.storage.runs.get_run(first.id)).outputs[0].url
    assert env.fake.sent_media(user.id)  # the first run was delivered
    texts = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
    assert any("could not download output" in t for t in texts)  # the failure was logged
    leaks = [t for t in texts if PROMPT in t or "X-Amz-Signature" in t]
    assert leaks == []
