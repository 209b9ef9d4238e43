"""Fuzzing ComfyDeploy webhook payloads (issue #5 point 5) with hypothesis.

Random payloads — valid-looking run callbacks with random statuses, progress values, outputs
and ids, plus arbitrary JSON — go to ``GenerationService.process_webhook`` (with correct and
wrong tokens) and through the webhook server's ASGI route. Nothing may raise or log an ERROR;
statuses stay monotonic (a terminal run never changes again); the ledger stays consistent.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bot.app import get_runtime
from bot.config import Settings
from bot.server import COMFYDEPLOY_PATH, create_app
from generation.tokens import webhook_token
from tests.fakes.comfydeploy import Timeline
from tests.test_fuzz_updates import _describe, fuzz_session

EXAMPLES = 1000
STATUSES = [
    "not-started", "queued", "started", "running", "uploading", "success", "failed",
    "timeout", "cancelled", "api_error", "", "SUCCESS",
]  # fmt: skip

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
urls = st.one_of(
    st.just("https://comfy-deploy-output.s3.amazonaws.com/outputs/runs/x/ComfyUI_00001_.png"),
    st.just("http://comfydeploy.test/api/files/nope.gif"),
    st.text(max_size=30),
    json_values,
)
outputs = st.lists(
    st.fixed_dictionaries(
        {},
        optional={
            "data": st.one_of(
                json_values,
                st.dictionaries(
                    st.sampled_from(["images", "gifs", "files", "videos", "text"]),
                    st.lists(
                        st.fixed_dictionaries(
                            {"url": urls},
                            optional={"filename": st.text(max_size=20), "type": json_values},
                        )
                        | json_values,
                        max_size=2,
                    ),
                    max_size=2,
                ),
            ),
            "node_meta": json_values,
        },
    )
    | json_values,
    max_size=3,
)


def payloads(backend_ids: list[str]) -> st.SearchStrategy[Any]:
    run_like = st.fixed_dictionaries(
        {},
        optional={
            "event_type": st.sampled_from(["run.updated", "run.output", "x"]) | json_values,
            "status": st.sampled_from(STATUSES) | json_values,
            "run_id": st.sampled_from(backend_ids) | json_values,
            "progress": st.floats() | json_values,
            "live_status": json_values,
            "outputs": outputs | json_values,
        },
    )
    return st.one_of(run_like, run_like, run_like, json_values)


def test_random_webhook_payloads_change_nothing_they_should_not(tmp_path: Path) -> None:
    ran = [0]
    with fuzz_session(tmp_path) as (loop, env, errors):
        secret = get_runtime(env.app).run_webhook_key
        app = create_app(
            env.app,
            Settings(_env_file=None, public_url="http://bot.test"),
            env.services,
            webhook_secret=get_runtime(env.app).webhook_secret,
            run_webhook_key=secret,
        )
        http = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app, client=("127.0.0.1", 40001)),
            base_url="http://bot.test",
        )

        async def setup() -> list[Any]:
            await env.add_deployment(timeline=Timeline.stall())
            await env.storage.prices.set("MAKE", 1)
            runs = []
            for uid in range(8001, 8007):
                await env.storage.users.get_or_create(uid, language_code="en")
                await env.storage.ledger.set_balance(uid, 2, actor=None)
                await env.command(env.fake.user(uid), f"/make run {uid}")
                run = await env.latest_run(uid)
                await env.events.wait(lambda r=run: "generation:started" in env.events.names(r.id))
                runs.append(await env.storage.runs.get_run(run.id))
            return runs

        runs = loop.run_until_complete(setup())
        backend_ids = [r.backend_run_id for r in runs] + ["other"]
        terminal: dict[str, Any] = {}

        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            database=None,
        )
        @given(
            payload=payloads(backend_ids),
            target=st.integers(0, len(runs) - 1),
            how=st.sampled_from(["service", "service-bad-token", "asgi", "asgi-raw"]),
            raw=st.binary(max_size=40),
        )
        def one(payload: Any, target: int, how: str, raw: bytes) -> None:
            run = runs[target]
            token = webhook_token(secret, run.id)
            before = len(errors.records)

            async def feed() -> None:
                if how == "service":
                    if isinstance(payload, dict):
                        await env.service.process_webhook(payload, token, run.id)
                elif how == "service-bad-token":
                    ok = await env.service.process_webhook(
                        payload if isinstance(payload, dict) else {}, token[::-1], run.id
                    )
                    assert ok is False
                else:
                    url = f"{COMFYDEPLOY_PATH}?r={run.id}&t={token}"
                    body = raw if how == "asgi-raw" else json.dumps(payload).encode()
                    answer = await http.post(url, content=body)
                    assert answer.status_code in (200, 400)
                    await app.state.webhook_tasks.drain()
                await env.service.bus.drain()
                await env.settle()
                for r in runs:
                    current = await env.storage.runs.get_run(r.id)
                    if r.id in terminal:  # terminal is final: nothing changes it any more
                        assert current.status == terminal[r.id]
                    elif current.status.is_terminal:
                        terminal[r.id] = current.status

            loop.run_until_complete(asyncio.wait_for(feed(), 10))
            ran[0] += 1
            new = errors.records[before:]
            assert not new, f"{_describe(new[0])}\nfor {payload!r}"

        one()
        loop.run_until_complete(http.aclose())
        assert ran[0] >= EXAMPLES
        assert loop.run_until_complete(env.storage.ledger.check_consistency()) == []
        print(f"\nfuzzed webhooks: {ran[0]} examples, {len(terminal)} runs ended by them")
