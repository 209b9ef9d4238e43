"""PreviewBackend: timeline from a fake clock, rendered PNGs served by its transport, i2i and
mask rendering, cancel, uploads, webhooks, and the real GenerationService on top of it."""

from __future__ import annotations

import asyncio
import base64
import io
import random
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from PIL import Image

from generation import (
    EventBus,
    GenerationCompleted,
    GenerationContext,
    GenerationEvent,
    GenerationProgress,
    GenerationRequest,
    GenerationService,
    GenerationSettings,
    GenerationStarted,
    InputImage,
    MediaType,
    RunNotFoundError,
    RunStatus,
)
from generation.ports import Backend
from generation.preview import (
    PREVIEW_DEPLOYMENTS,
    PREVIEW_INPUTS,
    PREVIEW_LABEL,
    TIMELINE,
    PreviewBackend,
)
from generation.preview_render import clamp_size
from tests.fakes.memory_store import MemoryStore

STEP = 0.6
MAKE = PREVIEW_DEPLOYMENTS["MAKE"]
WAIT = 5.0  # upper bound for event waits (never reached when things work)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def backend(clock: Clock) -> AsyncIterator[PreviewBackend]:
    b = PreviewBackend(clock=clock, step_seconds=STEP)
    yield b
    await b.aclose()


def png(size: tuple[int, int], colour: Any, mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, colour).save(buf, "PNG")
    return buf.getvalue()


