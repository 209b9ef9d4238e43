"""ComfyDeployClient against the ComfyDeploy test double (in process, via MockTransport)."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from generation.client import ComfyDeployClient
from generation.errors import (
    AuthFailedError,
    BackendError,
    BackendUnavailableError,
    DeploymentNotFoundError,
    InvalidInputError,
    RateLimitedError,
    RunNotFoundError,
    SubmitUncertainError,
)
from generation.models import DeploymentInfo, MediaType, RunStatus
from generation.ports import Backend
from tests.fakes.comfydeploy import FakeComfyDeploy, Timeline

API_KEY = "cd-secret-key-123"


class Sleeps:
    """Records backoff delays instead of waiting."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


@pytest.fixture
async def fake() -> AsyncIterator[FakeComfyDeploy]:
    async with FakeComfyDeploy(auth_token=API_KEY) as fake:
        yield fake


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


def make_client(
    transport: httpx.AsyncBaseTransport, sleeps: Sleeps, **kwargs: Any
) -> ComfyDeployClient:
    kwargs.setdefault("max_per_second", None)
    kwargs.setdefault("base_url", "http://comfydeploy.test/api")
    return ComfyDeployClient(API_KEY, transport=transport, sleep=sleeps, **kwargs)


@pytest.fixture
async def client(fake: FakeComfyDeploy, sleeps: Sleeps) -> AsyncIterator[ComfyDeployClient]:
    c = make_client(fake.transport, sleeps)
    yield c
    await c.aclose()


def calls(fake: FakeComfyDeploy, path_prefix: str) -> int:
    return sum(1 for r in fake.requests if r.path.startswith(path_prefix))


# --------------------------------------------------------------------------- happy paths


async def test_client_satisfies_backend_protocol(client: ComfyDeployClient) -> None:
    assert isinstance(client, Backend)
    assert API_KEY not in repr(client)


async def test_create_sends_exact_body_and_returns_run_id(
    fake: FakeComfyDeploy, client: ComfyDeployClient
) -> None:
    dep = fake.add_deployment(inputs=["input_prompt", "input_seed"])
    run_id = await client.create_run(
        dep, {"input_prompt": "a fox", "input_seed": 7}, webhook="http://bot/wh?t=abc"
    )
    assert run_id in fake.runs
    assert fake.create_calls == [
        {
            "deployment_id": dep,
            "inputs": {"input_prompt": "a fox", "input_seed": 7},
            "webhook": "http://bot/wh?t=abc",
            "webhook_intermediate_status": True,
        }
    ]
    run = fake.runs[run_id]
    assert run.inputs == {"input_prompt": "a fox", "input_seed": 7}
    assert run.webhook == "http://bot/wh?t=abc"


async def test_get_run_follows_timeline(fake: FakeComfyDeploy, client: ComfyDeployClient) -> None:
    dep = fake.add_deployment(timeline=Timeline.success("png"))
    run_id = await client.create_run(dep, {"input_prompt": "x"})
    snap = await client.get_run(run_id)
    assert (snap.status, snap.raw_status, snap.queue_position) == (
        RunStatus.WAITING,
        "not-started",
        0,
    )
    await fake.advance(run_id, steps=3)  # queued, started, running
    snap = await client.get_run(run_id)
    assert snap.status is RunStatus.RUNNING and snap.queue_position is None
    await fake.advance(run_id, steps=2)
    snap = await client.get_run(run_id)
    assert snap.live_status == "Executing KSampler"
    assert snap.progress == pytest.approx(0.57)
    await fake.run_to_end(run_id)
    snap = await client.get_run(run_id)
    assert snap.status is RunStatus.SUCCESS and snap.progress == 1.0
    assert [o.media_type for o in snap.outputs] == [MediaType.IMAGE]
    assert fake.requests[-1].query == {"queue_position": "true"}


async def test_queue_position_counts_older_waiting_runs(
    fake: FakeComfyDeploy, client: ComfyDeployClient
) -> None:
    dep = fake.add_deployment(timeline=Timeline.stall())
    ids = [await client.create_run(dep, {}) for _ in range(3)]
    assert [(await client.get_run(i)).queue_position for i in ids] == [0, 1, 2]


