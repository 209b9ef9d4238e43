"""``python -m bot doctor`` and self-hosted ComfyUI, against the ComfyUI double on 127.0.0.1:
every server answers ``GET /object_info``, every workflow has its node classes there and the
inputs its type needs; each ✗ says what to do."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from generation.comfyui import parse_workflow
from storage import Storage
from tests.comfyui_support import register, workflow_file
from tests.fakes.comfyui import FakeComfyUI
from tests.test_doctor import World, failed, line


@pytest.fixture
async def comfyui() -> AsyncIterator[FakeComfyUI]:
    server = FakeComfyUI()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def _workflows(db: Path) -> None:
    store = await Storage.open(db)
    try:
        await register(store, "MAKE", "sdxl", "make_sdxl")  # every input MAKE needs
        await register(store, "I2I", "nopromt", "model-free/i2i")  # no input_prompt
        graph = parse_workflow(workflow_file("make_sdxl"))
        graph["99"] = {"class_type": "FancyCustomNode", "inputs": {}}
        await store.workflows.add("INPAINT", "fancy", graph, [])
    finally:
        await store.close()


@pytest.fixture
async def world(tmp_path: Path) -> World:
    w = World(tmp_path)
    await w.setup(types={})  # no ComfyDeploy deployments
    await _workflows(w.db)
    return w


async def test_servers_and_workflows(world: World, comfyui: FakeComfyUI) -> None:
    report = await world.check(generation_backend="comfyui", comfyui_url=comfyui.url)
    assert line(report, f"ComfyUI {comfyui.url}").ok
    assert "node classes" in line(report, f"ComfyUI {comfyui.url}").detail
    assert "ComfyDeploy" not in [c.name for c in report.checks]  # not used
    sdxl = line(report, "workflow sdxl (MAKE)")
    assert sdxl.ok and "input_prompt" in sdxl.detail
    assert "I2I needs input_prompt" in failed(report, "workflow nopromt (I2I)").detail
    fancy = failed(report, "workflow fancy (INPAINT)")
    assert "FancyCustomNode" in fancy.detail and "custom nodes" in fancy.fix
    assert line(report, "/make").ok and "MAKE" in line(report, "/make").detail
    assert "has nowhere to run" in failed(report, "/i2i").detail
    assert {"GET"} == {method for method, *_ in comfyui.requests}  # read-only


async def test_a_server_that_does_not_answer(world: World) -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    report = await world.check(generation_backend="comfyui", comfyui_url=url)
    down = failed(report, f"ComfyUI {url}")
    assert "no answer to GET /object_info" in down.detail and "COMFYUI_URL" in down.fix
    assert "no ComfyUI server answered" in failed(report, "workflow sdxl (MAKE)").detail
    assert "did not answer" in failed(report, "/make").detail


async def test_user_info_in_the_url_is_never_printed(world: World, comfyui: FakeComfyUI) -> None:
    url = comfyui.url.replace("http://", "http://admin:hunter2secret@")
    report = await world.check(generation_backend="comfyui", comfyui_url=url)
    assert "hunter2secret" not in report.text()
    assert line(report, f"ComfyUI {comfyui.url}").ok


async def test_both_backends_side_by_side(world: World, comfyui: FakeComfyUI) -> None:
    report = await world.check(generation_backend="auto", comfyui_url=comfyui.url)
    names = [c.name for c in report.checks]
    assert "ComfyDeploy" in names and f"ComfyUI {comfyui.url}" in names
    assert line(report, "ComfyDeploy").ok and line(report, "/make").ok
