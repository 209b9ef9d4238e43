"""Opt-in: the ComfyUI flows against a real ComfyUI server (``COMFYUI_TEST_URL``).

Skipped unless ``COMFYUI_TEST_URL`` points at a running ComfyUI (for example one started with
``python main.py --cpu --listen 127.0.0.1 --port 8188``). Every graph is model-free
(``docs/workflows/model-free``), so a CPU-only server without any model file runs them. The
figures (one run's latency through the bot's backend, cancel latency) are printed and, when
``COMFYUI_TEST_REPORT`` names a file, appended to it as JSON lines.
"""

from __future__ import annotations

import io
import json
import os
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image

from generation import (
    GenerationCancelled,
    GenerationCompleted,
    GenerationContext,
    GenerationFailed,
    GenerationRequest,
    GenerationStarted,
    InputImage,
    RunStatus,
)
from generation.comfyui import ids
from storage import Storage
from tests.comfyui_support import half_mask, harness, png, register

URL = os.environ.get("COMFYUI_TEST_URL", "").strip()
AUTH = os.environ.get("COMFYUI_TEST_AUTH") or None
pytestmark = pytest.mark.skipif(
    not URL, reason="COMFYUI_TEST_URL is not set: no real ComfyUI server to test against"
)
USER = 21


def _report(name: str, **figures: float) -> None:
    line = json.dumps({"figure": name, **{k: round(v, 3) for k, v in figures.items()}})
    print(line)
    target = os.environ.get("COMFYUI_TEST_REPORT")
    if target:
        with Path(target).open("a") as fh:
            fh.write(line + "\n")


def _request(type_: str = "MAKE", **kw: object) -> GenerationRequest:
    return GenerationRequest(type=type_, prompt="real server", user_id=USER, chat_id=USER, **kw)


async def _image(transport: httpx.AsyncBaseTransport, url: str) -> Image.Image:
    async with httpx.AsyncClient(transport=transport) as client:
        response = await client.get(url)
        response.raise_for_status()
    return Image.open(io.BytesIO(response.content)).convert("RGB")


async def _setup(storage: Storage) -> None:
    await storage.users.get_or_create(USER, starting_balance=1000)
    await register(storage, "MAKE", "make", "model-free/make")
    await register(storage, "I2I", "i2i", "model-free/i2i")
    await register(storage, "INPAINT", "inpaint", "model-free/inpaint")
    await register(storage, "LONG", "long", "model-free/long")
    await register(storage, "BROKEN", "broken", "model-free/runtime_error")
    await register(storage, "INVALID", "invalid", "model-free/invalid")


async def test_make_i2i_inpaint_on_the_real_server(storage: Storage) -> None:
    await _setup(storage)
    async with harness(storage, [URL], auth=AUTH, poll_interval=0.5) as h:
        started = time.perf_counter()
        # a size no earlier run used: the server cannot answer from its cache
        width = 64 + int(time.time()) % 200
        run = await h.service.generate(_request(width=width, height=96), GenerationContext(price=1))
        done = await h.wait(GenerationCompleted, run.id, 60)
        latency = time.perf_counter() - started
        image = await _image(h.comfyui.transport, done.outputs[0].url)
        assert image.size == (width, 96)
        _report("make_latency_s", seconds=latency)

        photo = InputImage(data=png((10, 20, 30), (80, 60)))
        run = await h.service.generate(
            _request("I2I", image=photo, width=160, height=120), GenerationContext()
        )
        done = await h.wait(GenerationCompleted, run.id, 60)
        image = await _image(h.comfyui.transport, done.outputs[0].url)
        assert image.size == (160, 120) and image.getpixel((5, 5)) == (245, 235, 225)

        run = await h.service.generate(
            _request(
                "INPAINT",
                image=InputImage(data=png("red", (96, 64))),
                mask=InputImage(data=half_mask((96, 64))),
            ),
            GenerationContext(),
        )
        done = await h.wait(GenerationCompleted, run.id, 60)
        image = await _image(h.comfyui.transport, done.outputs[0].url)
        assert image.getpixel((10, 30)) == (0, 255, 0)
        assert image.getpixel((90, 30)) == (255, 0, 0)