async def test_cancel_running_then_terminal_is_ok(
    fake: FakeComfyDeploy, client: ComfyDeployClient
) -> None:
    dep = fake.add_deployment()
    run_id = await client.create_run(dep, {})
    await fake.advance(run_id, steps=3)
    await client.cancel_run(run_id)
    assert fake.runs[run_id].status == "cancelled"
    await client.cancel_run(run_id)  # already terminal: 200, no error
    assert (await client.get_run(run_id)).status is RunStatus.CANCELLED
    assert calls(fake, f"/run/{run_id}/cancel") == 2


async def test_cancel_unknown_run_is_run_not_found_without_retry(
    fake: FakeComfyDeploy, client: ComfyDeployClient, sleeps: Sleeps
) -> None:
    with pytest.raises(RunNotFoundError):
        await client.cancel_run("7b1c9f0e-0000-4000-8000-000000000000")
    assert len(fake.cancel_calls) == 1
    assert sleeps.delays == []


async def test_upload_returns_file_url_serving_the_bytes(
    fake: FakeComfyDeploy, client: ComfyDeployClient
) -> None:
    url = await client.upload_file(b"\x89PNG-data", "in.png", "image/png")
    assert url.startswith(fake.base_url + "/files/img_")
    assert fake.file_bytes(url) == b"\x89PNG-data"
    assert fake.uploads[0]["file_name"] == "in.png"


async def test_upload_unsupported_type_is_invalid_input(client: ComfyDeployClient) -> None:
    with pytest.raises(InvalidInputError, match="Unsupported file type"):
        await client.upload_file(b"x", "notes.xyz123", "text/plain")


async def test_list_deployments_reads_input_ids(
    fake: FakeComfyDeploy, client: ComfyDeployClient
) -> None:
    dep = fake.add_deployment(inputs=["input_prompt", "input_image"], name="sdxl")
    assert await client.list_deployments() == [
        DeploymentInfo(id=dep, name="sdxl", inputs=("input_prompt", "input_image"))
    ]


async def test_list_deployments_tolerates_missing_fields(sleeps: Sleeps) -> None:
    body = [
        {"id": "a"},
        {
            "id": "b",
            "name": 5,
            "input_types": [{"input_id": "p"}, "junk", {"x": 1}, {"input_id": 3}],
        },
        {"name": "no id"},
        "junk",
    ]
    transport = httpx.MockTransport(lambda r: httpx.Response(200, json=body))
    async with make_client(transport, sleeps) as c:
        assert await c.list_deployments() == [
            DeploymentInfo(id="a"),
            DeploymentInfo(id="b", inputs=("p",)),
        ]


# --------------------------------------------------------------------------- retries / errors


async def test_5xx_twice_then_success_makes_three_calls(
    fake: FakeComfyDeploy, client: ComfyDeployClient, sleeps: Sleeps
) -> None:
    dep = fake.add_deployment()
    fake.fail_next_creates(2, status=503)
    run_id = await client.create_run(dep, {})
    assert len(fake.create_calls) == 3
    assert list(fake.runs) == [run_id]
    assert len(sleeps.delays) == 2
    assert all(0 <= d <= 8.0 for d in sleeps.delays)


async def test_5xx_until_cap_is_backend_unavailable(fake: FakeComfyDeploy, sleeps: Sleeps) -> None:
    dep = fake.add_deployment()
    fake.fail_next_creates(10, status=503)
    async with make_client(fake.transport, sleeps, max_attempts=3) as c:
        with pytest.raises(BackendUnavailableError):
            await c.create_run(dep, {})
    assert len(fake.create_calls) == 3
    assert fake.runs == {}


async def test_get_5xx_retried(fake: FakeComfyDeploy, client: ComfyDeployClient) -> None:
    dep = fake.add_deployment()
    run_id = await client.create_run(dep, {})
    fake.fail_next_gets(1, status=502)
    assert (await client.get_run(run_id)).backend_run_id == run_id
    assert calls(fake, f"/run/{run_id}") == 2


async def test_401_is_auth_failed_with_exactly_one_call(
    fake: FakeComfyDeploy, sleeps: Sleeps
) -> None:
    dep = fake.add_deployment()
    async with ComfyDeployClient(
        "wrong-key", fake.base_url, transport=fake.transport, sleep=sleeps
    ) as c:
        with pytest.raises(AuthFailedError) as info:
            await c.create_run(dep, {})
    assert len(fake.create_calls) == 1
    assert "wrong-key" not in str(info.value)
    assert sleeps.delays == []