def data_uri(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


async def fetch(backend: PreviewBackend, url: str) -> httpx.Response:
    async with httpx.AsyncClient(transport=backend.transport) as client:
        return await client.get(url)


async def finish(backend: PreviewBackend, clock: Clock, run_id: str) -> Image.Image:
    """Advance past the timeline and return the decoded output image."""
    clock.advance(STEP * (len(TIMELINE) + 1))
    snap = await backend.get_run(run_id)
    assert snap.status is RunStatus.SUCCESS, snap
    response = await fetch(backend, snap.outputs[0].url)
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/png"
    image = Image.open(io.BytesIO(response.content))
    image.load()
    return image.convert("RGB")


def fraction(image: Image.Image, box: tuple[int, int, int, int], pred: Any) -> float:
    pixels = list(image.crop(box).convert("RGB").tobytes())
    pixels = [tuple(pixels[i : i + 3]) for i in range(0, len(pixels), 3)]
    return sum(1 for p in pixels if pred(p)) / len(pixels)


def reddish(p: tuple[int, int, int]) -> bool:
    return p[0] > p[1] + 60 and p[0] > p[2] + 60


# ------------------------------------------------------------------------------ protocol


async def test_is_a_backend_and_lists_preview_deployments(backend: PreviewBackend) -> None:
    assert isinstance(PreviewBackend(), Backend)
    assert PREVIEW_LABEL == "preview"
    infos = await backend.list_deployments()
    by_id = {info.id: info for info in infos}
    for type_ in ("MAKE", "I2I", "INPAINT", "UPSCALE", "MAKE_PLUS", "QUICKMAKE"):
        info = by_id[PREVIEW_DEPLOYMENTS[type_]]
        assert info.inputs == PREVIEW_INPUTS
        assert type_ in (info.name or "") and PREVIEW_LABEL in (info.name or "")
    assert "input_mask" in PREVIEW_INPUTS and "input_checkpoint" in PREVIEW_INPUTS
    assert len(set(PREVIEW_DEPLOYMENTS.values())) == len(PREVIEW_DEPLOYMENTS)
    # Ids are stable across instances (the composition root registers them in storage).
    assert PreviewBackend().base_url == "http://preview.local"


# ------------------------------------------------------------------------------ timeline


async def test_timeline_follows_the_clock(backend: PreviewBackend, clock: Clock) -> None:
    run_id = await backend.create_run(MAKE, {"input_prompt": "a fox", "input_seed": 7})
    seen = []
    for _ in range(len(TIMELINE)):
        snap = await backend.get_run(run_id)
        assert snap.backend_run_id == run_id and snap.outputs == ()
        seen.append((snap.raw_status, snap.status, snap.progress, snap.live_status))
        clock.advance(STEP)
    assert [s[0] for s in seen[:3]] == ["not-started", "queued", "started"]
    assert [s[1] for s in seen[:3]] == [RunStatus.WAITING, RunStatus.WAITING, RunStatus.STARTING]
    running = seen[3:]
    assert all(s[1] is RunStatus.RUNNING for s in running)
    progress = [s[2] for s in running]
    assert progress == sorted(progress) and progress[0] == pytest.approx(0.1)
    assert progress[-1] == pytest.approx(0.9)
    assert [s[3] for s in running][:2] == ["Executing CLIPTextEncode", "Executing KSampler"]
    assert {"Executing VAEDecode", "Executing SaveImage"} <= {s[3] for s in running}

    done = await backend.get_run(run_id)
    assert done.status is RunStatus.SUCCESS and done.progress == 1.0
    assert len(done.outputs) == 1
    out = done.outputs[0]
    assert out.url == f"http://preview.local/files/{run_id}.png"
    assert out.media_type is MediaType.IMAGE and out.key == "images"
    assert out.filename and out.filename.endswith(".png")
    # Stays done; the same file every time.
    clock.advance(100)
    assert (await backend.get_run(run_id)).outputs == done.outputs


async def test_file_is_not_served_before_success(backend: PreviewBackend, clock: Clock) -> None:
    run_id = await backend.create_run(MAKE, {"input_prompt": "a fox"})
    clock.advance(STEP * 4)
    response = await fetch(backend, f"http://preview.local/files/{run_id}.png")
    assert response.status_code == 404
    clock.advance(STEP * len(TIMELINE))
    response = await fetch(backend, f"http://preview.local/files/{run_id}.png")
    assert response.status_code == 200 and response.content.startswith(b"\x89PNG")


async def test_unknown_run_raises_run_not_found(backend: PreviewBackend) -> None:
    with pytest.raises(RunNotFoundError):
        await backend.get_run("no-such-run")
    with pytest.raises(RunNotFoundError):
        await backend.cancel_run("no-such-run")


# ------------------------------------------------------------------------------ images


@pytest.mark.parametrize(
    ("requested", "expected"),
    [((320, 200), (320, 200)), ((2048, 1024), (1024, 512)), ((32, 32), (64, 64))],
)
async def test_png_has_requested_clamped_size_and_label(
    backend: PreviewBackend, clock: Clock, requested: tuple[int, int], expected: tuple[int, int]
) -> None:
    w, h = requested
    run_id = await backend.create_run(
        MAKE, {"input_prompt": "a red fox in snow", "input_width": w, "input_height": h}
    )
    image = await finish(backend, clock, run_id)
    assert image.size == expected
    # The label band on top carries yellow "PREVIEW" text over a dark band.
    band = (0, 0, image.width, max(8, image.height // 8))
    assert fraction(image, band, lambda p: p[0] > 200 and p[1] > 170 and p[2] < 90) > 0.005
    assert fraction(image, band, lambda p: max(p) < 110) > 0.3


def test_clamp_size_keeps_aspect() -> None:
    assert clamp_size(1024, 1024) == (1024, 1024)
    assert clamp_size(4000, 1000) == (1024, 256)
    assert clamp_size(10, 20) == (64, 128)
    assert clamp_size(5000, 10) == (1024, 64)  # extreme aspect: both sides clamped


async def test_rendering_is_deterministic_by_prompt_and_seed(
    backend: PreviewBackend, clock: Clock
) -> None:
    inputs = {"input_prompt": "a castle", "input_seed": 5, "input_width": 128, "input_height": 96}
    a = await backend.create_run(MAKE, inputs)
    b = await backend.create_run(MAKE, inputs)
    c = await backend.create_run(MAKE, {**inputs, "input_seed": 6})
    img_a, img_b, img_c = [await finish(backend, clock, r) for r in (a, b, c)]
    assert img_a.tobytes() == img_b.tobytes()
    assert img_a.tobytes() != img_c.tobytes()


async def test_i2i_uses_the_input_photo(backend: PreviewBackend, clock: Clock) -> None:
    run_id = await backend.create_run(
        PREVIEW_DEPLOYMENTS["I2I"],
        {"input_prompt": "make it warmer", "input_image": data_uri(png((200, 150), "red"))},
    )
    image = await finish(backend, clock, run_id)
    assert image.size == (200, 150)  # the photo's own size
    assert fraction(image, (0, 0, 200, 150), reddish) > 0.6


async def test_inpaint_marks_the_masked_area(backend: PreviewBackend, clock: Clock) -> None:
    mask = Image.new("L", (100, 100), 0)
    mask.paste(255, (0, 0, 50, 100))  # left half = repaint
    buf = io.BytesIO()
    mask.save(buf, "PNG")
    run_id = await backend.create_run(
        PREVIEW_DEPLOYMENTS["INPAINT"],
        {
            "input_prompt": "a hat",
            "input_image": data_uri(png((200, 200), (0, 180, 0)), "image/png"),
            "input_mask": data_uri(buf.getvalue()),
        },
    )
    image = await finish(backend, clock, run_id)
    middle = (10, 70, 90, 130), (110, 70, 190, 130)  # away from the label and caption

    def magenta(p: tuple[int, int, int]) -> bool:
        return p[0] > 120 and p[2] > 100 and p[1] < 130

    def green(p: tuple[int, int, int]) -> bool:
        return p[1] > p[0] + 50 and p[1] > p[2] + 50

    assert fraction(image, middle[0], magenta) > 0.9
    assert fraction(image, middle[1], green) > 0.9


async def test_jpeg_input_and_unusable_inputs(backend: PreviewBackend, clock: Clock) -> None:
    buf = io.BytesIO()
    Image.new("RGB", (120, 80), "red").save(buf, "JPEG")
    jpeg = await backend.create_run(
        PREVIEW_DEPLOYMENTS["I2I"], {"input_image": data_uri(buf.getvalue(), "image/jpeg")}
    )
    assert fraction(await finish(backend, clock, jpeg), (0, 30, 120, 60), reddish) > 0.8
    # A remote URL is never fetched and garbage is ignored: the prompt scene is drawn instead.
    for bad in ("https://example.com/photo.png", "data:image/png;base64,!!!notpng", 42):
        run_id = await backend.create_run(
            PREVIEW_DEPLOYMENTS["I2I"],
            {"input_image": bad, "input_width": 96, "input_height": 64},
        )
        assert (await finish(backend, clock, run_id)).size == (96, 64)


async def test_upscale_doubles_the_photo(backend: PreviewBackend, clock: Clock) -> None:
    run_id = await backend.create_run(
        PREVIEW_DEPLOYMENTS["UPSCALE"], {"input_image": data_uri(png((150, 100), "blue"))}
    )
    assert (await finish(backend, clock, run_id)).size == (300, 200)


# ------------------------------------------------------------------------------ cancel


async def test_cancel_semantics(backend: PreviewBackend, clock: Clock) -> None:
    run_id = await backend.create_run(MAKE, {"input_prompt": "a fox"})
    clock.advance(STEP * 4)  # running
    await backend.cancel_run(run_id)
    snap = await backend.get_run(run_id)
    assert snap.status is RunStatus.CANCELLED and snap.outputs == ()
    clock.advance(STEP * 100)
    assert (await backend.get_run(run_id)).status is RunStatus.CANCELLED
    assert (await fetch(backend, f"http://preview.local/files/{run_id}.png")).status_code == 404

    done = await backend.create_run(MAKE, {"input_prompt": "a fox"})
    await finish(backend, clock, done)
    await backend.cancel_run(done)  # terminal: no-op
    assert (await backend.get_run(done)).status is RunStatus.SUCCESS


# ------------------------------------------------------------------------------ transport


async def test_upload_is_served_and_usable_as_input(backend: PreviewBackend, clock: Clock) -> None:
    data = png((100, 80), "red")
    url = await backend.upload_file(data, "photo.png", "image/png")
    assert url.startswith("http://preview.local/files/uploads/") and url.endswith(".png")
    response = await fetch(backend, url)
    assert response.status_code == 200 and response.content == data
    assert response.headers["content-type"] == "image/png"
    run_id = await backend.create_run(PREVIEW_DEPLOYMENTS["I2I"], {"input_image": url})
    image = await finish(backend, clock, run_id)
    assert image.size == (100, 80) and fraction(image, (0, 25, 100, 55), reddish) > 0.8


async def test_transport_404_405_and_forwarding() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return httpx.Response(200, content=b"remote")

    backend = PreviewBackend(fallback_transport=httpx.MockTransport(handler))
    async with httpx.AsyncClient(transport=backend.transport) as client:
        assert (await client.get("http://preview.local/files/nope.png")).status_code == 404
        assert (await client.get("http://preview.local/other")).status_code == 404
        assert (await client.post("http://preview.local/files/x.png")).status_code == 405
        remote = await client.get("https://cdn.example/out.png")
        assert remote.content == b"remote"
    assert seen == ["https://cdn.example/out.png"]
    await backend.aclose()


async def test_old_finished_runs_are_evicted(clock: Clock) -> None:
    backend = PreviewBackend(clock=clock, step_seconds=STEP, max_runs=3)
    first = [await backend.create_run(MAKE, {"input_prompt": f"p{i}"}) for i in range(3)]
    clock.advance(STEP * 20)  # all finished
    newer = [await backend.create_run(MAKE, {"input_prompt": f"q{i}"}) for i in range(2)]
    with pytest.raises(RunNotFoundError):
        await backend.get_run(first[0])
    with pytest.raises(RunNotFoundError):
        await backend.get_run(first[1])
    assert (await backend.get_run(first[2])).status is RunStatus.SUCCESS
    for run_id in newer:
        assert (await backend.get_run(run_id)).status is RunStatus.WAITING
    await backend.aclose()


# ------------------------------------------------------------------------------ webhooks


async def test_webhooks_pushed_through_the_sink(clock: Clock) -> None:
    payloads: list[tuple[str, dict[str, Any]]] = []
    done = asyncio.Event()

    async def sink(url: str, payload: dict[str, Any]) -> int:
        payloads.append((url, payload))
        if payload["status"] == "success":
            done.set()
        return 200

    async def fake_sleep(seconds: float) -> None:
        clock.advance(seconds)
        await asyncio.sleep(0)

    backend = PreviewBackend(clock=clock, step_seconds=STEP, webhook_sink=sink, sleep=fake_sleep)
    run_id = await backend.create_run(MAKE, {"input_prompt": "a fox"}, webhook="http://bot/wh")
    async with asyncio.timeout(WAIT):
        await done.wait()
    assert {url for url, _ in payloads} == {"http://bot/wh"}
    bodies = [p for _, p in payloads]
    assert all(b["run_id"] == run_id and b["event_type"] == "run.updated" for b in bodies)
    statuses = [b["status"] for b in bodies]
    assert statuses[:3] == ["not-started", "queued", "started"] and statuses[-1] == "success"
    assert len(bodies) == len(TIMELINE) + 1
    assert bodies[-1]["outputs"][0]["data"]["images"][0]["url"].endswith(f"{run_id}.png")

    # Without intermediate status: status changes only (one "running" post, no ticks).
    payloads.clear()
    done.clear()
    await backend.create_run(
        MAKE, {"input_prompt": "b"}, webhook="http://bot/wh", webhook_intermediate_status=False
    )
    async with asyncio.timeout(WAIT):
        await done.wait()
    assert [p["status"] for _, p in payloads] == [
        "not-started",
        "queued",
        "started",
        "running",
        "success",
    ]
    await backend.aclose()


# ------------------------------------------------------------------------------ end to end


class Recorder:
    def __init__(self, bus: EventBus) -> None:
        self.events: list[GenerationEvent] = []
        self._changed = asyncio.Event()
        bus.subscribe(self._on_event)

    async def _on_event(self, event: GenerationEvent) -> None:
        self.events.append(event)
        self._changed.set()

    def of(self, kind: type[GenerationEvent], run_id: str) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind) and e.run_id == run_id]

    async def wait_for(self, kind: type[GenerationEvent], run_id: str) -> Any:
        async with asyncio.timeout(WAIT):
            while not self.of(kind, run_id):
                self._changed.clear()
                await self._changed.wait()
        return self.of(kind, run_id)[-1]


@pytest.mark.parametrize("type_", ["MAKE", "I2I"])
async def test_end_to_end_with_generation_service(clock: Clock, type_: str) -> None:
    backend = PreviewBackend(clock=clock, step_seconds=STEP)
    store = MemoryStore()
    for name, dep_id in PREVIEW_DEPLOYMENTS.items():
        store.add_deployment(dep_id, name, inputs=PREVIEW_INPUTS)
    bus = EventBus()
    service = GenerationService(
        backend=backend,
        runs=store,
        balances=store,
        deployments=store,
        loras=store,
        bus=bus,
        settings=GenerationSettings(poll_interval=3600.0, webhook_poll_interval=3600.0),
        clock=clock,
        rng=random.Random(1),
    )
    recorder = Recorder(bus)
    await service.start()
    try:
        extra: dict[str, Any] = {}
        if type_ == "I2I":
            extra["image"] = InputImage(data=png((160, 120), "red"))
        request = GenerationRequest(
            type=type_, prompt="a red fox", width=256, height=192, user_id=1, chat_id=1, **extra
        )
        run = await service.generate(request, GenerationContext())
        await recorder.wait_for(GenerationStarted, run.id)
        for _ in range(3 * len(TIMELINE)):  # bounded
            clock.advance(STEP)
            await service.tracker.poll_once()
            current = await store.get_run(run.id)
            assert current is not None
            if current.is_terminal:
                break
        done = await recorder.wait_for(GenerationCompleted, run.id)
        await bus.drain()
        progress = recorder.of(GenerationProgress, run.id)
        values = [p.progress for p in progress if p.status is RunStatus.RUNNING]
        assert values == sorted(values) and len(values) >= 3
        assert any(p.live_status == "Executing KSampler" for p in progress)
        final = await store.get_run(run.id)
        assert final is not None and final.status is RunStatus.SUCCESS
        assert final.deployment_id == PREVIEW_DEPLOYMENTS[type_]
        image = Image.open(io.BytesIO((await fetch(backend, done.outputs[0].url)).content))
        if type_ == "MAKE":
            assert image.size == (256, 192)
        else:
            assert fraction(image.convert("RGB"), (0, 40, 160, 80), reddish) > 0.8
    finally:
        await service.stop()
        await bus.aclose()
        await backend.aclose()
