"""The ComfyUI HTTP client, the WebSocket listener and the wiring from settings."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from bot.backends import make_backend, output_origins
from bot.config import Settings
from generation.client import ComfyDeployClient
from generation.comfyui import ComfyUIBackend, ComfyUIClient
from generation.comfyui.client import parse_validation_error, safe_url, ws_url
from generation.comfyui.ws import EventStream
from generation.errors import (
    AuthFailedError,
    BackendUnavailableError,
    SubmitUncertainError,
    WorkflowInvalidError,
)
from generation.preview import PreviewBackend
from generation.routing import RoutingBackend
from storage import Storage
from tests.comfyui_support import MemoryWorkflows, workflow_file
from tests.fakes.comfyui import FakeComfyUI

SECRET = "Bearer very-secret-proxy-token"


@pytest.fixture
async def fake() -> AsyncIterator[FakeComfyUI]:
    server = FakeComfyUI()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def test_validation_answers_become_workflow_errors_naming_node_and_input(
    fake: FakeComfyUI,
) -> None:
    client = ComfyUIClient(fake.url)
    try:
        bad = {
            "1": {
                "class_type": "EmptyImage",
                "inputs": {"width": 5, "height": 99999, "batch_size": 1, "color": 0},
            },
            "2": {
                "class_type": "SaveImage",
                "inputs": {"images": ["1", 0], "filename_prefix": "x"},
            },
        }
        with pytest.raises(WorkflowInvalidError) as info:
            await client.submit(bad, client_id="c", prompt_id="p1")
        details = info.value.details
        assert (details["node_id"], details["class_type"], details["input_name"]) == (
            "1",
            "EmptyImage",
            "height",
        )
        assert details["error_type"] == "value_bigger_than_max"
        with pytest.raises(WorkflowInvalidError) as info:
            await client.submit(
                {"1": {"class_type": "Nope", "inputs": {}}}, client_id="c", prompt_id="p2"
            )
        assert (
            info.value.details["node_id"] == "1"
            and info.value.details["error_type"] == "invalid_prompt"
        )
    finally:
        await client.aclose()


def test_parse_validation_error_tolerates_garbage() -> None:
    first, errors = parse_validation_error("not json")
    assert first.error_type == "invalid_prompt" and len(errors) == 1
    first, _ = parse_validation_error(
        {
            "error": {"type": "prompt_no_outputs", "message": "Prompt has no outputs"},
            "node_errors": {},
        }
    )
    assert first.error_type == "prompt_no_outputs" and first.node_id is None


async def test_transport_errors_map_to_retryable_or_uncertain() -> None:
    async def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    async def cut(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("cut", request=request)

    client = ComfyUIClient("http://127.0.0.1:1", transport=httpx.MockTransport(refuse))
    with pytest.raises(BackendUnavailableError):
        await client.submit({}, client_id="c", prompt_id="p")  # never sent: retry elsewhere
    with pytest.raises(BackendUnavailableError):
        await client.queue()
    await client.aclose()
    client = ComfyUIClient("http://127.0.0.1:1", transport=httpx.MockTransport(cut))
    with pytest.raises(SubmitUncertainError):
        await client.submit({}, client_id="c", prompt_id="p")  # may have reached the server
    await client.aclose()


async def test_auth_is_sent_and_never_logged(caplog: pytest.LogCaptureFixture) -> None:
    secured = FakeComfyUI(require_auth=SECRET)
    await secured.start()
    caplog.set_level(logging.DEBUG)
    try:
        plain = ComfyUIClient(secured.url)
        with pytest.raises(AuthFailedError):
            await plain.queue()
        await plain.aclose()
        client = ComfyUIClient(secured.url, auth=SECRET)
        assert (await client.queue())["queue_pending"] == []
        assert SECRET not in repr(client)
        await client.aclose()
        stream = EventStream(ws_url(secured.url, "cid"), auth=SECRET, on_message=lambda m: None)
        stream.start()
        assert await stream.wait_connected(5)
        await stream.aclose()
        assert secured.ws_upgrade_headers[-1]["authorization"] == SECRET
    finally:
        await secured.stop()
    assert SECRET not in caplog.text and "very-secret" not in caplog.text
    assert safe_url("http://user:pw@host:81/x?y=1") == "http://host:81/x"


async def test_websocket_reconnects_with_backoff_and_resyncs(fake: FakeComfyUI) -> None:
    messages: list[str] = []
    connects: list[int] = []
    delays: list[float] = []

    async def fast_sleep(seconds: float) -> None:
        delays.append(seconds)
        await asyncio.sleep(0)

    stream = EventStream(
        ws_url(fake.url, "cid"),
        on_message=lambda m: messages.append(m["type"]),
        on_connect=lambda: connects.append(1),
        sleep=fast_sleep,
        backoff_initial=0.5,
        backoff_max=4.0,
        rng=random.Random(1),
    )
    stream.start()
    try:
        assert await stream.wait_connected(5)
        await fake.drop_websockets()
        for _ in range(500):  # bounded: until the listener is back
            if len(connects) >= 2 and stream.connected:
                break
            await asyncio.sleep(0.01)
        assert len(connects) >= 2 and messages.count("status") >= 2  # status on every connect
        await fake.stop()  # down: attempts back off, capped
        for _ in range(500):
            if len(delays) >= 6:
                break
            await asyncio.sleep(0.01)
        assert delays[1] >= 0.5 * 0.5 and max(delays) <= 4.0
        assert delays[-1] >= delays[1]  # grows
        await fake.start()
        for _ in range(500):
            if stream.connected:
                break
            await asyncio.sleep(0.01)
        assert stream.connected
    finally:
        await stream.aclose()
    assert [stream.backoff(n) <= min(4.0, 0.5 * 2 ** (n - 1)) for n in range(1, 8)] == [True] * 7


async def test_a_silent_socket_is_pinged_not_dropped(fake: FakeComfyUI) -> None:
    stream = EventStream(ws_url(fake.url, "cid"), on_message=lambda m: None, recv_timeout=0.05)
    stream.start()
    try:
        assert await stream.wait_connected(5)
        for _ in range(20):  # several receive timeouts pass, each answered by a pong
            await asyncio.sleep(0.02)
        assert stream.connected and stream.connects == 1
    finally:
        await stream.aclose()


def _settings(**values: object) -> Settings:
    return Settings(_env_file=None, **values)


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({}, {"preview"}),
        ({"comfydeploy_api_key": "k"}, {"comfydeploy"}),
        ({"comfyui_url": "http://127.0.0.1:8188"}, {"comfyui"}),
        (
            {"comfydeploy_api_key": "k", "comfyui_url": "http://a:1,http://b:2"},
            {"comfydeploy", "comfyui"},
        ),
        (
            {
                "generation_backend": "comfyui",
                "comfyui_url": "http://a:1",
                "comfydeploy_api_key": "k",
            },
            {"comfyui"},
        ),
        ({"generation_backend": "preview", "comfyui_url": "http://a:1"}, {"preview"}),
    ],
)
def test_auto_picks_the_backends_that_are_configured(values: dict, expected: set) -> None:
    assert _settings(**values).backends == expected


async def test_make_backend_builds_each_combination() -> None:
    store = MemoryWorkflows()
    backend = make_backend(_settings(), workflows=store)
    assert isinstance(backend, PreviewBackend)
    await backend.aclose()
    backend = make_backend(
        _settings(comfyui_url="http://127.0.0.1:9/", comfyui_auth=SECRET), workflows=store
    )
    assert isinstance(backend, ComfyUIBackend) and backend.servers == ["http://127.0.0.1:9"]
    await backend.aclose()
    both = _settings(comfydeploy_api_key="k", comfyui_url="http://127.0.0.1:9,http://127.0.0.1:10")
    backend = make_backend(both, workflows=store)
    assert isinstance(backend, RoutingBackend)
    assert isinstance(backend.comfydeploy, ComfyDeployClient) and len(backend.comfyui.servers) == 2
    assert output_origins(both)[1:] == ("http://127.0.0.1:9", "http://127.0.0.1:10")
    await backend.aclose()
    with pytest.raises(ValueError):
        _settings(comfyui_url="ftp://nope")
    assert "comfyui_auth" not in repr(_settings(comfyui_auth=SECRET)) or SECRET not in repr(
        _settings(comfyui_auth=SECRET)
    )


async def test_workflows_are_deployments_in_storage(tmp_path: Path) -> None:
    storage = await Storage.open(tmp_path / "s.sqlite3")
    try:
        from generation.comfyui import analyse, parse_workflow

        graph = parse_workflow(workflow_file("model-free/make"))
        items = [i.to_dict() for i in analyse(graph).inputs]
        record = await storage.workflows.add("make", "My-Flow", graph, items, weight=3)
        assert record.deployment_id == "workflow:my-flow" and record.type == "MAKE"
        assert record.inputs == ("input_width", "input_height")
        (dep,) = await storage.deployments.list_deployments("MAKE")
        assert (dep.deployment_id, dep.backend, dep.weight, dep.inputs) == (
            "workflow:my-flow",
            "comfyui",
            3,
            ("input_width", "input_height"),
        )
        await storage.deployments.set_enabled("workflow:my-flow", False)
        assert not (await storage.deployments.get("workflow:my-flow")).enabled
        from storage.errors import DuplicateError

        with pytest.raises(DuplicateError):
            await storage.workflows.add("MAKE", "my-flow", graph, items)
        again = await storage.workflows.add("I2I", "my-flow", graph, items, replace=True)
        assert (
            again.type == "I2I" and not (await storage.deployments.get("workflow:my-flow")).enabled
        )
        # removing the deployment row removes the graph too (ON DELETE CASCADE)
        assert await storage.deployments.remove("workflow:my-flow")
        assert await storage.workflows.get_workflow("workflow:my-flow") is None
        assert await storage.workflows.list_workflows() == []
        await storage.workflows.add("MAKE", "x", graph, items)
        assert await storage.workflows.remove("x") and not await storage.workflows.remove("x")
        assert await storage.deployments.list_deployments() == []
    finally:
        await storage.close()