async def test_empty_key_sends_no_auth_and_fails_with_auth_error(
    fake: FakeComfyDeploy, sleeps: Sleeps
) -> None:
    dep = fake.add_deployment()
    async with ComfyDeployClient("", fake.base_url, transport=fake.transport, sleep=sleeps) as c:
        with pytest.raises(AuthFailedError):
            await c.create_run(dep, {})
    assert [r.authorized for r in fake.requests] == [False]


async def test_unknown_deployment_is_not_found_without_retry(
    fake: FakeComfyDeploy, client: ComfyDeployClient, sleeps: Sleeps
) -> None:
    with pytest.raises(DeploymentNotFoundError, match="Deployment not found"):
        await client.create_run("0d3a8bbf-1111-4222-8333-444455556666", {})
    assert len(fake.create_calls) == 1
    assert sleeps.delays == []


async def test_422_is_invalid_input_with_detail(
    fake: FakeComfyDeploy, client: ComfyDeployClient
) -> None:
    with pytest.raises(InvalidInputError) as info:
        await client.create_run("not-a-uuid", {"input_prompt": "x"})
    assert "body.deployment_id" in info.value.message
    assert "valid UUID" in info.value.message
    assert info.value.field == "deployment_id"
    assert len(fake.create_calls) == 1


async def test_get_unknown_run_is_run_not_found(
    fake: FakeComfyDeploy, client: ComfyDeployClient
) -> None:
    with pytest.raises(RunNotFoundError):
        await client.get_run("7b1c9f0e-0000-4000-8000-000000000000")
    assert len(fake.requests) == 1


async def test_429_then_success_honours_retry_after(
    fake: FakeComfyDeploy, client: ComfyDeployClient, sleeps: Sleeps
) -> None:
    dep = fake.add_deployment()
    fake.fail_next_creates(1, status=429)
    await client.create_run(dep, {})
    assert len(fake.create_calls) == 2
    assert sleeps.delays and sleeps.delays[0] >= 1.0  # Retry-After: 1


async def test_429_after_retries_is_rate_limited(fake: FakeComfyDeploy, sleeps: Sleeps) -> None:
    dep = fake.add_deployment()
    fake.fail_next_creates(5, status=429)
    async with make_client(fake.transport, sleeps, max_attempts=2) as c:
        with pytest.raises(RateLimitedError):
            await c.create_run(dep, {})
    assert len(fake.create_calls) == 2


@pytest.mark.parametrize("max_attempts", [1, 3, 5])
async def test_connect_error_retried_up_to_the_cap(
    fake: FakeComfyDeploy, sleeps: Sleeps, max_attempts: int
) -> None:
    dep = fake.add_deployment()
    fake.fail_next_transport(100, httpx.ConnectError, route="create")
    async with make_client(fake.transport, sleeps, max_attempts=max_attempts) as c:
        with pytest.raises(BackendUnavailableError):
            await c.create_run(dep, {})
    assert fake.transport_faults_raised == ["create"] * max_attempts
    assert len(sleeps.delays) == max_attempts - 1
    assert fake.create_calls == []  # never reached the server


async def test_connect_error_then_success(fake: FakeComfyDeploy, client: ComfyDeployClient) -> None:
    dep = fake.add_deployment()
    fake.fail_next_transport(2, httpx.ConnectTimeout, route="create")
    run_id = await client.create_run(dep, {})
    assert list(fake.runs) == [run_id]


@pytest.mark.parametrize("exc", [httpx.ReadTimeout, httpx.RemoteProtocolError, httpx.ReadError])
async def test_uncertain_create_is_not_retried(
    fake: FakeComfyDeploy, client: ComfyDeployClient, exc: type[httpx.TransportError]
) -> None:
    dep = fake.add_deployment()
    fake.fail_next_transport(1, exc, route="create", after_handling=True)
    with pytest.raises(SubmitUncertainError):
        await client.create_run(dep, {})
    assert len(fake.create_calls) == 1
    assert len(fake.runs) == 1  # the run exists: exactly why we must not retry


async def test_read_timeout_on_get_is_retried(
    fake: FakeComfyDeploy, client: ComfyDeployClient
) -> None:
    dep = fake.add_deployment()
    run_id = await client.create_run(dep, {})
    fake.fail_next_transport(1, httpx.ReadTimeout, route="get")
    assert (await client.get_run(run_id)).backend_run_id == run_id


