"""Opt-in: the ComfyUI flows against a real ComfyUI server (``COMFYUI_TEST_URL``).

Skipped unless ``COMFYUI_TEST_URL`` points at a running ComfyUI (for example one started with
``python main.py --cpu --listen 127.0.0.1 --port 8188``). Every graph is model-free
(``docs/workflows/model-free``), so a CPU-only server without any model file runs them.

Two layers: the bot's backend and GenerationService driven directly (the ``test_*_on_the_real_
server`` tests, with a bot restart and failover), and the end-to-end flows of
tests/test_comfyui_e2e.py through the Telegram double — the real Application, handlers,
GenerationService and storage, with COMFYUI_URL = the real server (``test_telegram_*``):
/workflow add, /make with progress edits and the photo, /i2i, /inpaint, /cancel of a pending
and of a running prompt, a runtime and a validation error, and the price's hold settled or
released. The figures (one run's latency through the bot, cancel latency as the user sees it
and until the server stops) are printed and, when ``COMFYUI_TEST_REPORT`` names a file,
appended to it as JSON lines.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import websockets
from PIL import Image

from generation import (
    GenerationCancelled,
    GenerationCompleted,
    GenerationContext,
    GenerationFailed,
    GenerationProgress,
    GenerationRequest,
    GenerationStarted,
    InputImage,
    RunStatus,
)
from generation.comfyui import ComfyUIBackend, ids
from generation.models import ChargeState, RunRecord
from storage import Storage
from tests.comfyui_support import (
    add_workflow,
    comfy_e2e,
    delivered,
    half_mask,
    harness,
    last_text,
    png,
    register,
    wait_done,
    wait_final,
)
from tests.e2e.inprocess import ADMIN_ID, E2E
from tests.fakes.telegram import FakeUser

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


# -- end to end through the Telegram double: the real Application, handlers, GenerationService and
# storage (tests/comfyui_support.py comfy_e2e) with COMFYUI_URL = the real server ---------------

REAL_WAIT = 60.0  # bounded waits for a CPU-only server
PRICE = 3
GRANT = 10


@pytest.fixture
async def bot(tmp_path: Path) -> AsyncIterator[E2E]:
    env, close = await comfy_e2e(tmp_path, [URL], comfyui_auth=AUTH, run_poll_interval=1.0)
    try:
        yield env
    finally:
        await close()


async def _paying_user(e2e: E2E, user_id: int, price: int = PRICE) -> FakeUser:
    """A user with ``GRANT`` credits, every type priced ``price`` (set by the admin)."""
    admin = e2e.fake.user(ADMIN_ID)
    for type_ in ("MAKE", "I2I", "INPAINT"):
        await e2e.command(admin, f"/price {type_} {price}")
    await e2e.storage.users.get_or_create(user_id)
    await e2e.command(admin, f"/grant {user_id} {GRANT}")
    assert await e2e.storage.ledger.get_balance(user_id) == GRANT
    return e2e.fake.user(user_id)


async def _money_back(e2e: E2E, run: RunRecord) -> None:
    """A run that did not deliver: its hold released, the balance whole again."""
    assert run.price == PRICE and run.charge_state is ChargeState.RELEASED, run.charge_state
    assert (await e2e.storage.ledger.get_hold(run.id)).state == "released"
    assert await e2e.storage.ledger.get_balance(run.user_id) == GRANT
    assert await e2e.storage.ledger.check_consistency() == []


async def _settled(e2e: E2E, run: RunRecord) -> None:
    run = await e2e.storage.runs.get_run(run.id)
    assert run.price == PRICE and run.charge_state is ChargeState.SETTLED, run.charge_state
    assert (await e2e.storage.ledger.get_hold(run.id)).state == "settled"
    assert await e2e.storage.ledger.get_balance(run.user_id) == GRANT - PRICE
    assert await e2e.storage.ledger.check_consistency() == []


def _photo(e2e: E2E, user: FakeUser) -> Image.Image:
    sent = e2e.fake.sent_media(user.id)[-1]
    assert sent.media_kind in ("photo", "document") and sent.media, sent.media_kind
    return Image.open(io.BytesIO(sent.media)).convert("RGB")


def _near(pixel: tuple[int, ...], expected: tuple[int, int, int], tolerance: int = 12) -> bool:
    return all(abs(a - b) <= tolerance for a, b in zip(pixel, expected, strict=False))


def _edits(e2e: E2E, chat_id: int, message_id: int) -> list[str]:
    return [
        c.params.get("text", "")
        for c in e2e.fake.calls("editMessageText")
        if int(c.params.get("chat_id", 0)) == chat_id
        and int(c.params.get("message_id", 0)) == message_id
    ]


async def test_telegram_workflow_add_make_progress_photo_and_the_charge(bot: E2E) -> None:
    assert isinstance(bot.services.backend, ComfyUIBackend)
    reply = await add_workflow(bot, "MAKE", "model-free/make", "mf")
    assert "mf" in reply and "MAKE" in reply
    assert "input_width (node 1) → 3 EmptyImage.width" in reply
    unknown = {  # the real server's /object_info has no such class
        "1": {"class_type": "FancyNodeThatDoesNotExist", "inputs": {}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}},
    }
    admin = bot.fake.user(ADMIN_ID)
    await bot.feed(
        admin.send_document(
            json.dumps(unknown).encode(),
            "u.json",
            "application/json",
            "/workflow add MAKE fancy",
            queue=False,
        )
    )
    assert "FancyNodeThatDoesNotExist" in last_text(bot, ADMIN_ID)
    assert await bot.storage.workflows.get_by_name("fancy") is None

    alice = await _paying_user(bot, 4001)
    k = int(time.time()) % 6
    ratio = f"{3 + k}:{2 + k}"  # never square; a size the previous prompt did not have
    started = time.perf_counter()
    await bot.command(alice, f"/make a red fox --ar {ratio}")
    await bot.fake.wait_for(
        lambda: bot.fake.sent_media(alice.id), timeout=REAL_WAIT, what="the photo"
    )
    latency = time.perf_counter() - started
    run = await delivered(bot, alice, REAL_WAIT)
    assert run.deployment_id == "workflow:mf" and ids.is_comfyui_run(run.backend_run_id)
    image = _photo(bot, alice)
    assert image.size == (run.request["width"], run.request["height"])
    assert image.size != (1024, 1024)  # the --ar size reached the graph
    # EmptyImage 0x3366CC, inverted: (204, 153, 51); the blur keeps a flat colour flat
    assert _near(image.getpixel((image.width // 2, image.height // 2)), (204, 153, 51))
    edits = _edits(bot, alice.id, run.progress_message_id)
    # "sending" shows only when a delivery takes over a second (handlers/delivery.py): a fast
    # one goes from the live state straight to the photo and "done"
    assert edits[-1] == bot.t("progress.done"), edits
    # a 0.1 s graph may finish before a live state is shown; the slow graph of the cancel test
    # proves the live "Generating … · node" edits
    await _settled(bot, run)
    _report("telegram_make_latency_s", seconds=latency)


async def test_telegram_i2i_and_inpaint_on_the_real_server(bot: E2E) -> None:
    await add_workflow(bot, "I2I", "model-free/i2i", "i2i")
    await add_workflow(bot, "INPAINT", "model-free/inpaint", "inpaint")
    bob = await _paying_user(bot, 4002)
    await bot.feed(
        bob.send_photo(png((10, 20, 30), (80, 60)), caption="/i2i invert it", queue=False)
    )
    run = await delivered(bot, bob, REAL_WAIT)
    image = _photo(bot, bob)
    assert image.size == (run.request["width"], run.request["height"])
    assert _near(image.getpixel((5, 5)), (245, 235, 225))  # the photo, scaled and inverted
    await _settled(bot, run)

    carol = await _paying_user(bot, 4003)
    await bot.command(carol, "/inpaint")
    await bot.feed(carol.send_photo(png("red", (96, 64)), queue=False))
    await bot.feed(carol.send_document(half_mask((96, 64)), "mask.png", "image/png", queue=False))
    await bot.feed(carol.send_text("paint it green", queue=False))
    run = await delivered(bot, carol, REAL_WAIT)
    image = _photo(bot, carol)
    w, h = image.size
    assert _near(image.getpixel((w // 8, h // 2)), (0, 255, 0))  # masked: painted green
    assert _near(image.getpixel((w - w // 8, h // 2)), (255, 0, 0))  # unmasked: the photo
    await _settled(bot, run)


class _Observer:
    """A second WebSocket client of the real server. ``execution_interrupted`` goes only to the
    client that submitted (ComfyUI execution.py ``add_message``), but every client gets the
    ``status`` message the queue sends when a prompt leaves it, so the test learns when the
    server really stopped without polling."""

    def __init__(self) -> None:
        self.idle_at: list[float] = []  # when queue_remaining reached 0
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> _Observer:
        url = URL.replace("http", "ws", 1).rstrip("/") + f"/ws?clientId={uuid.uuid4().hex}"
        headers = {"Authorization": AUTH} if AUTH else None
        self._ws = await websockets.connect(url, additional_headers=headers, max_size=None)
        self._task = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._task
        await self._ws.close()

    async def _read(self) -> None:
        async for frame in self._ws:
            if isinstance(frame, bytes):
                continue  # previews
            message = json.loads(frame)
            if message.get("type") != "status":
                continue
            info = message["data"]["status"]["exec_info"]
            if info.get("queue_remaining") == 0:
                self.idle_at.append(time.perf_counter())
                self._changed.set()

    async def wait_idle(self, after: float, seconds: float) -> float:
        """When the server's queue was next empty after ``after`` (bounded wait)."""
        async with asyncio.timeout(seconds):
            while not [t for t in self.idle_at if t > after]:
                self._changed.clear()
                await self._changed.wait()
        return min(t for t in self.idle_at if t > after)