async def test_cancel_pending_and_running_on_the_real_server(storage: Storage) -> None:
    await _setup(storage)
    async with harness(storage, [URL], auth=AUTH, poll_interval=0.5) as h:
        running = await h.service.generate(
            _request("LONG", width=2048, height=2048 - int(time.time()) % 50), GenerationContext()
        )
        pending = await h.service.generate(
            _request("LONG", width=2040, height=2040), GenerationContext()
        )
        await h.wait(GenerationStarted, running.id, 30)
        await h.wait(GenerationStarted, pending.id, 30)
        for _ in range(100):  # bounded: until the server reports the first one running
            await h.service.tracker.poll_once()
            a = await storage.runs.get_run(running.id)
            b = await storage.runs.get_run(pending.id)
            if RunStatus.RUNNING in (a.status, b.status):
                break
            await h.wait_a_moment(0.1)
        if (await storage.runs.get_run(pending.id)).status is RunStatus.RUNNING:
            running, pending = pending, running
        assert (await storage.runs.get_run(pending.id)).status is RunStatus.WAITING

        t0 = time.perf_counter()
        await h.service.cancel_generation(pending.id)
        await h.wait(GenerationCancelled, pending.id, 5)
        pending_cancel = time.perf_counter() - t0

        await h.wait_a_moment(1.5)  # well inside a 2048² blur node
        t0 = time.perf_counter()
        await h.service.cancel_generation(running.id)
        await h.wait(GenerationCancelled, running.id, 5)
        user_sees = time.perf_counter() - t0
        prompt_id = ids.prompt_id_for(running.id)
        async with httpx.AsyncClient(
            base_url=URL, headers={"Authorization": AUTH} if AUTH else {}
        ) as http:
            for _ in range(600):  # bounded (≤ 60 s): the interrupt lands at a node boundary
                entry = (await http.get(f"/history/{prompt_id}")).json().get(prompt_id)
                if entry:
                    break
                await h.wait_a_moment(0.1)
            server_stops = time.perf_counter() - t0
            assert entry["status"]["messages"][-1][0] == "execution_interrupted"
            pending_id = ids.prompt_id_for(pending.id)
            assert (await http.get(f"/history/{pending_id}")).json() == {}
            queue = (await http.get("/queue")).json()
            assert pending_id not in [item[1] for item in queue["queue_pending"]]
        _report(
            "cancel_latency_s",
            pending_user=pending_cancel,
            running_user=user_sees,
            running_server=server_stops,
        )


async def test_runtime_and_validation_errors_on_the_real_server(storage: Storage) -> None:
    await _setup(storage)
    async with harness(storage, [URL], auth=AUTH, poll_interval=0.5) as h:
        run = await h.service.generate(
            _request("BROKEN", width=64 + int(time.time()) % 100), GenerationContext(price=2)
        )
        failed = await h.wait(GenerationFailed, run.id, 60)
        assert failed.error_code == "RUN_FAILED" and "outside the output folder" in failed.message
        assert "tensor" not in failed.message
        run = await h.service.generate(_request("INVALID"), GenerationContext(price=2))
        failed = await h.wait(GenerationFailed, run.id, 30)
        assert failed.error_code == "WORKFLOW_INVALID"
        assert "node 2 (EmptyImage) input height" in failed.message
        assert await storage.ledger.get_balance(USER) == 1000


async def test_bot_restart_mid_run_and_failover_on_the_real_server(storage: Storage) -> None:
    await _setup(storage)
    dead = "http://127.0.0.1:9"  # discard port: nothing listens
    async with harness(storage, [dead, URL], auth=AUTH, poll_interval=0.5) as first:
        run = await first.service.generate(
            _request("LONG", width=2000 - int(time.time()) % 50, height=1500), GenerationContext()
        )
        started = await first.wait(GenerationStarted, run.id, 30)
        assert started.backend_run_id.startswith(f"comfyui:{ids.server_key(URL)}:")
    async with harness(storage, [dead, URL], auth=AUTH, poll_interval=0.5) as second:
        assert second.service.tracker.is_tracked(run.id)
        done = await second.wait(GenerationCompleted, run.id, 120)
        assert done.outputs[0].filename.startswith("long_")