@pytest.mark.parametrize(
    ("status", "body", "error"),
    [
        (200, b"not json", BackendError),
        (200, b'{"no_run_id": 1}', BackendError),
        (403, b'{"detail":"Your account has been suspended."}', AuthFailedError),
        (400, b'{"detail":"Invalid machine type"}', InvalidInputError),
        (409, b'{"detail":"conflict"}', BackendError),
        (404, b'{"detail":"Workflow not found"}', DeploymentNotFoundError),
    ],
)
async def test_error_mapping_without_retry(
    sleeps: Sleeps, status: int, body: bytes, error: type[Exception]
) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(status, content=body)

    async with make_client(httpx.MockTransport(handler), sleeps) as c:
        with pytest.raises(error):
            await c.create_run("0d3a8bbf-1111-4222-8333-444455556666", {})
    assert len(seen) == 1


async def test_run_ids_are_escaped_in_paths(sleeps: Sleeps) -> None:
    seen: list[bytes] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.raw_path)
        return httpx.Response(200, json={"id": "x", "status": "running"})

    async with make_client(httpx.MockTransport(handler), sleeps) as c:
        await c.get_run("../deployments?x=1")
        for bad in ["..", ".", "", "a\nb", "x" * 500]:
            with pytest.raises(InvalidInputError):
                await c.get_run(bad)
            with pytest.raises(InvalidInputError):
                await c.cancel_run(bad)
    assert seen == [b"/api/run/..%2Fdeployments%3Fx%3D1?queue_position=true"]


# --------------------------------------------------------------------------- logs / limits


async def test_logs_have_method_path_status_and_never_the_key(
    fake: FakeComfyDeploy, client: ComfyDeployClient, caplog: pytest.LogCaptureFixture
) -> None:
    dep = fake.add_deployment()
    caplog.set_level(logging.DEBUG)
    run_id = await client.create_run(dep, {"input_prompt": "x"})
    await client.get_run(run_id)
    with pytest.raises(RunNotFoundError):
        await client.cancel_run("7b1c9f0e-0000-4000-8000-000000000000")
    mine = [r for r in caplog.records if r.name == "generation.client"]
    messages = [r.getMessage() for r in mine]
    assert len(mine) == 3
    assert "POST /run/deployment/queue status=200" in messages[0]
    assert f"GET /run/{run_id} status=200" in messages[1]
    assert f"run_id={run_id}" in messages[1]
    assert "status=500" in messages[2]
    assert all("duration_ms=" in m for m in messages)
    everything = caplog.text + json.dumps([r.__dict__ for r in caplog.records], default=str)
    assert API_KEY not in everything
    assert "Bearer" not in everything


async def test_concurrency_limit_is_honoured(sleeps: Sleeps) -> None:
    gate = asyncio.Event()
    state = {"now": 0, "max": 0, "total": 0}

    async def handler(request: httpx.Request) -> httpx.Response:
        state["now"] += 1
        state["total"] += 1
        state["max"] = max(state["max"], state["now"])
        await gate.wait()
        state["now"] -= 1
        return httpx.Response(200, json={"id": "r", "status": "running"})

    async with make_client(httpx.MockTransport(handler), sleeps, max_concurrency=3) as c:
        tasks = [asyncio.create_task(c.get_run(f"run-{i}")) for i in range(10)]
        for _ in range(200):  # bounded: let every task run as far as it can
            await asyncio.sleep(0)
        assert state["now"] == 3
        gate.set()
        results = await asyncio.gather(*tasks)
    assert len(results) == 10 and state["total"] == 10
    assert state["max"] == 3


async def test_rate_limiter_holds_requests_beyond_the_burst(sleeps: Sleeps) -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.path)
        return httpx.Response(200, json={"id": "r", "status": "running"})

    async with make_client(httpx.MockTransport(handler), sleeps, max_per_second=2) as c:
        tasks = [asyncio.create_task(c.get_run(f"run-{i}")) for i in range(3)]
        for _ in range(100):  # bounded yields; the third request needs ~0.5 s of budget
            await asyncio.sleep(0)
        assert len(seen) == 2
        assert sum(t.done() for t in tasks) == 2
        tasks[2].cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