def _in_a_blur(e2e: E2E, user: FakeUser, run_id: str) -> bool:
    """The user's progress message shows the run inside a blur node of the long graph: the live
    status the bot built from the server's ``progress_state``/``executing`` messages."""
    live = [e2e.t("progress.running_status", percent=p, status="ImageBlur") for p in range(1, 100)]
    return any(
        int(c.params.get("chat_id", 0)) == user.id and c.params.get("text") in live
        for c in e2e.fake.calls("editMessageText")
    ) and any(
        isinstance(e, GenerationProgress) and e.run_id == run_id and e.status is RunStatus.RUNNING
        for e in e2e.events.items
    )


async def _cancelled_shown(e2e: E2E, user: FakeUser, run_id: str) -> None:
    run = await e2e.storage.runs.get_run(run_id)
    text = e2e.t("progress.cancelled")
    await e2e.fake.wait_for(
        lambda: e2e.progress_message(user.id, run).text == text,
        timeout=REAL_WAIT,
        what="cancelled on the progress message",
    )


async def test_telegram_cancel_pending_and_running_on_the_real_server(bot: E2E) -> None:
    await add_workflow(bot, "MAKE", "model-free/long", "long")
    dave, erin = await _paying_user(bot, 4004), await _paying_user(bot, 4005)
    side = 2048 - 8 * (int(time.time()) % 20)  # 2048²-ish blurs: seconds per node on a CPU
    for user in (dave, erin):
        await bot.storage.users.update_settings(user.id, width=side, height=side)
    async with _Observer() as observer:
        await bot.command(dave, "/make slow one")
        dave_run = await bot.latest_run(dave.id)
        await bot.backend_id(dave_run.id)
        await bot.command(erin, "/make slow two")
        erin_run = await bot.latest_run(erin.id)
        await bot.backend_id(erin_run.id)
        await bot.fake.wait_for(
            lambda: _in_a_blur(bot, dave, dave_run.id) or _in_a_blur(bot, erin, erin_run.id),
            timeout=REAL_WAIT,
            what="a live blur status on a progress message",
        )
        if _in_a_blur(bot, erin, erin_run.id):
            dave, erin, dave_run, erin_run = erin, dave, erin_run, dave_run
        assert (await bot.storage.runs.get_run(erin_run.id)).status is RunStatus.WAITING
        assert await bot.storage.ledger.get_balance(erin.id) == GRANT - PRICE  # held

        t0 = time.perf_counter()
        await bot.command(erin, "/cancel")  # pending: deleted from the server's queue
        await _cancelled_shown(bot, erin, erin_run.id)
        pending_user = time.perf_counter() - t0
        assert (await wait_final(bot, erin_run.id, REAL_WAIT)).status is RunStatus.CANCELLED

        t0 = time.perf_counter()
        await bot.command(dave, "/cancel")  # running: interrupted at the next node boundary
        await _cancelled_shown(bot, dave, dave_run.id)
        running_user = time.perf_counter() - t0
        dave_prompt = ids.prompt_id_for(dave_run.id)
        running_server = await observer.wait_idle(t0, REAL_WAIT) - t0
        assert (await wait_final(bot, dave_run.id, REAL_WAIT)).status is RunStatus.CANCELLED

    erin_prompt = ids.prompt_id_for(erin_run.id)
    async with httpx.AsyncClient(
        base_url=URL, headers={"Authorization": AUTH} if AUTH else {}
    ) as http:
        entry = (await http.get(f"/history/{dave_prompt}")).json()[dave_prompt]
        assert entry["status"]["messages"][-1][0] == "execution_interrupted"
        assert (await http.get(f"/history/{erin_prompt}")).json() == {}  # never ran
        queue = (await http.get("/queue")).json()
        assert erin_prompt not in [item[1] for item in queue["queue_pending"]]
    for user, run in ((dave, dave_run), (erin, erin_run)):
        await _money_back(bot, await bot.storage.runs.get_run(run.id))
        assert not bot.fake.sent_media(user.id)
    _report(
        "telegram_cancel_latency_s",
        pending_user=pending_user,
        running_user=running_user,
        running_server=running_server,
    )


