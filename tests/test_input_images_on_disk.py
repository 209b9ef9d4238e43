"""Input images on disk, a memory budget, and outputs decoded only when needed (issue 11,
point 7). Real SQLite storage and its image folder; the ComfyDeploy double in process."""

from __future__ import annotations

import asyncio
import base64
import io
import random
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from PIL import Image

from generation import (
    EventBus,
    GenerationContext,
    GenerationRequest,
    GenerationService,
    GenerationSettings,
    GenerationStarted,
    InputImage,
    RunStatus,
)
from generation.client import ComfyDeployClient
from generation.images import ImageMemoryBudget, prepare_output_photo
from storage import Storage
from tests.fakes.comfydeploy import FakeComfyDeploy, Timeline

USER = 77


async def _instant(_: float) -> None:
    return None


def _png(size: tuple[int, int] = (48, 32), color: tuple[int, int, int] = (9, 120, 200)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return buf.getvalue()


def _service(
    storage: Storage, fake: FakeComfyDeploy, client: ComfyDeployClient
) -> GenerationService:
    service = GenerationService(
        backend=client,
        runs=storage.runs,
        balances=storage.ledger,
        deployments=storage.deployments,
        loras=storage.loras,
        bus=EventBus(),
        settings=GenerationSettings(
            webhook_url="http://bot.test/comfydeploy/webhook",
            webhook_secret="s3cret",
            poll_interval=3600,
            webhook_poll_interval=3600,
            maintenance_interval=0,
        ),
        rng=random.Random(3),
        images=storage.images,
    )

    async def sink(url: str, payload: dict[str, Any] | None) -> int:
        if payload is None:
            return 405
        q = parse_qs(urlsplit(url).query)
        return 200 if await service.process_webhook(payload, q["t"][0], q["r"][0]) else 403

    fake.webhook_sink = sink
    return service


def _stored_files(storage: Storage) -> list[Path]:
    return [p for p in storage.images.root.glob("*/*") if p.is_file()]


async def test_a_queued_i2i_survives_a_restart_and_its_image_is_removed_at_the_end(
    tmp_path: Path,
) -> None:
    photo = _png()
    fake = FakeComfyDeploy()
    dep = fake.add_deployment(
        inputs=["input_prompt", "input_image", "input_strength"], timeline=Timeline.success("png")
    )
    client = ComfyDeployClient(
        fake.auth_token, fake.base_url, transport=fake.transport, sleep=_instant
    )
    path = tmp_path / "bot.sqlite3"
    try:
        async with await Storage.open(path) as storage:
            await storage.deployments.add("I2I", dep)
            first = _service(storage, fake, client)
            request = GenerationRequest(
                type="I2I",
                prompt="make it blue",
                image=InputImage(data=photo, mime_type="image/png", filename="in.png"),
                user_id=USER,
                chat_id=USER,
            )
            run = await first.generate(request, GenerationContext())
            # On disk next to the database, not in memory.
            assert storage.images.root.parent == tmp_path
            assert [p.read_bytes() for p in _stored_files(storage)] == [photo]
            assert first._pending[run.id].request.image is None
            await first.stop()  # the bot stops before the run was dispatched

        async with await Storage.open(path) as storage:  # restart
            second = _service(storage, fake, client)
            started = asyncio.Event()

            async def on_event(event: object) -> None:
                if isinstance(event, GenerationStarted):
                    started.set()

            second.bus.subscribe(on_event)
            await second.start()
            try:
                await asyncio.wait_for(started.wait(), 5)
                sent = fake.create_calls[-1]["inputs"]["input_image"]
                assert base64.b64decode(sent.split(",", 1)[1]) == photo
                backend_id = next(iter(fake.runs))
                await fake.run_to_end(backend_id)
                final = await storage.runs.get_run(run.id)
                assert final is not None and final.status is RunStatus.SUCCESS
                await second.tracker.drain()
                assert _stored_files(storage) == []  # removed when the run ended
            finally:
                await second.stop()
    finally:
        await client.aclose()
        await fake.aclose()


async def test_a_refused_request_leaves_no_image_behind(tmp_path: Path) -> None:
    fake = FakeComfyDeploy()
    dep = fake.add_deployment(inputs=["input_prompt", "input_image"])
    client = ComfyDeployClient(
        fake.auth_token, fake.base_url, transport=fake.transport, sleep=_instant
    )
    try:
        async with await Storage.open(tmp_path / "bot.sqlite3") as storage:
            await storage.deployments.add("I2I", dep)
            service = _service(storage, fake, client)
            request = GenerationRequest(
                type="I2I",
                prompt="x",
                image=InputImage(data=_png(), mime_type="image/png"),
                user_id=USER,
                chat_id=USER,
            )
            try:
                await service.generate(request, GenerationContext(price=5))  # balance 0
            except Exception as exc:
                assert exc.__class__.__name__ == "InsufficientBalanceError"
            assert _stored_files(storage) == []
    finally:
        await client.aclose()
        await fake.aclose()


async def test_image_memory_budget_is_process_wide() -> None:
    budget = ImageMemoryBudget(100)
    order: list[str] = []
    release = asyncio.Event()

    async def job(name: str, n: int, wait: asyncio.Event | None = None) -> None:
        async with budget.hold(n):
            order.append(f"+{name}")
            if wait is not None:
                await wait.wait()
            order.append(f"-{name}")

    a = asyncio.create_task(job("a", 70, release))
    await asyncio.sleep(0)
    b = asyncio.create_task(job("b", 60))  # does not fit next to a: waits
    await asyncio.sleep(0)
    assert order == ["+a"] and budget.used == 70
    release.set()
    await asyncio.gather(a, b)
    assert order == ["+a", "-a", "+b", "-b"]
    assert budget.peak <= 100
    await job("huge", 10_000)  # larger than the budget: runs alone, never deadlocks
    assert budget.used == 0


def test_output_that_fits_is_not_decoded_and_a_huge_one_is_never_decoded(monkeypatch) -> None:
    small = _png((64, 48))
    limits = {"max_bytes": 10_000_000, "max_dimension_sum": 10_000, "max_ratio": 20}

    def no_decode(*_a: object, **_k: object) -> None:
        raise AssertionError("decoded although nothing had to be re-encoded")

    monkeypatch.setattr(Image.Image, "load", no_decode)
    out = prepare_output_photo(small, "a.png", **limits)
    assert out.photo is small and not out.reencoded
    # 12,600 × 12,600 would decode to ~0.5 GB: over the pixel cap it goes as a document only
    big = io.BytesIO()
    monkeypatch.undo()
    Image.new("L", (6000, 6000)).save(big, "PNG")  # 36 MP, but sides sum over the photo limit
    monkeypatch.setattr(Image.Image, "load", no_decode)
    out = prepare_output_photo(big.getvalue(), "b.png", **limits, max_pixels=20_000_000)
    assert out.photo is None and out.reencoded


async def test_images_held_by_open_flows_are_capped_process_wide(
    tmp_path: Path, monkeypatch
) -> None:
    """An /i2i flow waiting for its prompt holds its photo; past the process-wide cap a new
    photo is refused politely, and a flow that ends gives its bytes back."""
    import gc

    from generation.images import FLOW_IMAGES
    from tests.e2e.inprocess import jpeg, make_e2e

    env, close = await make_e2e(tmp_path)
    try:
        monkeypatch.setattr(FLOW_IMAGES, "max_bytes", FLOW_IMAGES.used + len(jpeg()) + 10)
        alice, bob = env.fake.user(5401), env.fake.user(5402)
        await env.feed(alice.send_photo(jpeg(), caption="/i2i", queue=False))  # waits for a prompt
        assert env.fake.last_message(alice.id).text == env.t("i2i.send_prompt")
        await env.feed(bob.send_photo(jpeg(), caption="/i2i", queue=False))
        assert env.fake.last_message(bob.id).text == env.t("hardening.images_busy")
        await env.command(alice, "/cancel")  # alice's flow ends: her photo is released
        gc.collect()
        await env.feed(bob.send_photo(jpeg(), caption="/i2i", queue=False))
        assert env.fake.last_message(bob.id).text == env.t("i2i.send_prompt")
    finally:
        await close()