async def test_telegram_runtime_error_is_shown_cleanly_and_refunded(bot: E2E) -> None:
    await add_workflow(bot, "MAKE", "model-free/runtime_error", "broken")
    frank = await _paying_user(bot, 4006)
    await bot.command(frank, f"/make boom --ar {1 + int(time.time()) % 5}:3")
    run = await wait_done(bot, frank, REAL_WAIT)
    assert run.status is RunStatus.FAILED and run.error_code == "RUN_FAILED"
    assert "outside the output folder" in (run.error_message or "")  # for the log
    text = bot.progress_message(frank.id, run).text
    assert text == bot.t("progress.failed", reason=bot.t("error.RUN_FAILED"))
    for leak in ("SaveImage", "Traceback", "escape", "tensor", "output folder"):
        assert leak not in text
    assert not bot.fake.sent_media(frank.id)
    await _money_back(bot, run)


async def test_telegram_validation_error_users_misconfigured_admins_where(bot: E2E) -> None:
    await add_workflow(bot, "MAKE", "model-free/invalid", "bad")
    gina = await _paying_user(bot, 4007)
    await bot.command(gina, "/make nope")
    run = await wait_done(bot, gina, REAL_WAIT)
    assert run.status is RunStatus.FAILED and run.error_code == "WORKFLOW_INVALID"
    text = bot.progress_message(gina.id, run).text
    assert bot.t("error.WORKFLOW_INVALID") in text
    assert "EmptyImage" not in text and "height" not in text
    alert = await bot.fake.wait_for_message(ADMIN_ID, "⚠️", timeout=REAL_WAIT)
    assert "workflow:bad" in alert.text and "node 2 (EmptyImage) input height" in alert.text
    await _money_back(bot, run)
